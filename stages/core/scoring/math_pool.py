"""The `math` checker: math-verify in a persistent pool of worker processes with a hard per-check timeout.

math-verify (sympy underneath) can run for minutes on an adversarial answer and cannot be interrupted
inside a thread, so each check runs in a worker process that is killed and replaced when it overruns;
`stages.core.scoring.answers.make_checker("math")` builds one.

The timeout counts the worker's CPU time, not the wall clock: on a busy machine a worker gets a fraction of
a core, and a wall-clock limit judged correct answers wrong depending on the load. A worker also warms up
(WARM_UP) before it counts as ready, since math-verify's first symbolic comparison in a process costs far
more than the later ones. A worker whose CPU time stops moving while it has work (stopped, blocked) for
STALL_S of wall time is replaced too, so nothing waits forever.
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
from typing import cast

from stages.core.scoring.verdicts import (
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


# Run by each worker before it counts as ready: math-verify loads sympy's machinery on first use. Measured
# in one process (CPU seconds): the first polynomial identity 0.74, then the issue's `(x+1)^2` 0.10, a first
# interval 0.11, set 0.19, trig identity 0.15; so one identity (and a fraction) is enough, and the pairs the
# tests check are not these, so they show the warm-up is general.
WARM_UP = ((r"\boxed{(y-1)(y+1)}", "y^2-1"), (r"\boxed{\frac{1}{2}}", "0.5"))
STALL_S = 60.0  # wall seconds a busy worker's CPU time may stand still before it is taken for hung


def _worker_main(fd: int) -> None:
    """Worker loop: receive a chunk of (index, response, gold), send one result per check, each with the
    worker's CPU time when it was sent (where the next check's CPU budget starts)."""
    import logging

    conn = Connection(fd)
    # math-verify warns once per process that its own timeout is off; the caller enforces one.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (import and warm up before 'ready': start-up isn't billed to a check)

    for response, gold in WARM_UP:
        _math_verdict(response, gold)
    conn.send(("ready", None, time.process_time()))
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
            conn.send((index, verdict, time.process_time()))


# A fresh interpreter rather than multiprocessing's spawn: spawn re-runs the caller's
# __main__ script, which breaks any script without an `if __name__ == "__main__"` guard.
_WORKER_CODE = "import sys; sys.path.insert(0, {root!r}); from {module} import _worker_main; _worker_main({fd})"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[__name__.count(".")])


class _Worker:
    """One worker process, its socket, the chunk it is working through, and the CPU budget of what it is
    doing now (start-up, then each check): `limit` CPU seconds from `start_cpu`."""

    def __init__(self, startup_s: float) -> None:
        import psutil

        parent, child = socket.socketpair()
        with child:
            code = _WORKER_CODE.format(root=_PACKAGE_ROOT, module=__name__, fd=child.fileno())
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.conn = Connection(parent.detach())
        try:
            self.ps: psutil.Process | None = psutil.Process(self.proc.pid)
        except psutil.Error:  # already gone: wait() sees EOF on its socket
            self.ps = None
        self.ready = False
        self.pending: deque = deque()
        self.start_cpu, self.limit = 0.0, startup_s
        self.seen_cpu, self.seen_at = 0.0, time.monotonic()

    def assign(self, chunk: list) -> None:
        self.pending = deque(chunk)
        self.seen_at = time.monotonic()  # idle until now: the stall clock starts with the work
        try:
            self.conn.send(chunk)
        except OSError:
            pass  # the worker died; wait() sees EOF on its socket and replaces it

    def started(self, cpu: float, timeout_s: float) -> None:
        """The worker reported (a result or 'ready') at CPU time `cpu`: its next check's budget starts there."""
        self.start_cpu, self.limit, self.seen_at = cpu, timeout_s, time.monotonic()

    def cpu(self) -> float | None:
        """User + system CPU seconds of the worker process so far; None once it is gone."""
        import psutil

        if self.ps is None:
            return None
        try:
            times = self.ps.cpu_times()
        except (psutil.Error, AttributeError):
            return None
        return times.user + times.system

    def overrun(self, now: float) -> bool:
        """Over its CPU budget, or its CPU time has not moved for STALL_S while it has work."""
        cpu = self.cpu()
        if cpu is None:
            return False  # exited: wait() reports EOF and the check is blamed as a crash
        if cpu > self.seen_cpu:
            self.seen_cpu, self.seen_at = cpu, now
        return cpu - self.start_cpu > self.limit or now - self.seen_at > STALL_S

    def wall_bound(self) -> float:
        """CPU time cannot pass faster than wall time: the budget left is the soonest it can run out."""
        return self.limit - (self.seen_cpu - self.start_cpu)

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
    """math-verify in a persistent pool of spawned processes with a hard per-check timeout of `timeout_s`
    seconds of the worker's CPU time (`startup_s` for a worker's import and warm-up)."""

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
                self._workers[slot] = _Worker(self.startup_s)
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker(self.startup_s))
        size = min(self.chunk_size, -(-len(todo) // self.n_workers))
        queue = deque(todo[i:i + size] for i in range(0, len(todo), size))
        for worker in self._workers:
            if queue:
                worker.assign(queue.popleft())
        while any(w.pending for w in self._workers):
            busy = {w.conn: w for w in self._workers if w.pending}
            # Wake when a budget could run out at the earliest, and at least each second to read CPU times.
            wait_s = min(1.0, max(0.02, min(w.wall_bound() for w in busy.values())))
            for conn in wait(list(busy), timeout=wait_s):
                self._receive(busy[cast(Connection, conn)], results, queue)
            now = time.monotonic()
            for slot, worker in enumerate(self._workers):
                if worker.pending and worker.overrun(now):
                    self._replace(slot, results, "timeout")

    def _receive(self, worker: _Worker, results: list, queue: deque) -> None:
        try:
            index, verdict, cpu = worker.conn.recv()
        except (EOFError, OSError):
            # The worker died (e.g. killed for memory): blame the check it was on.
            self._replace(self._workers.index(worker), results, "worker crashed")
            return
        if index == "ready":
            worker.ready = True
        else:
            results[index] = verdict
            worker.pending.popleft()
        worker.started(cpu, self.timeout_s)
        if not worker.pending and queue:
            worker.assign(queue.popleft())

    def _replace(self, slot: int, results: list, error: str) -> None:
        """Kill a stuck or dead worker, fail its current check, hand the rest to a new one."""
        old = self._workers[slot]
        if not old.ready:  # an environment problem, not a bad row: retrying would only repeat it
            raise RuntimeError(f"math checker worker failed to start ({error})")
        index, response, _ = old.pending.popleft()
        results[index] = Verdict(extract_answer(response), False, self.name, error)
        old.stop()
        new = self._workers[slot] = _Worker(self.startup_s)
        if old.pending:
            new.assign(list(old.pending))

    def close(self) -> None:
        _stop_all(self._workers)
