"""Answer extraction and checking behind one small interface.

`make_checker(name)` returns a `Checker` whose `check_many(responses, golds)` gives one
`Verdict` per row and never raises on a bad row:

- ``numeric``: exact/numeric comparison (ints, decimals, fractions, thousands commas);
- ``math``: math-verify's ``parse``/``verify`` run in a pool of worker processes (math_pool.py)
  with a hard per-check timeout enforced by the caller (a stuck worker is killed and
  replaced), falling back to ``numeric`` when math-verify can't parse;
- ``choice``: multiple-choice letters A-J.

math_verify is imported only inside the workers so that importing this module stays cheap.
"""

from __future__ import annotations

import re

from stages.core.scoring.verdicts import (  # noqa: F401  (extraction is part of this module's interface: re-exported)
    Checker,
    Verdict,
    _bad_row,
    _check_lengths,
    _Closable,
    _numeric_equal,
    extract_answer,
    gsm8k_gold,
    normalize_gold,
    to_number,
)

CHECKERS = ("numeric", "math", "choice")


class _InProcessChecker(_Closable):
    """Base for checkers cheap and safe enough to run in the caller's process."""

    name = ""

    def check_one(self, response: str, gold: str) -> Verdict:
        raise NotImplementedError

    def check_many(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        golds = _check_lengths(responses, golds)
        out = []
        for response, gold in zip(responses, golds):
            try:
                out.append(self.check_one(response, gold))
            except Exception as exc:  # a bad row must never take down a whole batch
                out.append(Verdict(None, False, self.name, f"{type(exc).__name__}: {exc}"))
        return out


class NumericChecker(_InProcessChecker):
    name = "numeric"

    def check_one(self, response: str, gold: str) -> Verdict:
        bad = _bad_row(response, gold, self.name)
        if bad:
            return bad
        pred = extract_answer(response)
        if pred is None:
            return Verdict(None, False, self.name, "no answer found")
        return Verdict(pred, _numeric_equal(pred, normalize_gold(gold)), self.name)


# ----------------------------------------------------------------------------- choice

_LETTER = re.compile(r"^\(?([A-J])\)?(?:[.):,]|\s|$)")
_LONE_LETTER = re.compile(r"^\(?([A-Ja-j])\)?\.?$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")


def extract_choice(text: str | None) -> str | None:
    """A letter A-J at the start of the extracted answer; lowercase only when it stands alone."""
    if not text:
        return None
    s = _TEXT_WRAP.sub(r"\1", text).strip()
    m = _LONE_LETTER.match(s) or _LETTER.match(s)
    return m.group(1).upper() if m else None


class ChoiceChecker(_InProcessChecker):
    name = "choice"

    def check_one(self, response: str, gold: str) -> Verdict:
        bad = _bad_row(response, gold, self.name)
        if bad:
            return bad
        gold_letter = extract_choice(normalize_gold(gold))
        pred = extract_answer(response)
        if gold_letter is None:
            return Verdict(pred, False, self.name, "unparseable gold")
        if pred is None:
            return Verdict(None, False, self.name, "no answer found")
        letter = extract_choice(pred)
        if letter is None:
            return Verdict(pred, False, self.name, "no choice letter found")
        return Verdict(letter, letter == gold_letter, self.name)


# ----------------------------------------------------------------------------- summaries


def timeout_summary(stats: dict) -> tuple[str, str | None]:
    """(", check timeouts 0/120" for a stage's summary line, a warning or None) from a manifest's stats."""
    checks, timeouts = stats.get("answer_checks", 0), stats.get("check_timeouts", 0)
    if not checks:
        return "", None
    warning = None if not timeouts else (
        f"warning: {timeouts} of {checks} answer checks ran over GPO_CHECK_TIMEOUT_S (CPU seconds of the "
        "checker's worker) and were judged wrong; see verdict_error = 'timeout' in the stage's rows")
    return f", check timeouts {timeouts}/{checks}", warning


# ----------------------------------------------------------------------------- factory


def make_checker(name: str, *, timeout_s: float = 5.0, workers: int | None = None) -> Checker:
    """Build a checker by name; `timeout_s`/`workers` only matter for the process-pool 'math' checker."""
    if name == "numeric":
        return NumericChecker()
    if name == "choice":
        return ChoiceChecker()
    if name == "math":  # imported here, not at the top: the pool is needed only by the math checker
        from stages.core.scoring.math_pool import MathChecker

        return MathChecker(timeout_s=timeout_s, workers=workers)
    raise ValueError(f"unknown checker {name!r}; valid names: {', '.join(CHECKERS)}")
