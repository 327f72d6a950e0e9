"""The built-in toy task: seeded arithmetic chains with line-checkable solutions.

A problem is a 2-digit start and 3-5 labelled operations (add or subtract one digit):

    question:  start: 47 a: + 5 b: - 3 c: + 8
    solution:  a: 47 + 5 = 52\\nb: 52 - 3 = 49\\nc: 49 + 8 = 57\\nanswer: 57

Every token is a whole word separated by one space (numbers are single tokens) and each
solution line repeats its operation's label, so a tiny word-level model can look the
operation up instead of counting (see docs/environment.md). `first_wrong_line` gives the
ground-truth critical line of any response. Pure python: no torch here.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

LABELS = "abcde"
MIN_OPS, MAX_OPS = 3, 5
START_MIN, START_MAX = 10, 99
DIGIT_MIN, DIGIT_MAX = 1, 9
# Reachable values: true chains stay in [10-45, 99+45]; noisy ones drift at most 5 * 10
# further. The vocabulary holds every integer in this range as a single token.
NUM_MIN, NUM_MAX = -99, 199
ERROR_OFFSETS = (-10, -2, -1, 1, 2, 10)
TEST_PERCENT = 20
SPLITS = ("train", "test")
ANSWER_WORD = "answer:"
START_WORD = "start:"

_OP_LINE = re.compile(r"([a-z]):\s*(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")
_ANSWER_LINE = re.compile(r"answer:\s*(-?\d+)")


def toy_words() -> list[str]:
    """Every space-separated word the task can produce (the tokenizer adds "\\n")."""
    numbers = [str(n) for n in range(NUM_MIN, NUM_MAX + 1)]
    return [START_WORD, *(f"{c}:" for c in LABELS), ANSWER_WORD, "+", "-", "=", *numbers]


def toy_prompt_text(question: str) -> str:
    """The prompt a model without a chat template sees: the question and a newline."""
    return question + "\n"


def _apply(value: int, op: str, digit: int) -> int:
    return value + digit if op == "+" else value - digit


def _question_text(start: int, ops: list[tuple[str, int]]) -> str:
    parts = [START_WORD, str(start)]
    for label, (op, digit) in zip(LABELS, ops):
        parts += [f"{label}:", op, str(digit)]
    return " ".join(parts)


def _solution_text(start: int, ops: list[tuple[str, int]], offsets: list[int]) -> str:
    """Solution lines; offsets[i] is added to line i's result and carried forward."""
    lines, value = [], start
    for label, (op, digit), off in zip(LABELS, ops, offsets):
        result = _apply(value, op, digit) + off
        lines.append(f"{label}: {value} {op} {digit} = {result}")
        value = result
    lines.append(f"{ANSWER_WORD} {value}")
    return "\n".join(lines)


def _split_of(question: str) -> str:
    # A stable hash (never Python's salted hash()) so the split of a question is fixed
    # for every seed and process: train and test can never share a question.
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % 100 < TEST_PERCENT else "train"


def _rng_for(seed: int, split: str) -> random.Random:
    digest = hashlib.blake2b(f"gpo-toy|{seed}|{split}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _random_chain(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    start = rng.randint(START_MIN, START_MAX)
    n_ops = rng.randint(MIN_OPS, MAX_OPS)
    ops = [(rng.choice("+-"), rng.randint(DIGIT_MIN, DIGIT_MAX)) for _ in range(n_ops)]
    return start, ops


def _problem_dict(split: str, index: int, start: int, ops: list[tuple[str, int]]) -> dict:
    answer = start
    for op, digit in ops:
        answer = _apply(answer, op, digit)
    meta = {"start": start, "ops": [[op, digit] for op, digit in ops], "answer": answer}
    return {
        "problem_id": f"toy-{split}-{index:04d}",
        "question": _question_text(start, ops),
        "gold_answer": str(answer),
        "gold_solution": _solution_text(start, ops, [0] * len(ops)),
        "meta": json.dumps(meta, sort_keys=True),
    }


def toy_problems(n: int, seed: int, split: str) -> list[dict]:
    """The first n problems of the (seed, split) stream; problem i never depends on n.

    Candidates whose question hashes to the other split, or repeat an earlier question,
    are skipped, so ids are dense and questions unique within a split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng, seen = _rng_for(seed, split), set()
    out: list[dict] = []
    while len(out) < n:
        start, ops = _random_chain(rng)
        question = _question_text(start, ops)
        if question in seen or _split_of(question) != split:
            continue
        seen.add(question)
        out.append(_problem_dict(split, len(out), start, ops))
    return out


def _parse_meta(meta_json: str) -> tuple[int, list[tuple[str, int]]]:
    meta = json.loads(meta_json)
    return int(meta["start"]), [(str(op), int(d)) for op, d in meta["ops"]]


def noisy_solution(problem: dict, rng: random.Random, error_rate: float = 0.12) -> str:
    """A training solution where each operation line is wrong with probability error_rate.

    A wrong line is off by +-1, +-2 or +-10 and later lines (and the answer) continue from
    the wrong value, as a model that slipped once would: the first error is the only one.
    """
    start, ops = _parse_meta(problem["meta"])
    offsets = []
    for _ in ops:
        wrong = rng.random() < error_rate
        offsets.append(rng.choice(ERROR_OFFSETS) if wrong else 0)
    return _solution_text(start, ops, offsets)


def _op_line_ok(line: str, label: str, value: int, op: str, digit: int) -> bool:
    m = _OP_LINE.fullmatch(line.strip())
    if m is None:
        return False
    got = (m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5)))
    return got == (label, value, op, digit, _apply(value, op, digit))


def first_wrong_line(meta_json: str, response_text: str) -> int | None:
    """0-based index of the first wrong line of a response, or None if it is all correct.

    Line i < n_ops must be the question's i-th operation applied to the true running value
    with the true result; line n_ops must be `answer: <true answer>`; only blank lines may
    follow. A response that stops early is wrong at the index just past its last line.
    """
    start, ops = _parse_meta(meta_json)
    lines = response_text.split("\n")
    value = start
    for i, (label, (op, digit)) in enumerate(zip(LABELS, ops)):
        if i >= len(lines):
            return len(lines)
        if not _op_line_ok(lines[i], label, value, op, digit):
            return i
        value = _apply(value, op, digit)
    n = len(ops)
    if n >= len(lines):
        return len(lines)
    m = _ANSWER_LINE.fullmatch(lines[n].strip())
    if m is None or int(m.group(1)) != value:
        return n
    for j in range(n + 1, len(lines)):
        if lines[j].strip():
            return j
    return None
