"""Stage `sample`: draw n reasoning trajectories per problem and score them.

    gpo sample --problems 'toy:arith?n=200&split=train' --model data/toy-model --run runs/toy --n 4

Writes RUN/sample/*.parquet, one row per (problem, sample), with the exact prompt and response token ids
so later stages cut steps on ids and never re-tokenize.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from stages.core.backends import Request, Sampling, derive_seed
from stages.core.prompts import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, build_prompt
from stages.core.runner import Context, Stage

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
    problems: str
    model: str
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    backend: str = "auto"
    template: str = "auto"
    system: str | None = DEFAULT_SYSTEM
    instruction: str | None = DEFAULT_INSTRUCTION
    checker: str | None = None

    def __post_init__(self):
        validate(self)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_new_tokens)


def score(ctx: Context, checker_names: list[str], responses: list[str], golds: list[str]) -> list:
    """Check each response with its row's checker, batching rows that share a checker."""
    verdicts: list = [None] * len(responses)
    for name in sorted(set(checker_names)):
        rows = [i for i, c in enumerate(checker_names) if c == name]
        for i, verdict in zip(rows, ctx.checker(name).check_many([responses[i] for i in rows],
                                                                  [golds[i] for i in rows])):
            verdicts[i] = verdict
    return verdicts


def process(problems: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    s: SampleSettings = ctx.settings
    gen = ctx.generator()
    rows = problems.to_pylist()
    prompts = [build_prompt(gen.tokenizer, r["question"], template=s.template, system=s.system,
                            instruction=s.instruction) for r in rows]
    seeds = [derive_seed(s.seed, "sample", r["problem_id"]) for r in rows]
    requests = [Request(tuple(ids), s.n, seed) for (_, ids), seed in zip(prompts, seeds)]
    outputs = gen.generate(requests, s.sampling)
    records = []
    for row, (text, ids), seed, completions in zip(rows, prompts, seeds, outputs):
        for j, c in enumerate(completions):
            records.append({**row, "sample_idx": j, "prompt_text": text, "prompt_token_ids": ids,
                            "response_text": c.text, "response_token_ids": list(c.token_ids),
                            "finish_reason": c.finish_reason, "num_prompt_tokens": len(ids),
                            "num_response_tokens": len(c.token_ids), "model": s.model,
                            "seed": derive_seed(seed, j), "checker": s.checker or row["checker"]})
    verdicts = score(ctx, [r["checker"] for r in records], [r["response_text"] for r in records],
                     [r["gold_answer"] for r in records])
    for rec, v in zip(records, verdicts):
        rec.update(extracted_answer=v.extracted_answer, reward=int(v.correct), verdict_checker=v.checker,
                   verdict_error=v.error)
    ctx.stats["prompt_tokens"] += sum(len(ids) for _, ids in prompts)
    ctx.stats["generated_tokens"] += sum(r["num_response_tokens"] for r in records)
    ctx.stats["trajectories"] += len(records)
    ctx.stats["correct"] += sum(r["reward"] for r in records)
    ctx.stats["truncated"] += sum(r["finish_reason"] == "length" for r in records)
    return {"sample": pa.Table.from_pylist(records, schema=SAMPLE_SCHEMA)}


POLICY = ("model", "backend", "temperature", "top_p", "max_new_tokens")
MAX_SAMPLES = 10_000  # per problem or state: far above any method's need, far below exhausting memory
MAX_NEW_TOKENS = 1 << 20
TEMPLATES = ("auto", "chat", "plain")
CHECKERS = ("numeric", "math", "choice")


def check_policy(s) -> None:
    """The sampling settings every generating stage shares (None: taken from sample's config)."""
    import math

    from stages.core.backends import BACKENDS
    from stages.core.errors import GpoError

    if s.temperature is not None and not (math.isfinite(s.temperature) and 0 <= s.temperature <= 100):
        raise GpoError(f"--temperature must be between 0 and 100, not {s.temperature}")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        raise GpoError(f"--top-p must be in (0, 1], not {s.top_p}")
    if s.max_new_tokens is not None and not 1 <= s.max_new_tokens <= MAX_NEW_TOKENS:
        raise GpoError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, not {s.max_new_tokens}")
    if s.backend is not None and s.backend not in BACKENDS:
        raise GpoError(f"--backend must be one of {', '.join(BACKENDS)}, not {s.backend!r}")


def check_count(name: str, value: int | None, low: int = 1) -> None:
    from stages.core.errors import GpoError

    if value is not None and not low <= value <= MAX_SAMPLES:
        raise GpoError(f"--{name} must be between {low} and {MAX_SAMPLES}, not {value}")


def validate(s: SampleSettings) -> None:
    from stages.core.errors import GpoError

    check_count("n", s.n)
    check_policy(s)
    if s.template not in TEMPLATES:
        raise GpoError(f"--template must be auto, chat or plain, not {s.template!r}")
    if s.checker is not None and s.checker not in CHECKERS:
        raise GpoError(f"--checker must be numeric, math or choice, not {s.checker!r}")


def with_policy(run: Path, settings):
    """Rollouts and branches come from the policy that sampled: settings left unset (None) take sample's
    model, backend and sampling values, so they are stored and hashed with the stage that uses them."""
    from stages.core import artifacts
    from stages.core.runner import check_identity

    path = Path(run) / "sample" / "config.json"
    config = artifacts.load_json(path)
    check_identity(config, "sample", path)
    base = config["settings"]
    return dataclasses.replace(settings, **{k: base[k] for k in POLICY if getattr(settings, k) is None})


STAGE = Stage(name="sample", input=None, outputs={"sample": SAMPLE_SCHEMA},
              key=("problem_id", "sample_idx"), process=process)
