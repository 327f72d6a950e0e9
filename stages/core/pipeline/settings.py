"""Settings fields that carry their own help, and the runtime options every stage shares.

A stage's settings dataclass is the one source of truth for each option: the field declares the default and
the help text (`setting(...)`), its `__post_init__` validates, and the command line is derived from it
(gpo_cli/adapter.py), the way TRL derives its CLI flags from its config dataclasses. A library caller of
`run_stage` therefore gets the same defaults and the same checks as a user of `gpo`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass

from stages.core.pipeline.errors import GpoError


def setting(default=MISSING, help: str = "", *, flag: str | None = None, omit_default: bool = False):
    """A dataclass field with its help text (and, rarely, a flag name other than --field-name).

    `omit_default`: left out of the stored settings (config.json and its hash) while at its default, for a
    field added after runs were made: those runs keep their hash, so they still count as finished."""
    metadata = {"help": help, **({"flag": flag} if flag else {}), **({"omit_default": True} if omit_default else {})}
    return dataclasses.field(metadata=metadata) if default is MISSING else dataclasses.field(default=default,
                                                                                             metadata=metadata)


def stored(settings) -> dict:
    """The settings as a stage stores and hashes them (config.json): every field, except an `omit_default`
    field at its default."""
    values = dataclasses.asdict(settings)
    for f in dataclasses.fields(settings):
        if f.metadata.get("omit_default") and values[f.name] == f.default:
            del values[f.name]
    return values


def require(settings, *names: str) -> None:
    """Fields without a default are typed `X | None = None` so a config file can supply them; check here."""
    missing = [n for n in names if getattr(settings, n) is None]
    if missing:
        flags = ", ".join(f"'--{n.replace('_', '-')}'" for n in missing)
        raise GpoError(f"missing option {flags} (give it as a flag or in --config)")


@dataclass(frozen=True)
class Runtime:
    """How a stage runs, not what it computes: none of this is part of the stage's stored settings.
    (--backend, --dtype and --device are checked with the runtime itself, by backends.check_runtime.)"""

    dtype: str = setting("auto", "auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ... (transformers backend).")
    batch_size: int | None = setting(None, "Sequences decoded at once (transformers backend; default: 128 on CPU, "
                                           "64 on a GPU).")
    threads: int | None = setting(None, "CPU threads for torch in this process, set before the model loads "
                                        "(default: $SLURM_CPUS_PER_TASK in a Slurm job, else the cores this "
                                        "process may use less the other processes running on them, at least 1).")
    trust_remote_code: bool = setting(False, "Allow model folders to run their own Python code (off by default).")
    vllm: list[str] | None = setting(None, "vLLM engine setting KEY=VALUE (repeatable): tensor_parallel_size, "
                                           "gpu_memory_utilization, max_model_len, max_num_seqs, enforce_eager, seed.")
    shard: str | None = setting(None, "This job's shard as i/N; defaults to SLURM_ARRAY_TASK_ID/"
                                      "SLURM_ARRAY_TASK_COUNT, else 0/1.")
    chunk_groups: int | None = setting(None, "Problems per chunk: the unit of work that a crash can lose "
                                             "and one backend call (default: the stage's, 64; eval 128; a "
                                             "resumed stage keeps its own).")
    overwrite: bool = setting(False, "Replace this stage's outputs when settings changed (otherwise refused).")
    quiet: bool = setting(False, "No progress output (bars, periodic lines, the libraries' bars), as "
                                 "GPO_PROGRESS_EVERY=off; summaries and warnings still print.")

    def __post_init__(self):
        if self.batch_size is not None and self.batch_size < 1:
            raise GpoError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise GpoError(f"--threads must be at least 1, not {self.threads}")
        if self.chunk_groups is not None and self.chunk_groups < 1:
            raise GpoError(f"--chunk-groups must be at least 1, not {self.chunk_groups}")


GENERATING = ("dtype", "device", "batch_size", "threads", "trust_remote_code", "vllm", "shard", "chunk_groups",
              "overwrite", "quiet")
NON_GENERATING = ("shard", "chunk_groups", "overwrite", "quiet")
