"""`gpo eval --probe` and the probes' part of `gpo eval --compare` (stages/core/method/probe.py does the work)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from gpo_cli.common import err, log, wide
from stages.core.method import probe
from stages.core.pipeline import layout
from stages.core.pipeline.settings import Runtime


def run_probe(run: Path, eval_settings, rt: Runtime, problems) -> dict | None:
    """Teacher-force the gold solutions with the evaluated model (always transformers: it needs logits)."""
    from stages.core.generation.backends import generator_factory
    from stages.core.pipeline.runner import parse_shard, run_stage

    s = probe.ProbeSettings(problems=eval_settings.problems, model=eval_settings.model, label=eval_settings.label,
                            template=eval_settings.template, system=eval_settings.system,
                            instruction=eval_settings.instruction)
    make = generator_factory("hf", s.model, rt.dtype, rt.device, rt.batch_size, rt.trust_remote_code)
    stage = probe.make_stage(s.label)
    manifest = run_stage(stage, run, s, input_table=problems, shard=parse_shard(rt.shard),
                         chunk_groups=rt.chunk_groups, overwrite=rt.overwrite, log=log,
                         make_generator=make)
    stats = manifest.get("stats", {})
    err.print(f"[green]{stage.name}[/green] shard {manifest['shard']}/{manifest['num_shards']}: "
              f"{stats.get('problems_probed', 0)} problems, {stats.get('lines', 0)} gold lines"
              + (f", {stats['no_gold_solution']} without a gold solution" if stats.get("no_gold_solution") else ""))
    summary = probe.write_summary(run, s.label)
    if summary is not None:
        print_probe_summary(summary)
    return summary


def print_probe_summary(summary: dict) -> None:
    t = Table(title=f"probe {summary['label']}: gold result token, teacher-forced (95% CI clustered by problem)")
    for col in ("kind", "problems", "lines", "P(gold)", "95% CI", "top share", "95% CI"):
        t.add_column(col)
    for kind, e in summary["kinds"].items():
        t.add_row(kind, str(e["problems"]), str(e["lines"]), f"{e['p_gold']:.3f}",
                  f"[{e['p_ci_low']:.3f}, {e['p_ci_high']:.3f}]", f"{e['top_share']:.3f}",
                  f"[{e['top_ci_low']:.3f}, {e['top_ci_high']:.3f}]")
    wide(120).print(t)


def compare_probes(folders: list[Path]) -> None:
    """With every compared evaluation probed, their paired differences per line kind; else a note."""
    found = [probe.folder_for(f) for f in folders]
    have = [f for f in found if layout.summary_path(f).exists()]
    if not have:
        return
    if len(have) < len(found):
        missing = ", ".join(str(f) for f in folders if probe.folder_for(f) not in have)
        err.print(f"[yellow]probe comparison skipped: no probe for {missing} (rerun with gpo eval --probe)[/yellow]")
        return
    rows = probe.compare([probe.load_summary(f) for f in found])
    t = Table(title="probes against the first (paired over problems, 95% CI of the difference)")
    for col in ("label", "kind", "problems", "P(gold)", "difference", "95% CI", "top share", "difference", "95% CI"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["label"], r["kind"], str(r["problems"]), f"{r['p']:.3f}", f"{r['p_diff']:+.3f}",
                  f"[{r['p_diff_low']:+.3f}, {r['p_diff_high']:+.3f}]", f"{r['top']:.3f}", f"{r['top_diff']:+.3f}",
                  f"[{r['top_diff_low']:+.3f}, {r['top_diff_high']:+.3f}]")
    wide(120).print(t)
