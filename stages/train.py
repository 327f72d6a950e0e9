"""Stage `train`: fit the policy on the branch stage's data with one of TRL's trainers.

    gpo train --run runs/toy --method dpo --data gpo --model data/toy-model
    accelerate launch -m gpo_cli.main train --run runs/x --method dpo ...     # several GPUs

Preference methods read RUN/branch (`dpo`, `simpo` via TRL's CPO with loss_type="simpo" and cpo_alpha=0,
`orpo`) or RUN/branch/unpaired (`kto`); the online methods `grpo` and `rloo` (stages/train_online.py)
sample from the original problems plus the GPO reset states. TRL 1.16 has no PPOTrainer, so GRPO and
RLOO are the PPO-style online optimizers here. `--data gpo|baseline|random-reset` picks rows by the
`data` column. Output (default RUN/train/<method>-<data>):

    config.json                   resolved settings, TRL arguments and a fingerprint of the input rows
    checkpoints/checkpoint-N      written by the HF Trainer; only the one `checkpoints/latest` names is
                                  trusted (that pointer is replaced atomically after each save)
    metrics/metrics.parquet       every logged row (loss, rewards_margins, ..., learning_rate, step)
    model/                        final HF model + tokenizer (LoRA: merged model; adapter in adapter/)
    summary.json, _SUCCESS        written last

A rerun resumes from the latest trusted checkpoint; a finished run is a no-op; different settings are
refused unless overwrite=True.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stages.core import artifacts, lineage
from stages.core.errors import GpoError

METHODS = ("dpo", "kto", "simpo", "orpo", "grpo", "rloo")
# How a response cut at max-new-tokens (finish_reason "length") trains. TRL appends EOS to every response,
# which would teach the model to stop where the length limit cut it, mid-reasoning.
TRUNCATED = ("no-eos", "drop", "eos")
ONLINE = ("grpo", "rloo")
DATA = ("gpo", "baseline", "random-reset")
# Full fine-tuning defaults for ~1-8B models (DPO/KTO/SimPO papers; ORPO paper lr; TRL's GRPO/RLOO betas).
# With LoRA the learning rate is 10x. A tiny model trained from scratch (the toy) needs ~1e-4.
DEFAULTS = {
    "dpo": {"learning_rate": 5e-7, "beta": 0.1},
    "kto": {"learning_rate": 5e-7, "beta": 0.1},
    "simpo": {"learning_rate": 5e-7, "beta": 2.0},  # simpo_gamma = beta / 2 (the paper's gamma/beta ~ 0.5)
    "orpo": {"learning_rate": 8e-6, "beta": 0.1},
    "grpo": {"learning_rate": 1e-6, "beta": 0.0},
    "rloo": {"learning_rate": 1e-6, "beta": 0.05},
}
LORA_LR_FACTOR = 10.0
# Settings that do not change what is learned: a resume may change them.
RESUME_FREE = ("save_steps",)


@dataclass(frozen=True)
class TrainSettings:
    method: str  # dpo | kto | simpo | orpo | grpo | rloo
    model: str  # local HF model folder (base policy)
    data: str = "gpo"
    loss_type: str = "sigmoid"  # DPO loss type(s); KTO/GRPO take theirs when not "sigmoid"
    learning_rate: float | None = None  # None -> DEFAULTS (x10 with LoRA)
    beta: float | None = None
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    lora_r: int = 0  # 0 = full fine-tune
    lora_alpha: int = 16
    merge_lora: bool = True
    save_steps: int = 50
    seed: int = 0
    bf16: bool | None = None  # None: bf16 where CUDA supports it, else fp32
    num_generations: int = 4  # grpo/rloo
    max_completion_length: int = 128  # grpo/rloo
    # Identical pairs (e.g. from rollouts shared by identical states) would weigh a contrast twice.
    dedup: bool = True
    # responses cut at the length limit: no-eos | drop (the pair/row) | eos (TRL's way); None: no-eos, or drop for
    # simpo/orpo, whose TRL trainers add EOS inside their own tokenizer
    truncated: str | None = None


def load_config_file(path: Path) -> dict:
    """A TOML (or YAML, when PyYAML is importable) file of TrainSettings fields and extra TRL arguments.

    A `[trl]` table, if present, is merged into the top level (it only groups the TRL arguments).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise GpoError(f"cannot read config file {path}: {e.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise GpoError(f"{path}: YAML needs PyYAML, which is not installed; use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise GpoError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise GpoError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise GpoError(f"{path} must hold a table of settings")
    trl = data.pop("trl", {}) or {}
    return {**data, **trl}


def resolve(settings: TrainSettings, overrides: dict | None = None) -> tuple[TrainSettings, dict]:
    """Apply overrides (settings fields win over `settings`; other keys are TRL arguments); fill defaults."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    overrides = dict(overrides or {})
    s = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if k in fields})
    extra = {k: v for k, v in overrides.items() if k not in fields}
    if s.method not in METHODS:
        raise GpoError(f"--method must be one of {', '.join(METHODS)}, not {s.method!r}")
    if s.data not in DATA:
        raise GpoError(f"--data must be one of {', '.join(DATA)}, not {s.data!r}")
    if s.truncated is not None and s.truncated not in TRUNCATED:
        raise GpoError(f"--truncated must be one of {', '.join(TRUNCATED)}, not {s.truncated!r}")
    if s.truncated == "no-eos" and s.method in ("simpo", "orpo"):
        raise GpoError(f"--truncated no-eos is not available for {s.method} (TRL's CPO/ORPO add EOS inside their "
                       "tokenizer); choose drop or eos")
    if s.loss_type != "sigmoid" and s.method not in ("dpo", "kto", "grpo"):
        raise GpoError(f"--loss-type applies to dpo, kto and grpo, not {s.method}")
    if s.batch_size < 1 or s.grad_accum < 1 or s.lora_r < 0:
        raise GpoError("batch size and gradient accumulation must be at least 1, LoRA rank at least 0")
    lr = DEFAULTS[s.method]["learning_rate"] * (LORA_LR_FACTOR if s.lora_r else 1.0)
    s = dataclasses.replace(s, learning_rate=s.learning_rate if s.learning_rate is not None else lr,
                            beta=s.beta if s.beta is not None else DEFAULTS[s.method]["beta"],
                            bf16=s.bf16 if s.bf16 is not None else _cuda_bf16(),
                            truncated=s.truncated or ("drop" if s.method in ("simpo", "orpo") else "no-eos"))
    return s, extra


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# ----------------------------------------------------------------------------- data


def select_rows(run: Path, table: str, data: str) -> list[dict]:
    rows = [r for r in artifacts.read_table(run, table).to_pylist() if r["data"] == data]
    if not rows:
        raise GpoError(f"no '{data}' rows in table '{table}' of {run}: run `gpo branch` with data of that kind "
                       f"(--baseline adds baseline and random-reset rows)")
    return rows


def drop_duplicates(rows: list[dict], keys: tuple[str, ...]) -> tuple[list[dict], int]:
    """Rows with the same training content (keys other than pair_id) kept once, the first by pair_id."""
    seen, kept = set(), []
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        content = json.dumps([r[k] for k in keys if k != "pair_id"], default=str)
        if content not in seen:
            seen.add(content)
            kept.append(r)
    return kept, len(rows) - len(kept)


def fingerprint(rows: list[dict], keys: tuple[str, ...]) -> str:
    """Hash of the training rows, so that a rerun over changed branch data is not taken for a resume."""
    h = hashlib.sha256()
    for r in sorted(json.dumps([r[k] for k in keys], default=str) for r in rows):
        h.update(r.encode())
    return h.hexdigest()[:16]


def prompt_for_tokenizer(tok, prompt: str, ids: list[int]) -> tuple[str, str]:
    """The prompt text to hand TRL, which tokenizes it with `tok(text)` (special tokens on), and a verdict.

    Sampling used the stored ids. A chat prompt already carries its BOS as text, and a tokenizer that adds
    BOS would double it, so a leading BOS string is dropped when that reproduces the stored ids.
    """
    if tok(prompt)["input_ids"] == list(ids):
        return prompt, "match"
    bos = tok.bos_token
    if bos and prompt.startswith(bos) and tok(prompt[len(bos):])["input_ids"] == list(ids):
        return prompt[len(bos):], "bos_dropped"
    return prompt, "mismatch"


def _cpo_prompt_ids(tok, prompt: str) -> list[int]:
    """How TRL's CPO/ORPO tokenize a prompt: no special tokens, then BOS prepended unless already first."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
        ids = [tok.bos_token_id] + ids
    return ids


def cut(row: dict, side: str) -> bool:
    """Whether this side's response was cut at the length limit (tables from before the column: no)."""
    return row.get(f"{side}_finish_reason") == "length"


def drop_truncated(rows: list[dict], method: str) -> list[dict]:
    sides = ("completion",) if method == "kto" else ("chosen", "rejected")
    return [r for r in rows if not any(cut(r, side) for side in sides)]


def preference_dataset(rows: list[dict], tok, method: str) -> tuple[list[dict], dict]:
    """Standard (non-conversational) text examples and a count of how well TRL's tokenization matches.

    DPO and KTO examples carry `<side>_truncated` flags, read by `no_eos_on_truncated` after TRL tokenizes."""
    checks = {"match": 0, "bos_dropped": 0, "mismatch": 0, "response_retokenized_differently": 0,
              "truncated_responses": 0}
    examples = []
    for r in rows:
        if method in ("simpo", "orpo"):
            prompt, verdict = r["prompt"], ("match" if _cpo_prompt_ids(tok, r["prompt"]) == list(r["prompt_token_ids"])
                                            else "mismatch")
        else:
            prompt, verdict = prompt_for_tokenizer(tok, r["prompt"], r["prompt_token_ids"])
        checks[verdict] += 1
        if method == "kto":
            examples.append({"prompt": prompt, "completion": r["completion"], "label": bool(r["label"]),
                             "completion_truncated": cut(r, "completion")})
            responses = [(r["completion"], r["completion_token_ids"])]
        else:
            examples.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]})
            if method == "dpo":
                examples[-1].update(chosen_truncated=cut(r, "chosen"), rejected_truncated=cut(r, "rejected"))
            responses = [(r["chosen"], r["chosen_token_ids"]), (r["rejected"], r["rejected_token_ids"])]
        checks["truncated_responses"] += sum(cut(r, side) for side in
                                             (("completion",) if method == "kto" else ("chosen", "rejected")))
        for text, ids in responses:
            checks["response_retokenized_differently"] += (
                tok(text, add_special_tokens=False)["input_ids"] != list(ids))
    return examples, checks


