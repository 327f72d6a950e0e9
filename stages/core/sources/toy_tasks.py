"""The two built-in toy tasks behind one small interface (sources, locate's ground truth, the model builder).

    toy:arith    short chains, one correct text, flat noise: the example where GPO does not pay
    toy:borrow   long chains, many correct texts, one systematic trap: GPO's premise (the demo's default)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stages.core.sources import toy, toy_borrow
from stages.core.pipeline.errors import GpoError

DATA = Path(__file__).resolve().parents[3] / "data"  # stages/core/sources/ -> the repository


@dataclass(frozen=True)
class ToyTask:
    name: str
    splits: tuple[str, ...]
    words: Callable[[], list[str]]
    problems: Callable[[int, int, str, dict], list[dict]]  # (n, seed, split, extra source params)
    noisy_solution: Callable[[dict, random.Random], str]  # an SFT target with the task's slips
    first_wrong_line: Callable[[str, str], int | None]  # (meta json, response) -> line or None
    max_new_tokens: int  # enough for the longest solution, with slack
    model_dir: Path
    # (meta json) -> the gold solution's lines, each with the kind of line it is (what `gpo eval --probe`
    # reports per kind): the task names its kinds, the probe never guesses them.
    gold_lines: Callable[[str], list[tuple[str, str]]] = lambda meta: []

    @property
    def source(self) -> str:
        return f"toy:{self.name}"


def _arith_problems(n: int, seed: int, split: str, params: dict) -> list[dict]:
    if params:
        raise GpoError(f"toy:arith takes no parameter {sorted(params)[0]!r}")
    return toy.toy_problems(n, seed, split)


def _borrow_problems(n: int, seed: int, split: str, params: dict) -> list[dict]:
    unknown = set(params) - {"after"}
    if unknown:
        raise GpoError(f"toy:borrow takes no parameter {sorted(unknown)[0]!r} (only after=sub|add)")
    after = params.get("after", "sub")
    if after not in toy_borrow.AFTER:
        raise GpoError(f"toy:borrow after= must be one of {', '.join(toy_borrow.AFTER)}, not {after!r}")
    return toy_borrow.problems(n, seed, split, after)


def _arith_gold_lines(meta_json: str) -> list[tuple[str, str]]:
    start, ops = toy._parse_meta(meta_json)
    lines = toy._solution_text(start, ops, [0] * len(ops)).split("\n")
    return [(line, "operation") for line in lines[:-1]] + [(lines[-1], "answer")]


def _borrow_gold_lines(meta_json: str) -> list[tuple[str, str]]:
    meta = json.loads(meta_json)
    # The same text as the problem's gold_solution (toy_borrow.problems draws it with Random(0) too).
    lines = toy_borrow.solution_text(meta, random.Random(0), slips=False).split("\n")
    return list(zip(lines, [*toy_borrow.line_kinds(meta), "answer"]))


TASKS = {
    "arith": ToyTask("arith", toy.SPLITS, toy.toy_words, _arith_problems,
                     lambda p, rng: toy.noisy_solution(p, rng), toy.first_wrong_line, 48, DATA / "toy-model",
                     _arith_gold_lines),
    "borrow": ToyTask("borrow", toy_borrow.SPLITS, toy_borrow.words, _borrow_problems,
                      lambda p, rng: toy_borrow.solution_text(json.loads(p["meta"]), rng),
                      toy_borrow.first_wrong_line, 160, DATA / "borrow-model",
                      _borrow_gold_lines),
}


def get(name: str) -> ToyTask:
    if name not in TASKS:
        raise GpoError(f"unknown toy task '{name}' (available: {', '.join(TASKS)})")
    return TASKS[name]


def for_source(source: str) -> ToyTask | None:
    """The toy task a `source` column names (`toy:borrow`), or None for real data."""
    kind, _, name = source.partition(":")
    return TASKS.get(name) if kind == "toy" else None



def ground_truth(sample: dict) -> int | None:
    """The first wrong line of a failed toy trajectory (a `sample` row); None for real tasks and successes.
    With the toy tasks' line splitter (`--split auto`) a line index is a step index."""
    task = for_source(sample["source"])
    if task is None or sample["reward"] == 1:
        return None
    return task.first_wrong_line(sample["meta"], sample["response_text"])


def require_truth(problems: str, what: str) -> None:
    """Refuse `what` (e.g. `--rule oracle`) unless the run's problems come from a toy task, which knows its
    first wrong line; `problems` is the source the sample stage read (`toy:borrow?n=40`)."""
    if for_source(problems.partition("?")[0]) is None:
        known = ", ".join(t.source for t in TASKS.values())
        raise GpoError(f"{what} needs a task that knows its first wrong line ({known}); "
                       f"this run's problems are {problems!r}")
