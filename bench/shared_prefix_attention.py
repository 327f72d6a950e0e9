"""What decode attention would cost if rows read the prefix they share once ("cascade" attention; issue 19).

    python bench/shared_prefix_attention.py --model data/borrow-model \
        --problems 'toy:borrow?n=6&seed=3&split=valid' --max-new-tokens 160

Records the transformers backend's real schedule on estimate_throughput's workload (the same `gpo sample`
run, states and seeds): at every decode forward, each row's prompt, how many of its cache columns are its
prompt's (all but the last prompt token, read from its root's prefill) and how many are its own (the last
prompt token and what it generated), and the batch's padded width. Then replays every recorded step's
attention for ONE layer of the model, on random keys and values, one thread, CPU ms, fastest of --reps:
  padded        what the backend runs: SDPA, every row over its own copy of its prefix, padded to the batch's
                width, with the padding mask
  shared-state  the K rows of one state read that state's prefix once (one batched matmul over all such
                groups, each row masked to its own prefix), each row's own columns apart, the two merged by
                their log-sum-exp; per cohort (rows that joined together have equally many own columns, so
                those are not padded; prefixes are padded to the cohort's longest)
  shared-root   the same with up to 16 rows of one prefix group (a trajectory's states) reading the group's
                root once, each masked to its own prompt's length
A finished row not yet dropped is attended by `padded` (as the backend does) and is a group alone in the others.
It also runs every recorded forward's shape through the whole model, once with the backend's attention and once
with attention returning zeros: attention's share of the decode forwards, and what no attention kernel removes.
Both shared arms are checked against `padded` on the same numbers (max abs difference printed; above 1e-4 the
run stops).
The replay times attention alone, outside the model: what a backend with shared-prefix attention would save
per decode forward, not a backend (one would need its cache kept per group through joins and drops, and it
sums in another order, so it would not give the same tokens as per-state `generate`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))


def record(work: dict, k: int, batch_size: int) -> tuple[list, float, int]:
    """The backend's decode steps on the workload: (padded width, [(prompt id, root id, prefix cols, own
    cols)] per row), its decode forwards' CPU seconds, and its batch size."""
    from stages.core.generation.backends import Request, Sampling
    from stages.core.generation.hf_backend import HFGenerator, prefix_groups
    from stages.core.pipeline.hashing import stable_seed

    gen = HFGenerator(work["model"], dtype="fp32", device="cpu", batch_size=batch_size or None)
    requests = [Request(tuple(st["ids"]), k, stable_seed(3, i), st["budget"]) for i, st in enumerate(work["states"])]
    prompts = [r.prompt_ids for r in requests]
    _, root_of = prefix_groups(prompts)
    ids = {p: (i, root_of[i]) for i, p in enumerate(prompts)}
    steps: list = []
    cpu = [0.0]
    inner = gen._decode_step

    def traced(chosen, mask, next_pos, cache):
        # Measurement only: the refill loop's own row bookkeeping, read from its frame.
        f = sys._getframe(1).f_locals
        rows = []
        for s_, used in zip(f["alive"], (mask.sum(1) + 1).tolist()):
            if s_ < 0:  # finished, not yet dropped: the backend still attends over it (alone, below)
                rows.append((-1, -1, used - 1, 1))
            else:
                p = f["reqs"][f["owner"][s_]].prompt_ids
                rows.append((*ids[p], len(p) - 1, used - (len(p) - 1)))
        steps.append((mask.shape[1] + 1, rows))
        c0 = time.process_time()
        try:
            return inner(chosen, mask, next_pos, cache)
        finally:
            cpu[0] += time.process_time() - c0

    setattr(gen, "_decode_step", traced)
    gen.generate(requests, Sampling(work["temperature"], work["top_p"], work["max_new_tokens"]))
    return steps, cpu[0], gen.batch_size


CHUNK = 16  # shared-root: rows per group reading one root's prefix (larger groups pad more slots)


