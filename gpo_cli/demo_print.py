"""The demo's summary on the terminal: the primary comparison first, named as such, then the rest."""

from __future__ import annotations

from gpo_cli.common import out, wide
from stages.tools.demo.arms import BASELINE, PAPER, RANDOM
from stages.tools.demo.summary import PRIMARY_KIND, RESOLVE

WIDE = 160


DATA_PHASE = ("sample", "estimate", "locate", "branch")  # the commands that make every arm's data


def _f(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_models(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"toy:{r['task']} test split (DPO, each arm's validation-chosen lr/beta, equal steps; "
                    "95% intervals clustered by problem)")
    for col in ("model", "greedy [95% CI]", f"{PRIMARY_KIND} P(gold) / top", "sampled pass@1 [95% CI]",
                "steps x pairs (presented)", "lr / beta", "pairs (dups)", "generated tokens"):
        t.add_column(col)
    for label, modes in r["accuracy"].items():
        g, s = modes["greedy"], modes["sampled"]
        trap = r["probe"].get(label, {}).get(PRIMARY_KIND, {})
        tr = r["training"].get(label)
        steps = "-"
        if tr:
            per_step = "/".join(str(x) for x in tr["pairs_per_step"] or []) or "?"
            steps = f"{tr['optimizer_steps']} x {per_step} ({_f(tr['pairs_presented'], 'd')})"
        t.add_row(label, f"{_f(g['pass@1'])} [{_f(g['ci_low'])}, {_f(g['ci_high'])}]",
                  f"{_f(trap.get('p_gold'))} / {_f(trap.get('top_share'))}",
                  f"{_f(s['pass@1'])} [{_f(s['ci_low'])}, {_f(s['ci_high'])}]", steps,
                  f"{tr['learning_rate']:g} / {tr['beta']:g}" if tr else "-",
                  f"{tr['distinct_pairs']} ({tr['duplicates_dropped']})" if tr else "-",
                  f"{tr['generated_tokens']:,}" if tr else "-")
    wide(WIDE).print(t)


def print_differences(r: dict, primary: bool) -> None:
    from rich.table import Table

    rows = [row for row in r["differences"] if row["primary"] == primary]
    if not rows:
        return
    title = (f"PRIMARY: each GPO arm minus {BASELINE}, greedy accuracy and probe {PRIMARY_KIND} P(gold), "
             "paired over test problems; p Holm-adjusted over this family" if primary else
             f"exploratory: every model minus {BASELINE}, each GPO arm minus {RANDOM} and minus {PAPER} (95% CI, "
             "unadjusted: read as descriptive)")
    t = Table(title=title)
    for col in ("arm", "minus", "metric", "problems", "difference", "95% CI", "p",
                *(["p (Holm)"] if primary else []), "reading"):
        t.add_column(col)
    for row in rows:  # a summary written before random reset was a reference has no "reference": same-samples
        t.add_row(row["arm"], row.get("reference", BASELINE), row["metric"], str(row["problems"]),
                  f"{row['diff']:+.3f}",
                  f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]", f"{row['p']:.3f}",
                  *([f"{row['p_holm']:.3f}"] if primary else []), row["verdict"])
    wide(WIDE).print(t)


def print_demo_summary(r: dict) -> None:
    print_models(r)
    print_differences(r, primary=True)
    print_differences(r, primary=False)
    plan, needed = r["plan"], r["needed_problems"]
    sizes = ", ".join(f"{metric} ~{n}" for metric, n in needed.items() if n is not None)
    out.print(f"test set: {plan['greedy_problems']} problems (greedy, probe), the first {plan['test_problems']} "
              f"sampled x {plan['eval_n']}; for +-{RESOLVE:.2f} on the primary differences the measured variances "
              f"call for: {sizes + ' problems' if sizes else 'n/a (no variance in the paired differences)'}")
    for arm, a in r["agreement"].items():
        if a["agreement"] is not None:
            out.print(f"{arm}: critical step = first wrong line for {a['agrees']}/{a['failed_with_truth']} failed "
                      f"trajectories ({a['agreement']:.3f}; located {a['located_share']:.3f})")
    out.print("where chosen and rejected diverge (token; share of the rejected response; before/at/after its "
              "first wrong line):")
    for arm, d in r["pair_divergence"].items():
        v = d["vs_first_wrong_line"]
        sides = f"{v['before']:.2f}/{v['at']:.2f}/{v['after']:.2f}" if v["pairs"] else "n/a"
        out.print(f"  {arm}: median token {d['diverge_tokens_median']:g}, share {d['diverge_share_median'] or 0:.2f}, "
                  f"{sides}; {d['pairs']} pairs, {d['duplicate_share']:.0%} exact duplicates")
    out.print("gpo diagnose (the GPO run): " + "\n  ".join(r["diagnose"]))
    out.print(f"budget matching: {r['budget']['rule']}")
    # (name, wall, CPU, generated tokens); a summary written before tokens were counted has none ("-")
    timings = [(name, wall, cpu, tokens[0] if tokens else None) for name, wall, cpu, *tokens in r["timings"]]
    each = ", ".join(f"{name} {wall:.0f}/{cpu:.0f}/{'-' if tokens is None else tokens}"
                     for name, wall, cpu, tokens in timings)
    out.print(f"time (wall s / CPU s / generated tokens): {each}; total {r['wall_seconds']:.0f}s wall")
    data = [(wall, cpu, tokens) for name, wall, cpu, tokens in timings if name.split()[0] in DATA_PHASE]
    if data:
        wall, cpu = sum(w for w, _, _ in data), sum(c for _, c, _ in data)
        counted = [t for _, _, t in data if t is not None]
        tokens = (f", {sum(counted):,} generated tokens ({sum(counted) / max(cpu, 1e-9):.0f} per CPU-s)"
                  if len(counted) == len(data) else "")
        out.print(f"data phase (sample, estimate, locate, branch of every arm): {wall:.0f}s wall, {cpu:.0f} CPU-s"
                  f"{tokens}")
    primary = [row for row in r["differences"] if row["primary"]]
    if primary:
        out.print("[bold]reading (primary, Holm-adjusted):[/bold] " + "; ".join(
            f"{row['arm']} {row['metric']}: {row['verdict']} ({row['diff']:+.3f} [{row['ci_low']:+.3f}, "
            f"{row['ci_high']:+.3f}], p_Holm {row['p_holm']:.3f})" for row in primary) + ". One seed.")
