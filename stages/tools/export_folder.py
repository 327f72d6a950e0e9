"""Where `gpo export` writes: refused into a non-empty folder unless --overwrite, and then replaced whole.

An export is built in a temp folder beside `--out` and moved into place last, so a failed export leaves
nothing half-written and a replaced one leaves no stale table of the previous export mixed in. The folder
gets a `.gpo-export.json` record (what was exported, with which rules): --overwrite deletes only a folder
that holds one, never a folder of someone else's files (`--out ~ --overwrite` is refused). The record's
name starts with a dot, so `datasets.load_dataset(folder)` does not read it as data.

LLaMA-Factory's data folder is shared by many datasets: there gpo refuses to replace its own two files
unless --overwrite, and never touches the others (their dataset_info.json entries are kept).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError

RECORD = ".gpo-export.json"


def llamafactory_names(data: str) -> list[str]:
    stem = f"gpo_{data.replace('-', '_')}"
    return [f"{stem}_pairwise", f"{stem}_kto"]


def check_target(out: Path, fmt: str, data: str, overwrite: bool) -> None:
    """Refuse, before anything is read or written, an --out that holds something this export would replace."""
    if out.exists() and not out.is_dir():
        raise GpoError(f"--out {out} is a file, not a folder")
    if fmt == "llamafactory":
        existing = [out / f"{name}.json" for name in llamafactory_names(data) if (out / f"{name}.json").exists()]
        if existing and not overwrite:
            raise GpoError(f"{existing[0]} exists (an earlier export): add --overwrite to replace gpo's files "
                           f"there (the other datasets in {out} are kept)")
        return
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise GpoError(f"--out {out} is not empty: add --overwrite to replace the earlier export there, "
                       "or choose an empty folder")
    if not (out / RECORD).is_file():
        raise GpoError(f"--out {out} is not empty and holds no {RECORD} (it is not an earlier gpo export): "
                       "nothing replaced; choose an empty folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(out: Path) -> None:
    """Temp folders of an export that was killed (SIGKILL, power loss) before it moved its folder in."""
    for prefix in (f".tmp-{out.name}.", f".old-{out.name}."):
        for path in out.parent.glob(f"{prefix}*"):
            pid = path.name[len(prefix):]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged(out: Path, record: dict) -> Iterator[Path]:
    """Yield a temp folder to write the export into; on success write the record and swap it in for --out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = out.parent / f".tmp-{out.name}.{os.getpid()}"
    old = out.parent / f".old-{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        artifacts.write_json_atomic(tmp / RECORD, record)
        replacing = out.exists()  # checked by check_target: empty, or an earlier export
        if replacing:
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if replacing:
                old.rename(out)  # the earlier export stays as it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
