"""Models named as users name them, resolved offline to something transformers, vLLM and TRL load.

    --model data/toy-model                 a local model folder (config.json + tokenizer + weights)
    --model HuggingFaceTB/SmolLM2-135M     a hub id, optionally @revision, from the local HF cache only
    --model runs/toy/train/dpo-gpo         a `gpo train --out` folder: its model/ (or LoRA adapter/)
    --model my-lora/                       a PEFT adapter folder: base from adapter_config.json, merged
    --model smollm2.Q4_1.gguf              a GGUF file (transformers' gguf_file=, tokenizer from the file)

Nothing here touches the network: a hub id not in the cache is refused with the command that fetches it.
The transformers backend loads adapters and GGUF files in memory (PEFT merge_and_unload, gguf_file=);
what loads models by path (vLLM, TRL's trainers) gets `plain_folder`: the same merged or dequantized
model saved once as safetensors under the gpo cache ($GPO_CACHE_DIR, default ~/.cache/gpo/models).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from stages.core.pipeline import layout
from stages.core.pipeline.errors import GpoError

MODEL_HELP = ("Model: a local folder, a Hugging Face id org/name[@revision] (from the local HF cache, offline), "
              "a PEFT adapter folder, a `gpo train` output folder or a .gguf file.")
# An optional namespace, a name, an optional @revision (a branch, tag or commit sha).
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w./-]+)?")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class ModelRef:
    given: str  # what the user typed: stored in settings, so lineage and with_policy see the same string
    kind: str  # folder, hub, train-output, adapter or gguf
    path: str  # the folder from_pretrained reads (the adapter's folder; the folder holding a .gguf file)
    gguf_file: str | None = None
    revision: str | None = None  # the hub commit the id resolved to
    base: ModelRef | None = None  # an adapter's base model

    def provenance(self) -> dict:
        """What the name resolved to, for manifests: a rerun on another cache state is visibly different."""
        out: dict = {"given": self.given, "kind": self.kind, "path": self.path}
        if self.gguf_file:
            out["gguf_file"] = self.gguf_file
        if self.revision:
            out["revision"] = self.revision
        if self.base is not None:
            out["base"] = self.base.provenance()
        return out


def resolve_model(given: str, _depth: int = 0) -> ModelRef:
    """What the user typed for --model -> a ModelRef; one `error:` line naming what was looked for."""
    given = str(given)
    path = Path(given).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GpoError(f"model {given} is a file but not a .gguf file (a model is a folder, a hub id or a .gguf)")
        return ModelRef(given, "gguf", str(path.resolve().parent), gguf_file=path.name)
    if path.is_dir():
        return _resolve_folder(given, path, _depth)
    if HUB_ID.fullmatch(given) and not given.startswith((".", "~")):
        return _resolve_hub(given, _depth)
    raise GpoError(f"model {given} does not exist: not a local folder or .gguf file, nor a Hugging Face id "
                   "(org/name[@revision])")


def _resolve_folder(given: str, path: Path, depth: int, revision: str | None = None,
                    kind: str = "folder") -> ModelRef:
    if (path / "config.json").exists() and not _is_train_output(path):
        return ModelRef(given, kind, str(path.resolve()), revision=revision)
    if (path / "adapter_config.json").exists():
        return _resolve_adapter(given, path, depth, revision)
    if _is_train_output(path):
        if (path / "model" / "config.json").exists():
            return ModelRef(given, "train-output", str((path / "model").resolve()))
        if (path / "adapter" / "adapter_config.json").exists():  # LoRA trained with --no-merge-lora
            return _resolve_adapter(given, path / "adapter", depth, None)
        raise GpoError(f"{given} is a `gpo train` output folder without model/ or adapter/ (has training finished?)")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:  # a folder shipping one GGUF file (e.g. a GGUF repo's snapshot)
        return ModelRef(given, "gguf", str(path.resolve()), gguf_file=ggufs[0].name, revision=revision)
    raise GpoError(f"{given} has no config.json: not a model folder (config.json), a PEFT adapter "
                   "(adapter_config.json), a `gpo train` output (model/) or a folder with one .gguf file")


def _is_train_output(path: Path) -> bool:
    """`gpo train --out DIR` writes DIR/config.json (its own settings, stage "train") and DIR/model."""
    try:
        config = json.loads(layout.config_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no config.json, or a broken one: preflight reports it as a model config
    return isinstance(config, dict) and config.get("stage") == "train"


def _resolve_adapter(given: str, path: Path, depth: int, revision: str | None) -> ModelRef:
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GpoError(f"cannot read {path / 'adapter_config.json'}: {e}") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise GpoError(f"{path / 'adapter_config.json'} names no base_model_name_or_path")
    if not any((path / f).exists() for f in ADAPTER_WEIGHTS):
        raise GpoError(f"PEFT adapter {given} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    if depth >= 3:
        raise GpoError(f"PEFT adapter {given}: adapters nested more than 3 deep")
    try:
        base_ref = resolve_model(base, depth + 1)
    except GpoError as e:
        raise GpoError(f"PEFT adapter {given}: its base model {base}: {str(e).removeprefix('error: ')}") from None
    return ModelRef(given, "adapter", str(path.resolve()), revision=revision, base=base_ref)


def hub_cache_dir() -> str:
    """HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default, read now (the library reads the
    variables once, at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _resolve_hub(given: str, depth: int) -> ModelRef:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    repo, _, revision = given.partition("@")
    cache = hub_cache_dir()
    try:  # huggingface_hub's own cache resolution: refs/<revision> -> snapshots/<commit>, no network
        folder = Path(snapshot_download(repo, revision=revision or None, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
        raise GpoError(f"model {given} is not a local folder and not in the local Hugging Face cache ({cache}); "
                       f"on a machine with network run `{fetch}`, then copy the cache here or set HF_HUB_CACHE"
                       ) from None
    except HFValidationError as e:
        raise GpoError(f"model {given}: not a valid Hugging Face id ({str(e).splitlines()[0]})") from None
    return _resolve_folder(given, folder, depth, revision=folder.name, kind="hub")


# ----------------------------------------------------------------------------- loading


def tokenizer_ref(ref: ModelRef) -> ModelRef:
    """An adapter saved without a tokenizer uses its base's."""
    while ref.kind == "adapter" and not any((Path(ref.path) / f).exists() for f in TOKENIZER_FILES):
        assert ref.base is not None  # resolve_model gives every adapter its base
        ref = ref.base
    return ref


def weights_ref(ref: ModelRef) -> ModelRef:
    """The plain model under any adapters (the one whose config and weights describe the architecture)."""
    while ref.kind == "adapter":
        assert ref.base is not None  # resolve_model gives every adapter its base
        ref = ref.base
    return ref


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    ref = tokenizer_ref(ref)
    if ref.kind == "gguf":
        return AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    return AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)


def load_config(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoConfig

    ref = weights_ref(ref)
    if ref.kind == "gguf":
        return AutoConfig.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    return AutoConfig.from_pretrained(ref.path, trust_remote_code=trust_remote_code)


def load_causal_lm(ref: ModelRef, dtype, trust_remote_code: bool = False):
    """The model, in memory: adapters merged into their base (PEFT merge_and_unload), GGUF dequantized."""
    from transformers import AutoModelForCausalLM

    if ref.kind == "adapter":
        from peft import PeftModel

        assert ref.base is not None
        base = load_causal_lm(ref.base, dtype, trust_remote_code)
        return PeftModel.from_pretrained(base, ref.path).merge_and_unload()
    if ref.kind == "gguf":
        return AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype, trust_remote_code=trust_remote_code)


def gpo_cache_dir() -> Path:
    if os.environ.get("GPO_CACHE_DIR"):
        return Path(os.environ["GPO_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gpo"


def plain_folder(ref: ModelRef, trust_remote_code: bool = False) -> str:
    """A folder of config, safetensors and tokenizer for what loads models by path (vLLM, TRL).

    Folders, hub snapshots and train outputs are used in place. An adapter (merged into its base) or a
    GGUF file (dequantized) is saved once under the gpo cache, keyed by what it was made from, and
    reused; the folder is written under a temp name and renamed, so a crash leaves no half model."""
    if ref.kind not in ("adapter", "gguf"):
        return ref.path
    out = gpo_cache_dir() / "models" / f"{Path(ref.given).name or 'model'}-{_fingerprint(ref)}"
    if (out / "config.json").exists():
        return str(out)
    import torch

    dtype = torch.float32 if ref.kind == "gguf" else "auto"  # GGUF: dequantized to fp32, as `gpo smollm2`
    model = load_causal_lm(ref, dtype, trust_remote_code)
    if ref.kind == "gguf":
        model = _unquantized_copy(model)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    load_tokenizer(ref, trust_remote_code).save_pretrained(tmp)
    try:
        tmp.replace(out)
    except OSError:  # another process finished the same folder first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _unquantized_copy(model):
    """A GGUF-loaded model refuses save_pretrained; the same weights in a model built from its plain config."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _fingerprint(ref: ModelRef) -> str:
    """What a materialized folder was made from: paths, hub commits, and each file's size and mtime."""
    def describe(r: ModelRef) -> dict:
        folder = Path(r.path)
        files = [folder / r.gguf_file] if r.gguf_file else sorted(p for p in folder.iterdir() if p.is_file())
        stats = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
        return {**r.provenance(), "path": str(folder.resolve()), "files": stats,
                "base": describe(r.base) if r.base is not None else None}
    return hashlib.blake2b(json.dumps(describe(ref), sort_keys=True).encode(), digest_size=8).hexdigest()
