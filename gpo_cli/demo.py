"""`gpo demo`: a controlled GPO experiment on a built-in toy task and its tiny model (CPU, no network).

It runs the commands a user would (each printed, copy-pasteable, resumable: a finished stage is a no-op on
rerun), then reads every number of its summary back from the run's tables. The arms are the rows of
gpo_cli/demo_arms.py (the paper's GPO, the other GPO estimators and rules, random reset, the same-sample
baseline, the tokens-matched baseline); all are DPO from the same base, each with its own learning rate and
beta chosen on the validation split (`bench/select_hparams.py`), the same optimizer steps and a full batch
at every step.

Measured on the test split, problems drawn by the seed: greedy accuracy and the teacher-forced probe
(`gpo eval --probe`) on `greedy_problems`, sampled pass@1 on the first `test_problems` of them. The
primary comparison, named before any number: each GPO arm minus same-samples on greedy accuracy and on
the probe at the hard trap line, Holm-adjusted over that family (gpo_cli/demo_summary.py).
"""

from __future__ import annotations

import shlex
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpo_cli.common import err
from gpo_cli.demo_arms import ARMS, NAMES, PAPER, arm_data, by_name, sampled_label
from gpo_cli.demo_summary import query, scalar
from stages.core.pipeline import layout
from stages.core.pipeline.errors import GpoError


def shown(path: Path) -> Path:
    """Relative to the working directory when inside it, so printed commands are short and portable."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


# Paired SD of greedy accuracy between two trained arms, measured on toy:borrow (issue 20: oracle minus
# same-samples, +0.040 [-0.001, +0.081] over 150 problems, so SD = 0.041 / 1.96 * sqrt(150) = 0.256). For a
# 95% half-width of 2 points: (1.96 * 0.256 / 0.02)^2 = 630 problems; the summary recomputes it per run.
GREEDY_PROBLEMS = 640


@dataclass(frozen=True)
class DemoPlan:
    task: str
    train_problems: int
    test_problems: int  # sampled pass@1 (eval_n samples each): the first test_problems of the greedy set
    greedy_problems: int = GREEDY_PROBLEMS  # greedy accuracy and the probe (cheap: one pass per problem)
    n: int = 4  # samples per training problem
    k: int = 4  # Monte Carlo rollouts per state (the paper)
    m: int = 5  # branches at the critical state: its 4 rollouts + the trajectory's own continuation
    eval_n: int = 4  # samples per test problem
    # Training, identical for every arm but for learning rate and beta: arm -> (learning_rate, beta), read
    # from the validation-split choice of bench/select_hparams.py (bench/results/select_hparams.json).
    steps: int = 30
    batch_size: int = 8
    hparams: dict = field(default_factory=dict)


PLANS = {
    ("borrow", False): DemoPlan("borrow", train_problems=40, test_problems=150),
    ("borrow", True): DemoPlan("borrow", train_problems=12, test_problems=40, greedy_problems=60, eval_n=2,
                               steps=6),
    ("arith", False): DemoPlan("arith", train_problems=150, test_problems=300),
    ("arith", True): DemoPlan("arith", train_problems=64, test_problems=40, greedy_problems=60, eval_n=2,
                              steps=6),
}


CHOICE = Path(__file__).resolve().parent.parent / "bench" / "results" / "select_hparams.json"


def with_chosen_hparams(plan: DemoPlan, arms=NAMES) -> DemoPlan:
    """Each arm's learning rate and beta from the validation-split choice (toy:borrow's; toy:arith uses it too)."""
    import json

    if not CHOICE.exists():
        raise GpoError(f"{CHOICE} is missing: run `python bench/select_hparams.py` to choose each arm's learning "
                       "rate and beta on the validation split")
    chosen = json.loads(CHOICE.read_text())["chosen"]
    missing = [arm for arm in arms if arm not in chosen]
    if missing:
        raise GpoError(f"{CHOICE} has no choice for arm(s) {', '.join(missing)}: run `python bench/select_hparams.py"
                       f" --arms {','.join(missing)}`")
    return replace(plan, hparams={arm: (chosen[arm]["learning_rate"], chosen[arm]["beta"]) for arm in arms})


class Runner:
    """Runs `gpo` commands in this process, printing each one and timing it."""

    def __init__(self, command):
        self.command = command  # gpo's click command, handed in by `gpo demo` (no import of gpo_cli.main here)
        self.timings: list[tuple[str, float, float]] = []  # (command, wall seconds, CPU seconds)

    def __call__(self, name: str, *args) -> None:
        argv = [str(a) for a in args]
        err.print(f"[bold cyan]$ gpo {shlex.join(argv)}[/bold cyan]")
        t0, c0 = time.time(), cpu_seconds()
        code = self.command.main(args=argv, prog_name="gpo", standalone_mode=False)
        if isinstance(code, int) and code != 0:  # the command already printed its one-line error
            import typer

            raise typer.Exit(code)
        self.timings.append((name, time.time() - t0, cpu_seconds() - c0))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the math checker's workers), user + system."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def source(plan: DemoPlan, split: str, n: int, seed: int) -> str:
    return f"toy:{plan.task}?n={n}&seed={seed}&split={split}"


def max_new_tokens(plan: DemoPlan) -> int:
    from stages.core.sources.toy_tasks import get

    return get(plan.task).max_new_tokens


def generate_data(root: Path, plan: DemoPlan, model: Path, seed: int, gpo: Runner) -> dict:
    """Sample, estimate, locate and branch for every arm's data; returns the run folders and the budget rule."""
    paper = root / PAPER
    train_src, tokens = source(plan, "train", plan.train_problems, seed), max_new_tokens(plan)
    gen = ("--backend", "hf", "--seed", seed)
    gpo("sample", "sample", "--problems", train_src, "--model", model, "--run", paper, "--n", plan.n,
        "--max-new-tokens", tokens, *gen)
    first = by_name(PAPER)
    gpo("estimate", "estimate", "--run", paper, "--k", plan.k, "--estimator", first.estimator, "--seed", seed)
    gpo("locate", "locate", "--run", paper, "--rule", first.rule)
    budget = matched_budget(paper, plan)
    gpo("branch", "branch", "--run", paper, "--m", plan.m, "--baseline", "--random-m", budget["random_m"],
        "--seed", seed)
    for arm in ARMS:  # the other GPO arms, on the very same samples (copies of the finished stages)
        if not arm.is_gpo or arm.run == PAPER:
            continue
        run = root / arm.run
        copy_stage(paper, run, "sample")
        if arm.estimate_from:
            copy_stage(root / arm.estimate_from, run, "estimate")
        else:
            gpo(f"estimate ({arm.name})", "estimate", "--run", run, "--k", plan.k, "--estimator", arm.estimator,
                "--seed", seed)
        gpo(f"locate ({arm.name})", "locate", "--run", run, "--rule", arm.rule, "--seed", seed)
        gpo(f"branch ({arm.name})", "branch", "--run", run, "--m", plan.m, "--seed", seed)
    # Same seed: the first n samples of each problem are the GPO run's own; the rest are the extra budget.
    matched = root / "tokens-matched"
    gpo("sample (tokens-matched)", "sample", "--problems", train_src, "--model", model, "--run", matched,
        "--n", budget["baseline_n"], "--max-new-tokens", tokens, *gen)
    gpo("branch (tokens-matched)", "branch", "--run", matched, "--baseline-only", "--random-m", 0)
    return {"runs": {a.run: root / a.run for a in ARMS}, "budget": budget}


