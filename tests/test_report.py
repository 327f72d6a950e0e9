"""gpo report: the page, its PNGs, sections that follow the run's contents, and SQL that reproduces the numbers."""

import base64
import html
import math
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from stages import eval as evaluation
from stages import sample
from stages.train.checkpoints import metrics_table
from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.query import run_query
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems
from stages.tools.report import build_report
from tests.helpers import REPO, toy_policy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FULL = ["sample", "value_curves", "critical_positions", "advantages", "toy_agreement", "eval_accuracy", "cost",
        "train_loss"]


def _make(toy_tokenizer):
    from stages.core.generation.backends import FakeGenerator

    return lambda **kw: FakeGenerator(toy_tokenizer, toy_policy(toy_tokenizer, **kw))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, toy_run, toy_tokenizer):
    """A copy of the finished toy run, with an evaluation and a train stage's metrics added."""
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(toy_run, run)
    gen = _make(toy_tokenizer)()
    settings = evaluation.EvalSettings(problems="toy", model="fake", n=2, temperature=1.0, label="base",
                                       max_new_tokens=64)
    run_stage(evaluation.make_stage("base"), run, settings,
              input_table=load_problems("toy:arith?n=4&seed=0&split=test").table, make_generator=lambda: gen)
    rows = [{"step": s, "loss": 0.7 * math.exp(-s / 5), "epoch": s / 10} for s in range(1, 11)]
    artifacts.write_parquet_atomic(metrics_table(rows, {"method": "dpo", "data": "gpo", "run_name": "dpo-gpo"}),
                                   run / "train" / "metrics" / "dpo-gpo.parquet", {"stage": "train"})
    return run, build_report(run)


def _commands(page: str) -> list[tuple[list[str], int]]:
    """Every printed `gpo sql` command with the row count shown for it."""
    found = re.findall(r'<span class="n">\(([\d,]+) rows\)</span></summary><pre>(.*?)</pre>', page, re.S)
    return [(shlex.split(html.unescape(cmd)), int(n.replace(",", ""))) for n, cmd in found]


def test_full_run_has_every_section_and_valid_pngs(full_run):
    run, result = full_run
    assert result["html"] == run / "report.html" and result["html"].exists()
    assert result["sections"] == FULL
    assert [p.stem for p in result["pngs"]] == FULL
    page = result["html"].read_text()
    for png in result["pngs"]:
        data = png.read_bytes()
        assert png.parent == run / "report_files" and len(data) > 1000 and data.startswith(PNG_MAGIC)
        assert base64.b64encode(data).decode() in page  # embedded
        assert f'href="report_files/{png.name}"' in page  # and linked
    for name in FULL:
        assert f'id="{name}"' in page
    assert "<h2 id=tables>" in page and "eval_base" in page and "rollouts" in page
    assert not [p for p in run.rglob(".tmp-*")]


def test_printed_sql_reproduces_the_numbers(full_run):
    run, result = full_run
    commands = _commands(result["html"].read_text())
    assert len(commands) >= len(FULL)
    for argv, shown in commands:
        assert argv[:3] == ["gpo", "sql", str(run)]
        columns, rows = run_query(run, argv[3])  # read-only check included, as `gpo sql` does
        assert columns and len(rows) == shown, argv[3]


def test_sample_only_run_has_fewer_sections(tmp_path, toy_tokenizer):
    gen = _make(toy_tokenizer)()
    run_stage(sample.STAGE, tmp_path / "run", sample.SampleSettings(problems="toy", model="fake", n=3,
                                                                    max_new_tokens=64),
              input_table=load_problems("toy:arith?n=3&seed=0&split=train").table, make_generator=lambda: gen)
    out = tmp_path / "elsewhere" / "page.html"
    result = build_report(tmp_path / "run", out)
    assert result["sections"] == ["sample", "cost"]
    assert result["html"] == out and out.exists()
    assert sorted(p.name for p in (tmp_path / "elsewhere" / "page_files").iterdir()) == ["cost.png", "sample.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in result["pngs"])
    page = out.read_text()
    assert 'id="value_curves"' not in page and 'id="eval_accuracy"' not in page
    assert build_report(tmp_path / "run", out)["sections"] == result["sections"]  # rerun overwrites cleanly


def test_missing_or_empty_run_is_refused(tmp_path):
    with pytest.raises(GpoError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty" / "sample").mkdir(parents=True)
    with pytest.raises(GpoError, match="no finished tables"):
        build_report(tmp_path / "empty")


def test_importing_the_report_stage_does_not_load_matplotlib():
    code = "import sys, stages.tools.report; assert 'matplotlib' not in sys.modules and 'typer' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
