"""`gpo diagnose`: statistics on hand-built runs whose answer is known, and on the real chain."""

import json
import random

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from stages.tools.diagnose_headline import headline
from gpo_cli.main import app
from stages import branch, locate
from stages.core.pipeline import artifacts
from stages.core.generation.sampling import SAMPLE_SCHEMA
from stages.core.sources.toy import toy_problems
from stages.tools import diagnose
from tests.helpers import gpo, run_chain, toy_policy

NUM_STEPS = 8


def sample_row(pid: str, idx: int, reward: int, text: str = "", ids=(), source: str = "hand", meta: str = "{}",
               finish: str = "stop") -> dict:
    return {"problem_id": pid, "sample_idx": idx, "question": "q", "gold_answer": "1", "source": source,
            "checker": "numeric", "meta": meta, "prompt_text": "q\n", "prompt_token_ids": [1, 2],
            "response_text": text, "response_token_ids": list(ids), "finish_reason": finish,
            "num_prompt_tokens": 2, "num_response_tokens": len(ids), "extracted_answer": None, "reward": reward,
            "verdict_checker": "numeric", "verdict_error": None, "model": "hand", "seed": 0}


def locate_row(pid: str, idx: int, step: int | None, advantage: float = -0.5, prefix_tokens: int = 2) -> dict:
    return {"problem_id": pid, "sample_idx": idx, "rule": "abs-advantage", "critical_step": step,
            "reason": "max_abs_advantage" if step is not None else "all_zero", "num_steps": NUM_STEPS,
            "advantage": advantage if step is not None else None, "value_before": None, "value_after": None,
            "relative_position": None if step is None else step / NUM_STEPS, "prefix_tokens": prefix_tokens,
            "reward": 0,
            "first_wrong_line": None, "agrees": None, "estimator": "full"}


def write_table(run, folder: str, rows: list[dict], schema: pa.Schema) -> None:
    artifacts.write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), run / folder / "part-0.parquet", {})
    if "/" not in folder:
        artifacts.write_json_atomic(run / folder / "_SUCCESS", {})


def hand_run(run, pick_step, problems: int = 30, failed: int = 6, seed: int = 0, shared_prefix: bool = False):
    """`failed` failed samples (and 2 correct ones) per problem; pick_step(rng, problem) gives a critical step.

    Each sample's first 2 tokens (its critical state's prefix) are its own unless shared_prefix."""
    rng = random.Random(seed)
    samples, located = [], []
    for p in range(problems):
        pid = f"p{p:03d}"
        trap = rng.randrange(NUM_STEPS)
        for i in range(failed + 2):
            samples.append(sample_row(pid, i, int(i >= failed), ids=[p, 0 if shared_prefix else i, 5]))
            if i < failed:
                located.append(locate_row(pid, i, pick_step(rng, trap)))
    write_table(run, "sample", samples, SAMPLE_SCHEMA)
    write_table(run, "locate", located, locate.LOCATE_SCHEMA)
    return run


def repeatable(rng, trap):
    return trap if rng.random() < 0.9 else rng.randrange(NUM_STEPS)


def noise(rng, trap):
    return rng.randrange(NUM_STEPS)


def test_repeatable_errors_stand_far_above_the_shuffled_null_and_noise_does_not(tmp_path):
    rep = diagnose.diagnose(hand_run(tmp_path / "rep", repeatable), permutations=100)
    noisy = diagnose.diagnose(hand_run(tmp_path / "noise", noise), permutations=100)
    r, n = rep["repeatability_critical_step"], noisy["repeatability_critical_step"]
    assert r["pairs"] == n["pairs"] == 30 * 15 and r["problems"] == 30
    # 0.9 of the failures at the problem's trap: a pair matches with probability >= 0.81; the null ~ 1/8
    assert r["share"] > 0.75 and r["null_mean"] < 0.2 and r["ratio"] > 4 and r["p_value"] < 0.02
    assert 0.75 < n["ratio"] < 1.3 and n["p_value"] > 0.05 and n["null_low"] <= n["share"] <= n["null_high"]
    assert rep["verdict"].startswith("critical steps are repeatable")
    assert noisy["verdict"].startswith("critical steps look like noise")
    assert str(r["matches"]) in rep["verdict"] and "ratio" in rep["verdict"]
    assert r["identical_state_matches"] == 0 and "identical state" not in rep["verdict"]
    shared = diagnose.diagnose(hand_run(tmp_path / "shared", repeatable, shared_prefix=True), permutations=20)
    same = shared["repeatability_critical_step"]
    assert same["identical_state_matches"] == same["matches"] > 0
    assert f"{same['matches']} of the {same['matches']} matching pairs reset at an identical state" in shared["verdict"]


