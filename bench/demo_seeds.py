"""The demo's seeds together: each paired difference per seed and their fixed-effect mean over seeds.

    python bench/demo_seeds.py runs/demo-s0/summary.json runs/demo-s1/summary.json runs/demo-s2/summary.json

Each seed draws its own test problems and trains its own models, so the seeds' paired differences are
independent; their mean over seeds has the standard error sqrt(sum se_i^2) / seeds (se_i from each seed's
interval, clustered by problem). It holds the trained models fixed (a fixed-effect mean): it says how well
these models were measured, not how another training seed would vary. Beside it, the interval over seeds
(mean +- t(seeds - 1) sd / sqrt(seeds) of the per-seed differences) treats each seed as one draw of training
data, training and test problems: it is the one to read for "would it hold with another seed", and it is
wide with three seeds. The primary family (each GPO arm minus same-samples, greedy and the hard-trap probe)
is Holm-adjusted again over the pooled p-values; everything else is exploratory. Writes
bench/results/demo_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Z = 1.96
SHOWN = ("greedy", "sampled", "probe trap-hard P(gold)", "probe trap-hard top")


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t975(df: int) -> float:
    """Student's t 97.5% quantile: the table to 10 degrees of freedom, then the Cornish-Fisher expansion
    (within 0.003 of the exact value from 10 on)."""
    if df in T975:
        return T975[df]
    return Z + (Z ** 3 + Z) / (4 * df) + (5 * Z ** 5 + 16 * Z ** 3 + 3 * Z) / (96 * df ** 2)


def over_seeds(diffs: list[float]) -> tuple[float, float] | None:
    """The interval over seeds of the per-seed differences (None with one seed)."""
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean - t975(n - 1) * sd / math.sqrt(n), mean + t975(n - 1) * sd / math.sqrt(n)


def pool(rows: list[dict]) -> dict:
    """Fixed-effect mean of independent per-seed differences, from each one's symmetric 95% interval."""
    diffs = [r["diff"] for r in rows]
    ses = [(r["ci_high"] - r["ci_low"]) / (2 * Z) for r in rows]
    mean, se = sum(diffs) / len(diffs), math.sqrt(sum(s * s for s in ses)) / len(diffs)
    return {"diff": mean, "ci_low": mean - Z * se, "ci_high": mean + Z * se,
            "problems": sum(r["problems"] for r in rows)}


def combine(summaries: list[dict]) -> dict:
    from stages.core.method.values import holm, interval_p_value
    from stages.tools.demo.summary import verdict

    keyed: dict[tuple, list[dict]] = {}
    for summary in summaries:
        for r in summary["differences"]:
            key = (r["arm"], r.get("reference", "same-samples"), r["metric"])
            keyed.setdefault(key, []).append(r)
    rows = []
    for (arm, ref, metric), per_seed in keyed.items():
        if len(per_seed) != len(summaries):  # a row some seed lacks (an arm added later) is not pooled
            continue
        pooled = pool(per_seed)
        pooled["p"] = interval_p_value(pooled["diff"], pooled["ci_low"], pooled["ci_high"])
        rows.append({"arm": arm, "reference": ref, "metric": metric, "primary": per_seed[0]["primary"],
                     "per_seed": [[r["diff"], r["ci_low"], r["ci_high"]] for r in per_seed],
                     "over_seeds": over_seeds([r["diff"] for r in per_seed]), **pooled})
    family = [r for r in rows if r["primary"]]
    for r, adjusted in zip(family, holm([r["p"] for r in family])):
        r["p_holm"] = adjusted
    for r in rows:
        r["reading"] = verdict(r["ci_low"], r["ci_high"], r.get("p_holm"))  # the demo summary's own reading
    accuracy = {label: [s["accuracy"][label]["greedy"]["pass@1"] for s in summaries]
                for label in summaries[0]["accuracy"]}
    agreement = {arm: [s["agreement"][arm]["agreement"] for s in summaries] for arm in summaries[0]["agreement"]}
    tokens = {arm: [s["training"][arm]["generated_tokens"] for s in summaries] for arm in summaries[0]["training"]}
    return {"seeds": len(summaries), "rows": rows, "greedy_accuracy": accuracy, "agreement": agreement,
            "generated_tokens": tokens, "wall_seconds": [s["wall_seconds"] for s in summaries]}


def show(result: dict) -> None:
    f = lambda x: f"{x:+.3f}"  # noqa: E731
    print(f"{result['seeds']} seeds; greedy accuracy per seed:")
    for label, values in result["greedy_accuracy"].items():
        print(f"  {label:16} " + " ".join(f"{v:.3f}" for v in values)
              + (f"   agreement {' '.join(f'{a:.2f}' for a in result['agreement'][label])}"
                 if label in result["agreement"] else "")
              + (f"   tokens {round(sum(result['generated_tokens'][label]) / result['seeds']):,}"
                 if label in result["generated_tokens"] else ""))
    for primary in (True, False):
        print("PRIMARY (Holm over the pooled family)" if primary else "exploratory (unadjusted)")
        for r in (r for r in result["rows"] if r["primary"] == primary and r["metric"] in SHOWN):
            seeds = "  ".join(f"{f(d)} [{f(lo)}, {f(hi)}]" for d, lo, hi in r["per_seed"])
            holm = f" p_Holm {r['p_holm']:.3f}" if primary else ""
            between = r["over_seeds"]
            print(f"  {r['arm']:16} - {r['reference']:13} {r['metric']:24} seeds: {seeds}   pooled "
                  f"{f(r['diff'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]{holm} {r['reading']}"
                  + (f"; over seeds [{f(between[0])}, {f(between[1])}]" if between else ""))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summaries", nargs="+", type=Path, help="each seed's summary.json (gpo demo --out DIR)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "demo_seeds.json")
    a = ap.parse_args(argv)
    missing = [str(p) for p in a.summaries if not p.is_file()]
    if missing:
        raise SystemExit(f"error: no summary at {', '.join(missing)} (run `gpo demo --seed S --out DIR` first)")
    result = combine([json.loads(p.read_text()) for p in a.summaries])
    show(result)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
