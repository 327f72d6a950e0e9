"""The one stage runner: pick this shard's groups, skip finished chunks, run, validate, write atomically.

The layout of a run directory (config, chunks, shard manifests and locks, the success marker) is
stages/core/pipeline/layout.py's; docs/artifacts.md describes it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from stages.core.pipeline import artifacts, layout, lineage
from stages.core.pipeline.errors import GpoError, Preempted, UsageError
from stages.core.pipeline.progress import cpu_seconds
from stages.core.pipeline.settings import stored

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Stage:
    """A stage is a record: what it reads, what it writes, and one function from a chunk to tables."""

    name: str
    input: str | None  # upstream stage that must have finished; None reads a problem source
    outputs: dict[str, pa.Schema]  # first entry is the stage's own table, the rest live in subfolders
    key: tuple[str, ...]
    process: Callable[[pa.Table, "Context"], dict[str, pa.Table]]
    group_column: str = "problem_id"
    # Fills settings that default to an upstream stage's (the policy that sampled) so they are stored and hashed.
    resolve_settings: Callable[[Path, Any], Any] | None = None
    # default problems per chunk (--chunk-groups): one backend call, whose batch drains at its end, so chunks
    # of 64 problems fill a batch that chunks of 16 did not (bench/README.md); a resumed stage keeps its own
    chunk_groups: int = 64


@dataclass
class Context:
    """What a stage's process function may use besides its input chunk."""

    run: Path
    stage: Stage
    settings: Any
    shard: int
    num_shards: int
    stats: Counter = field(default_factory=Counter)
    make_generator: Callable[[], Any] | None = None
    progress: Any = None  # stages.core.pipeline.progress.ChunkProgress: what the generator reports to, per chunk
    _generator: Any = None
    _checkers: dict = field(default_factory=dict)
    load_seconds: tuple[float, float] = (0.0, 0.0)  # wall and CPU seconds spent loading the model
    backend_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0])  # this chunk's inside generate()

    def generator(self):
        if self._generator is None:
            if self.make_generator is None:
                raise GpoError(f"stage '{self.stage.name}' needs a model but none was given")
            from stages.core.pipeline.progress import quiet_library_bars

            quiet_library_bars()  # before the model loads: its weight-loading bar is one of them
            t0, c0 = time.time(), cpu_seconds()
            self._generator = self.make_generator()
            self.load_seconds = (time.time() - t0, cpu_seconds() - c0)
        from stages.core.pipeline.progress import ReportingGenerator

        return ReportingGenerator(self._generator, self)

    def checker(self, name: str):
        """One answer checker per kind for the whole shard (the math checker keeps a process pool).

        GPO_CHECK_TIMEOUT_S (default 5) bounds one math check, in CPU seconds of its worker; a check that
        runs over is judged wrong and counted (`check_timeouts` in the manifest's stats)."""
        if name not in self._checkers:
            from stages.core.scoring.answers import make_checker

            timeout_s = float(os.environ.get("GPO_CHECK_TIMEOUT_S", "5"))
            self._checkers[name] = make_checker(name, timeout_s=timeout_s)
        return self._checkers[name]

    def score(self, checker_names: list[str], responses: list[str], golds: list[str]) -> list:
        """Check each response with its row's checker, batching rows that share a checker."""
        verdicts: list = [None] * len(responses)
        for name in sorted(set(checker_names)):
            rows = [i for i, c in enumerate(checker_names) if c == name]
            for i, verdict in zip(rows, self.checker(name).check_many([responses[i] for i in rows],
                                                                       [golds[i] for i in rows])):
                verdicts[i] = verdict
        # Every stage that scores reports these in its manifest and summary line: a timeout is judged wrong.
        self.stats["answer_checks"] += len(verdicts)
        self.stats["check_timeouts"] += sum(v.error == "timeout" for v in verdicts)
        return verdicts

    def close(self) -> None:
        for checker in self._checkers.values():
            checker.close()
        self._checkers.clear()

    def read(self, table: str, groups: list[str] | None = None) -> pa.Table:
        """Read another finished table of this run, restricted to the given groups."""
        return artifacts.read_table(self.run, table, groups=groups, group_column=self.stage.group_column)


def config_hash(config: dict) -> str:
    return artifacts.sha256_bytes(json.dumps(config, sort_keys=True, default=str).encode())[:16]


def check_identity(config: dict, stage: str, path: Path) -> None:
    """A folder written by another stage or another schema version is refused, not misread."""
    if config.get("stage") != stage:
        raise GpoError(f"{path} belongs to stage {config.get('stage')!r}, not {stage!r}")
    if config.get("schema_version") != SCHEMA_VERSION:
        raise GpoError(f"{path} was written with schema version {config.get('schema_version')}; "
                       f"this gpo reads version {SCHEMA_VERSION}")


