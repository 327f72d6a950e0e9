"""Online RL for `gpo train --method grpo|rloo`: TRL's GRPOTrainer / RLOOTrainer with the answer checker.

TRL 1.16 has no PPOTrainer; GRPO and RLOO are the PPO-style (clipped policy-gradient) online methods.
The prompt set is the original problems (RUN/sample, one per problem) plus, for --data gpo or
random-reset, the reset states of RUN/branch/reset_prompts: the paper's "resampled trajectories join the
rollout buffer" in staged form. A reset prompt is the original prompt followed by the kept prefix, so the
reward judges prefix + completion: the prefix may hold lines the final answer depends on. Generation is
HF `generate` (use_vllm=False).
"""

from __future__ import annotations

from pathlib import Path

from stages.core import artifacts
from stages.core.errors import GpoError


def original_problems(run: Path) -> dict[str, dict]:
    """One row per problem of RUN/sample: prompt text and ids, gold answer, checker."""
    table = artifacts.read_table(run, "sample").select(
        ["problem_id", "prompt_text", "prompt_token_ids", "gold_answer", "checker"])
    problems: dict[str, dict] = {}
    for r in table.to_pylist():
        problems.setdefault(r["problem_id"], r)
    if not problems:
        raise GpoError(f"table 'sample' of {run} has no problems")
    return dict(sorted(problems.items()))


def online_rows(run: Path, data: str, tok) -> tuple[list[dict], dict, dict]:
    """Examples {prompt, gold_answer, checker, prefix_text}, their fingerprint, and tokenization checks."""
    from stages.train import fingerprint, prompt_for_tokenizer, select_rows

    problems = original_problems(run)
    rows = [{"problem_id": pid, "prompt": p["prompt_text"], "prompt_token_ids": p["prompt_token_ids"],
             "gold_answer": p["gold_answer"], "checker": p["checker"], "prefix_text": ""}
            for pid, p in problems.items()]
    if data != "baseline":
        for r in select_rows(run, "reset_prompts", data):
            original = problems.get(r["problem_id"])
            if original is None or not r["prompt"].startswith(original["prompt_text"]):
                raise GpoError(f"reset prompt of problem {r['problem_id']} does not extend its original prompt "
                               f"in table 'sample' of {run}")
            rows.append({**r, "prefix_text": r["prompt"][len(original["prompt_text"]):]})
    checks = {"match": 0, "bos_dropped": 0, "mismatch": 0}
    examples = []
    for r in rows:
        prompt, verdict = prompt_for_tokenizer(tok, r["prompt"], r["prompt_token_ids"])
        checks[verdict] += 1
        examples.append({"prompt": prompt, "gold_answer": r["gold_answer"], "checker": r["checker"],
                         "prefix_text": r["prefix_text"]})
    inputs = {"table": "sample+reset_prompts", "rows": len(rows),
              "resets": len(rows) - len(problems), "hash": fingerprint(rows, ("problem_id", "prompt"))}
    return examples, inputs, checks


class AnswerReward:
    """Reward 1.0 when the project's checker accepts prefix + completion, else 0.0 (one checker per kind)."""

    __name__ = "correct"  # TRL names the logged reward columns after the function

    def __init__(self) -> None:
        self.checkers: dict = {}

    def __call__(self, prompts, completions, gold_answer, checker, prefix_text, **kwargs) -> list[float]:
        from stages.core.answers import make_checker

        texts = [p + c for p, c in zip(prefix_text, completions)]
        rewards = [0.0] * len(texts)
        for name in sorted(set(checker)):
            rows = [i for i, c in enumerate(checker) if c == name]
            if name not in self.checkers:
                self.checkers[name] = make_checker(name)
            verdicts = self.checkers[name].check_many([texts[i] for i in rows], [gold_answer[i] for i in rows])
            for i, v in zip(rows, verdicts):
                rewards[i] = float(v.correct)
        return rewards

    def close(self) -> None:
        for c in self.checkers.values():
            c.close()
        self.checkers.clear()


def online_trainer(s, config, tok, dataset, callbacks: list, peft_config):
    from stages.train import trl_class

    Trainer = trl_class(s.method, "Trainer")
    reward = AnswerReward()
    trainer = Trainer(model=s.model, reward_funcs=reward, args=config, train_dataset=dataset,
                      processing_class=tok, callbacks=callbacks, peft_config=peft_config)
    trainer.gpo_close = reward.close
    return trainer
