"""Answer extraction and checking behind one small interface.

`make_checker(name)` returns a `Checker` whose `check_many(responses, golds)` gives one
`Verdict` per row and never raises on a bad row:

- ``numeric``: exact/numeric comparison (ints, decimals, fractions, thousands commas);
- ``math``: math-verify's ``parse``/``verify`` run in a pool of spawned worker processes
  with a hard per-check timeout enforced by the caller (a stuck worker is killed and
  replaced), falling back to ``numeric`` when math-verify can't parse;
- ``choice``: multiple-choice letters A-J.

math_verify is imported only inside the workers so that importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Protocol

CHECKERS = ("numeric", "math", "choice")


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


# ----------------------------------------------------------------------------- math (workers)


def _math_verdict(response: str, gold: str) -> Verdict:
    """One math-verify check; runs inside a worker process."""
    from math_verify import parse, verify

    bad = _bad_row(response, gold, "math")
    if bad:
        return bad
    gold_norm = normalize_gold(gold)
    pred = extract_answer(response)
    # Wrapping in $...$ makes math-verify read LaTeX ('3\pi' alone parses as 3).
    gold_parsed = parse(f"${gold_norm}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None) if pred else []
    if not pred_parsed:
        pred_parsed = parse(response, parsing_timeout=None)
    if pred is None and pred_parsed:
        pred = str(pred_parsed[-1])
    if pred is None:
        return Verdict(None, False, "math", "no answer found")
    if not gold_parsed or not pred_parsed:
        # math-verify found nothing usable: plain numeric/string comparison instead.
        correct = _numeric_equal(pred, gold_norm)
        unparseable = not gold_parsed and not correct and to_number(gold_norm) is None
        return Verdict(pred, correct, "math", "unparseable gold" if unparseable else None)
    return Verdict(pred, bool(verify(gold_parsed, pred_parsed, timeout_seconds=None)), "math")


def _worker_main(fd: int) -> None:
    """Worker loop: receive a chunk of (index, response, gold), send one result per check."""
    import logging

    conn = Connection(fd)
    # math-verify warns once per process that its own timeout is off; the caller enforces one.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (import before 'ready' so startup isn't billed to a check)

    conn.send(("ready", None))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if chunk is None:
            return
        for index, response, gold in chunk:
            try:
                verdict = _math_verdict(response, gold)
            except Exception as exc:
                verdict = Verdict(None, False, "math", f"{type(exc).__name__}: {exc}")
            conn.send((index, verdict))


# A fresh interpreter rather than multiprocessing's spawn: spawn re-runs the caller's
# __main__ script, which breaks any script without an `if __name__ == "__main__"` guard.
_WORKER_CODE = "import sys; sys.path.insert(0, {root!r}); from {module} import _worker_main; _worker_main({fd})"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[__name__.count(".")])


class _Worker:
    """One worker process, its socket, and the chunk it is working through."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        with child:
            code = _WORKER_CODE.format(root=_PACKAGE_ROOT, module=__name__, fd=child.fileno())
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.conn = Connection(parent.detach())
        self.ready = False
        self.pending: deque = deque()
        self.deadline = float("inf")

    def assign(self, chunk: list, timeout_s: float, startup_s: float) -> None:
        self.pending = deque(chunk)
        try:
            self.conn.send(chunk)
        except OSError:
            pass  # the worker died; wait() sees EOF on its socket and replaces it
        self.deadline = time.monotonic() + (timeout_s if self.ready else startup_s + timeout_s)

    def stop(self, grace_until: float = 0.0) -> None:
        """Wait for the worker to exit until `grace_until` (monotonic), then kill it."""
        try:
            self.proc.wait(timeout=max(0.0, grace_until - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()  # reap, so no zombie is left behind
        self.conn.close()


def _stop_all(workers: list, grace_s: float = 1.0) -> None:
    """Ask every worker to exit, give them `grace_s` together, kill the rest, empty the list.

    Also registered to run at interpreter exit in case close() never was.
    """
    for worker in workers:
        try:
            worker.conn.send(None)
        except OSError:
            pass
    grace_until = time.monotonic() + grace_s
    while workers:
        workers.pop().stop(grace_until)


class MathChecker(_Closable):
    """math-verify in a persistent pool of spawned processes with a hard per-check timeout."""

    name = "math"

    def __init__(self, timeout_s: float = 5.0, workers: int | None = None,
                 chunk_size: int = 16, startup_s: float = 60.0) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise RuntimeError("the 'math' checker needs the math-verify package (pip install math-verify)")
        self.timeout_s, self.chunk_size, self.startup_s = timeout_s, max(1, chunk_size), startup_s
        self.n_workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._workers: list[_Worker] = []
        weakref.finalize(self, _stop_all, self._workers)

    def check_many(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        golds = _check_lengths(responses, golds)
        results: list[Verdict | None] = [None] * len(responses)
        todo = []
        for i, (response, gold) in enumerate(zip(responses, golds)):
            results[i] = _bad_row(response, gold, self.name)  # cheap rejects stay out of the pool
            if results[i] is None:
                todo.append((i, response, gold))
        if todo:
            try:
                self._run(todo, results)
            except BaseException:
                _stop_all(self._workers, grace_s=0)  # they hold this batch's work: never reuse them
                raise
        return results  # type: ignore[return-value]

    def _run(self, todo: list, results: list) -> None:
        for slot, worker in enumerate(self._workers):
            if worker.proc.poll() is not None:  # died while idle: replace it before it gets blamed
                worker.stop()
                self._workers[slot] = _Worker()
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker())
        size = min(self.chunk_size, -(-len(todo) // self.n_workers))
        queue = deque(todo[i:i + size] for i in range(0, len(todo), size))
        for worker in self._workers:
            if queue:
                worker.assign(queue.popleft(), self.timeout_s, self.startup_s)
        while any(w.pending for w in self._workers):
            busy = {w.conn: w for w in self._workers if w.pending}
            wait_s = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            for conn in wait(list(busy), timeout=wait_s):
                self._receive(busy[conn], results, queue)
            now = time.monotonic()
            for slot, worker in enumerate(self._workers):
                if worker.pending and now >= worker.deadline:
                    self._replace(slot, results, "timeout")

    def _receive(self, worker: _Worker, results: list, queue: deque) -> None:
        try:
            index, verdict = worker.conn.recv()
        except (EOFError, OSError):
            # The worker died (e.g. killed for memory): blame the check it was on.
            self._replace(self._workers.index(worker), results, "worker crashed")
            return
        if index == "ready":
            worker.ready = True
        else:
            results[index] = verdict
            worker.pending.popleft()
        worker.deadline = time.monotonic() + self.timeout_s
        if not worker.pending and queue:
            worker.assign(queue.popleft(), self.timeout_s, self.startup_s)

    def _replace(self, slot: int, results: list, error: str) -> None:
        """Kill a stuck or dead worker, fail its current check, hand the rest to a new one."""
        old = self._workers[slot]
        if not old.ready:  # an environment problem, not a bad row: retrying would only repeat it
            raise RuntimeError(f"math checker worker failed to start ({error})")
        index, response, _ = old.pending.popleft()
        results[index] = Verdict(extract_answer(response), False, self.name, error)
        old.stop()
        new = self._workers[slot] = _Worker()
        if old.pending:
            new.assign(list(old.pending), self.timeout_s, self.startup_s)

    def close(self) -> None:
        _stop_all(self._workers)


# ----------------------------------------------------------------------------- factory


def make_checker(name: str, *, timeout_s: float = 5.0, workers: int | None = None) -> Checker:
    """Build a checker by name; `timeout_s`/`workers` only matter for the process-pool 'math' checker."""
    if name == "numeric":
        return NumericChecker()
    if name == "choice":
        return ChoiceChecker()
    if name == "math":
        return MathChecker(timeout_s=timeout_s, workers=workers)
    raise ValueError(f"unknown checker {name!r}; valid names: {', '.join(CHECKERS)}")
