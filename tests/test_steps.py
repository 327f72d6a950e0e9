"""Step splitting on token ids: tricky sequences, the coverage property, spec parsing."""

import random

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from stages.core.method.steps import (
    AuthorsSplitter,
    ChunkSplitter,
    LineSplitter,
    RegexSplitter,
    authors_boundary_ids,
    cut_steps,
    make_splitter,
)

VOCAB = ["a", "b", "c", ".", " ", "\n", "\n\n", ".\n", ".\n\n", "", "x\ny", "42", "  "]
ID = {p: i for i, p in enumerate(VOCAB)}
NEWLINE_IDS = {ID["\n"], ID["\n\n"], ID[".\n"], ID[".\n\n"]}


def ids_of(pieces):
    return [ID[p] for p in pieces]


def texts(steps):
    return [s.text for s in steps]


def check_cover(steps, pieces):
    """The invariants every splitter keeps."""
    assert "".join(texts(steps)) == "".join(pieces)
    assert [s.index for s in steps] == list(range(len(steps)))
    expected_token, expected_char = 0, 0
    for s in steps:
        assert s.token_start == expected_token and s.token_end > s.token_start
        assert s.char_start == expected_char and s.char_end - s.char_start == len(s.text)
        assert s.text == "".join(pieces[s.token_start : s.token_end])
        expected_token, expected_char = s.token_end, s.char_end
    assert expected_token == len(pieces)
    if len(steps) > 1:  # whitespace-only steps only when the whole response is whitespace
        assert all(s.text.strip() for s in steps)


ALL_SPLITTERS = [
    LineSplitter(),
    AuthorsSplitter(NEWLINE_IDS, min_tokens=1, max_steps=None),
    RegexSplitter(r"\n"),
    ChunkSplitter(2),
]


# ---- tricky sequences --------------------------------------------------------------------------


@pytest.mark.parametrize("splitter", ALL_SPLITTERS, ids=lambda s: s.name)
def test_empty_response_has_no_steps(splitter):
    assert splitter.split([], []) == []


@pytest.mark.parametrize("splitter", ALL_SPLITTERS[:3], ids=lambda s: s.name)
def test_no_trailing_newline_makes_last_step(splitter):
    pieces = ["a", "\n", "b", "c"]
    steps = splitter.split(ids_of(pieces), pieces)
    assert texts(steps) == ["a\n", "bc"]
    assert (steps[1].token_start, steps[1].token_end, steps[1].char_start, steps[1].char_end) == (2, 4, 2, 4)


@pytest.mark.parametrize("splitter", ALL_SPLITTERS[:3], ids=lambda s: s.name)
def test_no_newline_at_all_is_one_step(splitter):
    pieces = ["a", "b", " ", "c"]
    assert texts(splitter.split(ids_of(pieces), pieces)) == ["ab c"]


@pytest.mark.parametrize("splitter", ALL_SPLITTERS[:3], ids=lambda s: s.name)
def test_consecutive_newlines_stay_with_the_step_they_end(splitter):
    pieces = ["a", "\n", "\n", "\n", "b", "\n", "\n"]
    steps = splitter.split(ids_of(pieces), pieces)
    assert texts(steps) == ["a\n\n\n", "b\n\n"]
    check_cover(steps, pieces)


def test_leading_whitespace_joins_first_step():
    pieces = ["\n", "\n", "a", "\n", "b"]
    assert texts(LineSplitter().split(ids_of(pieces), pieces)) == ["\n\na\n", "b"]


def test_whitespace_only_response_is_one_step():
    pieces = ["\n", " ", "\n"]
    assert texts(LineSplitter().split(ids_of(pieces), pieces)) == ["\n \n"]


def test_trailing_whitespace_and_empty_pieces_merge_into_previous_step():
    pieces = ["a", "\n", "b", "\n", "  ", ""]  # "" is how a skipped EOS decodes
    assert texts(LineSplitter().split(ids_of(pieces), pieces)) == ["a\n", "b\n  "]


def test_indentation_after_newline_starts_the_next_step():
    pieces = ["a", "\n", "  ", "b", "\n"]
    assert texts(LineSplitter().split(ids_of(pieces), pieces)) == ["a\n", "  b\n"]


def test_merged_newline_tokens_close_the_step():
    pieces = ["a", ".\n\n", "b", "x\ny", "c"]
    assert texts(LineSplitter().split(ids_of(pieces), pieces)) == ["a.\n\n", "bx\ny", "c"]


