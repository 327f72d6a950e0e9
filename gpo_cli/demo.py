"""`gpo demo`: a real GPO experiment on the built-in toy task and tiny model, on CPU, with no network.

It runs the same commands a user would (each printed, copy-pasteable, and resumable: a finished stage is a
no-op on rerun), then reads every number of its summary back from the Parquet tables with the SQL it
prints. The baselines are matched on rollout budget:
  * whole-trajectory DPO pairs come from a second sample run with more samples per problem, so that its
    generated tokens equal the GPO run's sample + Monte Carlo tokens;
  * random-reset (Satori) pairs spend as many continuations per failed trajectory as GPO spent rollouts.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from gpo_cli.common import err, out
from stages.core.errors import GpoError

TOY_MODEL = Path(__file__).resolve().parent.parent / "data" / "toy-model"


def shown(path: Path) -> Path:
    """Relative to the working directory when inside it, so printed commands are short and portable."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


@dataclass(frozen=True)
class DemoPlan:
    train_problems: int
    test_problems: int
    n: int
    k: int
    m: int
    eval_n: int
    epochs: float
    max_new_tokens: int = 48
    # Plain DPO (the paper's optimizer). Chosen in a sweep as the setting that did best on average over
    # the three data sets (gpo, random-reset, matched baseline), not on GPO alone; see README.
    learning_rate: float = 1e-5
    beta: float = 0.5
    batch_size: int = 16


FULL = DemoPlan(train_problems=600, test_problems=500, n=4, k=4, m=5, eval_n=4, epochs=2.0)
QUICK = DemoPlan(train_problems=64, test_problems=100, n=4, k=4, m=5, eval_n=2, epochs=1.0)


class Runner:
    """Runs `gpo` commands in this process, printing each one and timing it."""

    def __init__(self):
        from typer.main import get_command

        from gpo_cli.main import app

        self.command = get_command(app)
        self.timings: list[tuple[str, float]] = []

    def __call__(self, name: str, *args) -> None:
        argv = [str(a) for a in args]
        err.print(f"[bold cyan]$ gpo {shlex.join(argv)}[/bold cyan]")
        t0 = time.time()
        code = self.command.main(args=argv, prog_name="gpo", standalone_mode=False)
        if isinstance(code, int) and code != 0:  # the command already printed its one-line error
            import typer

            raise typer.Exit(code)
        self.timings.append((name, time.time() - t0))


def query(run: Path, sql: str) -> list[tuple]:
    from stages.core.query import run_query

    return run_query(run, sql)[1]


def scalar(run: Path, sql: str):
    return query(run, sql)[0][0]


