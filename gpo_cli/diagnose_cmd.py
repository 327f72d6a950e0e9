"""`gpo diagnose RUN`: print and write the statistics that say whether GPO's premise holds on a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_cli.common import err, handle_errors, out


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _sides_text(v: dict) -> str:
    if not v["pairs"]:
        return "n/a"
    return f"{v['before']:.2f}/{v['at']:.2f}/{v['after']:.2f} of {v['pairs']}"


def headline(summary: dict) -> list[str]:
    """A few printable lines of `stages.tools.diagnose.diagnose(run)` (the demo prints them): verdict first."""
    lines = [f"verdict: {summary['verdict']}"]
    truth = summary["repeatability_first_wrong_line"]
    crit = summary["repeatability_critical_step"]
    if truth and crit and crit["pairs"]:
        lines.append(f"critical steps repeat {crit['share']:.3f} vs {fmt(crit['null_mean'])} shuffled "
                     f"(ratio {fmt(crit['ratio'])}, {crit['pairs']} pairs, {crit['identical_state_matches']} "
                     f"matches at an identical state)")
    div = summary["diversity"]
    lines.append(f"distinct correct texts per problem {fmt(div['distinct_correct_texts_mean'])}; correct/incorrect "
                 f"pairs diverge before/at/after the critical step {_sides_text(div['vs_critical_step'])}, "
                 f"the first wrong line {_sides_text(div['vs_first_wrong_line'])}")
    cs = summary["critical_steps"]
    if cs:
        lines.append(f"critical steps: located {fmt(cs['located_share'])}, positive advantage "
                     f"{fmt(cs['positive_advantage_share'])}, median relative position "
                     f"{fmt(cs['relative_position'].get('q50'))}, agree with the first wrong line "
                     f"{fmt(cs['agreement_all'])} ({cs['agrees']}/{cs['with_truth']})")
    if summary.get("rules"):
        lines.append("every rule on this estimate, agreement with the first wrong line: " + ", ".join(
            f"{rule} {fmt(r['agreement_all'])}" for rule, r in summary["rules"].items()))
    tr = summary["truncation"]
    lines.append("truncated: " + ", ".join(f"{k} {v['share']:.3f} ({v['length']}/{v['rows']})"
                                           for k, v in tr.items() if v and v["rows"]))
    for p in summary["pairs"] or []:
        lines.append(f"pairs {p['data']}: {p['pairs']} ({p['duplicate_share']:.0%} exact duplicates), diverge at "
                     f"token {p['diverge_tokens_median']:g} (median; {fmt(p['diverge_share_median'])} of the "
                     f"rejected), before/at/after its first wrong line {_sides_text(p['vs_first_wrong_line'])}")
    return lines


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
    err.print(f"[dim]wrote {folder / 'diagnose.parquet'} and {folder / 'summary.json'}[/dim]")


def register(app: typer.Typer) -> None:
    app.command()(handle_errors(diagnose))
