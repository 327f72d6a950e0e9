"""Progress you can watch within a chunk (sample, estimate, branch, eval) and during `gpo train`.

Items done / total, generated tokens per second and an ETA go to stderr, never to the artifacts:
a rich progress bar when stderr is a terminal; otherwise (Slurm logs, pipes) a plain line at most every
GPO_PROGRESS_EVERY seconds (default 30; 0 = on every update; `off` = never), without any `\\r`.
The libraries' own bars (transformers' weight loading, datasets' map, the Hub's downloads) are switched
off in logs with their own switches, so a log holds only lines.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

DEFAULT_EVERY_S = 30.0
_quiet = False  # --quiet: set once per command by the CLI (stages.core.pipeline.settings.Runtime.quiet)
# A share of cut responses above this is worth a warning: a few long outliers are normal, but one in ten
# cut means the budget is shaping the data (a cut response never reaches its answer, so it scores wrong).
TRUNCATION_WARN_SHARE = 0.10


def set_quiet(quiet: bool) -> None:
    """--quiet: no progress at all, on a terminal or in a log (GPO_PROGRESS_EVERY=off, and the libraries'
    bars off on a terminal too). Summaries and warnings still print."""
    global _quiet
    _quiet = bool(quiet)


def progress_every() -> float | None:
    """Seconds between plain progress lines (GPO_PROGRESS_EVERY); None when switched off (or --quiet)."""
    if _quiet:
        return None
    raw = os.environ.get("GPO_PROGRESS_EVERY", "").strip()
    if raw == "":
        return DEFAULT_EVERY_S
    if raw.lower() in ("off", "none", "never"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        # A display setting is not worth stopping a long job for: say so once a chunk and go on.
        logging.getLogger("gpo").warning(f"warning: GPO_PROGRESS_EVERY must be seconds >= 0 or 'off', not "
                                         f"{raw!r}; using {DEFAULT_EVERY_S:g}")
        return DEFAULT_EVERY_S
    return value


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def library_bars_off() -> bool:
    """Whether the libraries' own tqdm bars should be off: in a log (stderr not a terminal) or with --quiet."""
    return _quiet or not _console().is_terminal


