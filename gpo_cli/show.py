"""`gpo show RUN --problem ID [--sample K]`: one trajectory in the terminal, step by step."""

from __future__ import annotations

from pathlib import Path

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpo_cli.common import out
from stages.core.pipeline import artifacts, lineage
from stages.core.pipeline.errors import GpoError

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    return "".join(BARS[min(len(BARS) - 1, int(v * (len(BARS) - 1) + 0.5))] for v in values)


def _rows(run: Path, table: str, problem: str) -> list[dict]:
    if artifacts.table_dir(run, table) is None:
        return []
    return artifacts.read_table(run, table, groups=[problem]).to_pylist()


def pick_sample(samples: list[dict], located: list[dict], sample: int | None) -> dict:
    by_idx = {r["sample_idx"]: r for r in samples}
    if sample is not None:
        if sample not in by_idx:
            raise GpoError(f"no sample {sample} for this problem (have {sorted(by_idx)})")
        return by_idx[sample]
    with_step = [r["sample_idx"] for r in located if r["critical_step"] is not None]
    return by_idx[min(with_step)] if with_step else by_idx[min(by_idx)]


def show(run: Path, problem: str, sample: int | None = None) -> None:
    run = Path(run)
    if not (run / "sample").is_dir():
        raise GpoError(f"{run} has no sample stage")
    lineage.warn_stale(run)
    samples = _rows(run, "sample", problem)
    if not samples:
        raise GpoError(f"no problem {problem!r} in {run}/sample (list ids with: gpo sql {run} "
                       "\"select distinct problem_id from sample limit 20\")")
    located = _rows(run, "locate", problem)
    row = pick_sample(samples, located, sample)
    k = row["sample_idx"]
    verdict = "[green]correct[/green]" if row["reward"] else "[red]wrong[/red]"
    out.print(Panel(row["question"], title=f"{problem} · sample {k} · {verdict} · gold {row['gold_answer']} · "
                                           f"answer {row['extracted_answer']}"))
    steps = sorted((r for r in _rows(run, "estimate", problem) if r["sample_idx"] == k), key=lambda r: r["step_idx"])
    loc = next((r for r in located if r["sample_idx"] == k), None)
    critical = loc["critical_step"] if loc else None
    if not steps:
        out.print(Text(row["response_text"]))
        out.print("[dim](no value estimates for this trajectory: estimate covers failed ones by default)[/dim]")
        return
    print_steps(steps, critical)
    values = [s["value"] for s in steps] + [steps[-1]["value_next"]]
    out.print(f"V̂ {sparkline(values)}  " + " ".join(f"{v:.2f}" for v in values))
    if loc is not None:
        where = f"step {critical}" if critical is not None else f"none ({loc['reason']})"
        truth = "" if loc["first_wrong_line"] is None else \
            f"; first wrong line {loc['first_wrong_line']} ({'agrees' if loc['agrees'] else 'differs'})"
        out.print(f"critical step ({loc['rule']}): {where}{truth}")
    branches = [c for c in _rows(run, "continuations", problem) if c["sample_idx"] == k and c["data"] == "gpo"]
    if branches:
        print_branches(branches)


def print_steps(steps: list[dict], critical: int | None) -> None:
    table = Table(show_lines=False)
    for col in ("step", "V̂(s_i)", "95% CI", "n", "A_i", "text"):
        table.add_column(col, overflow="fold")
    for s in steps:
        style = "bold yellow" if s["step_idx"] == critical else None
        mark = "▶ " if s["step_idx"] == critical else ""
        table.add_row(f"{mark}{s['step_idx']}", f"{s['value']:.2f}", f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]",
                      str(s["n_rollouts"]), f"{s['advantage']:+.2f}", s["step_text"].rstrip("\n"), style=style)
    out.print(table)


def print_branches(branches: list[dict]) -> None:
    table = Table(title=f"branches from state {branches[0]['state_idx']}")
    for col in ("#", "origin", "verdict", "continuation"):
        table.add_column(col, overflow="fold")
    for b in sorted(branches, key=lambda b: b["branch_idx"]):
        table.add_row(str(b["branch_idx"]), b["origin"], "[green]✓[/green]" if b["reward"] else "[red]✗[/red]",
                      b["text"].replace("\n", " ⏎ "))
    out.print(table)
