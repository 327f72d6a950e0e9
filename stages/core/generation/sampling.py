"""Sampling from problems, shared by the `sample` and `eval` stages, and the sampling policy every generating
stage (sample, estimate, branch, eval) shares: its settings, their checks, "the policy that sampled" for the
stages downstream of `sample` (`InheritedPolicy`, filled once by `with_policy` when the runner resolves a stage's
settings), and `run_generating`: a generating stage run as the CLI runs it (policy, model check, generator).

Rows keep the exact prompt and response token ids so later stages cut steps on ids and never re-tokenize.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from stages.core.pipeline import artifacts, layout
from stages.core.scoring.answers import CHECKERS
from stages.core.generation.backends import BACKENDS, Request, Sampling
from stages.core.pipeline.errors import GpoError
from stages.core.generation.models import MODEL_HELP
from stages.core.generation.prompts import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, build_prompt
from stages.core.pipeline.runner import Context, Stage, check_identity, parse_shard, resolve_settings, run_resolved
from stages.core.pipeline.settings import Runtime, require, setting
from stages.core.sources.problems import Fields
from stages.core.pipeline.hashing import stable_seed

IDS = pa.list_(pa.int32())
SAMPLE_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("sample_idx", pa.int32()), ("question", pa.string()),
    ("gold_answer", pa.string()), ("source", pa.string()), ("checker", pa.string()), ("meta", pa.string()),
    ("prompt_text", pa.string()), ("prompt_token_ids", IDS), ("response_text", pa.string()),
    ("response_token_ids", IDS), ("finish_reason", pa.string()), ("num_prompt_tokens", pa.int32()),
    ("num_response_tokens", pa.int32()), ("extracted_answer", pa.string()), ("reward", pa.int8()),
    ("verdict_checker", pa.string()), ("verdict_error", pa.string()), ("model", pa.string()),
    ("seed", pa.int64()),
])


@dataclass(frozen=True)
class SampleSettings:
    problems: str = setting(help="toy:arith|borrow?n=..&seed=..&split=train|valid|test, "
                                 "reasoning-gym:<name>?size=..&seed=..&<config option>=.., "
                                 "hf:<dataset id>?config=..&split=..&n=.. (local HF datasets cache), "
                                 "or a .jsonl/.parquet file.")
    model: str = setting(help=MODEL_HELP)
    n: int = setting(4, "Samples per problem.")
    temperature: float = setting(1.0, "Sampling temperature (0 = greedy).")
    top_p: float = setting(1.0, "Nucleus sampling mass, in (0, 1].")
    max_new_tokens: int = setting(256, "Response budget in tokens; a response cut here has finish_reason "
                                       "'length'.")
    seed: int = setting(0, "Seed of the sampling (each sample's seed derives from it and the problem id).")
    backend: str = setting("auto", "Generation backend: auto (vLLM if it runs), hf or vllm.")
    template: str = setting("auto", "auto (chat template if the model has one), chat or plain.")
    system: str | None = setting(DEFAULT_SYSTEM, "System prompt for chat templates ('' for none).")
    instruction: str | None = setting(DEFAULT_INSTRUCTION, "Appended to the question in chat prompts ('' for none).")
    checker: str | None = setting(None, "numeric, math or choice (default: the source's).")
    # Where a .jsonl/.parquet file's problem fields are (stages.core.sources.problems.Fields); left out of the
    # stored settings at their defaults, so runs made before these were settings keep their config hash.
    question_field: str = setting(Fields.question, "Field holding the question (.jsonl/.parquet).",
                                  omit_default=True)
    answer_field: str = setting(Fields.answer, "Field holding the gold answer.", omit_default=True)
    id_field: str | None = setting(Fields.id, "Field holding a stable problem id (else file row).",
                                   omit_default=True)

    def __post_init__(self):
        for name in ("system", "instruction"):  # '' on the command line means none
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        validate(self)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_new_tokens)

    @property
    def fields(self) -> Fields:
        return Fields(self.question_field, self.answer_field, self.id_field)


@dataclass(frozen=True)
class InheritedPolicy:
    """The policy settings estimate and branch share. None means the value `sample` ran with: `with_policy`
    fills it once, when the runner resolves the stage's settings, so it is stored and hashed with the stage."""

    temperature: float | None = setting(None, "Default: the sample stage's.")
    top_p: float | None = setting(None, "Default: the sample stage's.")
    max_new_tokens: int | None = setting(None, "Response budget incl. the kept prefix (default: sample's).")
    seed: int = setting(0, "Seed of this stage's sampling.")
    model: str | None = setting(None, "Policy model, named as for `gpo sample` (default: the one `sample` used).")
    backend: str | None = setting(None, "auto, hf or vllm (default: sample's).")

    @property
    def sampling(self) -> Sampling:
        """Sampling for rollouts and branches; the settings must be resolved (`with_policy`) first."""
        temperature, top_p, max_new_tokens = self.temperature, self.top_p, self.max_new_tokens
        if temperature is None or top_p is None or max_new_tokens is None:
            unset = [k for k in ("temperature", "top_p", "max_new_tokens") if getattr(self, k) is None]
            raise GpoError(f"{type(self).__name__}: {', '.join(unset)} unset; run the stage with run_stage, "
                           "which fills them from sample's settings")
        return Sampling(temperature, top_p, max_new_tokens)


