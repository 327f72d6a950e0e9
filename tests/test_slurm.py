"""stages/tools/slurm.py against a real single-node Slurm cluster (Debian's slurm-wlm, run here as root;
scripts/setup.sh installs it through scripts/setup-slurm.sh, and the cluster tests skip only where it is absent).

The toy pipeline as afterok-chained array jobs gives the same rows as a local unsharded run, and a shard
killed with SIGTERM mid-way is listed by `gpo status`, resubmitted alone, and nothing is lost or doubled.
The cluster: slurmctld and slurmd in the foreground (-D) as our own child processes, config, state, spool
and logs in a temp dir, free ports, auth/none; stopped by their pids at teardown.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TOY_MODEL
from stages.tools import slurm
from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.query import stage_status

GPO = str(Path(sys.executable).parent / "gpo")
PROBLEMS = "toy:arith?n=6&seed=0&split=train"  # 3 problems (chunks) per shard; shard 1 is killed after one
SHARDS = 2
TIMEOUT_S = 420


def test_scripts_are_plain_sbatch_files(tmp_path):
    run = tmp_path / "run"
    options = slurm.SlurmOptions(partition="gpu", gpus_per_task=1, mem="16G", time="1:00:00",
                                 extra=("--constraint=a100",), venv="/opt/venv", workdir=str(tmp_path))
    paths = slurm.write_scripts(run, {"sample": ["gpo", "sample", "--problems", "toy:arith?n=2&seed=0"],
                                      "locate": ["gpo", "locate"],
                                      "train": ["accelerate", "launch", "--num_processes", "${SLURM_GPUS_ON_NODE}",
                                                "-m", "gpo_cli.main", "train"]}, 4, options)
    assert paths == [run / "slurm" / f"{s}.sbatch" for s in ("sample", "locate", "train")]
    sample, locate, train = (p.read_text() for p in paths)
    for line in ("#SBATCH --array=0-3", f"#SBATCH --output={run.resolve()}/sample/_logs/%A_%a.out",
                 "#SBATCH --signal=B:TERM@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu", "#SBATCH --constraint=a100",
                 f"cd {tmp_path}", "source /opt/venv/bin/activate", "export HF_HUB_OFFLINE=1",
                 "--problems 'toy:arith?n=2&seed=0'", '--shard "${SLURM_ARRAY_TASK_ID}/4"'):
        assert line in sample, line
    assert '--threads "${SLURM_CPUS_PER_TASK}"' in sample and "#SBATCH --cpus-per-task=4" in sample
    assert "--threads" not in locate + train  # torch threads are a generating stage's option
    assert "--gpus-per-task" not in locate and "--array" not in train and "%j.out" in train
    assert '"${SLURM_GPUS_ON_NODE}"' in train and "--shard" not in train
    assert (run / "sample" / "_logs").is_dir()  # sbatch does not create the --output folder
    for path in paths:
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert slurm.resubmit_command(run, "sample", [3, 0, 1]) == f"sbatch --array=0-1,3 {run}/slurm/sample.sbatch"
    assert slurm.resubmit_command(run, "train", []) == f"sbatch {run}/slurm/train.sbatch"


@pytest.mark.parametrize("stage, argv, shards, message", [
    ("sampel", ["gpo"], 2, "unknown stage 'sampel'"),
    ("estimate", ["gpo"], 0, "shards must be >= 1"),
    ("estimate", ["gpo", "estimate", "--overwrite"], 2, "--overwrite cannot go into the estimate array"),
])
def test_bad_input_is_one_line_error(tmp_path, stage, argv, shards, message):
    with pytest.raises(GpoError, match=message):
        slurm.write_scripts(tmp_path, {stage: argv}, shards)


def test_submit_without_sbatch_and_resubmit_without_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GpoError, match="sbatch not found"):
        slurm.submit([tmp_path / "x.sbatch"])
    with pytest.raises(GpoError, match="no script"):
        slurm.resubmit_command(tmp_path, "estimate", [1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(tmp: Path) -> str:
    # `slurmd -C` prints this machine's node line (real CPUs, sockets, cores, memory).
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    name = node.split()[0].split("=", 1)[1]
    return "\n".join([
        "ClusterName=gpotest", f"SlurmctldHost={name}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/none", "CredType=cred/none", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "MpiDefault=none", "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        f"StateSaveLocation={tmp}/state", f"SlurmdSpoolDir={tmp}/spool",
        f"SlurmctldPidFile={tmp}/slurmctld.pid", f"SlurmdPidFile={tmp}/slurmd.pid",
        f"SlurmctldLogFile={tmp}/log/slurmctld.log", f"SlurmdLogFile={tmp}/log/slurmd.log",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2", "MinJobAge=600",  # finished jobs stay visible to scontrol for 10 minutes
        f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
        f"PartitionName=test Nodes={name} Default=YES MaxTime=INFINITE State=UP", ""])


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if shutil.which("slurmctld") is None:  # installing is set-up's job, never a test's
        pytest.skip("slurmctld is not installed: scripts/setup.sh installs it (scripts/setup-slurm.sh, "
                    "as root with apt-get); see its output for why it could not")
    timings = {}
    tmp = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (tmp / sub).mkdir()
    conf = tmp / "slurm.conf"
    conf.write_text(_slurm_conf(tmp))
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # the clients (sbatch, squeue, ...) of this session use our cluster
    t1 = time.monotonic()
    procs = [subprocess.Popen([daemon, "-D", "-f", str(conf)], stdout=open(tmp / "log" / f"{daemon}.out", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
             for daemon in ("slurmctld", "slurmd")]
    try:
        state = ""
        while time.monotonic() - t1 < 60 and all(p.poll() is None for p in procs):
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.3)
        if state != "idle":
            logs = " | ".join((tmp / "log" / f"{d}.out").read_text()[-300:] for d in ("slurmctld", "slurmd"))
            pytest.fail(f"Slurm daemons did not come up (node state {state!r}): {logs}")  # installed: a failure
        timings["start_s"] = round(time.monotonic() - t1, 1)
        print(f"slurm cluster up: {timings}")
        yield {"conf": conf, "dir": tmp, "timings": timings}
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)  # only this cluster's jobs
        time.sleep(1)
    finally:
        _stop(procs)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def _queue() -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split(maxsplit=2)) for line in out.splitlines() if line.strip()]


def _mine(job: str, ids) -> bool:
    return any(job == i or job.startswith(f"{i}_") for i in ids)


def wait_jobs(ids, timeout: float = TIMEOUT_S, run: Path | None = None) -> None:
    """Wait until none of these jobs (or their array tasks) is queued any more; fail as soon as one
    can never start because a job it waits for failed."""
    ids, deadline = list(ids), time.monotonic() + timeout
    while left := [q for q in _queue() if _mine(q[0], ids)]:
        logs = _logs(run) if run else ""
        assert not any(q[2] == "DependencyNeverSatisfied" for q in left), f"a job failed: {left}\n{logs}"
        assert time.monotonic() < deadline, f"jobs {ids} still queued after {timeout}s: {left}\n{logs}"
        time.sleep(1)


def wait_reason(job: str, reason: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (found := [q[1:] for q in _queue() if _mine(q[0], [job])]) != [("PENDING", reason)]:
        assert time.monotonic() < deadline, f"job {job}: {found}, expected PENDING {reason}: {job_states(job)}"
        time.sleep(0.5)


def job_states(job: str) -> list[str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return [w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")]


def _logs(run: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted(run.glob("*/_logs/*.out")))


def commands(run: Path, stages=("sample", "estimate", "locate", "branch"), estimate_prefix=(GPO,)) -> dict:
    # --chunk-groups 1 everywhere: one problem per generate batch, whatever the sharding; one torch thread here
    # and on the cluster (the default follows the load; the tables are compared token for token).
    argv = {
        "sample": [GPO, "sample", "--problems", PROBLEMS, "--model", os.path.relpath(TOY_MODEL, REPO),
                   "--n", "2", "--max-new-tokens", "48", "--backend", "hf", "--device", "cpu", "--threads", "1"],
        "estimate": [*estimate_prefix, "estimate", "--k", "2", "--threads", "1"],
        "locate": [GPO, "locate"],
        "branch": [GPO, "branch", "--m", "2", "--threads", "1"],
    }
    return {s: [*argv[s], "--run", str(run), "--chunk-groups", "1"] for s in stages}


def _need_toy_model() -> None:
    assert TOY_MODEL.is_dir(), "data/toy-model is missing: build it with `gpo toy build --out data/toy-model`"


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same pipeline run here, unsharded: the reference rows."""
    _need_toy_model()
    run = tmp_path_factory.mktemp("local") / "run"
    t0 = time.monotonic()
    for stage, argv in commands(run).items():
        proc = subprocess.run(argv, cwd=REPO, env=_clean_env(), capture_output=True, text=True)
        assert proc.returncode == 0, f"local {stage} failed: {proc.stderr[-2000:]}"
    print(f"local unsharded pipeline: {time.monotonic() - t0:.1f}s")
    return run