def run_demo(root: Path, quick: bool, model: Path = TOY_MODEL, seed: int = 0) -> dict:
    plan = QUICK if quick else FULL
    model = shown(model)
    if not (model / "config.json").exists():
        raise GpoError(f"the toy model is missing at {model}: run `gpo toy build --out {model}`")
    gpo_run, base_run = root / "gpo", root / "baseline"
    train_src = f"toy:arith?n={plan.train_problems}&seed={seed}&split=train"
    test_src = f"toy:arith?n={plan.test_problems}&seed=0&split=test"
    gpo = Runner()
    started = time.time()
    gpo("sample", "sample", "--problems", train_src, "--model", model, "--run", gpo_run, "--n", plan.n,
        "--max-new-tokens", plan.max_new_tokens, "--backend", "hf", "--seed", seed)
    gpo("estimate", "estimate", "--run", gpo_run, "--k", plan.k, "--seed", seed)
    gpo("locate", "locate", "--run", gpo_run)
    budget = matched_budget(gpo_run, plan)
    gpo("branch", "branch", "--run", gpo_run, "--m", plan.m, "--baseline", "--random-m", budget["random_m"],
        "--seed", seed)
    # Same seed: the first n samples of each problem are the GPO run's own; the rest are the extra budget.
    gpo("sample (baseline)", "sample", "--problems", train_src, "--model", model, "--run", base_run,
        "--n", budget["baseline_n"], "--max-new-tokens", plan.max_new_tokens, "--backend", "hf", "--seed", seed)
    gpo("branch (baseline)", "branch", "--run", base_run, "--baseline-only", "--random-m", 0)
    models = {"base": model}
    # dpo-baseline: budget-matched; dpo-same-samples: the paper's comparison (same samples, no MC budget).
    for name, data, run in (("gpo", "gpo", gpo_run), ("random-reset", "random-reset", gpo_run),
                            ("baseline", "baseline", base_run), ("same-samples", "baseline", gpo_run)):
        dest = gpo_run / "train" / f"dpo-{name}"
        gpo(f"train dpo ({name})", "train", "--run", run, "--method", "dpo", "--data", data, "--model", model,
            "--out", dest, "--epochs", plan.epochs, "--learning-rate", plan.learning_rate, "--beta", plan.beta,
            "--batch-size", plan.batch_size, "--max-length", 128, "--save-steps", 100, "--seed", seed)
        models[f"dpo-{name}"] = dest / "model"
    for label, path in models.items():
        gpo(f"eval {label}", "eval", "--model", path, "--problems", test_src, "--run", gpo_run, "--label", label,
            "--n", plan.eval_n, "--temperature", 1.0, "--max-new-tokens", plan.max_new_tokens, "--backend", "hf")
    gpo("report", "report", gpo_run)
    results = collect(gpo_run, base_run, budget, gpo.timings, time.time() - started)
    print_summary(results, gpo_run)
    from stages.core.artifacts import write_json_atomic

    write_json_atomic(root / "summary.json", results)
    return results


def matched_budget(gpo_run: Path, plan: DemoPlan) -> dict:
    """How many extra samples / random-reset branches buy the tokens GPO spent on Monte Carlo rollouts."""
    mc_tokens = scalar(gpo_run, "select coalesce(sum(num_tokens), 0) from rollouts where shared_from_sample is null")
    mc_rollouts = scalar(gpo_run, "select count(*) from rollouts where shared_from_sample is null")
    sample_tokens, problems = query(gpo_run, "select sum(num_response_tokens), count(distinct problem_id) "
                                             "from sample")[0]
    failed = scalar(gpo_run, "select count(*) from sample where reward = 0")
    per_sample = sample_tokens / max(1, plan.n * problems)
    extra_samples = round(mc_tokens / max(1.0, per_sample * problems))
    return {"mc_tokens": int(mc_tokens), "mc_rollouts": int(mc_rollouts), "sample_tokens": int(sample_tokens),
            "baseline_n": plan.n + extra_samples, "random_m": max(2, round(mc_rollouts / max(1, failed))),
            "rule": (f"baseline: {plan.n}+{extra_samples} samples per problem (the extra ones cost about the "
                     f"{int(mc_tokens)} Monte Carlo tokens); random reset: {max(2, round(mc_rollouts / max(1, failed)))}"
                     " continuations per failed trajectory (GPO's rollouts per failed trajectory)")}


SQL = {
    "accuracy": "select label, mode, count(distinct problem_id) as problems, count(*) as answers, "
                "sum(reward) as correct, avg(reward) as accuracy from evals group by label, mode order by mode, label",
    "agreement": "select count(*) as failed, count(critical_step) as located, avg(agrees::int) as agreement "
                 "from locate",
    "gpo_tokens": "select (select sum(num_response_tokens) from sample) as sample_tokens, "
                  "(select sum(num_tokens) from rollouts where shared_from_sample is null) as rollout_tokens, "
                  "(select count(*) from rollouts where shared_from_sample is null) as rollouts, "
                  "(select coalesce(sum(num_tokens), 0) from continuations where origin = 'new' and data = 'gpo') "
                  "as gpo_branch_tokens, "
                  "(select coalesce(sum(num_tokens), 0) from continuations where data = 'random-reset') "
                  "as random_reset_tokens",
    "pairs": "select data, count(*) as pairs from branch group by data order by data",
    "baseline": "select (select sum(num_response_tokens) from sample) as sample_tokens, "
                "(select count(*) from branch where data = 'baseline') as pairs",
}


