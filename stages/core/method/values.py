"""Step values, their confidence intervals, advantages and the critical step.

``values`` is always ``V̂(s_0) … V̂(s_n)`` for a trajectory of n steps: ``V̂(s_i)`` is the share of
correct Monte Carlo continuations from the state before step i, and ``V̂(s_n)`` is the trajectory's
own 0/1 reward. ``None`` marks a state an early-stopping estimator did not score; only ``max-value``
accepts gaps. The advantage of step i is ``A_i = V̂(s_{i+1}) − V̂(s_i)``.

Selection rules (``select_critical``), ties to the earliest step throughout:
- ``abs-advantage`` (the paper's): argmax |A_i|; none when every A_i is 0;
- ``advantage``: the most negative A_i, the step that hurts most; none when no A_i < 0;
- ``max-value`` (authors' code): failed trajectories only; the state s_i with the highest V̂ among
  s_0 … s_{n-1}, if above 0; step i (the one starting there) is critical;
- ``random`` (Satori-style baseline): a uniform step, drawn with ``random.Random(rng_seed)``;
- ``changepoint`` (default): the maximum-likelihood single drop over every state's (correct, rollouts) counts, with a
  confidence (core/changepoint.py defines it); reads counts, not means, so unscored states are no obstacle;
- ``oracle``: the known first wrong line (toy tasks only), the upper bound of any locator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from stages.core.method.changepoint import change_point

RULES = ("abs-advantage", "advantage", "max-value", "random", "changepoint", "oracle")
# changepoint by default: on toy:borrow it finds the first wrong line far more often than argmax |A| on the
# same counts (bench/locator_frontier.py, docs/experiments.md "Benchmarks"); --rule abs-advantage is the paper's.
DEFAULT_RULE = "changepoint"
PAPER_RULE = "abs-advantage"

# Means of K rollouts differ by multiples of 1/K, but float subtraction does not give exact ties
# (2/3 - 1/3 != 1/3 - 0); differences within EPS count as equal.
EPS = 1e-9


def wilson_interval(n_correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when nothing was observed."""
    if not 0 <= n_correct <= n:
        raise ValueError(f"need 0 <= n_correct <= n, got {n_correct}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = n_correct / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def problem_mean_ci(per_problem: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean over problems and its 95% interval, clustered by problem: the unit is a problem's mean reward,
    never one sample (a problem's samples are not independent). Wilson when every value is 0/1 (one sample
    per problem), else mean +- z sd / sqrt(problems). The one definition: eval, demo and the report's SQL
    (stages/tools/report.py accuracy_sql, kept equal by a test) use it."""
    n = len(per_problem)
    mean = sum(per_problem) / n
    if all(v in (0.0, 1.0) for v in per_problem):
        lo, hi = wilson_interval(int(sum(per_problem)), n, z)
        return mean, lo, hi
    var = sum((v - mean) ** 2 for v in per_problem) / max(1, n - 1)
    half = z * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def paired_difference_ci(diffs: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean of per-problem paired differences (model B minus model A on the same problem) and its interval:
    mean +- z sd / sqrt(problems), the problem being the unit as in problem_mean_ci (no clamping: a
    difference may be negative)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def interval_p_value(mean: float, low: float, high: float, z: float = 1.96) -> float:
    """Two-sided normal p-value of a difference from its symmetric 95% interval (se = half-width / z)."""
    se = (high - low) / (2 * z)
    if se <= 0:
        return 1.0 if mean == 0 else 0.0
    return math.erfc(abs(mean) / se / math.sqrt(2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error over the family): sorted ascending, the i-th smallest
    is multiplied by (m - i), kept monotone and capped at 1; returned in the input's order."""
    m, adjusted, running = len(p_values), [0.0] * len(p_values), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def decided(n_correct: int, n: int, threshold: float = 0.5, z: float = 1.96) -> bool:
    """True once the Wilson interval excludes ``threshold``: an adaptive-K estimator may stop."""
    lo, hi = wilson_interval(n_correct, n, z)
    return lo > threshold or hi < threshold


def advantages(values: Sequence[float | None]) -> list[float]:
    """``A_i = V̂(s_{i+1}) − V̂(s_i)`` for i in 0 … n-1; every value must be known."""
    if any(v is None for v in values):
        raise ValueError("advantages need every V̂(s_i); got an unscored state (None)")
    return [float(b) - float(a) for a, b in zip(values, values[1:])]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Critical:
    step: int | None  # index of the critical step, None when the trajectory is skipped
    reason: str | None = None  # why there is none: no_steps, all_advantages_zero, ...
    confidence: float | None = None  # changepoint: posterior share of the chosen step; oracle: 1


def select_critical(
    rule: str,
    values: Sequence[float | None],
    *,
    reward: float,
    rng_seed: int | None = None,
    counts: Sequence[tuple[int, int]] | None = None,
    truth: int | None = None,
) -> Critical:
    """Pick the critical step of one trajectory by ``rule`` (see the module docstring). ``counts``
    ((correct, rollouts) per state s_0..s_{n-1}) feed changepoint; ``truth`` (the first wrong line) oracle."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}, expected one of {', '.join(RULES)}")
    if values and values[-1] is not None and not math.isclose(float(values[-1]), float(reward)):
        raise ValueError(f"V̂(s_n) must be the trajectory's reward: {values[-1]} != {reward}")
    if len(values) <= 1:
        return Critical(None, "no_steps")
    if rule == "abs-advantage":
        return _abs_advantage(values)
    if rule == "advantage":
        return _largest_drop(values)
    if rule == "max-value":
        return _max_value(values, reward)
    if rule == "changepoint":
        if counts is None or len(counts) != len(values) - 1:
            raise ValueError("the changepoint rule needs the (correct, rollouts) counts of every state s_0..s_{n-1}")
        cp = change_point(counts, int(reward))
        return Critical(cp.step, cp.reason, cp.confidence)
    if rule == "oracle":
        if truth is None:
            return Critical(None, "no_truth")
        return Critical(truth, None, 1.0) if 0 <= truth < len(values) - 1 else Critical(None, "truth_out_of_range")
    return _random_step(len(values) - 1, rng_seed)


def _abs_advantage(values: Sequence[float | None]) -> Critical:
    best = _first_argmax([abs(a) for a in advantages(values)])
    if best is None:
        return Critical(None, "all_advantages_zero")
    return Critical(best)


def _largest_drop(values: Sequence[float | None]) -> Critical:
    best = _first_argmax([-a for a in advantages(values)])
    if best is None:
        return Critical(None, "no_negative_advantage")
    return Critical(best)


def _max_value(values: Sequence[float | None], reward: float) -> Critical:
    # The authors explore failed trajectories only (reward < 1) and keep the first state whose mean
    # is strictly above the best so far, starting from 0: earliest wins ties, V̂ = 0 everywhere skips.
    if reward >= 1:
        return Critical(None, "not_failed")
    scores = [float("-inf") if v is None else float(v) for v in values[:-1]]
    best = _first_argmax(scores)
    if best is None:
        return Critical(None, "no_value_above_zero")
    return Critical(best)


def _random_step(num_steps: int, rng_seed: int | None) -> Critical:
    if rng_seed is None:
        raise ValueError("the random rule needs rng_seed (e.g. stable_seed(run_seed, trajectory_id))")
    return Critical(random.Random(rng_seed).randrange(num_steps))


def _first_argmax(scores: Sequence[float]) -> int | None:
    """Index of the largest score above 0 (ties within EPS to the earliest); None if none is."""
    best = None
    for i, score in enumerate(scores):
        floor = EPS if best is None else scores[best] + EPS
        if score > floor:
            best = i
    return best


TRUTH_RULES = ("abs-advantage", "advantage", "max-value", "changepoint")  # oracle agrees by definition


def agreement_by_rule(steps: dict, truths: dict) -> dict:
    """Each rule's hits on trajectories whose first wrong line is known: ``steps`` maps a trajectory to its
    estimate rows, ``truths`` to its first wrong line; an unestimated or unlocated trajectory is a miss.
    Returns {rule: (hits, trajectories)}; `gpo diagnose` reports it, bench/locator_frontier.py the frontier."""
    hits = dict.fromkeys(TRUTH_RULES, 0)
    for key, line in truths.items():
        rows = sorted(steps.get(key, []), key=lambda r: r["step_idx"])
        if not rows:
            continue
        values = [r["value"] for r in rows] + [rows[-1]["value_next"]]
        counts = [(r["n_correct"], r["n_rollouts"]) for r in rows]
        for rule in TRUTH_RULES:
            hits[rule] += select_critical(rule, values, reward=0, counts=counts).step == line
    return {rule: (n, len(truths)) for rule, n in hits.items()}