def test_errors_at_one_position_everywhere_repeat_by_position_and_few_pairs_say_nothing(tmp_path):
    same = diagnose.diagnose(hand_run(tmp_path / "same", lambda rng, trap: 3), permutations=20)
    assert same["repeatability_critical_step"]["share"] == 1.0 == same["repeatability_critical_step"]["null_mean"]
    assert same["verdict"].startswith("critical steps repeat, but by position alone")
    few = diagnose.diagnose(hand_run(tmp_path / "few", repeatable, problems=3, failed=2), permutations=20)
    assert few["repeatability_critical_step"]["pairs"] == 3
    assert few["verdict"].startswith("not enough failed trajectories to say")


def test_critical_step_statistics_and_truncation_count_what_was_built(tmp_path):
    samples = [sample_row("p0", i, 0, finish="length" if i == 0 else "stop") for i in range(4)]
    located = [locate_row("p0", 0, 2, advantage=0.5), locate_row("p0", 1, 2), locate_row("p0", 2, 5),
               locate_row("p0", 3, None)]
    write_table(tmp_path, "sample", samples, SAMPLE_SCHEMA)
    write_table(tmp_path, "locate", located, locate.LOCATE_SCHEMA)
    s = diagnose.diagnose(tmp_path, permutations=5)
    cs = s["critical_steps"]
    assert (cs["located"], cs["rows"], cs["positive_advantage"]) == (3, 4, 1)
    assert cs["step_histogram"] == {2: 2, 5: 1}
    assert cs["relative_position"]["q50"] == 2 / NUM_STEPS
    assert s["truncation"]["sample"] == {"rows": 4, "length": 1, "share": 0.25}
    assert s["truncation"]["rollouts"] is None and s["pairs"] is None


def trap_policy(tokenizer):
    """The toy policy, but the hard line depends on the problem (not only on its length)."""
    return toy_policy(tokenizer, wrong_line=lambda start, ops: start % len(ops))


def trap_run(run, make, stages=4):
    run_chain(run, make, n_problems=24, n=6, k=16, m=4, baseline=True, rule=None, chunk_groups=8, stages=stages)
    return run


