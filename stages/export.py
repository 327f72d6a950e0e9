"""`gpo export`: the branch tables in the formats other trainers read directly.

    gpo export --run runs/toy --format trl --out exports/trl
    gpo export --run runs/toy --format verl --out exports/verl
    gpo export --run runs/toy --format llamafactory --out exports/lf

trl:          preference.parquet (prompt, chosen, rejected), unpaired.parquet (prompt, completion, label),
              prompts.parquet (prompt, gold_answer): standard (non-conversational) text datasets.
verl:         train.parquet rows with data_source, prompt (chat messages), ability, reward_model.ground_truth,
              extra_info (ids, and raw_prompt: the exact text including a reset prefix).
llamafactory: gpo_pairwise.json (instruction, input, chosen, rejected) and dataset_info.json (ranking: true).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from stages.core import artifacts, lineage
from stages.core.errors import GpoError

FORMATS = ("trl", "verl", "llamafactory")


def _select(run: Path, table: str, data: str) -> list[dict]:
    lineage.require_fresh(run, "branch")  # finished, and built on what the run holds now
    rows = [r for r in artifacts.read_table(run, table).to_pylist() if r["data"] == data]
    return sorted(rows, key=lambda r: [str(v) for v in r.values()])


def export(run: Path, fmt: str, out: Path, data: str = "gpo") -> list[Path]:
    if fmt not in FORMATS:
        raise GpoError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    run, out = Path(run), Path(out)
    pairs = _select(run, "branch", data)
    if not pairs:
        raise GpoError(f"no '{data}' pairs in {run}/branch (data kinds: gpo, baseline, random-reset)")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "trl":
        return _trl(run, out, data, pairs)
    if fmt == "verl":
        return _verl(run, out, data)
    return _llamafactory(out, data, pairs)


def _write(path: Path, rows: list[dict]) -> Path:
    artifacts.write_parquet_atomic(pa.Table.from_pylist(rows), path, {"source": "gpo export"})
    return path


def _trl(run: Path, out: Path, data: str, pairs: list[dict]) -> list[Path]:
    unpaired = _select(run, "unpaired", data)
    resets = _select(run, "reset_prompts", data)
    return [
        _write(out / "preference.parquet",
               [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]),
        _write(out / "unpaired.parquet",
               [{"prompt": u["prompt"], "completion": u["completion"], "label": u["label"]} for u in unpaired]),
        _write(out / "prompts.parquet",
               [{"prompt": r["prompt"], "gold_answer": r["gold_answer"], "problem_id": r["problem_id"]}
                for r in resets]),
    ]


def _verl(run: Path, out: Path, data: str) -> list[Path]:
    questions = {r["problem_id"]: r["question"] for r in artifacts.read_table(run, "sample").to_pylist()}
    rows = []
    for i, r in enumerate(_select(run, "reset_prompts", data)):
        rows.append({
            "data_source": r["source"],
            "prompt": [{"role": "user", "content": questions[r["problem_id"]]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": r["gold_answer"]},
            "extra_info": {"split": "train", "index": i, "problem_id": r["problem_id"],
                           "sample_idx": r["sample_idx"], "state_idx": r["state_idx"],
                           "prefix_tokens": r["prefix_tokens"], "raw_prompt": r["prompt"]},
        })
    if not rows:
        raise GpoError(f"no '{data}' reset prompts in {run}/branch")
    return [_write(out / "train.parquet", rows)]


def _llamafactory(out: Path, data: str, pairs: list[dict]) -> list[Path]:
    records = [{"instruction": p["prompt"], "input": "", "chosen": p["chosen"], "rejected": p["rejected"]}
               for p in pairs]
    name = f"gpo_{data.replace('-', '_')}_pairwise"
    data_path = out / f"{name}.json"
    info_path = out / "dataset_info.json"
    artifacts.write_json_atomic(data_path, records)
    info = {name: {"file_name": data_path.name, "ranking": True,
                   "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                               "rejected": "rejected"}}}
    artifacts.write_json_atomic(info_path, info)
    return [data_path, info_path]
