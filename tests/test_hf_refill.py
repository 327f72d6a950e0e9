"""Continuous batching in the transformers backend (refill): rows that finish are replaced by waiting
requests, and every request still gets the tokens it gets in a static batch, or alone."""

from __future__ import annotations

import pytest

from stages.core.generation.backends import Request, Sampling
from stages.core.generation.hf_backend import HFGenerator
from stages.core.pipeline.hashing import stable_seed
from tests.helpers import TOY_MODEL

pytestmark = pytest.mark.skipif(not (TOY_MODEL / "config.json").exists(), reason="data/toy-model not built")


@pytest.fixture(scope="module")
def static():
    return HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=8, refill=False)


def refill_gen(static, batch_size=8):
    return HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=batch_size,
                       model_obj=static.model, tokenizer=static.tokenizer)


@pytest.fixture(scope="module")
def ragged(static):
    """Prompts of 2 to ~40 tokens, some prefixes of others, budgets of 1 to 40 tokens, n of 1 to 3."""
    from stages.core.sources.problems import load_problems

    tok = static.tokenizer
    problems = load_problems("toy:arith?n=6&seed=5&split=train").table.to_pylist()
    prompts = [tuple(tok(p["question"] + "\n")["input_ids"]) for p in problems]
    outs = static.generate([Request(p, 1, stable_seed(4, i)) for i, p in enumerate(prompts)], Sampling(1.0, 1.0, 40))
    reqs = []
    for i, (p, (c,)) in enumerate(zip(prompts, outs)):
        for cut in (0, len(c.token_ids) // 3, 2 * len(c.token_ids) // 3):
            reqs.append(Request(p + c.token_ids[:cut], 1 + len(reqs) % 3, stable_seed(9, len(reqs)),
                                [40, 2, 17, 5, 1, 30][len(reqs) % 6]))
    reqs.append(Request(tuple(tok("z")["input_ids"]), 2, 77, 40))  # a very short prompt
    return reqs


@pytest.mark.parametrize("sampling", [Sampling(0.0, 1.0, 40, logprobs=True), Sampling(1.0, 1.0, 40, logprobs=True),
                                      Sampling(0.7, 0.9, 40)], ids=["greedy", "t1", "t0.7-p0.9"])
def test_refill_samples_the_same_tokens_as_static_batches(static, ragged, sampling):
    gen = refill_gen(static)
    want, got = static.generate(ragged, sampling), gen.generate(ragged, sampling)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert [[c.finish_reason for c in g] for g in got] == [[c.finish_reason for c in g] for g in want]
    if sampling.logprobs:
        for g_got, g_want in zip(got, want):
            for a, b in zip(g_got, g_want):
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert gen.stats["admissions"] > 1  # waiting requests joined a running batch
    lengths = {len(c.token_ids) for g in got for c in g}
    assert min(lengths) <= 2 and max(lengths) >= 15  # the rows really were ragged


@pytest.mark.parametrize("options", [{"inplace_cache": False}, {"compact": False}],
                         ids=["plain-cache-layers", "no-compaction"])
def test_refill_with_plain_cache_layers_or_without_compaction_samples_the_same_tokens(static, ragged, options):
    """Joins of plain transformers cache layers take the one-copy path (no spare rows to write into)."""
    gen = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=8, model_obj=static.model,
                      tokenizer=static.tokenizer, **options)
    sampling = Sampling(1.0, 1.0, 40)
    got, want = gen.generate(ragged, sampling), static.generate(ragged, sampling)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert gen.stats["admissions"] > 1


def test_a_request_joining_mid_batch_gets_the_tokens_it_gets_alone(static, ragged):
    gen = refill_gen(static, batch_size=6)
    sampling = Sampling(1.0, 1.0, 40)
    together = gen.generate(ragged, sampling)
    for req, group in list(zip(ragged, together))[-6:]:  # the last ones join batches already running
        alone = refill_gen(static).generate([req], sampling)[0]
        assert [c.token_ids for c in alone] == [c.token_ids for c in group]


