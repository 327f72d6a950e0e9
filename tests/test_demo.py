"""`gpo demo --quick` end to end: the README's main job at smoke-test size."""

import json

import pytest
from typer.testing import CliRunner

from gpo_cli.main import app
from stages.core.query import run_query
from tests.conftest import TOY_MODEL

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")]


def test_quick_demo_runs_reports_and_its_numbers_come_from_the_tables(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    labels = {row[0] for row in summary["accuracy"]}
    assert labels == {"base", "dpo-gpo", "dpo-random-reset", "dpo-baseline", "dpo-same-samples"}
    assert [list(r) for r in run_query(tmp_path / "gpo", "select label, mode, count(distinct problem_id), count(*), "
                                       "sum(reward), avg(reward) from evals group by label, mode "
                                       "order by mode, label")[1]] == summary["accuracy"]
    failed, located, agreement = summary["agreement"]
    assert located > 0 and agreement > 0.5
    assert summary["budget"]["baseline_n"] > 4  # the baseline bought extra samples with GPO's rollout tokens
    assert (tmp_path / "gpo" / "report.html").stat().st_size > 10_000
    for line in ("gpo sql", "budget matching", "wall time"):
        assert line in result.output
    # rerun after completion: every stage is a no-op, same numbers
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"] == summary["accuracy"]
