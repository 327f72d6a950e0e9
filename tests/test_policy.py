"""The policy that sampled: estimate and branch take sample's model, backend and sampling values unless told,
filled once when the runner resolves their settings (stages.core.generation.sampling.InheritedPolicy); and
the options the settings own (problem fields, eval's greedy n, train's checks, eval's --pass-at)."""

import dataclasses
import inspect

import pytest

from gpo_cli import adapter
from stages import branch, estimate, eval as evaluation, sample, train
from stages.core.generation import sampling
from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.runner import run_stage
from stages.core.pipeline.settings import Runtime, stored
from stages.core.sources.problems import load_problems
from tests.helpers import refused

SOURCE = "toy:arith?n=4&seed=0&split=train"
SAMPLED = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 64}


class Recording:
    """A generator that notes the sampling values of every call."""

    def __init__(self, gen):
        self.gen, self.seen = gen, []
        self.tokenizer = gen.tokenizer

    def generate(self, requests, sampling):
        self.seen.append(sampling)
        return self.gen.generate(requests, sampling)

    def describe(self):
        return self.gen.describe()


def sampled(run, fake_generator) -> Recording:
    gen = Recording(fake_generator())
    run_stage(sample.STAGE, run, sample.SampleSettings(problems=SOURCE, model="fake", n=2, **SAMPLED),
              input_table=load_problems(SOURCE).table, make_generator=lambda: gen)
    return gen


STAGES = {"estimate": (estimate.STAGE, estimate.EstimateSettings, {"k": 2, "estimator": "full"}),
          "branch": (branch.BASELINE_ONLY_STAGE, branch.BranchSettings, {"m": 2, "baseline": True})}


@pytest.mark.parametrize("name", STAGES)
def test_unset_policy_is_sample_s_and_a_given_value_wins(tmp_path, fake_generator, name):
    stage, Settings, own = STAGES[name]
    for run, given in ((tmp_path / "inherit", {}), (tmp_path / "told", {"temperature": 0.5})):
        gen = sampled(run, fake_generator)
        gen.seen.clear()
        run_stage(stage, run, Settings(**own, **given), make_generator=lambda: gen)
        settings = artifacts.load_json(run / "branch" / "config.json" if name == "branch"
                                       else run / name / "config.json")["settings"]
        want = {**SAMPLED, **given}
        assert {k: settings[k] for k in want} == want
        assert settings["model"] == "fake" and settings["backend"] == "auto"
        assert gen.seen and {(s.temperature, s.top_p) for s in gen.seen} == {(want["temperature"], 0.9)}
        assert {s.max_new_tokens for s in gen.seen} == {64}


def test_chunks_use_the_resolved_settings_not_sample_s_config(tmp_path, fake_generator, monkeypatch):
    """The rule is applied once, at resolution: a chunk never reads sample's settings again."""
    gen = sampled(tmp_path, fake_generator)
    calls = []
    real = estimate.with_policy
    monkeypatch.setattr(estimate, "with_policy", lambda run, s: calls.append(s) or real(run, s))
    monkeypatch.setattr(estimate, "sampled_with", lambda run: pytest.fail("sample's settings read in a chunk"))
    run_stage(estimate.STAGE, tmp_path, estimate.EstimateSettings(k=2, estimator="full"),
              make_generator=lambda: gen, chunk_groups=1)  # four chunks
    assert len(calls) == 1
    assert artifacts.load_json(tmp_path / "estimate" / "_shards" / "00000.json")["chunks"] == 4


