"""The demo's summary: cost and training compute per arm (pairs read from the training metrics), the primary
comparison (each GPO arm minus same-samples on greedy accuracy and the hard-trap probe, Holm-adjusted), the
rest as exploratory paired differences (every model minus same-samples, each GPO arm minus random reset and
minus the paper's GPO), and
the test-set size the measured variances call for."""

from __future__ import annotations

import json
import math
from pathlib import Path

from stages.tools.demo.arms import ARMS, BASELINE, GPO_ARMS, PAPER, RANDOM, arm_data, by_name, sampled_label
from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError

PRIMARY_KIND = "trap-hard"  # the probe's kind in the primary comparison (toy:borrow's decisive line)
RESOLVE = 0.02  # the 95% half-width the test set should reach on a paired difference


def query(run: Path, sql: str) -> list[tuple]:
    from stages.core.pipeline.query import run_query

    return run_query(run, sql)[1]


def scalar(run: Path, sql: str):
    return query(run, sql)[0][0]


def stage_stats(run: Path, stage: str) -> dict:
    """The stats of a finished stage, summed over its shard manifests."""
    total: dict = {}
    folder = run / stage
    config = artifacts.runner_config(folder) if folder.is_dir() else None
    for manifest in (artifacts.finished_manifests(folder, config) if config else {}).values():
        for k, v in manifest.get("stats", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def arm_cost(root: Path, name: str) -> dict:
    arm = by_name(name)
    run = root / arm.run
    generated = sum(stage_stats(run, s).get("generated_tokens", 0) for s in arm.paid_stages)
    prompt = sum(stage_stats(run, s).get("prompt_tokens", 0) for s in arm.paid_stages)
    if arm.paid_branches:  # branch counts new continuations per data kind ("random-reset" -> random_reset_...)
        generated += stage_stats(run, "branch").get(f"{arm.paid_branches.replace('-', '_')}_generated_tokens", 0)
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

    found = {}
    for arm, (run, data) in arm_data(root).items():
        found[arm] = next((row for row in divergence(run) if row["data"] == data), None)
    return {arm: row for arm, row in found.items() if row is not None}


def verdict(low: float, high: float, p_holm: float | None = None) -> str:
    if p_holm is not None:  # the primary family: read by the Holm-adjusted p-value
        return "not distinguishable" if p_holm >= 0.05 else "arm better" if low > 0 else "arm worse"
    return "arm better" if low > 0 else "arm worse" if high < 0 else "not distinguishable"


def needed_problems(low: float, high: float, problems: int, resolve: float = RESOLVE,
                    z: float = 1.96) -> int | None:
    """Problems for a 95% half-width of `resolve` on a paired difference whose interval over `problems` was
    [low, high]: the SD of the per-problem difference is half-width / z * sqrt(problems)."""
    sd = (high - low) / (2 * z) * math.sqrt(problems)
    return math.ceil((z * sd / resolve) ** 2) if sd > 0 else None  # no variance seen: nothing to size from


def differences(labels: list[str], greedy: dict, sampled: dict, probes: dict) -> list[dict]:
    """Every model minus same-samples, each GPO arm minus random reset and each other GPO arm minus the paper's:
    greedy accuracy, sampled pass@1, the probe per kind (probability of the gold token and top share). The
    primary family (GPO arms minus same-samples on greedy and the hard-trap probe) is Holm-adjusted; the rest is
    exploratory (unadjusted)."""
    from stages import eval as evaluation
    from stages.core.method import probe
    from stages.core.method.values import holm, interval_p_value

    pairs = [(BASELINE, label) for label in labels if label != BASELINE]
    if RANDOM in labels:  # is the critical step better than any step?
        pairs += [(RANDOM, label) for label in labels if label in GPO_ARMS]
    if PAPER in labels:  # the same samples, another locator or estimator: what it changes, at what cost
        pairs += [(PAPER, label) for label in labels if label in GPO_ARMS and label != PAPER]
    rows = []
    for ref, label in pairs:
        for metric, summaries in (("greedy", greedy), ("sampled", sampled)):
            for r in evaluation.compare([summaries[ref], summaries[label]]):
                if r["label"] == summaries[label]["label"] and r["mode"] == metric:
                    rows.append({"arm": label, "reference": ref, "metric": metric, "problems": r["problems"],
                                 "diff": r["diff"], "ci_low": r["diff_low"], "ci_high": r["diff_high"]})
        for r in probe.compare([probes[ref], probes[label]]):
            for metric in ("p", "top"):
                rows.append({"arm": label, "reference": ref,
                             "metric": f"probe {r['kind']} {'P(gold)' if metric == 'p' else 'top'}",
                             "problems": r["problems"], "diff": r[f"{metric}_diff"],
                             "ci_low": r[f"{metric}_diff_low"], "ci_high": r[f"{metric}_diff_high"]})
    primary = {"greedy", f"probe {PRIMARY_KIND} P(gold)"}
    for r in rows:
        r["p"] = interval_p_value(r["diff"], r["ci_low"], r["ci_high"])
        r["primary"] = r["arm"] in GPO_ARMS and r["reference"] == BASELINE and r["metric"] in primary
    family = [r for r in rows if r["primary"]]
    for r, adjusted in zip(family, holm([r["p"] for r in family])):
        r["p_holm"] = adjusted
    for r in rows:
        r["verdict"] = verdict(r["ci_low"], r["ci_high"], r.get("p_holm"))
    return rows


def _summary(run: Path, label: str, ks: tuple[int, ...]) -> dict:
    from stages import eval as evaluation

    summary = evaluation.write_summary(run, label, ks)
    if summary is None:  # the demo runs every evaluation before it collects them
        raise GpoError(f"evaluation {label} has not finished")
    return summary


def collect(plan, data: dict, labels: list[str], root: Path, timings, wall: float) -> dict:
    from stages.core.method import probe

    run = root / PAPER  # every evaluation lives in the paper arm's run
    greedy = {label: _summary(run, label, (1,)) for label in labels}
    sampled = {label: _summary(run, sampled_label(label), (1, 4)) for label in labels}
    probes = {label: probe.load_summary(run / probe.stage_name(label)) for label in labels}
    first = lambda modes, mode: next(iter(modes[mode].values()))  # noqa: E731  (one source per evaluation)
    accuracy = {label: {"greedy": first(greedy[label]["modes"], "greedy"),
                        "sampled": first(sampled[label]["modes"], "sampled")} for label in labels}
    rows = differences(labels, greedy, sampled, probes)
    training = {}
    for arm in labels:
        if arm == "base":
            continue
        s = json.loads(layout.summary_path(root / "train" / f"dpo-{arm}").read_text())
        training[arm] = {"optimizer_steps": s["global_step"], "planned_batch": plan.batch_size,
                         "pairs_presented": s.get("pairs_presented"), "pairs_per_step": s.get("pairs_per_step"),
                         "learning_rate": s["learning_rate"], "beta": s["beta"], "distinct_pairs": s["rows"],
                         "duplicates_dropped": s.get("duplicates_dropped", 0), **arm_cost(root, arm)}
    needed = {metric: max((n for r in rows if r["primary"] and r["metric"] == metric
                           if (n := needed_problems(r["ci_low"], r["ci_high"], r["problems"])) is not None),
                          default=None)
              for metric in ("greedy", f"probe {PRIMARY_KIND} P(gold)")}
    from stages.tools import diagnose
    from stages.tools.diagnose_headline import headline

    premise = diagnose.diagnose(root / "gpo", permutations=100)
    diagnose.write(root / "gpo", premise)
    return {"task": plan.task, "plan": plan.__dict__, "budget": data["budget"], "accuracy": accuracy,
            "probe": {label: p["kinds"] for label, p in probes.items()}, "differences": rows,
            "needed_problems": needed, "training": training, "diagnose": headline(premise),
            "pair_divergence": pair_divergence(root),
            "agreement": {a.name: agreement(root / a.run) for a in ARMS if a.is_gpo},
            "timings": timings, "wall_seconds": wall}
