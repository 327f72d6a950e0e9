"""The rows `gpo train` learns from: branch pairs, unpaired rows, or (online methods) the original problems
plus the GPO reset states; deduplication, truncation handling, and a fingerprint for resume checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.train.settings import ONLINE, TrainSettings

if TYPE_CHECKING:
    from datasets import Dataset


def select_rows(run: Path, table: str, data: str) -> list[dict]:
    rows = [r for r in artifacts.read_table(run, table).to_pylist() if r["data"] == data]
    if not rows:
        raise GpoError(f"no '{data}' rows in table '{table}' of {run}: run `gpo branch` with data of that kind "
                       f"(--baseline adds baseline and random-reset rows)")
    return rows


def drop_duplicates(rows: list[dict], keys: tuple[str, ...]) -> tuple[list[dict], int]:
    """Rows with the same training content (keys other than pair_id) kept once, the first by pair_id."""
    seen, kept = set(), []
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        content = json.dumps([r[k] for k in keys if k != "pair_id"], default=str)
        if content not in seen:
            seen.add(content)
            kept.append(r)
    return kept, len(rows) - len(kept)


PAIR_KEYS = ("pair_id", "prompt", "chosen", "rejected")
UNPAIRED_KEYS = ("pair_id", "prompt", "completion", "label")


def trainable(rows: list[dict], table: str, truncated: str | None, dedup: bool, data: str) -> tuple[list[dict], dict]:
    """The rows of table `branch` (pairs) or `unpaired` that training learns from under --truncated and
    --dedup, and what was left out. One rule for `gpo train` and `gpo export`."""
    unpaired = table == "unpaired"
    kept = drop_truncated(rows, "kto" if unpaired else "dpo") if truncated == "drop" else rows
    if rows and not kept:
        raise GpoError(f"every '{data}' row of table '{table}' has a response cut at the length limit, "
                       "and --truncated drop leaves none")
    kept, duplicates = drop_duplicates(kept, UNPAIRED_KEYS if unpaired else PAIR_KEYS) if dedup else (kept, 0)
    return kept, {"dropped_truncated": len(rows) - len(kept) - duplicates, "duplicates_dropped": duplicates}


def fingerprint(rows: list[dict], keys: tuple[str, ...]) -> str:
    """Hash of the training rows, so that a rerun over changed branch data is not taken for a resume."""
    h = hashlib.sha256()
    for r in sorted(json.dumps([r[k] for k in keys], default=str) for r in rows):
        h.update(r.encode())
    return h.hexdigest()[:16]


def prompt_for_tokenizer(tok, prompt: str, ids: list[int]) -> tuple[str, str]:
    """The prompt text to hand TRL, which tokenizes it with `tok(text)` (special tokens on), and a verdict.

    Sampling used the stored ids. A chat prompt already carries its BOS as text, and a tokenizer that adds
    BOS would double it, so a leading BOS string is dropped when that reproduces the stored ids.
    """
    if tok(prompt)["input_ids"] == list(ids):
        return prompt, "match"
    bos = tok.bos_token
    if bos and prompt.startswith(bos) and tok(prompt[len(bos):])["input_ids"] == list(ids):
        return prompt[len(bos):], "bos_dropped"
    return prompt, "mismatch"


def _cpo_prompt_ids(tok, prompt: str) -> list[int]:
    """How TRL's CPO/ORPO tokenize a prompt: no special tokens, then BOS prepended unless already first."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
        ids = [tok.bos_token_id] + ids
    return ids


def cut(row: dict, side: str) -> bool:
    """Whether this side's response was cut at the length limit (tables from before the column: no)."""
    return row.get(f"{side}_finish_reason") == "length"


def drop_truncated(rows: list[dict], method: str) -> list[dict]:
    sides = ("completion",) if method == "kto" else ("chosen", "rejected")
    return [r for r in rows if not any(cut(r, side) for side in sides)]


