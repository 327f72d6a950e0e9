"""Data integrity between stages: readers see only what manifests list, lineage, the policy as a setting,
--overwrite and the shard lock, and `gpo sql` sandboxed by DuckDB itself."""

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gpo_cli.main import app
from stages import branch, estimate, locate, sample
from stages.core.pipeline import artifacts, lineage
from stages.core.generation import sampling
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.query import run_query, stage_status, views_sql
from stages.core.pipeline.runner import run_stage, shard_lock

runner = CliRunner()
SAMPLE = sample.SampleSettings(problems="toy", model="fake", n=4, max_new_tokens=64)
# the settings conftest's toy_run was made with (tests/helpers.py run_chain with TOY_RUN)
LOCATE, BRANCH = locate.LocateSettings(rule="abs-advantage"), branch.BranchSettings(m=8, baseline=True)
ESTIMATE = estimate.EstimateSettings(estimator="full", k=16)


def run(path, stage, settings, gen, problems=None, **kw):
    return run_stage(stage, path, settings, make_generator=lambda: gen, input_table=problems, chunk_groups=2, **kw)


@pytest.fixture
def chain(toy_run_copy):
    """A private copy of the finished toy run (conftest's TOY_RUN), with its generator and problems."""
    return toy_run_copy


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def one_error(result, match: str):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match.lower() in lines[0].lower(), result.output


# --- readers read only what manifests list ---------------------------------------------------------

def test_a_copied_chunk_is_not_read_and_is_named_in_a_warning(chain, caplog):
    before = artifacts.read_table(chain, "estimate").num_rows
    part = chain / "estimate" / "shard-00000.chunk-00000.parquet"
    shutil.copy(part, chain / "estimate" / "copy-of-chunk.parquet")
    with caplog.at_level(logging.WARNING, logger="gpo"):
        assert artifacts.read_table(chain, "estimate").num_rows == before
        assert run_query(chain, "select count(*) from estimate")[1] == [(before,)]
    assert any("copy-of-chunk.parquet" in r.message for r in caplog.records)


def test_a_stray_file_with_other_columns_does_not_break_the_next_stage(chain):
    pq.write_table(pa.table({"other": [1, 2]}), chain / "estimate" / "notes.parquet")
    run(chain, locate.STAGE, locate.LocateSettings(seed=1), chain.gen, overwrite=True)
    assert artifacts.read_table(chain, "locate").num_rows > 0


def test_an_edited_upstream_part_is_refused_by_a_later_stage(chain):
    """locate reads `sample` directly: an edit there after estimate ran is named, never read."""
    part = chain / "sample" / "shard-00000.chunk-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 1), part)
    with pytest.raises(GpoError, match="shard-00000.chunk-00000.parquet does not match its manifest"):
        run(chain, locate.STAGE, locate.LocateSettings(seed=1), chain.gen, overwrite=True)


def swap_first_rows(part, a: str, b: str) -> None:
    """Edit a part in place: swap two columns (e.g. chosen and rejected), keeping its schema."""
    table = pq.read_table(part)
    columns = {name: table.column(name) for name in table.column_names}
    columns[a], columns[b] = columns[b], columns[a]
    pq.write_table(pa.table(columns, schema=table.schema), part)


def test_edited_rollouts_are_refused_by_branch_and_edited_pairs_by_export(chain, tmp_path_factory):
    swap_first_rows(chain / "branch" / "shard-00000.chunk-00000.parquet", "chosen", "rejected")
    out = tmp_path_factory.mktemp("export") / "trl"
    one_error(cli("export", "--run", chain, "--format", "trl", "--out", out), "does not match its manifest")
    assert not out.exists()
    swap_first_rows(chain / "estimate" / "rollouts" / "shard-00000.chunk-00000.parquet", "text", "extracted_answer")
    with pytest.raises(GpoError, match="rollouts/shard-00000.chunk-00000.parquet does not match its manifest"):
        run(chain, branch.STAGE, branch.BranchSettings(m=5), chain.gen, overwrite=True)


