"""Prompts: the model's chat template when it has one, else a plain template; text and ids are stored."""

from __future__ import annotations

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_TEMPLATE = "{question}\n"


def uses_chat_template(tokenizer, template: str) -> bool:
    if template == "chat":
        return True
    if template == "plain":
        return False
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer, question: str, *, template: str = "auto", system: str | None = DEFAULT_SYSTEM,
                 instruction: str | None = DEFAULT_INSTRUCTION) -> tuple[str, list[int]]:
    """Return (prompt_text, prompt_token_ids). Chat prompts carry their own special tokens."""
    if uses_chat_template(tokenizer, template):
        user = question if not instruction else f"{question}\n{instruction}"
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = PLAIN_TEMPLATE.format(question=question)
        ids = tokenizer(text)["input_ids"]
    return text, list(ids)
