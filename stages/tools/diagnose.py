"""`gpo diagnose RUN`: does GPO's premise hold on this run?

    gpo diagnose runs/toy
    gpo sql runs/toy "select * from diagnose"

GPO pays when a policy makes systematic, repeatable mistakes at identifiable steps among many valid ways
to solve a problem. This reads whatever the run has (`sample` is required; `estimate`, `locate`, `branch`
are used where present) and writes RUN/diagnose/diagnose.parquet (one row per statistic, with the counts
behind it) and RUN/diagnose/summary.json. Definitions:

1. Repeatability. Units: failed trajectories with a located critical step (locate: reward 0, critical
   step not null), in problems with at least 2 such units. Statistic: over all same-problem pairs of
   units, the share whose critical steps are the same step index. Null: the same share after permuting
   the critical steps across units with the same `num_steps` (so the per-position distribution is kept
   and only the tie to the problem is broken), `permutations` times, seeded; mean, sd and the central
   95% of the null, the ratio observed / null mean and a one-sided permutation p-value. The same is
   computed for ground-truth first wrong lines where the task knows them (toy tasks, every failed sample,
   stratified by its number of lines), which needs no `locate`.
   Verdict, on first wrong lines where the task knows them (ground truth: no estimation noise), else on
   critical steps, noting when most matching pairs reset at an identical state (same prefix tokens):
   identical states share their Monte Carlo rollouts, so such matches can come from one noisy estimate
   seen twice rather than from a repeated error (on toy:arith with K=2, critical steps "repeat" 1.5x the
   null while first wrong lines repeat 1.15x):
   - fewer than MIN_PAIRS pairs: "not enough failed trajectories to say";
   - ratio >= REPEAT_RATIO and p < ALPHA: "critical steps are repeatable";
   - observed and null share both >= POSITION_SHARE: "critical steps repeat, but by position alone"
     (every problem fails at the same position: locatable, yet not tied to the problem);
   - otherwise "critical steps look like noise".
2. Diversity: distinct correct response texts per problem (mean over problems with a correct sample);
   for every same-problem (correct, incorrect) sample pair, the token where their ids first differ,
   compared with the incorrect one's critical step span [token_start, token_end) (before / at / after),
   and the line where their texts first differ compared with its first wrong line.
3. Critical steps: share of locate rows located, share of located with a positive advantage, step index
   histogram, relative_position quantiles, agreement with the first wrong line over all rows with a ground
   truth (an unlocated row counts as a miss); and every selection rule's agreement on the run's own
   estimate, over all failed samples with a ground truth (section `rules`; core/method/values.agreement_by_rule).
4. Truncation: share of samples (and Monte Carlo rollouts) with finish_reason = 'length'.
5. Preference pairs (`pair_divergence`): per `data` of the branch table, where chosen and rejected first
   differ (tokens into the full response, prefix included, and as a share of the rejected length), the
   line of that divergence against the rejected response's first wrong line, and exact duplicate pairs.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.pipeline import artifacts, layout
from stages.core.pipeline.errors import GpoError, UsageError
from stages.core.sources.toy_tasks import ground_truth
from stages.core.method.values import agreement_by_rule

MIN_PAIRS = 10
REPEAT_RATIO = 1.5
ALPHA = 0.05
POSITION_SHARE = 0.5
PERMUTATIONS = 200

DIAGNOSE_SCHEMA = pa.schema([
    ("section", pa.string()), ("statistic", pa.string()), ("group", pa.string()), ("value", pa.float64()),
    ("count", pa.int64()), ("total", pa.int64()),
])


# Only the columns used: rollouts and estimate are the big tables of a run.
COLUMNS = {"estimate": ["problem_id", "sample_idx", "step_idx", "token_start", "token_end", "value", "value_next",
                        "n_correct", "n_rollouts"],
           "rollouts": ["finish_reason"]}


def _read(run: Path, table: str) -> list[dict] | None:
    folder = artifacts.table_dir(run, table)
    files = artifacts.table_parts(run, table) if folder is not None else []  # manifest-listed parts only
    if not files:
        return None
    return pq.ParquetDataset(files).read(columns=COLUMNS.get(table)).to_pylist()


def load_run(run: Path) -> dict:
    """The run's tables as row lists (None where absent); `sample` is required."""
    run = Path(run)
    if not run.is_dir():
        raise GpoError(f"run directory {run} does not exist")
    tables: dict[str, list | None] = {name: _read(run, name)
                                      for name in ("sample", "estimate", "locate", "rollouts", "branch")}
    if not tables["sample"]:
        raise GpoError(f"{run} has no sample table: run `gpo sample --run {run}` first")
    tables["incomplete"] = [s for s in ("sample", "estimate", "locate", "branch")
                            if (out := layout.stage_dir(run, s)).is_dir() and not layout.success_path(out).exists()]
    return tables


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def common_prefix(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _side(position: int, start: int, end: int) -> str:
    return "before" if position < start else ("at" if position < end else "after")


def _sides(sides: list[str]) -> dict:
    n = len(sides)
    return {"pairs": n, **{k: _share(sides.count(k), n) for k in ("before", "at", "after")},
            **{f"{k}_count": sides.count(k) for k in ("before", "at", "after")}}


def _pair_counts(units: list[tuple[str, int, int]], values: list[int]) -> tuple[int, int]:
    """(matching pairs, pairs) over same-problem pairs; units are (problem, stratum, value)."""
    by_problem: dict = {}
    for (problem, _, _), v in zip(units, values):
        by_problem.setdefault(problem, Counter())[v] += 1
    matches = pairs = 0
    for counts in by_problem.values():
        n = sum(counts.values())
        pairs += n * (n - 1) // 2
        matches += sum(c * (c - 1) // 2 for c in counts.values())
    return matches, pairs


def repeatability(units: list[tuple[str, int, int]], permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Same-step share of same-problem pairs vs a null permuting values within strata (module docstring)."""
    per_problem: dict = {}
    for u in units:
        per_problem.setdefault(u[0], []).append(u)
    units = sorted(u for group in per_problem.values() if len(group) >= 2 for u in group)
    values = [u[2] for u in units]
    matches, pairs = _pair_counts(units, values)
    result: dict = {"units": len(units), "problems": len({u[0] for u in units}), "pairs": pairs, "matches": matches,
              "share": _share(matches, pairs), "permutations": permutations, "null_mean": None,
              "null_sd": None, "null_low": None, "null_high": None, "ratio": None, "p_value": None}
    if not pairs or permutations < 1:
        return result
    strata: dict = {}
    for i, u in enumerate(units):
        strata.setdefault(u[1], []).append(i)
    rng = random.Random(seed)
    null = []
    for _ in range(permutations):
        shuffled = list(values)
        for idx in strata.values():
            pool = [values[i] for i in idx]
            rng.shuffle(pool)
            for i, v in zip(idx, pool):
                shuffled[i] = v
        null.append(_pair_counts(units, shuffled)[0] / pairs)
    null.sort()
    mean = statistics.fmean(null)
    result.update(null_mean=mean, null_sd=statistics.pstdev(null), null_low=null[int(0.025 * (len(null) - 1))],
                  null_high=null[int(round(0.975 * (len(null) - 1)))],
                  ratio=result["share"] / mean if mean > 0 else None,
                  p_value=(1 + sum(x >= result["share"] for x in null)) / (1 + permutations))
    return result


def _identical_state_matches(failed: list[dict], samples: list[dict]) -> int:
    """Same-problem pairs with the same critical step whose prefixes up to it are identical token for token:
    identical states share their rollouts (estimate), so such a match is partly one estimate seen twice."""
    ids = {(r["problem_id"], r["sample_idx"]): r["response_token_ids"] for r in samples}
    groups = Counter((r["problem_id"], r["critical_step"],  # a sample missing from the table matches nothing
                      tuple(ids.get((r["problem_id"], r["sample_idx"]), [id(r)])[:r["prefix_tokens"]]))
                     for r in failed)
    return sum(c * (c - 1) // 2 for c in groups.values())


def verdict(rep: dict, subject: str = "critical steps") -> str:
    """One line, by the rule in the module docstring, with the numbers behind it."""
    if rep["pairs"] < MIN_PAIRS:
        return (f"not enough failed trajectories to say: {rep['pairs']} same-problem pairs of failed "
                f"trajectories with a {subject[:-1]} (need {MIN_PAIRS})")
    numbers = (f"same-problem failed pairs share the step {rep['share']:.3f} ({rep['matches']}/{rep['pairs']} "
               f"pairs, {rep['problems']} problems) vs {rep['null_mean']:.3f} shuffled within equal step counts "
               f"(95% {rep['null_low']:.3f}-{rep['null_high']:.3f}, {rep['permutations']} permutations), "
               f"ratio {_fmt(rep['ratio'])}, p={rep['p_value']:.3g}")
    ratio = rep["ratio"] or 0.0
    if ratio >= REPEAT_RATIO and rep["p_value"] < ALPHA:
        return f"{subject} are repeatable: {numbers}"
    if rep["share"] >= POSITION_SHARE and rep["null_mean"] >= POSITION_SHARE:
        return f"{subject} repeat, but by position alone (not tied to the problem): {numbers}"
    return f"{subject} look like noise: {numbers}"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _truths(samples: list[dict]) -> dict:
    """(problem, sample) -> ground-truth first wrong line of each failed sample whose task knows it."""
    return {(r["problem_id"], r["sample_idx"]): line for r in samples
            if r["reward"] == 0 and (line := ground_truth(r)) is not None}


def _spans(estimate: list[dict] | None, locate: list[dict] | None) -> dict:
    """(problem, sample) -> token span of its located critical step."""
    if not estimate or not locate:
        return {}
    ends = {(r["problem_id"], r["sample_idx"], r["step_idx"]): (r["token_start"], r["token_end"]) for r in estimate}
    return {(r["problem_id"], r["sample_idx"]): ends[(r["problem_id"], r["sample_idx"], r["critical_step"])]
            for r in locate if r["critical_step"] is not None
            and (r["problem_id"], r["sample_idx"], r["critical_step"]) in ends}


def diversity(samples: list[dict], spans: dict, truths: dict) -> dict:
    by_problem: dict = {}
    for r in samples:
        by_problem.setdefault(r["problem_id"], []).append(r)
    distinct, n_correct, vs_critical, vs_truth, pairs = [], [], [], [], 0
    for group in by_problem.values():
        good = [r for r in group if r["reward"] == 1]
        bad = [r for r in group if r["reward"] == 0]
        if good:
            distinct.append(len({r["response_text"] for r in good}))
            n_correct.append(len(good))
        for b in bad:
            key = (b["problem_id"], b["sample_idx"])
            for g in good:
                pairs += 1
                if key in spans:
                    d = common_prefix(g["response_token_ids"], b["response_token_ids"])
                    vs_critical.append(_side(d, *spans[key]))
                if key in truths:
                    line = b["response_text"][:common_prefix(g["response_text"], b["response_text"])].count("\n")
                    vs_truth.append(_side(line, truths[key], truths[key] + 1))
    return {"problems_with_correct": len(distinct),
            "distinct_correct_texts_mean": statistics.fmean(distinct) if distinct else None,
            "correct_samples_mean": statistics.fmean(n_correct) if n_correct else None,
            "correct_incorrect_pairs": pairs, "vs_critical_step": _sides(vs_critical),
            "vs_first_wrong_line": _sides(vs_truth)}


def _quantiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    return {f"q{int(q * 100):02d}": xs[int(round(q * (len(xs) - 1)))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)}


def critical_steps(locate: list[dict]) -> dict:
    located = [r for r in locate if r["critical_step"] is not None]
    hist = Counter(r["critical_step"] for r in located)
    with_truth = [r for r in locate if r["first_wrong_line"] is not None]
    agree = sum(bool(r["agrees"]) for r in with_truth)
    positive = sum((r["advantage"] or 0) > 0 for r in located)
    return {"rows": len(locate), "located": len(located), "located_share": _share(len(located), len(locate)),
            "positive_advantage": positive, "positive_advantage_share": _share(positive, len(located)),
            "step_histogram": dict(sorted(hist.items())),
            "relative_position": _quantiles([r["relative_position"] for r in located]),
            "with_truth": len(with_truth), "agrees": agree, "agreement_all": _share(agree, len(with_truth))}


def _rules(estimate: list[dict] | None, truths: dict) -> dict | None:
    if not estimate or not truths:
        return None
    steps: dict = {}
    for r in estimate:
        steps.setdefault((r["problem_id"], r["sample_idx"]), []).append(r)
    return {rule: {"agrees": n, "with_truth": total, "agreement_all": _share(n, total)}
            for rule, (n, total) in agreement_by_rule(steps, truths).items()}


def truncation(rows: list[dict] | None) -> dict | None:
    if rows is None:
        return None
    n = sum(r["finish_reason"] == "length" for r in rows)
    return {"rows": len(rows), "length": n, "share": _share(n, len(rows))}


def pair_divergence(run: Path, tables: dict | None = None) -> list[dict]:
    """Per `data` of RUN's branch table: where chosen and rejected first differ, and duplicate pairs.

    Token positions index the full response (kept prefix included, also with --prefix in-prompt). The line
    of divergence is compared with the rejected response's first wrong line where the task knows it."""
    tables = tables if tables is not None else load_run(run)
    pairs = tables.get("branch") or []
    problems: dict = {}
    for r in tables["sample"]:
        problems.setdefault(r["problem_id"], r)
    by_data: dict = {}
    for p in pairs:
        by_data.setdefault(p["data"], []).append(p)
    result = []
    for data, rows in sorted(by_data.items()):
        tokens, shares, sides, keys = [], [], [], set()
        for p in rows:
            keys.add((tuple(p["prompt_token_ids"]), tuple(p["chosen_token_ids"]), tuple(p["rejected_token_ids"])))
            sample = problems.get(p["problem_id"])
            in_prompt = p["prefix_placement"] == "in-prompt"
            lead = p["prefix_tokens"] if in_prompt else 0
            d = lead + common_prefix(p["chosen_token_ids"], p["rejected_token_ids"])
            length = lead + len(p["rejected_token_ids"])
            tokens.append(d)
            if length:
                shares.append(d / length)
            if sample is None:
                continue
            lead_text = p["prompt"][len(sample["prompt_text"]):] if in_prompt else ""
            chosen, rejected = lead_text + p["chosen"], lead_text + p["rejected"]
            truth = ground_truth({**sample, "response_text": rejected, "reward": 0})
            if truth is not None:
                line = rejected[:common_prefix(chosen, rejected)].count("\n")
                sides.append(_side(line, truth, truth + 1))
        result.append({"data": data, "pairs": len(rows), "distinct_pairs": len(keys),
                       "duplicate_share": _share(len(rows) - len(keys), len(rows)),
                       "diverge_tokens_mean": statistics.fmean(tokens),
                       "diverge_tokens_median": statistics.median(tokens),
                       "diverge_share_mean": statistics.fmean(shares) if shares else None,
                       "diverge_share_median": statistics.median(shares) if shares else None,
                       "vs_first_wrong_line": _sides(sides)})
    return result


def diagnose(run: Path, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Every statistic of the module docstring as one JSON-able dict (see `rows` for the table form)."""
    if permutations < 1:
        raise UsageError("--permutations must be at least 1")
    t = load_run(run)
    samples, locate = t["sample"], t["locate"]
    truths = _truths(samples)
    failed = [r for r in (locate or []) if r["reward"] == 0 and r["critical_step"] is not None]
    rep_critical = repeatability([(r["problem_id"], r["num_steps"], r["critical_step"]) for r in failed],
                                 permutations, seed) if locate is not None else None
    lines = {(r["problem_id"], r["sample_idx"]): len(r["response_text"].split("\n")) for r in samples}
    rep_truth = repeatability([(k[0], lines[k], v) for k, v in sorted(truths.items())], permutations, seed) \
        if truths else None
    if rep_critical is not None:
        rep_critical["identical_state_matches"] = _identical_state_matches(failed, samples)
    if rep_truth is not None:  # the task's own ground truth: no estimation noise, no shared rollouts
        line = verdict(rep_truth, "first wrong lines") + " (ground truth)"
    elif rep_critical is not None:
        line = verdict(rep_critical)
        same = rep_critical["identical_state_matches"]
        if rep_critical["matches"] and same * 2 >= rep_critical["matches"]:
            line += (f"; {same} of the {rep_critical['matches']} matching pairs reset at an identical state, whose "
                     "rollouts are shared, so part of the repeat may come from the estimate")
    else:
        line = "not enough failed trajectories to say: no locate table and no ground-truth first wrong lines"
    return {"run": str(run), "verdict": line, "incomplete_stages": t["incomplete"],
            "repeatability_critical_step": rep_critical, "repeatability_first_wrong_line": rep_truth,
            "diversity": diversity(samples, _spans(t["estimate"], locate), truths),
            "critical_steps": critical_steps(locate) if locate is not None else None,
            "rules": _rules(t["estimate"], truths),
            "truncation": {"sample": truncation(samples), "rollouts": truncation(t["rollouts"])},
            "pairs": pair_divergence(run, t) if t["branch"] is not None else None}


def rows(summary: dict) -> list[dict]:
    """The summary as (section, statistic, group, value, count, total) rows: the counts behind each value."""
    out = []

    def add(section, statistic, value, count=None, total=None, group=""):
        out.append({"section": section, "statistic": statistic, "group": str(group),
                    "value": None if value is None else float(value), "count": count, "total": total})

    for name in ("critical_step", "first_wrong_line"):
        rep = summary[f"repeatability_{name}"]
        if rep:
            sec = f"repeatability:{name}"
            add(sec, "same_step_share", rep["share"], rep["matches"], rep["pairs"])
            if "identical_state_matches" in rep:
                add(sec, "identical_state_matches", rep["identical_state_matches"], rep["identical_state_matches"],
                    rep["matches"])
            add(sec, "problems", rep["problems"])
            add(sec, "units", rep["units"])
            for k in ("null_mean", "null_sd", "null_low", "null_high", "ratio", "p_value"):
                add(sec, k, rep[k], None, rep["permutations"] if k != "ratio" else None)
    div = summary["diversity"]
    add("diversity", "distinct_correct_texts_mean", div["distinct_correct_texts_mean"], None,
        div["problems_with_correct"])
    add("diversity", "correct_samples_mean", div["correct_samples_mean"], None, div["problems_with_correct"])
    for ref in ("vs_critical_step", "vs_first_wrong_line"):
        for side in ("before", "at", "after"):
            add("diversity", f"diverge_{side}_{ref[3:]}", div[ref][side], div[ref][f"{side}_count"], div[ref]["pairs"])
    cs = summary["critical_steps"]
    if cs:
        add("critical_steps", "located_share", cs["located_share"], cs["located"], cs["rows"])
        add("critical_steps", "positive_advantage_share", cs["positive_advantage_share"], cs["positive_advantage"],
            cs["located"])
        add("critical_steps", "agreement_all", cs["agreement_all"], cs["agrees"], cs["with_truth"])
        for step, n in cs["step_histogram"].items():
            add("critical_steps", "step_share", n / cs["located"], n, cs["located"], step)
        for q, v in cs["relative_position"].items():
            add("critical_steps", f"relative_position_{q}", v, None, cs["located"])
    for rule, r in (summary["rules"] or {}).items():
        add("rules", "agreement_all", r["agreement_all"], r["agrees"], r["with_truth"], rule)
    for table, tr in summary["truncation"].items():
        if tr:
            add("truncation", f"{table}_length_share", tr["share"], tr["length"], tr["rows"])
    for p in summary["pairs"] or []:
        add("pairs", "duplicate_share", p["duplicate_share"], p["pairs"] - p["distinct_pairs"], p["pairs"], p["data"])
        for k in ("diverge_tokens_mean", "diverge_tokens_median", "diverge_share_mean", "diverge_share_median"):
            add("pairs", k, p[k], None, p["pairs"], p["data"])
        v = p["vs_first_wrong_line"]
        for side in ("before", "at", "after"):
            add("pairs", f"diverge_{side}_first_wrong_line", v[side], v[f"{side}_count"], v["pairs"], p["data"])
    return out


def write(run: Path, summary: dict) -> Path:
    """RUN/diagnose/diagnose.parquet and summary.json, each written atomically; returns the folder."""
    folder = Path(run) / "diagnose"
    table = pa.Table.from_pylist(rows(summary), schema=DIAGNOSE_SCHEMA)
    artifacts.write_parquet_atomic(table, folder / "diagnose.parquet", {"stage": "diagnose"})
    artifacts.write_json_atomic(layout.summary_path(folder), summary)
    return folder
