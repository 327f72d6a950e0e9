"""The locator frontier: agreement with the known first wrong line over ALL failed trajectories against
generated tokens per failed trajectory, for every estimator x rule, on a toy run.

    python bench/locator_frontier.py RUN [--real RUN2 ...] [--out bench/results/locator_frontier.json]
    python3 bench/locator_frontier.py --plot bench/results/locator_frontier.json   # needs only matplotlib

RUN holds a finished `gpo estimate --estimator full --k K` (K rollouts at every state of every failed
trajectory). Every other estimator is replayed offline on those rollouts: an estimator that asks for j
rollouts at state i gets the first j stored ones (in rollout_idx order), so all rows see the same outcomes
and differ only in which ones they look at; tokens are the stored rollouts' own token counts, each counted
once per problem (identical states of one problem, s_0 always, are generated once, as in the stage).
`--real` adds rows for runs whose estimate was actually generated (tokens from the stage's manifest).

Agreement counts a trajectory whose first wrong line is known and whose located step equals it; the
denominator is every failed trajectory (no critical step, or no known line, is a miss), so a rule cannot
look better by locating fewer. Paired differences between rows bootstrap over problems (a problem's
trajectories share a question and states). Targets of issue 20 are checked at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FULL_RULES = ("abs-advantage", "advantage", "max-value", "changepoint")
SPARSE_RULES = ("abs-advantage", "changepoint")
CP_GRID = [(k, budget, target) for k in (2, 4) for budget in (8, 12, 16, 24, 32) for target in (0.8, 0.9)]


def load(run: Path) -> tuple[list[dict], dict]:
    """Failed trajectories (sample row, steps, stored outcomes per state) and the stored rollouts' tokens."""
    from stages.core.pipeline import artifacts
    from stages.core.sources.toy_tasks import ground_truth

    samples = {(r["problem_id"], r["sample_idx"]): r for r in artifacts.read_table(run, "sample").to_pylist()}
    steps: dict = {}
    for r in artifacts.read_table(run, "estimate").to_pylist():
        steps.setdefault((r["problem_id"], r["sample_idx"]), []).append(r)
    outcomes: dict = {}
    for r in artifacts.read_table(run, "rollouts").to_pylist():
        owner = r["sample_idx"] if r["shared_from_sample"] is None else r["shared_from_sample"]
        outcomes.setdefault((r["problem_id"], r["sample_idx"], r["state_idx"]), []).append(
            (r["rollout_idx"], r["reward"], r["num_tokens"],
             (r["problem_id"], owner, r["state_idx"], r["rollout_idx"])))
    trajectories = []
    for key, sample in sorted(samples.items()):
        if sample["reward"] == 1:
            continue
        rows = sorted(steps.get(key, []), key=lambda r: r["step_idx"])
        stored = [sorted(outcomes.get((*key, i), [])) for i in range(len(rows))]
        trajectories.append({"key": key, "truth": ground_truth(sample), "steps": rows, "stored": stored})
    return trajectories, samples


def replay(t: dict, estimator: str, k: int, **plan_args) -> tuple[list[tuple[int, int]], set, list[float]]:
    """Run an estimator's plan on the stored outcomes; returns (correct, rollouts) per state, the rollouts
    it consumed (token key, tokens) and V-hat(s_0..s_n) as the stage would write them."""
    from stages.core.method.estimators import Plan

    plan = Plan(estimator, len(t["steps"]), 0, k, truth=t["truth"], **plan_args)
    used: set = set()
    while wants := plan.wants():
        progressed = False
        for i, extra in wants:
            got = t["stored"][i][plan.n[i]:plan.n[i] + extra]
            if got:
                plan.record(i, [reward for _, reward, _, _ in got])
                used.update((key, tokens) for _, _, tokens, key in got)
                progressed = True
        if not progressed:  # asked beyond the stored K: the replay ends where the data does
            break
    return list(zip(plan.correct, plan.n)), used, [v for v, _ in plan.values()]


def locate(rule: str, counts, values, truth, min_confidence: float = 0.0) -> int | None:
    from stages.core.method.values import select_critical

    c = select_critical(rule, values, reward=0, rng_seed=0, counts=counts, truth=truth)
    if c.step is not None and c.confidence is not None and c.confidence < min_confidence:
        return None
    return c.step


