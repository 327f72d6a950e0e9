"""`gpo diagnose RUN`: print and write the statistics that say whether GPO's premise holds on a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_cli.common import err, handle_errors, out
from stages.core.pipeline import layout
from stages.tools.diagnose_headline import headline


def diagnose(
    run: Annotated[Path, typer.Argument(help="Run directory (needs sample; uses estimate, locate, branch).")],
    permutations: Annotated[int, typer.Option(help="Shuffles for the repeatability null.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the shuffles.")] = 0,
):
    """Does GPO's premise hold here? Repeatability of critical steps vs a shuffled null, diversity of
    correct solutions, critical-step positions, truncation, where preference pairs diverge."""
    from stages.tools import diagnose as d

    summary = d.diagnose(run, permutations=permutations, seed=seed)
    if summary["incomplete_stages"]:
        err.print(f"[yellow]note:[/yellow] unfinished stages ({', '.join(summary['incomplete_stages'])}): "
                  "statistics use their finished parts only")
    table = Table(title=f"gpo diagnose {run}")
    for col in ("section", "statistic", "group", "value", "count", "total"):
        table.add_column(col, justify="right" if col in ("value", "count", "total") else "left")
    for r in d.rows(summary):
        table.add_row(r["section"], r["statistic"], r["group"],
                      "-" if r["value"] is None else f"{r['value']:.4g}",
                      "" if r["count"] is None else str(r["count"]), "" if r["total"] is None else str(r["total"]))
    out.print(table)
    for line in headline(summary)[1:]:
        out.print(line)
    out.print(f"[bold]verdict:[/bold] {summary['verdict']}")
    folder = d.write(run, summary)
    err.print(f"[dim]wrote {folder / 'diagnose.parquet'} and {layout.summary_path(folder)}[/dim]")


def register(app: typer.Typer) -> None:
    app.command()(handle_errors(diagnose))
