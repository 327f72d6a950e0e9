"""Fault injection on the real CLI and the toy model: SIGKILL at random moments, then rerun the same command.

The final tables must equal an uninterrupted reference run row for row, and no partial file may ever be
visible to DuckDB. Marked slow; .ci/run runs it.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stages.core import artifacts
from stages.core.query import run_query
from tests.conftest import TOY_MODEL

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")]
GPO = [sys.executable, "-m", "gpo_cli.main"]
SOURCE = "toy:arith?n=16&seed=3&split=train"
COMMANDS = {
    "sample": ["sample", "--problems", SOURCE, "--model", str(TOY_MODEL), "--n", "4", "--max-new-tokens", "48",
               "--backend", "hf", "--chunk-groups", "2"],
    "estimate": ["estimate", "--k", "4", "--chunk-groups", "2"],
    "locate": ["locate", "--chunk-groups", "2"],
    "branch": ["branch", "--m", "6", "--baseline", "--chunk-groups", "2"],
}
TABLES = {"sample": ["sample"], "estimate": ["estimate", "rollouts"], "locate": ["locate"],
          "branch": ["branch", "unpaired", "reset_prompts", "continuations"]}


def gpo(run: Path, stage: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([*GPO, *COMMANDS[stage], "--run", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(run: Path, stage: str) -> float:
    t0 = time.time()
    proc = gpo(run, stage)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    return time.time() - t0


def rows(run: Path, table: str) -> list:
    data = artifacts.read_table(run, table).to_pylist()
    return sorted(data, key=lambda r: sorted((k, str(v)) for k, v in r.items()))


def assert_no_partial_files(run: Path) -> None:
    for path in run.rglob("*.parquet"):
        pq.read_metadata(path)  # a partial file has no footer and would raise
    for name in artifacts.list_tables(run):
        run_query(run, f'select count(*) from "{name}"')


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    durations = {stage: finish(run, stage) for stage in COMMANDS}
    return run, durations


def test_sigkill_at_random_moments_then_rerun_gives_the_reference_tables(reference, tmp_path):
    """4 independent trials per stage, each from the finished upstream stages: kill, check, rerun, compare."""
    ref, durations = reference
    rng = random.Random(1234)
    trials = 0
    upstream = None  # a run holding the finished stages before this one
    for stage in COMMANDS:
        for j in range(4):
            run = tmp_path / f"{stage}-{j}"
            if upstream is not None:
                shutil.copytree(upstream, run)
            proc = gpo(run, stage)
            time.sleep(rng.uniform(0.2, 0.9 * durations[stage]))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                trials += 1
            proc.wait()
            assert_no_partial_files(run)
            finish(run, stage)
            for table in TABLES[stage]:
                got, want = rows(run, table), rows(ref, table)
                assert len(got) == len(want), (stage, table)
                assert got == want, (stage, table)
        upstream = run
    assert trials >= 10


def test_sigterm_stops_a_stage_cleanly_and_rerun_completes(reference, tmp_path):
    ref, durations = reference
    run = tmp_path / "preempted"
    proc = gpo(run, "sample")
    time.sleep(max(0.5, durations["sample"] * 0.6))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode != 0:  # it may have finished before the signal arrived
        assert proc.returncode == 143 and "SIGTERM" in stderr and "Traceback" not in stderr
    assert not list(run.rglob(".tmp-*"))
    finish(run, "sample")
    assert rows(run, "sample") == rows(ref, "sample")


def test_gpo_run_as_a_program_handles_sigterm_before_its_imports_and_a_library_import_does_not():
    code = ("import signal, sys; sys.argv[0] = {argv0!r}; import gpo_cli.main; "
            "h = signal.getsignal(signal.SIGTERM); print(getattr(h, '__name__', h))")
    as_script = subprocess.run([sys.executable, "-c", code.format(argv0="/venv/bin/gpo")], capture_output=True,
                               text=True, check=True).stdout.strip()
    as_library = subprocess.run([sys.executable, "-c", code.format(argv0="pytest")], capture_output=True,
                                text=True, check=True).stdout.strip()
    assert as_script == "_sigterm_while_starting" and as_library != "_sigterm_while_starting"


@pytest.mark.parametrize("how", ["script", "module"])
def test_sigterm_while_starting_exits_143_with_one_line(how, tmp_path):
    """A preemption that lands while gpo is still importing exits 143 like one during a stage (not -15)."""
    argv = [str(Path(sys.executable).parent / "gpo")] if how == "script" else GPO
    proc = subprocess.Popen([*argv, "sample", "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(0.3)  # past the interpreter's own start-up (no handler can run there), inside the imports
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