def test_a_truncated_part_leaves_other_tables_queryable(chain):
    part = chain / "estimate" / "rollouts" / "shard-00000.chunk-00000.parquet"
    part.write_bytes(part.read_bytes()[:200])
    result = cli("sql", chain, "select count(*) from locate")
    assert result.exit_code == 0, result.output
    assert "rollouts" in result.output and "does not match its manifest" in result.output
    one_error(cli("sql", chain, "select count(*) from rollouts"), "rollouts")
    report = cli("report", chain, "--out", chain / "report.html")
    assert report.exit_code == 0 and "does not match its manifest" in report.output, report.output
    problem = run_query(chain, "select problem_id from locate limit 1")[1][0][0]
    shown = cli("show", chain, "--problem", problem)  # reads rollouts: refused in one line, or shown without
    assert shown.exit_code == 0 or [ln for ln in shown.output.splitlines() if ln.startswith("error:")]


def test_temp_files_left_by_a_kill_are_removed_on_the_next_run_of_that_shard(chain):
    left = [chain / "estimate" / ".tmp-shard-00000.chunk-00001.parquet.99999@elsewhere",
            chain / "estimate" / "rollouts" / ".tmp-shard-00000.chunk-00001.parquet.99999@elsewhere",
            chain / "estimate" / "_shards" / ".tmp-00000.json.99999@elsewhere"]
    # another shard's, written on another host: its pid says nothing here, only that shard's run may remove it
    other = chain / "estimate" / ".tmp-shard-00001.chunk-00000.parquet.99999@elsewhere"
    for path in [*left, other]:
        path.write_bytes(b"partial")
    run(chain, estimate.STAGE, ESTIMATE, chain.gen)
    assert not any(p.exists() for p in left) and other.exists()


WRITER = ("import sys, time; from pathlib import Path; from stages.core.pipeline import layout\n"
          "for p in sys.argv[2:]:\n    t = layout.temp_path(Path(p)); t.write_bytes(b'partial'); print(t)\n"
          "sys.stdout.flush(); time.sleep(float(sys.argv[1]))")


