"""`gpo demo --quick` end to end (the README's main job at smoke-test size), and the hyperparameter procedure."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gpo_cli.demo import ARMS, PLANS
from gpo_cli.main import app
from stages.core.toy_tasks import TASKS

REPO = TASKS["arith"].model_dir.parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TASKS["arith"].model_dir / "config.json").exists(), reason="no toy model")]


def test_quick_demo_trains_every_arm_for_the_same_steps_and_reports_paired_differences(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--task", "arith", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    plan = PLANS[("arith", True)]
    assert set(summary["training"]) == set(ARMS)
    for arm, t in summary["training"].items():  # equal training compute for every arm
        assert t["optimizer_steps"] == plan.steps and t["batch_size"] == plan.batch_size, arm
        assert t["distinct_pairs"] > 0
    costs = summary["training"]
    assert costs["gpo"]["generated_tokens"] > costs["same-samples"]["generated_tokens"]
    assert costs["gpo-bisect"]["generated_tokens"] < costs["gpo"]["generated_tokens"]
    assert costs["tokens-matched"]["generated_tokens"] > costs["same-samples"]["generated_tokens"]
    # every arm (and the base) against GPO, per mode, with the verdict the interval allows
    assert {(p["arm"], p["mode"]) for p in summary["paired"]} == \
        {(a, m) for a in ["base", *[x for x in ARMS if x != "gpo"]] for m in ("greedy", "sampled")}
    for p in summary["paired"]:
        assert p["ci_low"] <= p["gpo_minus_arm"] <= p["ci_high"]
        assert p["verdict"] == ("GPO better" if p["ci_low"] > 0 else "GPO worse" if p["ci_high"] < 0
                                else "not distinguishable")
    from stages.core.query import run_query

    # the accuracies are the eval tables' per-problem means
    (acc,), = run_query(tmp_path / "gpo", "select avg(a) from (select avg(reward) a from evals "
                                          "where label = 'gpo' and mode = 'sampled' group by problem_id)")[1:][0]
    assert summary["accuracy"]["gpo"]["sampled"]["pass@1"] == pytest.approx(acc)
    assert summary["agreement"]["gpo"]["failed_with_truth"] > 0
    assert (tmp_path / "gpo" / "report.html").stat().st_size > 10_000
    for line in ("budget matching", "wall time", "GPO minus each other model"):
        assert line in result.output
    again = CliRunner().invoke(app, ["demo", "--task", "arith", "--quick", "--out", str(tmp_path)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"] == summary["accuracy"]


def test_hyperparameter_selection_never_reads_the_test_split(tmp_path):
    out = tmp_path / "choice.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "select_hparams.py"), "--task", "arith", "--quick",
                    "--work", str(tmp_path / "work"), "--lrs", "1e-5,3e-5", "--valid-problems", "16",
                    "--out", str(out)], check=True, cwd=tmp_path, capture_output=True)
    result = json.loads(out.read_text())
    assert result["chosen"]["learning_rate"] in (1e-5, 3e-5) and len(result["grid"]) == 2
    configs = [json.loads(p.read_text()) for p in (tmp_path / "work").rglob("config.json")]
    sources = [c["settings"].get("problems") for c in configs if "stage" in c]  # not the models' own configs
    sources = [s for s in sources if s]
    assert sources and not any("split=test" in s for s in sources)
    assert any("split=train" in s for s in sources)


def test_demo_uses_the_validation_choice_at_the_steps_it_was_chosen_for():
    from gpo_cli.demo import CHOICE, with_chosen_hparams

    chosen = json.loads(CHOICE.read_text())
    assert not chosen["quick"] and chosen["task"] == "borrow"
    assert "split=valid" in chosen["validation_source"]
    plan = with_chosen_hparams(PLANS[("borrow", False)])
    assert (plan.learning_rate, plan.beta) == (chosen["chosen"]["learning_rate"], chosen["chosen"]["beta"])
    assert (plan.steps, plan.batch_size) == (chosen["optimizer_steps"], chosen["batch_size"])
    best = max(chosen["grid"], key=lambda r: r["mean_over_arms"])
    assert chosen["chosen"]["learning_rate"] == best["learning_rate"]
