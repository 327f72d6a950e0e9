"""DuckDB over a run directory: one read-only view per table, and the run's progress per stage."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core import artifacts, lineage
from stages.core.errors import GpoError

PIPELINE = ("sample", "estimate", "locate", "branch", "train", "eval")
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")
log = logging.getLogger("gpo")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_files(run: Path) -> dict[str, list[Path]]:
    """Each table's parts as its manifests list them, checked; a damaged table is left out with a warning
    (so queries on the other tables still run)."""
    files = {}
    for name in artifacts.list_tables(run):
        try:
            files[name] = artifacts.table_parts(run, name)
        except GpoError as e:
            log.warning(f"warning: table '{name}' left out: {e}")
    return {name: parts for name, parts in files.items() if parts}


def eval_tables(names) -> list[str]:
    return [name for name in names if name == "eval" or name.startswith("eval_")]


def union_views(names) -> dict[str, list[str]]:
    """Views over every table of a family, told apart by `label`: `evals` (eval_<label>) and `probes`
    (probe_<label>, written by `gpo eval --probe`)."""
    views = {"evals": eval_tables(names), "probes": [name for name in names if name.startswith("probe_")]}
    return {view: tables for view, tables in views.items() if tables}


def connect(run: Path):
    """An in-memory DuckDB with a view per finished table of the run, sandboxed by DuckDB's own settings.

    Each view scans an Arrow dataset of the parts the manifests list (no path is spliced into SQL). Then
    external access is switched off (no file, URL or extension reads or writes: COPY, read_text, glob,
    ATTACH, INSTALL all fail) and the configuration is locked so a query cannot switch it back on."""
    import duckdb
    import pyarrow.dataset as ds

    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    con = duckdb.connect(":memory:", config={"autoload_known_extensions": False,
                                             "autoinstall_known_extensions": False, "temp_directory": ""})
    tables = table_files(run)
    for name, parts in tables.items():
        schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
        con.register(name, ds.dataset([str(p) for p in parts], schema=schema.remove_metadata(), format="parquet"))
    for view, members in union_views(tables).items():  # every evaluation (probe) of the run in one view
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {quote_ident(name)}" for name in members)
        con.execute(f"CREATE VIEW {view} AS {union}")
    manifests = finished_manifests(run)
    if manifests.num_rows and "manifests" not in tables:
        con.register("manifests", manifests)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def finished_manifests(run: Path) -> pa.Table:
    """The `manifests` view: one row per finished shard (stage, shard, the manifest as JSON text)."""
    import json

    rows = []
    for out in sorted(p for p in Path(run).iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        config = artifacts.runner_config(out)
        if config is not None:
            for index, manifest in sorted(artifacts.finished_manifests(out, config).items()):
                rows.append({"stage": out.name, "shard": index, "content": json.dumps(manifest)})
    schema = pa.schema([("stage", pa.string()), ("shard", pa.int64()), ("content", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def views_sql(run: Path) -> str:
    """The same views as statements the duckdb shell (`duckdb -init views.sql`) or Python can run as they
    are: names quoted, the listed parts (absolute paths) only, the `evals` union view included."""
    tables = table_files(run)
    lines = [f"-- views over {Path(run).resolve()} (gpo sql --views); only parts that manifests list"]
    for name, parts in tables.items():
        files = ", ".join(quote_literal(str(p.resolve())) for p in parts)
        lines.append(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS "
                     f"SELECT * FROM read_parquet([{files}], union_by_name = true);")
    for view, members in union_views(tables).items():
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {quote_ident(name)}" for name in members)
        lines.append(f"CREATE OR REPLACE VIEW {view} AS {union};")
    return "\n".join(lines) + "\n"


def check_read_only(con, query: str) -> None:
    """Refuse anything but queries, as a first, clearer message (DuckDB's sandbox is what enforces it)."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise GpoError(f"SQL error: {str(e).splitlines()[0]}") from None
    if not statements:
        raise GpoError("empty SQL query")
    for st in statements:
        kind = st.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise GpoError(f"gpo sql is read-only: {kind} statements are refused")


def run_query(run: Path, query: str):
    """Return (column names, rows) of a read-only query over the run's views."""
    import duckdb

    con = connect(run)
    check_read_only(con, query)
    try:
        rel = con.execute(query)
        columns = [d[0] for d in rel.description] if rel.description else []
        return columns, rel.fetchall()
    except duckdb.Error as e:
        raise GpoError(f"SQL error: {str(e).splitlines()[0]}") from None


def describe_views(run: Path) -> dict[str, list[tuple[str, str]]]:
    con = connect(run)
    views = {}
    for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall():
        views[name] = [(c, t) for c, t, *_ in con.execute(f"DESCRIBE {quote_ident(name)}").fetchall()]
    return views


def stage_status(run: Path) -> list[dict]:
    """Per stage: shards done/total, rows, unfinished shard indices, success."""
    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    names = [s for s in PIPELINE if (run / s).is_dir()]
    names += sorted(p.name for p in run.iterdir() if p.is_dir() and p.name not in PIPELINE
                    and (p / "config.json").exists())
    result = []
    for name in names:
        out = run / name
        cfg_path = out / "config.json"
        if not cfg_path.exists():
            continue
        cfg = artifacts.load_json(cfg_path)
        total = int(cfg.get("num_shards", 1))
        done = [i for i in artifacts.finished_shards(out, cfg.get("config_hash")) if i < total]
        rows = sum(artifacts.load_json(out / "_shards" / f"{i:05d}.json").get("rows", 0) for i in done)
        result.append({"stage": name, "num_shards": total, "done": len(done), "rows": rows,
                       "unfinished": sorted(set(range(total)) - set(done)),
                       "success": (out / "_SUCCESS").exists(), "stale": lineage.stale_reason(run, name)})
    return result


def array_spec(indices: list[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8' (the form sbatch --array= takes)."""
    parts, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)
