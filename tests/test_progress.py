"""Progress you can watch: plain periodic lines (no `\\r`) in logs, a rich bar on a terminal, library bars
off in logs, the truncated share (and a warning) in every generating stage's summary, and train's steps."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest


from stages import estimate, sample
from stages.core.pipeline import artifacts, progress
from stages.core.generation.backends import FakeGenerator
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems
from tests.helpers import REPO, TOY_MODEL, gpo, quiet, rambling_policy, train_settings

PROBLEMS = "toy:arith?n=4&seed=0&split=train"
LINE = re.compile(r"^sample chunk (\d+)/(\d+): (\d+)/(\d+) sequences \(\d+%\)", re.M)


def test_piped_sample_prints_progress_lines_no_carriage_returns_and_warns_when_all_cut(tmp_path):
    """The issue's case: --max-new-tokens 8 on the toy model cuts every answer; run as a user would, piped."""
    env = {**os.environ, "GPO_PROGRESS_EVERY": "0", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "gpo_cli.main", "sample", "--problems", PROBLEMS, "--model", str(TOY_MODEL),
         "--run", str(tmp_path / "run"), "--n", "2", "--max-new-tokens", "8", "--chunk-groups", "2",
         "--backend", "hf"], env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "\r" not in err  # transformers' "Loading weights" bar redraws with \r when left on
    assert "Loading weights" not in err
    lines = LINE.findall(err)
    assert {(c, n) for c, n, _, _ in lines} == {("1", "2"), ("2", "2")}  # within each of the two chunks
    assert len(lines) >= 4 and ("1", "2", "4", "4") in lines  # several lines, the last at 4 of 4 sequences
    assert "tok/s" in err
    assert result.stdout == ""  # progress never goes to stdout
    assert re.search(r"sample shard 0/1: 8 rows, accuracy 0\.000, truncated 100%", err)
    assert re.search(r"warning: 8 of 8 generated responses \(100%\) stopped at the token budget.*--max-new-tokens",
                     err)


def test_a_generous_budget_shows_no_truncation_and_no_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("GPO_PROGRESS_EVERY", "off")
    out = gpo("sample", "--problems", PROBLEMS, "--model", TOY_MODEL, "--run", tmp_path / "run", "--n", "2",
              "--max-new-tokens", "64", "--backend", "hf")
    assert "truncated 0%" in out
    assert "warning" not in out
    assert "sample chunk" not in out  # GPO_PROGRESS_EVERY=off: no progress lines


def test_every_generating_stage_counts_generated_and_cut_sequences(tmp_path, toy_tokenizer):
    """Counted once, in the generator the stages see: estimate's shared rollouts are not generated."""
    gen = FakeGenerator(toy_tokenizer, rambling_policy(toy_tokenizer))
    problems = load_problems("toy:arith?n=6&seed=0&split=train").table
    s = run_stage(sample.STAGE, tmp_path, sample.SampleSettings(problems="toy", model="fake", n=4, max_new_tokens=48),
                  input_table=problems, make_generator=lambda: gen)["stats"]
    rows = artifacts.read_table(tmp_path, "sample").to_pylist()
    assert s["generated_sequences"] == len(rows) == 24
    assert 0 < s["truncated_sequences"] == sum(r["finish_reason"] == "length" for r in rows) < 24
    e = run_stage(estimate.STAGE, tmp_path, estimate.EstimateSettings(k=4), make_generator=lambda: gen)["stats"]
    rollouts = [r for r in artifacts.read_table(tmp_path, "rollouts").to_pylist()
                if r["shared_from_sample"] is None]
    assert e["generated_sequences"] == e["rollouts"] == len(rollouts)
    assert 0 < e["truncated_sequences"] == sum(r["finish_reason"] == "length" for r in rollouts)


def test_truncation_summary_threshold():
    assert progress.truncation_summary({}) == ("", None)
    none = progress.truncation_summary({"generated_sequences": 100, "truncated_sequences": 0})
    assert none == (", truncated 0%", None)
    ten = progress.truncation_summary({"generated_sequences": 100, "truncated_sequences": 10})
    assert ten[1] is None  # 10%: not above
    text, warning = progress.truncation_summary({"generated_sequences": 100, "truncated_sequences": 11})
    assert text == ", truncated 11%" and "--max-new-tokens" in warning
    assert progress.truncation_summary({"generated_sequences": 1000, "truncated_sequences": 3})[0] == ", truncated 0.3%"
    # a sample manifest from before the generic counts
    assert progress.truncation_summary({"trajectories": 4, "truncated": 4})[0] == ", truncated 100%"
    assert progress.truncation_summary({"trajectories": 4, "located": 2}) == ("", None)  # locate generates nothing


def _plain(monkeypatch, every: str):
    from rich.console import Console

    monkeypatch.setenv("GPO_PROGRESS_EVERY", every)
    buf = io.StringIO()
    return progress.Reporter("sample chunk 1/1", console=Console(file=buf, width=200), terminal=False), buf


