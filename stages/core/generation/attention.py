"""Grouped-query attention on CPU without copying the KV cache (issue 19).

transformers' `sdpa` attention hands PyTorch's SDPA its `enable_gqa` flag only when there is no attention
mask; with one (every padded batch the backend decodes) it first repeats each key/value head for its query
heads, copying the whole cache of every layer at every step. On CPU, PyTorch's SDPA takes `enable_gqa` with a
mask and gives bit-identical outputs (tests/test_hf_backend.py), so `gpo_sdpa` passes it there; everywhere
else (a GPU, where a mask with GQA would fall back to the math kernel; training, with gradients; no mask) it is
transformers' `sdpa` unchanged. Measured on SmolLM2-135M (9 query heads, 3 key/value heads), 84 rows at cache
length 301, one thread: 47 ms -> 3 ms per layer (bench/README.md).
"""

from __future__ import annotations

NAME = "gpo_sdpa"
_REGISTERED = False


def _forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (attention_mask is None or groups == 1 or query.device.type != "cpu" or torch.is_grad_enabled()
            or kwargs.get("output_attentions") or kwargs.get("cache") is not None
            or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_gqa_attention(model) -> bool:
    """Switch a grouped-query model on `sdpa` to `gpo_sdpa` (in place); True if it was switched."""
    global _REGISTERED
    cfg = model.config
    kv = getattr(cfg, "num_key_value_heads", None)
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or not kv or kv >= cfg.num_attention_heads:
        return False
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(NAME, _forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the same boolean masks `sdpa` gets
        _REGISTERED = True
    model.set_attn_implementation(NAME)
    return True
