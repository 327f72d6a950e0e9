"""`gpo demo --quick` end to end (the README's main job at smoke-test size), and the hyperparameter procedure."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from stages.tools.demo.plan import CHOICE, PLANS, DemoPlan
from stages.tools.demo.arms import GPO_ARMS, NAMES
from gpo_cli.main import app
from stages.core.pipeline import layout
from stages.core.sources.toy_tasks import TASKS

REPO = TASKS["arith"].model_dir.parent.parent
sys.path.insert(0, str(REPO / "bench"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TASKS["arith"].model_dir / "config.json").exists(), reason="no toy model")]


# The quick demo's plan at the smallest size that still gives every arm a full batch: the whole experiment
# (`gpo demo --quick`, minutes) belongs to the README and bench/, its properties to this test.
SMALL = DemoPlan("arith", train_problems=16, test_problems=8, greedy_problems=16, eval_n=2, steps=2)


def test_quick_demo_trains_every_arm_on_full_batches_and_names_its_primary_comparison(tmp_path, monkeypatch):
    monkeypatch.setitem(PLANS, ("arith", True), SMALL)
    result = CliRunner().invoke(app, ["demo", "--task", "arith", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    plan = SMALL
    assert set(summary["training"]) == set(NAMES)
    chosen = json.loads(CHOICE.read_text())["chosen"]
    for arm, t in summary["training"].items():  # equal steps, every step a full batch, read from the metrics
        assert t["optimizer_steps"] == plan.steps and t["pairs_per_step"] == [plan.batch_size], arm
        assert t["pairs_presented"] == plan.steps * plan.batch_size and t["distinct_pairs"] > 0
        assert (t["learning_rate"], t["beta"]) == (chosen[arm]["learning_rate"], chosen[arm]["beta"])
    trained = sorted((tmp_path / "train").glob("dpo-*/summary.json"))
    assert len(trained) == len(NAMES)  # each arm trained on one thread, whatever the machine's load
    assert [json.loads(p.read_text())["cpu_threads"] for p in trained] == [1] * len(NAMES)
    costs = summary["training"]
    assert costs["gpo"]["generated_tokens"] > costs["same-samples"]["generated_tokens"]
    assert costs["gpo-bisect"]["generated_tokens"] < costs["gpo"]["generated_tokens"]
    assert costs["tokens-matched"]["generated_tokens"] > costs["same-samples"]["generated_tokens"]
    # every model against same-samples; the primary family is the GPO arms on greedy accuracy (toy:arith has
    # no trap line to probe), Holm-adjusted
    rows = summary["differences"]
    assert {r["arm"] for r in rows} == {"base", *NAMES} - {"same-samples"}
    primary = [r for r in rows if r["primary"]]
    assert {(r["arm"], r["metric"]) for r in primary} == {(a, "greedy") for a in GPO_ARMS}
    assert all(r["p_holm"] >= r["p"] for r in primary)
    for r in rows:
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    assert summary["accuracy"]["gpo"]["greedy"]["problems"] == plan.greedy_problems
    assert summary["accuracy"]["gpo"]["sampled"]["problems"] == plan.test_problems
    assert set(summary["probe"]["gpo"]) == {"operation", "answer"}
    from stages.core.pipeline.query import run_query

    # the accuracies are the eval tables' per-problem means
    (acc,), = run_query(tmp_path / "gpo", "select avg(a) from (select avg(reward) a from evals "
                                          "where label = 'gpo.sampled' group by problem_id)")[1:][0]
    assert summary["accuracy"]["gpo"]["sampled"]["pass@1"] == pytest.approx(acc)
    assert summary["agreement"]["gpo"]["failed_with_truth"] > 0
    assert (tmp_path / "gpo" / "report.html").stat().st_size > 10_000
    for line in ("budget matching", "time (wall s / CPU s / generated tokens)", "data phase", "PRIMARY", "exploratory"):
        assert line in result.output
    # every command's (name, wall, CPU) in the summary; the CPU seconds of a generating stage are real
    timings = {name: (wall, cpu, tokens) for name, wall, cpu, tokens in summary["timings"]}
    assert timings["estimate"][1] > 0 and timings["estimate"][0] > 0
    # and the tokens each command's stages generated, read from their manifests (locate generates none)
    manifest = json.loads(layout.manifest_path(tmp_path / "gpo" / "estimate", 0).read_text())
    assert timings["estimate"][2] == manifest["generated_tokens"] > 0 and timings["locate"][2] == 0
    assert "generated tokens" in result.output
    again = CliRunner().invoke(app, ["demo", "--task", "arith", "--quick", "--out", str(tmp_path)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    rerun = json.loads((tmp_path / "summary.json").read_text())
    assert rerun["accuracy"] == summary["accuracy"]
    # a command with nothing left to do keeps what it cost when it ran (the report is always redone)
    kept = lambda s: [t for t in s["timings"] if t[0] != "report"]  # noqa: E731
    assert kept(rerun) == kept(summary) and rerun["wall_seconds"] >= sum(t[1] for t in kept(summary))


def test_hyperparameter_selection_never_reads_the_test_split(tmp_path):
    out = tmp_path / "choice.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "select_hparams.py"), "--task", "arith", "--quick",
                    "--work", str(tmp_path / "work"), "--arms", "same-samples", "--lrs", "3e-5", "--betas", "0.3",
                    "--train-problems", "8", "--valid-problems", "8", "--out", str(out)],
                   check=True, cwd=tmp_path, capture_output=True)
    result = json.loads(out.read_text())
    assert len(result["grid"]) == 1 and set(result["chosen"]) == {"same-samples"}  # one cell: the procedure,
    assert (result["chosen"]["same-samples"]["learning_rate"], result["chosen"]["same-samples"]["beta"]) == (
        3e-5, 0.3)  # not a search (bench/select_hparams.py runs the grid)
    configs = [json.loads(p.read_text()) for p in (tmp_path / "work").rglob("config.json")]
    sources = [c["settings"].get("problems") for c in configs if "stage" in c]  # not the models' own configs
    sources = [s for s in sources if s]
    assert sources and not any("split=test" in s for s in sources)
    assert any("split=train" in s for s in sources)
