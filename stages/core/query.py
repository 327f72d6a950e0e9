"""DuckDB over a run directory: one read-only view per table, and the run's progress per stage."""

from __future__ import annotations

from pathlib import Path

from stages.core import artifacts
from stages.core.errors import GpoError

PIPELINE = ("sample", "estimate", "locate", "branch", "train", "eval")
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def connect(run: Path):
    """An in-memory DuckDB with a view per finished table of the run (only final part files are seen)."""
    import duckdb

    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    con = duckdb.connect(":memory:")
    tables = artifacts.list_tables(run)
    for name, folder in tables.items():
        pattern = str(folder / "*.parquet").replace("'", "''")
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet(\'{pattern}\', union_by_name=true)')
    evals = [name for name in tables if name == "eval" or name.startswith("eval_")]
    if evals:  # every evaluation of the run in one view, told apart by `label`
        union = " UNION ALL BY NAME ".join(f'SELECT * FROM "{name}"' for name in evals)
        con.execute(f"CREATE VIEW evals AS {union}")
    return con


def check_read_only(con, query: str) -> None:
    """Refuse anything but queries: `gpo sql` must never write into (or outside) a run directory."""
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
        views[name] = [(c, t) for c, t, *_ in con.execute(f'DESCRIBE "{name}"').fetchall()]
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
                       "success": (out / "_SUCCESS").exists()})
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
