"""Stage `estimate`: cut each response into steps on its token ids and estimate V̂(s_i) by Monte Carlo.

    gpo estimate --run runs/toy --k 4 --split auto --scope failed --estimator full

Writes RUN/estimate/*.parquet (one row per step: spans, text, V̂ with counts and a Wilson interval,
advantage A_i = V̂(s_{i+1}) - V̂(s_i)) and RUN/estimate/rollouts/*.parquet (every continuation).
All states of all trajectories in a chunk go to the backend together, a state's K rollouts as n samples
of one request; identical states of one problem (s_0 always) are generated once and shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from stages.core.generation.backends import Request, Sampling
from stages.core.method.estimators import ESTIMATORS, Plan
from stages.core.pipeline.runner import Context, Stage
from stages.core.generation.sampling import (
    IDS,
    InheritedPolicy,
    check_count,
    check_policy,
    sampled_with,
    with_policy,
)
from stages.core.pipeline.settings import setting
from stages.core.method.steps import make_splitter, split_response
from stages.core.sources.toy_tasks import ground_truth, require_truth
from stages.core.method.values import advantages, wilson_interval
from stages.core.pipeline.hashing import stable_seed

STEP_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("step_idx", pa.int32()),
    ("num_steps", pa.int32()), ("token_start", pa.int32()), ("token_end", pa.int32()),
    ("char_start", pa.int32()), ("char_end", pa.int32()), ("step_text", pa.string()),
    ("state_tokens", pa.int32()), ("value", pa.float64()), ("value_source", pa.string()),
    ("n_rollouts", pa.int32()), ("n_correct", pa.int32()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("value_next", pa.float64()), ("advantage", pa.float64()), ("reward", pa.int8()),
    ("rollout_tokens", pa.int64()), ("splitter", pa.string()), ("estimator", pa.string()),
])
ROLLOUT_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("state_idx", pa.int32()),
    ("rollout_idx", pa.int32()), ("prefix_tokens", pa.int32()), ("token_ids", IDS), ("text", pa.string()),
    ("finish_reason", pa.string()), ("num_tokens", pa.int32()), ("extracted_answer", pa.string()),
    ("reward", pa.int8()), ("shared_from_sample", pa.int32()), ("seed", pa.int64()),
])


@dataclass(frozen=True)
class EstimateSettings(InheritedPolicy):
    k: int = setting(4, "Rollouts per state (paper: 4).")
    split: str = setting("auto", "auto (line for the toy tasks, authors otherwise), authors[:min=30,max=30], line, "
                                 "regex:<pattern>, chunk:<n>.")
    scope: str = setting("failed", "failed (authors' code) or all trajectories.")
    # bisect by default: on the demo its trained models match full K=4's (paired CIs, 3 seeds) at ~3.4x fewer
    # generated tokens (docs/experiments.md "The cost of GPO"); --estimator full is the paper's.
    estimator: str = setting("bisect", "bisect (binary search for the drop; default), full (the paper's: K "
                                       "rollouts at every state), adaptive, changepoint (bisect, then K more where "
                                       "the change point is least certain, until --target or --budget) or "
                                       "oracle (K at the known first wrong line only; toy tasks).")
    target: float = setting(0.9, "changepoint estimator: stop once the chosen step's confidence reaches this.")
    budget: int = setting(24, "changepoint estimator: most rollouts per trajectory.")

    def __post_init__(self):
        validate(self)


@dataclass
class Trajectory:
    row: dict
    steps: list
    pieces: list[str]
    plan: Plan
    rollouts: list[dict]

    def state_ids(self, i: int) -> tuple[int, ...]:
        cut = self.steps[i].token_start
        return tuple(self.row["prompt_token_ids"]) + tuple(self.row["response_token_ids"][:cut])

    def prefix_text(self, i: int) -> str:
        return "".join(self.pieces[:self.steps[i].token_start])


def prepare(rows: list[dict], ctx: Context) -> list[Trajectory]:
    s: EstimateSettings = ctx.settings
    tok = ctx.generator().tokenizer
    splitters: dict[str, object] = {}
    trajectories = []
    for row in rows:
        if s.scope == "failed" and row["reward"] == 1:
            ctx.stats["skipped_correct"] += 1
            continue
        spec, steps, pieces = split_response(row, s.split, tok, splitters)
        truth = ground_truth(row) if s.estimator == "oracle" else None
        plan = Plan(s.estimator, len(steps), int(row["reward"]), s.k, truth=truth, target=s.target,
                    budget=s.budget)
        trajectories.append(Trajectory({**row, "splitter": spec}, steps, pieces, plan, []))
    return trajectories


def run_rounds(trajectories: list[Trajectory], ctx: Context, sampling: Sampling) -> None:
    """Advance every trajectory's plan together; each round is one batch of deduplicated states."""
    s: EstimateSettings = ctx.settings
    round_no = 0
    while True:
        wants = [(t, i, extra) for t in trajectories for i, extra in t.plan.wants()]
        if not wants:
            return
        requests, owners = {}, {}
        for t, i, extra in wants:
            key = (t.row["problem_id"], t.state_ids(i), extra)
            if key not in requests:
                seed = stable_seed(s.seed, "estimate", t.row["problem_id"], t.row["sample_idx"], i, round_no)
                budget = max(1, sampling.max_new_tokens - t.steps[i].token_start)
                requests[key] = Request(key[1], extra, seed, budget)
                owners[key] = t.row["sample_idx"]
        keys = list(requests)
        outputs = dict(zip(keys, ctx.generator().generate([requests[k] for k in keys], sampling)))
        texts, golds, checkers, slots = [], [], [], []
        for t, i, extra in wants:
            key = (t.row["problem_id"], t.state_ids(i), extra)
            shared = None if owners[key] == t.row["sample_idx"] else owners[key]
            prefix = t.prefix_text(i)
            for j, c in enumerate(outputs[key]):
                texts.append(prefix + c.text)
                golds.append(t.row["gold_answer"])
                checkers.append(t.row["checker"])
                slots.append((t, i, j, c, shared, requests[key]))
            if shared is None:
                ctx.stats["rollouts"] += extra
                ctx.stats["generated_tokens"] += sum(len(c.token_ids) for c in outputs[key])
                ctx.stats["prompt_tokens"] += len(key[1])
            else:
                ctx.stats["rollouts_shared"] += extra
        verdicts = ctx.score(checkers, texts, golds)
        _record(slots, verdicts)
        round_no += 1


