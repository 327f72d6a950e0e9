"""The change-point rule and its confidence on hand-built count tables whose answer is known, and the
estimators that feed it (changepoint, oracle)."""

import math
import random

import pytest

from stages.core.method.changepoint import change_point, log_prob_greater, posterior
from stages.core.method.estimators import Plan
from stages.core.method.values import Critical, select_critical


def test_prob_greater_matches_closed_forms():
    assert math.exp(log_prob_greater(1, 1, 1, 1)) == pytest.approx(0.5)
    assert math.exp(log_prob_greater(2, 1, 1, 1)) == pytest.approx(2 / 3)  # int 2x * x dx
    assert math.exp(log_prob_greater(1, 1, 2, 1)) == pytest.approx(1 / 3)
    # symmetric: P(X > Y) + P(Y > X) = 1 for continuous X, Y
    assert math.exp(log_prob_greater(5, 3, 2, 7)) + math.exp(log_prob_greater(2, 7, 5, 3)) == pytest.approx(1)


def test_clean_drop_is_found_with_high_confidence():
    cp = change_point([(4, 4), (4, 4), (4, 4), (0, 4), (0, 4)], reward=0)
    assert cp.step == 2 and cp.reason is None
    assert cp.confidence > 0.9 and sum(cp.posterior) == pytest.approx(1)


def test_drop_into_the_failed_end_counts_the_end_as_one_failed_rollout():
    # every state succeeds; only s_n (the trajectory's own failure) is low: the last step is critical
    cp = change_point([(4, 4), (4, 4), (4, 4)], reward=0)
    assert cp.step == 2
    # the end is one observation, not a fixed zero: it weighs less than a state's four rollouts
    assert cp.confidence < change_point([(4, 4), (4, 4), (0, 4)], reward=0).confidence


def test_all_zero_has_no_drop():
    cp = change_point([(0, 4)] * 5, reward=0)
    assert (cp.step, cp.reason, cp.confidence) == (None, "all_zero", None)


def test_successful_trajectory_looks_for_the_rise_and_has_none_when_always_right():
    assert change_point([(0, 4), (0, 4), (4, 4), (4, 4)], reward=1).step == 1
    cp = change_point([(4, 4)] * 4, reward=1)
    assert (cp.step, cp.reason) == (None, "no_rise")


def test_two_drops_the_larger_wins_and_equal_ones_leave_doubt():
    assert change_point([(4, 4), (4, 4), (1, 4), (1, 4), (0, 4)], reward=0).step == 1
    assert change_point([(4, 4), (4, 4), (3, 4), (3, 4), (0, 4)], reward=0).step == 3
    two = change_point([(4, 4), (4, 4), (2, 4), (2, 4), (0, 4)], reward=0)
    one = change_point([(4, 4), (4, 4), (4, 4), (0, 4), (0, 4)], reward=0)
    assert two.step in (1, 3) and two.confidence < 0.7 < one.confidence


def test_ties_go_to_the_earliest_split_and_unscored_states_add_nothing():
    # s_1..s_3 unscored (as between bisection probes): splits 0..3 explain the data equally
    cp = change_point([(4, 4), (0, 0), (0, 0), (0, 0), (0, 4)], reward=0)
    assert cp.step == 0
    assert cp.posterior[0] == pytest.approx(cp.posterior[3]) and cp.confidence == pytest.approx(cp.posterior[0])
    assert cp.confidence < 0.3


def test_sharper_tables_get_higher_confidence():
    soft = change_point([(3, 4), (3, 4), (1, 4), (1, 4)], reward=0)
    sharp = change_point([(4, 4), (4, 4), (0, 4), (0, 4)], reward=0)
    sharper = change_point([(8, 8), (8, 8), (0, 8), (0, 8)], reward=0)
    assert soft.step == sharp.step == sharper.step == 1
    assert soft.confidence < sharp.confidence < sharper.confidence


def test_changepoint_beats_abs_advantage_on_a_noisy_table():
    # true drop after s_4 (step 4) from about 0.6; the noise of K=4 means at s_0, s_1 fools argmax |A|
    counts = [(4, 4), (1, 4), (3, 4), (2, 4), (2, 4), (0, 4), (0, 4)]
    values = [k / n for k, n in counts] + [0.0]
    assert select_critical("abs-advantage", values, reward=0).step == 0
    c = select_critical("changepoint", values, reward=0, counts=counts)
    assert c.step == 4 and 0 < c.confidence < 1


