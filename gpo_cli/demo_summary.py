"""The demo's summary: cost and training compute per arm, accuracy with intervals clustered by problem,
every arm against GPO by a paired difference, and a verdict worded as the intervals allow."""

from __future__ import annotations

import json
from pathlib import Path

from gpo_cli.common import out
from stages.core import artifacts

ARM_TOKENS = {  # arm -> (run, stages whose manifests it pays for, branch tag whose new branches it pays for)
    "gpo": ("gpo", ("sample", "estimate"), "gpo"),
    "gpo-bisect": ("gpo-bisect", ("sample", "estimate"), "gpo"),
    "random-reset": ("gpo", ("sample",), "random-reset"),
    "same-samples": ("gpo", ("sample",), None),
    "tokens-matched": ("tokens-matched", ("sample",), None),
}


def query(run: Path, sql: str) -> list[tuple]:
    from stages.core.query import run_query

    return run_query(run, sql)[1]


def scalar(run: Path, sql: str):
    return query(run, sql)[0][0]


def arm_data(runs: dict) -> dict[str, tuple[Path, str]]:
    """arm -> (run folder, `--data` rows of its branch table)."""
    return {"gpo": (runs["gpo"], "gpo"), "gpo-bisect": (runs["gpo-bisect"], "gpo"),
            "random-reset": (runs["gpo"], "random-reset"), "same-samples": (runs["gpo"], "baseline"),
            "tokens-matched": (runs["tokens-matched"], "baseline")}


