"""`gpo demo`: a controlled GPO experiment on a built-in toy task and its tiny model (CPU, no network).

It runs the commands a user would (each printed, copy-pasteable, resumable: a finished stage is a no-op on
rerun), then reads every number of its summary back from the run's tables. Five arms, all DPO from the same
base with the same hyperparameters, the same optimizer steps and batch (pairs cycled or subsampled by TRL's
max_steps), identical pairs dropped for every arm alike:

    gpo             GPO with the paper's full Monte Carlo estimate (K=4 rollouts at every state)
    gpo-bisect      GPO with the cheaper bisect estimator (same samples)
    random-reset    reset at a random step, as many continuations per failed trajectory as GPO's rollouts
    same-samples    whole-trajectory pairs from the same samples (the paper's baseline)
    tokens-matched  whole-trajectory pairs from more samples, costing as many tokens as GPO's rollouts

Hyperparameters come from `bench/select_hparams.py` (validation split); the test split is scored once.
"""

from __future__ import annotations

import shlex
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from gpo_cli.common import err
from gpo_cli.demo_summary import arm_data, query, scalar
from stages.core.errors import GpoError

ARMS = ("gpo", "gpo-bisect", "random-reset", "same-samples", "tokens-matched")


def shown(path: Path) -> Path:
    """Relative to the working directory when inside it, so printed commands are short and portable."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


@dataclass(frozen=True)
class DemoPlan:
    task: str
    train_problems: int
    test_problems: int
    n: int = 4  # samples per training problem
    k: int = 4  # Monte Carlo rollouts per state (the paper)
    bisect_k: int = 4
    m: int = 5  # branches at the critical state: its 4 rollouts + the trajectory's own continuation
    eval_n: int = 4  # samples per test problem (plus one greedy)
    # Training, identical for every arm. learning_rate and beta: None reads the choice that
    # bench/select_hparams.py made on the validation split (bench/results/select_hparams.json).
    steps: int = 30
    batch_size: int = 8
    learning_rate: float | None = None
    beta: float | None = None


PLANS = {
    ("borrow", False): DemoPlan("borrow", train_problems=40, test_problems=150),
    ("borrow", True): DemoPlan("borrow", train_problems=12, test_problems=40, eval_n=2, steps=6),
    ("arith", False): DemoPlan("arith", train_problems=150, test_problems=300),
    ("arith", True): DemoPlan("arith", train_problems=64, test_problems=100, eval_n=2, steps=6),
}


CHOICE = Path(__file__).resolve().parent.parent / "bench" / "results" / "select_hparams.json"


def with_chosen_hparams(plan: DemoPlan) -> DemoPlan:
    """Fill learning rate and beta from the validation-split choice (toy:borrow's; toy:arith uses the same)."""
    if plan.learning_rate is not None and plan.beta is not None:
        return plan
    import json

    if not CHOICE.exists():
        raise GpoError(f"{CHOICE} is missing: run `python bench/select_hparams.py` to choose the demo's "
                       "learning rate and beta on the validation split")
    chosen = json.loads(CHOICE.read_text())["chosen"]
    return replace(plan, learning_rate=plan.learning_rate or chosen["learning_rate"],
                   beta=plan.beta or chosen["beta"])


class Runner:
    """Runs `gpo` commands in this process, printing each one and timing it."""

    def __init__(self, command):
        self.command = command  # gpo's click command, handed in by `gpo demo` (no import of gpo_cli.main here)
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


def source(plan: DemoPlan, split: str, n: int, seed: int) -> str:
    return f"toy:{plan.task}?n={n}&seed={seed}&split={split}"


def max_new_tokens(plan: DemoPlan) -> int:
    from stages.core.toy_tasks import get

    return get(plan.task).max_new_tokens


def generate_data(root: Path, plan: DemoPlan, model: Path, seed: int, gpo: Runner) -> dict:
    """Sample, estimate, locate and branch for every arm's data; returns the run folders and the budget rule."""
    runs = {"gpo": root / "gpo", "gpo-bisect": root / "gpo-bisect", "tokens-matched": root / "tokens-matched"}
    train_src, tokens = source(plan, "train", plan.train_problems, seed), max_new_tokens(plan)
    gen = ("--backend", "hf", "--seed", seed)
    gpo("sample", "sample", "--problems", train_src, "--model", model, "--run", runs["gpo"], "--n", plan.n,
        "--max-new-tokens", tokens, *gen)
    gpo("estimate", "estimate", "--run", runs["gpo"], "--k", plan.k, "--estimator", "full", "--seed", seed)
    gpo("locate", "locate", "--run", runs["gpo"], "--rule", "abs-advantage")  # the paper's rule, as labelled
    budget = matched_budget(runs["gpo"], plan)
    gpo("branch", "branch", "--run", runs["gpo"], "--m", plan.m, "--baseline", "--random-m", budget["random_m"],
        "--seed", seed)
    # The cheaper estimator on the very same samples: a copy of the finished sample stage.
    copy_stage(runs["gpo"], runs["gpo-bisect"], "sample")
    gpo("estimate (bisect)", "estimate", "--run", runs["gpo-bisect"], "--k", plan.bisect_k, "--estimator", "bisect",
        "--seed", seed)
    gpo("locate (bisect)", "locate", "--run", runs["gpo-bisect"], "--rule", "abs-advantage")
    gpo("branch (bisect)", "branch", "--run", runs["gpo-bisect"], "--m", plan.m, "--seed", seed)
    # Same seed: the first n samples of each problem are the GPO run's own; the rest are the extra budget.
    gpo("sample (tokens-matched)", "sample", "--problems", train_src, "--model", model, "--run",
        runs["tokens-matched"], "--n", budget["baseline_n"], "--max-new-tokens", tokens, *gen)
    gpo("branch (tokens-matched)", "branch", "--run", runs["tokens-matched"], "--baseline-only", "--random-m", 0)
    return {"runs": runs, "budget": budget}


def copy_stage(src_run: Path, dst_run: Path, stage: str) -> None:
    dst = dst_run / stage
    if (dst / "_SUCCESS").exists():
        return
    tmp = dst_run / f".tmp-{stage}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_run / stage, tmp, ignore=shutil.ignore_patterns("*.lock"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def train_arms(train_dir: Path, plan: DemoPlan, model: Path, seed: int, runs: dict, gpo: Runner) -> dict:
    """DPO on each arm's pairs with the same settings and optimizer steps; arm -> model folder."""
    models = {}
    for arm, (run, data) in arm_data(runs).items():
        dest = train_dir / f"dpo-{arm}"
        gpo(f"train ({arm})", "train", "--run", run, "--method", "dpo", "--data", data, "--model", model,
            "--out", dest, "--max-steps", plan.steps, "--batch-size", plan.batch_size,
            "--learning-rate", plan.learning_rate, "--beta", plan.beta, "--max-length", 256,
            "--save-steps", 1000, "--seed", seed)
        models[arm] = dest / "model"
    return models


def evaluate(run: Path, plan: DemoPlan, models: dict, split: str, problems: int, gpo: Runner) -> list[str]:
    """Greedy and sampled (T=1) evaluation of each model on one split; returns the eval labels."""
    src = source(plan, split, problems, 0)
    for label, path in models.items():
        gpo(f"eval {label}", "eval", "--model", path, "--problems", src, "--run", run, "--label", label,
            "--n", plan.eval_n, "--temperature", 1.0, "--max-new-tokens", max_new_tokens(plan), "--backend", "hf")
    return list(models)


def run_demo(root: Path, quick: bool, task: str = "borrow", seed: int = 0, model: Path | None = None, *,
             command) -> dict:
    """`command`: gpo's click command, which runs each step in this process."""
    from stages.core.artifacts import write_json_atomic
    from stages.core.toy_tasks import get

    plan = with_chosen_hparams(PLANS[(get(task).name, quick)])
    model = shown(model or get(task).model_dir)
    if not (model / "config.json").exists():
        raise GpoError(f"the {task} model is missing at {model}: run `gpo toy build --task {task}`")
    gpo, started = Runner(command), time.time()
    data = generate_data(root, plan, model, seed, gpo)
    models = {"base": model, **train_arms(root / "train", plan, model, seed, data["runs"], gpo)}
    labels = evaluate(root / "gpo", plan, models, "test", plan.test_problems, gpo)
    gpo("report", "report", root / "gpo")
    from gpo_cli.demo_summary import collect, print_demo_summary

    results = collect(plan, data, labels, root, gpo.timings, time.time() - started)
    print_demo_summary(results)
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
    random_m = max(2, round(mc_rollouts / max(1, failed)))
    return {"mc_tokens": int(mc_tokens), "mc_rollouts": int(mc_rollouts), "sample_tokens": int(sample_tokens),
            "baseline_n": plan.n + extra_samples, "random_m": random_m,
            "rule": (f"tokens-matched: {plan.n}+{extra_samples} samples per problem (the extra ones cost about "
                     f"the {int(mc_tokens)} Monte Carlo tokens); random reset: {random_m} continuations per failed "
                     "trajectory (GPO's rollouts per failed trajectory)")}

