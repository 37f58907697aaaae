"""First-token ids of answer options, for scoring option tasks from one forward pass.

The engine scores an option task by comparing, at the first answer position, the logits of each option's first
token (LLaVA-RLHF's precedent: llava-rlhf/LLaVA-RLHF:Eval/model_vqa_logit.py reads the first-step scores of
the yes/no tokens). Which token that is depends on the tokenizer and on what precedes the answer
(SentencePiece models answer ``"▁Yes"`` after LLaVA's ``"ASSISTANT:"``), so it is read off the tokenizer,
never hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.tasks._errors import OptionTokenError

__all__ = ["option_token_ids"]


def option_token_ids(
    tokenizer: Any, prompt: str, options: Sequence[str], *, separator: str | None = None
) -> tuple[int, ...]:
    """The id of the first token of each option when it follows ``prompt`` as the model's answer.

    Each option is tokenised as ``prompt + separator + option`` and compared with ``prompt`` alone; the first
    id past the prompt's ids is the option's first token. ``separator`` defaults to ``" "``, or ``""`` when
    the prompt ends in whitespace (LLaVA answers after ``"ASSISTANT:"`` with a space; Qwen2-VL after
    ``"assistant\\n"``).

    Args:
        tokenizer: a Hugging Face tokenizer, or a processor that has one as ``.tokenizer``.
        prompt: the full prompt text, as ``Task.build_prompt`` returns it.
        options: the answer strings (``Example.options``).

    Raises:
        OptionTokenError: there are no options, the prompt's tokens change when an option follows it, an
        option
            adds no token, or two options share their first token (their logits could not be told apart).
    """
    if not options:
        raise OptionTokenError("no options to tokenise")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if separator is None:
        separator = "" if prompt[-1:].isspace() else " "
    base = _ids(tokenizer, prompt)
    first_ids: list[int] = []
    for option in options:
        full = _ids(tokenizer, prompt + separator + option)
        if full[: len(base)] != base:
            raise OptionTokenError(
                f"option {option!r} merges with the prompt's last token; pass another separator"
            )
        if len(full) == len(base):
            raise OptionTokenError(f"option {option!r} adds no token after the prompt")
        first_ids.append(full[len(base)])
    for i, token in enumerate(first_ids):
        if token in first_ids[:i]:
            other = options[first_ids.index(token)]
            raise OptionTokenError(
                f"options {other!r} and {options[i]!r} share their first token (id {token})"
            )
    return tuple(first_ids)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
