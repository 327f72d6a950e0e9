"""Stage `eval`: score a model on a problem set: greedy accuracy, sampled pass@1, maj@k and pass@k.

    gpo eval --model runs/toy/train/dpo-gpo/model --problems 'toy:arith?n=200&split=test' --run runs/toy \\
        --label dpo-gpo --n 8 --temperature 1.0 --pass-at 1,4,8
    gpo eval --compare runs/toy/eval_base runs/toy/eval_dpo-gpo

Rows (RUN/eval_<label>/*.parquet) are `sample` rows plus `mode` (greedy | sampled) and `label`; the
summary is written to RUN/eval_<label>/summary.json once every shard is done.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.runner import Context, Stage
from stages.core.generation.sampling import SAMPLE_SCHEMA, SampleSettings, sample_rows
from stages.core.pipeline.settings import setting
from stages.core.method.values import problem_mean_ci

EVAL_SCHEMA = SAMPLE_SCHEMA.append(pa.field("mode", pa.string())).append(pa.field("label", pa.string()))


@dataclass(frozen=True)
class EvalSettings(SampleSettings):
    label: str = setting("eval", "Name of this evaluation inside the run (RUN/eval_<label>).")
    greedy: bool = setting(True, "With temperature > 0, also run one greedy pass.")
    n: int = setting(1, "Samples per problem (temperature > 0).")
    temperature: float = setting(0.0, "0 = greedy only (then one sample per problem, whatever --n says).")

    def __post_init__(self):
        if not self.temperature > 0:  # greedy: one sample per problem (a bad temperature is refused below)
            object.__setattr__(self, "n", 1)
        super().__post_init__()


def stage_name(label: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        raise GpoError(f"--label {label!r} may only hold letters, digits, '.', '_' and '-'")
    return "eval" if label == "eval" else f"eval_{label}"


def process(problems: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    s: EvalSettings = ctx.settings
    passes = []
    if s.temperature <= 0:
        passes.append(("greedy", replace(s, n=1, temperature=0.0)))
    else:
        passes.append(("sampled", s))
        if s.greedy:
            passes.append(("greedy", replace(s, n=1, temperature=0.0)))
    tables = []
    for mode, settings in passes:
        table = sample_rows(problems, ctx, settings)
        tables.append(table.append_column("mode", pa.array([mode] * len(table)))
                      .append_column("label", pa.array([s.label] * len(table))))
    return {ctx.stage.name: pa.concat_tables(tables)}


def make_stage(label: str) -> Stage:
    name = stage_name(label)
    return Stage(name=name, input=None, outputs={name: EVAL_SCHEMA}, key=("problem_id", "mode", "sample_idx"),
                 process=process, chunk_groups=128)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def maj_at_k(answers: list[tuple[str | None, int]], k: int) -> float:
    """Majority vote over the first k samples' extracted answers (ties: the earliest answer)."""
    first = [a for a in answers[:k] if a[0] is not None]
    if not first:
        return 0.0
    votes = Counter(a for a, _ in first)
    best = max(votes.values())
    winner = next(a for a, _ in first if votes[a] == best)
    return float(next(r for a, r in first if a == winner))


def summarize(rows: list[dict], ks: tuple[int, ...] = (1, 4, 8)) -> dict:
    """Per mode and per problem source: accuracy with an interval, pass@k and maj@k where n allows."""
    out: dict = {}
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["source"]), {}).setdefault(r["problem_id"], []).append(r)
    for (mode, source), problems in sorted(groups.items()):
        per_problem = {pid: sorted(rs, key=lambda r: r["sample_idx"]) for pid, rs in problems.items()}
        n = min(len(rs) for rs in per_problem.values())
        acc = [sum(r["reward"] for r in rs) / len(rs) for rs in per_problem.values()]
        mean, lo, hi = problem_mean_ci(acc)
        entry = {"problems": len(per_problem), "samples_per_problem": n, "pass@1": mean, "ci_low": lo,
                 "ci_high": hi, "mean_response_tokens": sum(r["num_response_tokens"] for r in rows
                                                            if r["mode"] == mode and r["source"] == source)
                 / max(1, sum(len(rs) for rs in per_problem.values())),
                 # judged wrong because the checker ran out of time, not because the answer was wrong
                 "check_timeouts": sum(r.get("verdict_error") == "timeout" for rs in per_problem.values()
                                       for r in rs)}
        for k in ks:
            if 1 < k <= n:
                entry[f"pass@{k}"] = sum(pass_at_k(len(rs), sum(r["reward"] for r in rs), k)
                                         for rs in per_problem.values()) / len(per_problem)
                entry[f"maj@{k}"] = sum(maj_at_k([(r["extracted_answer"], r["reward"]) for r in rs], k)
                                        for rs in per_problem.values()) / len(per_problem)
        out.setdefault(mode, {})[source] = entry
    return out


