"""The train stage on a tiny Llama: every method trains and saves, DPO learns the preferred answer,
a crashed run resumes from its `latest` checkpoint, LoRA saves adapter + merged model, reruns are checked.

The policy is a 2-layer Llama over a word-level tokenizer (built here, no hub), fine-tuned for a second so
that it answers every problem "answer: 7" or "answer: 9" about equally often: every problem's gold answer
is 7, so preference data and the online reward both have something to move.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.core.pipeline.errors import GpoError
from tests.helpers import BAD, GOOD, PROBLEMS, build_tokenizer, prompt_text, quiet, train_settings, write_run

torch = pytest.importorskip("torch")

def params_differ(a: Path, b: Path) -> bool:
    from transformers import AutoModelForCausalLM

    ma, mb = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    return any(not torch.equal(sa[k], sb[k]) for k in sa)


def answer_margin(model_dir: Path) -> float:
    """Mean over problems of log p(GOOD) - log p(BAD) given the prompt, as sampling would see it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logp(prompt: str, answer: str) -> float:
        p = tok(prompt).input_ids
        full = torch.tensor([p + tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]])
        with torch.no_grad():
            logits = model(full).logits.log_softmax(-1)[0, :-1]
        target = full[0, 1:]
        return logits[torch.arange(len(target)), target][len(p) - 1:].sum().item()

    return sum(logp(prompt_text(a, b), GOOD) - logp(prompt_text(a, b), BAD) for a, b in PROBLEMS) / len(PROBLEMS)


def read_metrics(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "metrics" / "metrics.parquet").to_pylist()


@pytest.mark.parametrize("method", ["dpo", "kto", "simpo", "orpo", "grpo"])
def test_each_method_trains_and_saves_a_changed_model(method, base_model, run_dir, tmp_path):
    from stages.train import train

    from stages.core.pipeline.artifacts import list_tables

    # kto goes to the default RUN/train/kto-gpo, whose metrics `gpo sql RUN` must see
    out = None if method == "kto" else tmp_path / method
    summary = train(run_dir, train_settings(base_model, method), out, log=quiet)
    out = out or run_dir / "train" / "kto-gpo"
    assert summary["global_step"] == 3
    rows = read_metrics(out)
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    assert len(losses) == 3
    assert all(r["method"] == method for r in rows)
    assert (out / "_SUCCESS").exists() and (out / "model" / "config.json").exists()
    assert params_differ(base_model, out / "model")
    if method == "grpo":  # the answer checker judged prefix + completion: some groups were mixed
        assert any(0 < r["rewards_correct_mean"] < 1 for r in rows if r.get("rewards_correct_mean") is not None)
        assert summary["rows"] == 16  # 8 original problems + 8 reset states
        assert answer_margin(out / "model") > answer_margin(base_model)  # the rewarded answer got likelier
    else:
        assert summary["tokenization"]["mismatch"] == 0  # TRL's prompt ids == the sampling-time ids
    if method == "kto":
        assert "metrics" in list_tables(run_dir)


def test_dpo_overfits_and_prefers_the_good_answer(base_model, run_dir, tmp_path):
    from stages.train import train

    out = tmp_path / "dpo"
    before = answer_margin(base_model)
    s = train_settings(base_model, "dpo", max_steps=-1, epochs=4, batch_size=8, learning_rate=3e-3)
    summary = train(run_dir, s, out, log=quiet)
    losses = [r["loss"] for r in read_metrics(out) if r.get("loss") is not None]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1
    assert summary["first_loss"] == pytest.approx(losses[0])
    after = answer_margin(out / "model")
    assert abs(before) < 1.0  # the base model is undecided between 7 and 9
    assert after > before + 1.0, (before, after)


def test_crash_then_resume_continues_from_latest_checkpoint(base_model, run_dir, tmp_path):
    from transformers import TrainerCallback

    from stages.train import train

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("injected crash")

    class CountSteps(TrainerCallback):
        steps: list = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    out = tmp_path / "resume"
    s = train_settings(base_model, "dpo", max_steps=6, save_steps=2)
    with pytest.raises(RuntimeError, match="injected crash"):
        train(run_dir, s, out, log=quiet, callbacks=[Crash()])
    assert json.loads((out / "checkpoints" / "latest").read_text())["checkpoint"] == "checkpoint-2"
    assert not (out / "_SUCCESS").exists() and not (out / "model").exists()
    (out / "checkpoints" / "checkpoint-4").mkdir()  # a save cut short: not named by `latest`, never trusted

    counter = CountSteps()
    summary = train(run_dir, s, out, log=quiet, callbacks=[counter])
    assert summary["resumed_from"] == "checkpoint-2"
    assert counter.steps == [3, 4, 5, 6]  # continued, not restarted
    assert summary["global_step"] == 6
    steps = [r["step"] for r in read_metrics(out) if r.get("loss") is not None]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (out / "_SUCCESS").exists()