def configurations(k_max: int) -> list[dict]:
    out = []
    for k in range(1, k_max + 1):
        for rule in FULL_RULES:
            out.append({"estimator": "full", "k": k, "rule": rule, "plan": {}})
        for rule in SPARSE_RULES:
            out.append({"estimator": "bisect", "k": k, "rule": rule, "plan": {}})
    for rule in SPARSE_RULES:
        out.append({"estimator": "adaptive", "k": k_max, "rule": rule, "plan": {}})
    for k, budget, target in CP_GRID:
        if k <= k_max:  # a state is refined up to the stored K (the stage's own cap is 2K)
            for rule in SPARSE_RULES:
                out.append({"estimator": "changepoint", "k": k, "rule": rule,
                            "plan": {"budget": budget, "target": target, "cap": k_max}})
    out.append({"estimator": "full", "k": k_max, "rule": "changepoint", "plan": {}, "min_confidence": 0.5})
    out.append({"estimator": "oracle", "k": k_max, "rule": "oracle", "plan": {}})
    return out


def label(c: dict) -> str:
    extra = "".join(f" {k}={v}" for k, v in c["plan"].items())
    extra += f" min-conf={c['min_confidence']}" if c.get("min_confidence") else ""
    return f"{c['estimator']} K={c['k']}{extra} | {c['rule']}"


def evaluate(trajectories: list[dict], config: dict) -> tuple[dict, dict]:
    hits, near, located, tokens, rollouts = {}, 0, 0, {}, 0
    cache: dict = {}
    for t in trajectories:
        sig = (config["estimator"], config["k"], tuple(sorted(config["plan"].items())))
        if (sig, t["key"]) not in cache:
            cache[(sig, t["key"])] = replay(t, config["estimator"], config["k"], **config["plan"])
        counts, used, values = cache[(sig, t["key"])]
        tokens.update(used)
        rollouts += sum(n for _, n in counts)
        m = locate(config["rule"], counts, values, t["truth"], config.get("min_confidence", 0.0)) if counts else None
        located += m is not None
        hits[t["key"]] = int(m is not None and m == t["truth"])
        near += m is not None and t["truth"] is not None and abs(m - t["truth"]) <= 1
    n = len(trajectories)
    return {"label": label(config), **{k: v for k, v in config.items() if k != "plan"}, **config["plan"],
            "failed": n, "agreement": sum(hits.values()) / n, "within_one": near / n, "located": located / n,
            "tokens_per_failed": sum(tokens.values()) / n, "rollouts_per_failed": rollouts / n,
            "source": "replayed"}, hits


def real_rows(run: Path, trajectories: list[dict]) -> list[tuple[dict, dict]]:
    """Rows for a run whose estimate was generated for real: every rule on its own counts."""
    from stages.core.pipeline import artifacts, layout

    rows, truth = [], {t["key"]: t["truth"] for t in trajectories}
    steps: dict = {}
    for r in artifacts.read_table(run, "estimate").to_pylist():
        steps.setdefault((r["problem_id"], r["sample_idx"]), []).append(r)
    estimate = layout.stage_dir(run, "estimate")
    manifest = artifacts.load_json(layout.manifest_path(estimate, 0))
    config = artifacts.load_json(layout.config_path(estimate))["settings"]
    rules = ("abs-advantage", "changepoint") + (("oracle",) if config["estimator"] == "oracle" else ())
    for rule in rules:
        hits, located = {}, 0
        for key, line in truth.items():
            st = sorted(steps.get(key, []), key=lambda r: r["step_idx"])
            counts = [(r["n_correct"], r["n_rollouts"]) for r in st]
            values = [r["value"] for r in st] + ([st[-1]["value_next"]] if st else [])
            m = locate(rule, counts, values, line) if st else None
            located += m is not None
            hits[key] = int(m is not None and m == line)
        n = len(truth)
        plan = {k: config[k] for k in ("budget", "target")} if config["estimator"] == "changepoint" else {}
        row = {"label": label({"estimator": config["estimator"], "k": config["k"], "rule": rule, "plan": plan})
               + " (generated)", "estimator": config["estimator"], "k": config["k"], "rule": rule, **plan,
               "failed": n, "agreement": sum(hits.values()) / n, "within_one": None, "located": located / n,
               "tokens_per_failed": manifest["stats"].get("generated_tokens", 0) / n,
               "rollouts_per_failed": manifest["stats"].get("rollouts", 0) / n, "source": str(run)}
        rows.append((row, hits))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?")
    ap.add_argument("--real", nargs="*", default=[])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "locator_frontier.json"))
    ap.add_argument("--plot", help="draw the PNG of a results JSON (matplotlib only) and exit")
    args = ap.parse_args()
    if args.plot:
        plot(Path(args.plot))
        return
    from bench.estimator_agreement import paired_difference

    trajectories, samples = load(Path(args.run))
    k_max = max((len(s) for t in trajectories for s in t["stored"]), default=0)
    results = [evaluate(trajectories, c) for c in configurations(k_max)]
    results += [r for run in args.real for r in real_rows(Path(run), trajectories)]
    paper = next(h for r, h in results if r["label"] == f"full K={k_max} | abs-advantage")
    bisect = next(h for r, h in results if r["label"] == f"bisect K={k_max} | abs-advantage")
    for r, h in results:
        r["minus_paper"] = paired_difference(h, paper)
        r["minus_bisect"] = paired_difference(h, bisect)
    rows = [r for r, _ in results]
    report(rows, args, trajectories, samples, k_max)


