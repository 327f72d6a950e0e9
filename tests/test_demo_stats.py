"""The demo's statistics and hyperparameter choice, without running it: Holm, p-values from intervals, the
test-set size a measured variance calls for, each arm's own best cell."""

import json
import math
import sys

import pytest

from stages.tools.demo.plan import PLANS
from stages.tools.demo.arms import NAMES
from stages.core.sources.toy_tasks import TASKS

sys.path.insert(0, str(TASKS["arith"].model_dir.parent.parent / "bench"))


def test_holm_multiplies_the_ith_smallest_by_the_remaining_count_and_stays_monotone():
    from stages.core.method.values import holm

    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_p_value_from_a_95_interval():
    from stages.core.method.values import interval_p_value

    assert interval_p_value(0.0, -0.1, 0.1) == 1.0
    assert interval_p_value(0.1, 0.0, 0.2) == pytest.approx(0.05, abs=1e-4)  # the interval just touches 0
    assert interval_p_value(0.1, 0.1, 0.1) == 0.0


def test_needed_problems_for_two_points_from_a_measured_interval():
    from stages.tools.demo.summary import needed_problems

    # issue 20's greedy difference: +0.040 [-0.001, +0.081] over 150 problems -> SD 0.256 -> ~630 problems
    n = needed_problems(-0.001, 0.081, 150)
    sd = 0.041 / 1.96 * math.sqrt(150)
    assert n == math.ceil((1.96 * sd / 0.02) ** 2) and 620 <= n <= 640
    assert PLANS[("borrow", False)].greedy_problems >= n
    assert needed_problems(0.0, 0.0, 60) is None  # every paired difference 0: no variance to size from


def test_each_arm_gets_its_own_best_cell_and_the_demo_uses_it():
    from stages.tools.demo.plan import CHOICE, with_chosen_hparams
    from select_hparams import choose

    grid = [{"learning_rate": 1e-5, "beta": 0.1, "per_arm": {"a": 0.30, "b": 0.40}},
            {"learning_rate": 3e-5, "beta": 0.1, "per_arm": {"a": 0.35, "b": 0.40}},
            {"learning_rate": 3e-5, "beta": 0.3, "per_arm": {"a": 0.20, "b": 0.10}}]
    chosen = choose(grid, ["a", "b"])
    assert (chosen["a"]["learning_rate"], chosen["a"]["beta"]) == (3e-5, 0.1)
    assert (chosen["b"]["learning_rate"], chosen["b"]["beta"]) == (1e-5, 0.1)  # a tie keeps the earlier cell
    saved = json.loads(CHOICE.read_text())
    assert not saved["quick"] and saved["task"] == "borrow" and "split=valid" in saved["validation_source"]
    plan = with_chosen_hparams(PLANS[("borrow", False)])
    assert set(plan.hparams) == set(NAMES)
    for arm, (lr, beta) in plan.hparams.items():
        assert (lr, beta) == (saved["chosen"][arm]["learning_rate"], saved["chosen"][arm]["beta"])
        best = max(c["per_arm"][arm] for c in saved["grid"])
        assert saved["chosen"][arm]["valid"] == best
    assert (plan.steps, plan.batch_size) == (saved["optimizer_steps"], saved["batch_size"])


