"""Build the toy task's word-level tokenizer and train the tiny Llama shipped in data/toy-model.

`build_toy_model` is what `gpo toy build --out data/toy-model` runs: seeded SFT on noisy
solutions (so the model keeps making line-level mistakes GPO can find), then a greedy and a
T=1 sampled accuracy measurement on held-out test problems, written to README.md.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stages.core.sources import toy
from stages.core.sources.toy import toy_prompt_text  # one prompt rule for both toy tasks
from stages.core.sources.toy_tasks import ToyTask, get

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
# The arguments each shipped model was built with (`gpo toy build --task NAME`); see its README.
BUILDS: dict[str, dict[str, Any]] = {  # build_toy_model's keywords per task
    "arith": {"steps": 3000, "lr": 1e-3, "batch_size": 64, "warmup": 100},
    "borrow": {"steps": 2400, "lr": 1e-3, "batch_size": 32, "warmup": 100},
}
SPACE = "\u2581"  # Metaspace marker: a word preceded by a space is its own token "▁word"


def _log(msg: str) -> None:
    print(f"[toy] {msg}", file=sys.stderr, flush=True)


def build_toy_tokenizer(task: str = "arith") -> PreTrainedTokenizerFast:
    """Word-level tokenizer with exact round-trips; "\\n" is one token and tok(text) adds <bos>."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for word in ["\n", SPACE]:
        vocab[word] = len(vocab)
    for word in get(task).words():
        for form in (word, SPACE + word):
            vocab[form] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Newlines are cut out first so they stay single tokens; Metaspace then keeps each
    # space attached to the next word, which is what makes decode(encode(x)) == x.
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True),
    ])
    core.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=256, clean_up_tokenization_spaces=False,
    )


def _model_config(tok) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32,
        max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _training_examples(tok, task: ToyTask, n: int, seed: int) -> list[tuple[list[int], int]]:
    problems = task.problems(n, seed, "train", {})
    noise = "gpo-toy-noise" if task.name == "arith" else f"gpo-{task.name}-noise"  # arith: as first built
    rng = random.Random(f"{noise}|{seed}")
    solutions = [task.noisy_solution(p, rng) for p in problems]
    prompts = tok([toy_prompt_text(p["question"]) for p in problems]).input_ids
    bodies = tok(solutions, add_special_tokens=False).input_ids
    eos = tok.eos_token_id
    return [(pr + b + [eos], len(pr)) for pr, b in zip(prompts, bodies)]


