"""Hostile model output never crashes a shard: no EOS, no newline, empty, enormous, pathological maths."""

import json

import pytest

from stages import branch, estimate, locate, sample
from stages.core.pipeline import artifacts
from stages.core.generation.backends import FakeGenerator
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems

HOSTILE = [
    "",                                                   # empty
    "I think the answer is 4 because " * 40,              # no newline at all, never ends (cut at the budget)
    "\\boxed{2^{2^{2^{2^{99999}}}}}",                     # huge power
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 600,     # deeply nested LaTeX
    "Step one.\n\nStep two.\n" * 2000,                    # enormous
    "Let me add.\nSo 2 + 2 = 4.\nThe answer is \\boxed{4}",  # a normal, correct one
]


@pytest.fixture(scope="module")
def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(HOSTILE * 3 + ["What is 2 + 2?\n"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")


def test_hostile_outputs_get_verdicts_and_the_stages_continue(tmp_path, byte_tokenizer, monkeypatch):
    monkeypatch.setenv("GPO_CHECK_TIMEOUT_S", "1.0")
    problems_file = tmp_path / "p.jsonl"
    problems_file.write_text("\n".join(json.dumps({"question": f"What is 2 + 2? ({i})", "answer": "4"})
                                       for i in range(3)) + "\n")
    problems = load_problems(str(problems_file)).table

    def respond(prompt_ids, seed):
        if byte_tokenizer.decode(list(prompt_ids)).endswith("?\n") is False and len(prompt_ids) > 40:
            return "\nSo the answer is \\boxed{4}"  # continuations from a reset state
        return HOSTILE[seed % len(HOSTILE)]

    gen = FakeGenerator(byte_tokenizer, respond)
    settings = sample.SampleSettings(problems="p", model="fake", n=12, max_new_tokens=300, template="plain")
    run_stage(sample.STAGE, tmp_path / "run", settings, input_table=problems, make_generator=lambda: gen)
    rows = artifacts.read_table(tmp_path / "run", "sample").to_pylist()
    assert len(rows) == 36
    assert {r["verdict_checker"] for r in rows} == {"math"}
    assert any(r["finish_reason"] == "length" for r in rows)  # never emitted EOS within the budget
    assert any(r["num_response_tokens"] == 0 for r in rows)
    for r in rows:
        if r["response_text"].startswith("\\boxed{2^"):
            assert r["reward"] == 0  # judged (wrong or timed out), never a crash
    run_stage(estimate.STAGE, tmp_path / "run", estimate.EstimateSettings(estimator="full", k=2, scope="all"),
              make_generator=lambda: gen)
    run_stage(locate.STAGE, tmp_path / "run", locate.LocateSettings(scope="all"))
    run_stage(branch.STAGE, tmp_path / "run", branch.BranchSettings(m=3), make_generator=lambda: gen)
    located = artifacts.read_table(tmp_path / "run", "locate").to_pylist()
    assert len(located) == 36 and any(r["reason"] == "not_estimated" for r in located)  # empty responses
    assert (tmp_path / "run" / "branch" / "_SUCCESS").exists()


HANG = r"so it is \boxed{2^{2^{2^{99999}}}}"  # sympy grinds on this for minutes


def test_every_scored_row_and_timeout_is_counted_in_the_stage_s_stats():
    from pathlib import Path

    from stages.core.scoring.answers import Verdict, timeout_summary
    from stages.core.pipeline.runner import Context

    class OutOfTime:  # a checker whose second row ran over its time
        name = "math"

        def check_many(self, responses, golds):
            return [Verdict("4", True, "math"), Verdict(None, False, "math", "timeout")]

        def close(self):
            pass

    ctx = Context(run=Path("."), stage=sample.STAGE, settings=None, shard=0, num_shards=1)
    ctx._checkers["math"] = OutOfTime()
    assert [v.correct for v in ctx.score(["math", "math"], ["a", "b"], ["4", "4"])] == [True, False]
    assert dict(ctx.stats) == {"answer_checks": 2, "check_timeouts": 1}
    text, warning = timeout_summary(ctx.stats)
    assert text == ", check timeouts 1/2" and "judged wrong" in warning
    assert timeout_summary({"answer_checks": 5, "check_timeouts": 0}) == (", check timeouts 0/5", None)


@pytest.mark.slow  # a math checker pool per stage (import and warm-up) and two real timeouts: ~25 s idle
def test_check_timeouts_are_counted_in_every_stage_s_manifest_and_summary(tmp_path, byte_tokenizer, monkeypatch,
                                                                          capsys):
    """Issue 21.7: a check that runs out of time is judged wrong; every stage that scores says how many."""
    from gpo_cli.stage_cmds import report
    from stages import eval as evaluation

    monkeypatch.setenv("GPO_CHECK_TIMEOUT_S", "1.0")
    problems_file = tmp_path / "p.jsonl"
    problems_file.write_text("\n".join(json.dumps({"question": f"What is 2 + 2? ({i})", "answer": "4"})
                                       for i in range(2)) + "\n")
    problems = load_problems(str(problems_file)).table
    calls = []

    def respond(prompt_ids, seed):  # the first response of each stage run hangs the checker
        calls.append(seed)
        return HANG if len(calls) == 1 else "Let me add.\nSo 2 + 2 = 4.\nThe answer is \\boxed{4}"

    gen = FakeGenerator(byte_tokenizer, respond)
    run = tmp_path / "run"
    settings = sample.SampleSettings(problems="p", model="fake", n=3, max_new_tokens=300, template="plain")
    manifests = [run_stage(sample.STAGE, run, settings, input_table=problems, make_generator=lambda: gen)]
    rows = artifacts.read_table(run, "sample").to_pylist()
    assert sum(r["verdict_error"] == "timeout" for r in rows) == 1
    assert manifests[0]["stats"]["check_timeouts"] == 1 and manifests[0]["stats"]["answer_checks"] == 6
    manifests.append(run_stage(estimate.STAGE, run, estimate.EstimateSettings(estimator="full", k=2),
                               make_generator=lambda: gen))
    run_stage(locate.STAGE, run, locate.LocateSettings())
    manifests.append(run_stage(branch.STAGE, run, branch.BranchSettings(m=4), make_generator=lambda: gen))
    calls.clear()
    label_settings = evaluation.EvalSettings(problems="p", model="fake", label="t", max_new_tokens=300,
                                             template="plain")
    manifests.append(run_stage(evaluation.make_stage("t"), run, label_settings, input_table=problems,
                               make_generator=lambda: gen))
    for manifest in manifests:
        assert manifest["stats"].get("answer_checks", 0) > 0 and "check_timeouts" in manifest["stats"], manifest
        report(manifest)
    summary_lines = [ln for ln in capsys.readouterr().err.splitlines() if "check timeouts" in ln]
    assert len(summary_lines) == 4 and "check timeouts 1/6" in summary_lines[0], summary_lines
    summary = evaluation.write_summary(run, "t", (1,))
    (greedy,) = summary["modes"]["greedy"].values()
    assert greedy["check_timeouts"] == 1, summary["modes"]