def preference_dataset(rows: list[dict], tok, method: str) -> tuple[list[dict], dict]:
    """Standard (non-conversational) text examples and a count of how well TRL's tokenization matches.

    DPO and KTO examples carry `<side>_truncated` flags, read by `no_eos_on_truncated` after TRL tokenizes."""
    checks = {"match": 0, "bos_dropped": 0, "mismatch": 0, "response_retokenized_differently": 0,
              "truncated_responses": 0}
    examples = []
    for r in rows:
        if method in ("simpo", "orpo"):
            prompt, verdict = r["prompt"], ("match" if _cpo_prompt_ids(tok, r["prompt"]) == list(r["prompt_token_ids"])
                                            else "mismatch")
        else:
            prompt, verdict = prompt_for_tokenizer(tok, r["prompt"], r["prompt_token_ids"])
        checks[verdict] += 1
        if method == "kto":
            examples.append({"prompt": prompt, "completion": r["completion"], "label": bool(r["label"]),
                             "completion_truncated": cut(r, "completion")})
            responses = [(r["completion"], r["completion_token_ids"])]
        else:
            examples.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]})
            if method == "dpo":
                examples[-1].update(chosen_truncated=cut(r, "chosen"), rejected_truncated=cut(r, "rejected"))
            responses = [(r["chosen"], r["chosen_token_ids"]), (r["rejected"], r["rejected_token_ids"])]
        checks["truncated_responses"] += sum(cut(r, side) for side in
                                             (("completion",) if method == "kto" else ("chosen", "rejected")))
        for text, ids in responses:
            checks["response_retokenized_differently"] += (
                tok(text, add_special_tokens=False)["input_ids"] != list(ids))
    return examples, checks


def original_problems(run: Path) -> dict[str, dict]:
    """One row per problem of RUN/sample: prompt text and ids, gold answer, checker."""
    table = artifacts.read_table(run, "sample").select(
        ["problem_id", "prompt_text", "prompt_token_ids", "gold_answer", "checker"])
    problems: dict[str, dict] = {}
    for r in table.to_pylist():
        problems.setdefault(r["problem_id"], r)
    if not problems:
        raise GpoError(f"table 'sample' of {run} has no problems")
    return dict(sorted(problems.items()))


def online_rows(run: Path, data: str, tok) -> tuple[list[dict], dict, dict]:
    """Examples {prompt, gold_answer, checker, reset_prefix}, their fingerprint, and tokenization checks."""
    problems = original_problems(run)
    rows = [{"problem_id": pid, "prompt": p["prompt_text"], "prompt_token_ids": p["prompt_token_ids"],
             "gold_answer": p["gold_answer"], "checker": p["checker"], "reset_prefix": ""}
            for pid, p in problems.items()]
    if data != "baseline":
        for r in select_rows(run, "reset_prompts", data):
            original = problems.get(r["problem_id"])
            if original is None or not r["prompt"].startswith(original["prompt_text"]):
                raise GpoError(f"reset prompt of problem {r['problem_id']} does not extend its original prompt "
                               f"in table 'sample' of {run}")
            rows.append({**r, "reset_prefix": r["prompt"][len(original["prompt_text"]):]})
    checks = {"match": 0, "bos_dropped": 0, "mismatch": 0}
    examples = []
    for r in rows:
        prompt, verdict = prompt_for_tokenizer(tok, r["prompt"], r["prompt_token_ids"])
        checks[verdict] += 1
        examples.append({"prompt": prompt, "gold_answer": r["gold_answer"], "checker": r["checker"],
                         "reset_prefix": r["reset_prefix"]})
    inputs = {"table": "sample+reset_prompts", "rows": len(rows),
              "resets": len(rows) - len(problems), "hash": fingerprint(rows, ("problem_id", "prompt"))}
    return examples, inputs, checks


def load_rows(run: Path, s: TrainSettings, tok) -> tuple[Dataset, dict, dict]:
    """The training dataset, its input fingerprint and the tokenization checks."""
    from datasets import Dataset

    if s.method in ONLINE:
        examples, inputs, checks = online_rows(run, s.data, tok)
    else:
        table = "unpaired" if s.method == "kto" else "branch"
        rows, counts = trainable(select_rows(run, table, s.data), table, s.truncated, s.dedup, s.data)
        keys = UNPAIRED_KEYS if table == "unpaired" else PAIR_KEYS
        inputs = {"table": table, "rows": len(rows), "hash": fingerprint(rows, keys), **counts}
        examples, checks = preference_dataset(rows, tok, s.method)
    return Dataset.from_list(examples), inputs, checks
