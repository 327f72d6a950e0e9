"""`gpo report RUN`: one self-contained HTML page with the run's figures, their numbers and the SQL behind them.

    gpo report runs/toy                      # -> runs/toy/report.html and runs/toy/report_files/*.png

Each section appears only when the run holds its data; every figure is drawn from the rows of the query
printed under it (run it with `gpo sql RUN "..."` to get the same numbers). Images are embedded as data
URIs and also written as PNG files next to the page. All files are written atomically.
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError
from stages.core.pipeline.query import PIPELINE, connect
from stages.tools import report_plots as plots

MAX_CURVES = 12
OPEN_ROWS = 15   # longer tables start folded
SHOW_ROWS = 200  # at most this many rows are printed; the query gives the rest
Z = 1.96


@dataclass
class Query:
    caption: str
    sql: str
    columns: list[str]
    rows: list[tuple]


@dataclass
class Section:
    name: str
    title: str
    text: str
    png: bytes | None = None
    queries: list[Query] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RunViews:
    """The run's DuckDB views, and the queries a report section runs on them."""

    def __init__(self, run: Path):
        self.run = run
        self.con = connect(run)
        self.views = {r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}

    def q(self, caption: str, sql: str) -> Query:
        rel = self.con.execute(sql)
        return Query(caption, sql.strip(), [d[0] for d in rel.description], rel.fetchall())

    def columns(self, view: str) -> set[str]:
        return {r[0] for r in self.con.execute(f'DESCRIBE "{view}"').fetchall()}


def wilson_sql(p: str, n: str) -> str:
    """SQL columns `center` and `half` of the 95% Wilson interval of proportion p over n (as values.wilson_interval)."""
    return (f"({p} + {Z * Z / 2:.4f} / {n}) / (1 + {Z * Z:.4f} / {n}) AS center,\n"
            f"       {Z} * sqrt({p} * (1 - {p}) / {n} + {Z * Z / 4:.4f} / ({n} * {n}))"
            f" / (1 + {Z * Z:.4f} / {n}) AS half")


def accuracy_sql(view: str, keys: str) -> str:
    """Mean over problems of per-problem accuracy with eval's interval: Wilson when every problem is 0/1
    (one sample each), else mean ± 1.96 sd / sqrt(problems)."""
    return f"""
WITH per_problem AS (
  SELECT {keys}, problem_id, avg(reward) AS acc, count(*) AS samples FROM {view} GROUP BY ALL),
by_key AS (
  SELECT {keys}, count(*) AS problems, sum(samples) AS samples, avg(acc) AS accuracy,
         coalesce(stddev_samp(acc), 0) AS sd, bool_and(acc IN (0, 1)) AS all_binary
  FROM per_problem GROUP BY ALL),
w AS (
  SELECT *, {wilson_sql("accuracy", "problems")} FROM by_key)
SELECT {keys}, problems, samples, accuracy,
       greatest(0, CASE WHEN all_binary THEN center - half ELSE accuracy - {Z} * sd / sqrt(problems) END) AS ci_low,
       least(1, CASE WHEN all_binary THEN center + half ELSE accuracy + {Z} * sd / sqrt(problems) END) AS ci_high
FROM w ORDER BY ALL"""


# ----------------------------------------------------------------------------- sections


def sample_section(c: RunViews) -> Section | None:
    if "sample" not in c.views:
        return None
    acc = c.q("accuracy per problem source", accuracy_sql("sample", "source"))
    if not acc.rows:
        return None
    lengths = c.q("response-length histogram (20 bins)", """
WITH w AS (SELECT greatest(1, ceil((max(num_response_tokens) + 1) / 20))::INT AS width FROM sample)
SELECT (num_response_tokens // width) * width AS tokens_from, width,
       count(*) FILTER (WHERE reward = 1) AS correct, count(*) FILTER (WHERE reward = 0) AS incorrect
FROM sample, w GROUP BY ALL ORDER BY 1""")
    return Section("sample", "Sampled trajectories",
                   "Accuracy of the policy's samples (the trajectories GPO explores) and their response lengths.",
                   plots.sample_overview([(r[0], r[3], r[4], r[5]) for r in acc.rows], lengths.rows),
                   [acc, lengths])


