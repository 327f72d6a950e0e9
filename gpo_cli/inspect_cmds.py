"""Commands that read a run: `gpo status` and `gpo sql`."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gpo_cli.common import err, handle_errors, out
from stages.core.pipeline.errors import GpoError


def status(run: Annotated[Path, typer.Argument(help="Run directory.")]):
    """Per stage: shards done / total, rows, and the shards still to run (as an sbatch --array list)."""
    from stages.core.pipeline.query import array_spec, stage_status

    rows = stage_status(run)
    if not rows:
        raise GpoError(f"{run} has no stages yet")
    table = Table(title=f"gpo status {run}")
    for col in ("stage", "shards done", "rows", "state", "unfinished (--array=)"):
        table.add_column(col)
    for r in rows:
        state = "[green]done[/green]" if r["success"] else "[yellow]incomplete[/yellow]"
        if r["stale"]:
            state = f"[red]stale[/red] (redo {r['stale'][0]})" if r["stale"][1] != "unfinished" \
                else f"[red]stale[/red] (finish {r['stale'][0]})"
        if r["damaged"] or r["input_damaged"]:
            state = "[red]damaged[/red]" if r["damaged"] else "[red]unknown[/red] (input damaged)"
        table.add_row(r["stage"], f"{r['done']}/{r['num_shards']}", str(r["rows"]), state,
                      array_spec(r["unfinished"]) or "-")
    out.print(table)
    from stages.tools.slurm import resubmit_command, script_path

    for r in rows:
        if r["unfinished"] and script_path(run, r["stage"]).exists():
            out.print(f"resubmit {r['stage']}: {resubmit_command(run, r['stage'], r['unfinished'])}")
    damaged = [r for r in rows if r["damaged"]]
    if damaged:  # shown above with the rest; the exit status says the run is not sound
        raise GpoError(f"{', '.join(r['stage'] for r in damaged)} damaged: {damaged[0]['damaged']}")


def sql(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    query: Annotated[str | None, typer.Argument(help="A read-only SQL query over the run's views.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option("--out", help="File for --format parquet.")] = None,
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 100,
    views: Annotated[bool, typer.Option(
        "--views", help="Print the views as SQL for the duckdb shell or Python (e.g. > RUN/views.sql).")] = False,
):
    """Query the run with DuckDB (views named after the tables); with no query, list the views."""
    from stages.core.pipeline import query as q
    from stages.core.pipeline.lineage import warn_stale

    warn_stale(run)  # answered anyway, as `gpo status` shows it: a stale stage is named on stderr
    if views:
        if query is not None:
            raise GpoError("--views takes no query")
        sys.stdout.write(q.views_sql(run))
        return
    if fmt not in ("table", "csv", "json", "parquet"):
        raise GpoError(f"--format must be table, csv, json or parquet, not {fmt!r}")
    if query is None:
        _list_views(run, q.describe_views(run))
        return
    columns, rows = q.run_query(run, query)
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(columns, row)), default=str) + "\n")
    elif fmt == "parquet":
        _write_parquet(columns, rows, output)
    else:
        _print_table(columns, rows, limit)


def _print_table(columns, rows, limit: int) -> None:
    table = Table(*columns)
    for row in rows[:limit]:
        table.add_row(*[_cell(v) for v in row])
    out.print(table)
    if len(rows) > limit:
        err.print(f"[dim]{len(rows) - limit} more rows (use --limit or --format csv)[/dim]")


def _cell(value) -> str:
    text = "NULL" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _write_parquet(columns, rows, output: Path | None) -> None:
    import pyarrow as pa

    from stages.core.pipeline.artifacts import write_parquet_atomic

    if output is None:
        raise GpoError("--format parquet needs --out FILE")
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    write_parquet_atomic(table, output, {"source": "gpo sql"})
    err.print(f"wrote {len(rows)} rows to {output}")


def _list_views(run: Path, views: dict) -> None:
    if not views:
        raise GpoError(f"{run} has no finished tables yet")
    for name, cols in views.items():
        out.print(f"[bold]{name}[/bold]: " + ", ".join(escape(f"{c} {t.lower()}") for c, t in cols))
    out.print(f"\nThe same views for the duckdb shell or Python: gpo sql {escape(shell_word(run))} --views "
              "> views.sql; duckdb -init views.sql")


def shell_word(path: Path) -> str:
    """The path as one copy-pasteable shell word; a name a terminal cannot show on one line prints as RUN."""
    text = str(path)
    return shlex.quote(text) if text.isprintable() else "RUN"


def register(app: typer.Typer) -> None:
    app.command()(handle_errors(status))
    app.command()(handle_errors(sql))
