"""The demo's plan: how many problems, samples, rollouts and optimizer steps per task and size, each arm's
learning rate and beta (chosen on the validation split by bench/select_hparams.py), the problem sources."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from stages.core.pipeline.errors import GpoError
from stages.tools.demo.arms import NAMES


def shown(path: Path) -> Path:
    """Relative to the working directory when inside it, so printed commands are short and portable."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


# Paired SD of greedy accuracy between two trained arms, measured on toy:borrow (issue 20: oracle minus
# same-samples, +0.040 [-0.001, +0.081] over 150 problems, so SD = 0.041 / 1.96 * sqrt(150) = 0.256). For a
# 95% half-width of 2 points: (1.96 * 0.256 / 0.02)^2 = 630 problems; the summary recomputes it per run.
GREEDY_PROBLEMS = 640


@dataclass(frozen=True)
class DemoPlan:
    task: str
    train_problems: int
    test_problems: int  # sampled pass@1 (eval_n samples each): the first test_problems of the greedy set
    greedy_problems: int = GREEDY_PROBLEMS  # greedy accuracy and the probe (cheap: one pass per problem)
    n: int = 4  # samples per training problem
    k: int = 4  # Monte Carlo rollouts per state (the paper)
    m: int = 5  # branches at the critical state: its 4 rollouts + the trajectory's own continuation
    eval_n: int = 4  # samples per test problem
    # Training, identical for every arm but for learning rate and beta: arm -> (learning_rate, beta), read
    # from the validation-split choice of bench/select_hparams.py (bench/results/select_hparams.json).
    steps: int = 30
    batch_size: int = 8
    hparams: dict = field(default_factory=dict)


PLANS = {
    ("borrow", False): DemoPlan("borrow", train_problems=40, test_problems=150),
    ("borrow", True): DemoPlan("borrow", train_problems=12, test_problems=40, greedy_problems=60, eval_n=2,
                               steps=6),
    ("arith", False): DemoPlan("arith", train_problems=150, test_problems=300),
    ("arith", True): DemoPlan("arith", train_problems=64, test_problems=40, greedy_problems=60, eval_n=2,
                              steps=6),
}


CHOICE = Path(__file__).resolve().parents[3] / "bench" / "results" / "select_hparams.json"


def with_chosen_hparams(plan: DemoPlan, arms=NAMES) -> DemoPlan:
    """Each arm's learning rate and beta from the validation-split choice (toy:borrow's; toy:arith uses it too)."""
    if not CHOICE.exists():
        raise GpoError(f"{CHOICE} is missing: run `python bench/select_hparams.py` to choose each arm's learning "
                       "rate and beta on the validation split")
    chosen = json.loads(CHOICE.read_text())["chosen"]
    missing = [arm for arm in arms if arm not in chosen]
    if missing:
        raise GpoError(f"{CHOICE} has no choice for arm(s) {', '.join(missing)}: run `python bench/select_hparams.py"
                       f" --arms {','.join(missing)}`")
    return replace(plan, hparams={arm: (chosen[arm]["learning_rate"], chosen[arm]["beta"]) for arm in arms})


def source(plan: DemoPlan, split: str, n: int, seed: int) -> str:
    return f"toy:{plan.task}?n={n}&seed={seed}&split={split}"


def max_new_tokens(plan: DemoPlan) -> int:
    from stages.core.sources.toy_tasks import get

    return get(plan.task).max_new_tokens
