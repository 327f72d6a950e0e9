"""sample -> estimate -> locate -> branch on the scripted toy policy, where the critical step is known."""

import pytest

from stages import branch, estimate, locate, sample
from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems
from tests.helpers import fails_cleanly, hard_line, parse_question, run_chain


def test_sample_rows_carry_exact_ids_and_rewards(toy_run, toy_tokenizer):
    rows = artifacts.read_table(toy_run, "sample").to_pylist()
    assert len(rows) == 6 * 4
    for r in rows:
        assert r["prompt_token_ids"] == toy_tokenizer(r["prompt_text"])["input_ids"]
        assert toy_tokenizer.decode(r["response_token_ids"]) == r["response_text"]
        assert r["reward"] == int(r["extracted_answer"] == r["gold_answer"])
        assert r["num_response_tokens"] == len(r["response_token_ids"])
    assert 0 < sum(r["reward"] for r in rows) < len(rows)


def test_estimate_values_and_locate_finds_the_constructed_critical_step(toy_run):
    steps = artifacts.read_table(toy_run, "estimate").to_pylist()
    failed = {(r["problem_id"], r["sample_idx"]) for r in artifacts.read_table(toy_run, "sample").to_pylist()
              if r["reward"] == 0}
    assert {(r["problem_id"], r["sample_idx"]) for r in steps} == failed
    for r in steps:
        assert r["n_rollouts"] == 16 and 0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1
        assert r["advantage"] == pytest.approx(r["value_next"] - r["value"])
    rollouts = artifacts.read_table(toy_run, "rollouts")
    own = [r for r in rollouts.to_pylist() if r["shared_from_sample"] is None]
    assert len(own) < len(rollouts)  # s_0 is shared by all samples of a problem

    located = artifacts.read_table(toy_run, "locate").to_pylist()
    assert len(located) == len(failed)
    samples = {(r["problem_id"], r["sample_idx"]): r for r in artifacts.read_table(toy_run, "sample").to_pylist()}
    for row in located:
        _, ops = parse_question(samples[(row["problem_id"], row["sample_idx"])]["question"])
        assert row["first_wrong_line"] == hard_line(ops)
        assert row["critical_step"] == hard_line(ops) and row["agrees"] is True
        assert row["advantage"] < 0 and row["value_after"] == 0.0


def test_branch_pairs_share_the_prefix_and_disagree(toy_run, toy_tokenizer):
    pairs = artifacts.read_table(toy_run, "branch").to_pylist()
    assert {p["data"] for p in pairs} == {"gpo", "baseline", "random-reset"}
    for p in pairs:
        assert (p["chosen_reward"], p["rejected_reward"]) == (1, 0)
        assert p["chosen"] != p["rejected"]
        if p["data"] == "gpo":
            prefix = p["chosen_token_ids"][:p["prefix_tokens"]]
            assert prefix == p["rejected_token_ids"][:p["prefix_tokens"]]
            assert toy_tokenizer.decode(p["chosen_token_ids"]) == p["chosen"]
    unpaired = artifacts.read_table(toy_run, "unpaired").to_pylist()
    assert len(unpaired) == 2 * len(pairs) and sum(u["label"] for u in unpaired) == len(pairs)
    resets = artifacts.read_table(toy_run, "reset_prompts").to_pylist()
    assert all(r["prompt_token_ids"][-1] == toy_tokenizer.convert_tokens_to_ids("\n") for r in resets)
    continuations = artifacts.read_table(toy_run, "continuations").to_pylist()
    gpo = [c for c in continuations if c["data"] == "gpo"]
    assert {c["origin"] for c in gpo} == {"rollout", "original"}  # K=16 >= M=8: nothing new sampled


def test_prefix_in_prompt_moves_the_prefix(tmp_path, fake_generator):
    run_chain(tmp_path, fake_generator, prefix="in-prompt")
    for p in artifacts.read_table(tmp_path, "branch").to_pylist():
        assert p["prefix_placement"] == "in-prompt"
        assert len(p["chosen_token_ids"]) == p["chosen_tokens"]
        assert p["prompt"].count("\n") == 1 + p["state_idx"]


def test_no_pair_when_outcomes_do_not_mix(tmp_path, fake_generator):
    problems = load_problems("toy:arith?n=3&seed=0&split=train").table
    gen = fake_generator(flip=lambda seed: True)  # every trajectory fails at the hard line
    run_stage(sample.STAGE, tmp_path, sample.SampleSettings(problems="toy", model="fake", n=2, max_new_tokens=64),
              input_table=problems, make_generator=lambda: gen)
    run_stage(estimate.STAGE, tmp_path, estimate.EstimateSettings(estimator="full", k=2), make_generator=lambda: gen)
    run_stage(locate.STAGE, tmp_path, locate.LocateSettings())
    manifest = run_stage(branch.STAGE, tmp_path, branch.BranchSettings(m=4), make_generator=lambda: gen)
    located = artifacts.read_table(tmp_path, "locate").to_pylist()
    assert all(r["critical_step"] is None and r["reason"] == "all_zero" for r in located)  # changepoint's
    assert manifest["rows"] == 0 and manifest["stats"]["no_critical_step"] == len(located)


@pytest.mark.parametrize("estimator,rule", [("adaptive", "abs-advantage"), ("bisect", "abs-advantage"),
                                            ("changepoint", "changepoint"), ("oracle", "oracle")])
