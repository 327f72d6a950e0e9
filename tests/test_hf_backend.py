"""The transformers backend's cross-state prefix sharing: same samples as per-state prefill, far fewer
prompt tokens computed."""

from __future__ import annotations

import pytest

from stages.core.generation.backends import Request, Sampling
from stages.core.pipeline.hashing import stable_seed
from stages.core.generation.hf_backend import HFGenerator, grouped_order, prefix_groups
from tests.helpers import TOY_MODEL


def test_prefix_groups_put_each_prompt_under_a_longest_extension():
    prompts = [(1, 2), (5,), (1, 2, 3, 4), (1, 2, 3), (5, 6), (1, 9), (1, 2)]
    roots, root_of = prefix_groups(prompts)
    for p, g in zip(prompts, root_of):
        assert roots[g][:len(p)] == p  # every prompt is a prefix of its root
    assert sorted(roots) == [(1, 2, 3, 4), (1, 9), (5, 6)]  # no root is a prefix of another
    assert grouped_order(prompts) == [0, 2, 3, 6, 1, 4, 5]  # groups contiguous, in first-appearance order


@pytest.fixture(scope="module")
def per_state():
    return HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", share_prefixes=False)


@pytest.fixture(scope="module")
def shared(per_state):
    return HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", model_obj=per_state.model,
                       tokenizer=per_state.tokenizer)


@pytest.fixture(scope="module")
def state_requests(per_state):
    """Every line state of 4 sampled toy trajectories (K=3 each, rollouts cut at 16 tokens to keep it quick),
    plus a duplicate and an unrelated prompt, interleaved as estimate might send them; and the trajectories'
    lengths."""
    from stages.core.sources.problems import load_problems
    from stages.core.method.steps import make_splitter

    tok = per_state.tokenizer
    problems = load_problems("toy:arith?n=4&seed=3&split=train").table.to_pylist()
    prompts = [tuple(tok(p["question"] + "\n")["input_ids"]) for p in problems]
    samples = per_state.generate([Request(p, 1, stable_seed(1, i)) for i, p in enumerate(prompts)],
                                 Sampling(1.0, 1.0, 40))
    splitter = make_splitter("line")
    reqs, lengths = [], []
    for p, (c,) in zip(prompts, samples):
        steps = splitter.split(list(c.token_ids), tok.batch_decode([[t] for t in c.token_ids]))
        assert len(steps) >= 2
        lengths.append(len(p) + steps[-1].token_start)
        for st in steps:
            reqs.append(Request(p + c.token_ids[:st.token_start], 3, stable_seed(2, len(reqs)),
                                min(16, 40 - st.token_start)))
    reqs = reqs[::2] + reqs[1::2] + [reqs[3], Request(tuple(tok("z: 1\n")["input_ids"]), 2, 99)]
    return reqs, lengths


@pytest.mark.parametrize("sampling", [Sampling(1.0, 1.0, 40, logprobs=True), Sampling(0.7, 0.9, 40, logprobs=True),
                                      Sampling(0.0, 1.0, 40, logprobs=True)], ids=["t1", "t0.7-p0.9", "greedy"])
def test_prefix_sharing_samples_the_same_tokens_as_per_state_prefill(per_state, shared, state_requests, sampling):
    reqs, lengths = state_requests
    want, got = per_state.generate(reqs, sampling), shared.generate(reqs, sampling)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert [[c.finish_reason for c in g] for g in got] == [[c.finish_reason for c in g] for g in want]
    for g_got, g_want in zip(got, want):
        for a, b in zip(g_got, g_want):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prefix_sharing_computes_about_one_trajectory_of_prompt_tokens(shared, state_requests):
    reqs, lengths = state_requests
    gen = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", model_obj=shared.model,
                      tokenizer=shared.tokenizer)
    gen.generate(reqs, Sampling(1.0, 1.0, 8))
    states_total = sum(len(r.prompt_ids) for r in reqs)
    computed = gen.stats["prompt_tokens_computed"]
    # the 4 trajectories' prompts plus one extra token per request (its own last prompt token), and the
    # unrelated prompt; the per-state sum is several times that
    assert computed <= 1.2 * (sum(lengths) + len(reqs[-1].prompt_ids))
    assert computed < states_total / 2
    assert gen.stats["prompt_tokens"] == states_total


