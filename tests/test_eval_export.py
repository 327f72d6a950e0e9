"""eval metrics (pass@k, maj@k, intervals, comparison) and the export formats."""

import json
import math

import pytest

from stages import eval as evaluation
from stages.core import artifacts
from stages.core.errors import GpoError
from stages.core.runner import run_stage
from stages.core.sources import load_problems
from stages.export import export
from tests.test_stages import run_chain


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
    base = {"label": "base", "per_problem": evaluation.per_problem_scores(a)}
    better = {"label": "new", "per_problem": evaluation.per_problem_scores(rows("p1", [1, 1, 0, 0])
                                                                            + rows("p2", [1, 1, 1, 0]))}
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


def test_trl_export_loads_with_trl_utilities(tmp_path, fake_generator, toy_tokenizer):
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import is_conversational, maybe_apply_chat_template, unpair_preference_dataset

    run_chain(tmp_path / "run", fake_generator)
    paths = export(tmp_path / "run", "trl", tmp_path / "trl")
    pref = datasets.load_dataset("parquet", data_files=str(paths[0]), split="train")
    assert len(pref) == len(artifacts.read_table(tmp_path / "run", "branch"))
    assert not is_conversational(pref[0])
    example = maybe_apply_chat_template(pref[0], toy_tokenizer)
    assert example["prompt"] == pref[0]["prompt"] and example["chosen"] == pref[0]["chosen"]
    unpaired = unpair_preference_dataset(pref)
    assert len(unpaired) == 2 * len(pref) and sum(unpaired["label"]) == len(pref)
    kto = datasets.load_dataset("parquet", data_files=str(paths[1]), split="train")
    assert set(kto.column_names) == {"prompt", "completion", "label"}


def test_verl_and_llamafactory_exports(tmp_path, fake_generator):
    import pyarrow.parquet as pq

    run_chain(tmp_path / "run", fake_generator)
    (verl,) = export(tmp_path / "run", "verl", tmp_path / "verl")
    row = pq.read_table(verl).to_pylist()[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["reward_model"]["ground_truth"] and row["prompt"][0]["role"] == "user"
    data_path, info_path = export(tmp_path / "run", "llamafactory", tmp_path / "lf")
    records = json.loads(data_path.read_text())
    info = json.loads(info_path.read_text())
    assert set(records[0]) == {"instruction", "input", "chosen", "rejected"}
    assert next(iter(info.values()))["ranking"] is True
    with pytest.raises(GpoError, match="format"):
        export(tmp_path / "run", "csv", tmp_path / "x")