def test_refill_keeps_one_prefill_per_prefix_group(static, ragged):
    per_request = HFGenerator(str(TOY_MODEL), dtype="fp32", device="cpu", batch_size=64, refill=False,
                              model_obj=static.model, tokenizer=static.tokenizer)
    gen = refill_gen(static, batch_size=64)
    per_request.generate(ragged, Sampling(1.0, 1.0, 8))
    gen.generate(ragged, Sampling(1.0, 1.0, 8))
    assert gen.stats["prompt_tokens_computed"] == per_request.stats["prompt_tokens_computed"]


def test_a_prefix_group_larger_than_the_batch_is_prefilled_once(static, ragged):
    """Refill holds a window's prefilled roots until every request of it has joined, so a trajectory whose
    states outnumber the batch's rows is still prefilled once (static batches prefill it per batch)."""
    root = max(ragged, key=lambda r: len(r.prompt_ids)).prompt_ids
    states = [Request(root[:cut], 3, stable_seed(5, cut), 6) for cut in range(2, len(root) + 1)]
    assert sum(r.n for r in states) > 4 * 8  # more rows than the refill window (4 batches of 8) itself
    gen = refill_gen(static, batch_size=8)
    got = gen.generate(states, Sampling(1.0, 1.0, 6))
    assert gen.stats["prompt_tokens_computed"] == len(root) - 1 + len(states)  # the root's head, each last token
    assert gen.stats["prefills"] == 1 and gen.stats["admissions"] > 1
    assert [[c.token_ids for c in g] for g in got] == \
        [[c.token_ids for c in g] for g in static.generate(states, Sampling(1.0, 1.0, 6))]


def test_compaction_keeps_each_rows_own_columns_in_order():
    import torch

    from stages.core.generation.kv_cache import cache_layers, compact, select_rows
    from transformers.cache_utils import DynamicCache

    keys = torch.arange(2 * 1 * 6 * 1, dtype=torch.float32).view(2, 1, 6, 1)  # batch 2, 1 head, width 6, dim 1
    cache = DynamicCache(ddp_cache_data=[(keys, -keys)])
    mask = torch.tensor([[1, 1, 0, 0, 0, 1],   # a short state of a longer root, plus its own last token
                         [1, 1, 1, 1, 1, 1]])
    row0 = select_rows(cache, torch.tensor([0]))
    cut, cut_mask = compact(torch, row0, mask[:1])
    assert cut_mask.tolist() == [[1, 1, 1]]
    assert cache_layers(cut)[0].keys.flatten().tolist() == [0.0, 1.0, 5.0]
    assert cache_layers(cut)[0].values.flatten().tolist() == [-0.0, -1.0, -5.0]
    assert cache_layers(cache)[0].keys.shape[-2] == 6  # select_rows left the source intact
    both, both_mask = compact(torch, cache, mask)  # the longest row keeps the width; the short one is left-padded
    assert both_mask.tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    kept = cache_layers(both)[0].keys[:, 0, :, 0]
    assert kept[0, 3:].tolist() == [0.0, 1.0, 5.0] and kept[1].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]


def running_cache(capacity: int):
    """3 rows of width 4 (row r, column c holds 4r + c + 1), in buffers with room for `capacity` rows whose
    spare rows hold NaN (what an earlier occupant or an uninitialised buffer could leave there)."""
    import torch

    from stages.core.generation.kv_cache import make_growing, select_rows_into
    from transformers.cache_utils import DynamicCache

    keys = torch.arange(3 * 4, dtype=torch.float32).view(3, 1, 4, 1) + 1
    cache = make_growing(DynamicCache(ddp_cache_data=[(keys, -keys)]))
    select_rows_into(cache, torch.arange(3), capacity)
    layer = cache.layers[0]
    layer._k[3:], layer._v[3:] = float("nan"), float("nan")
    return cache, layer, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])