def test_the_primary_family_is_each_gpo_arm_minus_same_samples_on_greedy_and_the_trap_probe():
    from stages.tools.demo.arms import BASELINE, GPO_ARMS, PAPER, RANDOM
    from stages.tools.demo.summary import PRIMARY_KIND, differences

    problems = [f"p{i}" for i in range(40)]

    def eval_summary(label, mode, right):  # `right`: how many of the 40 problems the model gets right
        return {"label": label, "per_problem": {mode: {p: float(i < right) for i, p in enumerate(problems)}},
                "questions": {p: f"hash-{p}" for p in problems}}  # the same questions: --compare pairs them

    def probe_summary(label, shift):
        kinds = {PRIMARY_KIND: {p: {"p": 0.4 + shift + 0.01 * (i % 5), "top": float(i % 2)}
                                for i, p in enumerate(problems)},
                 "routine": {p: {"p": 0.9, "top": 1.0} for p in problems}}
        return {"label": label, "per_problem": kinds}

    labels = ["base", *NAMES]
    better = {arm: 10 if arm == GPO_ARMS[0] else 0 for arm in labels}  # the first GPO arm gains 10 problems
    greedy = {a: eval_summary(a, "greedy", 20 + better[a]) for a in labels}
    sampled = {a: eval_summary(f"{a}.sampled", "sampled", 20) for a in labels}
    probes = {a: probe_summary(a, 0.1 if better[a] else 0.0) for a in labels}
    rows = differences(labels, greedy, sampled, probes)
    primary = [r for r in rows if r["primary"]]
    assert {(r["arm"], r["metric"]) for r in primary} == \
        {(a, m) for a in GPO_ARMS for m in ("greedy", f"probe {PRIMARY_KIND} P(gold)")}
    assert all("p_holm" not in r for r in rows if not r["primary"])
    assert {r["arm"] for r in rows} == set(labels) - {BASELINE}
    # each GPO arm also minus random reset (is the critical step better than any step?): exploratory only
    second = [r for r in rows if r["reference"] == RANDOM]
    assert {r["arm"] for r in second} == set(GPO_ARMS) and not any(r["primary"] for r in second)
    assert [r["diff"] for r in second if r["arm"] == GPO_ARMS[0] and r["metric"] == "greedy"] == [pytest.approx(0.25)]
    # and each other GPO arm minus the paper's (the same samples: what another locator or estimator changes)
    third = [r for r in rows if r["reference"] == PAPER]
    assert {r["arm"] for r in third} == set(GPO_ARMS) - {PAPER} and not any(r["primary"] for r in third)
    assert [r["diff"] for r in third if r["arm"] == GPO_ARMS[1] and r["metric"] == "greedy"] == [pytest.approx(-0.25)]
    gain = {r["metric"]: r for r in primary if r["arm"] == GPO_ARMS[0]}
    assert gain["greedy"]["diff"] == pytest.approx(0.25)  # 10 of 40 problems
    assert gain[f"probe {PRIMARY_KIND} P(gold)"]["diff"] == pytest.approx(0.1)
    assert gain["greedy"]["verdict"] == "arm better" and gain["greedy"]["p_holm"] >= gain["greedy"]["p"]
    same = [r for r in primary if r["arm"] != GPO_ARMS[0]]
    assert all(r["diff"] == 0 and r["verdict"] == "not distinguishable" for r in same)


def test_the_summary_prints_presented_pairs_and_the_primary_family_first(capsys):
    from gpo_cli.demo_print import print_demo_summary

    acc = {"pass@1": 0.5, "ci_low": 0.4, "ci_high": 0.6, "problems": 40}
    row = {"arm": "gpo", "metric": "greedy", "problems": 40, "diff": 0.05, "ci_low": -0.01, "ci_high": 0.11,
           "p": 0.1, "p_holm": 0.2, "primary": True, "verdict": "not distinguishable"}
    other = {**row, "arm": "base", "primary": False, "verdict": "arm better"}
    other.pop("p_holm")
    versus_random = {**other, "arm": "gpo", "reference": "random-reset", "diff": -0.031}
    training = {"optimizer_steps": 30, "planned_batch": 8, "pairs_presented": 240, "pairs_per_step": [8],
                "learning_rate": 1e-5, "beta": 0.1, "distinct_pairs": 52, "duplicates_dropped": 6,
                "generated_tokens": 1000, "prompt_tokens": 10}
    print_demo_summary({
        "task": "borrow", "accuracy": {"base": {"greedy": acc, "sampled": acc}, "gpo": {"greedy": acc, "sampled": acc}},
        "probe": {"gpo": {"trap-hard": {"p_gold": 0.44, "top_share": 0.4}}}, "training": {"gpo": training},
        "differences": [row, other, versus_random], "needed_problems": {"greedy": 630},
        "plan": {"greedy_problems": 640, "test_problems": 150, "eval_n": 4}, "agreement": {},
        "pair_divergence": {}, "diagnose": [], "budget": {"rule": "r"},
        "timings": [("sample", 12.4, 10.2, 1200), ("estimate (gpo-bisect)", 20.0, 18.0, 1600),
                    ("train (gpo)", 9.0, 8.0, 0), ("eval gpo", 3.0, 2.0)],  # a summary written before tokens
        "wall_seconds": 1})
    text = capsys.readouterr().out
    # each command's wall and CPU time and generated tokens (issue 19), and the data phase summed over the
    # data-making commands only
    assert "sample 12/10/1200" in text and "eval gpo 3/2/-" in text
    assert ("data phase (sample, estimate, locate, branch of every arm): 32s wall, 28 CPU-s, 2,800 generated "
            "tokens (99 per CPU-s)") in text
    assert "30 x 8 (240)" in text and "0.440 / 0.400" in text
    assert text.index("PRIMARY") < text.index("exploratory") and "greedy ~630" in text
    assert "random-reset" in text and "-0.031" in text  # the GPO arm against random reset, printed


