"""The transformers generation backend: batched, left-padded, KV cache, prompt prefill shared by n samples.

Each request's prompt is prefilled once; its key/value cache is then repeated for the n samples instead
of recomputing the prompt n times. With `share_prefixes` (the default), requests whose prompts are
prefixes of one another (the states of one trajectory) share one prefill too: only the longest prompt of
each prefix group is prefilled, and every request reads its own leading slice of that cache through the
attention mask, then computes its last prompt token itself (which yields its first logits). Sampling draws
one uniform per row per step from a CPU generator seeded by (request seed, sample index), so a sample does
not depend on which batch it ran in.

With `refill` (the default) the batch is kept full: when rows finish, waiting requests join the running
batch (their caches left-padded to a common width), so ragged rollouts (2 to 160 tokens on toy:borrow) do
not leave a static batch running nearly empty. Requests wait in windows of whole prefix groups (about four
batches of rows): a window's roots are prefilled once, together, and kept until all its requests have
joined, so a group is prefilled once even when it is larger than the free rows (or the batch). Within a
window the longest budgets join first, and each joining row keeps only its own prefix columns
(kv_cache.compact): rows that join together end near each other, so the cache stays about as wide as its
longest live row instead of its root (issue 19: 41% fewer decode steps and 1.25 instead of 1.54 cache
columns per attended column on toy:borrow). Each row still draws from its own generator, so a request gets
the same tokens whenever it joins (up to floating-point differences between batch shapes, which can flip
a near-tie token: 3 of 2,912 rollouts on the demo's data).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from stages.core.generation.base import (
    Completion,
    Request,
    Sampling,
    default_batch_size,
    eos_ids,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from stages.core.generation.draws import Draws
from stages.core.generation.kv_cache import (compact, drop_rows, join_caches, make_growing, select_rows,
                                             select_rows_into, trim_left)
from stages.core.generation.nucleus import top_p_head
from stages.core.pipeline.hashing import stable_seed


class HFGenerator:
    def __init__(self, model: str, *, dtype: str = "auto", device: str = "auto", batch_size: int | None = None,
                 trust_remote_code: bool = False, model_obj=None, tokenizer=None, share_prefixes: bool = True,
                 refill: bool = True, inplace_cache: bool = True, compact: bool = True):
        import torch

        from stages.core.generation.models import load_causal_lm, resolve_model
        from stages.core.generation.attention import use_gqa_attention

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_path = model
        self.model_ref = resolve_model(model)  # a folder, hub id, adapter (merged here) or .gguf file
        self.tokenizer = tokenizer or load_tokenizer(model, trust_remote_code)
        if model_obj is None:
            model_obj = load_causal_lm(self.model_ref, self.dtype, trust_remote_code)
        self.model = model_obj.to(self.device).eval()
        if self.device == "cpu":  # grouped-query models: SDPA's own GQA instead of copying K/V per query head
            use_gqa_attention(self.model)
        self.eos = eos_ids(self.tokenizer, self.model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos), 0))
        self.batch_size = max(1, batch_size or default_batch_size(self.model.config, self.dtype, self.device))
        self.share_prefixes = share_prefixes
        self.refill = refill
        self.inplace_cache = inplace_cache  # kv_cache.GrowingLayer: decode steps write in place, no torch.cat
        self.compact = compact  # refill: each row keeps only its own prefix columns (kv_cache.compact)
        self.stats: Counter = Counter()
        self.progress = None  # a stages.core.pipeline.progress.Reporter while a stage generates
        self._torch = torch

    def describe(self) -> dict:
        import transformers

        return {"backend": "hf", "transformers": transformers.__version__, "device": self.device,
                "dtype": str(self.dtype).replace("torch.", ""), "threads": self._torch.get_num_threads(),
                "batch_size": self.batch_size, "attention": self.model.config._attn_implementation,
                "model": str(self.model_path),
                "model_resolved": self.model_ref.provenance(),
                **{k: int(v) for k, v in self.stats.items()}}

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        # Keep each prefix group together so a batch boundary rarely splits a trajectory's states.
        order = (grouped_order([r.prompt_ids for r in requests]) if self.share_prefixes
                 else list(range(len(requests))))
        done: list[list[Completion]] = []
        if self.refill:
            done = self._generate_refill([requests[i] for i in order], sampling)
        else:
            for batch in self._batches([requests[i] for i in order]):
                done.extend(self._generate_batch(batch, sampling))
        results: list[list[Completion]] = [[] for _ in requests]
        for i, completions in zip(order, done):
            results[i] = completions
        return results

    def _batches(self, requests: list[Request]):
        batch: list[Request] = []
        seqs = 0
        for req in requests:
            if batch and seqs + req.n > self.batch_size:
                yield batch
                batch, seqs = [], 0
            batch.append(req)
            seqs += req.n
        if batch:
            yield batch

    def _prefill_shared(self, prompts: list[tuple[int, ...]]):
        """Prefill each prefix group's longest prompt but its last token, once (each prompt alone without
        share_prefixes); then every request's last prompt token on top of its own slice. Returns the last
        logits, the cache, the attention mask and each row's next position, one row per request."""
        roots, root_of = self._groups(prompts)
        return self._on_heads(self._prefill_heads(roots), prompts, root_of)

    def _groups(self, prompts: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[int]]:
        """prefix_groups, or each prompt its own group without share_prefixes."""
        return prefix_groups(prompts) if self.share_prefixes else (prompts, list(range(len(prompts))))

    def _prefill_heads(self, roots: list[tuple[int, ...]]) -> _Heads:
        """The roots but their last tokens, left-padded: a cache row per root, in forwards of at most a batch
        of rows (a refill window holds several batches' roots)."""
        torch = self._torch
        heads = [r[:-1] for r in roots]
        width = max(len(h) for h in heads)
        cache = mask = None
        for start in range(0, len(heads) if width else 0, self.batch_size):
            part = heads[start:start + self.batch_size]
            w = max(len(h) for h in part)
            ids = torch.full((len(part), w), self.pad_id, dtype=torch.long)
            part_mask = torch.zeros((len(part), w), dtype=torch.long)
            for g, h in enumerate(part):
                ids[g, w - len(h):] = torch.tensor(h, dtype=torch.long)
                part_mask[g, w - len(h):] = 1
            positions = (part_mask.cumsum(-1) - 1).clamp(min=0)
            part_mask = part_mask.to(self.device)
            part_cache = self.model(input_ids=ids.to(self.device), attention_mask=part_mask,
                                    position_ids=positions.to(self.device), use_cache=True,
                                    logits_to_keep=1).past_key_values
            if cache is None:
                cache, mask = part_cache, part_mask
            else:  # left-padded to the widest root
                cache, mask = join_caches(torch, cache, mask, part_cache, part_mask)
            self.stats["prefills"] += 1
        self.stats["prompt_tokens_computed"] += sum(len(h) for h in heads)
        return _Heads(cache, width, [len(h) for h in heads])

    def _on_heads(self, heads: _Heads, prompts: list[tuple[int, ...]], root_of: list[int]):
        """Each prompt's last token on top of its own slice of its root's prefilled head (which stays intact,
        so a window's heads serve several admissions)."""
        torch = self._torch
        width = heads.width
        cache, mask = None, torch.zeros((len(prompts), width), dtype=torch.long)
        if width:
            index = torch.tensor(root_of, device=self.device)
            cache = self._growing(select_rows(heads.cache, index))
            for i, p in enumerate(prompts):  # this request sees the first len(p) - 1 tokens of its root
                start = width - heads.lengths[root_of[i]]
                mask[i, start:start + len(p) - 1] = 1
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=torch.long)], 1).to(self.device)
        last = torch.tensor([[p[-1]] for p in prompts], dtype=torch.long, device=self.device)
        pos = torch.tensor([[len(p) - 1] for p in prompts], dtype=torch.long, device=self.device)
        out = self.model(input_ids=last, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True)
        self.stats["prompt_tokens_computed"] += len(prompts)
        return out.logits[:, -1, :], out.past_key_values, mask, pos.view(-1) + 1

    def _generate_batch(self, reqs: list[Request], sampling: Sampling) -> list[list[Completion]]:
        torch = self._torch
        with torch.inference_mode():
            logits, cache, mask, next_pos = self._prefill_shared([r.prompt_ids for r in reqs])
            owner = [i for i, r in enumerate(reqs) for _ in range(r.n)]
            index = torch.tensor(owner, device=self.device)
            self._growing(cache).batch_select_indices(index)  # share each prompt's prefill across its n samples
            logits, mask, next_pos = logits[index], mask[index], next_pos[index]
            gens = [Draws(torch, stable_seed(r.seed, j)) for r in reqs for j in range(r.n)]
            tokens: list[list[int]] = [[] for _ in owner]
            logps: list[list[float]] = [[] for _ in owner]
            finish = ["length"] * len(owner)
            alive = list(range(len(owner)))
            limits = [reqs[i].max_new_tokens or sampling.max_new_tokens for i in owner]
            for step in range(max(limits)):
                chosen, chosen_lp = self._sample(logits, sampling, [gens[s] for s in alive])
                keep = []
                for row, s in enumerate(alive):
                    tok = int(chosen[row])
                    if tok in self.eos:
                        finish[s] = "stop"
                        continue
                    tokens[s].append(tok)
                    logps[s].append(float(chosen_lp[row]))
                    if len(tokens[s]) < limits[s]:
                        keep.append(row)
                if self.progress is not None:  # every decode step: one long batch is not silent
                    ended = [alive[r] for r in set(range(len(alive))) - set(keep)]
                    self.progress.advance(len(ended), sum(len(tokens[s]) > step for s in alive),
                                          finished_tokens=sum(len(tokens[s]) for s in ended))
                if not keep:
                    break
                if len(keep) < len(alive):  # drop finished rows from the cache (moving the fewest rows)
                    alive, mask, next_pos, chosen = _drop(torch, cache, keep, alive, mask, next_pos, chosen)
                logits, mask, next_pos = self._decode_step(chosen, mask, next_pos, cache)
        return self._completions(reqs, owner, tokens, logps, finish, sampling.logprobs)

    def _windows(self, reqs: list[Request]) -> list[list[int]]:
        """Refill's prefill windows: runs of whole prefix groups (contiguous in `reqs`) of about
        WINDOW_BATCHES batches of rows; a group larger than that is a window alone. Each window's roots are
        prefilled once, together, and kept until all its requests have joined the batch."""
        _, root_of = self._groups([r.prompt_ids for r in reqs])
        windows: list[list[int]] = []
        rows = 0
        for i, r in enumerate(reqs):
            new_group = i == 0 or root_of[i] != root_of[i - 1]
            if not windows or (new_group and rows + r.n > WINDOW_BATCHES * self.batch_size):
                windows.append([])
                rows = 0
            windows[-1].append(i)
            rows += r.n
        return windows

    def _open(self, reqs: list[Request], window: list[int], default_budget: int):
        """Prefill a window's roots once; its requests in admission order: the longest budget
        first (the states nearest the prompt), so rows that join together end near each other and the
        batch's cache stays narrow (kv_cache.compact)."""
        prompts = [reqs[i].prompt_ids for i in window]
        roots, root_of = self._groups(prompts)
        heads = self._prefill_heads(roots)
        heads.root_of = {i: root_of[j] for j, i in enumerate(window)}
        order = sorted(range(len(window)), key=lambda j: -(reqs[window[j]].max_new_tokens or default_budget))
        return heads, deque(window[j] for j in order)

    def _generate_refill(self, reqs: list[Request], sampling: Sampling) -> list[list[Completion]]:
        """Continuous batching: decode the running rows one step at a time; when at least a quarter of the
        batch is free (or nothing runs), the next waiting requests of the open window that fit join it,
        each on top of its root's prefilled head."""
        torch = self._torch
        owner = [i for i, r in enumerate(reqs) for _ in range(r.n)]
        first_row = [0] * len(reqs)
        for s_, i in enumerate(owner):
            if s_ == 0 or owner[s_ - 1] != i:
                first_row[i] = s_
        tokens: list[list[int]] = [[] for _ in owner]
        logps: list[list[float]] = [[] for _ in owner]
        finish = ["length"] * len(owner)
        limits = [reqs[i].max_new_tokens or sampling.max_new_tokens for i in owner]
        gens = [Draws(torch, stable_seed(r.seed, j)) for r in reqs for j in range(r.n)]
        windows = deque(self._windows(reqs))
        heads = _Heads(None, 0, [])  # the open window's prefilled roots
        queue: deque[int] = deque()  # its requests still waiting, in admission order
        threshold = max(1, self.batch_size // 4)
        spare = Draws(torch, 0)  # draws for finished rows still in the batch (discarded)
        alive: list[int] = []
        cache: Any = None  # the running batch: its KV cache, mask, next positions and last logits
        mask: Any = None
        next_pos: Any = None
        logits: Any = None
        with torch.inference_mode():
            while windows or queue or alive:
                live = [r for r, s_ in enumerate(alive) if s_ >= 0]
                free = self.batch_size - len(live)
                if not queue and windows and (not live or free >= threshold):
                    heads, queue = self._open(reqs, windows.popleft(), sampling.max_new_tokens)
                taken: list[int] = []
                rows_taken = 0
                while queue and (rows_taken + reqs[queue[0]].n <= free or not (live or taken)):
                    taken.append(queue.popleft())  # (a request larger than the batch runs alone)
                    rows_taken += reqs[taken[-1]].n
                if taken and (not live or rows_taken >= threshold or not queue):
                    new_logits, new_cache, new_mask, new_pos, index = self._admit(
                        [reqs[i] for i in taken], heads, [heads.root_of[i] for i in taken])
                    rows = [first_row[i] + j for i in taken for j in range(reqs[i].n)]
                    if live:  # finished rows leave, new ones take the buffer's spare rows (kv_cache)
                        if len(live) < len(alive):
                            alive, mask, next_pos, logits = _drop(torch, cache, live, alive, mask, next_pos, logits)
                        cache, mask = join_caches(torch, cache, mask, new_cache, new_mask, index)
                        logits = torch.cat([logits, new_logits[index]])
                        next_pos = torch.cat([next_pos, new_pos[index]])
                        alive = alive + rows
                    else:  # in buffers of a whole batch's rows, so later joins copy no running rows
                        select_rows_into(self._growing(new_cache), index, min(self.batch_size, len(owner)))
                        logits, cache, mask, next_pos = new_logits[index], new_cache, new_mask[index], new_pos[index]
                        alive = rows
                else:
                    queue.extendleft(reversed(taken))  # too few rows free to be worth a prefill yet
                chosen, chosen_lp = self._sample(logits, sampling, [gens[s_] if s_ >= 0 else spare for s_ in alive])
                finished = appended = finished_tokens = 0
                for row, s_ in enumerate(alive):
                    if s_ < 0:  # finished earlier, still in the cache until the next compaction
                        continue
                    tok = int(chosen[row])
                    if tok not in self.eos:
                        tokens[s_].append(tok)
                        logps[s_].append(float(chosen_lp[row]))
                        appended += 1
                    if tok in self.eos or len(tokens[s_]) >= limits[s_]:
                        finish[s_] = "stop" if tok in self.eos else "length"
                        alive[row] = -1
                        finished += 1
                        finished_tokens += len(tokens[s_])
                if self.progress is not None:  # finished lengths feed the token-based ETA
                    self.progress.advance(finished, appended, finished_tokens=finished_tokens)
                live = [r for r, s_ in enumerate(alive) if s_ >= 0]
                if not live:
                    alive, cache, mask, next_pos, logits = [], None, None, None, None
                    continue
                # Finished rows leave the cache once they are an eighth of it (kv_cache.drop_rows moves the
                # kept rows beyond the new batch size into their slots; each move costs a Python call per layer).
                if 8 * (len(alive) - len(live)) >= len(alive):
                    alive, mask, next_pos, chosen = _drop(torch, cache, live, alive, mask, next_pos, chosen)
                    cache, mask = trim_left(cache, mask)
                logits, mask, next_pos = self._decode_step(chosen, mask, next_pos, cache)
        return self._completions(reqs, owner, tokens, logps, finish, sampling.logprobs)

    def _growing(self, cache):
        return make_growing(cache) if self.inplace_cache else cache

    def _admit(self, reqs: list[Request], heads: _Heads, root_of: list[int]):
        """`reqs` on top of their roots' prefilled heads, a row each, compacted to its own columns; and the
        index that repeats each row for its n samples, applied where the rows are next copied (the join)."""
        logits, cache, mask, next_pos = self._on_heads(heads, [r.prompt_ids for r in reqs], root_of)
        if self.compact:
            cache, mask = compact(self._torch, cache, mask)
        self.stats["admissions"] += 1
        index = self._torch.tensor([i for i, r in enumerate(reqs) for _ in range(r.n)], device=self.device)
        return logits, cache, mask, next_pos, index

    def _decode_step(self, chosen, mask, next_pos, cache):
        """One decode forward for every row in the batch: each row's chosen token at its next position."""
        import torch

        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=self.device)], 1)
        out = self.model(input_ids=chosen.view(-1, 1).to(self.device), attention_mask=mask,
                         position_ids=next_pos.view(-1, 1), past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :], mask, next_pos + 1

    def _completions(self, reqs, owner, tokens, logps, finish, want_logprobs):
        """Both loops end here: the batch's counters, then each request's n completions."""
        self.stats["requests"] += len(reqs)
        self.stats["prompt_tokens"] += sum(len(r.prompt_ids) for r in reqs)
        self.stats["prompt_tokens_shared"] += sum((r.n - 1) * len(r.prompt_ids) for r in reqs)
        self.stats["generated_tokens"] += sum(len(t) for t in tokens)
        grouped: list[list[Completion]] = [[] for _ in reqs]
        for s, i in enumerate(owner):
            ids = tuple(tokens[s])
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            grouped[i].append(Completion(ids, text, finish[s], tuple(logps[s]) if want_logprobs else None))
        return grouped

    def _sample(self, logits, sampling: Sampling, gens):
        """Greedy at temperature 0; else inverse-CDF sampling with one seeded uniform per row (top-p aware)."""
        torch = self._torch
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        if sampling.temperature <= 0:
            chosen = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / sampling.temperature, dim=-1)
            order = None
            if sampling.top_p < 1.0:
                probs, order = top_p_head(torch, probs, sampling.top_p)
                before = probs.cumsum(-1) - probs  # mass strictly before each token
                probs = probs.masked_fill(before >= sampling.top_p, 0.0)
            cdf = probs.cumsum(-1)
            u = torch.tensor([g.next() for g in gens]).clamp(min=1e-9).to(logits.device)
            pos = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp(max=cdf.shape[1] - 1)
            chosen = pos.squeeze(1) if order is None else order.gather(1, pos).squeeze(1)
        return chosen.cpu(), logprobs.gather(1, chosen.to(logits.device).view(-1, 1)).squeeze(1).cpu()


