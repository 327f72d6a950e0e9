"""Fault injection on the real CLI and the toy model: SIGKILL at every window between a stage's durable
writes, SIGTERM mid-run and during start-up, then rerun the same command.

The final tables must equal an uninterrupted reference run row for row, and no partial file may ever be
visible to DuckDB. The kills land at named points (tests/helpers.py's stall hook: the process waits there
until signalled), never after a sleep: a test that would miss its window fails instead. Marked slow.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stages.core.pipeline import artifacts
from stages.core.pipeline.query import run_query
from tests.helpers import TOY_MODEL
from tests.helpers import stall_env, wait_for_stall

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")]
GPO = [sys.executable, "-m", "gpo_cli.main"]
SOURCE = "toy:arith?n=8&seed=3&split=train"  # 4 chunks of 2 problems
# One torch thread in every process: the default follows the machine's load, and the reference and a rerun
# must not differ by their thread counts (summation order) while a test compares their sampled tokens.
COMMANDS = {
    "sample": ["sample", "--problems", SOURCE, "--model", str(TOY_MODEL), "--n", "4", "--max-new-tokens", "48",
               "--backend", "hf", "--chunk-groups", "2", "--threads", "1"],
    "estimate": ["estimate", "--k", "4", "--chunk-groups", "2", "--threads", "1"],
    "locate": ["locate", "--chunk-groups", "2"],
    "branch": ["branch", "--m", "6", "--baseline", "--chunk-groups", "2", "--threads", "1"],
}
TABLES = {"sample": ["sample"], "estimate": ["estimate", "rollouts"], "locate": ["locate"],
          "branch": ["branch", "unpaired", "reset_prompts", "continuations"]}


def gpo(run: Path, stage: str, env: dict | None = None) -> subprocess.Popen:
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([*GPO, *COMMANDS[stage], "--run", str(run)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(run: Path, stage: str) -> None:
    proc = gpo(run, stage)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr


def windows(stage: str) -> list[str]:
    """Moments between durable writes (each a temp file renamed into place) where a kill can land: before
    chunk 1's primary file is renamed (chunk 0 done, chunk 1's other tables done: the primary, renamed last,
    marks a chunk done); before its first other table (estimate: nothing of chunk 1; branch: half of its
    tables); every chunk written but no shard manifest; the manifest written but no _SUCCESS.

    The four kinds of window are the runner's, shared by every stage: each stage is killed at one of them and
    each kind is hit once (sample's chunk window is also where the SIGTERM test below lands; every window of
    every stage would be fourteen kills, ten more process start-ups of the same code paths)."""
    chunk = "shard-00000.chunk-00001.parquet"
    primary, manifest, success = (f"before:*/{stage}/{name}" for name in (chunk, "_shards/00000.json", "_SUCCESS"))
    other = f"before:*/{stage}/{TABLES[stage][1]}/{chunk}" if len(TABLES[stage]) > 1 else None
    chosen = {"sample": [success], "estimate": [primary], "locate": [manifest], "branch": [other]}
    return chosen[stage]


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
    for stage in COMMANDS:
        finish(run, stage)
    return run


def test_sigkill_at_each_kind_of_window_then_rerun_gives_the_reference_tables(reference, tmp_path):
    """One run folder; each stage is killed at its window (windows() says which), then the same command is
    run again to the end: its tables equal the uninterrupted run's."""
    run = tmp_path / "run"
    for stage in COMMANDS:
        for point in windows(stage):
            env, marker = stall_env(tmp_path, point)
            proc = gpo(run, stage, env)
            wait_for_stall(proc, marker)  # fails if the stage finished or died before the window
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not (run / stage / "_SUCCESS").exists(), point
            assert_no_partial_files(run)
        finish(run, stage)
        for table in TABLES[stage]:
            got, want = rows(run, table), rows(reference, table)
            assert len(got) == len(want), table
            assert got == want, table


def test_sigterm_stops_a_stage_mid_run_cleanly_and_rerun_completes(reference, tmp_path):
    run = tmp_path / "preempted"
    # chunk 0 written; chunk 1's file complete in its temp name, not yet renamed into place
    env, marker = stall_env(tmp_path, "before:*/sample/shard-00000.chunk-00001.parquet")
    proc = gpo(run, "sample", env)
    wait_for_stall(proc, marker)  # fails if the stage finished (or died) before reaching chunk 1
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "SIGTERM" in stderr and "Traceback" not in stderr, stderr
    out = run / "sample"
    assert (out / "shard-00000.chunk-00000.parquet").exists()  # the finished chunk is kept
    assert not (out / "shard-00000.chunk-00001.parquet").exists() and not (out / "_SUCCESS").exists()
    assert not list(run.rglob(".tmp-*"))  # the abandoned chunk's temp file is removed
    finish(run, "sample")
    assert rows(run, "sample") == rows(reference, "sample")


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
    env, marker = stall_env(tmp_path, "import:typer")  # the first import after the handler is installed
    proc = subprocess.Popen([*argv, "sample", "--help"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_stall(proc, marker, timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