def test_very_long_single_step():
    pieces = ["a"] * 5000 + ["\n"]
    steps = LineSplitter().split(ids_of(pieces), pieces)
    assert len(steps) == 1 and steps[0].num_tokens == 5001


def test_line_max_steps_puts_the_rest_in_the_last_step():
    pieces = ["a", "\n", "b", "\n", "c", "\n", "42"]
    steps = LineSplitter(max_steps=2).split(ids_of(pieces), pieces)
    assert texts(steps) == ["a\n", "b\nc\n42"]
    assert texts(LineSplitter(max_steps=1).split(ids_of(pieces), pieces)) == ["a\nb\nc\n42"]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        LineSplitter().split([1, 2], ["a"])


# ---- the authors' rule ---------------------------------------------------------------------------


def test_authors_min_tokens_counts_the_tokens_before_the_boundary():
    # "a a" (2 tokens before its newline) reaches min 2; "b" (1 token) is too short and merges on
    pieces = ["a", "a", "\n", "b", "\n", "c", "c", ".\n", "42"]
    steps = AuthorsSplitter(NEWLINE_IDS, min_tokens=2, max_steps=30).split(ids_of(pieces), pieces)
    assert texts(steps) == ["aa\n", "b\ncc.\n", "42"]
    steps = AuthorsSplitter(NEWLINE_IDS, min_tokens=3, max_steps=30).split(ids_of(pieces), pieces)
    assert texts(steps) == ["aa\nb\n", "cc.\n", "42"]  # 4 tokens before the 2nd newline; the last always cuts


def test_authors_last_boundary_closes_a_step_however_short():
    pieces = ["a", "a", "a", "\n", "b", "\n", "c", "c"]
    steps = AuthorsSplitter(NEWLINE_IDS, min_tokens=3).split(ids_of(pieces), pieces)
    assert texts(steps) == ["aaa\n", "b\n", "cc"]


def test_authors_short_final_step_is_kept():
    pieces = ["a", "a", "a", "\n", "b"]
    steps = AuthorsSplitter(NEWLINE_IDS, min_tokens=3).split(ids_of(pieces), pieces)
    assert texts(steps) == ["aaa\n", "b"]


def test_authors_ignores_newlines_inside_other_tokens():
    pieces = ["a", "x\ny", "b", "\n\n", "c"]
    steps = AuthorsSplitter(NEWLINE_IDS, min_tokens=1).split(ids_of(pieces), pieces)
    assert texts(steps) == ["ax\nyb\n\n", "c"]


def test_authors_max_steps_cap():
    pieces = (["a"] * 3 + ["\n"]) * 10
    steps = AuthorsSplitter(NEWLINE_IDS, min_tokens=3, max_steps=3).split(ids_of(pieces), pieces)
    assert [s.num_tokens for s in steps] == [4, 4, 32]


def test_authors_defaults_match_the_paper_code():
    splitter = AuthorsSplitter({5})
    assert (splitter.min_tokens, splitter.max_steps) == (30, 30)
    pieces = (["a"] * 30 + ["\n"]) * 40  # 40 lines of exactly 30 tokens and a newline
    steps = splitter.split(ids_of(pieces), pieces)
    assert len(steps) == 30 and [s.num_tokens for s in steps[:29]] == [31] * 29
    assert steps[-1].num_tokens == 11 * 31
    short = (["a"] * 29 + ["\n"]) * 4  # 29 tokens before each newline: too short, pairs of lines merge
    assert [s.num_tokens for s in splitter.split(ids_of(short), short)] == [60, 60]


def authors_reference(token_ids, boundary_ids, min_length, max_steps):
    """The authors' loop (GPO code, go_and_explore), restated: [start, end] inclusive token spans.

    Walk the boundary tokens in order. Once max_steps - 1 steps exist, the rest is one step and the walk
    stops. A boundary closes the current step when the tokens before it number at least min_length, or
    when it is the last boundary; the step ends with the boundary. What is left after the walk is the
    last step, if there is room for it."""
    boundaries = [i for i, t in enumerate(token_ids) if t in boundary_ids]
    steps, start = [], 0
    for n, idx in enumerate(boundaries):
        if len(steps) >= max_steps - 1:
            steps.append((start, len(token_ids) - 1))
            break
        if idx - start < min_length and n < len(boundaries) - 1:
            continue
        steps.append((start, idx))
        start = idx + 1
    else:
        if start < len(token_ids) and len(steps) < max_steps:
            steps.append((start, len(token_ids) - 1))
    return steps


