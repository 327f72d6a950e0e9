"""Generation backends: token-id prompts in; token ids, text, finish reason (and log-probs) out.

One interface, used by sample, estimate, branch and eval:
    generator.generate(requests, sampling) -> one list of n Completions per Request
Implementations: HFGenerator (transformers, here), VLLMGenerator (stages/core/generation/vllm_backend.py) and
FakeGenerator (tests). Heavy packages are imported lazily so `gpo --help` needs neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stages.core.pipeline.errors import GpoError, UsageError
from stages.core.generation.base import (  # noqa: F401  (part of this module's interface: re-exported)
    Completion,
    Generator,
    Request,
    Sampling,
    eos_ids,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from stages.core.pipeline.hashing import stable_seed


def check_model_dir(model: str) -> Path:
    """A plain model folder (a resolved folder, hub snapshot or train output) has config and tokenizer."""
    path = Path(model)
    if not path.is_dir():
        raise GpoError(f"model folder {model} does not exist")
    if not (path / "config.json").exists():
        raise GpoError(f"{model} has no config.json: not a Hugging Face model folder")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise GpoError(f"{model} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return path


BACKENDS = ("auto", "hf", "vllm")
DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def check_runtime(backend: str, dtype: str, device: str) -> None:
    """--backend, --dtype and --device, checked before anything is loaded or written."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise GpoError(f"--device {device}: this machine has {count} CUDA device(s) visible to torch; "
                           "use --device cpu or auto")


def preflight_model(model: str, trust_remote_code: bool = False):
    """Load what is cheap to load (config, tokenizer, the weights' headers) so a broken model folder is
    refused before a stage folder is written. Returns (config, tokenizer)."""
    from stages.core.generation.models import load_config, resolve_model, weights_ref

    ref = resolve_model(model)  # what the user typed -> a folder, hub snapshot, adapter or .gguf
    base = weights_ref(ref)  # an adapter's architecture and weights are its base's
    if base.kind == "gguf":
        return _preflight_gguf(ref, base)
    path = check_model_dir(base.path)
    try:
        config = load_config(base, trust_remote_code=trust_remote_code)
    except GpoError:  # Preempted (SIGTERM) included: it must keep its exit code 143
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, JSON errors
        raise GpoError(f"cannot load {path / 'config.json'}: {_first_line(e)}") from None
    weights = sorted(p for pattern in WEIGHTS for p in path.glob(pattern))
    if not weights:
        raise GpoError(f"{base.given} has no weights (*.safetensors or pytorch_model*.bin)")
    if ref.kind == "adapter":
        weights += sorted(Path(ref.path).glob("adapter_model*.safetensors"))
    for file in weights:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="np") as f:
                    f.keys()
            except GpoError:
                raise
            except Exception as e:  # noqa: BLE001 - SafetensorError and OSError on a damaged file
                raise GpoError(f"{file} is not a readable safetensors file: {_first_line(e)}") from None
    try:
        tokenizer = load_tokenizer(model, trust_remote_code)
    except GpoError:
        raise
    except Exception as e:  # noqa: BLE001 - a stub tokenizer file fails in many ways
        raise GpoError(f"cannot load the tokenizer of {model}: {_first_line(e)}") from None
    return config, tokenizer