def test_changepoint_rule_needs_counts_and_oracle_reads_the_truth():
    with pytest.raises(ValueError, match="counts"):
        select_critical("changepoint", [0.5, 0.0], reward=0)
    assert select_critical("oracle", [1.0, 0.5, 0.0], reward=0, truth=1) == Critical(1, None, 1.0)
    assert select_critical("oracle", [1.0, 0.5, 0.0], reward=0) == Critical(None, "no_truth")
    assert select_critical("oracle", [1.0, 0.5, 0.0], reward=0, truth=5).reason == "truth_out_of_range"


def test_posterior_is_a_distribution_over_splits():
    post = posterior([(3, 4), (1, 4), (2, 4), (0, 1)])
    assert len(post) == 3 and sum(post) == pytest.approx(1) and min(post) >= 0


# ---- estimators -------------------------------------------------------------------------------------


def drive(plan: Plan, value_of, seed: int = 0) -> Plan:
    """Run a plan against states whose success probability is value_of(i)."""
    rng = random.Random(seed)
    for _ in range(200):
        wants = plan.wants()
        if not wants:
            return plan
        for i, extra in wants:
            plan.record(i, [int(rng.random() < value_of(i)) for _ in range(extra)])
    raise AssertionError("the plan did not stop")


@pytest.mark.parametrize("truth", [0, 3, 11, 19])
def test_changepoint_estimator_finds_a_clean_drop_within_budget(truth):
    plan = drive(Plan("changepoint", 20, 0, 2, target=0.9, budget=40), lambda i: 1.0 if i <= truth else 0.0)
    assert sum(plan.n) <= 40  # full K=2 would spend 40, K=4 80
    assert change_point(list(zip(plan.correct, plan.n)), 0).step == truth
    assert len(plan.values()) == 21
    if truth < 19:  # a drop into the end rests on one observation (s_n) and needs the whole budget
        assert sum(plan.n) <= 20


def test_changepoint_estimator_finds_a_noisy_drop_most_of_the_time():
    hits = spent = 0
    for seed in range(20):
        plan = drive(Plan("changepoint", 20, 0, 2, target=0.9, budget=40), lambda i: 0.8 if i <= 8 else 0.0, seed)
        hits += change_point(list(zip(plan.correct, plan.n)), 0).step == 8
        spent += sum(plan.n)
    assert hits >= 16 and spent / 20 < 30


def test_changepoint_estimator_stops_at_the_budget_when_nothing_succeeds():
    plan = drive(Plan("changepoint", 10, 0, 3, target=0.9, budget=13), lambda i: 0.0)
    assert sum(plan.n) == 13


def test_changepoint_estimator_is_deterministic_given_outcomes():
    a = drive(Plan("changepoint", 15, 0, 2, budget=30), lambda i: 0.6 if i < 7 else 0.1, seed=3)
    b = drive(Plan("changepoint", 15, 0, 2, budget=30), lambda i: 0.6 if i < 7 else 0.1, seed=3)
    assert (a.n, a.correct) == (b.n, b.correct)


def test_oracle_estimator_rolls_out_only_at_the_truth():
    plan = drive(Plan("oracle", 8, 0, 4, truth=5), lambda i: 0.5)
    assert plan.n == [0, 0, 0, 0, 0, 4, 0, 0]
    values = [v for v, _ in plan.values()]
    assert values[6:] == [0.0, 0.0, 0.0] and values[:5] == [values[5]] * 5  # filled on both sides
    assert drive(Plan("oracle", 8, 0, 4, truth=None), lambda i: 0.5).n == [0] * 8


def test_settings_refuse_what_would_be_ignored_or_meaningless():
    from stages.core.pipeline.errors import GpoError
    from stages.estimate import EstimateSettings
    from stages.locate import LocateSettings

    with pytest.raises(GpoError, match="--min-confidence applies to --rule changepoint"):
        LocateSettings(rule="abs-advantage", min_confidence=0.5)
    with pytest.raises(GpoError, match=r"--min-confidence must be in \[0, 1\]"):
        LocateSettings(min_confidence=1.5)
    with pytest.raises(GpoError, match="--target"):
        EstimateSettings(estimator="changepoint", target=0.0)
    with pytest.raises(GpoError, match="--budget"):
        EstimateSettings(estimator="changepoint", budget=0)
