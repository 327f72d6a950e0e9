"""The built-in task built for GPO's premise: long chains, many valid texts, one systematic trap.

    question:  start: 23 a: + 5 b: + 7 c: - 3 ... p: - 8 q: - 2
    solution:  a: 23 + 5 = 28\\nb: 7 + 28 = 35\\nc: 35 - 3 = 32 ... p: 41 - 8 = 33\\n...\\nanswer: 31

What makes GPO's credit assignment matter here (issue 11; toy:arith has none of it):
- long: 15-19 labelled operations, one solution line each, plus the answer line;
- diverse: an addition line may be written `v + d = r` or `d + v = r`, so two correct solutions of one
  problem almost never share their text past the first few lines;
- one systematic trap: the first *borrowing* subtraction (units digit of v below d) sits in the second
  half; the training data "forgets the borrow" there (r = v - d + 10) often, and the line is hard
  (d in {8, 9}) or easy; every other line is almost always right;
- low variety after the trap (`after=sub`, the default): from the trap on, only subtractions, which have
  one form, so a GPO pair (reset just before the trap) differs in little but the trap itself.
  `after=add` puts two-form additions there instead (the variant GPO should gain less from).

`first_wrong_line` gives the ground-truth first wrong line of any response, whatever its forms.
Pure python: no torch here.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

LABELS = "abcdefghijklmnopqrst"
MIN_OPS, MAX_OPS = 15, 19
START_MIN, START_MAX = 10, 49
# Correct chains stay in [1, 49 + 19 * 9]; slips (+10 per trap) and rare off-by-one/two drift further.
NUM_MIN, NUM_MAX = -30, 260
ANSWER_WORD, START_WORD = "answer:", "start:"
TEST_PERCENT, VALID_PERCENT = 20, 10
SPLITS = ("train", "valid", "test")
AFTER = ("sub", "add")
HARD_DIGITS = (8, 9)  # a borrow of 8 or 9 is the hard trap
P_HARD = 0.4  # share of problems whose trap is hard
# Slip rates in the SFT data: the model learns them, so a hard trap is usually failed even greedily.
SLIP = {"hard": 0.6, "easy": 0.3, "later-borrow": 0.2, "routine": 0.005}
ROUTINE_OFFSETS = (-2, -1, 1, 2)

_ADD_A = re.compile(r"([a-t]):\s*(-?\d+)\s*\+\s*(-?\d+)\s*=\s*(-?\d+)")
_SUB = re.compile(r"([a-t]):\s*(-?\d+)\s*-\s*(-?\d+)\s*=\s*(-?\d+)")
_ANSWER = re.compile(r"answer:\s*(-?\d+)")


def words() -> list[str]:
    numbers = [str(n) for n in range(NUM_MIN, NUM_MAX + 1)]
    return [START_WORD, *(f"{c}:" for c in LABELS), ANSWER_WORD, "+", "-", "=", *numbers]


def _apply(value: int, op: str, digit: int) -> int:
    return value + digit if op == "+" else value - digit


def borrows(value: int, digit: int) -> bool:
    return value % 10 < digit


def _question_text(start: int, ops: list[tuple[str, int]]) -> str:
    parts = [START_WORD, str(start)]
    for label, (op, digit) in zip(LABELS, ops):
        parts += [f"{label}:", op, str(digit)]
    return " ".join(parts)


def _line(label: str, value: int, op: str, digit: int, result: int, swapped: bool) -> str:
    if op == "+" and swapped:
        return f"{label}: {digit} + {value} = {result}"
    return f"{label}: {value} {op} {digit} = {result}"


def _split_of(question: str) -> str:
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 100
    return "test" if h < TEST_PERCENT else "valid" if h < TEST_PERCENT + VALID_PERCENT else "train"


def _rng_for(seed: int, split: str, after: str) -> random.Random:
    key = f"gpo-borrow|{seed}|{split}" + ("" if after == "sub" else f"|{after}")
    return random.Random(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big"))


def _random_chain(rng: random.Random, after: str) -> tuple[int, list[tuple[str, int]], int, str] | None:
    """(start, ops, trap index, trap kind), or None to draw again."""
    n_ops = rng.randint(MIN_OPS, MAX_OPS)
    trap = rng.randint((n_ops + 1) // 2, n_ops - 2)
    kind = "hard" if rng.random() < P_HARD else "easy"
    value = start = rng.randint(START_MIN, START_MAX)
    ops: list[tuple[str, int]] = []
    for i in range(n_ops):
        units = value % 10
        if i < trap or (i > trap and after == "add"):
            # Routine: mostly additions, some subtractions that do not borrow (so '-' alone is no cue).
            if units >= 1 and rng.random() < 0.2:
                op, digit = "-", rng.randint(1, units)
            else:
                op, digit = "+", rng.randint(1, 9)
        elif i == trap:
            low = units + 1
            choices = [d for d in (HARD_DIGITS if kind == "hard" else range(1, 8)) if d >= low]
            if not choices:
                return None
            op, digit = "-", rng.choice(choices)
        else:  # after the trap (after=sub): subtractions, a later borrow now and then
            if units == 0 or (units <= 8 and rng.random() < 0.12):
                op, digit = "-", rng.randint(units + 1, 9)
            else:
                op, digit = "-", rng.randint(1, units)
        value = _apply(value, op, digit)
        if value < 1:
            return None
        ops.append((op, digit))
    return start, ops, trap, kind


def problems(n: int, seed: int, split: str, after: str = "sub") -> list[dict]:
    """The first n problems of the (seed, split) stream: ids dense, questions unique, split by hash."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if after not in AFTER:
        raise ValueError(f"after must be one of {AFTER}, got {after!r}")
    rng, seen = _rng_for(seed, split, after), set()
    out: list[dict] = []
    while len(out) < n:
        chain = _random_chain(rng, after)
        if chain is None:
            continue
        start, ops, trap, kind = chain
        question = _question_text(start, ops)
        if question in seen or _split_of(question) != split:
            continue
        seen.add(question)
        answer = start
        for op, digit in ops:
            answer = _apply(answer, op, digit)
        meta = {"start": start, "ops": [[op, d] for op, d in ops], "answer": answer, "trap": trap,
                "trap_kind": kind, "after": after}
        out.append({"problem_id": f"borrow-{split}-{len(out):04d}", "question": question,
                    "gold_answer": str(answer), "meta": json.dumps(meta, sort_keys=True),
                    "gold_solution": solution_text(meta, random.Random(0), slips=False)})
    return out


