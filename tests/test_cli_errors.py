"""Bad input: a clear one-line error, a non-zero exit, no traceback, nothing written."""

import json

import pytest
from typer.testing import CliRunner

from gpo_cli.main import app
from tests.helpers import fails_cleanly

runner = CliRunner()
COMMANDS = ["sample", "estimate", "locate", "branch", "train", "eval", "export", "status", "sql", "show",
            "report", "demo", "slurm", "smollm2", "toy", "diagnose"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_the_stages():
    result = runner.invoke(app, ["--help"])
    for command in ("sample", "estimate", "locate", "branch", "train", "eval", "status", "sql"):
        assert command in result.output


def test_missing_problem_file(tmp_path, model_dir):
    fails_cleanly(["sample", "--problems", tmp_path / "nope.jsonl", "--model", model_dir, "--run", tmp_path / "r"],
                  "does not exist")
    assert not (tmp_path / "r").exists()


def test_wrong_columns_name_the_expected_ones(tmp_path, model_dir):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    fails_cleanly(["sample", "--problems", f, "--model", model_dir, "--run", tmp_path / "r"], "question")
    assert not (tmp_path / "r").exists()


def test_empty_file(tmp_path, model_dir):
    f = tmp_path / "p.jsonl"
    f.write_text("")
    fails_cleanly(["sample", "--problems", f, "--model", model_dir, "--run", tmp_path / "r"], "empty")


def test_non_parquet_file(tmp_path, model_dir):
    f = tmp_path / "p.parquet"
    f.write_text("this is not parquet")
    fails_cleanly(["sample", "--problems", f, "--model", model_dir, "--run", tmp_path / "r"], "not a readable Parquet")


def test_bad_rows_are_counted_not_fatal(tmp_path):
    from stages.core.sources.problems import Fields, load_problems

    f = tmp_path / "p.jsonl"
    rows = [{"question": "ok?", "answer": "#### 4"}, {"question": "", "answer": "1"}, {"question": "x?"},
            {"question": "y?", "answer": None}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_problems(str(f), Fields())
    assert loaded.table.num_rows == 1 and loaded.table.column("gold_answer").to_pylist() == ["4"]
    assert loaded.skipped == {"empty question": 1, "missing gold answer": 2}


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "0/0", "x"])
def test_invalid_shard(tmp_path, model_dir, spec):
    fails_cleanly(["sample", "--problems", "toy:arith?n=3", "--model", model_dir, "--run", tmp_path / "r",
                   "--shard", spec], "invalid shard")
    assert not (tmp_path / "r").exists()


def test_model_folder_missing_or_without_tokenizer(tmp_path):
    fails_cleanly(["sample", "--problems", "toy:arith?n=3", "--model", tmp_path / "none", "--run", tmp_path / "r"],
                  "does not exist")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    fails_cleanly(["sample", "--problems", "toy:arith?n=3", "--model", bare, "--run", tmp_path / "r"],
                  "no tokenizer")
    assert not (tmp_path / "r").exists()


def test_upstream_not_finished(tmp_path):
    fails_cleanly(["estimate", "--run", tmp_path], "has not finished")
    fails_cleanly(["locate", "--run", tmp_path], "has not finished")
    fails_cleanly(["branch", "--run", tmp_path], "has not finished")


def test_contradictory_or_invalid_options(tmp_path, model_dir):
    fails_cleanly(["estimate", "--run", tmp_path, "--estimator", "magic"], "--estimator")
    fails_cleanly(["locate", "--run", tmp_path, "--rule", "biggest"], "--rule")
    fails_cleanly(["sample", "--problems", "toy:arith?n=3", "--model", model_dir, "--run", tmp_path / "r",
                   "--template", "fancy"], "--template")
    fails_cleanly(["sample", "--problems", "toy:arith?n=3", "--model", model_dir, "--run", tmp_path / "r",
                   "--vllm", "tensor_parallel_size=two"], "--vllm")
    fails_cleanly(["eval", "--run", tmp_path], "needs --model")
    fails_cleanly(["export", "--run", tmp_path, "--format", "csv", "--out", tmp_path / "x"], "format")


def test_run_dir_of_another_stage_or_schema(tmp_path):
    from stages.core.pipeline.runner import SCHEMA_VERSION

    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "_SUCCESS").write_text("{}")
    (tmp_path / "sample" / "config.json").write_text(json.dumps(
        {"stage": "sample", "schema_version": SCHEMA_VERSION + 1, "config_hash": "x", "settings": {}}))
    fails_cleanly(["estimate", "--run", tmp_path], "schema")