def value_section(c: RunViews) -> Section | None:
    if "estimate" not in c.views:
        return None
    crit = "l.critical_step" if "locate" in c.views else "NULL::INT AS critical_step"
    join = "LEFT JOIN locate l USING (problem_id, sample_idx)" if "locate" in c.views else ""
    q = c.q(f"steps of {MAX_CURVES} trajectories picked by md5 of their key", f"""
WITH picked AS (
  SELECT DISTINCT problem_id, sample_idx FROM estimate
  ORDER BY md5(problem_id || ':' || sample_idx) LIMIT {MAX_CURVES})
SELECT e.problem_id, e.sample_idx, e.step_idx, e.num_steps, e.value, e.ci_low, e.ci_high, e.n_rollouts,
       e.value_source, e.value_next, e.advantage, e.reward, {crit}
FROM estimate e JOIN picked USING (problem_id, sample_idx) {join}
ORDER BY md5(e.problem_id || ':' || e.sample_idx), e.step_idx""")
    trajs: dict = {}
    for pid, idx, step, n, v, lo, hi, k, src, v_next, _a, reward, m in q.rows:
        t = trajs.setdefault((pid, idx), {"label": f"{_short(pid)} #{idx}", "values": [None] * (n + 1),
                                          "low": [None] * (n + 1), "high": [None] * (n + 1),
                                          "filled": [False] * (n + 1),
                                          "critical": m, "reward": reward})
        t["values"][step], t["filled"][step] = v, src == "filled"
        if k:
            t["low"][step], t["high"][step] = lo, hi
        if step == n - 1:
            t["values"][n] = v_next
    if not trajs:
        return None
    total = c.con.execute("SELECT count(DISTINCT (problem_id, sample_idx)) FROM estimate").fetchone()[0]
    return Section("value_curves", "Value curves V̂(s_i)",
                   f"Monte Carlo values of every step prefix with 95% Wilson intervals (shaded; hollow points were "
                   f"filled in without rollouts) for {len(trajs)} of {total} estimated trajectories. The last "
                   f"point is the trajectory's own reward; the critical step's transition is drawn in red.",
                   plots.value_curves(list(trajs.values())), [q])


def critical_section(c: RunViews) -> Section | None:
    if "locate" not in c.views:
        return None
    rel = c.q("relative position (10 bins)", """
SELECT least(floor(relative_position * 10), 9) / 10 AS bin_low, count(*) AS trajectories
FROM locate WHERE critical_step IS NOT NULL GROUP BY 1 ORDER BY 1""")
    absolute = c.q("absolute position", """
SELECT critical_step, count(*) AS trajectories FROM locate WHERE critical_step IS NOT NULL GROUP BY 1 ORDER BY 1""")
    reasons = c.q("outcome of locate per trajectory", """
SELECT rule, coalesce(reason, 'located') AS reason, count(*) AS trajectories, avg(num_steps) AS mean_steps
FROM locate GROUP BY ALL ORDER BY 3 DESC""")
    if not reasons.rows:
        return None
    return Section("critical_positions", "Where the critical steps are",
                   "Position of the critical step m = argmax |A_i| in each located trajectory, relative to its "
                   "number of steps and as a step index.",
                   plots.critical_positions(rel.rows, absolute.rows) if rel.rows else None, [rel, absolute, reasons])


