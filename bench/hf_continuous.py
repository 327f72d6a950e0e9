"""transformers' own continuous batching (`init_continuous_batching`, the engine behind `generate_batch`) as a
variant of `estimate_throughput.py`: the library continuous batcher issue 19 asks to try before a hand-written
loop. gpo's backend does not use it: it samples every row from one batch-wide generator, so a rollout's tokens
depend on what else is in the batch and "the same tokens for the same seeds" cannot hold.

Each state is one request with its own token budget; `num_return_sequences=K` forks its K samples after one
prefill, and block sharing reuses the pages of prefixes a state shares with earlier ones. On CPU (no flash
kernels) the engine packs every row of a step into one sequence and runs SDPA over all the pages the step reads
with a dense mask, so one step's attention grows with the square of its rows. Its defaults size the batch for
a GPU; on the toy:borrow workload of bench/README (432 rollouts, one thread, CPU seconds, 2026-12-04) at most
256 / 64 / 32 / 16 / 8 rows per step took 17.8 / 12.7 / 9.6 / 9.0 / 11.0 s (gpo's backend: 3.3 s), hence 16.
"""

from __future__ import annotations

import math
import time


def cb_config(work: dict, k: int, rows: int = 16, page_size: int = 16):
    """Continuous-batching settings: at most `rows` rows per step, pages for all of them at full length."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    longest = max(len(st["ids"]) for st in work["states"]) + work["max_new_tokens"]
    rows = min(rows, len(work["states"]) * k)
    return ContinuousBatchingConfig(page_size=page_size, num_blocks=rows * math.ceil(longest / page_size),
                                    max_batch_tokens=4 * page_size, max_requests_per_batch=rows, seed=0,
                                    auto_switch_to_flash=False)


def run_hf_cb(work: dict, k: int, rows: int = 16) -> dict:
    """Every state's K rollouts (greedy at temperature 0): "decode" holds (prompt length, tokens before EOS,
    stopped) per rollout, "completions" each state's rollouts' tokens before EOS."""
    from transformers import GenerationConfig

    from bench.estimate_throughput import load_model

    model, eos, pad = load_model(work["model"])
    sampled = work["temperature"] > 0
    gen_config = GenerationConfig(do_sample=sampled, temperature=work["temperature"] if sampled else None,
                                  top_p=work["top_p"] if sampled else None, top_k=0,
                                  num_return_sequences=k if sampled else None,
                                  max_new_tokens=work["max_new_tokens"], eos_token_id=eos, pad_token_id=pad)
    queried = [0]  # query tokens of every forward: prompt tokens computed plus tokens fed back

    def count(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        queried[0] += ids.numel() if ids is not None else 0

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    states = work["states"]
    t0, c0 = time.time(), time.process_time()
    with model.continuous_batching_context_manager(generation_config=gen_config,
                                                   continuous_batching_config=cb_config(work, k, rows),
                                                   warmup=False) as manager:
        order = sorted(range(len(states)), key=lambda i: states[i]["ids"], reverse=True)  # shared prefixes adjacent
        for i in order:  # greedy cannot fork a request: its K rows are K requests
            for j in range(1 if sampled else k):
                manager.add_request(states[i]["ids"], request_id=f"s{i}-{j}", max_new_tokens=states[i]["budget"])
        outputs: list = []
        while len(outputs) < len(states) * k:
            result = manager.get_result(timeout=60)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("transformers' continuous batching stopped before every request finished")
                continue
            if result.error is not None:
                raise RuntimeError(f"transformers' continuous batching: {result.error}")
            if result.is_finished():
                outputs.append(result)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    hook.remove()
    fed_back, decode = 0, []
    completions: dict[int, list[list[int]]] = {i: [] for i in range(len(states))}
    for out in outputs:
        row = list(out.generated_tokens)
        n = next((i for i, t in enumerate(row) if t in eos), None)
        fed_back += max(0, len(row) - 1)  # every generated token but the last goes back in as a query
        decode.append((len(out.prompt_ids), len(row) if n is None else n, n is not None))
        completions[int(out.request_id[1:].split("-")[0])].append(row[:n])
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "generated_tokens": sum(g for _, g, _ in decode),
            "prompt_tokens_computed": queried[0] - fed_back, "decode": decode, "completions": completions}
