"""Hostile model output never crashes a shard: no EOS, no newline, empty, enormous, pathological maths."""

import json

import pytest

from stages import branch, estimate, locate, sample
from stages.core import artifacts
from stages.core.backends import FakeGenerator
from stages.core.runner import run_stage
from stages.core.sources import load_problems

HOSTILE = [
    "",                                                   # empty
    "I think the answer is 4 because " * 40,              # no newline at all, never ends (cut at the budget)
    "\\boxed{2^{2^{2^{2^{99999}}}}}",                     # huge power
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 600,     # deeply nested LaTeX
    "Step one.\n\nStep two.\n" * 2000,                    # enormous
    "Let me add.\nSo 2 + 2 = 4.\nThe answer is \\boxed{4}",  # a normal, correct one
]


@pytest.fixture(scope="module")
def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(HOSTILE * 3 + ["What is 2 + 2?\n"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")


def test_hostile_outputs_get_verdicts_and_the_stages_continue(tmp_path, byte_tokenizer, monkeypatch):
    monkeypatch.setenv("GPO_CHECK_TIMEOUT_S", "1.0")
    problems_file = tmp_path / "p.jsonl"
    problems_file.write_text("\n".join(json.dumps({"question": f"What is 2 + 2? ({i})", "answer": "4"})
                                       for i in range(3)) + "\n")
    problems = load_problems(str(problems_file)).table

    def respond(prompt_ids, seed):
        if byte_tokenizer.decode(list(prompt_ids)).endswith("?\n") is False and len(prompt_ids) > 40:
            return "\nSo the answer is \\boxed{4}"  # continuations from a reset state
        return HOSTILE[seed % len(HOSTILE)]

    gen = FakeGenerator(byte_tokenizer, respond)
    settings = sample.SampleSettings(problems="p", model="fake", n=12, max_new_tokens=300, template="plain")
    run_stage(sample.STAGE, tmp_path / "run", settings, input_table=problems, make_generator=lambda: gen)
    rows = artifacts.read_table(tmp_path / "run", "sample").to_pylist()
    assert len(rows) == 36
    assert {r["verdict_checker"] for r in rows} == {"math"}
    assert any(r["finish_reason"] == "length" for r in rows)  # never emitted EOS within the budget
    assert any(r["num_response_tokens"] == 0 for r in rows)
    for r in rows:
        if r["response_text"].startswith("\\boxed{2^"):
            assert r["reward"] == 0  # judged (wrong or timed out), never a crash
    run_stage(estimate.STAGE, tmp_path / "run", estimate.EstimateSettings(estimator="full", k=2, scope="all"),
              make_generator=lambda: gen)
    run_stage(locate.STAGE, tmp_path / "run", locate.LocateSettings(scope="all"))
    run_stage(branch.STAGE, tmp_path / "run", branch.BranchSettings(m=3), make_generator=lambda: gen)
    located = artifacts.read_table(tmp_path / "run", "locate").to_pylist()
    assert len(located) == 36 and any(r["reason"] == "not_estimated" for r in located)  # empty responses
    assert (tmp_path / "run" / "branch" / "_SUCCESS").exists()
