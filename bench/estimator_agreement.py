"""Benchmark 2: rollout budget vs critical-step agreement with the known first wrong line (toy task).

    .venv/bin/python bench/estimator_agreement.py [--model data/toy-model] [--problems 128] [--n 4]

One sample run (fixed), then `estimate` + `locate` for each estimator setting on copies of it:
full K=2,4,8 (the paper uses K=4), adaptive K=4,8 and bisect K=2,3,4,8. For each: rollouts spent per failed
trajectory, the share of failed trajectories with a critical step, and agreement with the first wrong
line among them. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = [("full", 2), ("full", 4), ("full", 8), ("adaptive", 4), ("adaptive", 8), ("bisect", 2), ("bisect", 3),
            ("bisect", 4), ("bisect", 8)]


def main() -> None:
    from stages import estimate, locate, sample
    from stages.core.hf_backend import HFGenerator
    from stages.core.query import run_query
    from stages.core.runner import run_stage
    from stages.core.sources import load_problems

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
    rows = []
    for estimator, k in SETTINGS:
        run = work / f"{estimator}-k{k}"
        shutil.copytree(base / "sample", run / "sample")
        t0 = time.time()
        manifest = run_stage(estimate.STAGE, run, estimate.EstimateSettings(k=k, estimator=estimator),
                             make_generator=lambda: gen, chunk_groups=64)
        seconds = time.time() - t0
        run_stage(locate.STAGE, run, locate.LocateSettings(), chunk_groups=256)
        failed, located, agree = run_query(run, "select count(*), count(critical_step), avg(agrees::int) "
                                                "from locate")[1][0]
        stats = manifest["stats"]
        rows.append({"estimator": estimator, "k": k, "failed": failed, "located": located,
                     "agreement": agree, "rollouts": stats.get("rollouts", 0),
                     "rollouts_per_trajectory": stats.get("rollouts", 0) / max(1, failed),
                     "generated_tokens": stats.get("generated_tokens", 0), "seconds": seconds})
    ref = next(r for r in rows if r["estimator"] == "full" and r["k"] == 4)
    print(f"{args.problems} toy problems x {args.n} samples; {ref['failed']} failed trajectories")
    print(f"{'estimator':10} {'K':>2} {'rollouts/traj':>13} {'vs full K=4':>11} {'located':>8} {'agreement':>9} "
          f"{'seconds':>8}")
    for r in rows:
        r["rollout_saving_vs_full_k4"] = ref["rollouts"] / max(1, r["rollouts"])
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        print(f"{r['estimator']:10} {r['k']:>2} {r['rollouts_per_trajectory']:13.1f} "
              f"{r['rollout_saving_vs_full_k4']:10.2f}x {r['located'] / max(1, r['failed']):8.2f} {agree:>9} "
              f"{r['seconds']:8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"problems": args.problems, "n": args.n, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