def copy_stage(src_run: Path, dst_run: Path, stage: str) -> None:
    dst = dst_run / stage
    if layout.success_path(dst).exists():
        return
    tmp = dst_run / f".tmp-{stage}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_run / stage, tmp, ignore=shutil.ignore_patterns(layout.LOCK_GLOB))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def train_arms(train_dir: Path, plan: DemoPlan, model: Path, seed: int, root: Path, gpo: Runner) -> dict:
    """DPO on each arm's pairs: the same optimizer steps and full batches, the arm's own lr and beta."""
    models = {}
    for arm, (run, data) in arm_data(root).items():
        if arm not in plan.hparams:  # bench/select_hparams.py --arms: only those
            continue
        dest = train_dir / f"dpo-{arm}"
        lr, beta = plan.hparams[arm]
        gpo(f"train ({arm})", "train", "--run", run, "--method", "dpo", "--data", data, "--model", model,
            "--out", dest, "--max-steps", plan.steps, "--batch-size", plan.batch_size,
            "--learning-rate", lr, "--beta", beta, "--max-length", 256, "--save-steps", 1000, "--seed", seed)
        models[arm] = dest / "model"
    return models


def evaluate(run: Path, plan: DemoPlan, models: dict, split: str, seed: int, gpo: Runner) -> list[str]:
    """Each model on the seed's own test problems: greedy and the probe on the large set (label <arm>),
    sampled pass@1 (T=1) on its first test_problems (label <arm>.sampled); returns the models' labels."""
    tokens = ("--max-new-tokens", max_new_tokens(plan), "--backend", "hf")
    for label, path in models.items():
        gpo(f"eval {label} (greedy, probe)", "eval", "--model", path, "--run", run, "--label", label,
            "--problems", source(plan, split, plan.greedy_problems, seed), "--temperature", 0, "--probe", *tokens)
        gpo(f"eval {label} (sampled)", "eval", "--model", path, "--run", run, "--label", sampled_label(label),
            "--problems", source(plan, split, plan.test_problems, seed), "--n", plan.eval_n, "--temperature", 1.0,
            "--no-greedy", "--seed", seed, *tokens)
    return list(models)


def run_demo(root: Path, quick: bool, task: str = "borrow", seed: int = 0, model: Path | None = None, *,
             command) -> dict:
    """`command`: gpo's click command, which runs each step in this process."""
    from stages.core.pipeline.artifacts import write_json_atomic
    from stages.core.sources.toy_tasks import get

    plan = with_chosen_hparams(PLANS[(get(task).name, quick)])
    model = shown(model or get(task).model_dir)
    if not (model / "config.json").exists():
        raise GpoError(f"the {task} model is missing at {model}: run `gpo toy build --task {task}`")
    gpo, started = Runner(command), time.time()
    data = generate_data(root, plan, model, seed, gpo)
    models = {"base": model, **train_arms(root / "train", plan, model, seed, root, gpo)}
    labels = evaluate(root / PAPER, plan, models, "test", seed, gpo)
    gpo("report", "report", root / PAPER)
    from gpo_cli.demo_print import print_demo_summary
    from gpo_cli.demo_summary import collect

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

