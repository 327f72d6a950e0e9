"""The stage runner: sharding, chunked atomic writes, resume after a crash, rerun rules."""

from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core.pipeline import artifacts
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.query import array_spec, run_query, stage_status
from stages.core.pipeline.runner import Stage, parse_shard, run_stage, shard_groups

SCHEMA = pa.schema([("problem_id", pa.string()), ("value", pa.int64())])
EXTRA = pa.schema([("problem_id", pa.string()), ("twice", pa.int64())])


@dataclass(frozen=True)
class Settings:
    factor: int = 1


def problems(n: int) -> pa.Table:
    return pa.table({"problem_id": [f"p{i:03d}" for i in range(n)], "x": list(range(n))})


def make_stage(calls: list, fail_on_call: int | None = None) -> Stage:
    def process(rows: pa.Table, ctx) -> dict:
        calls.append(rows.column("problem_id").to_pylist())
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise RuntimeError("injected crash")
        ctx.stats["seen"] += len(rows)
        values = [x * ctx.settings.factor for x in rows.column("x").to_pylist()]
        ids = rows.column("problem_id").to_pylist()
        return {"toy": pa.table({"problem_id": ids, "value": values}),
                "extra": pa.table({"problem_id": ids, "twice": [2 * v for v in values]})}

    return Stage(name="toy", input=None, outputs={"toy": SCHEMA, "extra": EXTRA}, key=("problem_id",),
                 process=process)


def read(run, table="toy"):
    return sorted(artifacts.read_table(run, table).to_pylist(), key=lambda r: r["problem_id"])


def test_shards_are_disjoint_and_complete():
    groups = [f"g{i}" for i in range(200)]
    for n in (1, 3, 7):
        parts = [shard_groups(groups, i, n) for i in range(n)]
        assert sorted(sum(parts, [])) == sorted(groups)
        assert sum(len(p) for p in parts) == len(set(groups))
        if n > 1:
            assert all(len(p) > 0 for p in parts)


def test_shard_of_is_stable_across_processes():
    # blake2b, not the salted hash(): a known value pins it.
    assert artifacts.shard_of("problem-1", 1000) == artifacts.shard_of("problem-1", 1000)
    assert [artifacts.shard_of(f"x{i}", 7) for i in range(5)] == [
        artifacts.shard_of(f"x{i}", 7) for i in range(5)]


def test_crash_after_a_chunk_then_rerun_gives_identical_rows(tmp_path):
    reference = tmp_path / "ref"
    run_stage(make_stage([]), reference, Settings(), input_table=problems(50), chunk_groups=8)

    crashed = tmp_path / "crashed"
    calls: list = []
    with pytest.raises(RuntimeError):
        run_stage(make_stage(calls, fail_on_call=4), crashed, Settings(), input_table=problems(50), chunk_groups=8)
    parts = sorted(p.name for p in (crashed / "toy").glob("*.parquet"))
    assert parts == [f"shard-00000.chunk-{k:05d}.parquet" for k in range(3)]
    assert not list((crashed / "toy").glob(".tmp*")) and not (crashed / "toy" / "_SUCCESS").exists()

    calls2: list = []
    run_stage(make_stage(calls2), crashed, Settings(), input_table=problems(50), chunk_groups=8)
    assert len(calls2) == 7 - 3  # only unfinished chunks are redone
    assert read(crashed) == read(reference)
    assert read(crashed, "extra") == read(reference, "extra")
    assert (crashed / "toy" / "_SUCCESS").exists()


def test_finished_shard_is_skipped_without_calling_process(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(10))

    def explode(rows, ctx):
        raise AssertionError("must not run")

    stage = Stage("toy", None, {"toy": SCHEMA, "extra": EXTRA}, ("problem_id",), explode)
    manifest = run_stage(stage, tmp_path, Settings(), input_table=problems(10))
    assert manifest["rows"] == 10


