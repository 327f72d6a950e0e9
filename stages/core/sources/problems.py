"""Problem sources: a local .jsonl/.parquet file, the built-in toy task, or reasoning-gym.

    toy:arith?n=500&seed=0&split=train
    reasoning-gym:gsm_symbolic?size=50&seed=0
    reasoning-gym:chain_sum?size=64&seed=1&min_terms=2&max_terms=3   (any option of the dataset's config)
    hf:openai/gsm8k?config=main&split=test   (local HF datasets cache only: stages/core/sources/hf_datasets.py)
    path/to/problems.jsonl   (fields named by --question-field / --answer-field / --id-field)
Every source becomes one table: problem_id, question, gold_answer, source, checker, meta (JSON).
Bad rows (empty question, missing gold answer) are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import pyarrow as pa

from stages.core.scoring.answers import gsm8k_gold
from stages.core.pipeline.errors import GpoError

PROBLEM_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("question", pa.string()), ("gold_answer", pa.string()),
    ("source", pa.string()), ("checker", pa.string()), ("meta", pa.string()),
])


GOLD_SOLUTION_FIELD = "gold_solution"  # a file's worked solution, one result per line (the toy tasks' name)


@dataclass(frozen=True)
class Fields:
    question: str = "question"
    answer: str = "answer"
    id: str | None = None


@dataclass
class Problems:
    table: pa.Table
    skipped: dict[str, int]  # reason -> count


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """'kind:name?a=1&b=2' -> (kind, name, {a: 1, b: 2}); a plain path -> ('file', path, {})."""
    for kind in ("toy", "reasoning-gym", "hf"):
        if spec.startswith(kind + ":"):
            rest = spec[len(kind) + 1:]
            name, _, query = rest.partition("?")
            return kind, name, dict(parse_qsl(query, keep_blank_values=True))
    return "file", spec, {}


def _int_param(params: dict, key: str, default: int) -> int:
    try:
        return int(params.get(key, default))
    except ValueError:
        raise GpoError(f"source parameter {key}={params[key]!r} is not an integer") from None


def load_problems(spec: str, fields: Fields = Fields(), checker: str | None = None) -> Problems:
    kind, name, params = parse_spec(spec)
    if kind == "toy":
        rows = _toy_rows(name, params)
    elif kind == "reasoning-gym":
        rows = _reasoning_gym_rows(name, params)
    elif kind == "hf":
        from stages.core.sources.hf_datasets import hf_rows

        rows = hf_rows(name, params, fields)
    else:
        rows = _file_rows(Path(name), fields)
    return _to_table(rows, spec, checker)


def _to_table(rows: list[dict], spec: str, checker: str | None) -> Problems:
    skipped: dict[str, int] = {}
    kept, seen = [], set()
    for row in rows:
        reason = None
        if not str(row.get("question") or "").strip():
            reason = "empty question"
        elif row.get("gold_answer") is None or not str(row["gold_answer"]).strip():
            reason = "missing gold answer"
        elif row["problem_id"] in seen:
            reason = "duplicate problem id"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        seen.add(row["problem_id"])
        kept.append({**row, "checker": checker or row.get("checker") or "math"})
    if not kept:
        detail = f" (skipped: {skipped})" if skipped else ""
        raise GpoError(f"source {spec} has no usable problems{detail}")
    columns = {f.name: [str(r.get(f.name, "")) for r in kept] for f in PROBLEM_SCHEMA}
    return Problems(pa.table(columns, schema=PROBLEM_SCHEMA), skipped)


def _toy_rows(name: str, params: dict) -> list[dict]:
    from stages.core.sources import toy_tasks

    task = toy_tasks.get(name)
    params = dict(params)
    split = params.pop("split", "train")
    if split not in task.splits:
        raise GpoError(f"{task.source} split must be one of {', '.join(task.splits)}, not {split!r}")
    n, seed = _int_param(params, "n", 500), _int_param(params, "seed", 0)
    params.pop("n", None), params.pop("seed", None)
    return [{"problem_id": p["problem_id"], "question": p["question"], "gold_answer": p["gold_answer"],
             "source": task.source, "checker": "numeric", "meta": p["meta"]}
            for p in task.problems(n, seed, split, params)]


def _reasoning_gym_rows(name: str, params: dict) -> list[dict]:
    try:
        import reasoning_gym
    except ImportError:
        raise GpoError("reasoning-gym is not installed: pip install 'gpo[data]'") from None
    from stages.core.sources.rg_config import option_names, typed_options

    options = {"size": 50, "seed": 0, **typed_options(name, params)}
    seed = options["seed"]
    try:
        dataset = reasoning_gym.create_dataset(name, **options)
    except Exception as e:  # reasoning-gym's validate() asserts; the message may be empty
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise GpoError(f"reasoning-gym cannot make dataset '{name}' with {options}: {reason} "
                       f"(valid options: {', '.join(option_names(name))})") from None
    rows = []
    for i, entry in enumerate(dataset):
        rows.append({"problem_id": f"rg-{name}-{seed}-{i:06d}", "question": entry["question"],
                     "gold_answer": gsm8k_gold(str(entry["answer"])), "source": f"reasoning-gym:{name}",
                     "checker": "math", "meta": json.dumps(entry.get("metadata", {}), default=str)})
    return rows


def _file_rows(path: Path, fields: Fields) -> list[dict]:
    if not path.exists():
        raise GpoError(f"problem file {path} does not exist")
    if path.suffix == ".jsonl":
        records = _read_jsonl(path)
    elif path.suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise GpoError(f"problem file {path} must end in .jsonl or .parquet")
    if not records:
        raise GpoError(f"problem file {path} is empty")
    names = set().union(*(r.keys() for r in records))
    missing = [f for f in (fields.question, fields.answer, fields.id) if f and f not in names]
    if missing:
        raise GpoError(f"{path} lacks field(s) {missing}; it has {sorted(names)} "
                       "(name them with --question-field / --answer-field / --id-field)")
    rows = []
    for i, rec in enumerate(records):
        gold = rec.get(fields.answer)
        pid = str(rec[fields.id]) if fields.id and rec.get(fields.id) is not None else f"{path.stem}-{i:06d}"
        rows.append({"problem_id": pid, "question": rec.get(fields.question),
                     "gold_answer": None if gold is None else gsm8k_gold(str(gold)),
                     "source": path.name, "meta": json.dumps({"row": i, **_gold_solution(rec)})})
    return rows


def _gold_solution(rec: dict) -> dict:
    """A worked gold solution rides in `meta` (the problem table has no column for it): `gpo eval --probe`
    teacher-forces it."""
    solution = rec.get(GOLD_SOLUTION_FIELD)
    return {GOLD_SOLUTION_FIELD: str(solution)} if isinstance(solution, str) and solution.strip() else {}


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise GpoError(f"{path}:{line_no} is not valid JSON") from None
                if not isinstance(rec, dict):
                    raise GpoError(f"{path}:{line_no} is not a JSON object")
                records.append(rec)
    except (OSError, UnicodeDecodeError) as e:
        raise GpoError(f"cannot read {path}: {e}") from None
    return records


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException):
        raise GpoError(f"{path} is not a readable Parquet file") from None