def collect(gpo_run: Path, base_run: Path, budget: dict, timings, wall: float) -> dict:
    return {
        "accuracy": query(gpo_run, SQL["accuracy"]),
        "agreement": query(gpo_run, SQL["agreement"])[0],
        "gpo_tokens": query(gpo_run, SQL["gpo_tokens"])[0],
        "pairs": query(gpo_run, SQL["pairs"]),
        "baseline": query(base_run, SQL["baseline"])[0],
        "budget": budget, "timings": timings, "wall_seconds": wall,
    }


def print_summary(r: dict, gpo_run: Path) -> None:
    from rich.table import Table

    acc = Table(title="toy test accuracy (DPO from the same base, same hyperparameters)")
    for col in ("model", "mode", "problems", "answers", "accuracy", "95% CI"):
        acc.add_column(col)
    from stages.core.values import wilson_interval

    by_label = {}
    for label, mode, problems, answers, correct, accuracy in r["accuracy"]:
        lo, hi = wilson_interval(int(correct), int(answers))  # Wilson over answers (samples taken as independent)
        acc.add_row(label, mode, str(problems), str(answers), f"{accuracy:.3f}", f"[{lo:.3f}, {hi:.3f}]")
        by_label[(label, mode)] = accuracy
    out.print(acc)
    failed, located, agreement = r["agreement"]
    out.print(f"critical step found for {located}/{failed} failed trajectories; agreement with the known first "
              f"wrong line: {agreement if agreement is None else f'{agreement:.3f}'}")
    s_tok, mc_tok, rollouts, branch_tok, random_tok = r["gpo_tokens"]
    b_tok, b_pairs = r["baseline"]
    out.print(f"tokens: sample {s_tok}, Monte Carlo {mc_tok} in {rollouts} rollouts, GPO branch {branch_tok}, "
              f"random-reset branches {random_tok}; baseline run samples {b_tok} tokens for {b_pairs} pairs")
    out.print(f"budget matching: {r['budget']['rule']}")
    out.print("pairs: " + ", ".join(f"{d} {n}" for d, n in r["pairs"]))
    out.print("wall time: " + ", ".join(f"{name} {sec:.0f}s" for name, sec in r["timings"])
              + f"; total {r['wall_seconds']:.0f}s")
    verdict(by_label)
    from gpo_cli.report_cmds import print_comparison
    from stages import eval as evaluation

    labels = ["base", *sorted(k[0] for k in by_label if k[1] == "sampled" and k[0] != "base")]
    summaries = [evaluation.write_summary(gpo_run, label, (1, 4)) for label in labels]
    print_comparison(evaluation.compare([s for s in summaries if s is not None]))
    out.print("\nReproduce these numbers:")
    for name, sql in SQL.items():
        run = gpo_run.parent / "baseline" if name == "baseline" else gpo_run
        out.print(f'  gpo sql {run} "{sql}"')  # the queries hold no double quotes or $
    out.print(f"  gpo eval --compare {' '.join(str(gpo_run / ('eval_' + label)) for label in labels)}")


def verdict(by_label: dict) -> None:
    for mode in ("greedy", "sampled"):
        gpo = by_label.get(("dpo-gpo", mode))
        others = {k[0]: v for k, v in by_label.items() if k[1] == mode and k[0] != "dpo-gpo"}
        if gpo is None or not others:
            continue
        best = max(others, key=others.get)
        word = "beats" if gpo > others[best] else "does not beat"
        out.print(f"[bold]{mode}:[/bold] GPO-DPO ({gpo:.3f}) {word} the best other model, {best} "
                  f"({others[best]:.3f}), at this budget (see the intervals above before reading much into it)")