def assert_same_tables(run: Path, reference: Path, skip=()) -> None:
    tables = sorted(set(artifacts.list_tables(reference)) - set(skip))
    assert {"sample", "estimate", "rollouts", "locate", "branch"} - set(skip) <= set(tables), tables
    for name in tables:
        got = sorted(map(repr, artifacts.read_table(run, name).to_pylist()))
        want = sorted(map(repr, artifacts.read_table(reference, name).to_pylist()))
        assert len(got) == len(want), f"{name}: {len(got)} rows on the cluster, {len(want)} locally"
        assert got == want, f"{name}: rows differ"


@pytest.mark.slow
def test_array_chain_of_shell_commands(cluster, tmp_path):
    """The cluster and the scripts alone: array tasks get shard i/N, afterok orders the stages."""
    run = tmp_path / "run"
    record = f'echo "$0 $2" >> {run}/seen.txt'  # $0: the stage, $1 $2: the appended --shard i/N
    scripts = slurm.write_scripts(run, {"sample": ["bash", "-c", record, "sample"],
                                        "train": ["bash", "-c", record, "train"]}, SHARDS,
                                  slurm.SlurmOptions(cpus_per_task=1, mem="100M", workdir=str(tmp_path)))
    ids = slurm.submit(scripts)
    wait_jobs(ids.values(), timeout=120)
    assert job_states(ids["sample"]) == ["COMPLETED"] * SHARDS and job_states(ids["train"]) == ["COMPLETED"]
    lines = (run / "seen.txt").read_text().splitlines()
    assert sorted(lines[:SHARDS]) == [f"sample {i}/{SHARDS}" for i in range(SHARDS)]
    assert lines[SHARDS:] == ["train "]  # after every sample task: afterok on the array job id
    assert (run / "train" / "_logs" / f"{ids['train']}.out").exists()


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory):
    """Case 1: sample -> estimate -> locate -> branch as SHARDS-task arrays chained with afterok."""
    _need_toy_model()
    run = tmp_path_factory.mktemp("cluster") / "run"
    options = slurm.SlurmOptions(cpus_per_task=1, mem="2G", venv=sys.prefix, workdir=str(REPO))
    t0 = time.monotonic()
    ids = slurm.submit(slurm.write_scripts(run, commands(run), SHARDS, options))
    wait_jobs(ids.values(), run=run)
    elapsed = time.monotonic() - t0
    print(f"slurm timings: {cluster['timings']}, sharded pipeline on the cluster: {elapsed:.1f}s")
    for stage, job in ids.items():
        assert job_states(job) == ["COMPLETED"] * SHARDS, f"{stage}: {job_states(job)}\n{_logs(run)}"
    return run


