"""Whether verl's built-in scorer for a `--data-source` can read the answers this run's prompt asks for.

`gpo export --format verl --data-source NAME` picks verl's `default_compute_score` branch for NAME, and each
branch reads one answer format: `openai/gsm8k` only `#### 42`, `math`/`math_dapo`/`aime*` an `Answer: 42`
line, the MATH sources and numina_* `\\boxed{42}` (verl 0.9.1, verl/utils/reward_score/). gpo's default chat
prompt asks for `\\boxed{}`, so `--data-source openai/gsm8k` would score every correct answer 0 and train
on noise. The evidence is the run itself: the responses gpo's checker accepted. When fewer than half of
them hold the scorer's format, the export is refused (an RL run on a reward of 0 for correct answers
wastes its whole budget silently; an export costs seconds to redo), unless --allow-scorer-mismatch.
Names verl does not know are left alone (a user's own reward may dispatch on them).
"""

from __future__ import annotations

import re

from stages.core.pipeline.errors import GpoError

_BOXED = ("\\boxed{...}", re.compile(r"\\boxed\s*\{"))
_DAPO = ("an 'Answer: ...' line", re.compile(r"(?i)Answer\s*:\s*([^\n]+)"))
_GSM8K = ("'#### <number>'", re.compile(r"#### (\-?[0-9\.\,]+)"))
NUMINA = ("numina_aops_forum", "numina_synthetic_math", "numina_amc_aime", "numina_synthetic_amc",
          "numina_cn_k12", "numina_olympiads")


def reads(data_source: str) -> tuple[str, re.Pattern, int | None] | None:
    """(format, pattern, characters at the end it looks at) of verl's scorer for this name, or None."""
    if data_source == "openai/gsm8k":
        return (*_GSM8K, 300)  # gsm8k.py reads only the last 300 characters
    if data_source in ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500") \
            or data_source in NUMINA:
        return (*_BOXED, None)
    if data_source in ("math_dapo", "math", "math_dapo_reasoning") or data_source.startswith("aime"):
        return (*_DAPO, None)
    return None


def check_scorer(data_source: str, samples: list[dict]) -> None:
    """Refuse when verl's scorer for data_source cannot read most answers gpo judged correct in this run."""
    scorer = reads(data_source)
    if scorer is None:
        return
    what, pattern, tail = scorer
    evidence = [s["response_text"] for s in samples if s.get("reward") == 1] or [s["response_text"] for s in samples]
    readable = sum(bool(pattern.search(text[-tail:] if tail else text)) for text in evidence)
    if readable * 2 < len(evidence):
        kind = "correct " if any(s.get("reward") == 1 for s in samples) else ""
        raise GpoError(f"--data-source {data_source}: verl's scorer for it reads {what}, found in {readable} of "
                       f"{len(evidence)} {kind}responses of this run, so it would score correct answers 0; "
                       "leave --data-source out and score with gpo's reward (stages/tools/verl_reward.py), pick a "
                       "data source whose scorer reads this prompt's format, or add --allow-scorer-mismatch")
