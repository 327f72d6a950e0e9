"""Benchmark 3: GPO's generation overhead over the baseline built from the same samples.

    .venv/bin/python bench/gpo_overhead.py runs/demo/gpo

Baseline (whole-trajectory pairs) costs the sampled tokens only. GPO adds the Monte Carlo rollouts of
`estimate` and the new continuations of `branch`. The ratio (sample + rollouts + branch) / sample is the
figure to set against the paper's ~1.8-2x (which the paper states for total compute, training included).
All numbers come from the run's tables; the query is printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUERY = ("select (select sum(num_response_tokens) from sample) as sample_tokens, "
         "(select coalesce(sum(num_tokens), 0) from rollouts where shared_from_sample is null) as rollout_tokens, "
         "(select coalesce(sum(num_tokens), 0) from continuations where data = 'gpo' and origin = 'new') "
         "as branch_tokens")


def main() -> None:
    from stages.core.pipeline.query import run_query

    if len(sys.argv) != 2:
        sys.exit("usage: bench/gpo_overhead.py RUN (a run with sample, estimate and branch)")
    run = Path(sys.argv[1])
    sample_tokens, rollout_tokens, branch_tokens = run_query(run, QUERY)[1][0]
    gpo = sample_tokens + rollout_tokens + branch_tokens
    result = {"run": str(run), "sample_tokens": sample_tokens, "rollout_tokens": rollout_tokens,
              "branch_tokens": branch_tokens, "gpo_total": gpo, "baseline_total": sample_tokens,
              "overhead_ratio": gpo / sample_tokens}
    print(f"sample {sample_tokens}, Monte Carlo rollouts {rollout_tokens}, branch {branch_tokens} tokens")
    print(f"GPO / baseline generated tokens = {gpo} / {sample_tokens} = {result['overhead_ratio']:.2f}x "
          "(paper: about 1.8-2x of total compute)")
    print(f"query: gpo sql {run} \"{QUERY}\"")
    out = REPO / "bench" / "results" / "gpo_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
