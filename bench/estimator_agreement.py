"""Benchmark 2: rollout budget vs critical-step agreement with the known first wrong line (toy task).

    .venv/bin/python bench/estimator_agreement.py [--model data/toy-model] [--problems 128] [--n 4]

One sample run (fixed), then `estimate` + `locate` for each estimator setting on copies of it:
full K=2,4,8 (the paper uses K=4), adaptive K=4,8 and bisect K=2,3,4,8. For each: rollouts spent per failed
trajectory, the share of failed trajectories with a critical step, and agreement with the first wrong
line over ALL failed trajectories with a ground truth (one without a critical step counts as a miss, so an
estimator cannot look better by locating fewer), with a Wilson 95% interval, and its paired difference from
full K=4 on the same trajectories (bootstrap over problems); agreement among located ones only is kept
alongside. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = [("full", 2), ("full", 4), ("full", 8), ("adaptive", 4), ("adaptive", 8), ("bisect", 2), ("bisect", 3),
            ("bisect", 4), ("bisect", 8)]


def paired_difference(hits: dict, ref: dict, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of hit - ref-hit over the trajectories both judged, and a 95% bootstrap interval that resamples
    problems (a problem's trajectories share a question and some states, so they are not independent)."""
    by_problem: dict = {}
    for key in sorted(hits.keys() & ref.keys()):  # sorted: set order varies between processes
        d, n = by_problem.get(key[0], (0, 0))
        by_problem[key[0]] = (d + hits[key] - ref[key], n + 1)
    groups = list(by_problem.values())
    rng = random.Random(seed)
    boots = sorted(sum(d for d, _ in pick) / sum(n for _, n in pick)
                   for pick in ([groups[rng.randrange(len(groups))] for _ in groups] for _ in range(draws)))
    return (sum(d for d, _ in groups) / sum(n for _, n in groups), boots[int(0.025 * draws)],
            boots[int(0.975 * draws) - 1])


def main() -> None:
    from stages import estimate, locate, sample
    from stages.core.generation.hf_backend import HFGenerator
    from stages.core.pipeline.query import run_query
    from stages.core.pipeline.runner import run_stage
    from stages.core.sources.problems import load_problems
    from stages.core.method.values import wilson_interval

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "toy-model"))
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--work", default="/tmp/gpo-bench-agreement")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "estimator_agreement.json"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    gen = HFGenerator(args.model, dtype="fp32", device="cpu", batch_size=256)
    source = f"toy:arith?n={args.problems}&seed=2&split=train"
    base = work / "sample-run"
    run_stage(sample.STAGE, base, sample.SampleSettings(problems=source, model=args.model, n=args.n,
                                                        max_new_tokens=48, backend="hf"),
              input_table=load_problems(source).table, make_generator=lambda: gen, chunk_groups=64)
    rows, hits = [], {}
    for estimator, k in SETTINGS:
        run = work / f"{estimator}-k{k}"
        shutil.copytree(base / "sample", run / "sample")
        t0 = time.time()
        manifest = run_stage(estimate.STAGE, run, estimate.EstimateSettings(k=k, estimator=estimator),
                             make_generator=lambda: gen, chunk_groups=64)
        seconds = time.time() - t0
        run_stage(locate.STAGE, run, locate.LocateSettings(), chunk_groups=256)
        failed, located, with_truth, agrees, agree_located = run_query(
            run, "select count(*), count(critical_step), count(first_wrong_line), count(*) filter (where agrees), "
                 "avg(agrees::int) from locate")[1][0]
        stats = manifest["stats"]
        low, high = wilson_interval(agrees, with_truth)
        hits[(estimator, k)] = {(p, i): int(bool(a)) for p, i, a in run_query(
            run, "select problem_id, sample_idx, agrees from locate where first_wrong_line is not null")[1]}
        rows.append({"estimator": estimator, "k": k, "failed": failed, "located": located,
                     "located_share": located / max(1, failed), "with_truth": with_truth, "agrees": agrees,
                     "agreement": agrees / max(1, with_truth), "agreement_ci": [low, high],
                     "agreement_located": agree_located, "rollouts": stats.get("rollouts", 0),
                     "rollouts_per_trajectory": stats.get("rollouts", 0) / max(1, failed),
                     "generated_tokens": stats.get("generated_tokens", 0), "seconds": seconds})
    ref = next(r for r in rows if r["estimator"] == "full" and r["k"] == 4)
    print(f"{args.problems} toy problems x {args.n} samples; {ref['failed']} failed trajectories")
    print(f"{'estimator':10} {'K':>2} {'rollouts/traj':>13} {'vs full K=4':>11} {'located':>8} "
          f"{'agreement (all, 95% CI)':>24} {'minus full K=4 (paired)':>24} {'among located':>13} {'seconds':>8}")
    for r in rows:
        r["rollout_saving_vs_full_k4"] = ref["rollouts"] / max(1, r["rollouts"])
        r["agreement_minus_full_k4"] = paired_difference(hits[(r["estimator"], r["k"])], hits[("full", 4)])
        among = "-" if r["agreement_located"] is None else f"{r['agreement_located']:.3f}"
        low, high = r["agreement_ci"]
        paired = "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r["agreement_minus_full_k4"])
        print(f"{r['estimator']:10} {r['k']:>2} {r['rollouts_per_trajectory']:13.1f} "
              f"{r['rollout_saving_vs_full_k4']:10.2f}x {r['located_share']:8.2f} "
              f"{r['agreement']:9.3f} [{low:.3f}, {high:.3f}] {paired:>24} {among:>13} {r['seconds']:8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"problems": args.problems, "n": args.n, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
