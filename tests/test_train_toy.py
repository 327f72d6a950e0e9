"""Training on the real toy model: DPO toward gold solutions raises accuracy; SIGKILL mid-train resumes."""

import os
import signal
import subprocess
import sys

import pyarrow as pa
import pytest

from stages.branch import PAIR_SCHEMA
from stages.core.pipeline import artifacts
from stages.core.pipeline.query import run_query
from stages.core.sources.toy import toy_problems
from tests.helpers import TOY_MODEL, gpo
from tests.helpers import stall_env, wait_for_stall

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")]
SOURCE = "toy:arith?n=32&seed=5&split=train"



@pytest.fixture(scope="module")
def gold_pairs(tmp_path_factory):
    """A run whose branch table prefers each problem's gold solution to the model's own wrong samples."""
    run = tmp_path_factory.mktemp("gold")
    gpo("sample", "--problems", SOURCE, "--model", TOY_MODEL, "--run", run, "--n", 8, "--max-new-tokens", 48,
        "--backend", "hf")
    gold = {p["problem_id"]: p["gold_solution"] for p in toy_problems(32, 5, "train")}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOY_MODEL)
    pairs = []
    for r in artifacts.read_table(run, "sample").to_pylist():
        if r["reward"] == 1:
            continue
        chosen_ids = tok(gold[r["problem_id"]], add_special_tokens=False)["input_ids"]
        pairs.append({"pair_id": f"gold/{r['problem_id']}/{r['sample_idx']}", "data": "gpo",
                      "problem_id": r["problem_id"], "sample_idx": r["sample_idx"], "state_idx": 0,
                      "prefix_placement": "in-response", "prompt": r["prompt_text"],
                      "chosen": gold[r["problem_id"]], "rejected": r["response_text"],
                      "prompt_token_ids": r["prompt_token_ids"], "chosen_token_ids": chosen_ids,
                      "rejected_token_ids": r["response_token_ids"], "chosen_reward": 1, "rejected_reward": 0,
                      "prefix_tokens": 0, "chosen_tokens": len(chosen_ids),
                      "rejected_tokens": len(r["response_token_ids"]), "gold_answer": r["gold_answer"]})
    assert len(pairs) > 20
    artifacts.write_parquet_atomic(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA),
                                   run / "branch" / "shard-00000.chunk-00000.parquet", {"stage": "branch"})
    (run / "branch" / "_SUCCESS").write_text("{}")
    return run


def test_dpo_toward_gold_raises_toy_accuracy_on_those_problems(gold_pairs):
    run = gold_pairs
    out = run / "train" / "dpo-gold"
    # Plain DPO; at lr 1e-4 (beta 0.1) it collapses this model instead (accuracy 0.53 -> 0.32).
    gpo("train", "--run", run, "--method", "dpo", "--model", TOY_MODEL, "--out", out, "--epochs", 12,
        "--learning-rate", 1e-5, "--beta", 0.5, "--batch-size", 16, "--max-length", 128)
    for label, model in (("base", TOY_MODEL), ("dpo", out / "model")):
        gpo("eval", "--model", model, "--problems", SOURCE, "--run", run, "--label", label, "--n", 8,
            "--temperature", 1.0, "--no-greedy", "--max-new-tokens", 48, "--backend", "hf")
    acc = dict(run_query(run, "select label, avg(reward) from evals group by label")[1])
    assert acc["dpo"] > acc["base"] + 0.04, acc  # measured: 0.527 -> 0.594


def test_sigkill_during_train_resumes_from_the_latest_checkpoint(gold_pairs, tmp_path):
    args = ["train", "--run", str(gold_pairs), "--method", "dpo", "--model", str(TOY_MODEL), "--max-steps", "12",
            "--batch-size", "4", "--save-steps", "2", "--learning-rate", "3e-5", "--max-length", "128"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    gpo(*args, "--out", reference)
    # stall right after the second `latest` pointer (step 4 of 12) is renamed into place, then SIGKILL there
    env, marker = stall_env(tmp_path, "after:*/killed/checkpoints/latest", nth=2,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "gpo_cli.main", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_stall(proc, marker)  # fails if training finished or died before its second checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "_SUCCESS").exists() and not (killed / "model").exists()
    latest = artifacts.load_json(killed / "checkpoints" / "latest")["checkpoint"]
    assert latest == "checkpoint-4", latest
    out = gpo(*args, "--out", killed)
    assert f"resuming from {latest}" in out
    done, ref = (artifacts.load_json(p / "summary.json") for p in (killed, reference))
    assert done["global_step"] == ref["global_step"] == 12
    steps = [r["step"] for r in artifacts.read_table(killed, "metrics").to_pylist() if r.get("loss") is not None]
    assert len(steps) == len(set(steps)) and max(steps) == 12