class Cohort:
    """Rows that joined the batch together (so their own columns are equally many): their groups' prefixes
    (G x most rows per group slots, padded to the cohort's longest prefix) and their own columns, exact."""

    def __init__(self, torch, rn, rows: list, index: list[int], heads: int, kv_heads: int, dim: int, level: int):
        self.t, self.index = torch, torch.tensor(index)
        self.R, self.hk, self.grp, self.d = len(index), kv_heads, heads // kv_heads, dim
        seen: dict = {}
        keys = []  # a group reads its prefix once: a state's rows, or up to CHUNK rows of one root
        for i in index:
            r = rows[i]
            seen[r[level]] = seen.get(r[level], -1) + 1
            keys.append(("done", i) if r[0] < 0 else (r[level], seen[r[level]] // CHUNK if level else 0))
        ids: dict = {}
        group = [ids.setdefault(key, len(ids)) for key in keys]
        self.G = G = len(ids)
        self.prefix = [rows[i][2] for i in index]
        self.own = rows[index[0]][3]
        L = max([1] + self.prefix)
        self.kp, self.vp = rn(G, kv_heads, L, dim), rn(G, kv_heads, L, dim)  # each group's prefix, once
        self.ko, self.vo = rn(self.R, kv_heads, self.own, dim), rn(self.R, kv_heads, self.own, dim)
        self.group = group
        per = [0] * G
        slot = []
        for g in group:
            slot.append(per[g])
            per[g] += 1
        self.n = n = max(per)
        self.slot = torch.tensor([g * n + j for g, j in zip(group, slot)])  # row -> its slot
        self.fill = torch.full((G * n,), self.R, dtype=torch.long)  # slot -> row (R: an empty slot)
        self.fill[self.slot] = torch.arange(self.R)
        plen = torch.zeros(G * n, dtype=torch.long)
        plen[self.slot] = torch.tensor(self.prefix)
        self.pmask = (torch.arange(L).view(1, 1, L) >= plen.view(G, n, 1)).repeat_interleave(self.grp, 1).unsqueeze(1)
        self.scale = dim ** -0.5

    def keys(self, j: int):
        """Row j's keys and values as the backend holds them: its prefix copy, then its own columns."""
        g, p = self.group[j], self.prefix[j]
        return (self.t.cat([self.kp[g, :, :p], self.ko[j]], 1), self.t.cat([self.vp[g, :, :p], self.vo[j]], 1))

    def attend(self, q):
        t, R, G, n, hk, grp, d = self.t, self.R, self.G, self.n, self.hk, self.grp, self.d
        q = q.view(R, hk, grp, d)
        qs = t.cat([q, q.new_zeros(1, hk, grp, d)]).index_select(0, self.fill)  # (G*n, hk, grp, d)
        qs = qs.view(G, n, hk, grp, d).permute(0, 2, 1, 3, 4).reshape(G, hk, n * grp, d)
        sp = (qs @ self.kp.transpose(-1, -2)).mul_(self.scale).masked_fill_(self.pmask, float("-inf"))
        mp = sp.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)  # a row with no prefix: weight 0 below
        ep = sp.sub_(mp).exp_()
        lp, op = ep.sum(-1, keepdim=True), ep @ self.vp

        def rows(x):  # (G, hk, n*grp, c) -> (R, hk, grp, c)
            c = x.shape[-1]
            return x.view(G, hk, n, grp, c).permute(0, 2, 1, 3, 4).reshape(G * n, hk, grp, c).index_select(
                0, self.slot)

        mp, lp, op = rows(mp), rows(lp), rows(op)
        so = (q @ self.ko.transpose(-1, -2)).mul_(self.scale)  # every row has its own last token
        mo = so.amax(-1, keepdim=True)
        eo = so.sub_(mo).exp_()
        lo, oo = eo.sum(-1, keepdim=True), eo @ self.vo
        m = t.maximum(mp, mo)
        a, b = (mp - m).exp_() * (lp > 0), (mo - m).exp_()
        return ((a * op + b * oo) / (a * lp + b * lo)).view(R, hk * grp, 1, d)


class Step:
    """One recorded decode step's attention inputs for one layer: padded as the backend holds them, and in
    cohorts for the shared arms (the same numbers)."""

    def __init__(self, torch, width: int, rows: list, heads: int, kv_heads: int, dim: int, level: int):
        self.t = torch
        g = torch.Generator().manual_seed(width * 7919 + len(rows))
        rn = lambda *shape: torch.randn(*shape, generator=g) * 0.5  # noqa: E731
        cohorts: dict = {}
        for i, r in enumerate(rows):
            cohorts.setdefault(r[3], []).append(i)
        self.cohorts = [Cohort(torch, rn, rows, index, heads, kv_heads, dim, level) for index in cohorts.values()]
        self.q = rn(len(rows), heads, 1, dim)
        self.grp = heads // kv_heads
        self.k = torch.zeros(len(rows), kv_heads, width, dim)  # right-aligned to the batch's width
        self.v = torch.zeros(len(rows), kv_heads, width, dim)
        self.mask = torch.zeros(len(rows), 1, 1, width, dtype=torch.bool)
        for c in self.cohorts:
            for j, i in enumerate(c.index.tolist()):
                k, v = c.keys(j)
                self.k[i, :, width - k.shape[1]:], self.v[i, :, width - k.shape[1]:] = k, v
                self.mask[i, ..., width - k.shape[1]:] = True

    def padded(self):
        return self.t.nn.functional.scaled_dot_product_attention(self.q, self.k, self.v, attn_mask=self.mask,
                                                                 enable_gqa=self.grp > 1)

    def shared(self):
        out = self.t.empty(self.q.shape)
        for c in self.cohorts:
            out.index_copy_(0, c.index, c.attend(self.q.index_select(0, c.index)))
        return out


def replay(torch, steps: list, heads: int, kv_heads: int, dim: int, reps: int, every: int) -> dict:
    ms = {"padded": 0.0, "shared-state": 0.0, "shared-root": 0.0}
    err = {"shared-state": 0.0, "shared-root": 0.0}
    with torch.inference_mode():
        for width, rows in steps[::every]:
            for name, level in (("shared-state", 0), ("shared-root", 1)):
                st = Step(torch, width, rows, heads, kv_heads, dim, level)
                err[name] = max(err[name], float((st.shared() - st.padded()).abs().max()))
                for arm, fn in ((name, st.shared), ("padded", st.padded)):
                    if arm == "padded" and level == 1:
                        continue  # the same padded inputs as level 0's
                    best = float("inf")
                    for _ in range(reps):
                        c0 = time.process_time()
                        fn()
                        best = min(best, time.process_time() - c0)
                    ms[arm] += best * 1e3 * every
    return {"ms_per_layer": ms, "max_abs_diff": err}


def in_model(model_path: str, steps: list, every: int, reps: int) -> dict:
    """Every (--every-th) recorded decode forward run through the model at its shape (rows, cache width,
    padding mask; zero keys and values in growing buffers, as the backend's), with the backend's attention and
    with attention returning zeros: what attention costs inside the forwards, and what everything else costs."""
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.cache_utils import DynamicCache
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    from stages.core.generation.attention import use_gqa_attention
    from stages.core.generation.kv_cache import cache_layers, make_growing

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    use_gqa_attention(model)  # as HFGenerator does on CPU
    arms = {model.config._attn_implementation: 0.0, "gpo_none": 0.0}
    AttentionInterface.register("gpo_none", lambda module, q, *a, **kw: (q.new_zeros(q.shape[0], q.shape[2],
                                                                                     q.shape[1], q.shape[3]), None))
    ALL_MASK_ATTENTION_FUNCTIONS.register("gpo_none", sdpa_mask)  # the same masks are built
    cfg = model.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rows, width = max(len(r) for _, r in steps), max(w for w, _ in steps)
    bufs = [[torch.zeros(rows, cfg.num_key_value_heads, width, dim) for _ in range(2)]
            for _ in range(cfg.num_hidden_layers)]
    cache = make_growing(DynamicCache(ddp_cache_data=[(k[..., :1, :], v[..., :1, :]) for k, v in bufs]))
    with torch.inference_mode():
        for w, step in steps[::every]:
            n = len(step)
            mask = torch.zeros((n, w), dtype=torch.long)
            for i, (*_, p, o) in enumerate(step):
                mask[i, w - p - o:] = 1
            token, pos = torch.ones((n, 1), dtype=torch.long), (mask.sum(1, keepdim=True) - 1)
            for arm in arms:
                model.set_attn_implementation(arm)
                best = float("inf")
                for _ in range(reps):
                    for layer, (k, v) in zip(cache_layers(cache), bufs):
                        layer.set(k, v, w - 1, n)
                    c0 = time.process_time()
                    model(input_ids=token, position_ids=pos, past_key_values=cache, use_cache=True,
                          attention_mask=mask)
                    best = min(best, time.process_time() - c0)
                arms[arm] += best * every
    with_attention, without = arms.values()
    return {"attention": next(iter(arms)), "forwards_cpu_s": with_attention, "without_attention_cpu_s": without}


def main() -> None:
    from bench.estimate_throughput import build_workload

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/borrow-model")
    ap.add_argument("--problems", default="toy:borrow?n=6&seed=3&split=valid")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--split", default="auto")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=0, help="0: gpo's CPU default for the model")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--every", type=int, default=1, help="replay every n-th recorded step (times scaled by n)")
    ap.add_argument("--out", default=str(BENCH / "results" / "shared_prefix_attention.json"))
    args = ap.parse_args()
    args.threads, args.trajectories = 1, 0
    import torch
    from transformers import AutoConfig

    torch.set_num_threads(1)
    if not args.batch_size:
        from stages.core.generation.base import default_batch_size

        args.batch_size = default_batch_size(AutoConfig.from_pretrained(args.model), torch.float32, "cpu")
    scratch = Path(tempfile.mkdtemp(prefix="gpo-cascade-"))  # the workload's sample run
    work = build_workload(args, scratch / "run")
    steps, decode_cpu, batch = record(work, args.k, args.batch_size)
    shutil.rmtree(scratch, ignore_errors=True)
    cfg = AutoConfig.from_pretrained(args.model)
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    res = replay(torch, steps, heads, kv, dim, args.reps, args.every)
    if max(res["max_abs_diff"].values()) > 1e-4:
        raise SystemExit(f"shared-prefix attention disagrees with SDPA: {res['max_abs_diff']}")
    res["in_model"] = in_model(args.model, steps, args.every, args.reps)
    layers = cfg.num_hidden_layers
    rows = sum(len(r) for _, r in steps)
    useful = sum(p + o for _, r in steps for *_, p, o in r)
    padded = res["ms_per_layer"]["padded"] * layers / 1e3
    out = {"model": args.model, "problems": args.problems, "k": args.k, "batch_size": batch,
           "rollouts": len(work["states"]) * args.k, "decode_steps": len(steps), "rows_per_step": rows / len(steps),
           "attended_per_useful": sum(w * len(r) for w, r in steps) / useful,
           "decode_forwards_cpu_s": decode_cpu, "layers": layers, **res}
    print(f"{out['rollouts']} rollouts, batch {batch}: {len(steps)} decode forwards, {out['rows_per_step']:.0f} rows "
          f"each on average, {out['attended_per_useful']:.2f} attended columns per useful one; the backend's "
          f"decode forwards {decode_cpu:.1f} CPU-s")
    for arm, ms in res["ms_per_layer"].items():
        total = ms * layers / 1e3
        print(f"  {arm:13} attention {total:6.2f} CPU-s over {layers} layers ({total / padded:4.2f} of padded); "
              f"decode forwards with it: {decode_cpu - padded + total:6.2f} CPU-s"
              + (f"; max |diff| {res['max_abs_diff'][arm]:.1e}" if arm in res["max_abs_diff"] else ""))
    m = res["in_model"]
    print(f"  in the model, the recorded shapes replayed: decode forwards {m['forwards_cpu_s']:.2f} CPU-s with "
          f"{m['attention']}, {m['without_attention_cpu_s']:.2f} with attention returning zeros (attention "
          f"{1 - m['without_attention_cpu_s'] / m['forwards_cpu_s']:.2f} of the forwards)")
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