def test_plain_lines_are_throttled_and_carry_rate_and_eta(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    rep, buf = _plain(monkeypatch, "30")
    rep.grow(40)
    clock[0] += 10
    rep.advance(10, tokens=500)  # 10 s in: not yet a line
    assert buf.getvalue() == ""
    clock[0] += 20
    rep.advance(10, tokens=500)  # 30 s: one line; 20 of 40 done in 30 s -> 30 s left; 1000 tokens / 30 s
    assert buf.getvalue() == "sample chunk 1/1: 20/40 sequences (50%), 33 tok/s, ETA 0:30\n"
    clock[0] += 5
    rep.advance(5)
    assert buf.getvalue().count("\n") == 1
    rep, buf = _plain(monkeypatch, "0")
    rep.grow(2)
    rep.advance(1, tokens=3)
    rep.advance(1, tokens=3)
    rep.update(2, tokens=6)  # the same state again: not printed twice
    assert buf.getvalue().count("\n") == 3 and "\r" not in buf.getvalue()


def test_bad_interval_warns_and_uses_the_default(monkeypatch, caplog):
    monkeypatch.setenv("GPO_PROGRESS_EVERY", "soon")
    assert progress.progress_every() == progress.DEFAULT_EVERY_S
    assert "GPO_PROGRESS_EVERY" in caplog.text
    monkeypatch.setenv("GPO_PROGRESS_EVERY", "off")
    assert progress.progress_every() is None


def test_terminal_gets_a_rich_bar_that_goes_away(monkeypatch):
    from rich.console import Console

    monkeypatch.setenv("GPO_PROGRESS_EVERY", "30")
    buf = io.StringIO()
    rep = progress.Reporter("sample chunk 1/1", console=Console(file=buf, force_terminal=True, width=120))
    assert rep.terminal
    rep.grow(8)
    rep.advance(8, tokens=64)
    rep.close()
    shown = buf.getvalue()
    assert "sample chunk 1/1" in shown and "8/8" in shown and "\x1b[" in shown  # drawn with terminal codes
    assert rep._bar is None


def test_hf_backend_reports_every_decode_step():
    from stages.core.generation.backends import Request, Sampling, load_tokenizer
    from stages.core.generation.hf_backend import HFGenerator
    from stages.core.generation.prompts import build_prompt

    calls = []

    class Spy:
        def advance(self, items=0, tokens=0, finished_tokens=0):
            calls.append((items, tokens, finished_tokens))

    gen = HFGenerator(str(TOY_MODEL), device="cpu", tokenizer=load_tokenizer(str(TOY_MODEL)))
    gen.progress = Spy()
    question = load_problems(PROBLEMS).table.column("question")[0].as_py()
    prompt = tuple(build_prompt(gen.tokenizer, question)[1])
    out = gen.generate([Request(prompt, 3, seed=1)], Sampling(max_new_tokens=12))
    completions = out[0]
    assert len(calls) > 1  # one batch, many reports
    assert sum(i for i, _, _ in calls) == 3
    assert sum(t for _, t, _ in calls) == sum(f for _, _, f in calls) == sum(len(c.token_ids) for c in completions)


def test_engine_bar_passes_iterables_through_and_forwards_updates():
    got = []

    class Rep:
        def advance(self, items=0, tokens=0, finished_tokens=0):
            got.append(items)

    make = progress.EngineBar.factory(Rep())
    prompts = [1, 2, 3]
    assert make(prompts, desc="Rendering prompts") is prompts
    bar = make(total=3, desc="Processed prompts", dynamic_ncols=True, postfix="")
    bar.postfix = "speed"
    bar.update(1)
    bar.update(2)
    assert bar.n == 3 and got == [1, 2] and bar.format_dict["elapsed"] > 0
    bar.refresh()
    bar.close()


def test_train_reports_steps_loss_and_eta_to_stderr_only(base_model, run_dir, tmp_path, monkeypatch, capfd):  # noqa: F811
    from stages.train import train

    monkeypatch.setenv("GPO_PROGRESS_EVERY", "0")
    train(run_dir, train_settings(base_model, max_steps=3), tmp_path / "out", log=quiet)
    captured = capfd.readouterr()
    steps = re.findall(r"^train: (\d+)/3 steps", captured.err, re.M)
    assert steps[-1] == "3" and {"1", "2", "3"} <= set(steps)
    assert re.search(r"^train: 3/3 steps \(100%\), loss [0-9.e-]+", captured.err, re.M)
    assert "\r" not in captured.err and "it/s]" not in captured.err  # no tqdm bar
    assert "'loss'" not in captured.out  # transformers' log printer (disable_tqdm's default) is not there


def test_eta_counts_tokens_so_it_does_not_grow_while_long_sequences_run(monkeypatch):
    """Issue 21.14: 12 short (20 tokens) and 4 long (200) sequences decode together, one token per second
    each. Counting finished sequences, the ETA grows from 17 s to 50 s while the long ones run; counting
    the tokens still expected (their 256-token budget, once they outlive the finished ones' mean), it falls."""
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("GPO_PROGRESS_EVERY", "off")

    def eta_at(t: float, by_tokens: bool) -> float:
        rep = progress.Reporter("estimate chunk 1/1", terminal=False)
        clock[0] = 100.0
        rep.grow(16, budget=256 if by_tokens else 0)
        clock[0] = 100.0 + t
        running = 4 * min(t, 200)
        rep.update(12, tokens=12 * 20 + running, finished_tokens=12 * 20 if by_tokens else None)
        return rep.rates()[1]

    assert eta_at(150, by_tokens=False) > 2.5 * eta_at(50, by_tokens=False)  # the old rule: grows
    assert eta_at(150, by_tokens=True) < eta_at(50, by_tokens=True)
    assert eta_at(150, by_tokens=True) > 50  # and it does not promise less than the true 50 s left


def test_slow_generation_prints_decimals_not_zero_tokens_per_second(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    rep, buf = _plain(monkeypatch, "0")
    clock[0] = 100.0
    rep.grow(4, budget=64)
    clock[0] = 110.0
    rep.advance(0, tokens=3)  # 0.3 tokens per second: a big model on a CPU
    assert "0.3 tok/s" in buf.getvalue() and " 0 tok/s" not in buf.getvalue()


def test_quiet_switches_every_progress_display_off(monkeypatch):
    monkeypatch.setenv("GPO_PROGRESS_EVERY", "0")
    assert progress.progress_every() == 0
    progress.set_quiet(True)
    try:
        assert progress.progress_every() is None
        rep, buf = _plain(monkeypatch, "0")
        rep.grow(2)
        rep.advance(2, tokens=10)
        assert buf.getvalue() == ""
    finally:
        progress.set_quiet(False)


@pytest.mark.parametrize("stage,stats,shown,hidden", [
    ("estimate", {"trajectories": 4, "steps": 10, "rollouts": 40, "generated_sequences": 40,
                  "truncated_sequences": 0}, ["10 steps", "40 rollouts"], ["accuracy"]),
    ("locate", {"trajectories": 4, "located": 3, "agrees": 2}, ["4 rows"], ["accuracy"]),
    ("sample", {"trajectories": 4, "correct": 1, "generated_sequences": 4, "truncated_sequences": 0},
     ["accuracy 0.250"], []),
])
def test_stage_summaries_print_what_means_something_there(capsys, stage, stats, shown, hidden):
    """Issue 21.14: estimate and locate score nothing, so `accuracy 0.000` meant nothing in their summaries."""
    from gpo_cli.stage_cmds import report

    report({"stage": stage, "shard": 0, "num_shards": 1, "rows": 4, "wall_seconds": 1.0, "stats": stats})
    line = capsys.readouterr().err
    assert all(s in line for s in shown) and not any(h in line for h in hidden), line


def test_quiet_flag_leaves_the_summary_and_nothing_else(tmp_path, monkeypatch):
    """Issue 21.13: --quiet beside GPO_PROGRESS_EVERY, a runtime option of every stage command."""
    monkeypatch.setenv("GPO_PROGRESS_EVERY", "0")  # every update would print a line
    args = ["sample", "--problems", PROBLEMS, "--model", TOY_MODEL, "--n", "2", "--max-new-tokens", "16",
            "--backend", "hf"]
    loud = gpo(*args, "--run", tmp_path / "loud")
    quiet = gpo(*args, "--run", tmp_path / "quiet", "--quiet")
    assert "sample chunk" in loud and "tok/s" in loud
    assert "sample chunk" not in quiet and "tok/s" not in quiet and "sample shard 0/1: 8 rows" in quiet
    assert progress.progress_every() == 0  # the switch ends with the command
    for command in ("sample", "estimate", "locate", "branch", "train", "eval"):
        assert "--quiet" in gpo(command, "--help")


def test_engine_bar_reads_finished_tokens_from_vllms_speed_postfix(monkeypatch):
    """vLLM reports finished requests' tokens only as `output: <tokens / elapsed> toks/s` in the postfix it
    sets before update(n) (vllm/entrypoints/common/offline.py); the token ETA needs the count back."""
    got = []

    class Rep:
        def advance(self, items=0, tokens=0, finished_tokens=0):
            got.append((items, tokens, finished_tokens))

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = progress.EngineBar.factory(Rep())(total=4)
    for total_tokens, n in ((30, 1), (100, 2)):
        clock[0] += 5
        speed = total_tokens / bar.format_dict["elapsed"]  # what vLLM computes and prints with 2 decimals
        bar.postfix = f"est. speed input: 12.00 toks/s, output: {speed:.2f} toks/s"
        bar.update(n)
    assert got == [(1, 30, 30), (2, 70, 70)]
