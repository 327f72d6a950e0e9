"""--threads: torch's CPU threads per process, chosen before the model loads, recorded in the manifest,
and written into the Slurm scripts from --cpus-per-task."""

from __future__ import annotations

import json

import pytest

from stages.core.generation.backends import default_threads, runnable_now
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.settings import Runtime
from tests.helpers import TOY_MODEL, gpo


def test_default_threads_follow_slurm_then_the_free_cores():
    assert default_threads({"SLURM_CPUS_PER_TASK": "6"}, cores=2, running=9) == 6
    assert default_threads({}, cores=2, running=1) == 2  # alone: every core
    assert default_threads({}, cores=2, running=2) == 1  # one other job runnable: the free core
    assert default_threads({}, cores=8, running=4) == 5
    assert default_threads({}, cores=2, running=7) == 1  # never below 1
    assert default_threads({"SLURM_CPUS_PER_TASK": ""}, cores=4, running=1) == 4


def test_default_threads_ignore_a_momentary_task_but_not_a_steady_one():
    blip = iter([2, 1, 1, 1, 1, 1, 1, 1])  # a task runnable in one read only (a process exiting)
    assert default_threads({}, cores=2, probe=lambda: next(blip), interval=0) == 2
    assert default_threads({}, cores=2, probe=lambda: 2, interval=0) == 1  # another job, runnable in every read
    reads = []
    default_threads({}, cores=2, probe=lambda: reads.append(1) or 1, samples=5, interval=0)
    assert len(reads) == 5


def test_runnable_tasks_leave_out_this_process_s_own_spinning_threads(tmp_path):
    (tmp_path / "loadavg").write_text("0.52 0.40 0.31 4/211 9999\n")
    for tid, name, state in [(10, "python", "R"), (11, "w) R (x", "S"), (12, "pool", "S"), (13, "omp", "R")]:
        (tmp_path / "self" / "task" / str(tid)).mkdir(parents=True)
        (tmp_path / "self" / "task" / str(tid) / "stat").write_text(f"{tid} ({name}) {state} 1 2 3\n")
    assert runnable_now(tmp_path) == 3  # 4 runnable, one of them this process's spinning worker
    (tmp_path / "self" / "task" / "13" / "stat").write_text("13 (omp) S 1 2 3\n")
    assert runnable_now(tmp_path) == 4
    assert runnable_now(tmp_path / "missing") == 1  # no /proc: assume nothing else runs


def test_threads_below_one_are_refused():
    with pytest.raises(GpoError, match="--threads must be at least 1"):
        Runtime(threads=0)


@pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_reach_torch_and_the_manifest(tmp_path, threads):
    import torch

    run = tmp_path / "run"
    gpo("sample", "--problems", "toy:arith?n=2&seed=0&split=train", "--model", TOY_MODEL, "--run", run,
        "--n", 2, "--max-new-tokens", 8, "--backend", "hf", "--threads", threads)
    assert torch.get_num_threads() == threads  # the CLI ran in this process
    manifest = json.loads((run / "sample" / "_shards" / "00000.json").read_text())
    assert manifest["backend"]["threads"] == threads
    assert manifest["generated_tokens"] == manifest["stats"]["generated_tokens"] > 0
    assert manifest["cpu_seconds"] > 0 and manifest["wall_seconds"] > 0


def test_gpo_slurm_passes_cpus_per_task_as_threads(tmp_path):
    run = tmp_path / "run"
    gpo("slurm", run, "--stages", "sample,locate", "--cpus-per-task", 3,
        "--args", f"sample=--problems toy:arith?n=2 --model {TOY_MODEL}")
    sample = (run / "slurm" / "sample.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=3" in sample and '--threads "${SLURM_CPUS_PER_TASK}"' in sample
    assert "--threads" not in (run / "slurm" / "locate.sbatch").read_text()


BORROW_MODEL = TOY_MODEL.parent / "borrow-model"


@pytest.mark.skipif(not (BORROW_MODEL / "config.json").exists(), reason="data/borrow-model not built")
def test_generated_tokens_do_not_depend_on_the_thread_count():
    """The default thread count follows the machine's load (above), so a run's tokens must not: the demo's
    summary is compared with a committed one. Rollouts of 8 to 157 tokens in one refilled batch of the
    demo's model, at 1 and at 2 threads."""
    import torch

    from stages.core.generation.backends import Request, Sampling, set_threads
    from stages.core.generation.hf_backend import HFGenerator
    from stages.core.sources.problems import load_problems

    before = torch.get_num_threads()
    gen = HFGenerator(str(BORROW_MODEL), dtype="fp32", device="cpu", batch_size=32)
    problems = load_problems("toy:borrow?n=24&seed=5&split=valid").table.to_pylist()
    reqs = [Request(tuple(gen.tokenizer(p["question"] + "\n")["input_ids"]), 3, 1000 + i, 8 + 37 * i % 150)
            for i, p in enumerate(problems)]  # budgets of 8 to 157 tokens: rows leave and join at every stage
    runs = {}
    try:
        for threads in (1, 2):
            assert set_threads(threads) == threads
            out = gen.generate(reqs, Sampling(1.0, 1.0, 160, logprobs=True))
            runs[threads] = [[(c.token_ids, c.logprobs) for c in g] for g in out]
    finally:
        set_threads(before)
    lengths = [len(ids) for g in runs[1] for ids, _ in g]
    assert min(lengths) < 40 and max(lengths) > 100  # ragged: rows leave and join the batch
    assert runs[1] == runs[2]  # the same tokens and the same log-probabilities, to the bit