def line_kinds(meta: dict) -> list[str]:
    """Kind of each operation line on the correct chain: trap-hard, trap-easy, later-borrow, routine."""
    value, kinds = meta["start"], []
    for i, (op, digit) in enumerate(meta["ops"]):
        if i == meta["trap"]:
            kinds.append(f"trap-{meta['trap_kind']}")
        elif op == "-" and borrows(value, digit):
            kinds.append("later-borrow")
        else:
            kinds.append("routine")
        value = _apply(value, op, digit)
    return kinds


def solution_text(meta: dict, rng: random.Random, slips: bool = True) -> str:
    """A solution with random addition forms; with slips, each line fails at its kind's SFT rate.

    A forgotten borrow adds 10; a routine slip is off by 1 or 2; later lines continue from a wrong
    value, as a model that slipped would."""
    kinds = line_kinds(meta)
    value, lines = meta["start"], []
    for label, (op, digit), kind in zip(LABELS, meta["ops"], kinds):
        result = _apply(value, op, digit)
        rate = SLIP["hard" if kind == "trap-hard" else "easy" if kind == "trap-easy" else kind]
        if slips and rng.random() < rate:
            result += 10 if kind != "routine" and borrows(value, digit) else rng.choice(ROUTINE_OFFSETS)
        lines.append(_line(label, value, op, digit, result, swapped=rng.random() < 0.5))
        value = result
    lines.append(f"{ANSWER_WORD} {value}")
    return "\n".join(lines)


def _op_line_ok(line: str, label: str, value: int, op: str, digit: int) -> bool:
    text, result = line.strip(), _apply(value, op, digit)
    if op == "-":
        m = _SUB.fullmatch(text)
        return m is not None and (m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))) == \
            (label, value, digit, result)
    m = _ADD_A.fullmatch(text)
    if m is None or m.group(1) != label or int(m.group(4)) != result:
        return False
    return sorted((int(m.group(2)), int(m.group(3)))) == sorted((value, digit))


