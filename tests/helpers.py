"""Helpers shared by tests (not fixtures: those live in conftest.py). No test module imports another one.

Paths (REPO, TOY_MODEL); the scripted toy policy whose critical step is known by construction (toy_policy,
rambling_policy) and the chain that runs it (run_chain); running a command as a user would (gpo) and checking
that bad input is refused in one line (fails_cleanly, refused); the tiny Llama the train tests fine-tune
(build_tokenizer, write_run, train_settings).

`stall_env`: a deterministic hook for fault tests. A `gpo` process started with this environment runs
unchanged (same entry point, same code) until it reaches a named point, writes its pid to a marker file and
waits there, so a test can signal it *at* that point instead of sleeping and hoping to land in a window.
The points are the run folder's durable writes (every one goes through os.replace: a temp file renamed into
place), named by the file they create, or the first import of a module (start-up). Installed as a
sitecustomize module on PYTHONPATH, so it also reaches processes that gpo or Slurm start.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOY_MODEL = REPO / "data" / "toy-model"
_LINE = re.compile(r"([a-z]): (-?\d+) ([+-]) (\d+) = (-?\d+)")

HOOK = '''\
"""Test-only hook (tests/helpers.py writes it): stall at GPO_TEST_STALL, see stall_env there."""
import fnmatch, os, sys, time

_spec, _marker = os.environ.get("GPO_TEST_STALL", ""), os.environ.get("GPO_TEST_STALL_MARKER", "")


def _stall(point):
    if os.path.exists(_marker):  # one stall per marker: a rerun (or a resubmitted Slurm task) runs through
        return
    with open(_marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {point}")
    os.replace(_marker + ".tmp", _marker)
    time.sleep(float(os.environ.get("GPO_TEST_STALL_S", "300")))  # the test's signal lands here
    sys.stderr.write(f"stall hook: no signal came at {point}\\n")
    os._exit(97)  # never carry on as if nothing was tested


if _spec.startswith("import:"):
    class _ImportStall:
        def find_spec(self, name, path=None, target=None):
            if name == _spec[len("import:"):]:
                sys.meta_path.remove(self)
                _stall(_spec)
            return None

    sys.meta_path.insert(0, _ImportStall())
elif _spec:
    _when, _nth, _pattern = _spec.split(":", 2)  # before|after : nth match : glob of the destination path
    _seen, _replace = [0], os.replace

    def _hooked_replace(src, dst, *args, **kwargs):
        hit = fnmatch.fnmatch(os.fspath(dst), _pattern)
        if hit:
            _seen[0] += 1
            hit = _seen[0] == int(_nth)
        if hit and _when == "before":
            _stall(f"before {dst}")
        _replace(src, dst, *args, **kwargs)
        if hit and _when == "after":
            _stall(f"after {dst}")

    os.replace = _hooked_replace
'''


def stall_env(tmp: Path, point: str, *, nth: int = 1, env: dict | None = None) -> tuple[dict, Path]:
    """The environment for a process that stalls at `point`, and the marker it writes when it gets there.

    point: "before:GLOB" / "after:GLOB" (the nth os.replace onto a path matching GLOB, e.g.
    "before:*/sample/shard-00000.chunk-00001.parquet"), or "import:MODULE" (its first import)."""
    hook_dir = Path(tempfile.mkdtemp(prefix="stall-hook-", dir=tmp))
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    marker = hook_dir / "reached"
    base = dict(os.environ if env is None else env)
    when, _, pattern = point.partition(":")
    spec = point if when == "import" else f"{when}:{nth}:{pattern}"
    return {**base, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook_dir), base.get("PYTHONPATH")])),
            "GPO_TEST_STALL": spec, "GPO_TEST_STALL_MARKER": str(marker)}, marker


def wait_for_stall(proc: subprocess.Popen, marker: Path, timeout: float = 600) -> str:
    """Wait until the process reaches its stall point; fail (and kill it) if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before reaching its stall point: "
                                 "nothing would be tested")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the process did not reach its stall point in {timeout}s")
        time.sleep(0.05)
    return marker.read_text().split(" ", 1)[1]


