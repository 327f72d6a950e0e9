"""The demo's arms, one row each: where an arm's data comes from, what it costs, whether it is a GPO arm.

Adding an arm is one row. A GPO arm names its estimator and rule: the demo copies the paper arm's finished
`sample` stage (and its `estimate`, when `estimate_from` says the estimate is the same), then runs what
differs. The other arms read rows of the paper arm's branch table or of their own sample run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PAPER = "gpo"  # the run every other arm shares samples with
BASELINE = "same-samples"  # the reference of the primary comparison
RANDOM = "random-reset"  # the GPO arms' second (exploratory) reference: is the critical step better than any?


@dataclass(frozen=True)
class Arm:
    name: str
    run: str  # run folder (under the demo's root) whose branch table holds the arm's rows
    data: str  # `gpo train --data`: gpo, baseline or random-reset rows
    what: str  # one line for the arm table (docs/experiments.md) and the summary
    estimator: str | None = None  # GPO arms: `gpo estimate --estimator`
    rule: str = "abs-advantage"  # GPO arms: `gpo locate --rule`
    estimate_from: str | None = None  # a GPO arm with the same estimate as this arm's run: copied, not rerun

    @property
    def is_gpo(self) -> bool:
        return self.data == "gpo"

    @property
    def paid_stages(self) -> tuple[str, ...]:
        """The stages of `run` whose generated tokens the arm's data cost."""
        return ("sample", "estimate") if self.is_gpo else ("sample",)

    @property
    def paid_branches(self) -> str | None:
        """The branch stat tag whose new continuations the arm's data cost (None: whole trajectories only)."""
        return None if self.data == "baseline" else self.data


ARMS = (
    Arm(PAPER, PAPER, "gpo", "the paper: K=4 rollouts at every state, largest |advantage|, M=5 branches",
        estimator="full"),
    Arm("gpo-bisect", "gpo-bisect", "gpo", "the same samples, the bisect estimator (K=4)", estimator="bisect"),
    Arm("gpo-changepoint", "gpo-changepoint", "gpo", "the paper's estimate (copied), the change-point rule",
        estimator="full", rule="changepoint", estimate_from=PAPER),
    Arm("gpo-cp-estimate", "gpo-cp-estimate", "gpo", "the same samples, the changepoint estimator (bisect, then "
                                                    "rollouts where the split is uncertain) and rule",
        estimator="changepoint", rule="changepoint"),
    Arm("gpo-oracle", "gpo-oracle", "gpo", "upper bound: reset at the known first wrong line (K=4 rollouts only "
                                          "there)", estimator="oracle", rule="oracle"),
    Arm(RANDOM, PAPER, "random-reset", "reset at a random step, as many continuations per failed "
                                               "trajectory as GPO spent rollouts"),
    Arm(BASELINE, PAPER, "baseline", "whole-trajectory pairs from the same samples (the paper's baseline)"),
    Arm("tokens-matched", "tokens-matched", "baseline", "whole-trajectory pairs from more samples, costing as "
                                                        "many tokens as GPO's rollouts"),
)
NAMES = tuple(a.name for a in ARMS)
GPO_ARMS = tuple(a.name for a in ARMS if a.is_gpo)


def by_name(name: str) -> Arm:
    return next(a for a in ARMS if a.name == name)


def arm_data(root: Path) -> dict[str, tuple[Path, str]]:
    """arm -> (run folder, `--data` rows of its branch table)."""
    return {a.name: (root / a.run, a.data) for a in ARMS}


def sampled_label(label: str) -> str:
    """The eval label of a model's sampled pass (its greedy pass and probe carry the plain label)."""
    return f"{label}.sampled"