def test_sql_errors_and_read_only(tmp_path):
    fails_cleanly(["sql", tmp_path / "nope", "select 1"], "does not exist")
    (tmp_path / "t").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), tmp_path / "t" / "x.parquet")
    fails_cleanly(["sql", tmp_path, "drop view t"], "read-only")
    fails_cleanly(["sql", tmp_path, "select nope from t"], "SQL error")
    ok = runner.invoke(app, ["sql", str(tmp_path), "select a from t", "--format", "csv"])
    assert ok.exit_code == 0 and ok.output.splitlines() == ["a", "1"]


def test_slurm_dry_run_writes_checked_scripts(tmp_path):
    result = runner.invoke(app, ["slurm", str(tmp_path), "--shards", "4", "--stages", "sample,estimate,train",
                                 "--args", "sample=--problems toy:arith?n=8 --model data/toy-model",
                                 "--args", "train=--method dpo --model data/toy-model", "--train-gpus", "2"])
    assert result.exit_code == 0, result.output
    sample = (tmp_path / "slurm" / "sample.sbatch").read_text()
    assert "#SBATCH --array=0-3" in sample and '--shard "${SLURM_ARRAY_TASK_ID}/4"' in sample
    train = (tmp_path / "slurm" / "train.sbatch").read_text()
    assert "--array" not in train and "accelerate launch" in train
    fails_cleanly(["slurm", tmp_path, "--args", "sample=--problemz x"], "No such option")
    fails_cleanly(["slurm", tmp_path, "--stages", "sample", "--args", "branch=--m 4"], "not in --stages")


@pytest.mark.parametrize("args", [
    ["sample", "--problems", "x.jsonl", "--model", "m", "--run", "{tmp}/r", "--bogus"],  # unknown flag (click)
    ["sample", "--problems", "x.jsonl", "--model", "m", "--run", "{tmp}/r", "--n", "0"],  # settings' own check
    ["sample", "--problems", "x.jsonl", "--model", "m", "--run", "{tmp}/r", "--shard", "3/2"],
    ["sample", "--problems", "x.jsonl", "--model", "m", "--run", "{tmp}/r", "--dtype", "fp64"],
    ["sample", "--run", "{tmp}/r", "--config", "{tmp}/settings.txt"],  # unknown settings file type
    ["estimate", "--run", "{tmp}/r", "--estimator", "guess"],
    ["train", "--run", "{tmp}/r", "--method", "ppo", "--model", "m"],
    ["export", "--run", "{tmp}/r", "--format", "csv", "--out", "{tmp}/e"],
    ["eval", "--compare"],
    ["slurm", "{tmp}/r", "--stages", "sample", "--args", "sample=--n 0"],  # a job's command line, checked now
    ["diagnose", "{tmp}/r", "--permutations", "0"],
])
def test_usage_errors_exit_2_before_anything_runs(tmp_path, args):
    """Issue 21.13: 2 for a bad command line, found before anything is read or written."""
    (tmp_path / "settings.txt").write_text("n = 2\n")
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


def test_a_failed_run_exits_1(tmp_path, model_dir):
    """Issue 21.13: 1 for a run that failed on what it read: a damaged problem file, a damaged stage."""
    damaged = tmp_path / "p.parquet"
    damaged.write_text("this is not parquet")
    result = fails_cleanly(["sample", "--problems", damaged, "--model", model_dir, "--run", tmp_path / "r"],
                           "not a readable Parquet")
    assert result.exit_code == 1
    (tmp_path / "run" / "sample").mkdir(parents=True)
    (tmp_path / "run" / "sample" / "config.json").write_text("{damaged")
    assert fails_cleanly(["estimate", "--run", tmp_path / "run"], "sample").exit_code == 1