def test_a_join_writes_only_the_new_rows_into_the_buffers_spare_rows():
    import torch

    from stages.core.generation.kv_cache import join_caches, make_growing
    from transformers.cache_utils import DynamicCache

    cache, layer, mask = running_cache(capacity=6)
    buffer, shape = layer._k.data_ptr(), layer._k.shape
    new_keys = torch.tensor([100.0, 101.0, 200.0, 201.0]).view(2, 1, 2, 1)
    new = make_growing(DynamicCache(ddp_cache_data=[(new_keys, -new_keys)]))
    # request 1 (2 samples) and request 0 (1 sample): an index may repeat a row
    cache, joined = join_caches(torch, cache, mask, new, torch.ones((2, 2), dtype=torch.long), torch.tensor([1, 1, 0]))
    assert layer._k.data_ptr() == buffer and layer._k.shape == shape  # the running rows were not copied
    assert joined.tolist() == mask.tolist() + [[0, 0, 1, 1]] * 3
    assert layer.keys[:, 0, :, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12],
                                               [0, 0, 200, 201], [0, 0, 200, 201], [0, 0, 100, 101]]
    assert torch.equal(layer.values, -layer.keys)  # zeros (not the NaN left there) under the masked columns
    layer.update(torch.full((6, 1, 1, 1), 7.0), torch.full((6, 1, 1, 1), -7.0))
    assert layer._k.data_ptr() == buffer and layer.keys[:, 0, -1, 0].tolist() == [7] * 6


def test_a_join_that_does_not_fit_goes_into_a_new_buffer_with_room():
    import torch

    from stages.core.generation.kv_cache import join_caches, make_growing
    from transformers.cache_utils import DynamicCache

    cache, layer, mask = running_cache(capacity=4)
    mask[1, 0] = 0  # column 0 is attended by nobody: it goes
    new_keys = torch.full((1, 1, 5, 1), 100.0)  # wider than the running cache, and 2 rows for 1 spare one
    new = make_growing(DynamicCache(ddp_cache_data=[(new_keys, -new_keys)]))
    buffer = layer._k.data_ptr()
    cache, joined = join_caches(torch, cache, mask, new, torch.ones((1, 5), dtype=torch.long), torch.tensor([0, 0]))
    assert layer._k.data_ptr() != buffer
    assert joined.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [1] * 5, [1] * 5]
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 0, 2, 3, 4], [0, 0, 6, 7, 8], [0, 0, 10, 11, 12],
                                               [100] * 5, [100] * 5]
    assert torch.equal(layer.values, -layer.keys)
    assert layer._k.shape[-2] > 5 and layer._k.shape[0] == 5  # room to grow: the next step writes in place
    layer.batch_select_indices(torch.tensor([2, 0]))  # rows leave: only the used columns are copied, room kept
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 0, 10, 11, 12], [0, 0, 2, 3, 4]] and layer._k.shape[-2] > 5


def test_dropping_finished_rows_moves_only_the_rows_past_the_new_batch_size():
    import torch

    from stages.core.generation.kv_cache import cache_layers, drop_rows, make_growing
    from transformers.cache_utils import DynamicCache

    keys = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 3, 1).contiguous()  # row r holds r
    cache = make_growing(DynamicCache(ddp_cache_data=[(keys, -keys)]))
    layer = cache_layers(cache)[0]
    layer.update(torch.zeros(6, 1, 1, 1), torch.zeros(6, 1, 1, 1))  # now a buffer with room
    buffer = layer._k.data_ptr()
    order = drop_rows(torch, cache, [0, 2, 4, 5])  # rows 1 and 3 finished: 4 and 5 fill their slots
    assert order == [0, 4, 2, 5]
    assert layer.keys[:, 0, :3, 0].tolist() == [[r] * 3 for r in order] and layer.keys.shape[0] == 4
    assert torch.equal(layer.values[:, :, :3], -layer.keys[:, :, :3])
    assert layer._k.data_ptr() == buffer  # moved in place: the cache was not copied
