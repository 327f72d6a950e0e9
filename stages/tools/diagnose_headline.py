"""The headline of a diagnosis in a few lines of text, for `gpo diagnose` and the demo's summary."""

from __future__ import annotations


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _sides_text(v: dict) -> str:
    if not v["pairs"]:
        return "n/a"
    return f"{v['before']:.2f}/{v['at']:.2f}/{v['after']:.2f} of {v['pairs']}"


def headline(summary: dict) -> list[str]:
    """A few printable lines of `stages.tools.diagnose.diagnose(run)` (`gpo diagnose` prints them, the demo's
    summary.json keeps them): verdict first."""
    lines = [f"verdict: {summary['verdict']}"]
    truth = summary["repeatability_first_wrong_line"]
    crit = summary["repeatability_critical_step"]
    if truth and crit and crit["pairs"]:
        lines.append(f"critical steps repeat {crit['share']:.3f} vs {fmt(crit['null_mean'])} shuffled "
                     f"(ratio {fmt(crit['ratio'])}, {crit['pairs']} pairs, {crit['identical_state_matches']} "
                     f"matches at an identical state)")
    div = summary["diversity"]
    lines.append(f"distinct correct texts per problem {fmt(div['distinct_correct_texts_mean'])}; correct/incorrect "
                 f"pairs diverge before/at/after the critical step {_sides_text(div['vs_critical_step'])}, "
                 f"the first wrong line {_sides_text(div['vs_first_wrong_line'])}")
    cs = summary["critical_steps"]
    if cs:
        lines.append(f"critical steps: located {fmt(cs['located_share'])}, positive advantage "
                     f"{fmt(cs['positive_advantage_share'])}, median relative position "
                     f"{fmt(cs['relative_position'].get('q50'))}, agree with the first wrong line "
                     f"{fmt(cs['agreement_all'])} ({cs['agrees']}/{cs['with_truth']})")
    if summary.get("rules"):
        lines.append("every rule on this estimate, agreement with the first wrong line: " + ", ".join(
            f"{rule} {fmt(r['agreement_all'])}" for rule, r in summary["rules"].items()))
    tr = summary["truncation"]
    lines.append("truncated: " + ", ".join(f"{k} {v['share']:.3f} ({v['length']}/{v['rows']})"
                                           for k, v in tr.items() if v and v["rows"]))
    for p in summary["pairs"] or []:
        lines.append(f"pairs {p['data']}: {p['pairs']} ({p['duplicate_share']:.0%} exact duplicates), diverge at "
                     f"token {p['diverge_tokens_median']:g} (median; {fmt(p['diverge_share_median'])} of the "
                     f"rejected), before/at/after its first wrong line {_sides_text(p['vs_first_wrong_line'])}")
    return lines
