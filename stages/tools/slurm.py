"""Slurm: one readable, hand-editable sbatch script per stage, submitted as an afterok chain.

    gpo slurm runs/toy --stages sample,estimate,locate,branch --shards 8 --partition gpu --submit
    sbatch --array=3,5 runs/toy/slurm/estimate.sbatch    # rerun only the shards `gpo status` lists

Array task i of a sharded stage runs `gpo <stage> ... --shard i/N`. N is written into the script rather
than read from SLURM_ARRAY_TASK_COUNT, because a resubmitted subset (--array=3,5) has its own count (2).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from stages.core.pipeline import layout
from stages.core.pipeline.errors import GpoError, UsageError
from stages.core.pipeline.query import array_spec

SHARDED = ("sample", "estimate", "locate", "branch", "eval")
UNSHARDED = ("train",)
CPU_ONLY = ("locate",)  # no generation: asking for a GPU there only waits in the queue longer
GENERATING = ("sample", "estimate", "branch", "eval")  # these take --threads (torch's CPU threads)
_EVAL_LABEL = re.compile(r"eval_[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SlurmOptions:
    """What goes into the #SBATCH header and the few lines before the command; None leaves a line out."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 4
    mem: str | None = None  # e.g. "32G"
    time: str | None = None  # e.g. "04:00:00"
    account: str | None = None
    qos: str | None = None
    extra: tuple[str, ...] = ()  # more header lines, e.g. ("--constraint=a100",)
    venv: str | None = None  # activated before gpo runs (see default_venv)
    workdir: str | None = None  # cd here first; default: the directory the scripts are written from
    signal_seconds: int = 120  # SIGTERM this long before the time limit: gpo stops cleanly (exit 143)
    launcher: str = "exec"  # "exec" (gpo replaces the batch shell) or "srun"


