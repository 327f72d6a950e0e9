"""Monte Carlo value estimators: which states of a trajectory get how many rollouts, round by round.

Each estimator is a small plan over one trajectory with states s_0 .. s_{n-1} (s_n is the trajectory's
own reward). `wants()` lists (state, extra rollouts) for the next round; `record()` adds outcomes.
All trajectories of a chunk advance together so every round is one large batch.
    full      every state, K rollouts (the paper)
    adaptive  2 rollouts per state, K only where the first ones disagree
    bisect    binary search for the state where the value reaches the trajectory's reward (OmegaPRM-style)
"""

from __future__ import annotations

from dataclasses import dataclass, field

ESTIMATORS = ("full", "adaptive", "bisect")


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

    def __post_init__(self):
        self.n = [0] * self.num_states
        self.correct = [0] * self.num_states
        self.hi = self.num_states

    def wants(self) -> list[tuple[int, int]]:
        if self.estimator == "full":
            return [(i, self.k - self.n[i]) for i in range(self.num_states) if self.n[i] < self.k]
        if self.estimator == "adaptive":
            return [(i, need) for i in range(self.num_states) if (need := self._adaptive_need(i))]
        if self.estimator == "bisect":
            if self.hi - self.lo <= 1:
                return []
            return [((self.lo + self.hi) // 2, self.k)]
        raise ValueError(f"unknown estimator {self.estimator!r} (choose {', '.join(ESTIMATORS)})")

    def _adaptive_need(self, i: int) -> int:
        first = min(2, self.k)
        if self.n[i] == 0:
            return first
        unanimous = self.correct[i] in (0, self.n[i])
        return 0 if unanimous or self.n[i] >= self.k else self.k - self.n[i]

    def record(self, state: int, outcomes: list[int]) -> None:
        self.n[state] += len(outcomes)
        self.correct[state] += sum(outcomes)
        if self.estimator == "bisect":
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
                right = next((observed[j] for j in range(i + 1, self.num_states) if observed[j] is not None),
                             float(self.reward))
                result.append((right, "filled"))
        result.append((float(self.reward), "reward"))
        return result
