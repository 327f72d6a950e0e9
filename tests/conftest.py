"""Shared fixtures: the toy tokenizer and a scripted toy policy whose critical step is known by construction."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOY_MODEL = REPO / "data" / "toy-model"
_LINE = re.compile(r"([a-z]): (-?\d+) ([+-]) (\d+) = (-?\d+)")


@pytest.fixture(scope="session")
def toy_tokenizer():
    from stages.tools.toy_build import build_toy_tokenizer

    return build_toy_tokenizer()


def parse_question(question: str) -> tuple[int, list[tuple[str, str, int]]]:
    words = question.split()
    start = int(words[1])
    ops = [(words[i][0], words[i + 1], int(words[i + 2])) for i in range(2, len(words), 3)]
    return start, ops


def hard_line(ops) -> int:
    return len(ops) // 2


def toy_policy(tokenizer, flip=lambda seed: seed % 2 == 1):
    """Correct everywhere except the hard line (len(ops) // 2), wrong there when flip(seed): by
    construction V(s_i) is about 1/2 up to the hard line and 0 after a wrong one, so the critical step
    of every failed trajectory is the hard line."""
    def respond(prompt_ids, seed: int) -> str:
        text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
        question, _, done = text.partition("\n")
        start, ops = parse_question(question)
        done_lines = [line for line in done.split("\n") if line]
        value = int(_LINE.fullmatch(done_lines[-1]).group(5)) if done_lines else start
        lines = []
        for i in range(len(done_lines), len(ops)):
            label, op, digit = ops[i]
            result = value + digit if op == "+" else value - digit
            if i == hard_line(ops) and flip(seed):
                result += 1
            lines.append(f"{label}: {value} {op} {digit} = {result}")
            value = result
        lines.append(f"answer: {value}")
        return "\n".join(lines)
    return respond


@pytest.fixture
def fake_generator(toy_tokenizer):
    from stages.core.generation.backends import FakeGenerator

    def make(**kwargs):
        return FakeGenerator(toy_tokenizer, toy_policy(toy_tokenizer, **kwargs))
    return make


def gpo(*args) -> str:
    """Run a `gpo` command in-process as a user would; fail the test with its output if it fails."""
    from typer.testing import CliRunner

    from gpo_cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output
