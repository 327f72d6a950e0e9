"""Monte Carlo value estimators: which states of a trajectory get how many rollouts, round by round.

Each estimator is a small plan over one trajectory with states s_0 .. s_{n-1} (s_n is the trajectory's
own reward). `wants()` lists (state, extra rollouts) for the next round; `record()` adds outcomes.
All trajectories of a chunk advance together so every round is one large batch.
    full         every state, K rollouts (the paper)
    adaptive     2 rollouts per state, K only where the first ones disagree
    bisect       binary search for the state where the value reaches the trajectory's reward (OmegaPRM-style)
    changepoint  bisect first, then K more at the states whose side of the drop is least certain under the
                 change-point posterior (core/changepoint.py), until the chosen split's posterior share
                 reaches `target` or `budget` rollouts are spent; every count is reused
    oracle       K at the known first wrong line only (toy tasks): the cost of a perfect locator
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stages.core.method.changepoint import change_point

ESTIMATORS = ("full", "adaptive", "bisect", "changepoint", "oracle")


@dataclass
class Plan:
    estimator: str
    num_states: int
    reward: int
    k: int
    n: list[int] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    lo: int = -1  # bisect: last state known to differ from the reward (-1: none yet)
    hi: int = -1  # bisect: first state known to equal the reward (num_states: s_n itself)
    truth: int | None = None  # oracle: the first wrong line
    target: float = 0.9  # changepoint: stop once the chosen split's posterior share reaches this
    budget: int = 24  # changepoint: at most this many rollouts per trajectory
    cap: int = 0  # changepoint: most rollouts at one state (0: 2K); a replay of stored rollouts sets its K
    width: int = 2  # changepoint: states probed per round

    def __post_init__(self):
        self.n = [0] * self.num_states
        self.correct = [0] * self.num_states
        self.hi = self.num_states
        if self.estimator == "oracle" and self.truth is not None and 0 <= self.truth < self.num_states:
            self.hi = self.truth + 1  # fill: the reward after the error, V(s_truth) before it

    def wants(self) -> list[tuple[int, int]]:
        if self.estimator == "full":
            return [(i, self.k - self.n[i]) for i in range(self.num_states) if self.n[i] < self.k]
        if self.estimator == "adaptive":
            return [(i, need) for i in range(self.num_states) if (need := self._adaptive_need(i))]
        if self.estimator == "bisect":
            if self.hi - self.lo <= 1:
                return []
            return [((self.lo + self.hi) // 2, self.k)]
        if self.estimator == "changepoint":
            return self._changepoint_wants()
        if self.estimator == "oracle":
            t = self.truth
            ok = t is not None and 0 <= t < self.num_states and self.n[t] < self.k
            return [(t, self.k - self.n[t])] if ok and t is not None else []
        raise ValueError(f"unknown estimator {self.estimator!r} (choose {', '.join(ESTIMATORS)})")

    def _adaptive_need(self, i: int) -> int:
        first = min(2, self.k)
        if self.n[i] == 0:
            return first
        unanimous = self.correct[i] in (0, self.n[i])
        return 0 if unanimous or self.n[i] >= self.k else self.k - self.n[i]

    def _changepoint_wants(self) -> list[tuple[int, int]]:
        left = self.budget - sum(self.n)
        if left <= 0 or self.num_states == 0:
            return []
        if self.hi - self.lo > 1:  # phase 1: bisection, K per probe (the cheapest way to get near the drop)
            picks = [(self.lo + self.hi) // 2]
        else:  # phase 2: refine where the posterior is least sure, until the confidence target
            cp = change_point(list(zip(self.correct, self.n)), self.reward)
            if cp.step is not None and cp.confidence is not None and cp.confidence >= self.target:
                return []
            picks = self._least_certain(cp.posterior)
        return [(i, extra) for i, extra in zip(picks, self._shares(left, len(picks))) if extra > 0]

    def _shares(self, left: int, states: int) -> list[int]:
        """K per state, the last ones trimmed so the round stays within the budget."""
        out = []
        for _ in range(states):
            out.append(min(self.k, left))
            left -= out[-1]
        return out

    def _least_certain(self, posterior) -> list[int]:
        """The `width` states whose side of the drop is least certain (P(s_i before the drop) =
        P(split >= i) nearest 1/2: the states around the posterior median); a state holding `cap` (default
        2K) rollouts is settled, so the next least certain ones stand in."""
        sides, above = [], 0.0
        for m in range(self.num_states - 1, -1, -1):
            above += posterior[m]
            sides.append((abs(above - 0.5), m))
        open_states = [m for _, m in sorted(sides) if self.n[m] < (self.cap or 2 * self.k)]
        return sorted(open_states[:self.width])

    def record(self, state: int, outcomes: list[int]) -> None:
        self.n[state] += len(outcomes)
        self.correct[state] += sum(outcomes)
        if self.estimator == "bisect" or (self.estimator == "changepoint" and self.hi - self.lo > 1):
            # A state whose estimate equals the final reward sits on the reward side of the change.
            if self.correct[state] == self.reward * self.n[state]:
                self.hi = state
            else:
                self.lo = state

    def values(self) -> list[tuple[float, str]]:
        """V̂(s_0..s_n) with where each came from: rollouts, the reward (s_n), or filled in (bisect)."""
        observed = [self.correct[i] / self.n[i] if self.n[i] else None for i in range(self.num_states)]
        result: list[tuple[float, str]] = []
        for i, v in enumerate(observed):
            if v is not None:
                result.append((v, "rollouts"))
            elif i >= self.hi:  # right of the change: equal to the reward by the bisection's assumption
                result.append((float(self.reward), "filled"))
            else:  # left of the change: the nearest probed value to the right (values are monotone in between)
                right = next((o for o in observed[i + 1:] if o is not None), float(self.reward))
                result.append((right, "filled"))
        result.append((float(self.reward), "reward"))
        return result
