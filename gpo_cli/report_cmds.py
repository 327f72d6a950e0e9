"""Rich views of results: eval summaries and comparisons (shared by `gpo eval` and `gpo demo`)."""

from __future__ import annotations

from rich.table import Table

from gpo_cli.common import out


def print_eval_summary(summary: dict) -> None:
    table = Table(title=f"eval {summary['label']} ({summary['model']})")
    for col in ("mode", "source", "problems", "n", "pass@1", "95% CI", "other"):
        table.add_column(col)
    for mode, sources in summary["modes"].items():
        for source, e in sources.items():
            extra = ", ".join(f"{k} {v:.3f}" for k, v in e.items() if k.startswith(("pass@", "maj@")) and k != "pass@1")
            if e.get("check_timeouts"):  # judged wrong for want of checker time: say so beside the accuracy
                extra = ", ".join(filter(None, [extra, f"check timeouts {e['check_timeouts']}"]))
            table.add_row(mode, source, str(e["problems"]), str(e["samples_per_problem"]), f"{e['pass@1']:.3f}",
                          f"[{e['ci_low']:.3f}, {e['ci_high']:.3f}]", extra or "-")
    out.print(table)


def print_comparison(rows: list[dict]) -> None:
    table = Table(title="models against the first (paired over problems, 95% CI of the difference)")
    for col in ("label", "mode", "problems", "accuracy", "difference", "95% CI"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["label"], r["mode"], str(r["problems"]), f"{r['accuracy']:.3f}", f"{r['diff']:+.3f}",
                      f"[{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]")
    out.print(table)
