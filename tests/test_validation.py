"""Validate before writing: every bad option, model folder or problem file is one `error:` line, and no
run folder is created; settings own their defaults (the CLI's equal them) and a failed start never
poisons the corrected command."""

import dataclasses
import json
import shutil

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from gpo_cli.main import app
from stages import branch, estimate, eval as evaluate, locate, sample, train
from stages.core.pipeline.errors import GpoError
from tests.helpers import TOY_MODEL, refused

runner = CliRunner()
needs_toy = pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")


def sample_args(tmp_path, *extra, model=TOY_MODEL):
    return ["sample", "--problems", "toy:arith?n=2", "--model", model, "--run", tmp_path / "run", *extra]


@pytest.mark.parametrize("args, match", [
    (["sample", "--run", "r"], "Missing option '--problems'"),
    (["sample", "--problems", "p", "--model", "m", "--run", "r", "--n", "abc"], "'--n'"),
    (["sample", "--problems", "p", "--model", "m", "--run", "r", "--n", "0"], "--n must be"),
    (["bogus"], "No such command 'bogus'"),
    (["toy", "build", "--steps", "0"], "'--steps'"),
    (["sql"], "Missing argument"),
    (["estimate", "--run", "r", "--k", "x"], "'--k'"),
    (["locate", "--run", "r", "--nope"], "No such option"),
    (["branch", "--run", "r", "--top-p", "2"], "--top-p must be"),
    (["eval", "--temperature", "-1"], "--temperature must be"),
    (["export", "--run", "r", "--out", "o"], "Missing option '--format'"),
    (["train", "--run", "r"], "Missing option"),
])
def test_usage_errors_are_one_error_line(args, match):
    refused(args, match)


@needs_toy
@pytest.mark.parametrize("extra, match", [
    (["--backend", "foo"], "--backend"),
    (["--dtype", "foo"], "--dtype"),
    (["--dtype", "half"], "--dtype"),
    (["--device", "tpu9"], "--device"),
    (["--n", "1000000000"], "--n must be between"),
    (["--max-new-tokens", "99999999"], "--max-new-tokens"),
    (["--top-p", "0"], "--top-p"),
    (["--template", "fancy"], "--template"),
])
def test_bad_options_are_refused_before_the_run_folder_exists(tmp_path, extra, match):
    refused(sample_args(tmp_path, *extra), match)
    assert not (tmp_path / "run").exists()


@needs_toy
def test_device_cuda_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(sample_args(tmp_path, "--device", "cuda"), "CUDA device")
    assert not (tmp_path / "run").exists()


def broken_model(tmp_path, kind: str):
    model = tmp_path / f"model-{kind}"
    shutil.copytree(TOY_MODEL, model)
    if kind == "no-weights":
        (model / "model.safetensors").unlink()
    elif kind == "config-not-json":
        (model / "config.json").write_text("{not json")
    elif kind == "stub":
        (model / "config.json").write_text("{}")
        (model / "tokenizer.json").write_text("{}")
        (model / "tokenizer_config.json").write_text("{}")
    elif kind == "garbage-weights":
        (model / "model.safetensors").write_bytes(b"\x07" * 4096)
    return model


@needs_toy
@pytest.mark.parametrize("kind, match", [
    ("no-weights", "has no weights"), ("config-not-json", "cannot load"), ("stub", "cannot load"),
    ("garbage-weights", "not a readable safetensors"),
])
def test_a_broken_model_folder_is_refused_before_the_run_folder_exists(tmp_path, kind, match):
    model = broken_model(tmp_path, kind)
    refused(sample_args(tmp_path, model=model), match)
    assert not (tmp_path / "run").exists()
    refused(["eval", "--model", model, "--problems", "toy:arith?n=2", "--run", tmp_path / "run"], match)
    assert not (tmp_path / "run").exists()


@needs_toy
def test_a_question_longer_than_the_context_is_refused(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"question": "1 + 1 " * 350_000, "answer": "2"}) + "\n")  # ~2 MB
    refused(["sample", "--problems", problems, "--model", TOY_MODEL, "--run", tmp_path / "run"],
            "longer than")
    assert not (tmp_path / "run").exists()


def test_branch_split_is_checked(tmp_path):
    refused(["branch", "--run", tmp_path, "--split", "bogus"], "--split")
    refused(["branch", "--run", tmp_path, "--split", "regex:("], "--split")


def test_eval_compare_needs_per_problem_scores(tmp_path):
    for name in ("eval_a", "eval_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"label": name}))
    refused(["eval", "--compare", tmp_path / "eval_a", tmp_path / "eval_b"], "per-problem")


def test_slurm_names_a_stage_s_missing_required_option(tmp_path):
    refused(["slurm", tmp_path, "--stages", "sample"], "missing option '--problems'")
    assert not (tmp_path / "slurm").exists()


def test_settings_validate_for_library_callers_too():
    with pytest.raises(GpoError, match="--n must be between"):
        sample.SampleSettings(problems="p", model="m", n=10 ** 9)
    with pytest.raises(GpoError, match="--split"):
        branch.BranchSettings(split="bogus")
    with pytest.raises(GpoError, match="--k"):
        estimate.EstimateSettings(k=0)
    with pytest.raises(GpoError, match="--rule"):
        locate.LocateSettings(rule="biggest")


SETTINGS = {"sample": sample.SampleSettings, "estimate": estimate.EstimateSettings,
            "locate": locate.LocateSettings, "branch": branch.BranchSettings, "eval": evaluate.EvalSettings,
            "train": train.TrainSettings}
NOT_SETTINGS = {"system", "instruction"}  # '' on the command line means None in the settings


@pytest.mark.parametrize("command", SETTINGS)
def test_every_cli_default_equals_the_settings_default(command):
    fields = {f.name: f for f in dataclasses.fields(SETTINGS[command])}
    params = {p.name: p for p in get_command(app).commands[command].params}
    compared = 0
    for name, param in params.items():
        field = fields.get(name)
        if field is None or field.default is dataclasses.MISSING or param.required:
            continue
        default = param.default
        if name in ("model", "backend", "temperature", "top_p", "max_new_tokens") and command in ("estimate", "branch"):
            assert default is None and field.default is None, name  # None: sample's policy
        elif name in NOT_SETTINGS:
            assert default == field.default, name
        else:
            assert default == field.default, f"gpo {command} --{name}: CLI {default!r}, settings {field.default!r}"
        compared += 1
    assert compared >= 3


def test_a_failed_start_does_not_poison_the_corrected_command(tmp_path, fake_generator):
    """A start that wrote config.json and failed before any part (e.g. the model failed to load) leaves
    nothing to protect: the corrected command runs without --overwrite."""
    from stages.core.pipeline.runner import run_stage
    from stages.core.sources.problems import load_problems

    problems = load_problems("toy:arith?n=2&seed=0&split=train").table

    def fails():
        raise GpoError("model failed to load")

    bad = sample.SampleSettings(problems="toy", model="fake", n=2, max_new_tokens=32, backend="vllm")
    with pytest.raises(GpoError, match="failed to load"):
        run_stage(sample.STAGE, tmp_path, bad, input_table=problems, make_generator=fails)
    good = dataclasses.replace(bad, backend="hf")
    gen = fake_generator()
    manifest = run_stage(sample.STAGE, tmp_path, good, input_table=problems, make_generator=lambda: gen)
    assert manifest["rows"] == 4
