"""Settings files: `--config FILE` on every stage (flags win), a stage's config.json fed back, `gpo run`."""

import json

import pytest
from typer.testing import CliRunner

from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from tests.helpers import TOY_MODEL, gpo, refused

pytestmark = pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")
runner = CliRunner()
SOURCE = "toy:arith?n=6&seed=3&split=train"


def settings(run, stage="sample") -> dict:
    return artifacts.load_json(run / stage / "config.json")["settings"]


@pytest.mark.parametrize("suffix, text", [
    (".yaml", f"problems: '{SOURCE}'\nmodel: {TOY_MODEL}\nn: 2\nmax-new-tokens: 24\nbackend: hf\n"),
    (".toml", f"problems = '{SOURCE}'\nmodel = '{TOY_MODEL}'\nn = 2\nmax_new_tokens = 24\nbackend = 'hf'\n"),
])
def test_config_file_supplies_settings_and_flags_win(tmp_path, suffix, text):
    path = tmp_path / f"sample{suffix}"
    path.write_text(text)
    gpo("sample", "--config", path, "--run", tmp_path / "run", "--n", 3)
    got = settings(tmp_path / "run")
    assert got["n"] == 3  # the flag beat the file's 2
    assert got["max_new_tokens"] == 24 and got["problems"] == SOURCE and got["backend"] == "hf"
    assert len(artifacts.read_table(tmp_path / "run", "sample")) == 6 * 3


def test_a_stage_config_json_replays_the_same_stage(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    gpo("sample", "--problems", SOURCE, "--model", TOY_MODEL, "--run", first, "--n", 2, "--max-new-tokens", 24,
        "--temperature", 0.7, "--seed", 5, "--backend", "hf")
    gpo("sample", "--run", second, "--config", first / "sample" / "config.json")
    assert settings(second) == settings(first)
    cols = ["problem_id", "sample_idx", "response_token_ids"]
    rows = lambda run: sorted(artifacts.read_table(run, "sample").select(cols).to_pylist(),  # noqa: E731
                              key=lambda r: (r["problem_id"], r["sample_idx"]))
    assert rows(second) == rows(first)
    gpo("estimate", "--run", first, "--k", 2, "--max-new-tokens", 16)
    gpo("estimate", "--run", second, "--config", first / "estimate" / "config.json")
    assert settings(second, "estimate") == settings(first, "estimate")


def test_bad_config_files_are_one_line_errors_and_write_nothing(tmp_path):
    run = tmp_path / "run"
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(f"problems: '{SOURCE}'\nmodel: {TOY_MODEL}\nnum_samples: 4\n")
    refused(["sample", "--config", bad_key, "--run", run], "unknown setting(s) for `gpo sample`: num_samples")
    bad_type = tmp_path / "type.yaml"
    bad_type.write_text(f"problems: '{SOURCE}'\nmodel: {TOY_MODEL}\nn: many\n")
    refused(["sample", "--config", bad_type, "--run", run], "setting n: expected int")
    broken = tmp_path / "broken.toml"
    broken.write_text("n = \n")
    refused(["sample", "--config", broken, "--run", run], "is not valid TOML")
    refused(["sample", "--config", tmp_path / "missing.yaml", "--run", run], "cannot read config file")
    refused(["locate", "--config", bad_key, "--run", run], "unknown setting(s) for `gpo locate`")
    assert not run.exists()


def test_one_pipeline_file_runs_the_chain(tmp_path):
    run = tmp_path / "run"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"""run: {run}
stages:
  - sample: {{problems: "{SOURCE}", model: {TOY_MODEL}, n: 4, max_new_tokens: 40, backend: hf}}
  - estimate: {{k: 2}}
  - locate
  - branch: {{m: 4, baseline: true}}
""")
    out = gpo("run", pipeline)
    assert "ran sample, estimate, locate, branch" in out
    for stage in ("sample", "estimate", "locate", "branch"):
        assert (run / stage / "_SUCCESS").exists()
    assert settings(run, "estimate")["k"] == 2 and settings(run, "branch")["m"] == 4
    again = gpo("run", pipeline)  # finished stages are no-ops
    assert again.count("nothing to do") >= 3


def test_a_bad_pipeline_entry_stops_before_the_first_stage(tmp_path):
    run = tmp_path / "run"
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(json.dumps({"run": str(run), "stages": [
        {"sample": {"problems": SOURCE, "model": str(TOY_MODEL)}}, {"locate": {"rule": "abs-advantage", "k": 4}}]}))
    refused(["run", pipeline], "unknown setting(s) for `gpo locate`: k")
    pipeline.write_text(json.dumps({"run": str(run), "stages": [{"sampel": {}}]}))
    refused(["run", pipeline], "stages[0] is 'sampel'")
    assert not run.exists()


def test_unknown_config_extensions_are_refused_not_parsed_as_toml(tmp_path):
    run = tmp_path / "run"
    for name in ("sample.txt", "sample.ini", "sample"):
        path = tmp_path / name
        path.write_text("n = 2\n")  # valid TOML: the old loader read any other extension as TOML
        refused(["sample", "--config", path, "--run", run], "use .yaml, .yml, .toml or .json")
    assert not run.exists()


def test_toml_reads_with_tomli_where_python_has_no_tomllib(tmp_path, monkeypatch):
    """Python 3.10 (which pyproject allows) has no tomllib: the `tomli` backport reads the same files."""
    import sys
    import tomllib

    from stages.core.pipeline.config import load_config_file

    path = tmp_path / "s.toml"
    path.write_text("n = 2\n[trl]\nwarmup_ratio = 0.1\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now raises ImportError, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli is tomllib's origin, with the same API
    assert load_config_file(path) == {"n": 2, "warmup_ratio": 0.1}
    path.write_text("n = \n")
    with pytest.raises(GpoError, match="is not valid TOML"):
        load_config_file(path)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(GpoError, match="pip install tomli"):
        load_config_file(path)
