"""Stage `locate`: one row per trajectory with its critical step (or why it has none).

    gpo locate --run runs/toy --rule changepoint --min-confidence 0.5
    gpo sql runs/toy "select * from locate join estimate using (problem_id, sample_idx) where step_idx = critical_step"

Rules: abs-advantage (paper: argmax |A_i|), advantage (largest drop), max-value (authors' code),
random (Satori-style reset, seeded), changepoint (the maximum-likelihood single drop over every state's
rollout counts, with a confidence: core/method/changepoint.py), oracle (the known first wrong line; toy tasks only).
Ties go to the earliest step. For the toy tasks the ground-truth first wrong line is recorded next to the
chosen step.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from stages.core.pipeline.runner import Context, Stage
from stages.core.generation.sampling import sampled_with
from stages.core.pipeline.settings import setting
from stages.core.sources.toy_tasks import ground_truth, require_truth
from stages.core.method.values import DEFAULT_RULE, RULES, select_critical
from stages.core.pipeline.hashing import stable_seed

LOCATE_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("rule", pa.string()),
    ("critical_step", pa.int32()), ("reason", pa.string()), ("num_steps", pa.int32()),
    ("advantage", pa.float64()), ("value_before", pa.float64()), ("value_after", pa.float64()),
    ("relative_position", pa.float64()), ("prefix_tokens", pa.int32()), ("reward", pa.int8()),
    ("first_wrong_line", pa.int32()), ("agrees", pa.bool_()), ("estimator", pa.string()),
    ("confidence", pa.float64()),
])


@dataclass(frozen=True)
class LocateSettings:
    rule: str = setting(DEFAULT_RULE, "changepoint (default: the maximum-likelihood drop over all rollout "
                                      "counts, with a confidence), abs-advantage (the paper's), advantage, "
                                      "max-value (authors' code), random (Satori-style baseline) or oracle (the "
                                      "known first wrong line; toy tasks only).")
    scope: str = setting("failed", "failed or all trajectories.")
    seed: int = setting(0, "Seed of the random rule.")
    min_confidence: float = setting(0.0, "changepoint: leave a trajectory unlocated (reason low_confidence) when "
                                         "the posterior share of its step is below this.")

    def __post_init__(self):
        validate(self)


def locate_one(steps: list[dict], sample: dict, s: LocateSettings) -> dict:
    steps = sorted(steps, key=lambda r: r["step_idx"])
    values = [r["value"] for r in steps] + ([steps[-1]["value_next"]] if steps else [])
    reward = int(sample["reward"])
    seed = stable_seed(s.seed, "locate", sample["problem_id"], sample["sample_idx"])
    truth = ground_truth(sample)
    counts = [(r["n_correct"], r["n_rollouts"]) for r in steps]
    critical = (select_critical(s.rule, values, reward=reward, rng_seed=seed, counts=counts, truth=truth)
                if steps else None)
    m = critical.step if critical else None
    reason = critical.reason if critical else "no_steps"
    if m is not None and critical and critical.confidence is not None and critical.confidence < s.min_confidence:
        m, reason = None, "low_confidence"
    row = {"problem_id": sample["problem_id"], "sample_idx": sample["sample_idx"], "rule": s.rule,
           "critical_step": m, "reason": reason, "confidence": critical.confidence if critical else None,
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
    ctx.stats["low_confidence"] += sum(r["reason"] == "low_confidence" for r in rows)
    return {"locate": pa.Table.from_pylist(rows, schema=LOCATE_SCHEMA)}


def validate(s: LocateSettings) -> None:
    from stages.core.pipeline.errors import GpoError

    if s.rule not in RULES:
        raise GpoError(f"--rule must be one of {', '.join(RULES)}, not {s.rule!r}")
    if s.scope not in ("failed", "all"):
        raise GpoError(f"--scope must be failed or all, not {s.scope!r}")
    if not 0.0 <= s.min_confidence <= 1.0:
        raise GpoError(f"--min-confidence must be in [0, 1], not {s.min_confidence}")
    if s.min_confidence > 0 and s.rule != "changepoint":
        raise GpoError(f"--min-confidence applies to --rule changepoint only, not {s.rule}")


def check_truth(run, s: LocateSettings) -> LocateSettings:
    """--rule oracle only where the task knows its first wrong line; checked before any folder is made."""
    if s.rule == "oracle":
        require_truth(sampled_with(run)["problems"], "--rule oracle")
    return s


STAGE = Stage(name="locate", input="estimate", outputs={"locate": LOCATE_SCHEMA},
              key=("problem_id", "sample_idx"), process=process, chunk_groups=64,
              resolve_settings=check_truth)