def test_seeds_pool_as_a_fixed_effect_mean_and_the_primary_family_is_adjusted_again():
    from demo_seeds import combine

    def summary(gain: float, half: float) -> dict:
        rows = [{"arm": "gpo", "reference": "same-samples", "metric": "greedy", "problems": 640, "diff": gain,
                 "ci_low": gain - half, "ci_high": gain + half, "primary": True},
                {"arm": "gpo", "reference": "random-reset", "metric": "greedy", "problems": 640, "diff": -gain,
                 "ci_low": -gain - half, "ci_high": -gain + half, "primary": False}]
        acc = {"greedy": {"pass@1": 0.7}}
        return {"differences": rows, "accuracy": {"gpo": acc}, "agreement": {"gpo": {"agreement": 0.2}},
                "training": {"gpo": {"generated_tokens": 100}}, "wall_seconds": 1.0}

    # three seeds, each +0.03 +- 0.0392 (se 0.02): not distinguishable alone, pooled se 0.02 / sqrt(3)
    result = combine([summary(0.03, 0.0392)] * 3)
    first, second = result["rows"]
    assert first["diff"] == pytest.approx(0.03) and first["problems"] == 1920
    assert first["ci_high"] - first["diff"] == pytest.approx(1.96 * 0.02 / 3 ** 0.5)
    assert first["reading"] == "arm better" and first["p_holm"] == pytest.approx(first["p"])  # a family of one
    assert "p_holm" not in second and second["reading"] == "arm worse"
    assert [d for d, _, _ in first["per_seed"]] == [0.03] * 3
    # seeds that disagree in sign pool towards zero
    mixed = combine([summary(0.03, 0.0392), summary(-0.03, 0.0392), summary(0.0, 0.0392)])
    assert mixed["rows"][0]["diff"] == pytest.approx(0.0) and mixed["rows"][0]["reading"] == "not distinguishable"
    # the interval over seeds: none wide when the seeds agree, t(2) = 4.303 times sd / sqrt(3) when they do not
    assert first["over_seeds"] == pytest.approx([0.03, 0.03])
    assert mixed["rows"][0]["over_seeds"] == pytest.approx([-4.303 * 0.03 / 3 ** 0.5, 4.303 * 0.03 / 3 ** 0.5])


def test_t_quantiles_match_the_table_and_the_expansion_beyond_it():
    from demo_seeds import t975

    assert t975(2) == 4.303 and abs(t975(11) - 2.201) < 0.003 and abs(t975(30) - 2.042) < 0.003
    assert abs(t975(1000) - 1.962) < 0.002


def test_a_resumed_demo_keeps_each_finished_commands_cost_from_its_ledger(tmp_path):
    from stages.core.pipeline import layout
    from stages.tools.demo.driver import Runner

    run, ledger = tmp_path / "gpo", layout.timings_path(tmp_path)

    class Stage:  # stands in for gpo's click command: a stage that works once, then has nothing to do
        def __init__(self, tokens):
            self.tokens = tokens

        def main(self, args, prog_name, standalone_mode):
            manifest = layout.manifest_path(run / args[0], 0)
            if not manifest.exists():
                manifest.parent.mkdir(parents=True, exist_ok=True)
                manifest.write_text(json.dumps({"generated_tokens": self.tokens}))
            return 0

    first = Runner(Stage(1234), echo=lambda text: None, ledger=ledger)
    first("sample", "sample", "--run", run)  # killed after this command
    (name, wall, cpu, tokens), = json.loads(ledger.read_text())["timings"]
    assert (name, tokens) == ("sample", 1234)
    again = Runner(Stage(99), echo=lambda text: None, ledger=ledger)
    again("sample", "sample", "--run", run)  # nothing left to do: the cost it had when it ran
    again("estimate", "estimate", "--run", run)  # does its work now
    assert again.timings[0] == (name, wall, cpu, 1234)
    assert again.timings[1][0] == "estimate" and again.timings[1][3] == 99
    assert [t[0] for t in json.loads(ledger.read_text())["timings"]] == ["sample", "estimate"]
