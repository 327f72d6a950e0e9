"""SmolLM2-135M-Instruct end to end on CPU: GPO with two locators against the same-sample baseline.

    .venv/bin/python bench/smollm2_e2e.py                       # docs/experiments.md's run (~50 min, 2 busy cores)
    .venv/bin/python bench/smollm2_e2e.py --train-problems 3 --test-problems 3 --n 2 --k 2 --m 2 \
        --eval-n 2 --max-new-tokens 16 --steps 2 --batch-size 2 --out /tmp/e2e --json /tmp/e2e.json   # tiny

Every stage runs through the `gpo` CLI in a subprocess, exactly as a user would type it:
    gpo smollm2 (GGUF -> model folder, once)
    gpo sample   train problems (reasoning-gym, --seed-train), n samples each
    gpo estimate --split authors --k K --estimator full   (the paper's estimator and the authors' step rule)
    gpo locate   --rule abs-advantage   (the paper's)
    gpo branch   --m M --baseline --random-m 0   (GPO pairs and the whole-trajectory pairs of the same samples)
    gpo locate   --rule changepoint, then gpo branch --m M, on a copy of the same sample and estimate (run-changepoint)
    gpo train    --method dpo --data gpo        }  same base, settings, optimizer steps and batch, for gpo,
    gpo train    --method dpo --data baseline   }  gpo-changepoint and baseline
    gpo eval     base, gpo, gpo-changepoint, baseline on held-out problems (--seed-test), sampled n + one greedy
    gpo diagnose
Then it reads the run's tables (DuckDB over the Parquet files) for accuracy with 95% intervals clustered by
problem, the paired differences over test problems, critical-step positions, the change-point rule's
confidence on a real model's value curves (its distribution, the share of trajectories each --min-confidence
would keep, how often it picks the paper's step), and tokens and wall time per stage (stage manifests + the
subprocess's own clock), prints a summary and writes a JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Measured (docs/experiments.md "SmolLM2-135M end to end on CPU"): SmolLM2 scored 55% (40 samples, 10 problems) here at
# T=0.6, top-p 0.9, 128 new tokens, and 27.5% on chain_sum with 2 one-digit terms.
TASK = ("basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=1&operators=+,-"
        "&allow_parentheses=false&allow_negation=false")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "smollm2-e2e", help="working folder")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "smollm2_e2e.json")
    p.add_argument("--model", type=Path, help="SmolLM2 model folder (default: OUT/model via `gpo smollm2`)")
    p.add_argument("--task", default=TASK, help="reasoning-gym dataset?options (size and seed are added)")
    p.add_argument("--train-problems", type=int, default=24)
    p.add_argument("--test-problems", type=int, default=32)
    p.add_argument("--seed-train", type=int, default=1)
    p.add_argument("--seed-test", type=int, default=2)
    p.add_argument("--n", type=int, default=4, help="samples per train problem")
    p.add_argument("--k", type=int, default=4, help="Monte Carlo rollouts per state")
    p.add_argument("--m", type=int, default=4, help="branches at the critical step")
    p.add_argument("--eval-n", type=int, default=4, help="sampled answers per test problem (plus one greedy)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=16, help="optimizer steps, the same for both arms")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tune)")
    p.add_argument("--max-length", type=int, default=320, help="DPO prompt+response tokens")
    p.add_argument("--permutations", type=int, default=100, help="gpo diagnose shuffles")
    return p.parse_args(argv)


class Gpo:
    """`gpo ARGS` in a subprocess (python -m gpo_cli.main, so the checkout's code runs); stops on failure."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, *args, capture: bool = False) -> str:
        argv = [sys.executable, "-m", "gpo_cli.main", *map(str, args)]
        print(f"$ gpo {' '.join(map(str, args))}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.time()
        proc = subprocess.run(argv, cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE if capture else None)
        self.timings[name] = round(time.time() - t0, 1)
        if proc.returncode != 0:
            raise SystemExit(f"error: `gpo {args[0]}` ({name}) failed with exit code {proc.returncode}")
        return proc.stdout or ""


def rg_source(task: str, size: int, seed: int) -> str:
    sep = "&" if "?" in task else "?"
    return f"reasoning-gym:{task}{sep}size={size}&seed={seed}"


def run_chain(a: argparse.Namespace, gpo: Gpo) -> dict:
    run, out = a.out / "run", a.out
    model = a.model or out / "model"
    if a.model is None:
        gpo("smollm2", "smollm2", "--out", model)
    gen = ("--temperature", a.temperature, "--top-p", a.top_p, "--max-new-tokens", a.max_new_tokens,
           "--backend", "hf", "--seed", 0)
    gpo("sample", "sample", "--problems", rg_source(a.task, a.train_problems, a.seed_train), "--model", model,
        "--run", run, "--n", a.n, *gen)
    gpo("estimate", "estimate", "--run", run, "--k", a.k, "--split", "authors", "--estimator", "full", "--seed", 0)
    gpo("locate", "locate", "--run", run, "--rule", "abs-advantage")
    gpo("branch", "branch", "--run", run, "--m", a.m, "--baseline", "--random-m", 0, "--seed", 0)
    from stages.tools.demo.driver import copy_stage  # the demo's copy of a finished stage

    cp = out / "run-changepoint"  # the same samples and estimate, the change-point rule
    for stage in ("sample", "estimate"):
        copy_stage(run, cp, stage)
    gpo("locate changepoint", "locate", "--run", cp, "--rule", "changepoint")
    gpo("branch changepoint", "branch", "--run", cp, "--m", a.m, "--random-m", 0, "--seed", 0)
    models = {"base": model}
    for arm, arm_run, data in ARMS:
        dest = out / "train" / f"dpo-{arm}"
        gpo(f"train {arm}", "train", "--run", out / arm_run, "--method", "dpo", "--data", data, "--model", model,
            "--out", dest, "--max-steps", a.steps, "--batch-size", a.batch_size, "--learning-rate",
            a.learning_rate, "--beta", a.beta, "--max-length", a.max_length, "--lora", a.lora,
            "--save-steps", 1000, "--seed", 0)
        models[arm] = dest / "model"
    test = rg_source(a.task, a.test_problems, a.seed_test)
    for label, path in models.items():
        gpo(f"eval {label}", "eval", "--model", path, "--problems", test, "--run", run, "--label", label,
            "--n", a.eval_n, *gen)
    headline = gpo("diagnose", "diagnose", run, "--permutations", a.permutations, capture=True)
    return {"run": run, "changepoint_run": cp, "model": model, "models": models, "test_source": test,
            "diagnose_stdout": headline}


ARMS = (("gpo", "run", "gpo"), ("gpo-changepoint", "run-changepoint", "gpo"), ("baseline", "run", "baseline"))
CONFIDENCES = (0.5, 0.8, 0.9)  # --min-confidence thresholds whose kept share the summary reports



def sql(query: str, params: list | None = None) -> list[tuple]:
    import duckdb

    return duckdb.connect().execute(query, params or []).fetchall()


def per_problem(run: Path, label: str, mode: str) -> dict[str, float]:
    rows = sql(f"select problem_id, avg(reward) from read_parquet('{run}/eval_{label}/*.parquet') "
               "where mode = ? group by problem_id", [mode])
    return {pid: float(v) for pid, v in rows}


def accuracy(run: Path, labels: list[str]) -> dict:
    from stages.core.method.values import problem_mean_ci

    result: dict = {}
    for label in labels:
        result[label] = {}
        for mode, answers, truncated in sql(
                f"select mode, count(*), avg((finish_reason = 'length')::int) "
                f"from read_parquet('{run}/eval_{label}/*.parquet') group by mode order by mode"):
            values = list(per_problem(run, label, mode).values())
            mean, low, high = problem_mean_ci(values)
            result[label][mode] = {"accuracy": mean, "ci_low": low, "ci_high": high, "problems": len(values),
                                   "answers": answers, "truncated_share": truncated}
    return result


def paired(run: Path, a: str, b: str, mode: str, z: float = 1.96) -> dict:
    """mean over test problems of (a's per-problem accuracy - b's), mean +- z sd / sqrt(problems): the same
    clustering as problem_mean_ci, without its clamp to [0, 1] (a difference can be negative)."""
    pa_, pb = per_problem(run, a, mode), per_problem(run, b, mode)
    diffs = [pa_[p] - pb[p] for p in sorted(set(pa_) & set(pb))]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, n - 1))
    low, high = mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)
    reading = f"{a} better" if low > 0 else f"{b} better" if high < 0 else "not distinguishable"
    return {"a": a, "b": b, "mode": mode, "problems": n, "difference": mean, "ci_low": low, "ci_high": high,
            "reading": reading,
            "problems_gpo_higher": sum(d > 0 for d in diffs), "problems_baseline_higher": sum(d < 0 for d in diffs)}