def leave_temp_files(paths: list[Path], seconds: float):
    """A writer process that leaves a temp file for each path, as a SIGKILL mid-write does, and then lives
    `seconds` longer: (the process, the temp files)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(seconds), *map(str, paths)], text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    return proc, [Path(proc.stdout.readline().strip()) for _ in paths]


def test_a_dead_writer_s_temp_files_of_every_kind_are_removed_and_a_live_one_s_kept(chain):
    out = chain / "estimate"
    kinds = [out / "config.json", out / "_SUCCESS", out / "_shards" / "00000.json",
             out / "shard-00000.chunk-00001.parquet", out / "rollouts" / "shard-00000.chunk-00001.parquet",
             out / "_shards" / "00001.json", out / "shard-00001.chunk-00000.parquet"]  # and another shard's
    dead, left = leave_temp_files(kinds, 0)
    dead.wait()
    legacy = out / f".tmp-config.json.{dead.pid}"  # as the issue found it, from a gpo that wrote no host name
    legacy.write_bytes(b"partial")
    live, kept = leave_temp_files([out / "config.json", out / "_shards" / "00001.json"], 120)
    try:
        assert all(p.exists() for p in [*left, *kept])
        run(chain, estimate.STAGE, ESTIMATE, chain.gen)
        assert not [p for p in [*left, legacy] if p.exists()]
        assert all(p.exists() for p in kept) and live.poll() is None
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("form", ["relative", "absolute", "symlink"])
def test_a_manifest_listing_a_file_outside_its_stage_is_refused_by_every_reader(chain, tmp_path_factory, form):
    outside = tmp_path_factory.mktemp("outside") / "secret.parquet"
    pq.write_table(pa.table({"problem_id": ["s3cr3t"]}), outside)
    out = chain / "locate"
    path = {"relative": os.path.relpath(outside, out), "absolute": str(outside), "symlink": "evil.parquet"}[form]
    if form == "symlink":
        (out / "evil.parquet").symlink_to(outside)
    manifest_path = out / "_shards" / "00000.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"].append({"table": "secret", "path": path, "bytes": outside.stat().st_size,
                              "sha256": artifacts.sha256_file(outside), "rows": 1})
    manifest_path.write_text(json.dumps(manifest))
    result = cli("sql", chain, "select * from secret")
    one_error(result, "outside")
    assert "s3cr3t" not in result.output
    one_error(cli("sql", chain, "--views"), "outside")
    with pytest.raises(GpoError, match="outside"):
        run(chain, locate.STAGE, LOCATE, chain.gen)
    with pytest.raises(GpoError, match="outside"):
        run(chain, branch.STAGE, branch.BranchSettings(m=5), chain.gen, overwrite=True)


# --- lineage ------------------------------------------------------------------------------------------

def test_stale_downstream_is_refused_naming_the_stage_and_the_command(chain):
    run(chain, sample.STAGE, dataclasses.replace(SAMPLE, seed=1), chain.gen, chain.problems,
        overwrite=True)
    for stage, settings in [(locate.STAGE, locate.LocateSettings(seed=1)), (branch.STAGE, branch.BranchSettings(m=5))]:
        with pytest.raises(GpoError, match=r"stage 'estimate' is stale \(sample changed after estimate ran\).*"
                                           r"gpo estimate --run .* --overwrite"):
            run(chain, stage, settings, chain.gen, overwrite=True)
    stale = {r["stage"]: r["stale"] for r in stage_status(chain)}
    assert stale == {"sample": None, "estimate": ("estimate", "sample changed after estimate ran"),
                     "locate": ("estimate", "sample changed after estimate ran"),
                     "branch": ("estimate", "sample changed after estimate ran")}
    assert "stale" in cli("status", chain).output
    # redoing the chain in order clears it
    run(chain, estimate.STAGE, ESTIMATE, chain.gen, overwrite=True)
    with pytest.raises(GpoError, match="stage 'locate' is stale"):
        run(chain, branch.STAGE, BRANCH, chain.gen)
    run(chain, locate.STAGE, LOCATE, chain.gen, overwrite=True)
    run(chain, branch.STAGE, BRANCH, chain.gen, overwrite=True)
    assert all(r["stale"] is None for r in stage_status(chain))


def test_sql_and_show_on_a_stale_run_answer_with_a_warning_as_status_shows_it(chain):
    problem = run_query(chain, "select problem_id from locate limit 1")[1][0][0]
    fresh = [cli("sql", chain, "select count(*) from locate"), cli("show", chain, "--problem", problem)]
    assert all(r.exit_code == 0 and "stale" not in r.output for r in fresh), [r.output for r in fresh]
    run(chain, sample.STAGE, dataclasses.replace(SAMPLE, seed=1), chain.gen, chain.problems, overwrite=True)
    for result in [cli("sql", chain, "select count(*) from locate"), cli("sql", chain),
                   cli("sql", chain, "--views"), cli("show", chain, "--problem", problem)]:
        assert result.exit_code == 0, result.output
        warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:") and "stale" in ln]
        assert len(warnings) == 1, result.output  # one line for the stale estimate (and what follows it)
        assert "estimate" in warnings[0] and "sample changed after estimate ran" in warnings[0]


def test_status_with_one_damaged_manifest_shows_the_other_stages_and_names_it(chain):
    damaged = chain / "estimate" / "_shards" / "00000.json"
    damaged.write_text("{ not json")
    result = cli("status", chain)
    assert result.exit_code != 0
    rows = [ln for ln in result.output.splitlines() if ln.startswith("│")]
    for stage in ("sample", "estimate", "locate", "branch"):
        assert any(ln.split("│")[1].strip() == stage for ln in rows), result.output
    assert any("sample" in ln and "done" in ln for ln in rows), result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "estimate/_shards/00000.json" in errors[0], result.output


def test_an_overwritten_stage_that_has_not_finished_blocks_its_downstream(chain):
    (chain / "estimate" / "_SUCCESS").unlink()
    with pytest.raises(GpoError, match="stage 'estimate' was started again and has not finished"):
        lineage.require_fresh(chain, "locate")
    assert {r["stage"]: r["stale"] for r in stage_status(chain)}["branch"] == ("estimate", "unfinished")


def test_export_and_train_require_a_finished_fresh_branch(chain, tmp_path_factory):
    from stages.train import TrainSettings, train

    out = tmp_path_factory.mktemp("export")
    assert cli("export", "--run", chain, "--format", "trl", "--out", out / "a").exit_code == 0
    (chain / "branch" / "_SUCCESS").unlink()
    one_error(cli("export", "--run", chain, "--format", "trl", "--out", out / "b"), "branch' has not finished")
    with pytest.raises(GpoError, match="branch' has not finished"):
        train(chain, TrainSettings(method="dpo", model=str(chain / "no-model")))


def test_export_refuses_a_branch_built_on_a_changed_estimate(chain, tmp_path_factory):
    run(chain, estimate.STAGE, estimate.EstimateSettings(estimator="full", k=5), chain.gen, overwrite=True)
    out = tmp_path_factory.mktemp("export")
    one_error(cli("export", "--run", chain, "--format", "trl", "--out", out / "t"),
              "stage 'locate' is stale (estimate changed after locate ran)")
    assert not (out / "t").exists()


# --- the policy is a setting; --overwrite takes the locks --------------------------------------------

def test_the_policy_is_resolved_from_sample_and_a_different_model_is_refused(chain):
    config = artifacts.load_json(chain / "estimate" / "config.json")["settings"]
    assert {k: config[k] for k in sampling.POLICY} == {"model": "fake", "backend": "auto", "temperature": 1.0,
                                                     "top_p": 1.0, "max_new_tokens": 64}
    for settings in (estimate.EstimateSettings(estimator="full", k=16, model="other-model"),
                     estimate.EstimateSettings(estimator="full", k=16, top_p=0.5)):
        with pytest.raises(GpoError, match="different settings"):
            run(chain, estimate.STAGE, settings, chain.gen)
    assert artifacts.load_json(chain / "branch" / "config.json")["settings"]["model"] == "fake"


def test_overwrite_refuses_while_another_process_holds_a_shard_lock(chain):
    out = chain / "estimate"
    files = sorted(p.name for p in out.glob("*.parquet"))
    with shard_lock(out, 0):  # as a running `gpo estimate` holds it
        with pytest.raises(GpoError, match="being run by .*; overwrite it"):
            run(chain, estimate.STAGE, estimate.EstimateSettings(estimator="full", k=5), chain.gen, overwrite=True)
    assert sorted(p.name for p in out.glob("*.parquet")) == files and (out / "_SUCCESS").exists()


# --- gpo sql is sandboxed by DuckDB -----------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{target}'",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{run}/sample/shard-00000.chunk-00000.parquet' (USE_TMP_FILE false)",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{run}/sample/shard-00000.chunk-00000.parquet')",
])
def test_sql_cannot_touch_files(chain, tmp_path_factory, query):
    target = tmp_path_factory.mktemp("outside") / "written.csv"
    part = chain / "sample" / "shard-00000.chunk-00000.parquet"
    digest = artifacts.sha256_file(part)
    one_error(cli("sql", chain, query.format(target=target, run=chain)), "")
    assert not target.exists() and artifacts.sha256_file(part) == digest


def test_sql_url_read_is_refused_without_creating_a_duckdb_home(chain, tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    one_error(cli("sql", chain, "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')"), "")
    one_error(cli("sql", chain, "SELECT * FROM 'https://example.com/x.csv'"), "")
    assert not (home / ".duckdb").exists()


def test_sql_cannot_turn_the_sandbox_off(chain):
    with pytest.raises(GpoError, match="locked|read-only"):
        run_query(chain, "SELECT current_setting('enable_external_access'); SET enable_external_access = true")


def test_a_crafted_folder_name_cannot_inject_sql(chain, tmp_path_factory, monkeypatch):
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    evil = chain / """v" AS SELECT 1; COPY (SELECT 42 AS x) TO 'pwned.csv'; CREATE VIEW "w"""
    evil.mkdir()
    shutil.copy(chain / "sample" / "shard-00000.chunk-00000.parquet", evil / "part.parquet")
    assert cli("sql", chain, "select count(*) from locate").exit_code == 0
    assert cli("report", chain, "--out", cwd / "report.html").exit_code == 0
    assert not (cwd / "pwned.csv").exists()


def test_views_sql_opens_as_is_in_duckdb_with_quoted_names_and_evals(chain, fake_generator):
    from stages import eval as evaluate

    for label in ("base", "dpo-gpo"):
        settings = evaluate.EvalSettings(problems="toy", model="fake", label=label, max_new_tokens=64)
        run(chain, evaluate.make_stage(label), settings, chain.gen, chain.problems)
    result = cli("sql", chain, "--views")
    assert result.exit_code == 0, result.output
    (chain / "views.sql").write_text(result.output)
    con = duckdb.connect()
    for statement in con.extract_statements(result.output):
        con.execute(statement)
    views = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    assert {"sample", "estimate", "rollouts", "locate", "branch", "eval_base", "eval_dpo-gpo", "evals"} <= views
    for name in views:
        got = con.execute(f'select count(*) from "{name}"').fetchone()[0]
        assert [(got,)] == run_query(chain, f'select count(*) from "{name}"')[1]
    assert views_sql(chain).count("CREATE OR REPLACE VIEW") == len(views)


HOSTILE_RUN_NAME = "X\nCOPY (SELECT 42 AS pwned) TO 'injv.csv';\n-- "  # issue 21.1


def test_a_run_folder_named_to_inject_sql_cannot_through_views_sql_or_the_listing(chain, tmp_path_factory,
                                                                                   monkeypatch):
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    hostile = tmp_path_factory.mktemp("runs") / HOSTILE_RUN_NAME
    shutil.copytree(chain, hostile)
    result = cli("sql", hostile, "--views")
    assert result.exit_code == 0, result.output
    (cwd / "views.sql").write_text(result.output)
    con = duckdb.connect()
    con.execute((cwd / "views.sql").read_text())  # the whole file, as `duckdb -init views.sql` runs it
    for statement in con.extract_statements((cwd / "views.sql").read_text()):
        con.execute(statement)
    assert not (cwd / "injv.csv").exists()
    in_duckdb = con.execute("select count(*) from locate").fetchone()[0]
    assert in_duckdb == run_query(chain, "select count(*) from locate")[1][0][0]
    listing = cli("sql", hostile)
    assert listing.exit_code == 0, listing.output
    assert not any(line.startswith("COPY") for line in listing.output.splitlines()), listing.output


def test_views_sql_has_the_manifests_view_that_gpo_sql_has(chain):
    con = duckdb.connect()
    for statement in con.extract_statements(views_sql(chain)):
        con.execute(statement)
    got = con.execute("select stage, shard, content from manifests order by stage, shard").fetchall()
    assert got and got == run_query(chain, "select stage, shard, content from manifests order by stage, shard")[1]
    from stages.core.pipeline.query import describe_views

    assert [(c, t) for c, t, *_ in con.execute("describe manifests").fetchall()] == describe_views(chain)["manifests"]
