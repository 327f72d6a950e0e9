"""`gpo eval --probe`: teacher-forced gold-token probabilities, checked on a model whose logits are set by hand."""

import json
import math

import pyarrow as pa
import pytest

from stages.core.method import probe
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems

# Three hand-written problems; every gold line's result follows "=" or "answer:" in the toy vocabulary.
SOLUTIONS = ["a: 26 + 2 = 28\nanswer: 28", "a: 26 + 3 = 29\nanswer: 29", "a: 10 + 18 = 28\nanswer: 28"]


class KnownLogits:
    """A causal LM whose next-token logits depend only on the current token: all 0, except that after
    token `after` the logit of token `target` is `value` (bumps: after -> (target, value))."""

    def __init__(self, vocab: int, bumps: dict):
        self.vocab, self.bumps = vocab, bumps

    def __call__(self, input_ids):
        import torch

        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        for t, token in enumerate(input_ids[0].tolist()):
            if token in self.bumps:
                target, value = self.bumps[token]
                logits[0, t, target] = value
        return type("Out", (), {"logits": logits})()


class StubGenerator:  # what the probe uses of the transformers backend
    def __init__(self, tokenizer, model):
        self.tokenizer, self.model, self.device = tokenizer, model, "cpu"


def problem_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": f"start: {s.split()[1]}", "answer": s.split()[-1],
                                        "gold_solution": s}) + "\n" for s in SOLUTIONS))
    return str(path)


def run_probe(tmp_path, tokenizer, model, label, problems):
    table = load_problems(problems).table
    settings = probe.ProbeSettings(problems=problems, model="hand-built", label=label, template="plain")
    run_stage(probe.make_stage(label), tmp_path / "run", settings, input_table=table,
              make_generator=lambda: StubGenerator(tokenizer, model))
    return probe.write_summary(tmp_path / "run", label)


def ids(tokenizer, word):
    """The id of `word` as it appears inside a solution line (after a space) or at a line's start."""
    text = word if word.endswith(":") else f"a: {word}"
    return tokenizer(text, add_special_tokens=False)["input_ids"][-1]


def test_probe_gives_the_exact_probability_and_top_share_of_each_gold_result(tmp_path, toy_tokenizer):
    tok, vocab = toy_tokenizer, len(toy_tokenizer)
    eq, answer, n28, n29 = (ids(tok, w) for w in ("=", "answer:", "28", "29"))
    model = KnownLogits(vocab, {eq: (n28, 3.0), answer: (n29, 1.0)})
    summary = run_probe(tmp_path, tok, model, "hand", problem_file(tmp_path))
    # By hand: after "=" the softmax gives e^3/Z3 to "28" and 1/Z3 to any other token; after "answer:"
    # e/Z1 to "29" and 1/Z1 to the rest.
    z3, z1 = vocab - 1 + math.e ** 3, vocab - 1 + math.e
    expected = {  # problem -> [(p, top)] for its operation line and its answer line
        0: [(math.e ** 3 / z3, True), (1 / z1, False)],
        1: [(1 / z3, False), (math.e / z1, True)],
        2: [(math.e ** 3 / z3, True), (1 / z1, False)],
    }
    from stages.core.pipeline import artifacts

    rows = sorted(artifacts.read_table(tmp_path / "run", "probe_hand").to_pylist(),
                  key=lambda r: (r["problem_id"], r["line_idx"]))
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"line"}
    for r in rows:
        p, top = expected[int(r["problem_id"][-1])][r["line_idx"]]
        assert r["p_gold"] == pytest.approx(p, rel=1e-5) and r["top"] is top
    per_problem_p = [sum(p for p, _ in lines) / 2 for lines in expected.values()]
    entry = summary["kinds"]["line"]
    assert entry["problems"] == 3 and entry["lines"] == 6
    assert entry["p_gold"] == pytest.approx(sum(per_problem_p) / 3, rel=1e-5)
    sd = math.sqrt(sum((v - entry["p_gold"]) ** 2 for v in per_problem_p) / 2)  # clustered: problems are units
    assert entry["p_ci_high"] - entry["p_gold"] == pytest.approx(1.96 * sd / math.sqrt(3), rel=1e-4)
    assert entry["top_share"] == 0.5 and entry["top_ci_low"] == entry["top_ci_high"] == 0.5


