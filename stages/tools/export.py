"""`gpo export`: the branch tables as datasets that TRL, verl and LLaMA-Factory load and train on as is.

    gpo export --run runs/toy --format trl --out exports/trl
    gpo export --run runs/toy --format verl --out exports/verl --data-source math
    gpo export --run runs/toy --format llamafactory --out LLaMA-Factory/data

Prompts are exported as the messages the sample stage templated (system prompt, question + instruction),
not as templated text, so the trainer's tokenizer applies its chat template once (one BOS, not two).
A run sampled without a chat template (`--template plain`) is exported as the exact plain text instead.

trl:          one folder per table, each a `datasets` folder on its own (`trl dpo --dataset_name DIR/preference`):
              preference/ (prompt, chosen, rejected), unpaired/ (prompt, completion, label) and prompts/
              (prompt, gold_answer, checker, reset_prefix), all with problem_id and pair_id / state ids;
              GRPO's reward: `trl grpo --reward_funcs stages.core.scoring.rewards.correct`.
verl:         train.parquet (data_source, prompt messages, ability, reward_model.ground_truth, extra_info with
              checker and reset_prefix); score with gpo's stages/tools/verl_reward.py `compute_score`.
llamafactory: gpo_<data>_pairwise.json (ranking) and gpo_<data>_kto.json (kto_tag), alpaca columns with
              `system`; their entries are merged into DIR/dataset_info.json, whose other entries are kept.

Pairs and KTO rows are the ones `gpo train` learns from, under its own rule and flags (`Rules`: identical
pairs once, responses cut at the budget dropped by default). --out must be empty, or hold an earlier
export to replace whole with --overwrite (stages/tools/export_folder.py).

The reset prefix (the kept steps before the critical step) starts the assistant turn of every chosen,
rejected and KTO completion. Online-RL prompts (trl prompts/, verl) cannot end inside an assistant turn:
TRL's GRPOTrainer and verl's rollout always open a new one (add_generation_prompt=True). There the prefix
is appended to the user turn under CONTINUE_NOTE, and the reward scores reset_prefix + completion, as gpo
scores a branch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from stages.core.pipeline import artifacts, layout, lineage
from stages.core.pipeline.errors import GpoError, UsageError
from stages.core.generation.prompts import PLAIN_TEMPLATE
from stages.tools import export_folder as folder
from stages.train.data import cut, trainable

FORMATS = ("trl", "verl", "llamafactory")
CONTINUE_NOTE = "Here is the beginning of a solution. Continue it from where it stops, without repeating it:"


@dataclass(frozen=True)
class Prompting:
    """How the sample stage prompted: with the model's chat template (system, instruction) or plain text."""

    chat: bool
    system: str | None
    instruction: str | None

    def user(self, question: str) -> str:
        # The same user turn stages/core/generation/prompts.py builds, so the exported messages re-template exactly.
        return f"{question}\n{self.instruction}" if self.chat and self.instruction else question

    def messages(self, question: str, prefix: str = "") -> list[dict]:
        user = self.user(question)
        if prefix:
            user = f"{user}\n\n{CONTINUE_NOTE}\n\n{prefix}"
        system = [{"role": "system", "content": self.system}] if self.chat and self.system else []
        return system + [{"role": "user", "content": user}]


class _Run:
    """The sample rows and prompting of a run, to rebuild each table row's messages and prefix."""

    def __init__(self, run: Path):
        lineage.require_fresh(run, "branch")  # finished, and built on what the run holds now
        self.run = run
        self.samples = {(r["problem_id"], r["sample_idx"]): r for r in artifacts.read_table(run, "sample").to_pylist()}
        if not self.samples:
            raise GpoError(f"{run}/sample has no rows")
        settings = artifacts.load_json(layout.config_path(layout.stage_dir(run, "sample")))["settings"]
        first = next(iter(self.samples.values()))
        # "auto" resolved per model at sampling time; the stored prompt text tells which one it chose.
        chat = first["prompt_text"] != PLAIN_TEMPLATE.format(question=first["question"])
        self.prompting = Prompting(chat, settings.get("system"), settings.get("instruction"))

    def rows(self, table: str, data: str) -> list[dict]:
        rows = [r for r in artifacts.read_table(self.run, table).to_pylist() if r["data"] == data]
        return sorted(rows, key=lambda r: [str(v) for v in r.values()])

    def prefix(self, row: dict) -> str:
        """The reset prefix held in a row's prompt (reset prompts, and pairs built with --prefix in-prompt)."""
        base = self.samples[(row["problem_id"], row["sample_idx"])]["prompt_text"]
        if not row["prompt"].startswith(base):
            raise GpoError(f"{self.run}/branch does not match {self.run}/sample (problem {row['problem_id']}): "
                           "rerun branch")
        return row["prompt"][len(base):]

    def question(self, row: dict) -> str:
        return self.samples[(row["problem_id"], row["sample_idx"])]["question"]