def quiet_library_bars(datasets: bool = False) -> None:
    """In logs (stderr not a terminal), switch off transformers' and the Hub's tqdm bars (and datasets'),
    whose `\\r` redraws fill a Slurm log with one unreadable line. On a terminal they stay, unless --quiet."""
    if not library_bars_off():
        return
    # The environment reaches subprocesses too (a multiprocess vLLM engine loads the weights there).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' own bars and huggingface_hub's
    if datasets:
        import datasets as hf_datasets

        hf_datasets.disable_progress_bars()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Reporter:
    """One progress display: `start`, then `advance`/`update`, then `close` (also on errors)."""

    def __init__(self, label: str, unit: str = "sequences", *, console=None, terminal: bool | None = None):
        self.console = console or _console()
        self.terminal = self.console.is_terminal if terminal is None else terminal
        self.every = progress_every()
        self.label, self.unit = label, unit
        self.total = self.done = self.first = self.tokens = self.finished_tokens = 0
        self.budget = 0  # the most tokens one sequence may generate (max_new_tokens), when known
        self.note = ""
        self.started: float | None = None
        self._last_line, self._last_text = 0.0, ""
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    # --- what the callers say
    def start(self, total: int = 0, done: int = 0) -> None:
        """Begin timing (`done`: items already finished before this process, e.g. a resumed training)."""
        self.close()  # a restart (train learns a resumed step late) replaces the bar, never stacks one
        self.started = time.monotonic()
        self._last_line = self.started
        self.total, self.done, self.first, self.tokens, self.finished_tokens = total, done, done, 0, 0
        if self.terminal and self.every is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), console=self.console, transient=True)
            self._task = self._bar.add_task(self.label, total=total or None, completed=done, info="")
            self._bar.start()

    def grow(self, items: int, budget: int = 0) -> None:
        """More work became known (a stage may call the generator several times per chunk); `budget`: the
        most tokens one of these sequences may generate."""
        if self.started is None:
            self.start()
        self.total += items
        self.budget = max(self.budget, budget)
        self._show()

    def advance(self, items: int = 0, tokens: int = 0, finished_tokens: int = 0) -> None:
        """`items` sequences finished; `tokens` generated since the last call (by finished and running
        sequences alike); `finished_tokens`: the lengths of the sequences that just finished."""
        self.update(self.done + items, tokens=self.tokens + tokens,
                    finished_tokens=self.finished_tokens + finished_tokens)

    def update(self, done: int | None = None, *, total: int | None = None, tokens: int | None = None,
               finished_tokens: int | None = None, note: str | None = None) -> None:
        if self.started is None:
            self.start()
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if tokens is not None:
            self.tokens = tokens
        if finished_tokens is not None:
            self.finished_tokens = finished_tokens
        if note is not None:
            self.note = note
        self._show()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = self._task = None
        self.started = None

    # --- what is shown
    def rates(self) -> tuple[float | None, float | None]:
        """(generated tokens per second, seconds left) from this process's own tokens and time.

        Seconds left = the tokens still expected / the token rate, not sequences left x seconds per finished
        sequence: short sequences finish first, so that count made the ETA grow while long ones ran. A
        sequence is expected to be as long as the finished ones on average; once the running ones have
        passed that, as long as its budget (max_new_tokens). Items that are not sequences (train's steps)
        keep the count of finished items."""
        elapsed = time.monotonic() - (self.started if self.started is not None else time.monotonic())
        tok_s = self.tokens / elapsed if self.tokens and elapsed > 0 else None
        left = self.total - self.done
        if self.finished_tokens or self.budget:  # generation: count tokens
            if tok_s is None or left < 0:
                return tok_s, None
            made_done = self.done - self.first
            mean = self.finished_tokens / made_done if made_done > 0 and self.finished_tokens else self.budget
            running = max(self.tokens - self.finished_tokens, 0)  # generated by sequences not yet finished
            expected = left * mean - running
            if expected <= 0 and left > 0 and self.budget:
                expected = left * self.budget - running
            return tok_s, (max(expected, 0) / tok_s) if mean else None
        made = self.done - self.first
        eta = left * elapsed / made if made > 0 and left >= 0 else None
        return tok_s, eta

    def info(self) -> str:
        tok_s, eta = self.rates()
        parts = [f"{tok_s:,.0f} tok/s" if tok_s >= 10 else f"{tok_s:.2g} tok/s"] if tok_s is not None else []
        parts += [self.note] if self.note else []
        parts += [f"ETA {_duration(eta)}"] if eta is not None else []
        return ", ".join(parts)

    def line(self) -> str:
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        info = self.info()
        return f"{self.label}: {self.done}/{self.total or '?'} {self.unit}{share}" + (f", {info}" if info else "")

    def _show(self) -> None:
        if self.every is None:
            return
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, total=self.total or None, info=self.info())
            return
        now = time.monotonic()
        line = self.line()
        if line != self._last_text and now - self._last_line >= self.every:
            self._last_line, self._last_text = now, line
            self.console.print(line, markup=False)


class ChunkProgress:
    """The runner's reporter for one shard: one display per chunk, fed by the generator wrapper below."""

    def __init__(self, stage: str):
        self.stage = stage
        self.reporter: Reporter | None = None

    @contextmanager
    def chunk(self, k: int, num_chunks: int) -> Iterator[None]:
        self.reporter = Reporter(f"{self.stage} chunk {k + 1}/{num_chunks}")
        try:
            yield
        finally:
            self.reporter.close()
            self.reporter = None