def _collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict:
    """Right-padded batch; loss only on the solution and <eos>."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _lr_lambda(steps: int, warmup: int):
    # Short warmup, then cosine down to 10%: the decay is what sharpens the final model.
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _train(model, examples, *, steps, batch_size, lr, warmup, pad_id, log_every) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warmup))
    model.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        batch = _collate(examples[step * batch_size : (step + 1) * batch_size], pad_id)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            eta = (time.time() - t0) / (step + 1) * (steps - step - 1)
            _log(f"step {step + 1}/{steps} loss {recent:.4f} eta {eta:.0f}s")
    model.eval()
    return losses


@torch.no_grad()
def _generate(model, tok, problems: list[dict], *, sample: bool, max_new_tokens: int,
              num: int = 1) -> list[list[str]]:
    """num responses per problem, batched by prompt length so that no padding is needed."""
    by_len: dict[int, list[int]] = {}
    prompts = [tok(toy_prompt_text(p["question"])).input_ids for p in problems]
    for i, ids in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    out: list[list[str]] = [[] for _ in problems]
    kwargs = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_return_sequences": num} \
        if sample else {"do_sample": False}
    for length, idx in sorted(by_len.items()):
        ids = torch.tensor([prompts[i] for i in idx])
        gen = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs,
        )
        per = num if sample else 1
        for row in range(gen.shape[0]):
            out[idx[row // per]].append(tok.decode(gen[row, length:], skip_special_tokens=True))
    return out


def _score(task: ToyTask, problems: list[dict], responses: list[str]) -> dict:
    wrong = [task.first_wrong_line(p["meta"], r) for p, r in zip(problems, responses)]
    answers = [r.rsplit("answer:", 1)[-1].strip() if "answer:" in r else None for r in responses]
    n = len(problems)
    return {
        "accuracy": sum(w is None for w in wrong) / n,
        "answer_accuracy": sum(a == p["gold_answer"] for a, p in zip(answers, problems)) / n,
        "first_wrong_line_counts": {
            str(k): v for k, v in sorted(Counter(w for w in wrong if w is not None).items())
        },
    }


def evaluate_toy_model(model, tok, n: int = 200, seed: int = 0, task: str = "arith") -> dict:
    """Greedy and T=1 sampled accuracy on the first n test problems (seeded sampling).

    toy:borrow also gets its premise measurements from 4 samples per problem (toy_borrow.premise_stats)."""
    spec = get(task)
    problems = spec.problems(n, seed, "test", {})
    greedy_text = [r[0] for r in _generate(model, tok, problems, sample=False, max_new_tokens=spec.max_new_tokens)]
    greedy = _score(spec, problems, greedy_text)
    torch.manual_seed(seed)
    num = 1 if task == "arith" else 4
    samples = _generate(model, tok, problems, sample=True, max_new_tokens=spec.max_new_tokens, num=num)
    responses = [r[0] for r in samples]
    result = {"eval_n": n, "greedy": greedy, "sampled": _score(spec, problems, responses),
              "sample_responses": responses[:3]}
    if task == "borrow":
        from stages.core.sources.toy_borrow import premise_stats

        result["premise"] = premise_stats(problems, samples)
        result["premise_greedy"] = premise_stats(problems, [[r] for r in greedy_text])
    return result


def build_toy_model(
    out_dir: str | Path, *, task: str = "arith", steps: int = 3000, seed: int = 0, lr: float = 1e-3,
    batch_size: int = 64, warmup: int = 100, eval_n: int = 200, threads: int | None = None,
    log_every: int = 100,
) -> dict:
    """Train the toy model from scratch, save model + tokenizer + README.md, return metrics."""
    out_dir = Path(out_dir)
    threads = threads or min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    args = {"task": task, "steps": steps, "seed": seed, "lr": lr, "batch_size": batch_size,
            "warmup": warmup, "eval_n": eval_n, "threads": threads}
    spec = get(task)
    _log(f"building tokenizer and {steps * batch_size} training examples: {args}")
    tok = build_toy_tokenizer(task)
    examples = _training_examples(tok, spec, steps * batch_size, seed)
    model = LlamaForCausalLM(_model_config(tok))
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"model: {n_params} parameters, vocab {len(tok)}")
    t0 = time.time()
    losses = _train(model, examples, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                    pad_id=tok.pad_token_id, log_every=log_every)
    train_s = time.time() - t0
    _log(f"trained in {train_s:.0f}s; evaluating on {eval_n} test problems")
    t1 = time.time()
    evals = evaluate_toy_model(model, tok, eval_n, seed, task)
    metrics = {
        "args": args, "n_params": n_params, "vocab_size": len(tok),
        "train_seconds": round(train_s, 1), "eval_seconds": round(time.time() - t1, 1),
        "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4), **evals,
    }
    _save(out_dir, model, tok, metrics)
    _log(f"greedy {evals['greedy']['accuracy']:.3f} sampled {evals['sampled']['accuracy']:.3f}")
    return metrics


def _save(out_dir: Path, model, tok, metrics: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    notes = out_dir / "NOTES.md"  # hand-written history of tries, kept across rebuilds
    extra = notes.read_text() if notes.exists() else ""
    if metrics["args"]["task"] == "arith":
        readme = _readme(metrics)
    else:
        from stages.tools.toy_readme import borrow_readme

        readme = borrow_readme(metrics)
    (out_dir / "README.md").write_text(readme + extra)


def _counts(scores: dict) -> str:
    return ", ".join(f"line {k}: {v}" for k, v in scores["first_wrong_line_counts"].items()) or "-"


def _readme(m: dict) -> str:
    a, g, s = m["args"], m["greedy"], m["sampled"]
    call_args = ", ".join(f"{k}={v!r}" for k, v in a.items())
    example = m["sample_responses"][0].replace("\n", "\\n")
    return f"""# toy-model: tiny Llama for the built-in arithmetic-chain task

Made by `gpo toy build --task arith --out data/toy-model`, which calls
`stages.tools.toy_build.build_toy_model(out_dir, {call_args})`
on CPU ({a["threads"]} threads), deterministic for the same arguments and machine.

- Task: `stages/core/sources/toy.py` (`toy_problems`, `first_wrong_line`, `noisy_solution`).
  Question `start: 47 a: + 5 b: - 3 c: + 8`, prompt = question + "\\n",
  solution lines `a: 47 + 5 = 52` ... and a last line `answer: 57`.
- Tokenizer: word level, {m["vocab_size"]} tokens: numbers {toy.NUM_MIN}..{toy.NUM_MAX} are single tokens,
  "\\n" is one token, `tok(text)` prepends `<bos>`, decode round-trips exactly, no chat template.
- Model: LlamaForCausalLM from config, hidden 128, 4 layers, 4 heads x head_dim 32,
  intermediate 512, tied embeddings, {m["n_params"]:,} parameters, fp32 safetensors.
- Training: SFT on {a["steps"] * a["batch_size"]:,} fresh train problems (arguments above),
  AdamW (weight decay 0.01), linear warmup then cosine to 10% of lr, grad clip 1.0,
  loss on the solution and eos only. Each solution line carries a wrong result (off by 1, 2
  or 10) with probability {a.get("error_rate", 0.12)}, later lines continuing from it, so the model
  makes line-level mistakes at a known rate.
- Training time: {m["train_seconds"]:.0f} s wall clock (eval {m["eval_seconds"]:.0f} s);
  final loss (mean of the last 100 steps): {m["final_loss"]}.

## Measured accuracy ({m["eval_n"]} test problems, `model.generate`, max 48 new tokens)
Accuracy: `first_wrong_line(meta, response) is None` (every line right); answer match: the last
`answer: N` equals the gold answer (a later slip can cancel an earlier one).

| decoding | accuracy | answer match | first wrong line: count |
|---|---|---|---|
| greedy | {g["accuracy"]:.3f} | {g["answer_accuracy"]:.3f} | {_counts(g)} |
| sampled T=1, top_k=0, top_p=1, seed {a["seed"]} | {s["accuracy"]:.3f} \
| {s["answer_accuracy"]:.3f} | {_counts(s)} |

Example sampled response: `{example}`

Full numbers: `metrics.json`.
"""
