"""tests/helpers.py's stall hook, on a plain Python process: it stops exactly at the named point, and a
process that never gets there fails the test instead of letting it pass untested."""

import signal
import subprocess
import sys

import pytest

from tests.helpers import stall_env, wait_for_stall

WRITES = """
import os, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("a", "b", "c"):
    (out / (".tmp-" + name)).write_text(name)
    os.replace(out / (".tmp-" + name), out / name)
import colorsys
print("done")
"""


def start(env, tmp_path):
    return subprocess.Popen([sys.executable, "-c", WRITES, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("point, nth, renamed", [("before:*/[abc]", 2, ["a"]), ("after:*/[abc]", 2, ["a", "b"]),
                                                  ("before:*/c", 1, ["a", "b"]),
                                                  ("import:colorsys", 1, ["a", "b", "c"])])
def test_the_process_waits_at_the_named_point_until_signalled(tmp_path, point, nth, renamed):
    env, marker = stall_env(tmp_path, point, nth=nth)
    proc = start(env, tmp_path)
    where = wait_for_stall(proc, marker, timeout=60)
    assert proc.poll() is None  # still there, waiting
    assert sorted(p.name for p in tmp_path.glob("[abc]")) == renamed, where
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_a_point_never_reached_fails_the_wait(tmp_path):
    env, marker = stall_env(tmp_path, "before:*/d")
    proc = start(env, tmp_path)
    with pytest.raises(AssertionError, match="exited .* before reaching its stall point"):
        wait_for_stall(proc, marker, timeout=60)
    assert proc.returncode == 0 and sorted(p.name for p in tmp_path.glob("[abcd]")) == ["a", "b", "c"]


def test_no_signal_means_exit_97_not_carrying_on(tmp_path):
    env, marker = stall_env(tmp_path, "before:*/b")
    proc = start({**env, "GPO_TEST_STALL_S": "0.2"}, tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 97 and "no signal came" in stderr and marker.exists()
    assert not (tmp_path / "b").exists()
