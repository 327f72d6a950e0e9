"""Where `gpo train` writes: metrics, the trusted-checkpoint pointer, the final model, rerun checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError
from stages.train.settings import RESUME_FREE, TrainSettings


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


def default_out(run: Path, s: TrainSettings) -> Path:
    return Path(run) / "train" / f"{s.method}-{s.data}"


def check_rerun(out: Path, config: dict, overwrite: bool) -> dict | None:
    """Return the stored summary of a finished identical run; refuse a different one; None to (re)start."""
    path = layout.config_path(out)
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
    if layout.success_path(out).exists() and (out / "model").is_dir():
        return artifacts.load_json(layout.summary_path(out))
    return None


def _comparable(config: dict) -> dict:
    settings = {k: v for k, v in config["settings"].items() if k not in RESUME_FREE}
    return {"settings": settings, "trl_args": config["trl_args"], "inputs": config["inputs"]}