def advantage_section(c: RunViews) -> Section | None:
    if "estimate" not in c.views:
        return None
    crit = ("UNION ALL SELECT 'critical', advantage FROM locate WHERE critical_step IS NOT NULL"
            if "locate" in c.views else "")
    q = c.q("advantage histogram (bins 0.1 wide, centred on multiples of 0.1)", f"""
WITH a AS (SELECT 'all' AS kind, advantage FROM estimate WHERE advantage IS NOT NULL
           {crit})
SELECT round(advantage * 10) / 10 AS bin_center,
       count(*) FILTER (WHERE kind = 'all') AS all_steps, count(*) FILTER (WHERE kind = 'critical') AS critical_steps
FROM a GROUP BY 1 ORDER BY 1""")
    stats = c.q("summary", f"""
WITH a AS (SELECT 'all' AS kind, advantage FROM estimate WHERE advantage IS NOT NULL
           {crit})
SELECT kind, count(*) AS steps, avg(advantage) AS mean, avg(abs(advantage)) AS mean_abs,
       count(*) FILTER (WHERE advantage = 0) AS zero FROM a GROUP BY 1 ORDER BY 1""")
    if not q.rows:
        return None
    return Section("advantages", "Advantage distribution",
                   "A_i = V̂(s_i+1) − V̂(s_i) over every estimated step, and at the critical steps alone.",
                   plots.advantages([(float(b), a, k) for b, a, k in q.rows]), [q, stats])


def agreement_section(c: RunViews) -> Section | None:
    if "locate" not in c.views:
        return None
    rate = c.q("agreement rate (95% Wilson interval)", f"""
WITH s AS (SELECT count(*) AS trajectories, count(*) FILTER (WHERE agrees) AS agree
           FROM locate WHERE first_wrong_line IS NOT NULL),
r AS (SELECT *, agree / trajectories AS rate FROM s WHERE trajectories > 0),
w AS (SELECT *, {wilson_sql("rate", "trajectories")} FROM r)
SELECT trajectories, agree, rate, greatest(0, center - half) AS ci_low, least(1, center + half) AS ci_high FROM w""")
    if not rate.rows:
        return None
    cells = c.q("critical step vs first wrong line", """
SELECT first_wrong_line, critical_step, count(*) AS trajectories FROM locate
WHERE first_wrong_line IS NOT NULL GROUP BY ALL ORDER BY ALL""")
    n, agree, r, r_lo, r_hi = rate.rows[0]
    return Section("toy_agreement", "Toy task: critical step vs first wrong line",
                   "On the toy task the first wrong line of a failed solution is known; a good critical step "
                   "lands on it (green squares mark the diagonal; 'none': no critical step found).",
                   plots.agreement(cells.rows, r), [rate, cells],
                   [f"agreement {agree}/{n} = {r:.1%} (95% interval {r_lo:.1%}–{r_hi:.1%})"])


def eval_section(c: RunViews) -> Section | None:
    if "evals" not in c.views:
        return None
    q = c.q("accuracy per model and mode", accuracy_sql("evals", "label, mode"))
    if not q.rows:
        return None
    return Section("eval_accuracy", "Evaluation accuracy",
                   "Accuracy of each evaluated model (eval_<label>), per decoding mode, averaged over problems, "
                   "with the 95% interval `gpo eval` reports.",
                   plots.eval_accuracy([(r[0], r[1], r[4], r[5], r[6]) for r in q.rows]), [q])


def _stats_sum(keys: tuple[str, ...]) -> str:
    return "sum(" + " + ".join(f"coalesce(j.stats.{k}::BIGINT, 0)" for k in keys) + ")"