def test_real_chain_with_problem_specific_traps_is_repeatable_and_pairs_diverge_at_the_error(
        tmp_path, toy_tokenizer):
    from stages.core.generation.backends import FakeGenerator

    run = trap_run(tmp_path / "trap", lambda: FakeGenerator(toy_tokenizer, trap_policy(toy_tokenizer)))
    s = diagnose.diagnose(run, permutations=50)
    assert s["verdict"].startswith("first wrong lines are repeatable") and s["verdict"].endswith("(ground truth)")
    # one correct text: all failures of a problem share the prefix up to the slip, hence its rollouts
    crit = s["repeatability_critical_step"]
    assert crit["identical_state_matches"] == crit["matches"] > 0
    for key in ("repeatability_critical_step", "repeatability_first_wrong_line"):
        assert s[key]["share"] == 1.0 and s[key]["ratio"] > 1.5
    # one correct text per problem: every correct/incorrect pair diverges exactly at the slip, which is the
    # critical step wherever locate agrees with the ground truth (K=16 noise moves a few of them earlier)
    div = s["diversity"]
    assert div["distinct_correct_texts_mean"] == 1.0 and div["vs_first_wrong_line"]["at"] == 1.0
    samples = artifacts.read_table(run, "sample").to_pylist()
    correct = {r["problem_id"]: 0 for r in samples}
    for r in samples:
        correct[r["problem_id"]] += r["reward"]
    located = artifacts.read_table(run, "locate").to_pylist()
    crit = div["vs_critical_step"]
    assert crit["at_count"] == sum(correct[r["problem_id"]] for r in located if r["agrees"])
    assert crit["after_count"] == sum(correct[r["problem_id"]] for r in located if not r["agrees"])
    assert crit["pairs"] == div["correct_incorrect_pairs"] > 0 and crit["before"] == 0
    cs = s["critical_steps"]
    assert (cs["agrees"], cs["with_truth"]) == (sum(bool(r["agrees"]) for r in located), len(located))
    assert cs["positive_advantage_share"] == 0.0  # the slip only ever lowers the value
    # every rule on the run's own estimate: the default rule reproduces what locate found (another code path)
    rules = s["rules"]
    assert set(rules) == {"abs-advantage", "advantage", "max-value", "changepoint"}
    assert (rules["changepoint"]["agrees"], rules["changepoint"]["with_truth"]) == (cs["agrees"], len(located))
    assert rules["changepoint"]["agreement_all"] >= rules["abs-advantage"]["agreement_all"] > 0.5
    assert {r["group"] for r in diagnose.rows(s) if r["section"] == "rules"} == set(rules)
    pairs = {p["data"]: p for p in s["pairs"]}
    assert set(pairs) == {"gpo", "baseline", "random-reset"}
    assert pairs["gpo"]["vs_first_wrong_line"]["at"] == 1.0 == pairs["baseline"]["vs_first_wrong_line"]["at"]
    lines = headline(s)
    assert lines[0] == f"verdict: {s['verdict']}"
    assert any(line.startswith("every rule on this estimate") and "changepoint" in line for line in lines)
    gpo_line = next(line for line in lines if line.startswith("pairs gpo: "))
    assert gpo_line.endswith(f"before/at/after its first wrong line 0.00/1.00/0.00 of {pairs['gpo']['pairs']}")


def test_a_sample_only_toy_run_is_judged_on_its_first_wrong_lines(tmp_path, toy_tokenizer):
    from stages.core.generation.backends import FakeGenerator

    run = trap_run(tmp_path, lambda: FakeGenerator(toy_tokenizer, trap_policy(toy_tokenizer)), stages=1)
    s = diagnose.diagnose(run, permutations=50)
    assert s["repeatability_critical_step"] is None and s["critical_steps"] is None and s["pairs"] is None
    assert s["repeatability_first_wrong_line"]["share"] == 1.0
    assert s["verdict"].startswith("first wrong lines are repeatable") and s["verdict"].endswith("(ground truth)")
    assert s["diversity"]["vs_first_wrong_line"]["at"] == 1.0 and s["diversity"]["vs_critical_step"]["pairs"] == 0


def test_real_chain_with_the_hard_line_fixed_by_length_repeats_by_position(tmp_path, fake_generator):
    s = diagnose.diagnose(trap_run(tmp_path, fake_generator), permutations=50)
    rep = s["repeatability_critical_step"]
    assert rep["share"] == 1.0 == rep["null_mean"]
    assert s["verdict"].startswith("first wrong lines repeat, but by position alone")


def toy_text(start, ops, wrong_at=None, order=None):
    """Solution lines of a toy problem, +1 on line `wrong_at` (carried forward)."""
    value, lines = start, []
    for i, (op, d) in enumerate(ops):
        result = (value + d if op == "+" else value - d) + int(i == wrong_at)
        lines.append(f"{'abcde'[i]}: {value} {op} {d} = {result}")
        value = result
    return "\n".join([*lines, f"answer: {value}"])


