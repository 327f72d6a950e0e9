"""GPO stages: an importable library; the `gpo` CLI (gpo_cli) is a thin layer over it.

Map (one screen). Each stage module is a settings dataclass, a `process(chunk, ctx)` function and a `STAGE`
record that `core/runner.py` runs; stages import only `stages.core` (never each other).

    sample.py  estimate.py  locate.py  branch.py  eval.py    the stages the runner shards and resumes
    train/     settings.py (methods, defaults, checks), data.py (rows, dedup, truncation), trl_adapter.py
               (TRL configs and trainers, online reward), checkpoints.py (pointer, metrics, final model)
    core/      what stages share: runner.py (chunks, atomic writes, rerun rules), artifacts.py, lineage.py,
               sampling.py (sampling from problems, the shared policy), settings.py (setting(), Runtime),
               probe.py + teacher_forcing.py (`gpo eval --probe`: gold-token probabilities per line kind),
               config.py (settings files), backends.py + hf_backend.py + vllm_backend.py, answers.py +
               math_pool.py, rewards.py (the online-RL reward: gpo train, trl grpo, verl), sources.py,
               prompts.py, steps.py, estimators.py, values.py, query.py, toy*.py
    tools/     around the stages, not stages: report, diagnose, export (+ export_folder, verl_reward,
               verl_scorers), slurm, toy_build,
               smollm2

Where to change ...
    the splitting rule          core/steps.py (make_splitter, splitter_spec, split_response)
    the value estimator         core/estimators.py (full, adaptive, bisect plans), used by estimate.py
    the selection rule          core/values.py (RULES, select_critical), used by locate.py
    the pair construction       branch.py (pairs_for, whole_trajectory_pairs, random_resets)
    a generation backend        core/backends.py (make_generator) + a module beside it, on core/generation.py
    an option's default or help the settings dataclass field (`setting(...)`); the CLI derives the flag
    a TRL argument              train/trl_adapter.py (trl_args, method_args)
"""