def report(rows: list[dict], args, trajectories, samples, k_max: int) -> None:
    paper = next(r for r in rows if r["label"] == f"full K={k_max} | abs-advantage")
    bisect = next(r for r in rows if r["label"] == f"bisect K={k_max} | abs-advantage")
    problems = len({t["key"][0] for t in trajectories})
    print(f"{args.run}: {len(samples)} samples, {len(trajectories)} failed trajectories of {problems} problems, "
          f"{sum(t['truth'] is not None for t in trajectories)} with a known first wrong line; stored K={k_max}")
    print("| estimator \\| rule | tokens/failed | rollouts/failed | located | agreement | within one | "
          f"minus full K={k_max} abs-adv (paired) | minus bisect K={k_max} abs-adv (paired) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["tokens_per_failed"]):
        within = "-" if r["within_one"] is None else f"{r['within_one']:.3f}"
        print(f"| {r['label']} | {r['tokens_per_failed']:.0f} | {r['rollouts_per_failed']:.1f} | {r['located']:.2f} "
              f"| {r['agreement']:.3f} | {within} | {'{:+.3f} [{:+.3f}, {:+.3f}]'.format(*r['minus_paper'])} "
              f"| {'{:+.3f} [{:+.3f}, {:+.3f}]'.format(*r['minus_bisect'])} |")
    targets = {
        "a: >= 0.80 at <= bisect tokens": [r["label"] for r in rows if r["agreement"] >= 0.80 and
                                           r["tokens_per_failed"] <= bisect["tokens_per_failed"]
                                           and "oracle" not in (r["rule"], r["estimator"])],
        "b: >= 0.75 at <= full/3 tokens": [r["label"] for r in rows if r["agreement"] >= 0.75 and
                                           r["tokens_per_failed"] <= paper["tokens_per_failed"] / 3
                                           and "oracle" not in (r["rule"], r["estimator"])],
    }
    for name, met in targets.items():
        print(f"target {name}: {'met by ' + '; '.join(met) if met else 'not met'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": args.run, "failed": len(trajectories), "problems": problems,
                                          "stored_k": k_max, "targets": targets, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def plot(path: Path) -> None:
    """Agreement against tokens per failed trajectory, one marker per estimator, one colour per rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"full": "o", "bisect": "s", "adaptive": "^", "changepoint": "D", "oracle": "*"}
    colours = {"abs-advantage": "tab:blue", "advantage": "tab:cyan", "max-value": "tab:gray",
               "changepoint": "tab:red", "oracle": "tab:green"}
    for r in data["rows"]:
        ax.scatter(r["tokens_per_failed"], r["agreement"], marker=markers.get(r["estimator"], "x"),
                   color=colours.get(r["rule"], "black"), alpha=0.8 if r["source"] == "replayed" else 1,
                   edgecolors="black" if r["source"] != "replayed" else "none", s=40)
    for name, m in markers.items():
        ax.scatter([], [], marker=m, color="white", edgecolors="black", label=f"estimator {name}")
    for name, c in colours.items():
        ax.scatter([], [], marker="o", color=c, label=f"rule {name}")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per failed trajectory (log)")
    ax.set_ylabel("agreement with the first wrong line (all failed)")
    ax.set_title(f"{Path(data['run']).name}: {data['failed']} failed trajectories, {data['problems']} problems")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
