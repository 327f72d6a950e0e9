"""The stage `probe_<label>`, run by `gpo eval --probe`: teacher-forced along each problem's gold solution.
(Part of eval, so it lives in core: stages/ holds the six stages.)

    gpo eval --model runs/demo/train/dpo-gpo/model --problems 'toy:borrow?n=600&split=test' --run runs/demo \\
        --label gpo --temperature 0 --probe
    gpo eval --compare runs/demo/eval_same-samples runs/demo/eval_gpo      # + the probes' paired differences

One forward pass per problem over prompt + gold solution (transformers, whatever backend eval generated
with); per gold line, the probability of its result token given the gold text before it, and whether it is
the most probable token (stages/core/generation/teacher_forcing.py). No sampling: the numbers are deterministic. Per
line kind (the task names its kinds: toy:borrow's trap-hard, trap-easy, later-borrow, routine, answer) the
summary gives the mean probability and the top-token share, each with a 95% interval clustered by problem
(a problem's lines of one kind are averaged first). Rows: RUN/probe_<label>/*.parquet (`gpo sql`: the
table `probe_<label>` and the view `probes`); the summary: RUN/probe_<label>/summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError
from stages.core.generation.models import MODEL_HELP
from stages.core.generation.prompts import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM, build_prompt
from stages.core.pipeline.runner import Context, Stage
from stages.core.pipeline.settings import require, setting
from stages.core.generation.teacher_forcing import gold_lines, result_token_positions, score_positions
from stages.core.method.values import paired_difference_ci, problem_mean_ci

PREFIX = "probe_"
PROBE_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("line_idx", pa.int32()), ("kind", pa.string()), ("line_text", pa.string()),
    ("result_token_id", pa.int32()), ("p_gold", pa.float64()), ("top", pa.bool_()),
    ("top_token_id", pa.int32()), ("source", pa.string()), ("label", pa.string()), ("model", pa.string()),
])


@dataclass(frozen=True)
class ProbeSettings:
    problems: str = setting(help="A source with gold solutions: toy:<task>?... or a file with a gold_solution "
                                 "field.")
    model: str = setting(help=MODEL_HELP)
    label: str = setting("eval", "The evaluation this probe belongs to (RUN/probe_<label>).")
    # The prompt exactly as eval built it, so the probe conditions on what the model was scored on.
    template: str = setting("auto", "auto, chat or plain.")
    system: str | None = setting(DEFAULT_SYSTEM, "System prompt for chat templates.")
    instruction: str | None = setting(DEFAULT_INSTRUCTION, "Appended to the question in chat prompts.")

    def __post_init__(self):
        require(self, "problems", "model")


def stage_name(label: str) -> str:
    return PREFIX + label


def process(problems: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    s: ProbeSettings = ctx.settings
    gen = ctx.generator()  # the transformers backend: its model and tokenizer
    records = []
    for row in problems.to_pylist():
        gold = gold_lines(row)
        if gold is None:
            ctx.stats["no_gold_solution"] += 1
            continue
        text, lines = gold
        _, prompt_ids = build_prompt(gen.tokenizer, row["question"], template=s.template, system=s.system,
                                     instruction=s.instruction)
        ids, positions = result_token_positions(gen.tokenizer, text, lines)
        scores = score_positions(gen.model, prompt_ids, ids, positions, getattr(gen, "device", "cpu"))
        for line, pos, (p, top, top_id) in zip(lines, positions, scores):
            records.append({"problem_id": row["problem_id"], "line_idx": line.index, "kind": line.kind,
                            "line_text": line.text, "result_token_id": ids[pos], "p_gold": p, "top": top,
                            "top_token_id": top_id, "source": row["source"], "label": s.label, "model": s.model})
        ctx.stats["problems_probed"] += 1
        ctx.stats["prompt_tokens"] += len(prompt_ids) + len(ids)  # read, never generated
    ctx.stats["lines"] += len(records)
    return {ctx.stage.name: pa.Table.from_pylist(records, schema=PROBE_SCHEMA)}


def check_has_gold(problems: pa.Table) -> None:
    """Refuse a source without gold solutions before anything runs (the probe would have nothing to read)."""
    rows = problems.slice(0, 64).to_pylist()  # a source has them on every row or on none
    if not any(gold_lines(r) is not None for r in rows):
        raise GpoError("--probe needs gold solutions: the toy tasks have them; a problem file needs a "
                       "gold_solution field (one result per line)")


def make_stage(label: str) -> Stage:
    name = stage_name(label)
    return Stage(name=name, input=None, outputs={name: PROBE_SCHEMA}, key=("problem_id", "line_idx"),
                 process=process, chunk_groups=64)


def per_problem(rows: list[dict]) -> dict:
    """kind -> problem_id -> {p, top}: the problem's mean over its lines of that kind (the cluster unit)."""
    acc: dict = {}
    for r in rows:
        acc.setdefault(r["kind"], {}).setdefault(r["problem_id"], []).append((r["p_gold"], float(r["top"])))
    return {kind: {pid: {"p": sum(p for p, _ in v) / len(v), "top": sum(t for _, t in v) / len(v)}
                   for pid, v in sorted(problems.items())}
            for kind, problems in sorted(acc.items())}


