"""`gpo train`'s progress: step / total, loss and ETA through the same Reporter as the generating stages.

The Trainer's own tqdm bar is off (`disable_tqdm=True`, set with the other TrainingArguments) and its
stdout log printer removed: stdout stays for data, stderr gets a rich bar on a terminal or a plain line
every GPO_PROGRESS_EVERY seconds in a log.
"""

from __future__ import annotations

from stages.core.pipeline.progress import Reporter, quiet_library_bars  # noqa: F401 - train.py calls it from here


def progress_callback():
    """A transformers TrainerCallback reporting steps, the latest loss and the ETA (rank 0 only)."""
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        def __init__(self):
            self.reporter: Reporter | None = None
            self.rebased = False

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.reporter = Reporter("train", unit="steps")
                self.reporter.start(total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if self.reporter is None:
                return
            if not self.rebased:
                # A resumed run learns its starting step only after on_train_begin: time from here.
                self.rebased = True
                self.reporter.start(total=state.max_steps, done=state.global_step - 1)
            self.reporter.update(state.global_step, total=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if self.reporter is not None and isinstance(loss, (int, float)):
                self.reporter.update(note=f"loss {loss:.4g}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.reporter is not None:
                self.reporter.close()
                self.reporter = None

    return TrainProgress()


def attach(trainer) -> None:
    """Swap the Trainer's tqdm bar (or, with disable_tqdm, its stdout log printer) for gpo's progress."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.pop_callback(ProgressCallback)
    trainer.pop_callback(PrinterCallback)
    trainer.add_callback(progress_callback())