def critical_steps(run: Path) -> dict:
    (failed, located, steps_median, rel_q25, rel_q50, rel_q75, prefix_median), = sql(
        "select count(*), count(critical_step), median(num_steps), quantile_cont(relative_position, 0.25), "
        "median(relative_position), quantile_cont(relative_position, 0.75), median(prefix_tokens) "
        f"from read_parquet('{run}/locate/*.parquet')")
    hist = sql("select critical_step, count(*) from read_parquet(?) where critical_step is not null "
               "group by 1 order by 1", [f"{run}/locate/*.parquet"])
    return {"trajectories": failed, "located": located, "num_steps_median": steps_median,
            "relative_position_q25_q50_q75": [rel_q25, rel_q50, rel_q75], "prefix_tokens_median": prefix_median,
            "critical_step_histogram": {int(s): int(c) for s, c in hist}}


def changepoint_confidence(paper_run: Path, cp_run: Path) -> dict:
    """The change-point rule on a real model's value curves: its confidence (posterior share of the chosen
    step) over the failed trajectories it located, the share --min-confidence t would keep, and how often it
    chose the paper's step (abs-advantage on the same estimate)."""
    cp, paper = f"read_parquet('{cp_run}/locate/*.parquet')", f"read_parquet('{paper_run}/locate/*.parquet')"
    (located, q10, q25, q50, q75, q90), = sql(
        "select count(*), quantile_cont(confidence, 0.1), quantile_cont(confidence, 0.25), median(confidence), "
        f"quantile_cont(confidence, 0.75), quantile_cont(confidence, 0.9) from {cp} where critical_step is not null")
    kept = {str(t): sql(f"select avg((confidence >= {t})::int) from {cp} where critical_step is not null")[0][0]
            for t in CONFIDENCES}
    (both, same), = sql(f"select count(*), count(*) filter (where c.critical_step = p.critical_step) from {cp} c "
                        f"join {paper} p using (problem_id, sample_idx) "
                        "where c.critical_step is not null and p.critical_step is not null")
    return {"located": located, "confidence_q10_q25_q50_q75_q90": [q10, q25, q50, q75, q90],
            "kept_share_at_min_confidence": kept, "same_step_as_paper": same / both if both else None,
            "compared": both}


