"""What every answer checker shares: the Verdict record, the Checker interface, answer extraction, exact
numbers and the rows no checker can judge. answers.py (the in-process checkers and make_checker) and
math_pool.py (the math checker's worker pool) both build on it; the underscored names are for those two only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol


@dataclass(frozen=True)
class Verdict:
    extracted_answer: str | None  # what was pulled out of the response (None if nothing)
    correct: bool
    checker: str  # "numeric" | "math" | "choice"
    error: str | None = None  # e.g. "timeout", "no answer found", "unparseable gold"


class Checker(Protocol):
    name: str

    def check_many(self, responses: list[str], golds: list[str]) -> list[Verdict]: ...
    def close(self) -> None: ...


# ----------------------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
# Greedy `(.*)$` and not lazy `(.+?)\s*$`: the lazy form is quadratic on long blank runs.
_ANSWER_LINE = re.compile(r"\banswer\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_GSM8K = re.compile(r"####\s*(.*)$", re.MULTILINE)
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _last_boxed(text: str) -> str | None:
    """Content of the last balanced \\boxed{...}/\\fbox{...}.

    Scans matches from the end; a box left unclosed bounds the scan of earlier ones, so a
    long response full of unclosed boxes still costs one pass, not one per box.
    """
    end = len(text)
    for m in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for brace in _BRACE.finditer(text, m.end(), end):
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[m.end():brace.start()]
        end = m.start()
    return None


def _clean(ans: str) -> str:
    """Strip the decoration models put around a final answer (markdown, $, \\( \\), a final period)."""
    prev = None
    while ans != prev:  # layers come in any order, e.g. '**$12$**.'
        prev, ans = ans, ans.strip().strip("*$").rstrip(".")
        if ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2]
    return ans


def extract_answer(text: str) -> str | None:
    """Last boxed answer, else last 'answer: X' line, else GSM8K '#### X', else 'the answer is X'."""
    if not isinstance(text, str) or not text.strip():
        return None
    if (boxed := _last_boxed(text)) is not None:
        return _clean(boxed) or None
    for pattern in (_ANSWER_LINE, _GSM8K, _ANSWER_IS):
        found = [a for a in map(_clean, pattern.findall(text)) if a]
        if found:
            return found[-1]
    return None


def normalize_gold(answer: str) -> str:
    """GSM8K '... #### 42' -> '42'; unwraps \\boxed, drops $ and thousands commas, trims."""
    if not isinstance(answer, str):
        return ""
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    if (boxed := _last_boxed(answer)) is not None:
        answer = boxed
    answer = answer.replace("\\$", "").replace("$", "")
    return _THOUSANDS.sub("", _clean(answer))


def gsm8k_gold(answer: str) -> str:
    """GSM8K puts the reasoning first and the number after '####'."""
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return answer.strip().replace(",", "") if re.fullmatch(r"\s*-?[\d,]+(\.\d+)?\s*", answer) else answer.strip()



# ----------------------------------------------------------------------------- numeric

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/[+-]?\d+(?:\.\d*)?)?")
_LATEX_FRAC = re.compile(r"(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_MAX_NUMBER_LEN = 200  # longer strings are not answers; also keeps Fraction() cheap


def to_number(text: str | None) -> Fraction | None:
    """Parse '1,000', '-3', '0.5', '3/4', '\\frac{3}{4}' exactly; None if not a plain number."""
    if not text or len(text) > _MAX_NUMBER_LEN:
        return None
    s = _THOUSANDS.sub("", text.replace("\\$", "").replace("$", "")).replace(" ", "")
    s = _LATEX_FRAC.sub(r"\1\2/\3", s).strip("{}")
    if not _NUMBER.fullmatch(s):
        return None
    num, _, den = s.partition("/")
    try:
        value = Fraction(num)
        return value / Fraction(den) if den else value
    except (ValueError, ZeroDivisionError):
        return None


def _numeric_equal(pred: str, gold: str) -> bool:
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return a == b
    return normalize_gold(pred) == gold


def _bad_row(response, gold, checker: str) -> Verdict | None:
    """Rows that can't be judged at all: missing/empty response or gold."""
    if not isinstance(gold, str) or not normalize_gold(gold):
        return Verdict(extract_answer(response) if isinstance(response, str) else None,
                       False, checker, "unparseable gold")
    if not isinstance(response, str) or not response.strip():
        return Verdict(None, False, checker, "empty response")
    return None


class _Closable:
    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_lengths(responses: list, golds: list) -> list:
    """Raise on mismatched lengths (a caller bug); return golds with numbers as text."""
    if len(responses) != len(golds):
        raise ValueError(f"got {len(responses)} responses but {len(golds)} golds")
    # Datasets often store numeric golds as int/float; anything else non-text is a bad row.
    return [str(g) if isinstance(g, (int, float, Fraction)) and not isinstance(g, bool) else g for g in golds]
