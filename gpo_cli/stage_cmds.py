"""The six stage commands and `gpo run`: thin adapters from merged option values to the stages.

Options, defaults and help come from each stage's settings dataclass (gpo_cli/adapter.py derives them); what
is here is only the order of the checks a user sees before anything is written: options, problems, model.
"""

from __future__ import annotations

from pathlib import Path

import typer

from gpo_cli.adapter import Extra, run_pipeline, stage_command
from gpo_cli.common import err, handle_errors, log
from stages import branch, estimate, eval as evaluation, locate, sample, train
from stages.core.pipeline.errors import UsageError
from stages.core.pipeline.settings import GENERATING, NON_GENERATING, Runtime


def report(manifest: dict) -> None:
    from stages.core.scoring.answers import timeout_summary
    from stages.core.pipeline.progress import truncation_summary

    stats = manifest.get("stats", {})
    extra = ""
    if stats.get("trajectories") and "correct" in stats:  # sample and eval score; estimate and locate do not
        extra = f", accuracy {stats['correct'] / stats['trajectories']:.3f}"
    if "steps" in stats:
        extra = f", {stats['steps']} steps, {stats.get('rollouts', 0)} rollouts"
    cut, warning = truncation_summary(stats)
    timeouts, timeout_warning = timeout_summary(stats)
    err.print(f"[green]{manifest['stage']}[/green] shard {manifest['shard']}/{manifest['num_shards']}: "
              f"{manifest['rows']} rows{extra}{cut}{timeouts}, {manifest['wall_seconds']:.1f}s")
    for line in (warning, timeout_warning):
        if line:
            err.print(f"[yellow]{line}[/yellow]")


def run_generating(stage, run: Path, settings, rt: Runtime, problems=None) -> dict:
    """Check, then run a stage that generates (stages.core.generation.sampling.run_generating), and report it."""
    from stages.core.generation import sampling

    manifest = sampling.run_generating(stage, run, settings, rt, problems, log=log)
    report(manifest)
    return manifest


def load(problems: str, checker: str | None, fields):
    from stages.core.sources.problems import load_problems

    loaded = load_problems(problems, fields, checker)
    if loaded.skipped:
        err.print(f"[yellow]skipped rows[/yellow]: {loaded.skipped}")
    return loaded.table


def eval_values(values: dict) -> dict | None:
    """What `gpo eval`'s settings check sees: nothing with --compare (no evaluation runs); otherwise every
    option but --model and --problems, which eval names itself together with --run."""
    if values.get("compare"):
        return None
    return _model_and_problems_later(values)


def _model_and_problems_later(values: dict) -> dict:
    return {**values, "model": values.get("model") or "-", "problems": values.get("problems") or "-"}