def cost_section(c: RunViews) -> Section | None:
    queries, png = [], None
    if "manifests" in c.views:
        order = ", ".join(f"'{s}'" for s in PIPELINE)
        tokens = _stats_sum(("generated_tokens", "gpo_generated_tokens", "random_reset_generated_tokens"))
        rollouts = _stats_sum(("rollouts", "gpo_branches_sampled", "random_reset_branches_sampled"))
        q = c.q(f"per stage, from the shard manifests RUN/<stage>/{layout.SHARDS}/*.json", f"""
WITH m AS (SELECT stage, content::JSON AS j FROM manifests)
SELECT stage, count(*) AS shards, {tokens} AS generated_tokens,
       {rollouts} AS rollouts_and_branches,
       {_stats_sum(("prompt_tokens",))} AS prompt_tokens, round(sum(j.wall_seconds::DOUBLE), 2) AS wall_seconds,
       round(sum(j.chunk_seconds::DOUBLE), 2) AS chunk_seconds
FROM m GROUP BY 1 ORDER BY coalesce(list_position([{order}], stage), 99), stage""")
        queries.append(q)
        png = plots.cost([(r[0], r[2], r[3], r[5]) for r in q.rows])
    if "rollouts" in c.views:
        queries.append(c.q("Monte Carlo rollouts (shared: reused from another sample's identical state)", """
SELECT count(*) FILTER (WHERE shared_from_sample IS NULL) AS generated,
       count(*) FILTER (WHERE shared_from_sample IS NOT NULL) AS shared,
       sum(num_tokens) FILTER (WHERE shared_from_sample IS NULL) AS generated_tokens FROM rollouts"""))
    if "continuations" in c.views:
        queries.append(c.q("branch continuations by origin (new: sampled by branch; rollout: reused MC rollouts)", """
SELECT data, origin, count(*) AS continuations, sum(num_tokens) AS tokens, avg(reward) AS correct_rate
FROM continuations GROUP BY ALL ORDER BY ALL"""))
    if "branch" in c.views:
        queries.append(c.q("training pairs per data kind", """
SELECT data, count(*) AS pairs, count(DISTINCT problem_id) AS problems, avg(prefix_tokens) AS mean_prefix_tokens
FROM branch GROUP BY 1 ORDER BY 1"""))
    if not queries:
        return None
    return Section("cost", "Cost: tokens and rollouts per stage",
                   "Generated tokens, Monte Carlo rollouts plus branch continuations, and time per stage; GPO's "
                   "extra cost over plain sampling is almost all estimate rollouts.", png, queries)


def loss_section(c: RunViews) -> Section | None:
    if "metrics" not in c.views or not {"step", "loss"} <= c.columns("metrics"):
        return None
    cols = c.columns("metrics")
    name = ("run_name" if "run_name" in cols else
            "method || '-' || data" if {"method", "data"} <= cols else "'train'")
    curve = c.q("loss curves", f"""
SELECT {name} AS run, step, loss FROM metrics WHERE loss IS NOT NULL AND isfinite(loss) ORDER BY ALL""")
    if not curve.rows:
        return None
    summary = c.q("per training run", f"""
SELECT {name} AS run, count(*) AS logged, max(step) AS last_step, arg_min(loss, step) AS first_loss,
       arg_max(loss, step) AS last_loss, min(loss) AS min_loss
FROM metrics WHERE loss IS NOT NULL AND isfinite(loss) GROUP BY 1 ORDER BY 1""")
    series: dict = {}
    for run, step, loss in curve.rows:
        s = series.setdefault(run, ([], []))
        s[0].append(step)
        s[1].append(loss)
    return Section("train_loss", "Training loss", "Loss logged by the trainer (view `metrics`).",
                   plots.train_loss(series), [summary, curve])


SECTIONS = (sample_section, value_section, critical_section, advantage_section, agreement_section, eval_section,
            cost_section, loss_section)


# ----------------------------------------------------------------------------- page


def _short(text: str, n: int = 20) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def shell_command(run: Path, sql: str) -> str:
    """`gpo sql RUN "SQL"`, double-quoted when bash leaves the SQL as is there (it reads best), else shlex."""
    import re
    import shlex

    plain = not re.search(r'["`\\!]|\$[\w{(@*#?$!-]', sql)
    return f"gpo sql {shlex.quote(str(run))} " + (f'"{sql}"' if plain else shlex.quote(sql))


def _table(columns: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows[:SHOW_ROWS])
    more = (f'<p class="more">… {len(rows) - SHOW_ROWS:,} more rows: run the query above.</p>'
            if len(rows) > SHOW_ROWS else "")
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{more}'


