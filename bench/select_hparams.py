"""Choose the demo's DPO hyperparameters on the validation split (never the test split).

    python bench/select_hparams.py                       # toy:borrow, the grid below
    python bench/select_hparams.py --task arith --quick  # smoke size

Procedure (the one the README records): build every arm's training data exactly as `gpo demo` does (train
split, seed 0); for each (learning rate, beta) in the grid, train all five arms with the demo's optimizer steps
and batch; score each on the validation split (`split=valid`: problems disjoint from train and test by a hash
of the question) by sampled pass@1; choose the setting with the best *average over the arms*, so the choice
favours no arm. Writes bench/results/select_hparams[-<task>].json; `gpo demo` reads its choice from
bench/results/select_hparams.json (toy:borrow's, also used for toy:arith).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID_LR = (3e-6, 1e-5, 3e-5, 1e-4)
GRID_BETA = (0.1,)


def select(task: str, quick: bool, work: Path, lrs, betas, valid_problems: int) -> dict:
    from gpo_cli.demo import ARMS, PLANS, Runner, generate_data, shown, source, train_arms
    from stages import eval as evaluation
    from stages.core.toy_tasks import get
    from typer.main import get_command

    from gpo_cli.main import app

    plan = PLANS[(task, quick)]
    model = shown(get(task).model_dir)  # as `gpo demo` names it, so its seed 0 reuses this data
    gpo, started = Runner(get_command(app)), time.time()
    data = generate_data(work, plan, model, 0, gpo)
    valid = source(plan, "valid" if "valid" in get(task).splits else "train", valid_problems, 1)
    gpo("eval base", "eval", "--model", model, "--problems", valid, "--run", work / "valid", "--label", "base",
        "--n", plan.eval_n, "--temperature", 1.0, "--max-new-tokens", get(task).max_new_tokens, "--backend", "hf",
        "--no-greedy")
    base = next(iter(evaluation.write_summary(work / "valid", "base", (1,))["modes"]["sampled"].values()))["pass@1"]
    rows = []
    for lr in lrs:
        for beta in betas:
            tag = f"lr{lr:g}-b{beta:g}"
            p = replace(plan, learning_rate=lr, beta=beta)
            models = train_arms(work / f"train-{tag}", p, model, 0, data["runs"], gpo)
            scores = {}
            for arm, path in models.items():
                label = f"{arm}-{tag}"
                gpo(f"eval {label}", "eval", "--model", path, "--problems", valid, "--run", work / "valid",
                    "--label", label, "--n", plan.eval_n, "--temperature", 1.0, "--max-new-tokens",
                    get(task).max_new_tokens, "--backend", "hf", "--no-greedy")
                summary = evaluation.write_summary(work / "valid", label, (1,))
                scores[arm] = next(iter(summary["modes"]["sampled"].values()))["pass@1"]
            rows.append({"learning_rate": lr, "beta": beta, "per_arm": scores,
                         "mean_over_arms": sum(scores.values()) / len(scores)})
    best = max(rows, key=lambda r: r["mean_over_arms"])
    return {"task": task, "quick": quick, "validation_source": valid, "arms": list(ARMS),
            "optimizer_steps": plan.steps, "batch_size": plan.batch_size, "base_model": base, "grid": rows,
            "chosen": {"learning_rate": best["learning_rate"], "beta": best["beta"]},
            "per_arm_best": {arm: max(rows, key=lambda r: r["per_arm"][arm])["learning_rate"] for arm in ARMS},
            "rule": "best mean over arms of sampled pass@1 on the validation split",
            "wall_seconds": round(time.time() - started)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="borrow")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("runs/select-hparams"))
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in GRID_LR))
    ap.add_argument("--betas", default=",".join(f"{x:g}" for x in GRID_BETA))
    ap.add_argument("--valid-problems", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default bench/results/...)")
    a = ap.parse_args()
    result = select(a.task, a.quick, a.work, [float(x) for x in a.lrs.split(",")],
                    [float(x) for x in a.betas.split(",")], a.valid_problems)
    out = a.out or ROOT / "bench" / "results" / f"select_hparams{'' if a.task == 'borrow' else '-' + a.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'lr':>8} {'beta':>5} " + " ".join(f"{arm:>14}" for arm in result["arms"]) + "   mean")
    for r in result["grid"]:
        print(f"{r['learning_rate']:>8g} {r['beta']:>5g} "
              + " ".join(f"{r['per_arm'][arm]:>14.3f}" for arm in result["arms"]) + f"   {r['mean_over_arms']:.3f}")
    print(f"base model: {result['base_model']:.3f}")
    print(f"chosen: {result['chosen']} ({result['rule']}); wrote {out}")


if __name__ == "__main__":
    main()
