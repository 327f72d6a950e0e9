"""How often each selection rule, applied to a run's own estimates, picks the known first wrong line.

    python bench/rule_agreement.py runs/demo/gpo runs/demo/gpo-bisect

For toy runs (ground truth known). Over every failed trajectory with a first wrong line (no critical step
counts as a miss), per rule, plus the mean V-hat by step position relative to the first wrong line: the
size of the real drop against the K-rollout noise that argmax |A| has to beat.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rule_agreement(run: Path) -> dict:
    from stages.core.pipeline import artifacts
    from stages.core.method.values import agreement_by_rule

    truth = {(r["problem_id"], r["sample_idx"]): r["first_wrong_line"]
             for r in artifacts.read_table(run, "locate").to_pylist() if r["first_wrong_line"] is not None}
    steps: dict = {}
    for r in artifacts.read_table(run, "estimate").to_pylist():
        steps.setdefault((r["problem_id"], r["sample_idx"]), []).append(r)
    by_offset: dict = {}
    for key, line in truth.items():
        for r in steps.get(key, []):
            by_offset.setdefault(max(-4, min(2, r["step_idx"] - line)), []).append(r["value"])
    n = len(truth)
    return {"trajectories": n, "agreement": {rule: hits / n for rule, (hits, _) in
                                             agreement_by_rule(steps, truth).items()},
            "mean_value_by_offset": {d: sum(v) / len(v) for d, v in sorted(by_offset.items())}}


def main() -> None:
    for run in sys.argv[1:]:
        r = rule_agreement(Path(run))
        print(f"{run}: {r['trajectories']} failed trajectories with a first wrong line")
        for rule, a in r["agreement"].items():
            print(f"  {rule:14s} agreement {a:.3f}")
        print("  mean V-hat(s_i) by step - first wrong line (-4 = four or more before): "
              + ", ".join(f"{d:+d}: {v:.3f}" for d, v in r["mean_value_by_offset"].items()))


if __name__ == "__main__":
    main()