def resolve_config(stage: Stage, run: Path, settings: Any, num_shards: int, chunk_groups: int) -> dict:
    inputs = {}
    if stage.input is not None:
        path = layout.config_path(layout.stage_dir(run, stage.input))
        check_identity(artifacts.load_json(path), stage.input, path)
        inputs[stage.input] = lineage.identity(run, stage.input)
    body = {
        "stage": stage.name,
        "schema_version": SCHEMA_VERSION,
        "settings": stored(settings),
        "chunk_groups": chunk_groups,
        "inputs": inputs,  # lineage: what this stage was built on (see stages/core/pipeline/lineage.py)
    }
    return {**body, "config_hash": config_hash(body), "num_shards": num_shards}


def _changed_keys(old: dict, new: dict) -> list[str]:
    keys = set(old.get("settings", {})) | set(new["settings"])
    changed = [k for k in sorted(keys) if old.get("settings", {}).get(k) != new["settings"].get(k)]
    for k in ("chunk_groups", "inputs", "schema_version"):
        if old.get(k) != new.get(k):
            changed.append(k)
    return changed


def prepare_stage_dir(stage: Stage, run: Path, config: dict, overwrite: bool) -> Path:
    """Apply the rerun rules, then (re)write config.json. Returns the stage folder."""
    out = layout.stage_dir(run, stage.name)
    old_path = layout.config_path(out)
    if old_path.exists():
        old = artifacts.load_json(old_path)
        check_identity(old, stage.name, old_path)
        same = old.get("config_hash") == config["config_hash"]
        if same and old.get("num_shards") != config["num_shards"]:
            if not overwrite:
                raise GpoError(
                    f"{out} was started with {old.get('num_shards')} shards, not {config['num_shards']}; "
                    "use the same --shard count or --overwrite")
        elif not same and not overwrite and not artifacts.has_outputs(out):
            with all_shard_locks(out, "not replacing its settings"):  # a failed start left only config.json
                pass
        elif not same and not overwrite:
            changed = ", ".join(_changed_keys(old, config)) or "settings"
            raise GpoError(
                f"{out} was made with different settings (changed: {changed}); rerun with --overwrite to replace it")
        if overwrite and (not same or old.get("num_shards") != config["num_shards"]):
            with all_shard_locks(out):  # never delete what a running process is writing
                artifacts.remove_stage_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(old_path, config)
    return out


def shard_groups(groups: list[str], shard: int, num_shards: int) -> list[str]:
    return sorted(g for g in set(groups) if artifacts.shard_of(g, num_shards) == shard)


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Select and cast a stage's output to its declared schema; a missing column is a bug, said plainly."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise GpoError(f"{what}: output is missing columns {missing}")
    return table.select(schema.names).cast(schema)


@contextmanager
def sigterm_stops_work() -> Iterator[None]:
    """On SIGTERM (Slurm's warning before a kill) abort the current chunk; atomic writes leave no partial file."""
    def _handler(signum, frame):
        raise Preempted("received SIGTERM: stopped; finished chunks are kept, rerun the same command to continue")

    try:
        previous = signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not in the main thread (e.g. under a test runner thread): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(stage: Stage, run: Path, settings: Any, **options: Any) -> dict:
    """Run one shard of a stage to completion (or to the first error) and return its manifest: the settings
    resolved (`resolve_settings`), then `run_resolved` with the options (input_table, shard, make_generator...)."""
    return run_resolved(stage, run, resolve_settings(stage, run, settings), **options)


def resolve_settings(stage: Stage, run: Path, settings: Any) -> Any:
    """The settings the stage runs with, once its upstream stage is finished, fresh and intact: what the
    stage fills from upstream (estimate, branch: the policy that sampled) is filled here, and only here."""
    run = Path(run)
    if stage.input is not None:
        lineage.require_fresh(run, stage.input)
        artifacts.verify_stage(run, stage.input)
    return stage.resolve_settings(run, settings) if stage.resolve_settings is not None else settings


