"""What the generation backends share: the request, sampling and completion records, the Generator
interface, and loading a tokenizer, its end-of-sequence ids and torch's dtype and device. backends.py (the
choice of backend, the preflight, the fake) and each implementation (hf_backend.py, vllm_backend.py) build
on it; callers import these names from backends.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stages.core.pipeline.errors import GpoError


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    n: int
    seed: int  # stable per request; sample j uses stable_seed(seed, j)
    max_new_tokens: int | None = None  # overrides Sampling.max_new_tokens (rollouts from deep states)


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]  # generated ids, without the final EOS
    text: str
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens)
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    logprobs: bool = False


class Generator(Protocol):
    tokenizer: object

    @property
    def stats(self) -> dict: ...  # read-only here, so a generator may keep a Counter

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]: ...

    def describe(self) -> dict: ...


def eos_ids(tokenizer, model_config=None) -> set[int]:
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model_config, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update([gen_eos] if isinstance(gen_eos, int) else gen_eos)
    return ids


def load_tokenizer(model: str, trust_remote_code: bool = False):
    from stages.core.generation import models

    ref = models.resolve_model(model)
    own = models.tokenizer_ref(ref)
    if own.kind != "gguf" and not any((Path(own.path) / f).exists() for f in models.TOKENIZER_FILES):
        raise GpoError(f"{model} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        return models.load_tokenizer(ref, trust_remote_code=trust_remote_code)
    except GpoError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise GpoError(f"cannot load the tokenizer of {model}: {str(e).splitlines()[0]}") from None


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
            "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_batch_size(config, dtype, device: str) -> int:
    """Rows per batch when --batch-size is not given. A GPU: 64, whose KV cache fits beside a 7B model. CPU:
    256 where 256 rows' KV cache at 2,048 positions stays within 4 GiB (the toy models: 256 decoded 1,216
    toy:borrow rollouts 1.1x faster than 128, and 432 as fast), else 128 (1.1x faster than 64 on toy:borrow;
    SmolLM2 and larger models, whose cache at 256 rows would crowd a workstation's memory). bench/README.md."""
    import torch

    if device != "cpu":
        return 64
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // text.num_attention_heads if heads else None)
    layers = getattr(text, "num_hidden_layers", None)
    if not (heads and head_dim and layers):
        return 128
    per_position = layers * 2 * heads * head_dim * torch.tensor([], dtype=dtype).element_size()
    return 256 if 256 * 2048 * per_position <= 4 * 2**30 else 128
