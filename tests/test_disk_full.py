"""A full disk (a small tmpfs) fails the stage clearly and leaves the run consistent and resumable."""

import errno
import subprocess

import pytest

from stages import estimate, sample
from stages.core.pipeline import artifacts
from stages.core.pipeline.runner import run_stage
from stages.core.sources.problems import load_problems


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_cleanly_and_resumes(small_tmpfs, tmp_path, fake_generator):
    problems = load_problems("toy:arith?n=24&seed=0&split=train").table
    gen = fake_generator()
    settings = sample.SampleSettings(problems="toy", model="fake", n=4, max_new_tokens=64)
    run_stage(sample.STAGE, tmp_path / "ref", settings, input_table=problems, make_generator=lambda: gen)
    run_stage(estimate.STAGE, tmp_path / "ref", estimate.EstimateSettings(estimator="full", k=8),
              make_generator=lambda: gen, chunk_groups=2)

    run = small_tmpfs / "run"
    run_stage(sample.STAGE, run, settings, input_table=problems, make_generator=lambda: gen)
    with pytest.raises(OSError) as failure:
        run_stage(estimate.STAGE, run, estimate.EstimateSettings(estimator="full", k=8),
                  make_generator=lambda: gen, chunk_groups=2)
    assert failure.value.errno == errno.ENOSPC
    assert not list(run.rglob(".tmp-*")), "a temp file was left behind"
    for part in run.rglob("*.parquet"):
        artifacts.part_metadata(part)  # every visible part is whole
    assert not (run / "estimate" / "_SUCCESS").exists()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    run_stage(estimate.STAGE, run, estimate.EstimateSettings(estimator="full", k=8),
              make_generator=lambda: gen, chunk_groups=2)
    key = lambda r: (r["problem_id"], r["sample_idx"], r["step_idx"])  # noqa: E731
    assert sorted(artifacts.read_table(run, "estimate").to_pylist(), key=key) == \
        sorted(artifacts.read_table(tmp_path / "ref", "estimate").to_pylist(), key=key)