def run_resolved(stage: Stage, run: Path, settings: Any, *, input_table: pa.Table | None = None,
                 shard: tuple[int, int] = (0, 1), chunk_groups: int | None = None, overwrite: bool = False,
                 make_generator: Callable[[], Any] | None = None, log: Callable[[str], None] = lambda s: None,
                 after_chunk: Callable[[int], None] | None = None) -> dict:
    """`run_stage` with settings already resolved (a caller that needs them first, to load their model)."""
    index, num_shards = shard
    run = Path(run)
    if chunk_groups is None:  # not given: the chunking this stage was started with, else the stage's default
        old = layout.config_path(layout.stage_dir(run, stage.name))
        stored = artifacts.load_json(old).get("chunk_groups") if old.exists() and not overwrite else None
        chunk_groups = stored if isinstance(stored, int) and stored > 0 else stage.chunk_groups
    config = resolve_config(stage, run, settings, num_shards, chunk_groups)
    out = prepare_stage_dir(stage, run, config, overwrite)
    artifacts.remove_stale_temp_files(out)  # any kind, left by a writer on this host that was killed
    with shard_lock(out, index):
        artifacts.remove_temp_files(out, index)  # left by a writer of this shard that was killed
        done = finished_manifest(stage, out, config, index, log)
        if done is not None:
            artifacts.mark_success_if_complete(out, num_shards, config["config_hash"])
            return done
        return _run_shard(stage, run, out, settings, config, shard, chunk_groups, input_table,
                          make_generator, log, after_chunk)


@contextmanager
def all_shard_locks(out: Path, action: str = "overwrite it") -> Iterator[None]:
    """Every shard lock of a stage at once (for --overwrite); refused while any shard is being run."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for path in layout.lock_paths(out):
            stack.enter_context(shard_lock(out, int(path.stem), action=action))
        yield


@contextmanager
def shard_lock(out: Path, index: int, action: str = "not starting a second one") -> Iterator[None]:
    """One process per shard: a second one started by mistake says so and exits (the lock dies with its owner)."""
    import fcntl

    path = layout.lock_path(out, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise GpoError(f"shard {index} of {out} is being run by {owner}; {action}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield


def finished_manifest(stage: Stage, out: Path, config: dict, index: int, log) -> dict | None:
    """The shard's manifest if it is finished and its files are intact; damaged chunks are removed for redo."""
    path = layout.manifest_path(out, index)
    if not path.exists():
        return None
    manifest = artifacts.load_manifest(path, out)
    if manifest.get("config_hash") == config["config_hash"]:
        bad = artifacts.verify_files(out, manifest)
        if not bad:
            log(f"{stage.name} shard {index}/{manifest['num_shards']} already finished "
                f"({manifest['rows']} rows): nothing to do")
            return manifest
        log(f"{stage.name} shard {index}: {', '.join(bad)} do not match the manifest; redoing those chunks")
        for name in {Path(b).name for b in bad}:  # a chunk is redone whole: drop it from every table
            for folder in [out, *(out / t for t in stage.outputs if t != stage.name)]:
                (folder / name).unlink(missing_ok=True)
    layout.success_path(out).unlink(missing_ok=True)
    path.unlink()
    return None


def _run_shard(stage: Stage, run: Path, out: Path, settings: Any, config: dict, shard: tuple[int, int],
               chunk_groups: int, input_table: pa.Table | None, make_generator, log, after_chunk) -> dict:
    index, num_shards = shard
    manifest_path = layout.manifest_path(out, index)
    if input_table is None:
        assert stage.input is not None  # a stage without one (sample, eval) is handed its problems
        input_table = artifacts.read_table(run, stage.input)
    groups = shard_groups(input_table.column(stage.group_column).to_pylist(), index, num_shards)
    chunks = [groups[k:k + chunk_groups] for k in range(0, len(groups), chunk_groups)]
    meta = {"stage": stage.name, "schema_version": str(SCHEMA_VERSION), "config_hash": config["config_hash"]}
    from stages.core.pipeline.progress import ChunkProgress

    ctx = Context(run, stage, settings, index, num_shards, make_generator=make_generator,
                  progress=ChunkProgress(stage.name))
    started, cpu_started = time.time(), cpu_seconds()
    try:
        with sigterm_stops_work():
            for k, chunk in enumerate(chunks):
                rows = artifacts.filter_groups(input_table, stage.group_column, chunk)
                _run_chunk(stage, out, ctx, rows, k, len(chunks), meta, log)
                if after_chunk is not None:
                    after_chunk(k)
    finally:
        ctx.close()
    manifest = build_manifest(stage, out, config, index, num_shards, len(chunks), started, ctx)
    manifest["cpu_seconds"] = round(cpu_seconds() - cpu_started, 3)
    artifacts.write_json_atomic(manifest_path, manifest)
    artifacts.mark_success_if_complete(out, num_shards, config["config_hash"])
    return manifest