def register(app: typer.Typer) -> None:
    @stage_command(app, "sample", sample.SampleSettings, runtime=GENERATING)
    def sample_cmd(run, settings, runtime):
        """Sample n trajectories per problem and score them: RUN/sample/*.parquet."""
        s = sample.SampleSettings(**settings)  # everything is checked before the run folder is written
        problems = load(s.problems, s.checker, s.fields)
        run_generating(sample.STAGE, run, s, runtime, problems)

    @stage_command(app, "estimate", estimate.EstimateSettings, runtime=GENERATING)
    def estimate_cmd(run, settings, runtime):
        """Cut responses into steps on token ids and estimate each state's value by Monte Carlo rollouts."""
        run_generating(estimate.STAGE, run, estimate.EstimateSettings(**settings), runtime)

    @stage_command(app, "locate", locate.LocateSettings, runtime=NON_GENERATING)
    def locate_cmd(run, settings, runtime):
        """Find each trajectory's critical step: one row per trajectory in RUN/locate."""
        from stages.core.pipeline.runner import parse_shard, run_stage

        s = locate.LocateSettings(**settings)
        manifest = run_stage(locate.STAGE, run, s, shard=parse_shard(runtime.shard),
                             chunk_groups=runtime.chunk_groups,
                             overwrite=runtime.overwrite, log=log)
        report(manifest)
        stats = manifest["stats"]
        low = stats.get("low_confidence", 0)
        err.print(f"critical step found in {stats.get('located', 0)}/{stats.get('trajectories', 0)} trajectories"
                  + (f"; {low} left unlocated below --min-confidence" if low else ""))

    @stage_command(app, "branch", branch.BranchSettings, runtime=GENERATING, extra={
        "baseline_only": Extra(bool, False, "Only the baseline pairs, straight from `sample` "
                                            "(no estimate/locate needed)."),
    })
    def branch_cmd(run, settings, runtime, baseline_only):
        """Reset at critical steps, sample continuations, write pairs / unpaired rows / reset prompts."""
        s = branch.BranchSettings(**{**settings, "baseline": settings["baseline"] or baseline_only})
        manifest = run_generating(branch.BASELINE_ONLY_STAGE if baseline_only else branch.STAGE, run, s, runtime)
        err.print(f"pairs: {manifest['stats'].get('pairs', 0)}")

    @stage_command(app, "train", train.TrainSettings, runtime=("overwrite", "quiet", "threads"), open_config=True,
                   validate=lambda s, extra: train.resolve(s, extra), extra={
        "out": Extra(Path | None, None, "Output folder (default RUN/train/<method>-<data>)."),
    })
    def train_cmd(run, settings, runtime, out, config_extra):
        """Train on the branch tables with TRL (DPO, KTO, SimPO, ORPO, GRPO, RLOO); resumable from checkpoints.

        Keys of --config that are not gpo settings are passed to the method's TRL config."""
        from stages.core.generation.backends import set_threads

        s = train.TrainSettings(**settings)
        set_threads(runtime.threads)  # before the model loads; the count is in the summary (cpu_threads)
        summary = train.train(run, s, out, config_overrides=config_extra, overwrite=runtime.overwrite, log=log)
        err.print(f"[green]train[/green] {s.method}/{s.data}: step {summary.get('global_step')}, "
                  f"loss {summary.get('first_loss')} -> {summary.get('last_loss', summary.get('train_loss'))}")

    @stage_command(app, "eval", evaluation.EvalSettings, runtime=GENERATING, run_required=False, extra={
        "pass_at": Extra(str, "1,4,8", "k values for pass@k and maj@k, comma-separated (was --k, the name "
                                       "estimate uses for rollouts per state)."),
        "compare": Extra(bool, False, "Compare the finished evaluations given as arguments (RUN/eval_<label> "
                                      "folders; the first is the reference) instead of running one."),
        "folders": Extra(list[Path] | None, None, "With --compare: evaluation folders.", argument=True),
        "probe": Extra(bool, False, "Also teacher-force each problem's gold solution (sources that have one): "
                                    "per line kind, the probability of the gold result token and how often it "
                                    "is the top token (RUN/probe_<label>); --compare then pairs the probes too."),
    }, check_values=eval_values)
    def eval_cmd(run, settings, runtime, pass_at, compare, folders, probe):
        """Score a model: greedy accuracy, sampled pass@1 with a 95% interval, pass@k and maj@k."""
        from gpo_cli.probe_cmd import compare_probes, run_probe
        from stages.core.method.probe import check_has_gold
        from gpo_cli.report_cmds import print_comparison, print_eval_summary

        if compare:
            if not folders:
                raise UsageError("--compare needs evaluation folders, e.g. "
                                 "gpo eval --compare R/eval_base R/eval_dpo-gpo")
            print_comparison(evaluation.compare([evaluation.load_summary(p) for p in folders]))
            compare_probes(folders)
            return
        if folders:
            raise UsageError(f"unexpected argument {folders[0]} (did you mean --compare?)")
        if settings.get("model") is None or settings.get("problems") is None or run is None:
            evaluation.EvalSettings(**_model_and_problems_later(settings))  # the other options first
            raise UsageError("gpo eval needs --model, --problems and --run (or --compare EVAL_DIR ...)")
        try:
            ks = tuple(int(x) for x in pass_at.split(","))
        except ValueError:
            raise UsageError(f"--pass-at must be comma-separated integers, not {pass_at!r}") from None
        stage = evaluation.make_stage(settings["label"])
        s = evaluation.EvalSettings(**settings)
        problems = load(s.problems, s.checker, s.fields)
        if probe:
            check_has_gold(problems)
        run_generating(stage, run, s, runtime, problems)
        summary = evaluation.write_summary(run, s.label, ks)
        if summary is not None:
            print_eval_summary(summary)
        if probe:
            run_probe(run, s, runtime, problems)

    @app.command("run")
    @handle_errors
    def run_cmd(pipeline: Path = typer.Argument(..., help="YAML/TOML/JSON pipeline file: `run: DIR` and "
                                                             "`stages: [{sample: {...}}, {estimate: {}}, ...]`.")):
        """Run a whole chain from one file (each entry: a stage and its settings, as its --config takes)."""
        names = run_pipeline(pipeline)
        err.print(f"[green]pipeline[/green] {pipeline}: ran {', '.join(names)}")
