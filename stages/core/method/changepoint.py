"""The change-point rule: the single step where a trajectory's value drops, found from every state's counts.

Model. A failed trajectory has states s_0 .. s_{n-1} with k_i correct out of K_i rollouts each, and its end
s_n, which enters as ONE extra observation: 0 correct out of 1 (the trajectory's own outcome is a draw of the
value there). A split m (0 <= m < n) says: states s_0..s_m share one value p_hi, states s_{m+1}..s_n share
p_lo, with p_hi > p_lo; step m (the step from s_m to s_{m+1}) is then the critical step. Unscored states
(K_i = 0, e.g. between bisection probes) add nothing. A successful trajectory is read with outcomes flipped
(k_i -> K_i - k_i, its end 0 of 1 again), so the rule finds the step where success became likely.

Choice. The split of maximum binomial likelihood with p_hi, p_lo at their MLEs (the segment means); a split
whose high segment has no observation, or whose means do not drop (mean_hi <= mean_lo: the constrained MLE
sits on p_hi = p_lo, no drop), is not a candidate. Ties within EPS go to the earliest split. No candidate:
no critical step, reason ``all_zero`` (no rollout succeeded; with s_n at 0 any success upstream makes some
split a drop) or, for a successful trajectory, ``no_rise`` (every rollout succeeded).

Confidence. The posterior probability of the chosen split under a flat prior over the n splits, with p_hi,
p_lo integrated out under independent uniform priors restricted to p_hi > p_lo (a drop): the marginal
likelihood of split m is 2 B(a_h+1, b_h+1) B(a_l+1, b_l+1) P(X > Y), X ~ Beta(a_h+1, b_h+1),
Y ~ Beta(a_l+1, b_l+1) (a: correct, b: failed rollouts in the segment). Why the posterior share and not a
likelihood ratio to the runner-up: it weighs every alternative split (a flat likelihood over five splits is
as doubtful as over two), it lives in [0, 1] so `--min-confidence` reads as "at least this probability that
the step is right, if there is one drop", and it is the quantity the adaptive estimator drives to a target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EPS = 1e-9


@dataclass(frozen=True)
class ChangePoint:
    step: int | None  # the critical step m, None when there is no drop
    reason: str | None  # why there is none: no_steps, all_zero, no_rise
    confidence: float | None  # posterior share of `step` (None when step is None)
    posterior: tuple[float, ...]  # posterior over splits 0..n-1 (all zero when no split has evidence)


def _segments(counts: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """(correct_hi, n_hi, correct_lo, n_lo) for each split m, counts including the end observation."""
    total_k = sum(k for k, _ in counts)
    total_n = sum(n for _, n in counts)
    out, kh, nh = [], 0, 0
    for k, n in counts[:-1]:
        kh, nh = kh + k, nh + n
        out.append((kh, nh, total_k - kh, total_n - nh))
    return out


def _loglik(k: int, n: int) -> float:
    """Max log-likelihood of k successes in n Bernoulli trials (p at its MLE k/n); 0 for n = 0."""
    return sum(c * math.log(c / n) for c in (k, n - k) if c)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _logsumexp(xs: Sequence[float]) -> float:
    top = max(xs)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(x - top) for x in xs))


def log_prob_greater(a1: int, b1: int, a2: int, b2: int) -> float:
    """log P(X > Y) for X ~ Beta(a1, b1), Y ~ Beta(a2, b2) with integer parameters (exact sum over a1 terms:
    P(X > Y) = sum_{i<a1} B(a2+i, b1+b2) / ((b1+i) B(1+i, b1) B(a2, b2)))."""
    terms = [_log_beta(a2 + i, b1 + b2) - math.log(b1 + i) - _log_beta(1 + i, b1) - _log_beta(a2, b2)
             for i in range(a1)]
    return min(0.0, _logsumexp(terms))


def posterior(counts: Sequence[tuple[int, int]]) -> list[float]:
    """Posterior over splits 0..n-1 (see the module docstring); counts are (correct, rollouts) for
    s_0..s_{n-1} plus the end observation last."""
    logs = []
    for kh, nh, kl, nl in _segments(counts):
        a_h, b_h, a_l, b_l = kh + 1, nh - kh + 1, kl + 1, nl - kl + 1
        logs.append(math.log(2) + _log_beta(a_h, b_h) + _log_beta(a_l, b_l) + log_prob_greater(a_h, b_h, a_l, b_l))
    z = _logsumexp(logs) if logs else -math.inf
    if z == -math.inf:
        return [0.0] * len(logs)
    return [math.exp(x - z) for x in logs]


def oriented(counts: Sequence[tuple[int, int]], reward: int) -> list[tuple[int, int]]:
    """State counts plus the end observation, flipped for a successful trajectory (a rise becomes a drop)."""
    states = [(n - k, n) if reward else (k, n) for k, n in counts]
    return states + [(0, 1)]  # s_n: one failed rollout (one successful one, flipped)


def change_point(counts: Sequence[tuple[int, int]], reward: int) -> ChangePoint:
    """The maximum-likelihood single drop over s_0..s_{n-1}'s (correct, rollouts) counts, with its
    confidence (module docstring)."""
    if not counts:
        return ChangePoint(None, "no_steps", None, ())
    obs = oriented(counts, reward)
    best, best_ll = None, -math.inf
    for m, (kh, nh, kl, nl) in enumerate(_segments(obs)):
        if nh == 0 or kh / nh <= kl / nl + EPS:
            continue
        ll = _loglik(kh, nh) + _loglik(kl, nl)
        if ll > best_ll + EPS:
            best, best_ll = m, ll
    post = posterior(obs)
    if best is None:
        # With s_n at 0 any success upstream makes some split a drop, so only an all-zero table has none.
        reason = "no_rise" if reward else "all_zero"
        return ChangePoint(None, reason, None, tuple(post))
    return ChangePoint(best, None, post[best], tuple(post))