def test_lora_saves_adapter_and_merged_model(base_model, run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from stages.train import train

    out = tmp_path / "lora"
    summary = train(run_dir, train_settings(base_model, "dpo", lora_r=4, learning_rate=1e-2), out, log=quiet)
    assert (out / "adapter" / "adapter_config.json").exists()
    assert any((out / "adapter").glob("adapter_model.*"))
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in k for k in merged.state_dict())
    assert params_differ(base_model, out / "model")
    assert summary["learning_rate"] == 1e-2


def test_rerun_is_noop_and_changed_settings_are_refused(base_model, run_dir, tmp_path):
    from transformers import TrainerCallback

    from stages.train import train

    class MustNotTrain(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            raise AssertionError("a finished run must not train again")

    out = tmp_path / "rerun"
    first = train(run_dir, train_settings(base_model, "orpo", max_steps=1), out, log=quiet)
    assert train(run_dir, train_settings(base_model, "orpo", max_steps=1), out, log=quiet,
                 callbacks=[MustNotTrain()]) == first
    with pytest.raises(GpoError, match="beta"):
        train(run_dir, train_settings(base_model, "orpo", max_steps=1, beta=0.5), out, log=quiet)
    again = train(run_dir, train_settings(base_model, "orpo", max_steps=1, beta=0.5), out, log=quiet, overwrite=True)
    assert again["beta"] == 0.5
    assert json.loads((out / "config.json").read_text())["settings"]["beta"] == 0.5


def test_empty_selection_and_bad_settings_are_gpo_errors(base_model, run_dir, tmp_path):
    from stages.train import train

    with pytest.raises(GpoError, match="no 'random-reset' rows"):
        train(run_dir, train_settings(base_model, "dpo", data="random-reset"), tmp_path / "x", log=quiet)
    with pytest.raises(GpoError, match="no 'random-reset' rows"):
        train(run_dir, train_settings(base_model, "grpo", data="random-reset"), tmp_path / "y", log=quiet)
    with pytest.raises(GpoError, match="--method"):
        train(run_dir, train_settings(base_model, "ppo"), tmp_path / "z", log=quiet)
    with pytest.raises(GpoError, match="unknown DPOConfig"):
        train(run_dir, train_settings(base_model, "dpo"), tmp_path / "w", log=quiet, config_overrides={"no_such": 1})
    with pytest.raises(GpoError, match="kto"):  # KTO's KL estimate needs a batch of at least 2
        train(run_dir, train_settings(base_model, "kto", batch_size=1), tmp_path / "v", log=quiet)
    assert not (tmp_path / "x").exists() and not (tmp_path / "w" / "config.json").exists()


def test_config_file_overrides_settings_and_trl_args(tmp_path, base_model):
    import dataclasses

    import gpo_cli.main  # noqa: F401  (importing the CLI registers its commands in COMMANDS)
    from gpo_cli.adapter import COMMANDS, merge
    from stages.core.pipeline.config import load_config_file
    from stages.train.settings import TrainSettings, resolve
    from stages.train.trl_adapter import build_config

    path = tmp_path / "train.toml"
    path.write_text('beta = 0.3\nlora_r = 8\n[trl]\nwarmup_steps = 7\nloss_type = "ipo"\n')
    merged, trl_args = merge(COMMANDS["train"], load_config_file(path), {"method": "dpo", "model": str(base_model)})
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    s, extra = resolve(TrainSettings(**{k: v for k, v in merged.items() if k in fields}), trl_args)
    assert (s.beta, s.lora_r, s.loss_type, extra) == (0.3, 8, "ipo", {"warmup_steps": 7})
    assert s.learning_rate == pytest.approx(5e-6)  # DPO default, x10 for LoRA
    config = build_config(s, extra, tmp_path / "out")
    assert (config.beta, config.warmup_steps, config.loss_type, config.report_to) == (0.3, 7, ["ipo"], [])
    (tmp_path / "train.yaml").write_text("epochs: 2.5\ntrl:\n  save_total_limit: 1\n")
    assert load_config_file(tmp_path / "train.yaml") == {"epochs": 2.5, "save_total_limit": 1}
    with pytest.raises(GpoError, match="divisible"):  # a generation batch must hold whole prompt groups
        build_config(resolve(train_settings(base_model, "grpo", batch_size=3))[0], {}, tmp_path / "out")
    (tmp_path / "bad.toml").write_text("beta = \n")
    with pytest.raises(GpoError, match="not valid TOML"):
        load_config_file(tmp_path / "bad.toml")
    with pytest.raises(GpoError, match="gpo train settings, not TRL arguments"):
        resolve(train_settings(base_model, "dpo"), {"beta": 0.2})


def test_chat_prompt_bos_is_not_doubled():
    from stages.train.data import prompt_for_tokenizer

    tok = build_tokenizer()  # adds <bos> itself, like Llama tokenizers
    ids = tok("q 1 + 2\n").input_ids
    assert prompt_for_tokenizer(tok, "q 1 + 2\n", ids) == ("q 1 + 2\n", "match")
    # A chat template writes the BOS as text; TRL's tok(text) would add a second one.
    assert prompt_for_tokenizer(tok, "<bos>q 1 + 2\n", ids) == ("q 1 + 2\n", "bos_dropped")
    assert prompt_for_tokenizer(tok, "q 1 + 3\n", ids)[1] == "mismatch"


def test_identical_pairs_train_once_and_are_counted():
    from stages.train.data import drop_duplicates

    keys = ("pair_id", "prompt", "chosen", "rejected")
    rows = [{"pair_id": "b", "prompt": "p", "chosen": "x", "rejected": "y"},
            {"pair_id": "a", "prompt": "p", "chosen": "x", "rejected": "y"},  # same pair, other id
            {"pair_id": "c", "prompt": "p", "chosen": "x", "rejected": "z"}]
    kept, dropped = drop_duplicates(rows, keys)
    assert dropped == 1 and [r["pair_id"] for r in kept] == ["a", "c"]
    assert drop_duplicates(kept, keys) == (kept, 0)


def test_starting_policy_by_hub_id_then_from_a_lora_train_output(base_model, run_dir, tmp_path, monkeypatch):
    """--model names the base as every stage does: a hub id from the local cache, then the previous
    `gpo train --out` folder whose LoRA adapter (not merged there) is merged into its base to start from."""
    import shutil

    from stages.core.generation.models import plain_folder, resolve_model
    from stages.train import train

    sha = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(base_model, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path / "gpo-cache"))

    first = tmp_path / "lora"
    train(run_dir, train_settings("org/tiny", "dpo", lora_r=4, merge_lora=False, learning_rate=1e-2), first, log=quiet)
    config = json.loads((first / "config.json").read_text())
    assert config["settings"]["model"] == "org/tiny"
    assert config["model_resolved"]["kind"] == "hub" and config["model_resolved"]["revision"] == sha
    assert (first / "adapter").is_dir() and not (first / "model").exists()

    second = tmp_path / "continued"
    summary = train(run_dir, train_settings(str(first), "dpo", max_steps=1), second, log=quiet)
    assert summary["global_step"] == 1
    resolved = json.loads((second / "config.json").read_text())["model_resolved"]
    assert resolved["kind"] == "adapter" and resolved["base"]["path"] == str(repo / "snapshots" / sha)
    start = Path(plain_folder(resolve_model(str(first))))  # the merged folder train started from
    assert start.parent == tmp_path / "gpo-cache" / "models"
    assert params_differ(base_model, start)  # the adapter's training is in the starting policy


def test_every_dpo_step_presents_a_full_batch_whatever_the_arm_holds(base_model, tmp_path):
    """Two arms with 8 and 7 pairs at batch 3: without dropping the short last batch their steps would hold
    3, 3, 2 and 3, 3, 1 pairs; the metrics show what each step really presented."""
    from transformers import AutoTokenizer

    from stages.train import train

    tok = AutoTokenizer.from_pretrained(base_model)
    presented = {}
    for n in (8, 7):
        run = write_run(tmp_path / f"run{n}", tok, problems=PROBLEMS[:n])
        out = tmp_path / f"dpo{n}"
        summary = train(run, train_settings(base_model, "dpo", max_steps=5, batch_size=3), out, log=quiet)
        per_step = [r["pairs"] for r in read_metrics(out) if r.get("pairs") is not None]
        presented[n] = (per_step, summary["pairs_presented"], summary["pairs_per_step"])
    assert presented[8] == presented[7] == ([3.0] * 5, 15, [3])
    with pytest.raises(GpoError, match="fewer than one full batch"):
        train(tmp_path / "run7", train_settings(base_model, "dpo", max_steps=5, batch_size=8), tmp_path / "x",
              log=quiet)