def summarize(rows: list[dict]) -> dict:
    """kind -> problems, lines, mean probability and top share with 95% intervals clustered by problem."""
    out = {}
    lines: dict = {}
    for r in rows:
        lines[r["kind"]] = lines.get(r["kind"], 0) + 1
    for kind, problems in per_problem(rows).items():
        p, p_lo, p_hi = problem_mean_ci([v["p"] for v in problems.values()])
        top, top_lo, top_hi = problem_mean_ci([v["top"] for v in problems.values()])
        out[kind] = {"problems": len(problems), "lines": lines[kind], "p_gold": p, "p_ci_low": p_lo,
                     "p_ci_high": p_hi, "top_share": top, "top_ci_low": top_lo, "top_ci_high": top_hi}
    return out


def write_summary(run: Path, label: str) -> dict | None:
    folder = layout.stage_dir(run, stage_name(label))
    if not layout.success_path(folder).exists():
        return None
    rows = artifacts.read_table(run, folder.name).to_pylist()
    if not rows:
        raise GpoError(f"the probe found no gold solution in {label}'s problems (toy tasks have them; a file "
                       "needs a gold_solution field)")
    config = artifacts.load_json(layout.config_path(folder))["settings"]
    summary = {"label": label, "model": config["model"], "problems": config["problems"],
               "kinds": summarize(rows), "per_problem": per_problem(rows)}
    artifacts.write_json_atomic(layout.summary_path(folder), summary)
    return summary


def folder_for(eval_folder: Path) -> Path:
    """RUN/eval_<label> (or RUN/eval) -> RUN/probe_<label>, the probe `gpo eval --probe` wrote beside it."""
    eval_folder = Path(eval_folder)
    label = eval_folder.name[len("eval_"):] if eval_folder.name.startswith("eval_") else eval_folder.name
    return eval_folder.parent / stage_name(label)


def load_summary(folder: Path) -> dict:
    path = layout.summary_path(folder)
    if not path.exists():
        raise GpoError(f"{folder} has no probe summary: run that evaluation with `gpo eval --probe`")
    return artifacts.load_json(path)


def compare(summaries: list[dict]) -> list[dict]:
    """Each probe against the first, per kind, on the problems both probed: paired differences of the mean
    probability and of the top-token share, with 95% intervals (the problem is the unit)."""
    base, rows = summaries[0], []
    for other in summaries[1:]:
        for kind, scores in other["per_problem"].items():
            ref = base["per_problem"].get(kind, {})
            common = sorted(set(ref) & set(scores))
            if not common:
                continue
            entry = {"label": other["label"], "reference": base["label"], "kind": kind, "problems": len(common)}
            for metric in ("p", "top"):
                d, lo, hi = paired_difference_ci([scores[q][metric] - ref[q][metric] for q in common])
                entry.update({metric: sum(scores[q][metric] for q in common) / len(common),
                              f"{metric}_diff": d, f"{metric}_diff_low": lo, f"{metric}_diff_high": hi})
            rows.append(entry)
    return rows