def test_config_change_is_refused_unless_overwrite(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(1), input_table=problems(5))
    with pytest.raises(GpoError, match="changed: factor"):
        run_stage(make_stage([]), tmp_path, Settings(3), input_table=problems(5))
    run_stage(make_stage([]), tmp_path, Settings(3), input_table=problems(5), overwrite=True)
    assert [r["value"] for r in read(tmp_path)] == [3 * i for i in range(5)]


def test_different_shard_count_is_refused(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(5), shard=(0, 2))
    with pytest.raises(GpoError, match="shards"):
        run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(5), shard=(0, 3))


def test_sharded_run_matches_unsharded_and_marks_success_last(tmp_path):
    run_stage(make_stage([]), tmp_path / "one", Settings(), input_table=problems(40))
    for i in range(3):
        assert not (tmp_path / "three" / "toy" / "_SUCCESS").exists()
        run_stage(make_stage([]), tmp_path / "three", Settings(), input_table=problems(40), shard=(i, 3))
    assert (tmp_path / "three" / "toy" / "_SUCCESS").exists()
    assert read(tmp_path / "three") == read(tmp_path / "one")
    status = stage_status(tmp_path / "three")
    assert status[0]["done"] == 3 and status[0]["rows"] == 40 and status[0]["unfinished"] == []


def test_downstream_stage_refuses_before_upstream_success(tmp_path):
    stage = Stage("down", "toy", {"down": SCHEMA}, ("problem_id",), lambda rows, ctx: {})
    with pytest.raises(GpoError, match="has not finished"):
        run_stage(stage, tmp_path, Settings())


def test_parts_carry_metadata_and_manifest_records_files(tmp_path):
    manifest = run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(20), chunk_groups=8)
    part = tmp_path / "toy" / "shard-00000.chunk-00000.parquet"
    kv = pq.read_metadata(part).metadata
    assert kv[b"gpo.stage"] == b"toy" and kv[b"gpo.config_hash"] == manifest["config_hash"].encode()
    assert manifest["stats"] == {"seen": 20}
    assert {f["path"] for f in manifest["files"]} >= {part.name, f"extra/{part.name}"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    query = f"select decode(value) from parquet_kv_metadata('{part}') where decode(key) = 'gpo.stage'"
    assert duckdb.sql(query).fetchall() == [("toy",)]  # from DuckDB itself (gpo sql reads no files but views)


def test_truncated_part_is_detected_and_redone(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(20), chunk_groups=8)
    part = tmp_path / "toy" / "shard-00000.chunk-00001.parquet"
    part.write_bytes(part.read_bytes()[:100])
    (tmp_path / "toy" / "_shards" / "00000.json").unlink()
    calls: list = []
    run_stage(make_stage(calls), tmp_path, Settings(), input_table=problems(20), chunk_groups=8)
    assert len(calls) == 1 and len(read(tmp_path)) == 20


def test_sql_is_read_only(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(5))
    assert run_query(tmp_path, "select count(*) from toy join extra using (problem_id)")[1] == [(5,)]
    for bad in ("copy toy to 'x.csv'", "create table t as select 1", "drop view toy"):
        with pytest.raises(GpoError, match="read-only"):
            run_query(tmp_path, bad)


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "0/0", "a/b", "1", "1/2/3"])
def test_invalid_shards_are_refused(spec):
    with pytest.raises(GpoError, match="invalid shard"):
        parse_shard(spec, environ={})


def test_shard_defaults_to_slurm_array_variables():
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5"}) == (2, 5)
    assert parse_shard(None, {}) == (0, 1)
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_finished_shard_with_a_modified_part_is_redone(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(20), chunk_groups=8)
    reference = read(tmp_path)
    part = tmp_path / "toy" / "extra" / "shard-00000.chunk-00002.parquet"
    part.write_bytes(part.read_bytes()[:-30] + b"x" * 30)  # same size, different bytes
    calls: list = []
    run_stage(make_stage(calls), tmp_path, Settings(), input_table=problems(20), chunk_groups=8)
    assert len(calls) == 1 and read(tmp_path) == reference
    assert read(tmp_path, "extra") == [{"problem_id": r["problem_id"], "twice": 2 * r["value"]} for r in reference]