# --- the scripted toy policy ---------------------------------------------------------------------------

def parse_question(question: str) -> tuple[int, list[tuple[str, str, int]]]:
    words = question.split()
    start = int(words[1])
    ops = [(words[i][0], words[i + 1], int(words[i + 2])) for i in range(2, len(words), 3)]
    return start, ops


def hard_line(ops) -> int:
    return len(ops) // 2


def toy_policy(tokenizer, flip=lambda seed: seed % 2 == 1, wrong_line=lambda start, ops: hard_line(ops)):
    """Correct everywhere except the hard line (wrong_line(start, ops); by default len(ops) // 2), wrong there
    when flip(seed): by construction V(s_i) is about 1/2 up to the hard line and 0 after a wrong one, so the
    critical step of every failed trajectory is the hard line."""
    def respond(prompt_ids, seed: int) -> str:
        text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
        question, _, done = text.partition("\n")
        start, ops = parse_question(question)
        hard = wrong_line(start, ops)
        done_lines = [line for line in done.split("\n") if line]
        value = int(_LINE.fullmatch(done_lines[-1]).group(5)) if done_lines else start
        lines = []
        for i in range(len(done_lines), len(ops)):
            label, op, digit = ops[i]
            result = value + digit if op == "+" else value - digit
            if i == hard and flip(seed):
                result += 1
            lines.append(f"{label}: {value} {op} {digit} = {result}")
            value = result
        lines.append(f"answer: {value}")
        return "\n".join(lines)
    return respond


def rambling_policy(tok):
    """The scripted toy policy, but half of its wrong answers run on past the length limit."""
    base, ramble = toy_policy(tok), "\nz: 1 + 1 = 2" * 12

    def respond(prompt_ids, seed: int) -> str:
        if "answer:" in tok.decode(list(prompt_ids)):  # a state inside a rambling response: ramble on
            return ramble
        text = base(prompt_ids, seed)
        return text + ramble if seed % 4 == 1 else text
    return respond


def run_chain(run, make, *, n_problems=6, n=4, k=16, estimator="full", baseline=False, prefix="in-response",
              shards=1, rule: str | None = "abs-advantage", budget=24, m=8, max_new_tokens=64, chunk_groups=2,
              stages=4):
    """sample -> estimate -> locate -> branch (the first `stages` of them) on a generator from make(), on
    toy:arith problems, in-process (seconds); rule None: locate's default. Returns the generator."""
    from stages import branch, estimate, locate, sample
    from stages.core.pipeline.runner import run_stage
    from stages.core.sources.problems import load_problems

    source = f"toy:arith?n={n_problems}&seed=0&split=train"
    problems = load_problems(source).table
    gen = make()
    for stage, settings in [
        (sample.STAGE, sample.SampleSettings(problems=source, model="fake", n=n, max_new_tokens=max_new_tokens)),
        (estimate.STAGE, estimate.EstimateSettings(k=k, estimator=estimator, budget=budget)),
        (locate.STAGE, locate.LocateSettings() if rule is None else locate.LocateSettings(rule=rule)),
        (branch.STAGE, branch.BranchSettings(m=m, baseline=baseline, prefix=prefix)),
    ][:stages]:
        for i in range(shards):
            run_stage(stage, run, settings, shard=(i, shards), make_generator=lambda: gen,
                      input_table=problems if stage is sample.STAGE else None, chunk_groups=chunk_groups)
    return gen


# --- commands as a user runs them ----------------------------------------------------------------------

def invoke(args):
    from typer.testing import CliRunner

    from gpo_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def gpo(*args) -> str:
    """Run a `gpo` command in-process as a user would; fail the test with its output if it fails."""
    result = invoke(args)
    assert result.exit_code == 0, result.output or repr(result.exception)
    return result.output


