"""Helpers shared by tests (not fixtures: those live in conftest.py).

`stall_env`: a deterministic hook for fault tests. A `gpo` process started with this environment runs
unchanged (same entry point, same code) until it reaches a named point, writes its pid to a marker file and
waits there, so a test can signal it *at* that point instead of sleeping and hoping to land in a window.
The points are the run folder's durable writes (every one goes through os.replace: a temp file renamed into
place), named by the file they create, or the first import of a module (start-up). Installed as a
sitecustomize module on PYTHONPATH, so it also reaches processes that gpo or Slurm start.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

HOOK = '''\
"""Test-only hook (tests/helpers.py writes it): stall at GPO_TEST_STALL, see stall_env there."""
import fnmatch, os, sys, time

_spec, _marker = os.environ.get("GPO_TEST_STALL", ""), os.environ.get("GPO_TEST_STALL_MARKER", "")


def _stall(point):
    if os.path.exists(_marker):  # one stall per marker: a rerun (or a resubmitted Slurm task) runs through
        return
    with open(_marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {point}")
    os.replace(_marker + ".tmp", _marker)
    time.sleep(float(os.environ.get("GPO_TEST_STALL_S", "300")))  # the test's signal lands here
    sys.stderr.write(f"stall hook: no signal came at {point}\\n")
    os._exit(97)  # never carry on as if nothing was tested


if _spec.startswith("import:"):
    class _ImportStall:
        def find_spec(self, name, path=None, target=None):
            if name == _spec[len("import:"):]:
                sys.meta_path.remove(self)
                _stall(_spec)
            return None

    sys.meta_path.insert(0, _ImportStall())
elif _spec:
    _when, _nth, _pattern = _spec.split(":", 2)  # before|after : nth match : glob of the destination path
    _seen, _replace = [0], os.replace

    def _hooked_replace(src, dst, *args, **kwargs):
        hit = fnmatch.fnmatch(os.fspath(dst), _pattern)
        if hit:
            _seen[0] += 1
            hit = _seen[0] == int(_nth)
        if hit and _when == "before":
            _stall(f"before {dst}")
        _replace(src, dst, *args, **kwargs)
        if hit and _when == "after":
            _stall(f"after {dst}")

    os.replace = _hooked_replace
'''


def stall_env(tmp: Path, point: str, *, nth: int = 1, env: dict | None = None) -> tuple[dict, Path]:
    """The environment for a process that stalls at `point`, and the marker it writes when it gets there.

    point: "before:GLOB" / "after:GLOB" (the nth os.replace onto a path matching GLOB, e.g.
    "before:*/sample/shard-00000.chunk-00001.parquet"), or "import:MODULE" (its first import)."""
    hook_dir = Path(tempfile.mkdtemp(prefix="stall-hook-", dir=tmp))
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    marker = hook_dir / "reached"
    base = dict(os.environ if env is None else env)
    when, _, pattern = point.partition(":")
    spec = point if when == "import" else f"{when}:{nth}:{pattern}"
    return {**base, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook_dir), base.get("PYTHONPATH")])),
            "GPO_TEST_STALL": spec, "GPO_TEST_STALL_MARKER": str(marker)}, marker


def wait_for_stall(proc: subprocess.Popen, marker: Path, timeout: float = 600) -> str:
    """Wait until the process reaches its stall point; fail (and kill it) if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before reaching its stall point: "
                                 "nothing would be tested")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the process did not reach its stall point in {timeout}s")
        time.sleep(0.05)
    return marker.read_text().split(" ", 1)[1]