def test_downstream_refuses_a_corrupted_input(tmp_path):
    run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(5))
    part = tmp_path / "toy" / "shard-00000.chunk-00000.parquet"
    part.write_bytes(part.read_bytes() + b"junk")
    down = Stage("down", "toy", {"down": SCHEMA}, ("problem_id",), lambda rows, ctx: {"down": rows})
    with pytest.raises(GpoError, match="does not match its manifest"):
        run_stage(down, tmp_path, Settings())


def test_second_process_on_the_same_shard_is_refused(tmp_path):
    import subprocess
    import sys
    import time

    from stages.core.pipeline.runner import shard_lock

    out = tmp_path / "toy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.'); from pathlib import Path; "
        "from stages.core.pipeline.runner import shard_lock\n"
        f"with shard_lock(Path({str(out)!r}), 0):\n    print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GpoError, match="being run by pid"):
            with shard_lock(out, 0):
                pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with shard_lock(out, 0):  # the lock died with its owner (SIGKILL)
        pass


def test_chunk_seconds_leave_out_the_model_load_and_count_the_backend(tmp_path, fake_generator):
    """The manifest's chunk seconds are the chunks' own work (what bench/estimate_throughput.py compares with
    the backend): a model loaded lazily inside the first chunk is counted apart, as model_load_seconds; the
    time inside the backend's generate is backend_seconds, so stage and backend compare on any run."""
    import time

    from stages import estimate, sample
    from stages.core.sources.problems import load_problems

    def burn(seconds):  # CPU time, like a model's weights being read, and as much wall time (other threads of
        # this process can advance its CPU clock faster than the wall clock, which model_load_seconds uses)
        cpu, wall = time.process_time() + seconds, time.time() + seconds
        while time.process_time() < cpu or time.time() < wall:
            pass

    class SlowBackend:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def generate(self, requests, sampling):
            burn(0.45)  # (os.times, which the manifest uses, counts in 10 ms ticks)
            return self.inner.generate(requests, sampling)

    gen = fake_generator()

    def slow_load():
        burn(0.6)
        return SlowBackend(gen)

    table = load_problems("toy:arith?n=4&seed=0&split=train").table
    run_stage(sample.STAGE, tmp_path, sample.SampleSettings(problems="toy", model="fake", n=2, max_new_tokens=32),
              input_table=table, make_generator=lambda: gen)
    manifest = run_stage(estimate.STAGE, tmp_path, estimate.EstimateSettings(estimator="full", k=2),
                         make_generator=slow_load)
    assert manifest["model_load_seconds"] >= 0.6
    assert 0.4 <= manifest["backend_cpu_seconds"] <= manifest["chunk_cpu_seconds"]
    assert manifest["chunk_cpu_seconds"] < manifest["backend_cpu_seconds"] + 0.5  # the 0.6 s load is not in it


def test_a_resumed_stage_keeps_the_chunking_it_was_started_with(tmp_path):
    calls: list = []
    with pytest.raises(RuntimeError, match="injected"):  # started with 4 problems a chunk, killed in chunk 2
        run_stage(make_stage(calls, fail_on_call=2), tmp_path, Settings(), input_table=problems(10), chunk_groups=4)
    calls.clear()
    manifest = run_stage(make_stage(calls), tmp_path, Settings(), input_table=problems(10))  # no --chunk-groups
    assert manifest["chunks"] == 3 and [len(c) for c in calls] == [4, 2]  # chunks 2 and 3 only, still of 4
    fresh = run_stage(make_stage([]), tmp_path / "new", Settings(), input_table=problems(10))
    assert fresh["chunks"] == 1  # a new stage: the stage's default (64 problems a chunk)
    with pytest.raises(GpoError, match="changed: chunk_groups"):  # a different chunking, given, is a change
        run_stage(make_stage([]), tmp_path, Settings(), input_table=problems(10), chunk_groups=5)