def context_length(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model: str, config, tokenizer, questions: list[tuple[str, str]], max_new_tokens: int | None) -> None:
    """Every question must fit the model's context window (a 2 MB line is refused here, not by an 800 GB
    allocation); a response budget that runs past the window is only warned about (RoPE models go on)."""
    import logging

    context = context_length(config)
    if context is None:
        return
    longest = 0
    for problem_id, question in questions:
        if len(question.encode()) < context:  # every token covers at least one byte: fits
            continue
        # A prefix is enough to know a huge line does not fit (and keeps a 2 MB line from taking seconds).
        head = question[:context * 32]
        tokens = len(tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"])
        if tokens < context and len(head) < len(question):
            tokens = len(tokenizer(question, add_special_tokens=False, verbose=False)["input_ids"])
        longest = max(longest, tokens)
        if tokens >= context:
            raise GpoError(f"problem {problem_id}: its question is {tokens} tokens, longer than {model}'s "
                           f"context of {context} tokens")
    if max_new_tokens is not None and longest + max_new_tokens > context:
        logging.getLogger("gpo").warning(
            f"warning: the longest question ({longest} tokens) plus --max-new-tokens {max_new_tokens} exceeds "
            f"{model}'s context of {context} tokens")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _preflight_gguf(ref, base):
    """A .gguf file: its header gives the config, its metadata the tokenizer (transformers' gguf_file=)."""
    from stages.core.generation.models import load_config

    try:
        config = load_config(base)
    except GpoError:
        raise
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/KeyError/struct errors on a bad file
        raise GpoError(f"cannot read {Path(base.path) / base.gguf_file} as a GGUF model: {_first_line(e)}") from None
    return config, load_tokenizer(ref.given)


@dataclass
class FakeGenerator:
    """A scripted generator for tests: respond(prompt_ids, seed) -> text, tokenized by the real tokenizer."""

    tokenizer: Any  # a transformers tokenizer
    respond: Callable[[tuple[int, ...], int], str]
    stats: dict = field(default_factory=dict)
    calls: int = 0

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        self.calls += 1
        out = []
        for req in requests:
            group = []
            for j in range(req.n):
                text = self.respond(req.prompt_ids, stable_seed(req.seed, j))
                ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                finish, limit = "stop", req.max_new_tokens or sampling.max_new_tokens
                if len(ids) > limit:
                    ids, finish = ids[:limit], "length"
                group.append(Completion(ids, self.tokenizer.decode(ids), finish))
                self.stats["generated_tokens"] = self.stats.get("generated_tokens", 0) + len(ids)
            self.stats["prompt_tokens"] = self.stats.get("prompt_tokens", 0) + len(req.prompt_ids)
            out.append(group)
        return out

    def describe(self) -> dict:
        return {"backend": "fake"}


def runnable_now(proc: Path = Path("/proc")) -> int:
    """Runnable tasks on the machine now (the 4th field of /proc/loadavg) less this process's own runnable
    threads other than the caller: 1 when nothing else runs, 1 if unknown. A stage run in the process of an
    earlier one (the demo) finds that stage's OpenMP workers still spinning for a few ms after its last op."""
    import os

    try:
        total = int((proc / "loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 1
    own = 0
    try:
        for tid in os.listdir(proc / "self" / "task"):
            try:
                stat = (proc / "self" / "task" / tid / "stat").read_text()
            except OSError:  # the thread ended while being read
                continue
            own += stat[stat.rindex(")") + 2] == "R"  # the state field follows the parenthesised name
    except OSError:
        own = 1
    return max(1, total - max(0, own - 1))


def default_threads(environ=None, cores: int | None = None, running: int | None = None,
                    probe=runnable_now, samples: int = 8, interval: float = 0.01) -> int:
    """Torch threads when --threads is not given: a Slurm job's --cpus-per-task; else the cores this process
    may use less the other processes runnable on them, at least 1. Threads beyond the free cores only spin
    against the other jobs: on 2 shared cores, torch's default of 2 threads beside one busy job generated 257
    tokens per CPU-second where 1 thread generated 1,050 (issue 19). The run queue is read `samples` times,
    `interval` s apart, and the fewest kept: a job that keeps a core busy is runnable in every read, a
    momentary task is not (single reads on an idle machine saw 2 once in 60). The demo's GPO branch, started
    in-process right after the estimate, once read its spinning OpenMP worker as a job and ran at 1 thread."""
    import os
    import time

    env = os.environ if environ is None else environ
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit() and int(env["SLURM_CPUS_PER_TASK"]) >= 1:
        return int(env["SLURM_CPUS_PER_TASK"])
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if running is None:
        reads = []
        for i in range(max(1, samples)):
            if i:
                time.sleep(interval)
            reads.append(probe())
        running = min(reads)
    return max(1, min(cores, cores - (running - 1)))


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads once, before a model loads; returns the count in force. Inter-op threads: 1,
    since eager inference runs one op at a time (more would only sit idle)."""
    import os

    import torch

    n = threads or default_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)  # for what this process starts (vLLM's CPU workers, checkers)
    # torch._C's own setter: vLLM's in-process CPU worker replaces `torch.set_num_threads` with a no-op for
    # the rest of the process, so a later transformers stage in that process would keep vLLM's count.
    torch._C.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # allowed once per process, before any inter-op work: a second stage in-process
        pass
    return torch.get_num_threads()


def make_generator(backend: str, model: str, *, dtype: str = "auto", device: str = "auto",
                   batch_size: int | None = None, trust_remote_code: bool = False, vllm_options: dict | None = None,
                   threads: int | None = None):
    """Build the generator a stage uses. `auto` takes vLLM where it can run, else transformers.
    `threads`: torch's CPU threads (default: `default_threads`), set here, before the model loads."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}' (choose auto, hf or vllm)")
    threads = set_threads(threads)
    from stages.core.generation.models import resolve_model

    resolve_model(model)  # refuses a name that resolves to nothing before any engine starts
    # The implementations are imported only when chosen: neither transformers nor vLLM loads for `gpo --help`.
    if backend == "auto":
        from stages.core.generation.vllm_backend import vllm_available

        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        from stages.core.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(model, dtype=dtype, trust_remote_code=trust_remote_code,
                             threads=threads, **(vllm_options or {}))
    from stages.core.generation.hf_backend import HFGenerator

    return HFGenerator(model, dtype=dtype, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)


# vLLM engine settings `--vllm KEY=VALUE` may set, with their types.
VLLM_KEYS: dict[str, Callable[[str], Any]] = {
    "tensor_parallel_size": int, "gpu_memory_utilization": float, "max_model_len": int, "max_num_seqs": int,
    "enforce_eager": lambda v: v.lower() in ("1", "true", "yes"), "seed": int}


def parse_vllm_options(items: list[str] | None) -> dict:
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in VLLM_KEYS:
            raise UsageError(f"--vllm {item!r}: expected KEY=VALUE with KEY one of {', '.join(VLLM_KEYS)}")
        try:
            options[key] = VLLM_KEYS[key](value)
        except ValueError:
            raise UsageError(f"--vllm {item!r}: bad value for {key}") from None
    return options


def generator_factory(backend: str, model: str, dtype: str, device: str, batch_size: int | None, trust: bool,
                      vllm: list[str] | None = None, threads: int | None = None) -> Callable[[], Generator]:
    """Check the runtime now (before any stage folder is written); the stage builds the generator when it
    first needs one. The thread count is fixed now, from the load at start."""
    check_runtime(backend, dtype, device)
    options = parse_vllm_options(vllm)
    threads = threads or default_threads()
    return lambda: make_generator(backend, model, dtype=dtype, device=device, batch_size=batch_size,
                                  trust_remote_code=trust, vllm_options=options, threads=threads)
