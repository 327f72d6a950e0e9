"""Stage `branch`: reset at each critical step, sample M continuations there, and build training data.

    gpo branch --run runs/toy --m 8 --pairs-per-state 1 --prefix in-response --baseline

Tables (RUN/branch/...): `branch` preference pairs (DPO/SimPO/ORPO), `unpaired` rows (KTO),
`reset_prompts` (online RL: the prompt plus the kept prefix) and `continuations` (every branch sampled,
with its verdict). The K rollouts estimate drew at the critical state are reused; only the rest are new.
`--baseline` adds whole-trajectory pairs and random-reset (Satori) pairs from the same samples, tagged in
the `data` column, with their generation cost in the manifest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pyarrow as pa

from stages.core.generation.backends import Request
from stages.core.pipeline.runner import Context, Stage
from stages.core.generation.sampling import (
    IDS,
    InheritedPolicy,
    check_count,
    check_policy,
    with_policy,
)
from stages.core.pipeline.settings import setting
from stages.core.method.steps import split_response
from stages.core.pipeline.hashing import stable_seed

PAIR_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("data", pa.string()), ("problem_id", pa.string()), ("sample_idx", pa.int32()),
    ("state_idx", pa.int32()), ("prefix_placement", pa.string()), ("prompt", pa.string()),
    ("chosen", pa.string()), ("rejected", pa.string()), ("prompt_token_ids", IDS), ("chosen_token_ids", IDS),
    ("rejected_token_ids", IDS), ("chosen_reward", pa.int8()), ("rejected_reward", pa.int8()),
    ("prefix_tokens", pa.int32()), ("chosen_tokens", pa.int32()), ("rejected_tokens", pa.int32()),
    ("gold_answer", pa.string()),
    # "length" where the response was cut at max_new_tokens: train keeps TRL from appending EOS to it
    ("chosen_finish_reason", pa.string()), ("rejected_finish_reason", pa.string()),
])
UNPAIRED_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("data", pa.string()), ("problem_id", pa.string()), ("prompt", pa.string()),
    ("completion", pa.string()), ("label", pa.bool_()), ("prompt_token_ids", IDS), ("completion_token_ids", IDS),
    ("completion_finish_reason", pa.string()),
])
RESET_SCHEMA = pa.schema([
    ("data", pa.string()), ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("state_idx", pa.int32()),
    ("prompt", pa.string()), ("prompt_token_ids", IDS), ("prefix_tokens", pa.int32()),
    ("gold_answer", pa.string()), ("checker", pa.string()), ("source", pa.string()),
])
CONTINUATION_SCHEMA = pa.schema([
    ("data", pa.string()), ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("state_idx", pa.int32()),
    ("branch_idx", pa.int32()), ("origin", pa.string()), ("token_ids", IDS), ("text", pa.string()),
    ("num_tokens", pa.int32()), ("reward", pa.int8()),
])


@dataclass(frozen=True)
class BranchSettings(InheritedPolicy):
    m: int = setting(8, "Branches per reset state (reusing estimate's rollouts there).")
    pairs_per_state: int = setting(1, "Preference pairs built per reset state.")
    prefix: str = setting("in-response", "in-response (authors) or in-prompt (masked).")
    include_original: bool = setting(True, "Count the trajectory's own continuation as a branch.")
    baseline: bool = setting(False, "Also build whole-trajectory and random-reset pairs.")
    random_m: int | None = setting(None, "Branches per random reset (default: --m; 0 skips random resets); "
                                         "raise it to match GPO's rollout budget.")
    split: str = setting("auto", "Step rule for random resets, as estimate's --split.")

    def __post_init__(self):
        validate(self)


@dataclass
class Reset:
    """One reset state: a trajectory cut before step `state` (prefix_tokens response tokens kept)."""

    data: str
    sample: dict
    state: int
    prefix_tokens: int
    branches: list[dict]

    @property
    def prefix_ids(self) -> list[int]:
        return list(self.sample["response_token_ids"][:self.prefix_tokens])


def reused_rollouts(reset: Reset, rollouts: dict) -> list[dict]:
    key = (reset.sample["problem_id"], reset.sample["sample_idx"], reset.state)
    return [{"origin": "rollout", "token_ids": r["token_ids"], "text": r["text"], "reward": r["reward"],
             "finish_reason": r["finish_reason"]}
            for r in sorted(rollouts.get(key, []), key=lambda r: r["rollout_idx"])]


def original_branch(reset: Reset, tok) -> dict:
    ids = list(reset.sample["response_token_ids"][reset.prefix_tokens:])
    return {"origin": "original", "token_ids": ids, "text": tok.decode(ids, skip_special_tokens=True),
            "reward": reset.sample["reward"], "finish_reason": reset.sample["finish_reason"]}


def sample_branches(resets: list[Reset], ctx: Context, tag: str, m: int) -> None:
    """Top every reset up to m branches with fresh continuations, in one batch, and score them."""
    s: BranchSettings = ctx.settings
    sampling = s.sampling
    todo = [(r, m - len(r.branches)) for r in resets if len(r.branches) < m]
    if not todo:
        return
    tok = ctx.generator().tokenizer
    requests = [Request(tuple(r.sample["prompt_token_ids"]) + tuple(r.prefix_ids), need,
                        stable_seed(s.seed, "branch", tag, r.sample["problem_id"], r.sample["sample_idx"], r.state),
                        max(1, sampling.max_new_tokens - r.prefix_tokens)) for r, need in todo]
    outputs = ctx.generator().generate(requests, sampling)
    texts, golds, checkers, slots = [], [], [], []
    for (r, _), completions in zip(todo, outputs):
        prefix_text = tok.decode(r.prefix_ids, skip_special_tokens=True)
        for c in completions:
            texts.append(prefix_text + c.text)
            golds.append(r.sample["gold_answer"])
            checkers.append(r.sample["checker"])
            slots.append((r, c))
        ctx.stats[f"{tag}_generated_tokens"] += sum(len(c.token_ids) for c in completions)
        ctx.stats[f"{tag}_branches_sampled"] += len(completions)
    for (r, c), v in zip(slots, ctx.score(checkers, texts, golds)):
        r.branches.append({"origin": "new", "token_ids": list(c.token_ids), "text": c.text,
                           "reward": int(v.correct), "finish_reason": c.finish_reason})


def pairs_for(reset: Reset, s: BranchSettings, tok) -> list[dict]:
    good = [b for b in reset.branches if b["reward"] == 1]
    bad = [b for b in reset.branches if b["reward"] == 0]
    sample = reset.sample
    prefix_ids = reset.prefix_ids
    prefix_text = tok.decode(prefix_ids, skip_special_tokens=True)
    in_prompt = s.prefix == "in-prompt"
    rows = []
    for n, (g, b) in enumerate(zip(good, bad)):
        if n >= s.pairs_per_state:
            break
        lead_ids, lead_text = ([], "") if in_prompt else (prefix_ids, prefix_text)
        rows.append({
            "pair_id": f"{reset.data}/{sample['problem_id']}/{sample['sample_idx']}/{reset.state}/{n}",
            "data": reset.data, "problem_id": sample["problem_id"], "sample_idx": sample["sample_idx"],
            "state_idx": reset.state, "prefix_placement": s.prefix,
            "prompt": sample["prompt_text"] + (prefix_text if in_prompt else ""),
            "chosen": lead_text + g["text"], "rejected": lead_text + b["text"],
            "prompt_token_ids": list(sample["prompt_token_ids"]) + (prefix_ids if in_prompt else []),
            "chosen_token_ids": lead_ids + list(g["token_ids"]), "rejected_token_ids": lead_ids + list(b["token_ids"]),
            "chosen_reward": 1, "rejected_reward": 0, "prefix_tokens": reset.prefix_tokens,
            "chosen_tokens": len(g["token_ids"]), "rejected_tokens": len(b["token_ids"]),
            "gold_answer": sample["gold_answer"], "chosen_finish_reason": g["finish_reason"],
            "rejected_finish_reason": b["finish_reason"]})
    return rows


def whole_trajectory_pairs(samples: list[dict], s: BranchSettings) -> list[dict]:
    """Baseline without GPO: a correct sample preferred to an incorrect one of the same problem."""
    rows = []
    by_problem: dict = {}
    for r in samples:
        by_problem.setdefault(r["problem_id"], []).append(r)
    for pid, group in sorted(by_problem.items()):
        good = [r for r in group if r["reward"] == 1]
        bad = [r for r in group if r["reward"] == 0]
        for n, b in enumerate(bad):
            for p in range(min(s.pairs_per_state, len(good))):
                g = good[(n + p) % len(good)]
                rows.append({
                    "pair_id": f"baseline/{pid}/{b['sample_idx']}/{g['sample_idx']}", "data": "baseline",
                    "problem_id": pid, "sample_idx": b["sample_idx"], "state_idx": None,
                    "prefix_placement": s.prefix, "prompt": b["prompt_text"], "chosen": g["response_text"],
                    "rejected": b["response_text"], "prompt_token_ids": b["prompt_token_ids"],
                    "chosen_token_ids": g["response_token_ids"], "rejected_token_ids": b["response_token_ids"],
                    "chosen_reward": 1, "rejected_reward": 0, "prefix_tokens": 0,
                    "chosen_tokens": len(g["response_token_ids"]), "rejected_tokens": len(b["response_token_ids"]),
                    "gold_answer": b["gold_answer"], "chosen_finish_reason": g["finish_reason"],
                    "rejected_finish_reason": b["finish_reason"]})
    return rows


def random_resets(sample_rows: list[dict], s: BranchSettings, tok) -> list[Reset]:
    """Satori-style baseline: reset each failed trajectory at a uniformly random step (seeded)."""
    resets: list[Reset] = []
    splitters: dict = {}
    for row in sample_rows:
        if row["reward"] == 1:
            continue
        _, steps, _ = split_response(row, s.split, tok, splitters)
        if not steps:
            continue
        pick = random.Random(stable_seed(s.seed, "random-reset", row["problem_id"], row["sample_idx"]))
        step = pick.randrange(len(steps))
        resets.append(Reset("random-reset", row, step, steps[step].token_start, []))
    return resets


def unpaired_rows(pairs: list[dict]) -> list[dict]:
    """KTO: each pair becomes one desirable and one undesirable row with the same prompt."""
    rows = []
    for p in pairs:
        for side, label in (("chosen", True), ("rejected", False)):
            rows.append({"pair_id": p["pair_id"], "data": p["data"], "problem_id": p["problem_id"],
                         "prompt": p["prompt"], "completion": p[side], "label": label,
                         "prompt_token_ids": p["prompt_token_ids"], "completion_token_ids": p[f"{side}_token_ids"],
                         "completion_finish_reason": p[f"{side}_finish_reason"]})
    return rows


def reset_prompt_row(r: Reset, tok) -> dict:
    sample = r.sample
    return {"data": r.data, "problem_id": sample["problem_id"], "sample_idx": sample["sample_idx"],
            "state_idx": r.state,
            "prompt": sample["prompt_text"] + tok.decode(r.prefix_ids, skip_special_tokens=True),
            "prompt_token_ids": list(sample["prompt_token_ids"]) + r.prefix_ids, "prefix_tokens": r.prefix_tokens,
            "gold_answer": sample["gold_answer"], "checker": sample["checker"], "source": sample["source"]}


def continuation_rows(r: Reset) -> list[dict]:
    return [{"data": r.data, "problem_id": r.sample["problem_id"], "sample_idx": r.sample["sample_idx"],
             "state_idx": r.state, "branch_idx": i, "origin": b["origin"], "token_ids": list(b["token_ids"]),
             "text": b["text"], "num_tokens": len(b["token_ids"]), "reward": b["reward"]}
            for i, b in enumerate(r.branches)]


def gpo_resets(located: list[dict], samples: dict, ctx: Context, tok) -> list[Reset]:
    s: BranchSettings = ctx.settings
    groups = sorted({loc["problem_id"] for loc in located})
    rollouts: dict = {}
    for r in ctx.read("rollouts", groups).to_pylist():
        rollouts.setdefault((r["problem_id"], r["sample_idx"], r["state_idx"]), []).append(r)
    resets = []
    for loc in located:
        if loc["critical_step"] is None:
            ctx.stats["no_critical_step"] += 1
            continue
        r = Reset("gpo", samples[(loc["problem_id"], loc["sample_idx"])], loc["critical_step"],
                  loc["prefix_tokens"], [])
        r.branches = reused_rollouts(r, rollouts)[:s.m]
        if s.include_original:
            r.branches.append(original_branch(r, tok))
        resets.append(r)
    sample_branches(resets, ctx, "gpo", s.m)
    return resets


def build_tables(resets: list[Reset], pairs: list[dict], ctx: Context, tok) -> dict[str, pa.Table]:
    for r in resets:
        made = pairs_for(r, ctx.settings, tok)
        ctx.stats[f"{r.data}_states_without_mixed_outcome"] += not made
        pairs += made
    ctx.stats["pairs"] += len(pairs)
    return {"branch": pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA),
            "unpaired": pa.Table.from_pylist(unpaired_rows(pairs), schema=UNPAIRED_SCHEMA),
            "reset_prompts": pa.Table.from_pylist([reset_prompt_row(r, tok) for r in resets], schema=RESET_SCHEMA),
            "continuations": pa.Table.from_pylist([c for r in resets for c in continuation_rows(r)],
                                                  schema=CONTINUATION_SCHEMA)}


def baseline_data(sample_rows: list[dict], ctx: Context, tok) -> tuple[list[Reset], list[dict]]:
    s: BranchSettings = ctx.settings
    m = s.m if s.random_m is None else s.random_m
    resets = random_resets(sample_rows, s, tok) if m > 0 else []
    sample_branches(resets, ctx, "random_reset", m)
    return resets, whole_trajectory_pairs(sample_rows, s)


def process(located_table: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    s: BranchSettings = ctx.settings
    tok = ctx.generator().tokenizer
    groups = sorted(set(located_table.column("problem_id").to_pylist()))
    sample_rows = sorted(ctx.read("sample", groups).to_pylist(), key=lambda r: (r["problem_id"], r["sample_idx"]))
    samples = {(r["problem_id"], r["sample_idx"]): r for r in sample_rows}
    located = sorted(located_table.to_pylist(), key=lambda r: (r["problem_id"], r["sample_idx"]))
    resets = gpo_resets(located, samples, ctx, tok)
    pairs: list[dict] = []
    if s.baseline:
        random_sets, pairs = baseline_data(sample_rows, ctx, tok)
        resets += random_sets
    return build_tables(resets, pairs, ctx, tok)


def process_baseline_only(samples: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    """`--baseline-only`: no GPO data, so no estimate/locate needed (e.g. a budget-matched baseline run)."""
    tok = ctx.generator().tokenizer
    rows = sorted(samples.to_pylist(), key=lambda r: (r["problem_id"], r["sample_idx"]))
    resets, pairs = baseline_data(rows, ctx, tok)
    return build_tables(resets, pairs, ctx, tok)


def validate(s: BranchSettings) -> None:
    from stages.core.pipeline.errors import GpoError

    if s.prefix not in ("in-response", "in-prompt"):
        raise GpoError(f"--prefix must be in-response or in-prompt, not {s.prefix!r}")
    if s.m < 2:
        raise GpoError("--m must be at least 2 (a pair needs a correct and an incorrect branch)")
    check_count("m", s.m, 2)
    check_count("random-m", s.random_m, 0)
    check_count("pairs-per-state", s.pairs_per_state)
    check_policy(s)
    if s.split != "auto" and not s.split.startswith("authors"):
        from stages.core.method.steps import make_splitter

        try:
            make_splitter(s.split, None)
        except ValueError as e:
            raise GpoError(f"--split: {e}") from None


OUTPUTS = {"branch": PAIR_SCHEMA, "unpaired": UNPAIRED_SCHEMA, "reset_prompts": RESET_SCHEMA,
           "continuations": CONTINUATION_SCHEMA}
STAGE = Stage(name="branch", input="locate", outputs=OUTPUTS, key=("pair_id",), process=process,
              resolve_settings=with_policy)
BASELINE_ONLY_STAGE = Stage(name="branch", input="sample", outputs=OUTPUTS, key=("pair_id",),
                            process=process_baseline_only, resolve_settings=with_policy)
