"""The files of a run folder, spelled once (docs/artifacts.md describes them; nothing else names them):

    RUN/<stage>/                                     stage_dir(run, stage)
    RUN/<stage>/config.json                          config_path(out): resolved settings and their hash
    RUN/<stage>/shard-00003.chunk-00007.parquet      chunk_name(3, 7): the stage's primary table
    RUN/<stage>/<table>/shard-00003.chunk-00007.parquet  its other tables (e.g. estimate/rollouts)
    RUN/<stage>/_shards/00003.json                   manifest_path(out, 3): shard manifest, written last
    RUN/<stage>/_shards/00003.lock                   lock_path(out, 3): held while shard 3 runs
    RUN/<stage>/_SUCCESS                             success_path(out): all shards done
    RUN/<stage>/_logs/                               logs_dir(out): Slurm job logs
    RUN/<folder>/summary.json                        summary_path(out): eval, probe, diagnose, train summaries
    DEMO/timings.json                                timings_path(root): the demo's cost of each command so far
    .../.tmp-<name>.<pid>@<host>                     temp_path(path): an atomic write in progress

`gpo train`'s output folder shares config_path and success_path (its own files are listed in stages/train).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

CONFIG = "config.json"
SUCCESS = "_SUCCESS"
SHARDS = "_shards"
LOGS = "_logs"
SUMMARY = "summary.json"
TIMINGS = "timings.json"
TEMP_PREFIX = ".tmp-"

MANIFEST_GLOB = "[0-9]" * 5 + ".json"  # _shards/00003.json; a file named otherwise is not a manifest
LOCK_GLOB = "*.lock"  # _shards/00003.lock
_CHUNK = re.compile(r"shard-(\d{5})\.chunk-\d{5}\.parquet")
_TEMP = re.compile(r"\.tmp-.+\.(\d+)(?:@([^/]*))?")


def stage_dir(run: Path, stage: str) -> Path:
    return Path(run) / stage


def config_path(out: Path) -> Path:
    return Path(out) / CONFIG


def success_path(out: Path) -> Path:
    return Path(out) / SUCCESS


def summary_path(out: Path) -> Path:
    return Path(out) / SUMMARY


def timings_path(root: Path) -> Path:
    return Path(root) / TIMINGS


def logs_dir(out: Path) -> Path:
    return Path(out) / LOGS


def shards_dir(out: Path) -> Path:
    return Path(out) / SHARDS


def manifest_path(out: Path, shard: int) -> Path:
    return shards_dir(out) / f"{shard:05d}.json"


def lock_path(out: Path, shard: int) -> Path:
    return shards_dir(out) / f"{shard:05d}.lock"


def manifest_paths(out: Path) -> list[Path]:
    """Every file named as a shard manifest, in shard order (whether finished under the current config or not)."""
    return sorted(shards_dir(out).glob(MANIFEST_GLOB))


def lock_paths(out: Path) -> list[Path]:
    return sorted(shards_dir(out).glob(LOCK_GLOB))


def has_manifest_files(out: Path) -> bool:
    """Any JSON file in _shards (named as a manifest or not)."""
    return any(shards_dir(out).glob("*.json"))


def chunk_name(shard: int, chunk: int) -> str:
    return f"shard-{shard:05d}.chunk-{chunk:05d}.parquet"


def chunk_shard(name: str) -> int | None:
    """The shard a part's file name belongs to; None for a name the runner does not write."""
    m = _CHUNK.fullmatch(name)
    return int(m.group(1)) if m else None


def temp_path(path: Path) -> Path:
    """Dot-prefixed and not ending in .parquet: globs over a stage folder never see it. The writer's pid and
    host are in the name so a later run can tell a dead writer's leftovers (artifacts.remove_stale_temp_files)."""
    return path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}@{socket.gethostname()}"


def temp_writer(name: str) -> tuple[int, str | None] | None:
    """(pid, host or None) of the writer a temp file name records; None for a name temp_path does not make."""
    m = _TEMP.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None


def shard_temp_globs(shard: int) -> tuple[str, str]:
    """Glob patterns of the temp files a writer of this shard makes (its chunks, its manifest)."""
    return f"{TEMP_PREFIX}shard-{shard:05d}.*", f"{TEMP_PREFIX}{shard:05d}.json.*"
