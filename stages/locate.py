"""Stage `locate`: one row per trajectory with its critical step (or why it has none).

    gpo locate --run runs/toy --rule abs-advantage
    gpo sql runs/toy "select * from locate join estimate using (problem_id, sample_idx) where step_idx = critical_step"

Rules: abs-advantage (paper: argmax |A_i|), advantage (largest drop), max-value (authors' code),
random (Satori-style reset, seeded). Ties go to the earliest step. For the toy task the ground-truth
first wrong line is recorded next to the chosen step.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from stages.core.runner import Context, Stage
from stages.core.settings import setting
from stages.core.values import RULES, select_critical, stable_seed

LOCATE_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("rule", pa.string()),
    ("critical_step", pa.int32()), ("reason", pa.string()), ("num_steps", pa.int32()),
    ("advantage", pa.float64()), ("value_before", pa.float64()), ("value_after", pa.float64()),
    ("relative_position", pa.float64()), ("prefix_tokens", pa.int32()), ("reward", pa.int8()),
    ("first_wrong_line", pa.int32()), ("agrees", pa.bool_()), ("estimator", pa.string()),
])


@dataclass(frozen=True)
class LocateSettings:
    rule: str = setting("abs-advantage", "abs-advantage (paper), advantage, max-value (authors' code) or random "
                                         "(Satori-style baseline).")
    scope: str = setting("failed", "failed or all trajectories.")
    seed: int = setting(0, "Seed of the random rule.")

    def __post_init__(self):
        validate(self)


def ground_truth(sample: dict) -> int | None:
    """The toy tasks know the first wrong line of any solution; real tasks do not."""
    from stages.core.toy_tasks import for_source

    task = for_source(sample["source"])
    if task is None or sample["reward"] == 1:
        return None
    return task.first_wrong_line(sample["meta"], sample["response_text"])


def locate_one(steps: list[dict], sample: dict, s: LocateSettings) -> dict:
    steps = sorted(steps, key=lambda r: r["step_idx"])
    values = [r["value"] for r in steps] + ([steps[-1]["value_next"]] if steps else [])
    reward = int(sample["reward"])
    seed = stable_seed(s.seed, "locate", sample["problem_id"], sample["sample_idx"])
    critical = select_critical(s.rule, values, reward=reward, rng_seed=seed) if steps else None
    m = critical.step if critical else None
    truth = ground_truth(sample)
    row = {"problem_id": sample["problem_id"], "sample_idx": sample["sample_idx"], "rule": s.rule,
           "critical_step": m, "reason": critical.reason if critical else "no_steps",
           "num_steps": len(steps), "reward": reward, "first_wrong_line": truth,
           "estimator": steps[0]["estimator"] if steps else None,
           "advantage": None, "value_before": None, "value_after": None, "relative_position": None,
           "prefix_tokens": None, "agrees": None}
    if m is not None:
        st = steps[m]
        row.update(advantage=st["advantage"], value_before=st["value"], value_after=st["value_next"],
                   relative_position=m / len(steps), prefix_tokens=st["token_start"])
        if truth is not None:
            row["agrees"] = m == truth
    return row


def process(steps: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    s: LocateSettings = ctx.settings
    groups = sorted(set(steps.column("problem_id").to_pylist()))
    samples = {(r["problem_id"], r["sample_idx"]): r for r in ctx.read("sample", groups).to_pylist()}
    by_traj: dict = {}
    for r in steps.to_pylist():
        by_traj.setdefault((r["problem_id"], r["sample_idx"]), []).append(r)
    rows = []
    for key in sorted(samples):
        if s.scope == "failed" and samples[key]["reward"] == 1:
            continue
        row = locate_one(by_traj.get(key, []), samples[key], s)
        if key not in by_traj:
            row["reason"] = "not_estimated"
        rows.append(row)
    ctx.stats["trajectories"] += len(rows)
    ctx.stats["located"] += sum(r["critical_step"] is not None for r in rows)
    ctx.stats["agrees"] += sum(bool(r["agrees"]) for r in rows)
    return {"locate": pa.Table.from_pylist(rows, schema=LOCATE_SCHEMA)}


def validate(s: LocateSettings) -> None:
    from stages.core.errors import GpoError

    if s.rule not in RULES:
        raise GpoError(f"--rule must be one of {', '.join(RULES)}, not {s.rule!r}")
    if s.scope not in ("failed", "all"):
        raise GpoError(f"--scope must be failed or all, not {s.scope!r}")


STAGE = Stage(name="locate", input="estimate", outputs={"locate": LOCATE_SCHEMA},
              key=("problem_id", "sample_idx"), process=process, chunk_groups=64)