WINDOW_BATCHES = 4  # refill's prefill window, in batches of rows: wider sorts better, holds more heads


@dataclass
class _Heads:
    """Prefilled roots (all but their last token), left-padded to `width`: one cache row per root."""
    cache: object
    width: int
    lengths: list[int]
    root_of: dict = field(default_factory=dict)  # request index -> its root's row (refill's open window)


def prefix_groups(prompts: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """Group prompts under a longest prompt they are a prefix of: (roots, root index of each prompt).

    Walking the prompts in descending lexicographic order, every prompt between a root and one of its
    prefixes starts with that prefix, so the latest root is the one to check.
    """
    roots: list[tuple[int, ...]] = []
    root_of = [0] * len(prompts)
    for i in sorted(range(len(prompts)), key=lambda i: prompts[i], reverse=True):
        p = tuple(prompts[i])
        if not roots or roots[-1][:len(p)] != p:
            roots.append(p)
        root_of[i] = len(roots) - 1
    return roots, root_of


def grouped_order(prompts: list[tuple[int, ...]]) -> list[int]:
    """Request indices with each prefix group contiguous, groups in order of first appearance (stable)."""
    _, root_of = prefix_groups(prompts)
    first: dict[int, int] = {}
    for i, g in enumerate(root_of):
        first.setdefault(g, i)
    return sorted(range(len(prompts)), key=lambda i: (first[root_of[i]], i))


def _drop(torch, cache, keep: list[int], alive: list[int], *per_row):
    """Keep batch rows `keep` (kv_cache.drop_rows reorders them): `alive` and each per-row tensor follow."""
    order = drop_rows(torch, cache, keep)
    index = torch.tensor(order, device=per_row[0].device)
    return ([alive[r] for r in order], *(t[index] for t in per_row))