def write_summary(run: Path, label: str, ks: tuple[int, ...]) -> dict | None:
    folder = layout.stage_dir(run, stage_name(label))
    if not layout.success_path(folder).exists():
        return None
    rows = artifacts.read_table(run, folder.name).to_pylist()
    config = artifacts.load_json(layout.config_path(folder))["settings"]
    summary = {"label": label, "model": config["model"], "problems": config["problems"],
               "per_problem": per_problem_scores(rows), "questions": question_hashes(rows),
               "modes": summarize(rows, ks)}
    artifacts.write_json_atomic(layout.summary_path(folder), summary)
    return summary


def per_problem_scores(rows: list[dict]) -> dict:
    """mode -> problem_id -> mean reward (what --compare pairs up)."""
    acc: dict = {}
    for r in rows:
        acc.setdefault(r["mode"], {}).setdefault(r["problem_id"], []).append(r["reward"])
    return {m: {pid: sum(v) / len(v) for pid, v in ps.items()} for m, ps in acc.items()}


def question_hashes(rows: list[dict]) -> dict:
    """problem_id -> hash of its question: what --compare checks before pairing two evaluations by id (a
    source's ids repeat under another seed= or split, e.g. borrow-test-0000, over other questions)."""
    return {r["problem_id"]: artifacts.sha256_bytes(r["question"].encode())[:16] for r in rows}


def same_questions(base: dict, other: dict) -> None:
    """Refuse to pair two evaluations whose shared problem ids hold different questions."""
    ref, got = base.get("questions"), other.get("questions")
    if not isinstance(ref, dict) or not isinstance(got, dict):
        raise GpoError(f"{(base if ref is None else other)['label']}: the summary has no question hashes "
                       "(written by an older `gpo eval`): rerun that evaluation's command to rewrite it")
    differ = sorted(p for p in set(ref) & set(got) if ref[p] != got[p])
    if differ:
        raise GpoError(f"{other['label']} and {base['label']} evaluated different questions under the same "
                       f"problem ids ({len(differ)} of {len(set(ref) & set(got))}, e.g. {differ[0]}): compare "
                       "evaluations of the same --problems")


def compare(summaries: list[dict]) -> list[dict]:
    """Each model against the first, per mode, on the problems both saw: paired difference with a 95% CI."""
    base = summaries[0]
    for other in summaries[1:]:
        same_questions(base, other)
    rows = []
    for other in summaries:
        for mode, scores in other["per_problem"].items():
            ref = base["per_problem"].get(mode, {})
            common = sorted(set(ref) & set(scores))
            if not common:
                continue
            diffs = [scores[p] - ref[p] for p in common]
            mean = sum(diffs) / len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1))
            half = 1.96 * sd / math.sqrt(len(diffs))
            acc = sum(scores[p] for p in common) / len(common)
            rows.append({"label": other["label"], "mode": mode, "problems": len(common), "accuracy": acc,
                         "diff": mean, "diff_low": mean - half, "diff_high": mean + half})
    return rows


def load_summary(folder: Path) -> dict:
    path = layout.summary_path(folder)
    if not path.exists():
        raise GpoError(f"{folder} has no {layout.SUMMARY}: is it a finished `gpo eval` folder (RUN/eval_<label>)?")
    summary = artifacts.load_json(path)
    if not isinstance(summary.get("per_problem"), dict):
        raise GpoError(f"{path} has no per-problem scores (written by an older or interrupted `gpo eval`): "
                       "rerun that evaluation to compare it")
    return summary
