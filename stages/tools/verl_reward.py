"""verl reward for `gpo export --format verl` data, with gpo's own answer checkers.

    python -m verl.trainer.main_ppo data.train_files=exports/verl/train.parquet \
        custom_reward_function.path=$(python -c 'import stages.tools.verl_reward as m; print(m.__file__)') \
        custom_reward_function.name=compute_score ...

verl calls compute_score(data_source, solution_str, ground_truth, extra_info) per response. A reset
row's prompt holds the kept prefix, and the response continues it, so the answer is judged on
extra_info["reset_prefix"] + response with the row's checker, exactly as gpo's branch stage scores
a branch: the one reward of stages/core/scoring/rewards.py, which TRL and `gpo train` use too. Rows without
gpo's extra_info are judged by the "math" checker on the response alone.
"""

from __future__ import annotations

from stages.core.scoring.rewards import correct


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    info = extra_info or {}
    return correct(None, [solution_str], [str(ground_truth)], [info.get("checker") or "math"],
                   [info.get("reset_prefix") or ""])[0]