def default_venv(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> str | None:
    """$GPO_VENV, else ./.venv when it exists, else None (gpo must then be on the job's PATH)."""
    env = os.environ if environ is None else environ
    if env.get("GPO_VENV"):
        return env["GPO_VENV"]
    local = (cwd or Path.cwd()) / ".venv"
    return str(local.resolve()) if (local / "bin" / "activate").exists() else None


def check_stage(stage: str) -> None:
    if stage not in SHARDED + UNSHARDED and not _EVAL_LABEL.fullmatch(stage):
        raise GpoError(f"unknown stage '{stage}': expected sample, estimate, locate, branch, train, "
                       "eval or eval_<label>")


def is_sharded(stage: str) -> bool:
    return stage not in UNSHARDED


def script_path(run: Path, stage: str) -> Path:
    return Path(run) / "slurm" / f"{stage}.sbatch"


def _check_options(options: SlurmOptions) -> None:
    if options.launcher not in ("exec", "srun"):
        raise GpoError(f"launcher must be exec or srun, not {options.launcher!r}")
    if options.gpus_per_task < 0 or options.cpus_per_task < 1 or options.signal_seconds < 0:
        raise GpoError("need gpus-per-task >= 0, cpus-per-task >= 1 and signal seconds >= 0")
    for line in options.extra:
        if "\n" in line or not line.strip():
            raise GpoError(f"extra #SBATCH line must be one non-empty line, not {line!r}")


def _quote(arg: str) -> str:
    """Shell-quote one argument; one containing ${...} stays expandable (e.g. ${SLURM_GPUS_ON_NODE})."""
    if "${" in arg:
        return '"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"'
    return shlex.quote(arg)


def render_script(run: Path, stage: str, argv: Sequence[str], shards: int, options: SlurmOptions) -> str:
    """The text of RUN/slurm/<stage>.sbatch (a plain template: edit it, then sbatch it)."""
    run = Path(run).resolve()
    sharded = is_sharded(stage)
    logs = layout.logs_dir(layout.stage_dir(run, stage))
    header = [f"--job-name=gpo-{stage}"]
    if sharded:
        header.append(f"--array=0-{shards - 1}")
    header += [f"--output={logs}/{'%A_%a' if sharded else '%j'}.out", "--open-mode=append",
               f"--signal=B:TERM@{options.signal_seconds}", "--requeue", "--ntasks=1",
               f"--cpus-per-task={options.cpus_per_task}"]
    if options.gpus_per_task and stage not in CPU_ONLY:
        header.append(f"--gpus-per-task={options.gpus_per_task}")
    for flag in ("partition", "mem", "time", "account", "qos"):
        value = getattr(options, flag)
        if value:
            header.append(f"--{flag}={value}")
    header += [line.strip() for line in options.extra]

    command = [_quote(a) for a in argv]
    generating = len(argv) > 1 and Path(argv[0]).name == "gpo" and argv[1] in GENERATING
    if generating and not any(a == "--threads" or a.startswith("--threads=") for a in argv):
        command += ["--threads", '"${SLURM_CPUS_PER_TASK}"']  # as many torch threads as the job's CPUs
    if sharded and not any(a == "--shard" or a.startswith("--shard=") for a in argv):
        command += ["--shard", f'"${{SLURM_ARRAY_TASK_ID}}/{shards}"']
    if options.launcher == "srun":
        command = ["srun", "--ntasks=1", *command]
    shard_note = f"shard ${{SLURM_ARRAY_TASK_ID}}/{shards}" if sharded else "(one job)"
    lines = [
        "#!/bin/bash",
        f"# gpo {stage} for {run}: written by `gpo slurm`; edit freely, then `sbatch` this file.",
    ]
    if sharded:
        lines.append(f"# Task i runs shard i/{shards}. To rerun only the unfinished shards that `gpo status` lists:\n"
                     f"#   sbatch --array=<list, e.g. 1,4-5> {script_path(run, stage)}")
    lines += [f"#SBATCH {h}" for h in header]
    lines += ["", "set -euo pipefail", f"cd {shlex.quote(str(Path(options.workdir or Path.cwd()).resolve()))}"]
    if options.venv:
        lines.append(f"source {shlex.quote(str(Path(options.venv) / 'bin' / 'activate'))}")
    lines += [
        "export HF_HUB_OFFLINE=1",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        f'echo "gpo {stage} {shard_note}: job ${{SLURM_JOB_ID}} on $(hostname) at $(date -Is)"',
        "# exec: the batch shell becomes gpo, so the SIGTERM from --signal=B:TERM reaches it directly.",
        "exec " + " \\\n    ".join(_wrap(command)),
        "",
    ]
    return "\n".join(lines)


def _wrap(words: list[str]) -> list[str]:
    """Put each --option and its value on one line of their own, so a long command stays readable."""
    lines: list[str] = []
    for word in words:
        if not lines or word.startswith("--"):
            lines.append(word)
        else:
            lines[-1] += " " + word
    return lines


def write_scripts(run: Path, commands: Mapping[str, Sequence[str]], shards: int | Mapping[str, int],
                  options: SlurmOptions = SlurmOptions()) -> list[Path]:
    """Write RUN/slurm/<stage>.sbatch for each stage -> argv (in chain order); return the paths.

    argv is the whole command line (e.g. ["gpo", "estimate", "--run", "runs/x", "--k", "4"]);
    `--shard ${SLURM_ARRAY_TASK_ID}/N` is appended for sharded stages. shards: one count for every
    sharded stage, or a count per stage; `train` is always one job.
    """
    if not commands:
        raise GpoError("no stages to write scripts for")
    _check_options(options)
    paths = []
    for stage, argv in commands.items():
        check_stage(stage)
        count = shards.get(stage, 1) if isinstance(shards, Mapping) else shards
        if not isinstance(count, int) or count < 1:
            raise UsageError(f"shards must be >= 1, not {count!r} ({stage})")
        if not argv:
            raise GpoError(f"empty command line for stage '{stage}'")
        if is_sharded(stage) and "--overwrite" in argv:  # each task would clear what the others wrote
            raise UsageError(f"--overwrite cannot go into the {stage} array: clear {Path(run) / stage} once "
                           "(or use a new run directory), then submit")
        layout.logs_dir(layout.stage_dir(run, stage)).mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        path = script_path(run, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(render_script(run, stage, [str(a) for a in argv], count, options))
        tmp.chmod(0o755)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def submit(scripts: Sequence[Path], dependency_chain: bool = True, after: str | None = None) -> dict[str, str]:
    """sbatch each script in order, each waiting (afterok) for the one before; return stage -> job id.

    afterok on an array job id waits for every task of the array. `after` makes the first job wait too.
    """
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise GpoError("sbatch not found on PATH: submit from a Slurm login node, or sbatch the written scripts there")
    ids: dict[str, str] = {}
    previous = after
    for script in scripts:
        cmd = [sbatch, "--parsable"]
        if dependency_chain and previous:
            cmd.append(f"--dependency=afterok:{previous}")
        proc = subprocess.run([*cmd, str(script)], capture_output=True, text=True)
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
            done = ", ".join(f"{stage} {job}" for stage, job in ids.items()) or "nothing"
            raise GpoError(f"sbatch {script} failed: {said} (already submitted: {done})")
        previous = proc.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
        ids[Path(script).stem] = previous
    return ids


def resubmit_command(run: Path, stage: str, unfinished: Sequence[int]) -> str:
    """The sbatch line that reruns only the unfinished shards of a stage with its written script."""
    check_stage(stage)
    script = script_path(run, stage)
    if not script.exists():
        raise GpoError(f"no script {script}: write it first with `gpo slurm {run}`")
    if not is_sharded(stage):
        return f"sbatch {shlex.quote(str(script))}"
    if not unfinished:
        raise GpoError(f"stage '{stage}' has no unfinished shards to resubmit")
    return f"sbatch --array={array_spec(sorted(set(unfinished)))} {shlex.quote(str(script))}"