@pytest.mark.slow
def test_sharded_pipeline_on_slurm_matches_local_run(cluster_run, local_run):
    for row in stage_status(cluster_run):
        assert row["success"] and row["num_shards"] == SHARDS and not row["unfinished"], row
    assert_same_tables(cluster_run, local_run)
    log = (next((cluster_run / "estimate" / "_logs").glob("*_1.out"))).read_text()
    assert f"shard 1/{SHARDS}" in log


STALL = """\
import os, sys, time
from pathlib import Path
import stages.core.pipeline.runner as runner
from gpo_cli.main import app

marker, original = Path({marker!r}), runner._run_chunk

def stall_after_first_chunk(stage, out, ctx, rows, k, *args):
    original(stage, out, ctx, rows, k, *args)
    if ctx.shard == 1 and k == 0 and not marker.exists():  # only the first attempt of shard 1 stalls
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # the test's SIGTERM lands here

runner._run_chunk = stall_after_first_chunk
sys.argv[0] = "gpo"
app()
"""


@pytest.mark.slow
def test_killed_shard_is_listed_resubmitted_and_nothing_is_lost(cluster_run, local_run, tmp_path):
    """Case 2: SIGTERM one estimate task after its first chunk; resubmit only that shard."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(cluster_run / "sample", run / "sample")
    marker, wrapper = tmp_path / "stalled", tmp_path / "stall.py"
    wrapper.write_text(STALL.format(marker=str(marker)))
    options = slurm.SlurmOptions(cpus_per_task=1, mem="2G", workdir=str(REPO))
    cmds = commands(run, stages=("estimate", "locate", "branch"), estimate_prefix=(sys.executable, str(wrapper)))
    ids = slurm.submit(slurm.write_scripts(run, cmds, SHARDS, options))

    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists():
        assert time.monotonic() < deadline, f"shard 1 never reached its first chunk\n{_logs(run)}"
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=TERM", f"{ids['estimate']}_1"], check=True)
    wait_jobs([ids["estimate"]])
    wait_reason(ids["locate"], "DependencyNeverSatisfied")  # afterok on an array with a failed task
    assert job_states(f"{ids['estimate']}_1") == ["FAILED"]
    assert "SIGTERM" in (run / "estimate" / "_logs" / f"{ids['estimate']}_1.out").read_text()

    status = {r["stage"]: r for r in stage_status(run)}
    assert status["estimate"]["unfinished"] == [1] and not status["estimate"]["success"]
    assert (run / "estimate" / "shard-00001.chunk-00000.parquet").exists()  # finished chunk kept
    assert not list(run.glob("estimate/**/.tmp-*"))  # no partial files
    shown = subprocess.run([GPO, "status", str(run)], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "400"}).stdout
    command = slurm.resubmit_command(run, "estimate", status["estimate"]["unfinished"])
    assert command == f"sbatch --array=1 {run}/slurm/estimate.sbatch"
    assert command in " ".join(shown.split())

    argv = shlex.split(command)
    again = subprocess.run([argv[0], "--parsable", *argv[1:]], capture_output=True, text=True, check=True)
    job = again.stdout.strip().split(";")[0]
    subprocess.run(["scontrol", "update", f"JobId={ids['locate']}", f"Dependency=afterok:{job}"], check=True)
    wait_jobs([job, ids["locate"], ids["branch"]], run=run)
    assert job_states(job) == ["COMPLETED"], _logs(run)
    assert all(r["success"] and not r["unfinished"] for r in stage_status(run)), _logs(run)
    assert_same_tables(run, local_run)