def test_compare_pairs_two_models_per_problem(tmp_path, toy_tokenizer):
    tok, vocab = toy_tokenizer, len(toy_tokenizer)
    eq, n28 = ids(tok, "="), ids(tok, "28")
    src = problem_file(tmp_path)
    flat = run_probe(tmp_path, tok, KnownLogits(vocab, {}), "flat", src)
    sharp = run_probe(tmp_path, tok, KnownLogits(vocab, {eq: (n28, 3.0)}), "sharp", src)
    (row,) = probe.compare([flat, sharp])
    z3 = vocab - 1 + math.e ** 3
    # per problem: (operation line + answer line) / 2, sharp minus flat; the answer line is uniform in both
    diffs = [(math.e ** 3 / z3 - 1 / vocab) / 2, (1 / z3 - 1 / vocab) / 2, (math.e ** 3 / z3 - 1 / vocab) / 2]
    assert row["label"] == "sharp" and row["problems"] == 3
    assert row["p_diff"] == pytest.approx(sum(diffs) / 3, rel=1e-5)
    assert row["p_diff_low"] < row["p_diff"] < row["p_diff_high"]
    # flat: every token ties, so the gold one counts as top on every line; sharp: problem 1's "29" loses to 28
    assert row["top_diff"] == pytest.approx(-0.5 / 3)


def test_toy_kinds_come_from_the_task_and_sources_without_gold_are_skipped(tmp_path, toy_tokenizer):
    from stages.core.pipeline import artifacts
    from stages.core.sources import toy_borrow
    from stages.tools.toy_build import build_toy_tokenizer

    tok = build_toy_tokenizer("borrow")
    run_probe(tmp_path, tok, KnownLogits(len(tok), {}), "toy", "toy:borrow?n=3&split=test")
    rows = artifacts.read_table(tmp_path / "run", "probe_toy").to_pylist()
    for p in toy_borrow.problems(3, 0, "test"):
        kinds = [r["kind"] for r in sorted(rows, key=lambda r: r["line_idx"]) if r["problem_id"] == p["problem_id"]]
        assert kinds == [*toy_borrow.line_kinds(json.loads(p["meta"])), "answer"]
    no_gold = tmp_path / "plain.jsonl"
    no_gold.write_text(json.dumps({"question": "start: 3", "answer": "3"}) + "\n")
    table = load_problems(str(no_gold)).table
    ctx_rows = probe.process(table, type("Ctx", (), {
        "settings": probe.ProbeSettings(problems=str(no_gold), model="m", label="x", template="plain"),
        "generator": lambda self: StubGenerator(toy_tokenizer, KnownLogits(len(toy_tokenizer), {})),
        "stats": __import__("collections").Counter(), "stage": probe.make_stage("x")})())
    assert ctx_rows["probe_x"].num_rows == 0 and isinstance(ctx_rows["probe_x"], pa.Table)
    with pytest.raises(GpoError, match="--probe needs gold solutions"):
        probe.check_has_gold(table)


def test_eval_probe_on_a_source_without_gold_is_one_error_line_before_anything_runs(tmp_path):
    from typer.testing import CliRunner

    from gpo_cli.main import app

    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"question": "start: 3", "answer": "3"}) + "\n")
    result = CliRunner().invoke(app, ["eval", "--model", "data/toy-model", "--problems", str(path), "--run",
                                      str(tmp_path / "run"), "--probe"])
    assert result.exit_code != 0 and "error: --probe needs gold solutions" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~27 CPU-seconds: two greedy evaluations of the toy model
def test_gpo_eval_probe_writes_a_table_sql_reads_and_compare_pairs_it(tmp_path):
    """The CLI on the tiny toy model: eval --probe twice (the same model, so every paired difference is 0)."""
    from typer.testing import CliRunner

    from gpo_cli.main import app
    from stages.core.pipeline.query import run_query
    from stages.core.sources.toy_tasks import TASKS

    run, src = tmp_path / "run", "toy:arith?n=3&split=test"
    for label in ("a", "b"):
        result = CliRunner().invoke(app, ["eval", "--model", str(TASKS["arith"].model_dir), "--problems", src,
                                          "--run", str(run), "--label", label, "--temperature", "0", "--backend",
                                          "hf", "--max-new-tokens", "48", "--probe"])
        assert result.exit_code == 0, result.output
        assert "probe " + label in result.output and "operation" in result.output
    (lines, labels), = run_query(run, "select count(*), count(distinct label) from probes")[1]
    problems = load_problems(src).table.to_pylist()
    expected_lines = sum(len(json.loads(p["meta"])["ops"]) + 1 for p in problems)  # operations + answer
    assert (lines, labels) == (2 * expected_lines, 2)
    compared = CliRunner().invoke(app, ["eval", "--compare", str(run / "eval_a"), str(run / "eval_b")])
    assert compared.exit_code == 0, compared.output
    assert "probes against the first" in compared.output and "+0.000" in compared.output
