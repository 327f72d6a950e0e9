"""`gpo train`'s settings: methods, validation (`validate`, run by every TrainSettings), per-method defaults
(`resolve`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from stages.core.pipeline.errors import GpoError
from stages.core.generation.models import MODEL_HELP
from stages.core.pipeline.settings import require, setting

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
    method: str = setting(help="dpo, kto, simpo, orpo, grpo or rloo (GRPO/RLOO are the PPO-style online methods: "
                               "TRL has no PPOTrainer).")
    model: str = setting(help="Base policy. " + MODEL_HELP)
    data: str = setting("gpo", "gpo, baseline or random-reset rows of the branch tables.")
    loss_type: str = setting("sigmoid", "DPO loss type(s): sigmoid, ipo, hinge, ... (KTO/GRPO take theirs when "
                                        "not sigmoid).")
    learning_rate: float | None = setting(None, "Default per method (x10 with LoRA).")
    beta: float | None = setting(None, "Default per method.")
    epochs: float = setting(1.0, "Training epochs (unless --max-steps).")
    max_steps: int = setting(-1, "Optimizer steps; -1: run the epochs.")
    batch_size: int = setting(8, "Per-device batch size.")
    grad_accum: int = setting(1, "Gradient accumulation steps.")
    max_length: int = setting(512, "Longest prompt + response in tokens.")
    lora_r: int = setting(0, "LoRA rank r (0 = full fine-tune).", flag="--lora")
    lora_alpha: int = setting(16, "LoRA alpha.")
    merge_lora: bool = setting(True, "Also save the LoRA-merged model in out/model.")
    save_steps: int = setting(50, "Checkpoint every N steps (resume point).")
    seed: int = setting(0, "Seed of the data order and initialisation.")
    bf16: bool | None = setting(None, "Default: bf16 where the GPU supports it.")
    num_generations: int = setting(4, "grpo/rloo: completions per prompt.")
    max_completion_length: int = setting(128, "grpo/rloo: completion budget in tokens.")
    # Identical pairs (e.g. from rollouts shared by identical states) would weigh a contrast twice.
    dedup: bool = setting(True, "Train on identical pairs once (counted in summary.json).")
    # TRL appends EOS to every response, which would teach a model to stop where the length limit cut it.
    truncated: str | None = setting(None, "Responses cut at --max-new-tokens: no-eos (train without the EOS TRL "
                                          "appends), drop the pair, or eos (TRL's way). Default: no-eos (dpo, kto), "
                                          "drop (simpo, orpo, whose TRL trainers add EOS inside their tokenizer).")

    def __post_init__(self):
        validate(self)


def validate(s: TrainSettings) -> None:
    """The settings' own checks (every TrainSettings runs them, the CLI's and a library caller's)."""
    require(s, "method", "model")
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
    if s.epochs < 0 or s.max_length < 8 or s.save_steps < 1 or s.num_generations < 2 or s.max_completion_length < 1:
        raise GpoError("--epochs must be at least 0, --max-length 8, --save-steps 1, --num-generations 2 and "
                       "--max-completion-length 1")


def resolve(settings: TrainSettings, trl_args: dict | None = None) -> tuple[TrainSettings, dict]:
    """Fill the per-method defaults (the settings checked themselves when made); `trl_args` (a config file's
    keys that are not gpo settings, merged by the CLI in gpo_cli/adapter.py) pass through to the method's TRL
    config."""
    s, extra = settings, dict(trl_args or {})
    clash = sorted(set(extra) & {f.name for f in dataclasses.fields(TrainSettings)})
    if clash:
        raise GpoError(f"{', '.join(clash)}: gpo train settings, not TRL arguments; set them on TrainSettings")
    lr = DEFAULTS[s.method]["learning_rate"] * (LORA_LR_FACTOR if s.lora_r else 1.0)
    s = dataclasses.replace(s, learning_rate=s.learning_rate if s.learning_rate is not None else lr,
                            beta=s.beta if s.beta is not None else DEFAULTS[s.method]["beta"],
                            bf16=s.bf16 if s.bf16 is not None else _cuda_bf16(),
                            truncated=s.truncated or ("drop" if s.method in ("simpo", "orpo") else "no-eos"))
    return s, extra


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