def test_batch_boundaries_inside_a_prefix_group_do_not_change_samples(shared, state_requests):
    reqs, _ = state_requests
    small = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", model_obj=shared.model,
                        tokenizer=shared.tokenizer, batch_size=7)  # splits groups mid-trajectory
    sampling = Sampling(1.0, 1.0, 8)
    assert [[c.token_ids for c in g] for g in small.generate(reqs, sampling)] == \
        [[c.token_ids for c in g] for g in shared.generate(reqs, sampling)]


def test_grouped_query_attention_on_cpu_keeps_every_token():
    """`gpo_sdpa` (stages/core/generation/attention.py) hands SDPA its own GQA instead of repeating K/V heads
    under a padding mask; ragged, padded batches must decode exactly what transformers' `sdpa` decodes."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ref = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=4, refill=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(ref.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    gqa = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=4, model_obj=copy.deepcopy(model),
                      tokenizer=ref.tokenizer)
    plain = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=4, model_obj=model,
                        tokenizer=ref.tokenizer)
    plain.model.set_attn_implementation("sdpa")
    assert gqa.describe()["attention"] == "gpo_sdpa" and plain.describe()["attention"] == "sdpa"
    assert ref.describe()["attention"] == "sdpa"  # 4 key/value heads for 4 query heads: nothing to gain
    from stages.core.sources.problems import load_problems

    questions = [p["question"] + "\n" for p in load_problems("toy:arith?n=6&seed=5&split=train").table.to_pylist()]
    prompts = [tuple(ref.tokenizer(q)["input_ids"])[:cut] for q, cut in zip(questions, (2, 19, 7, 15, 11, 5))]
    assert len({len(p) for p in prompts}) == 6  # every batch is padded: the masked path is the one under test
    reqs = [Request(p, 2, stable_seed(1, i), [30, 3, 17, 9, 1, 22][i]) for i, p in enumerate(prompts)]
    for sampling in (Sampling(0.0, 1.0, 30), Sampling(1.0, 0.9, 30)):
        got, want = gqa.generate(reqs, sampling), plain.generate(reqs, sampling)
        assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
        assert sum(len(c.token_ids) for g in got for c in g) > 100


def test_top_p_head_samples_what_a_full_sort_samples():
    """The sampler's top-p cut (`top_p_head`, topk instead of sorting the whole vocabulary) must pick the token a
    full sort picks for every uniform: peaked, flat and tied rows, several top-p values."""
    import torch

    from stages.core.generation.nucleus import top_p_head

    def pick(probs, top_p, u, head):
        probs, order = head(probs)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
        cdf = probs.cumsum(-1)
        pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp(max=cdf.shape[1] - 1)
        return order.gather(1, pos).squeeze(1), probs.shape[-1]

    g = torch.Generator().manual_seed(0)
    cut = 0
    for scale in (0.5, 3.0, 10.0):
        for top_p in (0.5, 0.9, 0.99):
            for tied in (False, True):
                logits = torch.randn(32, 5000, generator=g) * scale
                probs = torch.softmax(logits.round() if tied else logits, dim=-1)
                u = torch.rand(32, generator=g).clamp(min=1e-9)
                want, _ = pick(probs, top_p, u, lambda p: p.sort(dim=-1, descending=True))
                got, width = pick(probs, top_p, u, lambda p: top_p_head(torch, p, top_p))
                assert torch.equal(got, want)
                cut += width < 5000
    assert cut >= 4  # the peaked rows took the short path, so it is the one under test


def test_default_batch_size_follows_the_kv_cache_a_batch_would_hold():
    import torch
    from transformers import LlamaConfig

    from stages.core.generation.base import default_batch_size

    toy = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4)
    smol = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30)
    assert default_batch_size(toy, torch.float32, "cpu") == 256  # 4 KiB per position: 2 GiB at 256 x 2,048
    assert default_batch_size(smol, torch.float32, "cpu") == 128  # 46 KiB per position: 23 GiB would not do
    assert default_batch_size(smol, torch.bfloat16, "cuda") == 64


def test_uniforms_drawn_in_blocks_are_the_ones_drawn_one_by_one():
    """The sampler draws each row's uniforms a block at a time (`draws.Draws`); a sample's tokens stay those of
    its seed only if that block is the sequence its generator yields one draw at a time, across blocks."""
    import torch

    from stages.core.generation.draws import BLOCK, Draws

    for seed in (0, 7, stable_seed(3, 1)):
        one = torch.Generator().manual_seed(seed)
        want = [float(torch.rand((), generator=one)) for _ in range(2 * BLOCK + 5)]
        draws = Draws(torch, seed)
        assert [draws.next() for _ in range(2 * BLOCK + 5)] == want
