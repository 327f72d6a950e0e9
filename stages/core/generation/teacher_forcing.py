"""Teacher forcing along a gold solution: where each line's result token sits, and the model's probability
of it given everything before it (what `gpo eval --probe` measures; stages/core/method/probe.py is the stage).

A gold line's *result* is its last number (`a: 23 + 5 = 28` -> `28`, `answer: 31` -> `31`); its *result
token* is the first token that holds a character of that number (the whole number in the toy tasks'
word-level vocabularies, its first piece under BPE). The kinds of lines are the task's: a toy task names
them (toy_tasks.ToyTask.gold_lines); a problem file's `gold_solution` lines are all of kind `line`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from stages.core.pipeline.errors import GpoError
from stages.core.sources.problems import GOLD_SOLUTION_FIELD

_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?=\D*$)")
FILE_KIND = "line"


@dataclass(frozen=True)
class GoldLine:
    index: int  # 0-based line of the gold solution
    kind: str
    text: str
    result_start: int  # character offset of the result inside the whole solution text


def result_offset(line: str) -> int | None:
    """Character offset of the line's last number, or None for a line without one."""
    m = _LAST_NUMBER.search(line)
    return m.start() if m else None


def gold_lines(row: dict) -> tuple[str, list[GoldLine]] | None:
    """(solution text, its probed lines) for a problem row, or None when its source has no gold solution."""
    from stages.core.sources.toy_tasks import for_source

    task = for_source(row.get("source") or "")
    if task is not None:
        kinded = task.gold_lines(row["meta"])
    else:
        try:
            meta = json.loads(row.get("meta") or "{}")
        except json.JSONDecodeError:
            return None
        solution = meta.get(GOLD_SOLUTION_FIELD) if isinstance(meta, dict) else None
        if not solution:
            return None
        kinded = [(line, FILE_KIND) for line in solution.split("\n")]
    if not kinded:
        return None
    text, lines, at = "\n".join(line for line, _ in kinded), [], 0
    for i, (line, kind) in enumerate(kinded):
        offset = result_offset(line)
        if offset is not None:
            lines.append(GoldLine(i, kind, line, at + offset))
        at += len(line) + 1
    return (text, lines) if lines else None


def result_token_positions(tokenizer, text: str, lines: list[GoldLine]) -> tuple[list[int], list[int]]:
    """The solution's token ids and, per line, the index of its result token among them.

    Needs a fast tokenizer's offsets, so the ids are the tokenization of the whole text (never of a prefix,
    which BPE may merge differently at the cut)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        raise GpoError("the probe needs a fast tokenizer (character offsets of each token)") from None
    ids, spans = list(enc["input_ids"]), list(enc["offset_mapping"])
    positions = []
    for line in lines:
        at = next((t for t, (_, end) in enumerate(spans) if end > line.result_start), None)
        if at is None:
            raise GpoError(f"no token holds the result of gold line {line.index} ({line.text!r})")
        positions.append(at)
    return ids, positions


def score_positions(model, prompt_ids: list[int], response_ids: list[int], positions: list[int],
                    device: str = "cpu") -> list[tuple[float, bool, int]]:
    """One forward pass over prompt + response; per response position: (probability of the token there,
    whether no other token is more probable, the most probable token id)."""
    import torch

    ids = [*prompt_ids, *response_ids]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    probs = torch.softmax(logits, dim=-1)
    out = []
    for pos in positions:
        t = len(prompt_ids) + pos
        row, gold = probs[t - 1], ids[t]
        p = float(row[gold])
        out.append((p, bool(p >= float(row.max())), int(row.argmax())))
    return out
