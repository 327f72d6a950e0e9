"""Tests for the built-in toy task, its tokenizer and the committed data/toy-model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from stages.core.sources.toy import (
    NUM_MAX,
    NUM_MIN,
    first_wrong_line,
    noisy_solution,
    toy_problems,
    toy_prompt_text,
)

ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL = ROOT / "data" / "toy-model"


def _meta(question_start: int, ops: list[list]) -> str:
    return json.dumps({"start": question_start, "ops": ops})


# start 47: +5 -> 52, -3 -> 49, +8 -> 57
META = _meta(47, [["+", 5], ["-", 3], ["+", 8]])
GOOD = "a: 47 + 5 = 52\nb: 52 - 3 = 49\nc: 49 + 8 = 57\nanswer: 57"


# ---------------------------------------------------------------- problems


def test_splits_are_disjoint_and_ids_dense():
    train = toy_problems(3000, 0, "train")
    test = toy_problems(600, 0, "test")
    other_seed_test = toy_problems(600, 1, "test")
    train_q = {p["question"] for p in train}
    assert len(train_q) == len(train)
    assert not train_q & {p["question"] for p in test + other_seed_test}
    assert [p["problem_id"] for p in test[:2]] == ["toy-test-0000", "toy-test-0001"]


def test_problems_are_stable_and_prefix_independent():
    small, large = toy_problems(8, 0, "train"), toy_problems(40, 0, "train")
    assert small == large[:8]
    # A golden value: the stream must not change across processes or Python versions.
    assert small[7]["problem_id"] == "toy-train-0007"
    assert small[7]["question"] == "start: 13 a: - 6 b: - 6 c: - 8"
    assert small[7]["gold_solution"] == "a: 13 - 6 = 7\nb: 7 - 6 = 1\nc: 1 - 8 = -7\nanswer: -7"
    assert toy_problems(8, 1, "train") != small
    with pytest.raises(ValueError):
        toy_problems(1, 0, "dev")


def test_problem_fields_and_gold_solutions_check():
    for p in toy_problems(300, 3, "test"):
        meta = json.loads(p["meta"])
        assert 10 <= meta["start"] <= 99 and 3 <= len(meta["ops"]) <= 5
        assert p["gold_solution"].endswith(f"answer: {p['gold_answer']}")
        assert first_wrong_line(p["meta"], p["gold_solution"]) is None
        assert not p["gold_solution"].endswith("\n")


# ---------------------------------------------------------------- first_wrong_line


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (GOOD, None),
        (GOOD + "\n", None),  # trailing blank line is harmless
        ("a: 47 + 5 = 52\nb: 52 - 3 = 48\nc: 48 + 8 = 56\nanswer: 56", 1),  # arithmetic
        ("a: 47 + 5 = 53\nb: 53 - 3 = 50\nc: 50 + 8 = 58\nanswer: 58", 0),
        ("a: 47 + 5 = 52\nb: 52 - 3 = 49\nc: 49 + 8 = 57\nanswer: 58", 3),  # wrong answer
        ("a: 47 + 5 = 52\nb: 52 - 3 = 49\nc: 49 + 8 = 57", 3),  # missing answer
        ("a: 47 + 5 = 52\nb: 52 - 3 = 49\nc: 49 + 8 = 57\n", 3),  # empty line, no answer
        ("a: 47 + 5 = 52\nb: 52 - 3 = 49", 2),  # stops early
        ("a: 47 + 5 = 52\nb: 52 - 3 49\nc: 49 + 8 = 57\nanswer: 57", 1),  # malformed
        ("a: 47 + 5 = 52\nc: 52 - 3 = 49\nc: 49 + 8 = 57\nanswer: 57", 1),  # wrong label
        ("a: 47 + 5 = 52\nb: 52 + 3 = 55\nc: 55 + 8 = 63\nanswer: 63", 1),  # wrong operation
        ("a: 47 + 5 = 52\nb: 51 - 3 = 48\nc: 48 + 8 = 56\nanswer: 56", 1),  # wrong operand
        ("answer: 57", 0),  # skips the work
        (GOOD + "\nanswer: 58", 4),  # extra line after the answer
        ("", 0),
    ],
)
def test_first_wrong_line(response, expected):
    assert first_wrong_line(META, response) == expected


# ---------------------------------------------------------------- noisy_solution


def test_noisy_solution_errors_propagate():
    rng = random.Random(5)
    for p in toy_problems(50, 0, "train"):
        lines = noisy_solution(p, rng, error_rate=1.0).split("\n")
        assert first_wrong_line(p["meta"], "\n".join(lines)) == 0
        results = [int(line.rsplit(" ", 1)[1]) for line in lines]
        for prev, line in zip(results, lines[1:-1]):
            assert int(line.split()[1]) == prev  # continues from the wrong value
        assert lines[-1] == f"answer: {results[-2]}"
        assert all(NUM_MIN <= r <= NUM_MAX for r in results)


def test_noisy_solution_error_rate():
    rng = random.Random(0)
    problems = toy_problems(2000, 0, "train")
    assert all(noisy_solution(p, rng, 0.0) == p["gold_solution"] for p in problems[:100])
    n_lines = n_wrong = 0
    for p in problems:
        meta = json.loads(p["meta"])
        value = meta["start"]
        for (op, d), line in zip(meta["ops"], noisy_solution(p, rng).split("\n")):
            result = int(line.rsplit(" ", 1)[1])
            true = value + d if op == "+" else value - d
            n_lines += 1
            n_wrong += result != true
            assert result - true in (0, -10, -2, -1, 1, 2, 10)
            value = result
    assert 0.10 < n_wrong / n_lines < 0.14


# ---------------------------------------------------------------- tokenizer


def _check_tokenizer(tok):
    nl = tok.convert_tokens_to_ids("\n")
    assert nl != tok.unk_token_id
    assert tok("\n", add_special_tokens=False).input_ids == [nl]
    assert tok.chat_template is None
    rng = random.Random(1)
    for p in toy_problems(300, 0, "test") + toy_problems(300, 0, "train"):
        prompt = toy_prompt_text(p["question"])
        for text in (prompt, p["gold_solution"], noisy_solution(p, rng, 0.5)):
            ids = tok(text, add_special_tokens=False).input_ids
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
        prompt_ids = tok(prompt).input_ids
        assert prompt_ids[0] == tok.bos_token_id and prompt_ids[-1] == nl
        body = tok(p["gold_solution"], add_special_tokens=False).input_ids
        # The training concatenation is the same as tokenizing the whole text at once.
        assert prompt_ids + body == tok(prompt + p["gold_solution"]).input_ids
        assert body.count(nl) == p["gold_solution"].count("\n")


def test_built_tokenizer_round_trips():
    from stages.tools.toy_build import build_toy_tokenizer

    _check_tokenizer(build_toy_tokenizer())


def test_committed_tokenizer_round_trips():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOY_MODEL)
    _check_tokenizer(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")


# ---------------------------------------------------------------- model


def test_committed_model_loads_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOY_MODEL)
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL)
    cfg = model.config
    assert cfg.head_dim >= 32 and cfg.tie_word_embeddings and cfg.vocab_size == len(tok)
    assert sum(f.stat().st_size for f in TOY_MODEL.iterdir()) < 10_000_000
    assert "gpo toy build --task arith --out data/toy-model" in (TOY_MODEL / "README.md").read_text()
    n_correct = 0
    for p in toy_problems(8, 0, "test"):
        ids = torch.tensor([tok(toy_prompt_text(p["question"])).input_ids])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=48, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert text.startswith("a: ")
        n_correct += first_wrong_line(p["meta"], text) is None
    assert n_correct >= 1  # greedy accuracy is measured at well above 1/8 in README.md


def test_build_toy_model_smoke(tmp_path):
    from transformers import AutoModelForCausalLM

    from stages.tools.toy_build import build_toy_model

    metrics = build_toy_model(tmp_path / "m", steps=2, eval_n=4, log_every=1)
    assert set(metrics["greedy"]) >= {"accuracy", "answer_accuracy"}
    assert (tmp_path / "m" / "README.md").exists()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.num_hidden_layers == 4