class ReportingGenerator:
    """The generator as stages see it: every call counts its sequences and the ones cut at the token
    budget (finish_reason "length") into the chunk's stats, and reports progress. Everything else
    (tokenizer, describe, stats) is the backend's own."""

    def __init__(self, inner: Any, ctx: Any):
        self.inner, self.ctx = inner, ctx

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate(self, requests, sampling):
        progress: ChunkProgress | None = getattr(self.ctx, "progress", None)
        reporter = progress.reporter if progress is not None else None
        if reporter is not None:
            budget = max((r.max_new_tokens or sampling.max_new_tokens for r in requests), default=0)
            reporter.grow(sum(r.n for r in requests), budget or 0)
            done, tokens, finished = reporter.done, reporter.tokens, reporter.finished_tokens
        if hasattr(self.inner, "progress"):  # the backends report as each batch finishes
            self.inner.progress = reporter
        t0, c0 = time.time(), cpu_seconds()
        try:
            outputs = self.inner.generate(requests, sampling)
        finally:
            if hasattr(self.inner, "progress"):
                self.inner.progress = None
            spent = getattr(self.ctx, "backend_seconds", None)
            if spent is not None:  # the manifest's backend_seconds: the chunk's time inside the backend
                spent[0] += time.time() - t0
                spent[1] += cpu_seconds() - c0
        completions = [c for group in outputs for c in group]
        self.ctx.stats["generated_sequences"] += len(completions)
        self.ctx.stats["truncated_sequences"] += sum(c.finish_reason == "length" for c in completions)
        if reporter is not None:  # exact counts, whether or not the backend reported along the way
            made = sum(len(c.token_ids) for c in completions)
            reporter.update(done + len(completions), tokens=tokens + made, finished_tokens=finished + made)
        return outputs


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (checker pools, engine workers): the
    clock of the runner's chunk seconds and of backend_seconds."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


_OUTPUT_SPEED = re.compile(r"output: ([0-9.]+) toks/s")


class EngineBar:
    """What vLLM's `use_tqdm=<callable>` needs of a tqdm bar, forwarding finished requests to a Reporter.

    vLLM calls the factory twice: around an iterable of prompts (returned as it is) and for the engine's
    loop (`update(n)` per finished request, `postfix`, `format_dict['elapsed']`, `refresh`, `close`)."""

    def __init__(self, reporter: Reporter | None):
        self.reporter, self.n, self.postfix, self._t0 = reporter, 0, "", time.monotonic()
        self._elapsed, self._tokens = 0.0, 0

    @classmethod
    def factory(cls, reporter: Reporter | None):
        def make(iterable=None, *args, **kwargs):
            return iterable if iterable is not None else cls(reporter)
        return make

    @property
    def format_dict(self) -> dict:
        self._elapsed = max(time.monotonic() - self._t0, 1e-9)  # what vLLM divides its token count by
        return {"elapsed": self._elapsed}

    def update(self, n: int = 1) -> None:
        # vLLM sets postfix to "... output: <finished tokens / elapsed> toks/s" just before update(n): the
        # finished requests' tokens, which the ETA needs, are that rate times the elapsed it read.
        match = _OUTPUT_SPEED.search(self.postfix or "")
        tokens = round(float(match.group(1)) * self._elapsed) if match else self._tokens
        new, self._tokens = max(tokens - self._tokens, 0), max(tokens, self._tokens)
        self.n += n
        if self.reporter is not None:
            self.reporter.advance(n, tokens=new, finished_tokens=new)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def truncation_summary(stats: dict) -> tuple[str, str | None]:
    """(", truncated 12%" for the summary line, a warning or None) from a manifest's stats."""
    total, cut = stats.get("generated_sequences", 0), stats.get("truncated_sequences", 0)
    if not total and "truncated" in stats:  # a sample/eval manifest written before the generic counts
        total, cut = stats.get("trajectories", 0), stats["truncated"]
    if not total:
        return "", None
    share = cut / total
    text = f", truncated {share:.0%}" if share >= 0.01 or cut == 0 else f", truncated {share:.1%}"
    warning = None
    if share > TRUNCATION_WARN_SHARE:
        warning = (f"warning: {cut} of {total} generated responses ({share:.0%}) stopped at the token budget "
                   "before finishing (finish_reason = length); they score as wrong. Consider a larger "
                   "--max-new-tokens (docs/commands.md: 'Progress and --max-new-tokens').")
    return text, warning