def test_authors_splitter_reproduces_the_authors_loop_on_random_sequences():
    """Equal spans wherever their loop makes no whitespace-only step (boundaries never adjacent, none first)."""
    rng = random.Random(7)
    boundaries, words = sorted(NEWLINE_IDS), [ID["a"], ID["b"], ID["42"]]
    for _ in range(2000):
        ids, gap = [], 0
        for _ in range(rng.randint(0, 300)):
            newline = ids and gap > 0 and rng.random() < rng.choice([0.03, 0.1, 0.3])
            ids.append(rng.choice(boundaries) if newline else rng.choice(words))
            gap = 0 if newline else gap + 1
        min_length, max_steps = rng.choice([(30, 30), (rng.randint(1, 40), rng.randint(1, 12))])
        pieces = [VOCAB[i] for i in ids]
        ours = AuthorsSplitter(NEWLINE_IDS, min_tokens=min_length, max_steps=max_steps).split(ids, pieces)
        theirs = authors_reference(ids, NEWLINE_IDS, min_length, max_steps)
        assert [(s.token_start, s.token_end - 1) for s in ours] == theirs, (ids, min_length, max_steps)


def _tiny_bpe() -> Tokenizer:
    """A hand-made BPE: "\\n\\n" and ".\\n" are tokens, ".\\n\\n" is not (it encodes as "." "\\n\\n")."""
    vocab = {p: i for i, p in enumerate(["a", "b", ".", " ", "\n", "\n\n", ".\n"])}
    return Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "\n"), (".", "\n")]))


def test_authors_boundary_ids_keeps_single_token_encodings():
    tok = _tiny_bpe()
    ids = authors_boundary_ids(tok)
    assert ids == {tok.token_to_id("\n"), tok.token_to_id("\n\n"), tok.token_to_id(".\n")}


def test_authors_boundary_ids_with_a_trained_transformers_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    # isolate newline runs (with a period before them) so that BPE can learn ".\n" and "\n\n"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\.?\n+"), behavior="isolated")
    corpus = ["a b.\n\nc.\nd\n\ne\n", "x = 1.\ny = 2.\n\n"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]"]))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    ids = authors_boundary_ids(hf)
    assert {hf.convert_ids_to_tokens(i) for i in ids} == {"\n", "\n\n", ".\n", ".\n\n"}
    # end to end: split on the tokenizer's own ids, never re-tokenized
    token_ids = hf.encode("a b.\n\nc.\nd\n\ne", add_special_tokens=False)
    pieces = [hf.decode([i]) for i in token_ids]
    steps = AuthorsSplitter(ids, min_tokens=1).split(token_ids, pieces)
    check_cover(steps, pieces)
    assert texts(steps) == ["a b.\n\n", "c.\n", "d\n\n", "e"]


# ---- regex and chunks ----------------------------------------------------------------------------


def test_regex_match_end_maps_to_the_next_token_boundary():
    pieces = ["Step", " 1", ": a", "b", " Step", " 2", ": c"]
    ids = list(range(len(pieces)))
    steps = RegexSplitter(r"b").split(ids, pieces)
    assert texts(steps) == ["Step 1: ab", " Step 2: c"]
    # a match ending inside a token cuts after that token
    steps = RegexSplitter(r"Step 1:").split(ids, pieces)
    assert texts(steps) == ["Step 1: a", "b Step 2: c"]


def test_regex_on_sentence_ends_with_min_tokens():
    pieces = ["A", ".", " B", ".", " C", " D", ".", " E"]
    ids = list(range(len(pieces)))
    assert texts(RegexSplitter(r"\.").split(ids, pieces)) == ["A.", " B.", " C D.", " E"]
    # "A." has 2 tokens, so the first cut waits for " B."
    assert texts(RegexSplitter(r"\.", min_tokens=3).split(ids, pieces)) == ["A. B.", " C D.", " E"]
    assert texts(RegexSplitter(r"\.", min_tokens=4).split(ids, pieces)) == ["A. B.", " C D. E"]


def test_regex_lookbehind_zero_width_match():
    pieces = ["a", "\n", "b"]
    assert texts(RegexSplitter(r"(?<=\n)").split([0, 1, 2], pieces)) == ["a\n", "b"]


