"""The TRL side of `gpo train`: each method's Config and Trainer, their arguments, LoRA, the answer reward
of the online methods, and the DPO/KTO variant that keeps truncated responses without EOS.

TRL 1.16 has no PPOTrainer; GRPO and RLOO are the PPO-style (clipped policy-gradient) online methods. Their
prompt set is the original problems plus the reset states (stages/train/data.py), and the reward judges
prefix + completion, since the kept prefix may hold lines the final answer depends on. Generation is HF
`generate` (use_vllm=False).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from stages.core.pipeline.errors import GpoError
from stages.train.settings import ONLINE, TrainSettings


def trl_args(s: TrainSettings, extra: dict, out: Path) -> dict:
    """TrainingArguments shared by every method; `extra` (the config file's TRL keys) wins."""
    import torch

    cuda = torch.cuda.is_available()
    args: dict[str, Any]  # TrainingArguments' keywords, of every type
    args = dict(output_dir=str(out / "checkpoints"), learning_rate=s.learning_rate, num_train_epochs=s.epochs,
                max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
                gradient_accumulation_steps=s.grad_accum, save_strategy="steps", save_steps=s.save_steps,
                save_total_limit=2, logging_steps=1, seed=s.seed, data_seed=s.seed, report_to=[],
                bf16=s.bf16, fp16=False, use_cpu=not cuda, dataloader_num_workers=0,
                gradient_checkpointing=cuda, push_to_hub=False, beta=s.beta,
                disable_tqdm=True)  # gpo's own progress on stderr (stages/train/progress.py)
    if s.method not in ONLINE:
        # Every optimizer step carries the same number of rows: without this, the last batch of each pass over
        # the data is short, so arms with different row counts would take different-sized steps.
        args["dataloader_drop_last"] = True
    return {**args, **extra}


def check_full_batch(s: TrainSettings, rows: int) -> None:
    """With the short last batch dropped, fewer rows than one batch would leave nothing to train on."""
    per_step = s.batch_size * s.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    if s.method not in ONLINE and rows < per_step:
        raise GpoError(f"{rows} training rows, fewer than one full batch ({per_step}: --batch-size x --grad-accum "
                       "x processes); lower --batch-size")


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
        assert s.beta is not None  # settings.resolve filled in the method's default
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


def make_trainer(s: TrainSettings, config, tok, dataset, callbacks: list):
    from stages.train import progress as train_progress

    train_progress.quiet_library_bars(datasets=True)  # in logs: before TRL loads the model and maps the data
    close = None
    try:  # TRL checks some combinations only here (e.g. KTO needs a batch of at least 2)
        if s.method in ONLINE:
            trainer, close = online_trainer(s, config, tok, dataset, callbacks, lora_config(s))
        else:
            Trainer = trl_class(s.method, "Trainer")
            if s.truncated == "no-eos" and s.method in ("dpo", "kto"):
                Trainer = no_eos_on_truncated(Trainer)
            if s.method == "dpo":
                Trainer = counting_pairs(Trainer)
            trainer = Trainer(model=s.model, args=config, train_dataset=dataset, processing_class=tok,
                              callbacks=callbacks, peft_config=lora_config(s))
    except ValueError as e:
        raise GpoError(f"{s.method}: {str(e).splitlines()[0]}") from None
    train_progress.attach(trainer)
    return trainer, close


def online_trainer(s, config, tok, dataset, callbacks: list, peft_config):
    from stages.core.scoring.rewards import AnswerReward

    Trainer = trl_class(s.method, "Trainer")
    reward = AnswerReward()  # the one `trl grpo --reward_funcs stages.core.scoring.rewards.correct` uses
    trainer = Trainer(model=s.model, reward_funcs=reward, args=config, train_dataset=dataset,
                      processing_class=tok, callbacks=callbacks, peft_config=peft_config)
    return trainer, reward.close


def no_eos_on_truncated(Trainer: Any):
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


def counting_pairs(Trainer: Any):
    """TRL's DPO trainer, logging `pairs`: the pairs presented since the previous log row (with gpo's
    logging_steps=1, those of that optimizer step), summed over ranks and micro-batches, read from each batch
    (TRL's preference collator stacks chosen over rejected), never the planned batch size."""
    class CountingPairs(Trainer):
        _pairs_since_log = 0

        def training_step(self, model, inputs, *args, **kwargs):
            import torch

            pairs = torch.tensor([inputs["input_ids"].shape[0] // 2], device=self.accelerator.device)
            self._pairs_since_log += int(self.accelerator.gather(pairs).sum())
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs, *args, **kwargs):
            if self._pairs_since_log and self.model.training:
                logs = {**logs, "pairs": float(self._pairs_since_log)}
                self._pairs_since_log = 0
            return super().log(logs, *args, **kwargs)

    return CountingPairs
