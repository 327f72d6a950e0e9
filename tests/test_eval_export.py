"""eval metrics (pass@k, maj@k, intervals, comparison); the export formats are in test_export.py."""

import json
import math

import pytest

from stages import eval as evaluation
from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems


@pytest.mark.parametrize("n,c,k", [(8, 0, 1), (8, 3, 1), (8, 3, 4), (8, 8, 4), (5, 2, 5), (10, 1, 3)])
def test_pass_at_k_matches_the_closed_form(n, c, k):
    # Probability that at least one of k draws without replacement from n (c correct) is correct.
    expected = 1 - math.prod((n - c - i) / (n - i) for i in range(k)) if n - c >= k else 1.0
    assert evaluation.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_1_is_the_mean():
    assert evaluation.pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_maj_at_k_votes_on_answers():
    answers = [("5", 0), ("7", 1), ("7", 1), ("5", 0), ("5", 0)]
    assert evaluation.maj_at_k(answers, 3) == 1.0
    assert evaluation.maj_at_k(answers, 5) == 0.0
    assert evaluation.maj_at_k([(None, 0)], 1) == 0.0


def rows(pid, rewards, mode="sampled", source="toy:arith"):
    return [{"problem_id": pid, "sample_idx": i, "reward": r, "mode": mode, "source": source,
             "extracted_answer": str(r), "num_response_tokens": 10} for i, r in enumerate(rewards)]


def test_summary_and_comparison():
    a = rows("p1", [1, 0, 0, 0]) + rows("p2", [1, 1, 0, 0])
    s = evaluation.summarize(a, ks=(1, 4))["sampled"]["toy:arith"]
    assert s["pass@1"] == pytest.approx(0.375) and s["ci_low"] < 0.375 < s["ci_high"]
    assert s["pass@4"] == pytest.approx(1.0)
    base = {"label": "base", "per_problem": evaluation.per_problem_scores(a), "questions": {"p1": "a", "p2": "b"}}
    better = {"label": "new", "per_problem": evaluation.per_problem_scores(rows("p1", [1, 1, 0, 0])
                                                                            + rows("p2", [1, 1, 1, 0])),
              "questions": {"p1": "a", "p2": "b"}}
    cmp = {r["label"]: r for r in evaluation.compare([base, better])}
    assert cmp["base"]["diff"] == 0.0 and cmp["new"]["diff"] == pytest.approx(0.25)


def test_eval_stage_writes_greedy_and_sampled_rows(tmp_path, fake_generator):
    problems = load_problems("toy:arith?n=5&seed=0&split=test").table
    gen = fake_generator()
    settings = evaluation.EvalSettings(problems="toy", model="fake", n=4, temperature=1.0, label="base",
                                       max_new_tokens=64)
    run_stage(evaluation.make_stage("base"), tmp_path, settings, input_table=problems, make_generator=lambda: gen)
    summary = evaluation.write_summary(tmp_path, "base", (1, 4))
    table = artifacts.read_table(tmp_path, "eval_base").to_pylist()
    assert len(table) == 5 * 4 + 5 and {r["mode"] for r in table} == {"greedy", "sampled"}
    sampled = [r for r in table if r["mode"] == "sampled"]
    assert summary["modes"]["sampled"]["toy:arith"]["pass@1"] == pytest.approx(
        sum(r["reward"] for r in sampled) / len(sampled))
    assert json.loads((tmp_path / "eval_base" / "summary.json").read_text())["label"] == "base"


def test_bad_label_is_refused():
    with pytest.raises(GpoError, match="label"):
        evaluation.make_stage("a/b")


def test_compare_refuses_evaluations_of_other_questions_under_the_same_problem_ids(tmp_path):
    """Issue 21.6: borrow-test-0000 under seed=1 and under seed=2 are two different questions."""
    from typer.testing import CliRunner

    from gpo_cli.main import app
    from stages.core.generation.backends import FakeGenerator
    from stages.tools.toy_build import build_toy_tokenizer

    gen = FakeGenerator(build_toy_tokenizer("borrow"), lambda ids, seed: "answer: 0")
    for label, seed in [("s1", 1), ("s2", 2), ("s1-again", 1)]:
        source = f"toy:borrow?n=4&seed={seed}&split=test"
        problems = load_problems(source).table
        settings = evaluation.EvalSettings(problems=source, model="fake", label=label, max_new_tokens=16)
        run_stage(evaluation.make_stage(label), tmp_path, settings, input_table=problems, make_generator=lambda: gen)
        evaluation.write_summary(tmp_path, label, (1,))
    ids = [set(artifacts.read_table(tmp_path, f"eval_{x}").column("problem_id").to_pylist()) for x in ("s1", "s2")]
    assert ids[0] == ids[1]  # the same ids, as the issue found them
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "eval_s1"), str(tmp_path / "eval_s2")])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "different" in errors[0], result.output
    same = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "eval_s1"), str(tmp_path / "eval_s1-again")])
    assert same.exit_code == 0 and "s1-again" in same.output, same.output