# ----------------------------------------------------------------------------- callbacks and checkpoints


def _column_name(key: str) -> str:
    return key.replace("/", "_").replace(".", "_").replace("-", "_")


def metrics_table(rows: list[dict], tags: dict):
    """One row per log call; numeric values as float64 (`step` int64), snake_case names (`rewards_margins`)."""
    import pyarrow as pa

    names = sorted({k for r in rows for k in r if k != "step"})
    cols = {"step": pa.array([r["step"] for r in rows], pa.int64())}
    cols.update({n: pa.array([r.get(n) for r in rows], pa.float64()) for n in names})
    cols.update({k: pa.array([v] * len(rows), pa.string()) for k, v in tags.items()})
    return pa.table(cols)


def make_callbacks(out: Path, tags: dict, rows: list[dict], mirror: Path | None):
    """Callbacks that collect every log row into `rows`, write metrics and move the `latest` pointer."""
    from transformers import TrainerCallback

    def write_metrics() -> None:
        if rows:
            table = metrics_table(rows, tags)
            artifacts.write_parquet_atomic(table, out / "metrics" / "metrics.parquet", {"stage": "train", **tags})
            if mirror is not None:
                artifacts.write_parquet_atomic(table, mirror, {"stage": "train", **tags})

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                row = {_column_name(k): float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
                rows.append({**row, "step": int(state.global_step), "epoch": float(state.epoch or 0.0)})

        def on_save(self, args, state, control, **kwargs):
            # The Trainer calls on_save after the checkpoint folder is complete: only now is it trusted.
            if state.is_world_process_zero:
                name = f"checkpoint-{state.global_step}"
                artifacts.write_json_atomic(out / "checkpoints" / "latest",
                                            {"checkpoint": name, "global_step": state.global_step})
                write_metrics()

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_metrics()

    return [Recorder()], write_metrics


def _read_latest(out: Path) -> Path | None:
    """The checkpoint folder the `latest` pointer names, if it exists."""
    pointer = out / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    name = artifacts.load_json(pointer).get("checkpoint")
    folder = out / "checkpoints" / str(name)
    return folder if name and folder.is_dir() else None


def latest_checkpoint(out: Path) -> Path | None:
    """The trusted checkpoint; folders past it (a save cut short) are removed so nothing resumes from them."""
    trusted = _read_latest(out)
    step = int(trusted.name.split("-")[1]) if trusted else 0
    for folder in (out / "checkpoints").glob("checkpoint-*"):
        tail = folder.name.split("-")[-1]
        if folder.is_dir() and (not tail.isdigit() or int(tail) > step):
            shutil.rmtree(folder, ignore_errors=True)
    return trusted


def _barrier() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def previous_metrics(out: Path, upto_step: int) -> list[dict]:
    import pyarrow.parquet as pq

    path = out / "metrics" / "metrics.parquet"
    if not path.exists():
        return []
    rows = pq.read_table(path).to_pylist()
    return [{k: v for k, v in r.items() if v is not None and k not in ("method", "data", "run_name")}
            for r in rows if r["step"] <= upto_step]


# ----------------------------------------------------------------------------- trainers


def trl_args(s: TrainSettings, extra: dict, out: Path) -> dict:
    """TrainingArguments shared by every method; `extra` (the config file's TRL keys) wins."""
    import torch

    cuda = torch.cuda.is_available()
    args = dict(output_dir=str(out / "checkpoints"), learning_rate=s.learning_rate, num_train_epochs=s.epochs,
                max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
                gradient_accumulation_steps=s.grad_accum, save_strategy="steps", save_steps=s.save_steps,
                save_total_limit=2, logging_steps=1, seed=s.seed, data_seed=s.seed, report_to=[],
                bf16=s.bf16, fp16=False, use_cpu=not cuda, dataloader_num_workers=0,
                gradient_checkpointing=cuda, push_to_hub=False, beta=s.beta,
                disable_tqdm=True)  # gpo's own progress on stderr (stages/core/train_progress.py)
    return {**args, **extra}


# TRL module and class stem per method: <stem>Config, <stem>Trainer. SimPO is CPO with loss_type="simpo".
TRL_CLASSES = {"dpo": ("trl", "DPO"), "kto": ("trl", "KTO"), "simpo": ("trl.experimental.cpo", "CPO"),
               "orpo": ("trl.experimental.orpo", "ORPO"), "grpo": ("trl", "GRPO"), "rloo": ("trl", "RLOO")}


def trl_class(method: str, kind: str):
    """`kind` is "Config" or "Trainer"."""
    import importlib

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental
    module, stem = TRL_CLASSES[method]
    return getattr(importlib.import_module(module), stem + kind)


def method_args(s: TrainSettings) -> dict:
    if s.method == "dpo":  # several loss types ("sigmoid,sft") are combined by TRL
        return {"loss_type": [t.strip() for t in s.loss_type.split(",")], "max_length": s.max_length}
    if s.method == "simpo":  # cpo_alpha 0: no NLL term, i.e. SimPO proper
        return {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": s.beta / 2, "max_length": s.max_length}
    own_loss = {"loss_type": s.loss_type} if s.loss_type != "sigmoid" else {}
    if s.method in ONLINE:
        return {"num_generations": s.num_generations, "max_completion_length": s.max_completion_length,
                "use_vllm": False, **own_loss}
    return {"max_length": s.max_length, **own_loss}


def build_config(s: TrainSettings, extra: dict, out: Path):
    """The method's TRL config; unknown keys or a bad combination (batch vs generations) -> one-line GpoError."""
    Config = trl_class(s.method, "Config")
    kwargs = {**method_args(s), **trl_args(s, extra, out)}
    unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise GpoError(f"unknown {Config.__name__} argument(s): {', '.join(unknown)}")
    try:
        return Config(**kwargs)
    except ValueError as e:
        raise GpoError(f"{Config.__name__}: {str(e).splitlines()[0]}") from None


def lora_config(s: TrainSettings):
    if not s.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def save_final(trainer, s: TrainSettings, tok, out: Path) -> None:
    """out/model (and out/adapter for LoRA), each written to a temp folder and renamed into place."""
    def place(tmp: Path, final: Path) -> None:
        if _is_main():
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)

    tmp = out / f".tmp-{'adapter' if s.lora_r else 'model'}"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during a previous save
    _barrier()
    trainer.save_model(str(tmp))  # collective under DDP/FSDP: every rank calls it
    if not s.lora_r:
        place(tmp, out / "model")
        return
    place(tmp, out / "adapter")
    if s.merge_lora and _is_main():
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        tmp = out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        merged.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        place(tmp, out / "model")


# ----------------------------------------------------------------------------- the stage


def default_out(run: Path, s: TrainSettings) -> Path:
    return Path(run) / "train" / f"{s.method}-{s.data}"


def check_rerun(out: Path, config: dict, overwrite: bool) -> dict | None:
    """Return the stored summary of a finished identical run; refuse a different one; None to (re)start."""
    path = out / "config.json"
    if not path.exists():
        return None
    old = artifacts.load_json(path)
    same = _comparable(old) == _comparable(config)
    if not same and not overwrite:
        changed = sorted(k for k in set(old["settings"]) | set(config["settings"])
                         if old["settings"].get(k) != config["settings"].get(k) and k not in RESUME_FREE)
        what = ", ".join(changed) or "TRL arguments or input rows"
        raise GpoError(f"{out} was trained with different settings ({what}); pass --overwrite to start over")
    if not same:
        if _is_main():
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        _barrier()
        return None
    if (out / "_SUCCESS").exists() and (out / "model").is_dir():
        return artifacts.load_json(out / "summary.json")
    return None


def _comparable(config: dict) -> dict:
    settings = {k: v for k, v in config["settings"].items() if k not in RESUME_FREE}
    return {"settings": settings, "trl_args": config["trl_args"], "inputs": config["inputs"]}


def load_rows(run: Path, s: TrainSettings, tok) -> tuple[object, dict, dict]:
    """The training dataset, its input fingerprint and the tokenization checks."""
    from datasets import Dataset

    if s.method in ONLINE:
        from stages.train_online import online_rows

        examples, inputs, checks = online_rows(run, s.data, tok)
    else:
        table = "unpaired" if s.method == "kto" else "branch"
        rows = select_rows(run, table, s.data)
        keys = ("pair_id", "prompt", "completion", "label") if s.method == "kto" else \
            ("pair_id", "prompt", "chosen", "rejected")
        kept = drop_truncated(rows, s.method) if s.truncated == "drop" else rows
        if not kept:
            raise GpoError(f"every '{s.data}' row of table '{table}' has a response cut at the length limit, "
                           "and --truncated drop leaves none")
        dropped_truncated = len(rows) - len(kept)
        rows, duplicates = drop_duplicates(kept, keys) if s.dedup else (kept, 0)
        inputs = {"table": table, "rows": len(rows), "hash": fingerprint(rows, keys),
                  "dropped_truncated": dropped_truncated, "duplicates_dropped": duplicates}
        examples, checks = preference_dataset(rows, tok, s.method)
    return Dataset.from_list(examples), inputs, checks


def train(run: Path, settings: TrainSettings, out: Path | None = None, *, config_overrides: dict | None = None,
          overwrite: bool = False, log=print, callbacks: list | None = None) -> dict:
    """Train and return summary metrics. `callbacks`: extra transformers TrainerCallbacks (tests, progress)."""
    run = Path(run)
    s, extra = resolve(settings, config_overrides)
    lineage.require_fresh(run, "branch")  # never train on an unfinished or stale branch stage
    out = Path(out) if out is not None else default_out(run, s)
    if not Path(s.model).is_dir():
        raise GpoError(f"--model {s.model} is not a local model folder")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(s.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dataset, inputs, checks = load_rows(run, s, tok)
    config = {"stage": "train", "settings": dataclasses.asdict(s), "trl_args": extra, "inputs": inputs,
              "versions": artifacts.package_versions()}
    done = check_rerun(out, config, overwrite)
    if done is not None:
        log(f"train: {out} is finished; nothing to do")
        return done
    trl_config = build_config(s, extra, out)  # refuses bad TRL arguments before anything is written
    if _is_main():
        artifacts.write_json_atomic(out / "config.json", config)
    if checks["mismatch"]:
        log(f"train: warning: for {checks['mismatch']} of {len(dataset)} rows TRL's tokenization of the prompt "
            f"differs from the ids used at sampling time")

    resume = latest_checkpoint(out) if _is_main() else None
    _barrier()  # rank 0 has cleaned up; every rank now sees the same checkpoints
    resume = resume or _read_latest(out)
    resume_step = int(resume.name.split("-")[1]) if resume else 0
    rows = previous_metrics(out, resume_step) if resume else []
    tags = {"method": s.method, "data": s.data, "run_name": out.name}
    # RUN/train/<name>/ also feeds RUN/train/metrics/, the folder `gpo sql` shows as the `metrics` view.
    mirror = out.parent / "metrics" / f"{out.name}.parquet" if out.parent.name == "train" else None
    own, write_metrics = make_callbacks(out, tags, rows, mirror)
    trainer = make_trainer(s, trl_config, tok, dataset, own + list(callbacks or []))
    log(f"train: {s.method} on {len(dataset)} '{s.data}' rows, lr {s.learning_rate:g}, beta {s.beta:g}"
        + (f", resuming from {resume.name}" if resume else ""))
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        close = getattr(trainer, "gpo_close", None)
        if close:
            close()
    save_final(trainer, s, tok, out)
    write_metrics()
    summary = summarize(s, trainer, result, rows, inputs, checks, resume)
    if _is_main():
        artifacts.write_json_atomic(out / "summary.json", summary)
        artifacts.write_json_atomic(out / "_SUCCESS", {"global_step": summary["global_step"]})
    log(f"train: done at step {summary['global_step']}, model in {out / 'model'}")
    return summary


def make_trainer(s: TrainSettings, config, tok, dataset, callbacks: list):
    from stages.core import train_progress

    train_progress.quiet_library_bars(datasets=True)  # in logs: before TRL loads the model and maps the data
    try:  # TRL checks some combinations only here (e.g. KTO needs a batch of at least 2)
        if s.method in ONLINE:
            from stages.train_online import online_trainer

            trainer = online_trainer(s, config, tok, dataset, callbacks, lora_config(s))
        else:
            Trainer = trl_class(s.method, "Trainer")
            if s.truncated == "no-eos" and s.method in ("dpo", "kto"):
                Trainer = no_eos_on_truncated(Trainer)
            trainer = Trainer(model=s.model, args=config, train_dataset=dataset, processing_class=tok,
                              callbacks=callbacks, peft_config=lora_config(s))
    except ValueError as e:
        raise GpoError(f"{s.method}: {str(e).splitlines()[0]}") from None
    train_progress.attach(trainer)
    return trainer


def no_eos_on_truncated(Trainer):
    """TRL's DPO/KTO trainer, but a response flagged `<side>_truncated` loses the EOS TRL appended to it.

    TRL 1.16 appends EOS to every response text before tokenizing, with no option to skip it; the flags
    ride along as dataset columns and the Trainer drops them before batching."""
    class NoEosOnTruncated(Trainer):
        def _prepare_dataset(self, dataset, processing_class, *args, **kwargs):
            dataset = super()._prepare_dataset(dataset, processing_class, *args, **kwargs)
            eos = getattr(processing_class, "tokenizer", processing_class).eos_token_id
            sides = [c[:-len("_truncated")] for c in dataset.column_names if c.endswith("_truncated")]

            def strip(example):
                for side in sides:
                    ids = example[f"{side}_ids"]
                    if example[f"{side}_truncated"] and ids and ids[-1] == eos:
                        example[f"{side}_ids"] = ids[:-1]
                return example

            return dataset.map(strip, desc="Removing EOS from truncated responses") if sides else dataset

    return NoEosOnTruncated


def summarize(s, trainer, result, rows, inputs, checks, resume) -> dict:
    losses = [r["loss"] for r in rows if r.get("loss") is not None and math.isfinite(r["loss"])]
    last = {k: v for r in rows for k, v in r.items()}  # the latest value of every logged metric
    return {"method": s.method, "data": s.data, "rows": inputs["rows"],
            "duplicates_dropped": inputs.get("duplicates_dropped", 0), "global_step": trainer.state.global_step,
            "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "learning_rate": s.learning_rate, "beta": s.beta,
            "resumed_from": resume.name if resume else None, "tokenization": checks,
            "metrics": {k: v for k, v in last.items() if k not in ("step", "epoch")}}
