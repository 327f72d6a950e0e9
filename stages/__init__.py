"""GPO stages: an importable library; the `gpo` CLI (gpo_cli) is a thin layer over it.

Map (one screen). Each stage module is a settings dataclass, a `process(chunk, ctx)` function and a `STAGE`
record that `core/pipeline/runner.py` runs; stages import only `stages.core` (never each other).

    sample.py  estimate.py  locate.py  branch.py  eval.py    the stages the runner shards and resumes
    train/     settings.py (methods, defaults, checks), data.py (rows, dedup, truncation), trl_adapter.py
               (TRL configs and trainers, online reward), checkpoints.py (pointer, metrics, final model),
               progress.py
    core/      what stages share, one folder per family:
               pipeline/    runner.py (chunks, atomic writes, rerun rules), layout.py (the run folder's file
                            names, spelled once), artifacts.py, lineage.py, hashing.py,
                            settings.py (setting(), Runtime), config.py (settings files), errors.py,
                            progress.py, query.py (DuckDB views)
               generation/  backends.py + hf_backend.py + vllm_backend.py on base.py, kv_cache.py, models.py,
                            prompts.py, sampling.py (the shared sampling policy, what estimate and
                            branch inherit from sample, run_generating), teacher_forcing.py
               scoring/     answers.py + math_pool.py on verdicts.py, rewards.py (the online-RL reward)
               sources/     problems.py (load_problems), hf_datasets.py, rg_config.py, toy.py, toy_borrow.py,
                            toy_tasks.py (the toy tasks' interface and ground truth)
               method/      steps.py, estimators.py, values.py, changepoint.py, probe.py (`gpo eval --probe`)
    tools/     around the stages, not stages: report, diagnose (+ diagnose_headline), export (+ export_folder,
               verl_reward, verl_scorers), slurm, toy_build, smollm2, demo/ (the `gpo demo` experiment: plan,
               arms, driver, summary; the CLI only prints it)

Where to change ...
    the splitting rule          core/method/steps.py (make_splitter, splitter_spec, split_response)
    the value estimator         core/method/estimators.py (full, adaptive, bisect plans), used by estimate.py
    the selection rule          core/method/values.py (RULES, select_critical), used by locate.py
    the pair construction       branch.py (pairs_for, whole_trajectory_pairs, random_resets)
    a generation backend        core/generation/backends.py (make_generator) + a module beside it,
                                on core/generation/base.py
    an option's default or help the settings dataclass field (`setting(...)`); the CLI derives the flag
    the inherited policy        core/generation/sampling.py (InheritedPolicy; with_policy, applied once when
                                the runner resolves a stage's settings)
    a TRL argument              train/trl_adapter.py (trl_args, method_args)
"""