def stage_cost(folder: Path) -> dict:
    """Stats and wall seconds summed over a finished stage's shard manifests."""
    from stages.core.pipeline import layout

    total = {"wall_seconds": 0.0}
    for path in sorted(layout.shards_dir(folder).glob("*.json")):
        manifest = json.loads(path.read_text())
        total["wall_seconds"] += manifest.get("wall_seconds", 0.0)
        for k, v in manifest.get("stats", {}).items():
            if isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + v
        # The backend's own count: a stage that generated nothing new (branch reusing every rollout) has 0.
        backend = manifest.get("backend") or {}
        for k in ("generated_tokens", "prompt_tokens_computed"):
            total[f"backend_{k}"] = total.get(f"backend_{k}", 0) + backend.get(k, 0)
    return total


def shown(path: Path) -> str:
    """A path inside the checkout, repo-relative: the committed result names no machine's folders."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def collect(a: argparse.Namespace, chain: dict, gpo: Gpo, started: float) -> dict:
    from stages.core.pipeline import layout

    run = chain["run"]
    labels = list(chain["models"])
    stages = {s: stage_cost(run / s) for s in ("sample", "estimate", "locate", "branch")}
    stages.update({f"eval {label}": stage_cost(run / f"eval_{label}") for label in labels})
    for name, seconds in gpo.timings.items():
        stages.setdefault(name, {})["subprocess_seconds"] = seconds
    training = {}
    for arm, _, _ in ARMS:
        s = json.loads(layout.summary_path(a.out / "train" / f"dpo-{arm}").read_text())
        training[arm] = {"optimizer_steps": s.get("global_step"), "batch_size": a.batch_size,
                         "distinct_pairs": s.get("rows"), "duplicates_dropped": s.get("duplicates_dropped", 0)}
    pairs = dict(sql(f"select data, count(*) from read_parquet('{run}/branch/*.parquet') group by 1"))
    train_acc = sql(f"select count(*), avg(reward), avg((finish_reason = 'length')::int) "
                    f"from read_parquet('{run}/sample/*.parquet')")[0]
    diag = json.loads(layout.summary_path(run / "diagnose").read_text())
    headline = [line for line in chain["diagnose_stdout"].splitlines()
                if line.startswith(("critical steps", "distinct correct", "truncated", "pairs ", "verdict"))]
    return {
        "settings": {k: shown(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "train_source": rg_source(a.task, a.train_problems, a.seed_train), "test_source": chain["test_source"],
        "train_samples": {"answers": train_acc[0], "accuracy": train_acc[1], "truncated_share": train_acc[2]},
        "branch_pairs": {str(k): int(v) for k, v in pairs.items()},
        "training": training,
        "accuracy": accuracy(run, labels),
        "paired_gpo_minus_baseline": [paired(run, "gpo", "baseline", m) for m in ("sampled", "greedy")],
        "paired_changepoint_minus_baseline": [paired(run, "gpo-changepoint", "baseline", m)
                                              for m in ("sampled", "greedy")],
        "paired_changepoint_minus_gpo": [paired(run, "gpo-changepoint", "gpo", m) for m in ("sampled", "greedy")],
        "paired_gpo_minus_base": [paired(run, "gpo", "base", m) for m in ("sampled", "greedy")],
        "paired_baseline_minus_base": [paired(run, "baseline", "base", m) for m in ("sampled", "greedy")],
        "critical_steps": critical_steps(run),
        "critical_steps_changepoint": critical_steps(chain["changepoint_run"]),
        "changepoint_confidence": changepoint_confidence(run, chain["changepoint_run"]),
        "pair_truncation": [dict(zip(("data", "pairs", "chosen_truncated", "rejected_truncated"), row)) for row in sql(
            "select data, count(*), avg((chosen_finish_reason = 'length')::int), "
            f"avg((rejected_finish_reason = 'length')::int) from read_parquet('{run}/branch/*.parquet') group by 1 "
            "order by 1")],
        "response_tokens_mean": {label: dict(sql(
            f"select mode, avg(num_response_tokens) from read_parquet('{run}/eval_{label}/*.parquet') group by 1"))
            for label in labels},
        "diagnose": {"verdict": diag.get("verdict"), "headline": headline},
        "stages": stages,
        "wall_seconds": round(time.time() - started, 1),
    }


def print_summary(r: dict) -> None:
    s = r["settings"]
    print(f"\nSmolLM2-135M-Instruct end to end on CPU: {r['train_source']} (train), {r['test_source']} (test)")
    print(f"T={s['temperature']} top-p={s['top_p']} {s['max_new_tokens']} new tokens; n={s['n']} K={s['k']} "
          f"M={s['m']}; DPO {'LoRA r=' + str(s['lora']) if s['lora'] else 'full'} lr={s['learning_rate']} "
          f"beta={s['beta']}, {s['steps']} steps x batch {s['batch_size']}")
    ts = r["train_samples"]
    print(f"train samples: {ts['answers']} answers, accuracy {ts['accuracy']:.3f}, "
          f"truncated {ts['truncated_share']:.3f}; "
          f"pairs {r['branch_pairs']}; training {r['training']}")
    print(f"{'model':10} {'mode':8} {'accuracy':>9} {'95% CI (clustered by problem)':>30} {'truncated':>10}")
    for label, modes in r["accuracy"].items():
        for mode, v in modes.items():
            print(f"{label:10} {mode:8} {v['accuracy']:9.3f} {'[%.3f, %.3f]' % (v['ci_low'], v['ci_high']):>30} "
                  f"{v['truncated_share']:10.3f}")
    for key in ("paired_gpo_minus_baseline", "paired_changepoint_minus_baseline", "paired_changepoint_minus_gpo",
                "paired_gpo_minus_base", "paired_baseline_minus_base"):
        for p in r[key]:
            print(f"{key[7:]:30} {p['mode']:8} {p['difference']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] "
                  f"over {p['problems']} problems: {p['reading']}")
    c = r["critical_steps"]
    print(f"critical steps: {c['located']}/{c['trajectories']} failed trajectories located; step index histogram "
          f"{c['critical_step_histogram']}; relative position q25/q50/q75 {c['relative_position_q25_q50_q75']}")
    cc = r["changepoint_confidence"]
    print(f"change-point rule: {cc['located']} located; confidence q10/q25/q50/q75/q90 "
          f"{[round(x, 3) if x is not None else None for x in cc['confidence_q10_q25_q50_q75_q90']]}; kept at "
          f"--min-confidence {cc['kept_share_at_min_confidence']}; same step as the paper's rule: "
          f"{cc['same_step_as_paper']} of {cc['compared']}")
    print("gpo diagnose: " + "\n  ".join(r["diagnose"]["headline"]))
    print("per stage (generated / prompt tokens, subprocess seconds):")
    for name, st in r["stages"].items():
        print(f"  {name:16} {st.get('backend_generated_tokens', 0):>8} {st.get('prompt_tokens', 0):>8} "
              f"{st.get('subprocess_seconds', 0):>8}s")
    print(f"total wall {r['wall_seconds']:.0f}s")


def main(argv=None) -> dict:
    a = parse_args(argv)
    started, gpo = time.time(), Gpo()
    chain = run_chain(a, gpo)
    result = collect(a, chain, gpo, started)
    print_summary(result)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(a.json)
    print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