def sample_rows(problems: pa.Table, ctx: Context, s: SampleSettings) -> pa.Table:
    """n scored trajectories per problem of the chunk, under the sampling settings `s` (eval passes its own)."""
    gen = ctx.generator()
    rows = problems.to_pylist()
    prompts = [build_prompt(gen.tokenizer, r["question"], template=s.template, system=s.system,
                            instruction=s.instruction) for r in rows]
    seeds = [stable_seed(s.seed, "sample", r["problem_id"]) for r in rows]
    requests = [Request(tuple(ids), s.n, seed) for (_, ids), seed in zip(prompts, seeds)]
    outputs = gen.generate(requests, s.sampling)
    records = []
    for row, (text, ids), seed, completions in zip(rows, prompts, seeds, outputs):
        for j, c in enumerate(completions):
            records.append({**row, "sample_idx": j, "prompt_text": text, "prompt_token_ids": ids,
                            "response_text": c.text, "response_token_ids": list(c.token_ids),
                            "finish_reason": c.finish_reason, "num_prompt_tokens": len(ids),
                            "num_response_tokens": len(c.token_ids), "model": s.model,
                            "seed": stable_seed(seed, j), "checker": s.checker or row["checker"]})
    verdicts = ctx.score([r["checker"] for r in records], [r["response_text"] for r in records],
                     [r["gold_answer"] for r in records])
    for rec, v in zip(records, verdicts):
        rec.update(extracted_answer=v.extracted_answer, reward=int(v.correct), verdict_checker=v.checker,
                   verdict_error=v.error)
    ctx.stats["prompt_tokens"] += sum(len(ids) for _, ids in prompts)
    ctx.stats["generated_tokens"] += sum(r["num_response_tokens"] for r in records)
    ctx.stats["trajectories"] += len(records)
    ctx.stats["correct"] += sum(r["reward"] for r in records)
    ctx.stats["truncated"] += sum(r["finish_reason"] == "length" for r in records)
    return pa.Table.from_pylist(records, schema=SAMPLE_SCHEMA)


POLICY = ("model", "backend", "temperature", "top_p", "max_new_tokens")
MAX_SAMPLES = 10_000  # per problem or state: far above any method's need, far below exhausting memory
MAX_NEW_TOKENS = 1 << 20
TEMPLATES = ("auto", "chat", "plain")


def check_policy(s) -> None:
    """The sampling settings every generating stage shares (None: taken from sample's config)."""
    if s.temperature is not None and not (math.isfinite(s.temperature) and 0 <= s.temperature <= 100):
        raise GpoError(f"--temperature must be between 0 and 100, not {s.temperature}")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        raise GpoError(f"--top-p must be in (0, 1], not {s.top_p}")
    if s.max_new_tokens is not None and not 1 <= s.max_new_tokens <= MAX_NEW_TOKENS:
        raise GpoError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, not {s.max_new_tokens}")
    if s.backend is not None and s.backend not in BACKENDS:
        raise GpoError(f"--backend must be one of {', '.join(BACKENDS)}, not {s.backend!r}")


def check_count(name: str, value: int | None, low: int = 1) -> None:
    if value is not None and not low <= value <= MAX_SAMPLES:
        raise GpoError(f"--{name} must be between {low} and {MAX_SAMPLES}, not {value}")


def validate(s: SampleSettings) -> None:
    check_count("n", s.n)
    check_policy(s)
    if s.template not in TEMPLATES:
        raise GpoError(f"--template must be auto, chat or plain, not {s.template!r}")
    if s.checker is not None and s.checker not in CHECKERS:
        raise GpoError(f"--checker must be numeric, math or choice, not {s.checker!r}")
    require(s, "problems", "model")


def with_policy(run: Path, settings):
    """Rollouts and branches come from the policy that sampled: settings left unset (None) take sample's
    model, backend and sampling values, so they are stored and hashed with the stage that uses them.
    The one place this rule is applied: estimate's and branch's `resolve_settings`, called by the runner."""
    path = layout.config_path(layout.stage_dir(run, "sample"))
    config = artifacts.load_json(path)
    check_identity(config, "sample", path)
    base = config["settings"]
    return dataclasses.replace(settings, **{k: base[k] for k in POLICY if getattr(settings, k) is None})


def sampled_with(run: Path) -> dict:
    """The settings the sample stage ran with."""
    return artifacts.load_json(layout.config_path(layout.stage_dir(run, "sample")))["settings"]


def preflight(model: str, trust_remote_code: bool, problems: pa.Table | None = None,
              max_new_tokens: int | None = None) -> None:
    """The model folder loads (config, tokenizer, weights' headers) and the questions fit its context."""
    from stages.core.generation.backends import check_fits, preflight_model

    config, tokenizer = preflight_model(model, trust_remote_code)
    if problems is not None:
        questions = zip(problems.column("problem_id").to_pylist(), problems.column("question").to_pylist())
        check_fits(model, config, tokenizer, list(questions), max_new_tokens)


def run_generating(stage: Stage, run: Path, settings, rt: Runtime, problems: pa.Table | None = None,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """Run one shard of a generating stage, from problems (sample, eval) or from upstream tables (estimate,
    branch), checking in the order a user sees: the shard, the upstream stages and the inherited policy,
    the runtime, the model (and that the questions fit it); only then is the stage folder written."""
    from stages.core.generation.backends import generator_factory

    shard = parse_shard(rt.shard)
    settings = resolve_settings(stage, run, settings)  # estimate, branch: the policy that sampled, unless set
    make = generator_factory(settings.backend, settings.model, rt.dtype, rt.device, rt.batch_size,
                             rt.trust_remote_code, rt.vllm, rt.threads)
    preflight(settings.model, rt.trust_remote_code, problems, settings.max_new_tokens if problems else None)
    return run_resolved(stage, run, settings, input_table=problems, shard=shard,
                        chunk_groups=rt.chunk_groups, overwrite=rt.overwrite, log=log,
                        make_generator=make)
