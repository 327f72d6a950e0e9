"""`gpo slurm`: write (and submit) one sbatch script per stage, chained with afterok."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from gpo_cli.common import err, handle_errors, out
from stages.core.pipeline.errors import GpoError, UsageError

MULTI_GPU_TRAIN = ["accelerate", "launch", "--num_processes", "${SLURM_GPUS_ON_NODE}", "-m", "gpo_cli.main"]


def stage_commands(app: typer.Typer, run: Path, stages: list[str], stage_args: list[str],
                   train_gpus: int) -> dict[str, list[str]]:
    """stage -> full argv; each one is parsed by the real command now so a typo fails here, not in the queue."""
    from typer.main import get_command

    from gpo_cli.adapter import COMMANDS

    extra: dict[str, list[str]] = {}
    for item in stage_args:
        stage, sep, args = item.partition("=")
        if not sep:
            raise UsageError(f"--args {item!r}: expected STAGE='--option value ...'")
        extra[stage] = shlex.split(args)
    unknown = sorted(set(extra) - set(stages))
    if unknown:
        raise UsageError(f"--args given for stages not in --stages: {', '.join(unknown)}")
    group = get_command(app)
    commands = {}
    for stage in stages:
        name = "eval" if stage.startswith("eval") else stage
        argv = [*extra.get(stage, []), "--run", str(run)]
        command = group.commands.get(name) if hasattr(group, "commands") else None
        if command is None:
            raise UsageError(f"unknown stage {stage!r}")
        try:
            ctx = command.make_context(name, list(argv), resilient_parsing=False)
            if name in COMMANDS:  # a stage: its settings (merged with --config) must be complete and valid
                COMMANDS[name].check(ctx)
        except GpoError as e:
            raise UsageError(f"gpo {name} {shlex.join(argv)}: {e}") from None
        except Exception as e:  # click's usage errors: missing or unknown options
            why = e.format_message() if hasattr(e, "format_message") else str(e)  # MissingParameter's .message is ''
            raise UsageError(f"gpo {name} {shlex.join(argv)}: {why}") from None
        prefix = MULTI_GPU_TRAIN if stage == "train" and train_gpus > 1 else ["gpo"]
        commands[stage] = [*prefix, name, *argv]
    return commands


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def slurm(
        run: Annotated[Path, typer.Argument(help="Run directory (scripts go to RUN/slurm/).")],
        stages: Annotated[str, typer.Option(help="Comma-separated, in chain order.")] =
            "sample,estimate,locate,branch",
        shards: Annotated[int, typer.Option(min=1, help="Array tasks per sharded stage.")] = 1,
        args: Annotated[list[str] | None, typer.Option(
            "--args", help="A stage's own options: STAGE='--model m --n 4' (repeatable).")] = None,
        partition: str | None = None,
        gpus_per_task: Annotated[int, typer.Option(min=0)] = 0,
        cpus_per_task: Annotated[int, typer.Option(min=1)] = 4,
        mem: Annotated[str | None, typer.Option(help="e.g. 64G")] = None,
        time: Annotated[str | None, typer.Option(help="e.g. 04:00:00")] = None,
        account: str | None = None,
        qos: str | None = None,
        extra_sbatch: Annotated[list[str] | None, typer.Option(
            "--extra-sbatch", help="More #SBATCH lines, e.g. --extra-sbatch=--constraint=a100.")] = None,
        train_gpus: Annotated[int, typer.Option(min=1, help="GPUs of the train job (>1: accelerate launch, DDP; "
                                                           "FSDP through an accelerate config).")] = 1,
        venv: Annotated[str | None, typer.Option(
            help="venv to activate in the jobs (default: $GPO_VENV or ./.venv).")] = None,
        submit: Annotated[bool, typer.Option(
            "--submit/--dry-run", help="Submit the chain, or only write the scripts.")] = False,
    ):
        """Write one sbatch script per stage (arrays for sharded stages) and optionally submit them as a chain."""
        from stages.tools import slurm as lib

        stage_list = [s.strip() for s in stages.split(",") if s.strip()]
        commands = stage_commands(app, run, stage_list, args or [], train_gpus)
        options = lib.SlurmOptions(partition=partition, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task,
                                   mem=mem, time=time, account=account, qos=qos, extra=tuple(extra_sbatch or ()),
                                   venv=venv or lib.default_venv())
        counts = {s: (1 if s == "train" else shards) for s in commands}
        paths = lib.write_scripts(run, commands, counts, options)
        for path in paths:
            out.print(f"wrote {path}")
        if not submit:
            err.print("dry run: submit with --submit, or sbatch the scripts yourself in this order")
            return
        for stage, job in lib.submit(paths).items():
            out.print(f"submitted {stage}: job {job}")