def test_cheaper_estimators_find_the_same_step_with_fewer_rollouts(tmp_path, fake_generator, estimator, rule):
    run_chain(tmp_path / "full", fake_generator, k=8)
    run_chain(tmp_path / estimator, fake_generator, k=8 if estimator != "changepoint" else 2,
              estimator=estimator, rule=rule, budget=12)
    full = artifacts.load_json(tmp_path / "full" / "estimate" / "_shards" / "00000.json")["stats"]
    cheap = artifacts.load_json(tmp_path / estimator / "estimate" / "_shards" / "00000.json")["stats"]
    assert cheap["rollouts"] < full["rollouts"]
    agree = [r["agrees"] for r in artifacts.read_table(tmp_path / estimator, "locate").to_pylist()]
    assert sum(bool(a) for a in agree) >= 0.8 * len(agree)


@pytest.mark.parametrize("estimator,rule", [("full", "abs-advantage"), ("changepoint", "changepoint")])
def test_sharded_chain_equals_unsharded(tmp_path, fake_generator, estimator, rule):
    run_chain(tmp_path / "one", fake_generator, n_problems=8, baseline=True, estimator=estimator, rule=rule, k=2)
    run_chain(tmp_path / "three", fake_generator, n_problems=8, baseline=True, shards=3, estimator=estimator,
              rule=rule, k=2)
    for table in ("sample", "estimate", "rollouts", "locate", "branch", "unpaired", "reset_prompts"):
        one = artifacts.read_table(tmp_path / "one", table).to_pylist()
        three = artifacts.read_table(tmp_path / "three", table).to_pylist()
        key = lambda r: sorted((k, str(v)) for k, v in r.items())  # noqa: E731
        assert sorted(one, key=key) == sorted(three, key=key), table


def test_estimate_refuses_before_sample_finished(tmp_path):
    with pytest.raises(GpoError, match="has not finished"):
        run_stage(estimate.STAGE, tmp_path, estimate.EstimateSettings(estimator="full"))


def test_baseline_only_needs_no_estimate_and_honours_random_m(tmp_path, fake_generator):
    problems = load_problems("toy:arith?n=4&seed=0&split=train").table
    gen = fake_generator()
    run_stage(sample.STAGE, tmp_path, sample.SampleSettings(problems="toy", model="fake", n=4, max_new_tokens=64),
              input_table=problems, make_generator=lambda: gen)
    manifest = run_stage(branch.BASELINE_ONLY_STAGE, tmp_path, branch.BranchSettings(baseline=True, random_m=3),
                         make_generator=lambda: gen)
    pairs = artifacts.read_table(tmp_path, "branch").to_pylist()
    assert {p["data"] for p in pairs} <= {"baseline", "random-reset"} and pairs
    failed = sum(r["reward"] == 0 for r in artifacts.read_table(tmp_path, "sample").to_pylist())
    assert manifest["stats"]["random_reset_branches_sampled"] == 3 * failed
    assert not (tmp_path / "estimate").exists()


def test_changepoint_locate_writes_confidence_and_min_confidence_leaves_doubtful_ones_unlocated(tmp_path,
                                                                                               fake_generator):
    run_chain(tmp_path, fake_generator, k=2, estimator="full", rule="changepoint")
    rows = artifacts.read_table(tmp_path, "locate").to_pylist()
    assert all(r["rule"] == "changepoint" and 0 < r["confidence"] <= 1 for r in rows)
    cut = sorted(r["confidence"] for r in rows)[len(rows) // 2]
    manifest = run_stage(locate.STAGE, tmp_path, locate.LocateSettings(rule="changepoint", min_confidence=cut),
                         overwrite=True)
    again = {(r["problem_id"], r["sample_idx"]): r for r in artifacts.read_table(tmp_path, "locate").to_pylist()}
    for r in rows:
        b = again[(r["problem_id"], r["sample_idx"])]
        assert b["confidence"] == r["confidence"]
        if r["confidence"] < cut:
            assert b["critical_step"] is None and b["reason"] == "low_confidence"
        else:
            assert b["critical_step"] == r["critical_step"]
    assert manifest["stats"]["low_confidence"] == sum(r["confidence"] < cut for r in rows) > 0


def test_oracle_is_refused_on_a_task_without_known_first_wrong_lines(tmp_path, fake_generator):
    import json
    from pathlib import Path


    toy = load_problems("toy:arith?n=3&seed=0&split=train").table.to_pylist()
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"question": r["question"], "answer": r["gold_answer"]}) + "\n" for r in toy))
    run = tmp_path / "r"
    gen = fake_generator()
    model = str(Path(__file__).resolve().parent.parent / "data" / "toy-model")  # the CLI checks it exists first
    run_stage(sample.STAGE, run, sample.SampleSettings(problems=str(f), model=model, n=2, max_new_tokens=64),
              input_table=load_problems(str(f)).table, make_generator=lambda: gen)
    fails_cleanly(["estimate", "--run", run, "--estimator", "oracle"], "first wrong line")
    assert not (run / "estimate").exists()
    run_stage(estimate.STAGE, run, estimate.EstimateSettings(k=2, estimator="full"), make_generator=lambda: gen)
    fails_cleanly(["locate", "--run", run, "--rule", "oracle"], "first wrong line")
    assert not (run / "locate").exists()
