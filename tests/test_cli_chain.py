"""The whole chain through the CLI on the committed toy model, as a user runs it."""

import json

import pytest
from typer.testing import CliRunner

from gpo_cli.main import app
from stages.core.pipeline import artifacts
from stages.core.pipeline.query import run_query
from tests.helpers import TOY_MODEL, gpo

pytestmark = pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")
runner = CliRunner()



@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    run = tmp_path_factory.mktemp("chain")
    gpo("sample", "--problems", "toy:arith?n=24&seed=0&split=train", "--model", TOY_MODEL, "--run", run,
        "--n", 4, "--max-new-tokens", 48, "--backend", "hf")
    gpo("estimate", "--run", run, "--k", 4)
    gpo("locate", "--run", run)
    gpo("branch", "--run", run, "--m", 6, "--baseline")
    return run


def test_sample_uses_the_toy_model_and_scores(chain):
    rows = artifacts.read_table(chain, "sample").to_pylist()
    assert len(rows) == 96
    assert all(r["model"] == str(TOY_MODEL) and r["verdict_checker"] == "numeric" for r in rows)
    accuracy = sum(r["reward"] for r in rows) / len(rows)
    assert 0.05 < accuracy < 0.95  # an imperfect model: GPO has something to find


def test_rerun_is_a_no_op_and_changed_settings_are_refused(chain):
    out = gpo("estimate", "--run", chain, "--k", 4)
    assert "nothing to do" in out
    result = runner.invoke(app, ["estimate", "--run", str(chain), "--k", "8"])
    assert result.exit_code != 0 and "changed: k" in result.output


def test_locate_mostly_agrees_with_the_first_wrong_line(chain):
    (located, agree), = run_query(chain, "select count(critical_step), avg(agrees::int) from locate")[1]
    assert located > 0 and agree > 0.5


def test_sql_status_show_export(chain, tmp_path):
    out = gpo("sql", chain, "select count(*) as n from locate join estimate using (problem_id, sample_idx) "
                            "where step_idx = critical_step", "--format", "json")
    assert json.loads(out.splitlines()[0])["n"] > 0
    listing = gpo("sql", chain)
    assert "rollouts" in listing and "--views" in listing
    status = gpo("status", chain)
    assert "estimate" in status and "done" in status
    pid = run_query(chain, "select problem_id from locate where critical_step is not null limit 1")[1][0][0]
    shown = gpo("show", chain, "--problem", pid)
    assert "critical step" in shown and "branches from state" in shown
    gpo("export", "--run", chain, "--format", "trl", "--out", tmp_path / "trl")
    assert (tmp_path / "trl" / "preference" / "train.parquet").exists()


def test_train_then_eval_the_trained_model(chain):
    out = chain / "train" / "dpo-gpo"
    gpo("train", "--run", chain, "--method", "dpo", "--data", "gpo", "--model", TOY_MODEL, "--out", out,
        "--max-steps", 4, "--batch-size", 4, "--learning-rate", 1e-4, "--max-length", 128)
    assert (out / "model" / "config.json").exists() and (out / "_SUCCESS").exists()
    assert run_query(chain, "select count(*) from metrics")[1][0][0] > 0
    gpo("eval", "--model", out / "model", "--problems", "toy:arith?n=16&split=test", "--run", chain,
        "--label", "dpo", "--n", 2, "--temperature", 1.0, "--max-new-tokens", 48, "--backend", "hf")
    summary = json.loads((chain / "eval_dpo" / "summary.json").read_text())
    assert set(summary["modes"]) == {"greedy", "sampled"}
    compared = gpo("eval", "--compare", chain / "eval_dpo", chain / "eval_dpo")
    assert "+0.000" in compared


def test_report_renders(chain, tmp_path):
    out = gpo("report", chain, "--out", tmp_path / "r.html")
    assert "report" in out and (tmp_path / "r.html").stat().st_size > 10_000
