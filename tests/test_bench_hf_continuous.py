"""bench/hf_continuous.py measures transformers' continuous batching only if it generates what was asked: each
state's K rollouts within that state's own budget, the same greedy tokens as gpo's backend, and the accounting
the bound charges (prompt length, tokens before EOS, stopped)."""

from __future__ import annotations

import pytest

from tests.helpers import TOY_MODEL

pytest.importorskip("torch")


def _work(temperature: float) -> dict:
    from stages.core.generation.backends import load_tokenizer

    tok = load_tokenizer(str(TOY_MODEL))
    prompts = ["start: 39 a: + 4 b: - 7 c: - 5 d: + 1", "start: 54 a: + 3 b: - 3 c: - 3", "start: 12 a: - 4 b: + 9"]
    ids = [tok(p)["input_ids"] for p in prompts]
    # greedily the first ends at its EOS (31 tokens), the others at their budgets
    return {"model": str(TOY_MODEL), "max_new_tokens": 40, "temperature": temperature, "top_p": 1.0,
            "states": [{"ids": i, "budget": b} for i, b in zip(ids, (40, 3, 20))]}


def test_greedy_rollouts_equal_gpos_backend_within_each_states_budget():
    from bench.hf_continuous import run_hf_cb
    from stages.core.generation.backends import Request, Sampling
    from stages.core.generation.hf_backend import HFGenerator

    work, k = _work(0.0), 2
    cb = run_hf_cb(work, k)
    gen = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=8)
    outs = gen.generate([Request(tuple(st["ids"]), k, i, st["budget"]) for i, st in enumerate(work["states"])],
                        Sampling(0.0, 1.0, work["max_new_tokens"]))
    for i, (st, out) in enumerate(zip(work["states"], outs)):
        assert cb["completions"][i] == [list(c.token_ids) for c in out]
        assert all(len(t) <= st["budget"] for t in cb["completions"][i])
    assert [len(cb["completions"][i][0]) for i in range(3)] == [31, 3, 20]
    expected = sorted((len(st["ids"]), len(c.token_ids), c.finish_reason == "stop")
                      for st, out in zip(work["states"], outs) for c in out)
    assert sorted(cb["decode"]) == expected and sum(stopped for *_, stopped in expected) == k
    assert cb["generated_tokens"] == sum(len(c.token_ids) for out in outs for c in out)
    # greedy cannot fork: each of a state's K requests may compute its prompt (block sharing can only lower it)
    prompts = sum(len(st["ids"]) for st in work["states"])
    assert prompts <= cb["prompt_tokens_computed"] <= k * prompts


def test_sampled_rollouts_come_k_per_state():
    from bench.hf_continuous import run_hf_cb

    work, k = _work(1.0), 3
    cb = run_hf_cb(work, k)
    assert [len(cb["completions"][i]) for i in range(3)] == [k, k, k]
    assert len(cb["decode"]) == 3 * k and cb["cpu_seconds"] > 0
    # a sampled state forks its K rows after one prefill of its prompt: fewer query tokens than K prefills
    prompts = sum(len(st["ids"]) for st in work["states"])
    assert prompts <= cb["prompt_tokens_computed"] < k * prompts