@pytest.mark.parametrize(
    ("size", "n", "sizes"),
    [(1, 3, [1, 1, 1]), (2, 5, [2, 2, 1]), (4, 8, [4, 4]), (10, 3, [3]), (3, 0, [])],
)
def test_chunk_sizes(size, n, sizes):
    pieces = ["a"] * n
    assert [s.num_tokens for s in ChunkSplitter(size).split(ids_of(pieces), pieces)] == sizes


def test_chunk_trailing_whitespace_joins_previous_chunk():
    pieces = ["a", "b", "c", "\n", " "]
    assert texts(ChunkSplitter(2).split(ids_of(pieces), pieces)) == ["ab", "c\n "]


# ---- the coverage property on random input -------------------------------------------------------


def _random_splitter(rng):
    max_steps = rng.choice([None, 1, 2, 5])
    return rng.choice(
        [
            LineSplitter(max_steps=max_steps),
            AuthorsSplitter(NEWLINE_IDS, min_tokens=rng.randint(1, 6), max_steps=max_steps),
            RegexSplitter(rng.choice([r"\n", r"\.", r"b+", r"(?<=a)"]), rng.randint(1, 4), max_steps),
            ChunkSplitter(rng.randint(1, 7)),
        ]
    )


def test_random_inputs_keep_every_invariant():
    rng = random.Random(1234)
    for _ in range(3000):
        pieces = [rng.choice(VOCAB) for _ in range(rng.randint(0, 40))]
        splitter = _random_splitter(rng)
        steps = splitter.split(ids_of(pieces), pieces)
        assert (len(steps) == 0) == (len(pieces) == 0)
        check_cover(steps, pieces)
        if getattr(splitter, "max_steps", None):
            assert len(steps) <= splitter.max_steps
        if isinstance(splitter, AuthorsSplitter):  # tokens before each boundary; the last boundary always cuts
            assert all(s.num_tokens >= splitter.min_tokens + 1 for s in steps[:-2])
        else:
            assert all(s.num_tokens >= getattr(splitter, "min_tokens", 1) for s in steps[:-1])


def test_line_steps_end_on_newline_tokens_on_random_input():
    rng = random.Random(99)
    for _ in range(1000):
        pieces = [rng.choice(VOCAB) for _ in range(rng.randint(1, 30))]
        for step in LineSplitter().split(ids_of(pieces), pieces)[:-1]:
            assert "\n" in pieces[step.token_end - 1]


def test_cut_steps_ignores_out_of_range_and_duplicate_candidates():
    pieces = ["a", "b", "c"]
    assert texts(cut_steps(pieces, [0, 1, 1, 3, 7, -2])) == ["a", "bc"]


# ---- specs ---------------------------------------------------------------------------------------


def test_make_splitter_specs():
    tok = _tiny_bpe()
    authors = make_splitter("authors", tok)
    assert isinstance(authors, AuthorsSplitter) and (authors.min_tokens, authors.max_steps) == (30, 30)
    assert authors.boundary_ids == frozenset(authors_boundary_ids(tok))
    tuned = make_splitter("authors:min=31, max=10", tok)
    assert (tuned.min_tokens, tuned.max_steps) == (31, 10)
    assert make_splitter("line") == LineSplitter()
    assert make_splitter("line:max=4") == LineSplitter(max_steps=4)
    assert make_splitter("regex:\\n\\s*,:") == RegexSplitter("\\n\\s*,:")
    assert make_splitter("chunk:64") == ChunkSplitter(64)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown splitter"),
        ("lines", "unknown splitter"),
        ("authors", "needs the model's tokenizer"),
        ("line:min=3", "bad option"),
        ("line:max", "bad option"),
        ("line:max=x", "must be an integer"),
        ("chunk", "must be an integer"),
        ("chunk:0", "must be >= 1"),
        ("regex:", "needs a pattern"),
        ("regex:(", "bad step regex"),
    ],
)
def test_bad_specs_raise_one_line_value_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        make_splitter(spec)
    assert "\n" not in str(info.value).replace("\\n", "")


def test_authors_boundary_ids_drops_unknown_tokens_and_spec_refuses_none():
    unk = Tokenizer(models.WordLevel(vocab={"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    assert unk.encode("\n").ids == [1]  # one token, but the unknown one
    assert authors_boundary_ids(unk) == set()
    with pytest.raises(ValueError, match="no single-token newline"):
        make_splitter("authors:min=5", unk)