def fails_cleanly(args, match: str):
    """The command fails with one `error:` line, no traceback, and `match` somewhere in its output."""
    result = invoke(args)
    text = result.output
    assert result.exit_code != 0, text
    assert "Traceback" not in text, text
    assert match.lower() in text.lower(), text
    error_lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, text
    return result


def refused(args, match: str):
    """The command fails with one `error:` line holding `match`, no traceback and no rich panel."""
    result = invoke(args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match.lower() in lines[0].lower(), result.output
    return result


# --- the tiny Llama the train tests fine-tune ----------------------------------------------------------

SP = "\u2581"
PROBLEMS = [(a, 7 - a) for a in range(8)]  # every gold answer is 7
GOOD, BAD = "answer: 7", "answer: 9"


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", "\n", SP])}
    for word in ["q", "answer:", "+", "="] + [str(d) for d in range(10)]:
        for form in (word, SP + word):
            vocab[form] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="never", split=True)])
    core.decoder = decoders.Metaspace(replacement=SP, prepend_scheme="never", split=True)
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=64, clean_up_tokenization_spaces=False)


def prompt_text(a: int, b: int) -> str:
    return f"q {a} + {b}\n"  # the toy's plain template: question + "\n"; the tokenizer adds <bos>


def write_run(run: Path, tok, with_random_reset: bool = False, problems=PROBLEMS) -> Path:
    """A run folder whose sample and branch tables prefer GOOD to BAD on every problem."""
    import pyarrow as pa

    from stages.core.pipeline.artifacts import write_json_atomic, write_parquet_atomic

    sample, pairs, unpaired, resets = [], [], [], []
    for i, (a, b) in enumerate(problems):
        pid, prompt = f"p{i}", prompt_text(a, b)
        prompt_ids = tok(prompt).input_ids
        sample.append({"problem_id": pid, "sample_idx": 0, "prompt_text": prompt, "prompt_token_ids": prompt_ids,
                       "gold_answer": "7", "checker": "numeric"})
        for data in ("gpo", "baseline"):
            pair = {"pair_id": f"{data}/{pid}", "data": data, "problem_id": pid, "sample_idx": 0, "state_idx": 0,
                    "prefix_placement": "in-response", "prompt": prompt, "chosen": GOOD, "rejected": BAD,
                    "prompt_token_ids": prompt_ids,
                    "chosen_token_ids": tok(GOOD, add_special_tokens=False).input_ids,
                    "rejected_token_ids": tok(BAD, add_special_tokens=False).input_ids,
                    "chosen_reward": 1, "rejected_reward": 0, "gold_answer": "7"}
            pairs.append(pair)
            for side, label in (("chosen", True), ("rejected", False)):
                unpaired.append({"pair_id": pair["pair_id"], "data": data, "problem_id": pid, "prompt": prompt,
                                 "completion": pair[side], "label": label, "prompt_token_ids": prompt_ids,
                                 "completion_token_ids": pair[f"{side}_token_ids"]})
        resets.append({"data": "gpo", "problem_id": pid, "sample_idx": 0, "state_idx": 1,
                       "prompt": prompt + "answer:", "prefix_tokens": 1, "gold_answer": "7", "checker": "numeric",
                       "prompt_token_ids": prompt_ids + tok("answer:", add_special_tokens=False).input_ids,
                       "source": "test"})
    tables = {"sample": sample, "branch": pairs, "branch/unpaired": unpaired, "branch/reset_prompts": resets}
    for folder, rows in tables.items():
        write_parquet_atomic(pa.Table.from_pylist(rows), run / folder / "shard-00000.chunk-00000.parquet",
                             {"stage": "test"})
    for stage in ("sample", "branch"):
        write_json_atomic(run / stage / "_SUCCESS", {})
    return run


def train_settings(model, method="dpo", **kw):
    from stages.train import TrainSettings

    base = dict(learning_rate=5e-3, max_steps=3, batch_size=4, save_steps=50, max_length=32,
                num_generations=4, max_completion_length=4)
    return TrainSettings(method=method, model=str(model), **{**base, **kw})


def quiet(msg: str) -> None:
    pass
