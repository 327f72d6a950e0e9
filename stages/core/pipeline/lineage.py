"""What a stage was built on: the identity of each finished stage, and whether a stage has gone stale.

A stage's config.json records `inputs`: the identity of the stage it read, taken when it started. An
identity hashes a stage's config hash (which holds its own inputs, so identities chain back to `sample`)
with the sha256 of every part its manifests list. A stage whose recorded input no longer matches, or
whose input is itself stale, is stale: the next stage refuses it instead of silently reusing it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError

log = logging.getLogger("gpo")


def identity(run: Path, stage: str) -> str | None:
    """The identity of a finished stage; None while it is unfinished (or not a runner stage)."""
    out = layout.stage_dir(run, stage)
    config = artifacts.runner_config(out) if out.is_dir() else None
    if config is None or not layout.success_path(out).exists():
        return None
    manifests = artifacts.finished_manifests(out, config)
    if len(manifests) != int(config["num_shards"]):
        return None
    digests = sorted(f["sha256"] for m in manifests.values() for f in m.get("files", []))
    return artifacts.sha256_bytes(json.dumps([config["config_hash"], digests]).encode())[:16]


def stale_reason(run: Path, stage: str) -> tuple[str, str] | None:
    """(the earliest stage to redo, why) when `stage` or anything it was built on changed after it ran.

    Why is "unfinished" when that stage was started again (e.g. with --overwrite) and has not finished."""
    config = artifacts.runner_config(layout.stage_dir(run, stage))
    if config is None:
        return None
    for upstream, recorded in (config.get("inputs") or {}).items():
        if not layout.success_path(layout.stage_dir(run, upstream)).exists():
            return upstream, "unfinished"
        deeper = stale_reason(run, upstream)
        if deeper is not None:
            return deeper
        if identity(run, upstream) != recorded:
            return stage, f"{upstream} changed after {stage} ran"
    return None


def describe(run: Path, found: tuple[str, str]) -> str:
    """What stale_reason found, and the command that clears it."""
    name, why = found
    if why == "unfinished":
        return (f"stage '{name}' was started again and has not finished: finish it with "
                f"`gpo {name} --run {run}` (same options), then the stages after it")
    return (f"stage '{name}' is stale ({why}): redo it with `gpo {name} --run {run} --overwrite` "
            f"(and its other options), then the stages after it")


def require_fresh(run: Path, stage: str) -> None:
    """Refuse to read a stage that has not finished or that was built on something that has since changed."""
    artifacts.require_success(run, stage)
    found = stale_reason(run, stage)
    if found is not None:
        raise GpoError(describe(run, found))


def warn_stale(run: Path) -> None:
    """One warning line per stale stage of the run, for readers that answer anyway (`gpo sql`, `gpo show`);
    the stages after a stale one are stale for the same reason and are not named again."""
    run = Path(run)
    if not run.is_dir():
        return
    seen = set()
    for out in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        try:
            found = stale_reason(run, out.name)
        except GpoError:  # a damaged manifest: the reader names it when it reads that table
            continue
        if found is not None and found not in seen:
            seen.add(found)
            log.warning(f"warning: {describe(run, found)}; this answer reads it as it is")