def test_export_into_a_non_empty_folder_or_a_file_is_refused_before_reading_the_run(tmp_path):
    """Issue 21.5's bad inputs (the whole behaviour, --overwrite included: tests/test_export.py)."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    for fmt in ("trl", "verl"):
        result = fails_cleanly(["export", "--run", tmp_path / "run", "--format", fmt, "--out", full],
                               "is not empty: add --overwrite")
        assert result.exit_code == 1
    fails_cleanly(["export", "--run", tmp_path / "run", "--format", "trl", "--out", full, "--overwrite"],
                  "not an earlier gpo export")
    fails_cleanly(["export", "--run", tmp_path / "run", "--format", "trl", "--out", full / "mine.txt"],
                  "is a file, not a folder")
    (full / "gpo_gpo_pairwise.json").write_text("[]")
    fails_cleanly(["export", "--run", tmp_path / "run", "--format", "llamafactory", "--out", full],
                  "gpo_gpo_pairwise.json exists")
    assert sorted(p.name for p in full.iterdir()) == ["gpo_gpo_pairwise.json", "mine.txt"]


def test_a_settings_file_of_unknown_type_is_refused(tmp_path):
    path = tmp_path / "sample.cfg"
    path.write_text("n = 2\n")
    for command in ("sample", "estimate", "locate", "branch", "train", "eval"):
        result = fails_cleanly([command, "--run", tmp_path / "r", "--config", path], "use .yaml, .yml, .toml or .json")
        assert result.exit_code == 2
    assert not (tmp_path / "r").exists()


# --- pipeline and settings files: a wrong-typed entry is one line and nothing runs (issue 21.3) -----------

WRONG_RUNS = {".yaml": ["5", "[a, b]", "{a: 1}", "true", "2024-01-01"],
              ".toml": ["5", "['a']", "{a = 1}", "true", "1979-05-27"],
              ".json": ["5", '["a"]', '{"a": 1}', "true", "null"]}
STAGES = {".yaml": "stages:\n  - locate: {}\n", ".toml": "stages = [{locate = {}}]\n",
          ".json": '"stages": [{"locate": {}}]'}


def pipeline_file(tmp_path, suffix: str, run_value: str):
    path = tmp_path / f"pipeline{suffix}"
    if suffix == ".json":
        path.write_text(f'{{"run": {run_value}, {STAGES[suffix]}}}')
    else:
        path.write_text(f"run{': ' if suffix == '.yaml' else ' = '}{run_value}\n{STAGES[suffix]}")
    return path


@pytest.mark.parametrize("suffix, run_value", [(s, v) for s, values in WRONG_RUNS.items() for v in values])
def test_a_pipeline_whose_run_is_not_a_string_is_refused_and_nothing_runs(tmp_path, monkeypatch, suffix,
                                                                          run_value):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_file(tmp_path, suffix, run_value)
    assert fails_cleanly(["run", pipeline], "run").exit_code == 2  # a usage error (issue 21.13)
    config = tmp_path / f"settings{suffix}"  # the same key in a stage's --config file
    config.write_text(pipeline.read_text().replace("stages", "rule").replace("[{locate = {}}]", "'abs-advantage'")
                      .replace('[{"locate": {}}]', '"abs-advantage"').replace("\n  - locate: {}", " abs-advantage"))
    assert fails_cleanly(["locate", "--config", config], "run").exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pipeline.name, config.name])


@pytest.mark.parametrize("text, match", [
    ("run: r\nstages: 5\n", "stages"),
    ("run: r\nstages: {locate: {}}\n", "stages"),
    ("run: r\nstages: [[locate]]\n", "stages[0]"),
    ("run: r\nstages: [{5: {}}]\n", "stages[0]"),
    ("run: r\nstages: [{locate: 5}]\n", "stages[0]"),
    ("run: r\nstages: [{locate: {rule: [1, 2]}}]\n", "setting rule"),
    ("run: r\nstages: [{locate: {k: true}}]\n", "unknown setting"),
    ("run: r\nstages: [{locate: {run: elsewhere}}]\n", "run"),
    ("run: r\nstages: [locate]\nstagez: [branch]\n", "stagez"),
    ("run: \"r\\0x\"\nstages: [locate]\n", "run"),
    ("- locate\n", "table"),
    ("run: r\nstages: [{sample: {problems: \"p\\0.jsonl\", model: m}}]\n", "setting problems"),
])
def test_a_wrong_typed_pipeline_entry_is_refused_and_nothing_runs(tmp_path, monkeypatch, text, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(text)
    assert fails_cleanly(["run", tmp_path / "p.yaml"], match).exit_code == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "elsewhere").exists()


def test_compare_of_evaluations_with_other_questions_under_the_same_ids_is_refused(tmp_path):
    """Issue 21.6, from the summaries alone: same problem ids, other questions (or no hashes to tell)."""
    scores = {"greedy": {"borrow-test-0000": 1.0, "borrow-test-0001": 0.0}}
    for name, questions in [("eval_a", {"borrow-test-0000": "aa", "borrow-test-0001": "bb"}),
                            ("eval_b", {"borrow-test-0000": "aa", "borrow-test-0001": "cc"}),
                            ("eval_old", None)]:
        (tmp_path / name).mkdir()
        summary = {"label": name[5:], "per_problem": scores, **({"questions": questions} if questions else {})}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    fails_cleanly(["eval", "--compare", tmp_path / "eval_a", tmp_path / "eval_b"], "different questions")
    fails_cleanly(["eval", "--compare", tmp_path / "eval_a", tmp_path / "eval_old"], "no question hashes")
    assert runner.invoke(app, ["eval", "--compare", str(tmp_path / "eval_a"), str(tmp_path / "eval_a")]).exit_code == 0


def test_an_error_naming_a_hostile_run_folder_stays_one_line(tmp_path):
    """A run folder whose name holds a newline and rich markup: the error is still one line, shown whole."""
    run = tmp_path / "X\nCOPY (SELECT 42) TO 'x.csv';\n[/bold] [red]"
    result = fails_cleanly(["estimate", "--run", run], "sample")
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "X\\nCOPY" in result.output and "[/bold] [red]" in result.output