def first_wrong_line(meta_json: str, response_text: str) -> int | None:
    """0-based index of the first wrong line, or None if every line is right (either addition form).

    Line i < n_ops must be the i-th operation on the true running value with the true result; line
    n_ops must be `answer: <true answer>`; only blank lines may follow. A response that stops early
    is wrong at the index just past its last line."""
    meta = json.loads(meta_json)
    lines = response_text.split("\n")
    value = meta["start"]
    for i, (label, (op, digit)) in enumerate(zip(LABELS, meta["ops"])):
        if i >= len(lines):
            return len(lines)
        if not _op_line_ok(lines[i], label, value, op, int(digit)):
            return i
        value = _apply(value, op, int(digit))
    n = len(meta["ops"])
    if n >= len(lines):
        return len(lines)
    m = _ANSWER.fullmatch(lines[n].strip())
    if m is None or int(m.group(1)) != value:
        return n
    return next((j for j in range(n + 1, len(lines)) if lines[j].strip()), None)


def premise_stats(problems: list[dict], samples: list[list[str]], null_draws: int = 20) -> dict:
    """Does the premise hold for these samples (samples[i]: responses to problems[i])? Measured per issue 11:

    - per-kind error rate: P(line wrong | every line before it right), by line kind;
    - repeatability: share of same-problem pairs of failed samples that fail on the same line, against
      the same share after shuffling first wrong lines among failed samples of equally long problems;
    - diversity: distinct correct texts per problem (problems with >= 2 correct), and the share of
      same-problem (correct, incorrect) pairs whose texts diverge before the incorrect one's first wrong line.
    """
    reached: dict[str, int] = {}
    failed: dict[str, int] = {}
    fails_by_problem: list[list[int]] = []
    distinct, early, pairs, correct_total, total = [], 0, 0, 0, 0
    for p, responses in zip(problems, samples):
        meta = json.loads(p["meta"])
        kinds = [*line_kinds(meta), "answer"]
        wrong = [first_wrong_line(p["meta"], r) for r in responses]
        for w in wrong:
            last = len(kinds) if w is None else min(w, len(kinds) - 1) + 1
            for kind in kinds[:last]:
                reached[kind] = reached.get(kind, 0) + 1
            if w is not None:
                kind = kinds[min(w, len(kinds) - 1)]
                failed[kind] = failed.get(kind, 0) + 1
        total += len(responses)
        good = [r for r, w in zip(responses, wrong) if w is None]
        correct_total += len(good)
        if len(good) >= 2:
            distinct.append(len(set(good)))
        bad = [(r, w) for r, w in zip(responses, wrong) if w is not None]
        fails_by_problem.append([w for _, w in bad])
        for g in good:
            for r, w in bad:
                pairs += 1
                early += _first_differing_line(g, r) < w
    same, null = _repeat_rate(fails_by_problem), []
    lengths = [len(json.loads(p["meta"])["ops"]) for p in problems]
    rng = random.Random(0)
    for _ in range(null_draws):
        null.append(_repeat_rate(_shuffle_within_length(fails_by_problem, lengths, rng)))
    null_mean = sum(null) / len(null) if null else 0.0
    return {
        "samples": total, "accuracy": correct_total / max(1, total),
        "error_rate_by_kind": {k: {"reached": reached[k], "failed": failed.get(k, 0),
                                   "rate": failed.get(k, 0) / reached[k]} for k in sorted(reached)},
        "first_errors_by_kind": dict(sorted(failed.items())),
        "repeat_same_line": same, "repeat_null": null_mean,
        "repeat_ratio": same / null_mean if null_mean else None,
        "distinct_correct_texts": sum(distinct) / len(distinct) if distinct else None,
        "correct_incorrect_pairs": pairs,
        "diverge_before_first_wrong": early / pairs if pairs else None,
    }


def _first_differing_line(a: str, b: str) -> int:
    la, lb = a.split("\n"), b.split("\n")
    return next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))


def _repeat_rate(fails_by_problem: list[list[int]]) -> float:
    same = pairs = 0
    for lines in fails_by_problem:
        for i in range(len(lines)):
            for j in range(i + 1, len(lines)):
                pairs += 1
                same += lines[i] == lines[j]
    return same / pairs if pairs else 0.0


def _shuffle_within_length(fails_by_problem: list[list[int]], lengths: list[int],
                           rng: random.Random) -> list[list[int]]:
    """The null: first wrong lines permuted among failed samples of problems with as many operations."""
    pools: dict[int, list[int]] = {}
    for lines, n in zip(fails_by_problem, lengths):
        pools.setdefault(n, []).extend(lines)
    for pool in pools.values():
        rng.shuffle(pool)
    out = []
    for lines, n in zip(fails_by_problem, lengths):
        out.append([pools[n].pop() for _ in lines])
    return out