@dataclass(frozen=True)
class Rules:
    """Which pairs and KTO rows go out: `gpo train`'s own rules (stages/train/data.py `trainable`), same flags.

    truncated: drop (the default here), no-eos or eos, as `gpo train --truncated`. The default differs from
    train's (no-eos for dpo/kto) because stock trainers close every response (TRL appends EOS; a chat
    template ends the turn), which would teach a model to stop where the budget cut it; no-eos keeps the cut
    responses and flags them (`chosen_truncated`, `rejected_truncated`, `completion_truncated`) for a trainer
    that reads the flags, as gpo train does."""

    truncated: str | None = None
    dedup: bool = True

    def check(self, fmt: str) -> "Rules":
        from stages.train.settings import TRUNCATED

        if self.truncated is not None and fmt == "verl":
            raise UsageError("--truncated applies to pairs (--format trl or llamafactory), not verl's reset prompts")
        if self.truncated is not None and self.truncated not in TRUNCATED:
            raise UsageError(f"--truncated must be one of {', '.join(TRUNCATED)}, not {self.truncated!r}")
        if self.truncated == "no-eos" and fmt == "llamafactory":
            raise UsageError("--truncated no-eos: LLaMA-Factory always ends a response with its end of turn; "
                           "choose drop or eos")
        return Rules(self.truncated or "drop", self.dedup)