def _query_html(run: Path, q: Query) -> str:
    table = _table(q.columns, q.rows) if q.rows else "<p class=more>(no rows)</p>"
    openness = " open" if len(q.rows) <= OPEN_ROWS else ""  # long tables start folded
    return (f'<details class="query"{openness}><summary>{html.escape(q.caption)} '
            f'<span class="n">({len(q.rows):,} rows)</span></summary>'
            f'<pre>{html.escape(shell_command(run, q.sql))}</pre>{table}</details>')


CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2330;max-width:1080px;
margin:24px auto;padding:0 20px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:32px 0 6px;padding-top:12px;border-top:1px solid #dde1e7}
.meta{color:#5b6472;font-size:13px}code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f5f6f8;border:1px solid #e3e6ea;padding:8px 10px;overflow-x:auto;white-space:pre-wrap;margin:6px 0}
table{border-collapse:collapse;font-size:12px;margin:4px 0 8px}td,th{border:1px solid #e0e3e8;padding:2px 8px;
text-align:right}th{background:#f0f2f5;font-weight:600}td:first-child,th:first-child{text-align:left}
.scroll{max-height:420px;overflow:auto;display:inline-block;max-width:100%}
img{max-width:100%;display:block;margin:8px 0}
details.query{margin:6px 0}summary{cursor:pointer;color:#334;font-size:13px}.n,.more{color:#7a8290;font-size:12px}
.note{background:#eef6ee;border-left:3px solid #3a8a4f;padding:4px 10px;margin:6px 0}nav a{margin-right:12px}
.png{font-size:12px}
"""


def render_page(run: Path, counts: list[tuple[str, int, str]], sections: list[Section], images: dict) -> str:
    nav = "".join(f'<a href="#{s.name}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>GPO report: {html.escape(str(run))}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>GPO report</h1><p class=meta>run <code>{html.escape(str(run.resolve()))}</code> · generated "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · {len(sections)} sections</p><nav>{nav}</nav>",
             "<h2 id=tables>Tables</h2><p class=meta>Every view `gpo sql` sees in this run.</p>",
             _table(["view", "rows", "folder"], counts)]
    for s in sections:
        parts.append(f'<h2 id="{s.name}">{html.escape(s.title)}</h2><p>{html.escape(s.text)}</p>')
        parts += [f"<p class=note>{html.escape(n)}</p>" for n in s.notes]
        if s.name in images:
            rel, data = images[s.name]
            parts.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,'
                         f'{base64.b64encode(data).decode()}"><p class=png>PNG: <a href="{html.escape(rel)}">'
                         f"{html.escape(rel)}</a></p>")
        parts += [_query_html(run, q) for q in s.queries]
    parts.append("</body></html>")
    return "\n".join(parts)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_report(run: Path, out: Path | None = None) -> dict:
    """Write the report page (default RUN/report.html) and its PNGs (<page>_files/) and say what is in it."""
    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    tables = artifacts.list_tables(run)
    if not tables:
        raise GpoError(f"{run} has no finished tables yet: nothing to report (run `gpo sample` first)")
    out = Path(out) if out is not None else run / "report.html"
    files = out.parent / f"{out.stem}_files"
    ctx = RunViews(run)
    counts = [(v, ctx.con.execute(f'SELECT count(*) FROM "{v}"').fetchone()[0],
               str(tables[v].relative_to(run)) if v in tables else "(union of eval_*)") for v in sorted(ctx.views)]
    sections = [s for s in (make(ctx) for make in SECTIONS) if s is not None]
    files.mkdir(parents=True, exist_ok=True)
    images, pngs = {}, []
    for s in sections:
        if s.png is None:
            continue
        path = files / f"{s.name}.png"
        _write_atomic(path, s.png)
        pngs.append(path)
        images[s.name] = (os.path.relpath(path, out.parent), s.png)
    for stale in files.glob("*.png"):
        if stale not in pngs:
            stale.unlink()
    _write_atomic(out, render_page(run, counts, sections, images).encode())
    return {"html": out, "pngs": pngs, "sections": [s.name for s in sections]}