def _run_chunk(stage: Stage, out: Path, ctx: Context, rows: pa.Table, k: int, num_chunks: int,
               meta: dict, log: Callable[[str], None]) -> None:
    primary = out / layout.chunk_name(ctx.shard, k)
    parts = [primary, *(out / name / primary.name for name in stage.outputs if name != stage.name)]
    if all([artifacts.valid_part(p, meta["config_hash"]) for p in parts]):  # list: check (and clean) every part
        return
    t0, c0, loaded = time.time(), cpu_seconds(), ctx._generator is not None
    ctx.stats, ctx.backend_seconds = Counter(), [0.0, 0.0]
    with ctx.progress.chunk(k, num_chunks) if ctx.progress is not None else nullcontext():
        tables = stage.process(rows, ctx)
    # the chunk's own work: a model loaded on its first use inside it is not (model_load_seconds has it)
    load = ctx.load_seconds if ctx._generator is not None and not loaded else (0.0, 0.0)
    wall, cpu = time.time() - t0 - load[0], cpu_seconds() - c0 - load[1]
    backend_wall, backend_cpu = ctx.backend_seconds
    chunk_meta = {**meta, "seconds": f"{wall:.3f}", "cpu_seconds": f"{cpu:.3f}", "stats": json.dumps(dict(ctx.stats)),
                  "backend_seconds": f"{backend_wall:.3f}", "backend_cpu_seconds": f"{backend_cpu:.3f}"}
    # Secondary tables first, the primary last: the primary's presence marks the chunk done.
    for name, schema in reversed(list(stage.outputs.items())):
        path = primary if name == stage.name else out / name / layout.chunk_name(ctx.shard, k)
        table = conform(tables[name], schema, f"{stage.name}/{name}")
        artifacts.write_parquet_atomic(table, path, chunk_meta)
    log(f"{stage.name} shard {ctx.shard}/{ctx.num_shards} chunk {k + 1}/{num_chunks}: "
        f"{len(tables[stage.name])} rows in {time.time() - t0:.1f}s")


def build_manifest(stage: Stage, out: Path, config: dict, index: int, num_shards: int,
                   num_chunks: int, started: float, ctx: Context) -> dict:
    files, rows, seconds, cpu = [], 0, 0.0, 0.0
    backend = [0.0, 0.0]
    stats: Counter[str] = Counter()
    for name in stage.outputs:
        folder = out if name == stage.name else out / name
        for k in range(num_chunks):
            path = folder / layout.chunk_name(index, k)
            info = artifacts.part_info(path)
            files.append({"table": name, "path": str(path.relative_to(out)), **info})
            if name == stage.name:
                rows += info["rows"]
                kv = artifacts.part_metadata(path)
                stats.update(json.loads(kv.get("stats", "{}")))
                seconds += float(kv.get("seconds", 0))
                cpu += float(kv.get("cpu_seconds", 0))
                backend[0] += float(kv.get("backend_seconds", 0))
                backend[1] += float(kv.get("backend_cpu_seconds", 0))
    generator = ctx._generator
    return {
        "stage": stage.name, "shard": index, "num_shards": num_shards,
        "config_hash": config["config_hash"], "rows": rows, "chunks": num_chunks,
        "files": files, "stats": dict(stats), "chunk_seconds": round(seconds, 3),
        "chunk_cpu_seconds": round(cpu, 3),  # the chunks' work, without start-up and model load
        "model_load_seconds": round(ctx.load_seconds[0], 3),  # this process's, if it loaded one
        # of the chunks' time, what the generation backend took: the rest is the stage's own work
        "backend_seconds": round(backend[0], 3), "backend_cpu_seconds": round(backend[1], 3),
        # every generating stage's tokens under one key (branch counts them per data tag in stats)
        "generated_tokens": sum(v for k, v in stats.items() if k.endswith("generated_tokens")),
        "wall_seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
        "slurm": {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
                  if k in os.environ},
        "backend": getattr(generator, "describe", lambda: None)() if generator is not None else None,
        "versions": artifacts.package_versions(),
    }


def parse_shard(spec: str | None, environ: dict | None = None) -> tuple[int, int]:
    """'i/N', else the Slurm array variables, else 0/1. Invalid values are refused in one line."""
    env = os.environ if environ is None else environ
    if spec is None and "SLURM_ARRAY_TASK_ID" in env:
        count = env.get("SLURM_ARRAY_TASK_COUNT")
        if count is None:
            raise UsageError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard i/N")
        spec = f"{env['SLURM_ARRAY_TASK_ID']}/{count}"
    if spec is None:
        return 0, 1
    parts = spec.split("/")
    try:
        index, total = int(parts[0]), int(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise UsageError(f"invalid shard '{spec}': expected i/N, e.g. 0/4") from None
    if total < 1 or not 0 <= index < total:
        raise UsageError(f"invalid shard '{spec}': need N >= 1 and 0 <= i < N")
    return index, total