def export(run: Path, fmt: str, out: Path, data: str = "gpo", data_source: str | None = None, *,
           rules: Rules = Rules(), overwrite: bool = False, scorer_mismatch_ok: bool = False) -> list[Path]:
    """Write one export; every check comes before the first file (into a temp folder, moved in place last)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if data_source is not None and fmt != "verl":
        raise UsageError("--data-source applies to --format verl only")
    if data_source is not None and not data_source.strip():
        raise UsageError("--data-source must not be empty")
    rules = rules.check(fmt)
    run, out = Path(run), Path(out)
    folder.check_target(out, fmt, data, overwrite)
    r = _Run(run)
    pairs = r.rows("branch", data)
    if not pairs:
        raise GpoError(f"no '{data}' pairs in {run}/branch (data kinds: gpo, baseline, random-reset)")
    if fmt == "verl" and data_source is not None and not scorer_mismatch_ok:
        from stages.tools.verl_scorers import check_scorer

        check_scorer(data_source, list(r.samples.values()))
    record = {"format": fmt, "run": str(run), "data": data, "data_source": data_source,
              "truncated": rules.truncated if fmt != "verl" else None, "dedup": rules.dedup if fmt != "verl" else None}
    if fmt == "llamafactory":  # a folder of many datasets: gpo adds and replaces its own files only
        return _llamafactory(r, out, data, rules)
    with folder.staged(out, record) as tmp:
        written = _trl(r, tmp, data, rules, record) if fmt == "trl" else _verl(r, tmp, data, data_source)
    return [out / p.relative_to(tmp) for p in written]


def _write(path: Path, rows: list[dict]) -> Path:
    artifacts.write_parquet_atomic(pa.Table.from_pylist(rows), path, {"source": "gpo export"})
    return path


def _lead(r: _Run, pair: dict) -> str:
    """The reset prefix to start a response with, when the pair held it in the prompt (--prefix in-prompt)."""
    return r.prefix(pair) if pair["prefix_placement"] == "in-prompt" and r.prompting.chat else ""


def _prompt(r: _Run, row: dict):
    """The prompt side of a pair or KTO row: messages for chat runs, the exact plain text otherwise."""
    return r.prompting.messages(r.question(row)) if r.prompting.chat else row["prompt"]


def _turn(r: _Run, text: str):
    return [{"role": "assistant", "content": text}] if r.prompting.chat else text


def _training_rows(r: _Run, data: str, rules: Rules) -> tuple[list[dict], list[dict], dict]:
    """The pairs (table `branch`) and KTO rows (table `unpaired`) `gpo train` would learn from under the same
    --truncated and --dedup, each KTO row with its pair (for the question and the reset prefix)."""
    all_pairs = r.rows("branch", data)
    pairs, pair_counts = trainable(all_pairs, "branch", rules.truncated, rules.dedup, data)
    kto, kto_counts = trainable(r.rows("unpaired", data), "unpaired", rules.truncated, rules.dedup, data)
    by_id = {p["pair_id"]: p for p in all_pairs}
    kto = [{**u, "pair": by_id[u["pair_id"]]} for u in kto]
    return pairs, kto, {"pairs": len(pairs), "kto_rows": len(kto), "pairs_left_out": pair_counts,
                        "kto_rows_left_out": kto_counts}


def _trl(r: _Run, out: Path, data: str, rules: Rules, record: dict) -> list[Path]:
    pairs, kto, record["counts"] = _training_rows(r, data, rules)
    flags = rules.truncated == "no-eos"  # the cut responses stay; the flags say which ones (see Rules)
    preference, unpaired = [], []
    for p in pairs:
        lead = _lead(r, p)
        preference.append({"prompt": _prompt(r, p), "chosen": _turn(r, lead + p["chosen"]),
                           "rejected": _turn(r, lead + p["rejected"]), "problem_id": p["problem_id"],
                           "pair_id": p["pair_id"],
                           **({"chosen_truncated": cut(p, "chosen"), "rejected_truncated": cut(p, "rejected")}
                              if flags else {})})
    for u in kto:
        unpaired.append({"prompt": _prompt(r, u["pair"]), "completion": _turn(r, _lead(r, u["pair"]) + u["completion"]),
                         "label": bool(u["label"]), "problem_id": u["problem_id"], "pair_id": u["pair_id"],
                         **({"completion_truncated": cut(u, "completion")} if flags else {})})
    prompts = [{"prompt": r.prompting.messages(r.question(x), r.prefix(x)) if r.prompting.chat else x["prompt"],
                "gold_answer": x["gold_answer"], "checker": x["checker"], "reset_prefix": r.prefix(x),
                "problem_id": x["problem_id"], "sample_idx": x["sample_idx"], "state_idx": x["state_idx"]}
               for x in r.rows("reset_prompts", data)]
    # train.parquet in a folder of its own: `datasets` names the split "train" and never mixes two tables.
    return [_write(out / "preference" / "train.parquet", preference),
            _write(out / "unpaired" / "train.parquet", unpaired),
            _write(out / "prompts" / "train.parquet", prompts)]


def _verl(r: _Run, out: Path, data: str, data_source: str | None) -> list[Path]:
    rows = []
    for i, x in enumerate(r.rows("reset_prompts", data)):
        prefix = r.prefix(x)
        rows.append({
            "data_source": data_source or x["source"],
            # verl always applies a chat template to `prompt`, so even plain runs get messages here.
            "prompt": r.prompting.messages(r.question(x), prefix),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": x["gold_answer"]},
            "extra_info": {"split": "train", "index": i, "problem_id": x["problem_id"],
                           "sample_idx": x["sample_idx"], "state_idx": x["state_idx"],
                           "prefix_tokens": x["prefix_tokens"], "reset_prefix": prefix, "checker": x["checker"]},
        })
    if not rows:
        raise GpoError(f"no '{data}' reset prompts in {r.run}/branch")
    return [_write(out / "train.parquet", rows)]


def _llamafactory(r: _Run, out: Path, data: str, rules: Rules) -> list[Path]:
    info_path = out / "dataset_info.json"
    info = _existing_info(info_path)
    pairs, kto_rows, _ = _training_rows(r, data, rules)

    def head(p: dict) -> dict:
        if r.prompting.chat:  # LLaMA-Factory joins "instruction\ninput" into the user turn, as prompts.py does
            return {"instruction": r.question(p), "input": r.prompting.instruction or "",
                    "system": r.prompting.system or ""}
        return {"instruction": p["prompt"], "input": "", "system": ""}

    pairwise = [{**head(p), "chosen": _lead(r, p) + p["chosen"], "rejected": _lead(r, p) + p["rejected"],
                 "problem_id": p["problem_id"], "pair_id": p["pair_id"]} for p in pairs]
    kto = [{**head(u["pair"]), "output": _lead(r, u["pair"]) + u["completion"], "kto_tag": bool(u["label"]),
            "problem_id": u["problem_id"], "pair_id": u["pair_id"]} for u in kto_rows]
    pair_name, kto_name = folder.llamafactory_names(data)
    alpaca = {"prompt": "instruction", "query": "input", "system": "system"}
    pair_columns = {**alpaca, "chosen": "chosen", "rejected": "rejected"}
    entries: dict[str, tuple[dict, list]] = {pair_name: ({"ranking": True, "columns": pair_columns}, pairwise),
               kto_name: ({"columns": {**alpaca, "response": "output", "kto_tag": "kto_tag"}}, kto)}
    paths = []
    for name, (attrs, records) in entries.items():
        path = out / f"{name}.json"
        artifacts.write_json_atomic(path, records)
        info[name] = {"file_name": path.name, "formatting": "alpaca", **attrs}
        paths.append(path)
    _write_info(info_path, info)
    return paths + [info_path]


def _existing_info(path: Path) -> dict:
    """LLaMA-Factory's registry of datasets: gpo adds its entries and keeps every other one."""
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GpoError(f"{path} is not valid JSON; fix or move it (gpo merges its entries into it)") from None
    if not isinstance(info, dict):
        raise GpoError(f"{path} is not a JSON object of dataset entries")
    return info


def _write_info(path: Path, info: dict) -> None:
    # Insertion order kept (not sorted) so a merged registry diffs as a few added lines.
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