def test_the_library_run_resolves_once_and_loads_sample_s_model(tmp_path, fake_generator, monkeypatch):
    """What the CLI runs (sampling.run_generating): the generator is made for the inherited model and
    backend, the model is checked, and the policy is filled once."""
    from stages.core.generation import backends

    gen = sampled(tmp_path, fake_generator)
    made, checked, calls = [], [], []
    monkeypatch.setattr(backends, "generator_factory", lambda *a: made.append(a[:2]) or (lambda: gen))
    monkeypatch.setattr(sampling, "preflight", lambda model, *a: checked.append(model))
    real = estimate.with_policy
    monkeypatch.setattr(estimate, "with_policy", lambda run, s: calls.append(s) or real(run, s))
    manifest = sampling.run_generating(estimate.STAGE, tmp_path, estimate.EstimateSettings(k=2), Runtime())
    assert manifest["rows"] > 0
    assert made == [("auto", "fake")] and checked == ["fake"] and len(calls) == 1


def test_sample_s_values_given_explicitly_are_the_same_run(tmp_path, fake_generator):
    """Inherited or given, the same values are the same settings: the rerun is a no-op."""
    gen = sampled(tmp_path, fake_generator)
    run_stage(estimate.STAGE, tmp_path, estimate.EstimateSettings(k=2), make_generator=lambda: gen)
    before = gen.gen.calls
    explicit = estimate.EstimateSettings(k=2, model="fake", backend="auto", **SAMPLED)
    run_stage(estimate.STAGE, tmp_path, explicit, make_generator=lambda: gen)
    assert gen.gen.calls == before


def test_unresolved_policy_is_refused_not_guessed():
    with pytest.raises(GpoError, match="temperature, top_p, max_new_tokens unset"):
        estimate.EstimateSettings().sampling
    assert branch.BranchSettings(**SAMPLED).sampling.temperature == 0.8


def test_policy_fields_are_declared_once():
    names = [f.name for f in dataclasses.fields(sampling.InheritedPolicy)]
    assert names == ["temperature", "top_p", "max_new_tokens", "seed", "model", "backend"]
    for Settings in (estimate.EstimateSettings, branch.BranchSettings):
        assert issubclass(Settings, sampling.InheritedPolicy)
        assert not set(names) & set(Settings.__dict__.get("__annotations__", {}))


def test_problem_fields_are_settings_stored_only_when_not_default():
    plain = sample.SampleSettings(problems="p.jsonl", model="m")
    assert not {"question_field", "answer_field", "id_field"} & set(stored(plain))  # older runs' hash holds
    assert set(stored(plain)) == {"problems", "model", "n", "temperature", "top_p", "max_new_tokens", "seed",
                                  "backend", "template", "system", "instruction", "checker"}
    told = dataclasses.replace(plain, question_field="prompt", id_field="uid")
    assert stored(told)["question_field"] == "prompt" and stored(told)["id_field"] == "uid"
    assert "answer_field" not in stored(told)
    assert told.fields.question == "prompt" and told.fields.answer == "answer"


def test_eval_samples_once_per_problem_when_greedy():
    assert evaluation.EvalSettings(problems="p", model="m", n=8, temperature=0).n == 1
    assert evaluation.EvalSettings(problems="p", model="m", n=8, temperature=1.0).n == 8


def test_train_settings_check_themselves():
    with pytest.raises(GpoError, match="--method must be one of"):
        train.TrainSettings(method="ppo", model="m")
    with pytest.raises(GpoError, match="missing option '--model'"):
        train.TrainSettings(method="dpo", model=None)
    with pytest.raises(GpoError, match="no-eos is not available for simpo"):
        train.TrainSettings(method="simpo", model="m", truncated="no-eos")


def test_eval_pass_at_is_eval_s_own_name(tmp_path):
    refused(["eval", "--model", "m", "--problems", SOURCE, "--run", tmp_path, "--pass-at", "1,x"],
            "--pass-at must be comma-separated integers")
    refused(["eval", "--model", "m", "--problems", SOURCE, "--run", tmp_path, "--k", "1,4"], "No such option")


def test_the_adapter_does_not_test_command_names():
    source = inspect.getsource(adapter)
    assert "name ==" not in source and "name !=" not in source and '"eval"' not in source