def pair(data, pid, chosen, rejected, c_ids, r_ids, placement="in-response", prefix_tokens=0, prompt="q\n"):
    return {"pair_id": f"{data}/{pid}/{len(c_ids)}/{len(r_ids)}", "data": data, "problem_id": pid, "sample_idx": 0,
            "state_idx": 0, "prefix_placement": placement, "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "prompt_token_ids": [1, 2], "chosen_token_ids": c_ids, "rejected_token_ids": r_ids, "chosen_reward": 1,
            "rejected_reward": 0, "prefix_tokens": prefix_tokens, "chosen_tokens": len(c_ids),
            "rejected_tokens": len(r_ids), "gold_answer": "1"}


def test_pair_divergence_on_hand_built_pairs(tmp_path):
    problem = toy_problems(1, seed=0, split="train")[0]
    meta = json.loads(problem["meta"])
    start, ops = meta["start"], meta["ops"]
    good, bad = toy_text(start, ops), toy_text(start, ops, wrong_at=1)
    first_line = len(good.split("\n")[0]) + 1  # chars of line 0 and its newline
    write_table(tmp_path, "sample", [sample_row(problem["problem_id"], 0, 0, bad, source="toy:arith",
                                                meta=problem["meta"])], SAMPLE_SCHEMA)
    pid = problem["problem_id"]
    rows = [
        # diverge at token 6 of 10, on line 1 = the first wrong line; twice (an exact duplicate)
        pair("gpo", pid, good, bad, list(range(10)), [*range(6), 60, 61, 62, 63]),
        pair("gpo", pid, good, bad, list(range(10)), [*range(6), 60, 61, 62, 63]),
        # prefix moved into the prompt: 4 kept tokens, then diverge at once; the kept line 0 is in the prompt
        pair("gpo", pid, good[first_line:], bad[first_line:], [7, 8], [9, 8, 7, 6],
             placement="in-prompt", prefix_tokens=4, prompt="q\n" + good[:first_line]),
        # a different but correct first line (as another valid order would be): diverges before the error
        pair("baseline", pid, "x" + good, bad, [5, 1], [1, 2, 3, 4]),
    ]
    write_table(tmp_path, "branch", rows, branch.PAIR_SCHEMA)
    out = {p["data"]: p for p in diagnose.pair_divergence(tmp_path)}
    g, b = out["gpo"], out["baseline"]
    assert (g["pairs"], g["distinct_pairs"], g["duplicate_share"]) == (3, 2, pytest.approx(1 / 3))
    assert g["diverge_tokens_mean"] == pytest.approx(16 / 3) and g["diverge_tokens_median"] == 6
    assert g["diverge_share_mean"] == pytest.approx((0.6 + 0.6 + 4 / 8) / 3)
    assert g["vs_first_wrong_line"]["at"] == 1.0 and g["vs_first_wrong_line"]["pairs"] == 3
    assert b["diverge_tokens_mean"] == 0 and b["vs_first_wrong_line"]["before"] == 1.0
    assert b["duplicate_share"] == 0


def test_cli_prints_the_verdict_writes_a_queryable_table_and_refuses_a_run_without_samples(tmp_path):
    run = hand_run(tmp_path / "run", repeatable)
    output = gpo("diagnose", run, "--permutations", 30)
    assert "verdict: critical steps are repeatable" in output.replace("\n", " ")
    summary = json.loads((run / "diagnose" / "summary.json").read_text())
    assert summary["repeatability_critical_step"]["pairs"] == 30 * 15
    assert "same_step_share" in gpo("sql", run, "select statistic from diagnose where section like 'repeat%'")
    assert "Usage" in gpo("diagnose", "--help")
    empty = tmp_path / "empty"
    (empty / "sample").mkdir(parents=True)  # a stage folder without finished parts
    for args, message in [([empty], "has no sample table"), ([tmp_path / "missing"], "does not exist"),
                          ([run, "--permutations", 0], "--permutations must be at least 1")]:
        result = CliRunner().invoke(app, ["diagnose", *map(str, args)])
        assert result.exit_code != 0 and result.output.count("error:") == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (empty / "diagnose").exists()
