"""Stage `train`: fit the policy on the branch stage's data with one of TRL's trainers.

    gpo train --run runs/toy --method dpo --data gpo --model data/toy-model
    accelerate launch -m gpo_cli.main train --run runs/x --method dpo ...     # several GPUs

Preference methods read RUN/branch (`dpo`, `simpo` via TRL's CPO with loss_type="simpo" and cpo_alpha=0,
`orpo`) or RUN/branch/unpaired (`kto`); the online methods `grpo` and `rloo` (stages/train/data.py, trl_adapter.py)
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
import math
from pathlib import Path

from stages.core.pipeline import artifacts, layout, lineage
from stages.train.checkpoints import (
    _barrier,
    _is_main,
    _read_latest,
    check_rerun,
    default_out,
    latest_checkpoint,
    make_callbacks,
    previous_metrics,
    save_final,
)
from stages.train.data import load_rows
from stages.train.settings import TrainSettings, resolve
from stages.train.trl_adapter import build_config, check_full_batch, make_trainer

__all__ = ["TrainSettings", "train"]



def train(run: Path, settings: TrainSettings, out: Path | None = None, *, config_overrides: dict | None = None,
          overwrite: bool = False, log=print, callbacks: list | None = None) -> dict:
    """Train and return summary metrics. `callbacks`: extra transformers TrainerCallbacks (tests, progress)."""
    run = Path(run)
    s, extra = resolve(settings, config_overrides)
    lineage.require_fresh(run, "branch")  # never train on an unfinished or stale branch stage
    out = Path(out) if out is not None else default_out(run, s)
    from transformers import AutoTokenizer

    from stages.core.generation.models import plain_folder, resolve_model

    model_ref = resolve_model(s.model)  # a folder, hub id, train output, adapter or .gguf, as for sample
    load_from = plain_folder(model_ref)  # TRL loads by path: adapters merged, GGUF dequantized (cached)
    tok = AutoTokenizer.from_pretrained(load_from)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dataset, inputs, checks = load_rows(run, s, tok)
    check_full_batch(s, len(dataset))
    config = {"stage": "train", "settings": dataclasses.asdict(s), "trl_args": extra, "inputs": inputs,
              "model_resolved": model_ref.provenance(), "versions": artifacts.package_versions()}
    done = check_rerun(out, config, overwrite)
    if done is not None:
        log(f"train: {out} is finished; nothing to do")
        return done
    trl_config = build_config(s, extra, out)  # refuses bad TRL arguments before anything is written
    if _is_main():
        artifacts.write_json_atomic(layout.config_path(out), config)
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
    trainer, close = make_trainer(dataclasses.replace(s, model=load_from), trl_config, tok, dataset,
                                  own + list(callbacks or []))
    log(f"train: {s.method} on {len(dataset)} '{s.data}' rows, lr {s.learning_rate:g}, beta {s.beta:g}"
        + (f", resuming from {resume.name}" if resume else ""))
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        if close:
            close()
    save_final(trainer, s, tok, out)
    write_metrics()
    summary = summarize(s, trainer, result, rows, inputs, checks, resume)
    if _is_main():
        artifacts.write_json_atomic(layout.summary_path(out), summary)
        artifacts.write_json_atomic(layout.success_path(out), {"global_step": summary["global_step"]})
    log(f"train: done at step {summary['global_step']}, model in {out / 'model'}")
    return summary


def summarize(s, trainer, result, rows, inputs, checks, resume) -> dict:
    import torch

    losses = [r["loss"] for r in rows if r.get("loss") is not None and math.isfinite(r["loss"])]
    last = {k: v for r in rows for k, v in r.items()}  # the latest value of every logged metric
    per_step = [int(r["pairs"]) for r in rows if r.get("pairs")]  # DPO: measured from its batches
    return {"method": s.method, "data": s.data, "rows": inputs["rows"],
            "duplicates_dropped": inputs.get("duplicates_dropped", 0), "global_step": trainer.state.global_step,
            "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "learning_rate": s.learning_rate, "beta": s.beta,
            "resumed_from": resume.name if resume else None, "tokenization": checks,
            "pairs_presented": sum(per_step) if per_step else None,
            "pairs_per_step": sorted(set(per_step)) if per_step else None,
            "cpu_threads": torch.get_num_threads(),  # CPU sums split by thread count: a model's last bits depend on it
            "metrics": {k: v for k, v in last.items() if k not in ("step", "epoch")}}
