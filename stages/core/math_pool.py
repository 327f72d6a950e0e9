"""The `math` checker: math-verify in a persistent pool of worker processes with a hard per-check timeout.

math-verify (sympy underneath) can run for minutes on an adversarial answer and cannot be interrupted
inside a thread, so each check runs in a worker process that is killed and replaced when it overruns;
`stages.core.answers.make_checker("math")` builds one.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path

from stages.core.verdicts import (
    Verdict,
    _bad_row,
    _check_lengths,
    _Closable,
    _numeric_equal,
    extract_answer,
    normalize_gold,
    to_number,
)


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
