"""The `reasoning-gym:` source passes every option of the dataset's config, typed by its dataclass."""

import importlib.util
import json

import pytest

from stages.core.pipeline.errors import GpoError
from stages.core.sources.problems import load_problems
from tests.helpers import fails_cleanly

pytestmark = pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None,
                                reason="reasoning-gym not installed")


def test_options_reach_reasoning_gym_with_their_types():
    spec = ("reasoning-gym:basic_arithmetic?size=12&seed=3&min_terms=3&max_terms=3&min_digits=1&max_digits=1"
            "&operators=+,-&allow_parentheses=false&allow_negation=false&format_style=simple")
    rows = load_problems(spec).table.to_pylist()
    assert len(rows) == 12
    for row in rows:
        meta = json.loads(row["meta"])
        assert meta["num_terms"] == 3 and meta["num_digits"] == 1
        expression = meta["expression"]
        assert "(" not in expression and "*" not in expression and "/" not in expression
        assert len(expression.split()) == 5  # three terms, two operators, no negative numbers
    # seed still decides the problems, and changes them
    again = load_problems(spec).table.to_pylist()
    other = load_problems(spec.replace("seed=3", "seed=4")).table.to_pylist()
    assert rows == again and [r["question"] for r in rows] != [r["question"] for r in other]


def test_chain_sum_difficulty_options():
    rows = load_problems("reasoning-gym:chain_sum?size=20&seed=1&min_terms=2&max_terms=2&min_digits=2"
                         "&max_digits=2").table.to_pylist()
    for row in rows:
        meta = json.loads(row["meta"])
        assert meta["num_terms"] == 2 and meta["num_digits"] == 2


@pytest.mark.parametrize("spec,match", [
    ("reasoning-gym:chain_sum?size=3&bogus=1", "no option 'bogus'"),
    ("reasoning-gym:chain_sum?min_terms=two", "is not an integer"),
    ("reasoning-gym:chain_sum?allow_negation=maybe", "is not a boolean"),
    ("reasoning-gym:basic_arithmetic?format_style=fancy", "must be one of simple, natural"),
    ("reasoning-gym:chain_sum?min_terms=0", "min_terms must be positive"),  # reasoning-gym's own validate()
])
def test_bad_option_names_the_valid_keys(spec, match):
    with pytest.raises(GpoError) as err:
        load_problems(spec)
    text = str(err.value)
    assert match in text and "\n" not in text
    # The valid keys come from the dataset's config dataclass, not from a list in gpo.
    for key in ("min_terms", "max_terms", "min_digits", "max_digits", "allow_negation", "size", "seed"):
        assert key in text


def test_unknown_dataset_is_one_line():
    with pytest.raises(GpoError, match="no such dataset"):
        load_problems("reasoning-gym:no_such_set?size=2")


def test_cli_bad_option_is_one_error_line(tmp_path, model_dir):  # noqa: F811
    fails_cleanly(["sample", "--problems", "reasoning-gym:chain_sum?size=2&max_term=3", "--model", model_dir,
                   "--run", tmp_path / "run"], "valid: min_terms, max_terms")
    assert not (tmp_path / "run" / "sample").exists()
