"""The demo's statistics and hyperparameter choice, without running it: Holm, p-values from intervals, the
test-set size a measured variance calls for, each arm's own best cell."""

import json
import math
import sys

import pytest

from gpo_cli.demo import PLANS
from gpo_cli.demo_arms import NAMES
from stages.core.toy_tasks import TASKS

sys.path.insert(0, str(TASKS["arith"].model_dir.parent.parent / "bench"))


def test_holm_multiplies_the_ith_smallest_by_the_remaining_count_and_stays_monotone():
    from stages.core.values import holm

    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_p_value_from_a_95_interval():
    from stages.core.values import interval_p_value

    assert interval_p_value(0.0, -0.1, 0.1) == 1.0
    assert interval_p_value(0.1, 0.0, 0.2) == pytest.approx(0.05, abs=1e-4)  # the interval just touches 0
    assert interval_p_value(0.1, 0.1, 0.1) == 0.0


def test_needed_problems_for_two_points_from_a_measured_interval():
    from gpo_cli.demo_summary import needed_problems

    # issue 20's greedy difference: +0.040 [-0.001, +0.081] over 150 problems -> SD 0.256 -> ~630 problems
    n = needed_problems(-0.001, 0.081, 150)
    sd = 0.041 / 1.96 * math.sqrt(150)
    assert n == math.ceil((1.96 * sd / 0.02) ** 2) and 620 <= n <= 640
    assert PLANS[("borrow", False)].greedy_problems >= n


def test_each_arm_gets_its_own_best_cell_and_the_demo_uses_it():
    from gpo_cli.demo import CHOICE, with_chosen_hparams
    from select_hparams import choose

    grid = [{"learning_rate": 1e-5, "beta": 0.1, "per_arm": {"a": 0.30, "b": 0.40}},
            {"learning_rate": 3e-5, "beta": 0.1, "per_arm": {"a": 0.35, "b": 0.40}},
            {"learning_rate": 3e-5, "beta": 0.3, "per_arm": {"a": 0.20, "b": 0.10}}]
    chosen = choose(grid, ["a", "b"])
    assert (chosen["a"]["learning_rate"], chosen["a"]["beta"]) == (3e-5, 0.1)
    assert (chosen["b"]["learning_rate"], chosen["b"]["beta"]) == (1e-5, 0.1)  # a tie keeps the earlier cell
    saved = json.loads(CHOICE.read_text())
    assert not saved["quick"] and saved["task"] == "borrow" and "split=valid" in saved["validation_source"]
    plan = with_chosen_hparams(PLANS[("borrow", False)])
    assert set(plan.hparams) == set(NAMES)
    for arm, (lr, beta) in plan.hparams.items():
        assert (lr, beta) == (saved["chosen"][arm]["learning_rate"], saved["chosen"][arm]["beta"])
        best = max(c["per_arm"][arm] for c in saved["grid"])
        assert saved["chosen"][arm]["valid"] == best
    assert (plan.steps, plan.batch_size) == (saved["optimizer_steps"], saved["batch_size"])
