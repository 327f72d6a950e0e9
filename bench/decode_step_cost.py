"""What one decode step costs, factor by factor: from the throughput bound's setting to the backend's.

    python bench/decode_step_cost.py --model data/borrow-model --rows 105 --width 141 --padded 174

One forward of ROWS rows over a KV cache of WIDTH useful positions, one thread, fastest of 7, CPU ms, built
up one difference at a time: at the per-row rate of a 256-row batch (what estimate_throughput's bound
charges), at ROWS rows, at the PADDED width (rows of different lengths share the longest one's), over
strided views of a buffer with room to grow (kv_cache.GrowingLayer), and with a padding mask on them (what
the transformers backend runs). The defaults are the toy:borrow bench workload's means (bench/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_ms(model, rows: int, width: int, room: bool, mask: bool, reps: int = 7) -> float:
    import torch
    from transformers.cache_utils import DynamicCache

    from stages.core.generation.kv_cache import cache_layers, make_growing

    cfg = model.config
    heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    capacity = 2 * width + 1 if room else width + 1
    data = [[torch.randn(rows, heads, capacity, head_dim) * 0.1 for _ in range(2)]
            for _ in range(cfg.num_hidden_layers)]
    cache = make_growing(DynamicCache(ddp_cache_data=[(k[..., :width, :], v[..., :width, :]) for k, v in data]))
    token, pos = torch.ones((rows, 1), dtype=torch.long), torch.full((rows, 1), width, dtype=torch.long)
    attention = None
    if mask:  # half the rows left-padded by a fifth of the width
        attention = torch.ones((rows, width + 1), dtype=torch.long)
        attention[: rows // 2, : width // 5] = 0
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps):
            for layer, (k, v) in zip(cache_layers(cache), data):
                layer.set(k, v, width)
            c0 = time.process_time()
            model(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True, attention_mask=attention)
            best = min(best, time.process_time() - c0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/borrow-model")
    ap.add_argument("--rows", type=int, default=105)
    ap.add_argument("--width", type=int, default=141, help="useful cache positions per row")
    ap.add_argument("--padded", type=int, default=174, help="the batch's cache width with padding")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    full = step_ms(model, 256, args.width, False, False) * args.rows / 256
    steps = [("the bound's rate (per-row cost of 256 rows)", full),
             (f"{args.rows} rows", step_ms(model, args.rows, args.width, False, False)),
             (f"padded to width {args.padded}", step_ms(model, args.rows, args.padded, False, False)),
             ("over a growing buffer's strided views", step_ms(model, args.rows, args.padded, True, False)),
             ("with the padding mask (the backend)", step_ms(model, args.rows, args.padded, True, True))]
    base = steps[0][1]
    for name, ms in steps:
        print(f"{name:45} {ms:7.2f} ms  {ms / base:5.2f}x")


if __name__ == "__main__":
    main()
