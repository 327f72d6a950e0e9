"""The demo's steps: a runner of gpo commands (printed, timed), every arm's data, its training, the evaluation
of every model, and run_demo, which does them in order and writes summary.json (see __init__.py)."""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path
from typing import Callable

from stages.core.pipeline import layout
from stages.core.pipeline.errors import GpoError
from stages.tools.demo.arms import ARMS, PAPER, arm_data, by_name, sampled_label
from stages.tools.demo.plan import PLANS, DemoPlan, max_new_tokens, shown, source, with_chosen_hparams
from stages.tools.demo.summary import query, scalar


class CommandFailed(Exception):
    """A gpo command exited non-zero; it already printed its one-line error. `code`: its exit status."""

    def __init__(self, code: int):
        super().__init__(f"gpo exited with {code}")
        self.code = code


def _stderr_print(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(text)


class Runner:
    """Runs `gpo` commands in this process, printing each one and timing it. `ledger`: a JSON file that holds
    every command's cost so far, rewritten after each command; a command that has nothing left to do on a
    rerun (after a kill, or of a finished demo) keeps the cost it had when it ran."""

    def __init__(self, command, echo: Callable[[str], None] = _stderr_print, ledger: Path | None = None,
                 earlier: list | None = None):
        from stages.core.pipeline import artifacts

        self.command = command  # gpo's click command, handed in by `gpo demo` (no import of gpo_cli.main here)
        self.echo = echo  # prints each command (rich markup): `gpo demo` hands in its stderr console
        # (command, wall seconds, CPU seconds, tokens its stages generated)
        self.timings: list[tuple[str, float, float, int]] = []
        self.ledger = ledger
        if ledger is not None and ledger.exists():  # `earlier`: where no ledger was kept (a summary's timings)
            earlier = artifacts.load_json(ledger).get("timings", [])
        self.earlier = {t[0]: tuple(t) for t in earlier or ()}
        self.spent = 0.0  # wall seconds inside commands in this invocation, whether they worked or not

    def __call__(self, name: str, *args) -> None:
        argv = [str(a) for a in args]
        self.echo(f"[bold cyan]$ gpo {shlex.join(argv)}[/bold cyan]")
        t0, c0 = time.time(), cpu_seconds()
        code = self.command.main(args=argv, prog_name="gpo", standalone_mode=False)
        if isinstance(code, int) and code != 0:  # the command already printed its one-line error
            raise CommandFailed(code)
        run = Path(argv[argv.index("--run") + 1]) if "--run" in argv[:-1] else None
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv[:-1] else None
        shards, tokens = finished_since(run, t0) if run is not None else (0, 0)
        worked = shards > 0 or (out is not None and wrote_since(layout.summary_path(out), t0)) or (
            run is None and out is None)  # a command with no run folder (the report) always works
        wall = time.time() - t0
        self.spent += wall
        if worked or name not in self.earlier:
            self.earlier[name] = (name, wall, cpu_seconds() - c0, tokens)
        self.timings.append(self.earlier[name])
        if self.ledger is not None:
            from stages.core.pipeline import artifacts

            artifacts.write_json_atomic(self.ledger, {"timings": list(self.earlier.values())})


def wrote_since(path: Path, t0: float) -> bool:
    return path.exists() and path.stat().st_mtime >= t0


def finished_since(run: Path, t0: float) -> tuple[int, int]:
    """The stage shards of `run` that finished at or after t0 (time.time()) and the tokens they generated, read
    from their manifests: what one command did (a rerun with nothing to do writes no manifest: 0, 0)."""
    from stages.core.pipeline import artifacts

    shards = tokens = 0
    for folder in (p for p in run.iterdir() if p.is_dir()) if run.is_dir() else ():
        for path in layout.manifest_paths(folder):
            if wrote_since(path, t0):
                shards += 1
                tokens += int(artifacts.load_json(path).get("generated_tokens", 0))
    return shards, tokens


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the math checker's workers), user + system."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
        # One thread on every machine: a model's last bits depend on the thread count, which otherwise follows
        # the load when the command starts (a sampled answer moved between two runs).
        gpo(f"train ({arm})", "train", "--run", run, "--method", "dpo", "--data", data, "--model", model,
            "--out", dest, "--max-steps", plan.steps, "--batch-size", plan.batch_size,
            "--learning-rate", lr, "--beta", beta, "--max-length", 256, "--save-steps", 1000, "--seed", seed,
            "--threads", 1)
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
             command, echo: Callable[[str], None] = _stderr_print,
             show: Callable[[dict], None] = lambda r: None) -> dict:
    """`command`: gpo's click command, which runs each step in this process; `echo` prints each command;
    `show` is handed the summary (to print it) before summary.json is written."""
    from stages.core.pipeline import artifacts
    from stages.core.sources.toy_tasks import get

    plan = with_chosen_hparams(PLANS[(get(task).name, quick)])
    model = shown(model or get(task).model_dir)
    if not (model / "config.json").exists():
        raise GpoError(f"the {task} model is missing at {model}: run `gpo toy build --task {task}`")
    summary = layout.summary_path(root)  # a demo finished before the ledger was kept: its summary's timings
    old = artifacts.load_json(summary).get("timings") if summary.exists() else None
    gpo = Runner(command, echo, layout.timings_path(root), old)  # a rerun keeps what each finished command cost
    started = time.time()
    data = generate_data(root, plan, model, seed, gpo)
    models = {"base": model, **train_arms(root / "train", plan, model, seed, root, gpo)}
    labels = evaluate(root / PAPER, plan, models, "test", seed, gpo)
    gpo("report", "report", root / PAPER)
    from stages.tools.demo.summary import collect

    # the commands' own times (this invocation's or, for those with nothing left to do, the earlier one's) and
    # this invocation's time between them (reading tables, diagnose)
    between = time.time() - started - gpo.spent
    results = collect(plan, data, labels, root, gpo.timings, sum(t[1] for t in gpo.timings) + between)
    show(results)
    artifacts.write_json_atomic(layout.summary_path(root), results)
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