def _record(slots, verdicts) -> None:
    by_state: dict = {}
    for (t, i, j, c, shared, req), v in zip(slots, verdicts):
        base = t.plan.n[i]
        t.rollouts.append({
            "problem_id": t.row["problem_id"], "sample_idx": t.row["sample_idx"], "state_idx": i,
            "rollout_idx": base + j, "prefix_tokens": t.steps[i].token_start, "token_ids": list(c.token_ids),
            "text": c.text, "finish_reason": c.finish_reason, "num_tokens": len(c.token_ids),
            "extracted_answer": v.extracted_answer, "reward": int(v.correct), "shared_from_sample": shared,
            "seed": stable_seed(req.seed, j)})
        by_state.setdefault((id(t), i), (t, i, []))[2].append(int(v.correct))
    for t, i, outcomes in by_state.values():
        t.plan.record(i, outcomes)


def step_rows(t: Trajectory, estimator: str) -> list[dict]:
    values = t.plan.values()
    adv = advantages([v for v, _ in values])
    tokens_per_state: dict[int, int] = {}
    for r in t.rollouts:
        if r["shared_from_sample"] is None:
            tokens_per_state[r["state_idx"]] = tokens_per_state.get(r["state_idx"], 0) + r["num_tokens"]
    rows = []
    for i, st in enumerate(t.steps):
        lo, hi = wilson_interval(t.plan.correct[i], t.plan.n[i])
        rows.append({
            "problem_id": t.row["problem_id"], "sample_idx": t.row["sample_idx"], "step_idx": i,
            "num_steps": len(t.steps), "token_start": st.token_start, "token_end": st.token_end,
            "char_start": st.char_start, "char_end": st.char_end, "step_text": st.text,
            "state_tokens": len(t.row["prompt_token_ids"]) + st.token_start, "value": values[i][0],
            "value_source": values[i][1], "n_rollouts": t.plan.n[i], "n_correct": t.plan.correct[i],
            "ci_low": lo, "ci_high": hi, "value_next": values[i + 1][0], "advantage": adv[i],
            "reward": t.row["reward"], "rollout_tokens": tokens_per_state.get(i, 0),
            "splitter": t.row["splitter"], "estimator": estimator})
    return rows


def process(samples: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    s: EstimateSettings = ctx.settings
    rows = sorted(samples.to_pylist(), key=lambda r: (r["problem_id"], r["sample_idx"]))
    trajectories = prepare(rows, ctx)
    run_rounds(trajectories, ctx, s.sampling)
    steps = [row for t in trajectories for row in step_rows(t, s.estimator)]
    rollouts = [r for t in trajectories for r in t.rollouts]
    ctx.stats["trajectories"] += len(trajectories)
    ctx.stats["steps"] += len(steps)
    return {"estimate": pa.Table.from_pylist(steps, schema=STEP_SCHEMA),
            "rollouts": pa.Table.from_pylist(rollouts, schema=ROLLOUT_SCHEMA)}


def validate(s: EstimateSettings) -> None:
    from stages.core.pipeline.errors import GpoError

    if s.estimator not in ESTIMATORS:
        raise GpoError(f"--estimator must be one of {', '.join(ESTIMATORS)}, not {s.estimator!r}")
    if s.scope not in ("failed", "all"):
        raise GpoError(f"--scope must be failed or all, not {s.scope!r}")
    check_count("k", s.k)
    check_count("budget", s.budget)
    if not 0.0 < s.target <= 1.0:
        raise GpoError(f"--target must be in (0, 1], not {s.target}")
    check_policy(s)
    if s.split != "auto":
        try:
            make_splitter(s.split, None) if not s.split.startswith("authors") else None
        except ValueError as e:
            raise GpoError(f"--split: {e}") from None


def resolve(run, s: EstimateSettings) -> EstimateSettings:
    """The policy inherited from `sample`; the oracle estimator only where the task knows its first wrong line."""
    if s.estimator == "oracle":
        require_truth(sampled_with(run)["problems"], "--estimator oracle")
    return with_policy(run, s)


STAGE = Stage(name="estimate", input="sample", outputs={"estimate": STEP_SCHEMA, "rollouts": ROLLOUT_SCHEMA},
              key=("problem_id", "sample_idx", "step_idx"), process=process, resolve_settings=resolve)

