"""README.md of the toy:borrow model, written by `gpo toy build --task borrow` from its measured figures."""

from __future__ import annotations

from stages.core.sources import toy_borrow


def _pct(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _kinds_table(premise: dict) -> str:
    rows = ["| line kind | lines reached | failed there | error rate |", "|---|---|---|---|"]
    for kind, r in premise["error_rate_by_kind"].items():
        rows.append(f"| {kind} | {r['reached']} | {r['failed']} | {r['rate']:.3f} |")
    return "\n".join(rows)


def borrow_readme(m: dict) -> str:
    a, g, p = m["args"], m["greedy"], m["premise"]
    call_args = ", ".join(f"{k}={v!r}" for k, v in a.items())
    example = m["sample_responses"][0].replace("\n", "\\n")
    slips = ", ".join(f"{k} {v}" for k, v in toy_borrow.SLIP.items())
    return f"""# borrow-model: tiny Llama for the toy:borrow task (GPO's premise)

Made by `gpo toy build --task borrow --out data/borrow-model`, which calls
`stages.tools.toy_build.build_toy_model(out_dir, {call_args})`
on CPU ({a["threads"]} threads), deterministic for the same arguments and machine.

- Task: `stages/core/sources/toy_borrow.py`. A 2-digit start and {toy_borrow.MIN_OPS}-{toy_borrow.MAX_OPS} labelled
  one-digit additions and subtractions, one solution line each plus `answer: N`. An addition line may be
  written `v + d = r` or `d + v = r` (many valid texts); the first borrowing subtraction (the *trap*)
  sits in the second half ({toy_borrow.P_HARD:.0%} hard: d in {toy_borrow.HARD_DIGITS}); after it only
  subtractions (one form each).
- SFT data: gold chains with random addition forms and slips at these rates by line kind: {slips}.
  A forgotten borrow adds 10, a routine slip is off by 1 or 2; later lines continue from a wrong value.
- Tokenizer: word level, {m["vocab_size"]} tokens (numbers {toy_borrow.NUM_MIN}..{toy_borrow.NUM_MAX} are
  single tokens, "\\n" is one token, `tok(text)` prepends `<bos>`), no chat template.
- Model: LlamaForCausalLM from config, hidden 128, 4 layers, 4 heads x 32, intermediate 512, tied
  embeddings, {m["n_params"]:,} parameters, fp32 safetensors.
- Training: {a["steps"]} steps of {a["batch_size"]} fresh train problems, AdamW, warmup then cosine to 10%
  of lr; {m["train_seconds"]:.0f} s wall clock (eval {m["eval_seconds"]:.0f} s); final loss {m["final_loss"]}.

## Measured ({m["eval_n"]} test problems, `model.generate`, {p["samples"] // m["eval_n"]} samples per problem at T=1)

| decoding | accuracy (every line right) | answer match |
|---|---|---|
| greedy | {g["accuracy"]:.3f} | {g["answer_accuracy"]:.3f} |
| sampled T=1, top_k=0, top_p=1 | {p["accuracy"]:.3f} | - |

Per line kind, sampled: P(line wrong | every earlier line right)

{_kinds_table(p)}

- **Systematic errors**: first errors by kind {p["first_errors_by_kind"]}. Failed samples of one problem
  fail on the same line {_pct(p["repeat_same_line"])} of the time, against {_pct(p["repeat_null"])} when
  first wrong lines are shuffled among failed samples of equally long problems (ratio
  {_pct(p["repeat_ratio"])}).
- **Diverse solutions**: {_pct(p["distinct_correct_texts"])} distinct texts among the correct samples of a
  problem (problems with at least 2); {_pct(p["diverge_before_first_wrong"])} of the
  {p["correct_incorrect_pairs"]} same-problem (correct, incorrect) sample pairs diverge *before* the
  incorrect one's first wrong line.
- Greedy first errors by kind: {m["premise_greedy"]["first_errors_by_kind"]}.

Example sampled response: `{example}`

Full numbers: `metrics.json`.
"""
