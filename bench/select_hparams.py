"""Choose each demo arm's DPO learning rate and beta on the validation split (never the test split).

    python bench/select_hparams.py                               # toy:borrow, every arm, the grid below
    python bench/select_hparams.py --arms gpo-changepoint         # add one arm's cells to the existing result
    python bench/select_hparams.py --task arith --quick           # smoke size

Procedure (the one docs/experiments.md records): build every arm's training data exactly as `gpo demo` does (train
split, seed 0); for each (learning rate, beta) in the grid, train each arm with the demo's optimizer steps
and batch; score each on the validation split (`split=valid`: problems disjoint from train and test by a hash
of the question) by greedy accuracy, the demo's primary outcome (deterministic, one pass per problem; over
256 problems a paired difference of two cells has a 95% half-width of ~3 points, at the per-problem SD 0.256
measured in issue 20); choose **per arm** its best cell (ties: the earlier cell, smaller learning
rate first). Every arm gets the same grid and the same validation budget, so the rule favours none: an arm
whose pairs need a larger step (GPO's long shared prefixes cancel in the DPO margin) can take it, and one
hurt by it need not. Writes the grid, every cell and the choice to bench/results/select_hparams[-<task>].json;
`gpo demo` reads bench/results/select_hparams.json (toy:borrow's, also used for toy:arith).
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

GRID_LR = (3e-6, 1e-5, 3e-5)
GRID_BETA = (0.1, 0.3)
RULE = "per arm: its best greedy accuracy on the validation split over the same lr x beta grid (ties: earlier cell)"


def choose(grid: list[dict], arms) -> dict:
    """arm -> its best cell's learning rate and beta (the first of equals, in grid order)."""
    chosen = {}
    for arm in arms:
        cells = [c for c in grid if arm in c["per_arm"]]
        best = max(cells, key=lambda c: c["per_arm"][arm])  # max keeps the first of equals
        chosen[arm] = {"learning_rate": best["learning_rate"], "beta": best["beta"], "valid": best["per_arm"][arm]}
    return chosen


def gpo_program():
    """The installed `gpo` program, found by its console-script entry point (pyproject.toml) as the shell finds
    it, run in this process as `gpo demo` runs it: bench drives the program, and imports none of its modules."""
    from importlib.metadata import entry_points

    from typer.main import get_command

    found = entry_points(group="console_scripts", name="gpo")
    if not found:
        raise SystemExit("error: the gpo program is not installed here: `pip install -e .` (scripts/setup.sh)")
    return get_command(next(iter(found)).load())


def select(task: str, quick: bool, work: Path, lrs, betas, valid_problems: int, arms,
           train_problems: int | None = None) -> dict:
    from stages import eval as evaluation
    from stages.core.sources.toy_tasks import get
    from stages.tools.demo.driver import Runner, generate_data, train_arms
    from stages.tools.demo.plan import PLANS, shown, source

    plan = PLANS[(task, quick)]
    plan = replace(plan, train_problems=train_problems or plan.train_problems)
    model = shown(get(task).model_dir)  # as `gpo demo` names it, so its seed 0 reuses this data
    gpo, started = Runner(gpo_program()), time.time()
    data = generate_data(work, plan, model, 0, gpo)
    valid = source(plan, "valid" if "valid" in get(task).splits else "train", valid_problems, 1)
    tokens = ("--max-new-tokens", get(task).max_new_tokens, "--backend", "hf")

    def score(label: str, path) -> float:
        gpo(f"eval {label}", "eval", "--model", path, "--problems", valid, "--run", work / "valid", "--label", label,
            "--temperature", 0, *tokens)
        summary = evaluation.write_summary(work / "valid", label, (1,))
        assert summary is not None  # the eval above finished
        return next(iter(summary["modes"]["greedy"].values()))["pass@1"]

    base = score("base", model)
    grid = []
    for lr in lrs:
        for beta in betas:
            tag = f"lr{lr:g}-b{beta:g}"
            cell = replace(plan, hparams={arm: (lr, beta) for arm in arms})
            models = train_arms(work / f"train-{tag}", cell, model, 0, work, gpo)
            grid.append({"learning_rate": lr, "beta": beta,
                         "per_arm": {arm: score(f"{arm}-{tag}", path) for arm, path in models.items()}})
    return {"task": task, "quick": quick, "validation_source": valid, "arms": list(arms),
            "optimizer_steps": plan.steps, "batch_size": plan.batch_size, "train_problems": plan.train_problems,
            "grid_lr": list(lrs), "grid_beta": list(betas), "base_model": base, "grid": grid,
            "chosen": choose(grid, arms), "rule": RULE, "training_data": data["budget"]["rule"],
            "wall_seconds": round(time.time() - started)}


def merge(old: dict, new: dict) -> dict:
    """Add a run for some arms to an earlier result over the same grid and plan (so a new arm is one run)."""
    same = all(old.get(k) == new[k] for k in ("task", "quick", "validation_source", "optimizer_steps",
                                              "batch_size", "grid_lr", "grid_beta", "rule"))
    if not same:
        raise SystemExit("error: the existing result was made with another grid, plan or validation set; "
                         "rerun every arm (without --arms) or write elsewhere with --out")
    cells = {(c["learning_rate"], c["beta"]): c for c in old["grid"]}
    for c in new["grid"]:
        cells[(c["learning_rate"], c["beta"])]["per_arm"].update(c["per_arm"])
    arms = [*old["arms"], *[a for a in new["arms"] if a not in old["arms"]]]
    return {**old, "arms": arms, "chosen": {**old["chosen"], **new["chosen"]}}


def main() -> None:
    from stages.tools.demo.arms import NAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="borrow")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("runs/select-hparams"))
    ap.add_argument("--arms", default=None, help=f"comma-separated (default: all of {', '.join(NAMES)}); with an "
                                                 "existing result, added to it")
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in GRID_LR))
    ap.add_argument("--betas", default=",".join(f"{x:g}" for x in GRID_BETA))
    ap.add_argument("--valid-problems", type=int, default=256)
    ap.add_argument("--train-problems", type=int, default=None, help="override the demo plan's (tests)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default bench/results/...)")
    a = ap.parse_args()
    arms = a.arms.split(",") if a.arms else list(NAMES)
    unknown = [arm for arm in arms if arm not in NAMES]
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {', '.join(unknown)} (the demo's: {', '.join(NAMES)})")
    result = select(a.task, a.quick, a.work, [float(x) for x in a.lrs.split(",")],
                    [float(x) for x in a.betas.split(",")], a.valid_problems, arms, a.train_problems)
    out = a.out or ROOT / "bench" / "results" / f"select_hparams{'' if a.task == 'borrow' else '-' + a.task}.json"
    if a.arms and out.exists():
        result = merge(json.loads(out.read_text()), result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'lr':>8} {'beta':>5} " + " ".join(f"{arm:>14}" for arm in result["arms"]))
    for c in result["grid"]:
        print(f"{c['learning_rate']:>8g} {c['beta']:>5g} "
              + " ".join(f"{c['per_arm'][arm]:>14.3f}" if arm in c["per_arm"] else f"{'-':>14}"
                         for arm in result["arms"]))
    print(f"base model: {result['base_model']:.3f}")
    for arm, c in result["chosen"].items():
        print(f"chosen for {arm}: lr {c['learning_rate']:g}, beta {c['beta']:g} (valid {c['valid']:.3f})")
    print(f"rule: {result['rule']}; wrote {out}")


if __name__ == "__main__":
    main()
