"""Cut a generated response into reasoning steps, on its token ids.

A step is a span ``[token_start, token_end)`` of the response's token ids. Splitting never
re-tokenizes text, so the prefix handed back to the generator (``token_ids[:step.token_start]``)
is exactly the tokens the model produced.

The caller decodes every token on its own: ``pieces[i]`` is the text of token ``i`` (decode with
``skip_special_tokens=True`` so that EOS and the like become ``""``). Char spans index into
``"".join(pieces)``, which for byte-level tokenizers may differ from decoding all ids at once
(a multi-byte character split over tokens shows as U+FFFD in each piece).

Rules shared by every splitter (see ``cut_steps``):
- steps are contiguous, non-overlapping and cover the response; their texts join to the response;
- an empty response has zero steps; text after the last boundary is the last step;
- no step is whitespace-only: whitespace after a boundary that runs up to the next boundary (or the
  end) stays with the step before it, so newlines belong to the step they end; whitespace at the very
  start joins the first step with content. A whitespace-only response is one step.

Splitters, from ``make_splitter(spec)``: ``authors[:min=30,max=30]`` (the authors' code, default for
real models), ``line[:max=N]``, ``regex:<pattern>``, ``chunk:<size>``.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, ClassVar, Protocol

# Each is encoded alone by the tokenizer; the ids that come out as one token are the boundaries.
AUTHORS_BOUNDARY_STRINGS = ("\n", "\n\n", ".\n", ".\n\n")


@dataclass(frozen=True)
class Step:
    index: int
    token_start: int  # [token_start, token_end) into the response's token ids
    token_end: int
    char_start: int  # [char_start, char_end) into "".join(pieces)
    char_end: int
    text: str

    @property
    def num_tokens(self) -> int:
        return self.token_end - self.token_start


class Splitter(Protocol):
    name: ClassVar[str]

    def split(self, token_ids: list[int], pieces: list[str]) -> list[Step]: ...


def cut_steps(
    pieces: Sequence[str],
    candidates: Iterable[int],
    *,
    min_tokens: int = 1,
    max_steps: int | None = None,
    always_cut: int | None = None,
) -> list[Step]:
    """Build steps from candidate cut positions (a cut at p ends a step after token p - 1).

    Candidates are taken greedily in order. A cut is kept when the step so far has at least
    ``min_tokens`` tokens (whatever its length at ``always_cut``) and some non-whitespace text, and the
    text up to the next candidate is not whitespace-only (else that whitespace would become its own
    step). After ``max_steps - 1`` cuts the rest of the response is the last step.
    """
    n = len(pieces)
    if n == 0:
        return []
    content = [0, *accumulate(1 if p.strip() else 0 for p in pieces)]  # content tokens in [0, i)
    positions = sorted({p for p in candidates if 0 < p < n})
    cuts: list[int] = []
    start = 0
    for j, p in enumerate(positions):
        if max_steps is not None and len(cuts) >= max_steps - 1:
            break
        following = positions[j + 1] if j + 1 < len(positions) else n
        long_enough = p - start >= min_tokens or p == always_cut
        if long_enough and content[p] > content[start] and content[following] > content[p]:
            cuts.append(p)
            start = p
    return _steps_from_bounds(pieces, [0, *cuts, n])


def _steps_from_bounds(pieces: Sequence[str], bounds: list[int]) -> list[Step]:
    char_ends = [0, *accumulate(len(p) for p in pieces)]
    return [
        Step(
            index=i,
            token_start=a,
            token_end=b,
            char_start=char_ends[a],
            char_end=char_ends[b],
            text="".join(pieces[a:b]),
        )
        for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
    ]


def _check_inputs(token_ids: Sequence[int], pieces: Sequence[str]) -> None:
    if len(token_ids) != len(pieces):
        raise ValueError(f"token_ids and pieces differ in length: {len(token_ids)} != {len(pieces)}")


def _check_limits(min_tokens: int, max_steps: int | None) -> None:
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")


@dataclass(frozen=True)
class AuthorsSplitter:
    """The authors' rule: a newline-ish token closes a step when at least ``min_tokens`` tokens precede it.

    As in the authors' code (``step_length = idx - current_step_start``), ``min_tokens`` counts the
    tokens before the boundary, not the boundary token itself (which belongs to the step it closes),
    the last boundary token of the response closes a step however short, and after ``max_steps - 1``
    steps the rest of the response is the last step. The one difference is the rule every splitter
    shares: no whitespace-only step (their loop makes one from, e.g., a lone last newline, or from a
    newline token right after a cut), so such whitespace joins the step before it.
    """

    boundary_ids: frozenset[int]
    min_tokens: int = 30
    max_steps: int | None = 30
    name: ClassVar[str] = "authors"

    def __post_init__(self) -> None:
        object.__setattr__(self, "boundary_ids", frozenset(self.boundary_ids))
        _check_limits(self.min_tokens, self.max_steps)

    def split(self, token_ids: list[int], pieces: list[str]) -> list[Step]:
        _check_inputs(token_ids, pieces)
        candidates = [i + 1 for i, t in enumerate(token_ids) if t in self.boundary_ids]
        # cut_steps counts the tokens of a step up to its cut, boundary included: one more than theirs
        return cut_steps(pieces, candidates, min_tokens=self.min_tokens + 1, max_steps=self.max_steps,
                         always_cut=candidates[-1] if candidates else None)


def authors_boundary_ids(tokenizer: Any) -> set[int]:
    """Ids of the AUTHORS_BOUNDARY_STRINGS that the tokenizer encodes as exactly one token.

    Works with a transformers tokenizer (``encode`` gives a list) or a ``tokenizers.Tokenizer``
    (``encode`` gives an Encoding). The authors' code takes the first id of each encoding instead,
    which turns "." into a boundary when ".\\n" is not a single token; we drop such strings, and
    ids that do not decode back to the string (an unknown-token id).
    """
    ids: set[int] = set()
    for text in AUTHORS_BOUNDARY_STRINGS:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        encoded = list(getattr(encoded, "ids", encoded))
        if len(encoded) == 1 and tokenizer.decode(encoded) == text:
            ids.add(int(encoded[0]))
    return ids


@dataclass(frozen=True)
class LineSplitter:
    """Every token whose text contains a newline ends a step (at that token's end).

    With BPE tokenizers newlines merge with other characters ("\\n\\n", ".\\n"); such a token still
    closes the step, and the whole token belongs to the step it closes.
    """

    max_steps: int | None = None
    name: ClassVar[str] = "line"

    def __post_init__(self) -> None:
        _check_limits(1, self.max_steps)

    def split(self, token_ids: list[int], pieces: list[str]) -> list[Step]:
        _check_inputs(token_ids, pieces)
        candidates = (i + 1 for i, p in enumerate(pieces) if "\n" in p)
        return cut_steps(pieces, candidates, max_steps=self.max_steps)


@dataclass(frozen=True)
class RegexSplitter:
    """A step ends at the first token boundary at or after the end of each regex match.

    Matches run over ``"".join(pieces)``; a match ending inside a token cuts after that token.
    """

    pattern: str
    min_tokens: int = 1
    max_steps: int | None = None
    name: ClassVar[str] = "regex"

    def __post_init__(self) -> None:
        _check_limits(self.min_tokens, self.max_steps)
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"bad step regex {self.pattern!r}: {exc}") from None

    def split(self, token_ids: list[int], pieces: list[str]) -> list[Step]:
        _check_inputs(token_ids, pieces)
        char_ends = list(accumulate(len(p) for p in pieces))  # char_ends[t]: end of token t
        text = "".join(pieces)
        # bisect_left finds the first token whose end reaches the match end
        candidates = (
            bisect_left(char_ends, m.end()) + 1 for m in re.finditer(self.pattern, text) if m.end() > 0
        )
        return cut_steps(pieces, candidates, min_tokens=self.min_tokens, max_steps=self.max_steps)


@dataclass(frozen=True)
class ChunkSplitter:
    """Fixed-size chunks of ``size`` tokens (a trailing whitespace-only chunk joins the one before)."""

    size: int
    name: ClassVar[str] = "chunk"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"chunk size must be >= 1, got {self.size}")

    def split(self, token_ids: list[int], pieces: list[str]) -> list[Step]:
        _check_inputs(token_ids, pieces)
        return cut_steps(pieces, range(self.size, len(pieces), self.size))


SPEC_HELP = "expected authors[:min=N,max=N], line[:max=N], regex:<pattern> or chunk:<size>"


def make_splitter(spec: str, tokenizer: Any = None) -> Splitter:
    """Build a splitter from a spec string such as ``authors:min=30,max=30`` or ``chunk:64``."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip()
    if kind == "regex":
        if not arg:
            raise ValueError(f"splitter {spec!r}: regex needs a pattern, as in regex:\\n+")
        return RegexSplitter(arg)
    if kind == "chunk":
        return ChunkSplitter(_parse_int(spec, "size", arg))
    if kind == "line":
        opts = _parse_options(spec, arg, {"max"})
        return LineSplitter(max_steps=opts.get("max"))
    if kind == "authors":
        opts = _parse_options(spec, arg, {"min", "max"})
        return _make_authors(spec, tokenizer, opts)
    raise ValueError(f"unknown splitter {spec!r}: {SPEC_HELP}")


def _make_authors(spec: str, tokenizer: Any, opts: dict[str, int]) -> AuthorsSplitter:
    if tokenizer is None:
        raise ValueError(f"splitter {spec!r} needs the model's tokenizer to find its newline tokens")
    ids = authors_boundary_ids(tokenizer)
    if not ids:
        raise ValueError(f"splitter {spec!r}: the tokenizer has no single-token newline; use line or regex")
    return AuthorsSplitter(frozenset(ids), min_tokens=opts.get("min", 30), max_steps=opts.get("max", 30))


def _parse_options(spec: str, arg: str, allowed: set[str]) -> dict[str, int]:
    opts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in arg.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise ValueError(f"splitter {spec!r}: bad option {item!r}, allowed: {', '.join(sorted(allowed))}")
        opts[key] = _parse_int(spec, key, value)
    return opts


def _parse_int(spec: str, what: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"splitter {spec!r}: {what} must be an integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"splitter {spec!r}: {what} must be >= 1, got {number}")
    return number


def splitter_spec(spec: str, source: str) -> str:
    """`auto`: the line rule for the toy task (one step per line), the authors' rule for real models."""
    if spec != "auto":
        return spec
    return "line" if source.startswith("toy:") else "authors"


def split_response(row: dict, split: str, tok, splitters: dict) -> tuple[str, list, list[str]]:
    """(splitter spec, steps, per-token text pieces) of a sample row; splitters caches one per spec."""
    spec = splitter_spec(split, row["source"])
    if spec not in splitters:
        splitters[spec] = make_splitter(spec, tok)
    ids = row["response_token_ids"]
    # batch_decode([]) returns one empty string, not none
    pieces = tok.batch_decode([[t] for t in ids], skip_special_tokens=True) if ids else []
    return spec, splitters[spec].split(ids, pieces), pieces
