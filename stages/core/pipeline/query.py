"""DuckDB over a run directory: one read-only view per table, and the run's progress per stage."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.pipeline import artifacts, layout, lineage
from stages.core.pipeline.errors import GpoError

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
    are: names quoted, the listed parts (absolute paths) only, the `evals` union and `manifests` views included.

    A run folder's name reaches the text only inside quoted literals and, escaped to one line, the header
    comment; DuckDB's own parser then confirms the text holds exactly these CREATE statements."""
    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    tables = table_files(run)
    statements = []
    for name, parts in tables.items():
        files = ", ".join(quote_literal(str(p.resolve())) for p in parts)
        statements.append(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS "
                          f"SELECT * FROM read_parquet([{files}], union_by_name = true);")
    for view, members in union_views(tables).items():
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {quote_ident(name)}" for name in members)
        statements.append(f"CREATE OR REPLACE VIEW {view} AS {union};")
    manifests = finished_manifests(run)
    if manifests.num_rows and "manifests" not in tables:  # as connect() registers it
        values = ", ".join(f"({quote_literal(r['stage'])}, {int(r['shard'])}, {quote_literal(r['content'])})"
                           for r in manifests.to_pylist())
        statements.append("CREATE OR REPLACE VIEW manifests AS SELECT stage, CAST(shard AS BIGINT) AS shard, "
                          f"content FROM (VALUES {values}) AS t(stage, shard, content);")
    where = str(run.resolve())
    header = f"-- views over {where if where.isprintable() else ascii(where)} (gpo sql --views); " \
             "only parts that manifests list"
    text = "\n".join([header, *statements]) + "\n"
    _check_only_creates(text, len(statements))
    return text


def _check_only_creates(text: str, expected: int) -> None:
    """Refuse to print SQL that DuckDB would read as anything but the views meant (a guard behind the quoting)."""
    import duckdb

    try:
        parsed = duckdb.connect(":memory:").extract_statements(text)
    except duckdb.Error as e:
        raise GpoError(f"the views' SQL does not parse: {str(e).splitlines()[0]}") from None
    if len(parsed) != expected or any(st.type.name != "CREATE" for st in parsed):
        raise GpoError("refusing to print the views' SQL: a name in the run would change its statements")


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
    """Per stage: shards done/total, rows, unfinished shard indices, success, stale, and `damaged` (what is
    wrong with a damaged config.json or manifest of that stage, or of its inputs; the other stages still show)."""
    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    names = [s for s in PIPELINE if layout.stage_dir(run, s).is_dir()]
    names += sorted(p.name for p in run.iterdir() if p.is_dir() and p.name not in PIPELINE
                    and layout.config_path(p).exists())
    result = []
    for name in names:
        if layout.config_path(layout.stage_dir(run, name)).exists():
            result.append(_one_stage_status(run, name))
    return result


def _one_stage_status(run: Path, name: str) -> dict:
    out = layout.stage_dir(run, name)
    row = {"stage": name, "num_shards": 0, "done": 0, "rows": 0, "unfinished": [],
           "success": layout.success_path(out).exists(), "stale": None, "damaged": None, "input_damaged": False}
    damaged: list[str] = []
    try:
        cfg = artifacts.load_json(layout.config_path(out))
        total = int(cfg.get("num_shards", 1))
        done = artifacts.finished_manifests(out, {"num_shards": total, "config_hash": cfg.get("config_hash")},
                                            damaged)
    except (GpoError, TypeError, ValueError) as e:  # TypeError/ValueError: a config.json edited by hand
        row["damaged"] = str(e) if isinstance(e, GpoError) else f"{layout.config_path(out)} is damaged ({e})"
        return row
    row.update(num_shards=total, done=len(done), rows=sum(m.get("rows", 0) for m in done.values()),
               unfinished=sorted(set(range(total)) - set(done)), damaged=damaged[0] if damaged else None)
    try:
        row["stale"] = lineage.stale_reason(run, name)
    except GpoError:  # one of its inputs is damaged: that stage's own row names it
        row["input_damaged"] = True
    return row


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