def stage_stats(run: Path, stage: str) -> dict:
    """The stats of a finished stage, summed over its shard manifests."""
    total: dict = {}
    folder = run / stage
    config = artifacts.runner_config(folder) if folder.is_dir() else None
    for manifest in (artifacts.finished_manifests(folder, config) if config else {}).values():
        for k, v in manifest.get("stats", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def arm_cost(root: Path, arm: str) -> dict:
    run_name, stages, tag = ARM_TOKENS[arm]
    run = root / run_name
    generated = sum(stage_stats(run, s).get("generated_tokens", 0) for s in stages)
    prompt = sum(stage_stats(run, s).get("prompt_tokens", 0) for s in stages)
    if tag:  # branch counts new continuations per data kind ("random-reset" -> random_reset_...)
        generated += stage_stats(run, "branch").get(f"{tag.replace('-', '_')}_generated_tokens", 0)
    return {"generated_tokens": int(generated), "prompt_tokens": int(prompt)}


def agreement(run: Path) -> dict:
    """Critical step vs the known first wrong line, over all failed trajectories that have one (an
    unlocated trajectory counts as a miss), and the located share."""

    failed, located, agree = query(run, "select count(*), count(critical_step), count(*) filter (where agrees) "
                                        "from locate where first_wrong_line is not null")[0]
    return {"failed_with_truth": failed, "located": located, "agrees": agree,
            "agreement": agree / failed if failed else None, "located_share": located / failed if failed else None}


def pair_divergence(root: Path) -> dict:
    """Per arm: where chosen and rejected diverge (tokens, share of the rejected, vs its first wrong line)."""
    from stages.tools.diagnose import pair_divergence as divergence

    runs = {name: root / name for name in ("gpo", "gpo-bisect", "tokens-matched")}
    found = {}
    for arm, (run, data) in arm_data(runs).items():
        found[arm] = next((row for row in divergence(run) if row["data"] == data), None)
    return {arm: row for arm, row in found.items() if row is not None}


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "GPO better"
    if high < 0:
        return "GPO worse"
    return "not distinguishable"


def collect(plan, data: dict, labels: list[str], root: Path, timings, wall: float) -> dict:
    from stages import eval as evaluation

    summaries = {label: evaluation.write_summary(root / "gpo", label, (1, 4)) for label in labels}
    accuracy = {label: {mode: next(iter(s["modes"][mode].values())) for mode in s["modes"]}
                for label, s in summaries.items()}
    paired = []
    for arm in ["base", *[a for a in labels if a not in ("base", "gpo")]]:
        for row in evaluation.compare([summaries[arm], summaries["gpo"]]):
            if row["label"] == "gpo":
                paired.append({"arm": arm, "mode": row["mode"], "problems": row["problems"],
                               "gpo_minus_arm": row["diff"], "ci_low": row["diff_low"], "ci_high": row["diff_high"],
                               "verdict": verdict(row["diff_low"], row["diff_high"])})
    training = {}
    for arm in labels:
        if arm == "base":
            continue
        s = json.loads((root / "train" / f"dpo-{arm}" / "summary.json").read_text())
        training[arm] = {"optimizer_steps": s["global_step"], "batch_size": plan.batch_size,
                         "distinct_pairs": s["rows"], "duplicates_dropped": s.get("duplicates_dropped", 0),
                         **arm_cost(root, arm)}
    from gpo_cli.diagnose_cmd import headline
    from stages.tools import diagnose

    premise = diagnose.diagnose(root / "gpo", permutations=100)
    diagnose.write(root / "gpo", premise)
    return {"task": plan.task, "plan": plan.__dict__, "budget": data["budget"], "accuracy": accuracy,
            "paired": paired, "training": training, "diagnose": headline(premise),
            "pair_divergence": pair_divergence(root),
            "agreement": {"gpo": agreement(root / "gpo"), "gpo-bisect": agreement(root / "gpo-bisect")},
            "timings": timings, "wall_seconds": wall}


def print_demo_summary(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"toy:{r['task']} test accuracy (DPO, same hyperparameters and optimizer steps; "
                    "95% intervals clustered by problem)")
    for col in ("model", "greedy", "sampled pass@1", "95% CI", "steps x batch", "distinct pairs (dups)",
                "generated tokens", "prompt tokens"):
        t.add_column(col)
    for label, modes in r["accuracy"].items():
        g, s = modes.get("greedy", {}), modes.get("sampled", {})
        tr = r["training"].get(label)
        t.add_row(label, f"{g.get('pass@1', float('nan')):.3f}", f"{s.get('pass@1', float('nan')):.3f}",
                  f"[{s.get('ci_low', 0):.3f}, {s.get('ci_high', 0):.3f}]",
                  f"{tr['optimizer_steps']} x {tr['batch_size']}" if tr else "-",
                  f"{tr['distinct_pairs']} ({tr['duplicates_dropped']})" if tr else "-",
                  f"{tr['generated_tokens']:,}" if tr else "-", f"{tr['prompt_tokens']:,}" if tr else "-")
    out.print(t, width=max(out.width, 150))
    p = Table(title="GPO minus each other model, paired over test problems (95% CI)")
    for col in ("other", "mode", "problems", "GPO - other", "95% CI", "reading"):
        p.add_column(col)
    for row in r["paired"]:
        p.add_row(row["arm"], row["mode"], str(row["problems"]), f"{row['gpo_minus_arm']:+.3f}",
                  f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]", row["verdict"])
    out.print(p, width=max(out.width, 150))
    for arm, a in r["agreement"].items():
        if a["agreement"] is not None:
            out.print(f"{arm}: critical step = first wrong line for {a['agrees']}/{a['failed_with_truth']} failed "
                      f"trajectories ({a['agreement']:.3f}; located {a['located_share']:.3f})")
    out.print("where chosen and rejected diverge (token; share of the rejected response; before/at/after its "
              "first wrong line):")
    for arm, d in r["pair_divergence"].items():
        v = d["vs_first_wrong_line"]
        sides = f"{v['before']:.2f}/{v['at']:.2f}/{v['after']:.2f}" if v["pairs"] else "n/a"
        out.print(f"  {arm}: median token {d['diverge_tokens_median']:g}, share {d['diverge_share_median'] or 0:.2f}, "
                  f"{sides}; {d['pairs']} pairs, {d['duplicate_share']:.0%} exact duplicates")
    out.print("gpo diagnose (the GPO run): " + "\n  ".join(r["diagnose"]))
    out.print(f"budget matching: {r['budget']['rule']}")
    out.print("wall time: " + ", ".join(f"{name} {sec:.0f}s" for name, sec in r["timings"])
              + f"; total {r['wall_seconds']:.0f}s")
    sampled = [row for row in r["paired"] if row["mode"] == "sampled" and row["arm"] != "base"]
    if sampled:
        out.print("[bold]reading (sampled pass@1):[/bold] " + "; ".join(
            f"vs {row['arm']}: {row['verdict']} ({row['gpo_minus_arm']:+.3f} [{row['ci_low']:+.3f}, "
            f"{row['ci_high']:+.3f}])" for row in sampled) + ". One seed; see the README for three.")
