"""The online-RL reward: 1.0 when gpo's checker accepts reset_prefix + completion, else 0.0.

One reward for `gpo train --method grpo|rloo`, for TRL's own scripts on `gpo export --format trl` data,
and for verl (stages/tools/verl_reward.py):

    trl grpo --model_name_or_path MODEL --dataset_name exports/trl/prompts \
        --reward_funcs stages.core.scoring.rewards.correct --output_dir out/grpo

TRL passes a dataset's columns as keyword arguments, one list entry per completion: the export's
`prompts` table (and gpo train's online rows) carry gold_answer, checker and reset_prefix. A reset
prompt holds the kept prefix and the completion continues it, so the answer is judged on the prefix +
the completion, exactly as the branch stage scores a branch.
"""

from __future__ import annotations


def completion_text(completion) -> str:
    """A completion as text: TRL gives plain strings for plain prompts, assistant messages for chat ones."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))


class AnswerReward:
    """Reward 1.0 when the project's checker accepts reset_prefix + completion, else 0.0 (one checker per kind,
    kept for the process's lifetime: the math checker keeps a pool of worker processes)."""

    __name__ = "correct"  # TRL names the logged reward columns after the function

    def __init__(self) -> None:
        self.checkers: dict = {}

    def __call__(self, prompts, completions, gold_answer, checker, reset_prefix=None, **kwargs) -> list[float]:
        from stages.core.scoring.answers import make_checker

        prefixes = reset_prefix if reset_prefix is not None else [""] * len(completions)
        texts = [(p or "") + completion_text(c) for p, c in zip(prefixes, completions)]
        rewards = [0.0] * len(texts)
        names = [c or "math" for c in checker]
        for name in sorted(set(names)):
            rows = [i for i, c in enumerate(names) if c == name]
            if name not in self.checkers:
                self.checkers[name] = make_checker(name)
            verdicts = self.checkers[name].check_many([texts[i] for i in rows], [str(gold_answer[i]) for i in rows])
            for i, v in zip(rows, verdicts):
                rewards[i] = float(v.correct)
        return rewards

    def close(self) -> None:
        for c in self.checkers.values():
            c.close()
        self.checkers.clear()


# What `--reward_funcs stages.core.scoring.rewards.correct` imports: TRL's script takes a module attribute by name.
correct = AnswerReward()
