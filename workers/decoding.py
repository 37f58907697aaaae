"""Greedy decoding as ``model.generate(do_sample=False)`` does it, under the checkpoint's generation config.

Real checkpoints ship settings that change greedy tokens (Qwen2-VL and Qwen2.5-VL: ``repetition_penalty`` 1.05),
so the engine applies them with transformers' own logits processors, in ``generate``'s order, on the full
sequence (prompt and generated tokens), in float32 as ``generate`` does. Settings that only shape sampling
(temperature, top-k, top-p, ...) or beams that are not used are ignored, as ``generate(do_sample=False)`` ignores
them; a setting the engine cannot reproduce (beam search, contrastive search, forced tokens, stop strings, ...)
is refused in one line when the engine is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation import (
    InfNanRemoveLogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from var_core.errors import VarsweepError

__all__ = ["GreedyDecoding", "UnsupportedGenerationError"]


class UnsupportedGenerationError(VarsweepError, ValueError):
    """The checkpoint's generation config asks for decoding the engine cannot reproduce."""


# setting -> does this value need something other than plain greedy decoding? (None: unset)
_REFUSED: dict[str, Callable[[Any], bool]] = {
    "num_beams": lambda v: v > 1,
    "num_beam_groups": lambda v: v > 1,
    "num_return_sequences": lambda v: v > 1,
    "penalty_alpha": lambda v: v > 0,
    "guidance_scale": lambda v: v != 1,
    "dola_layers": lambda v: True,
    "forced_bos_token_id": lambda v: True,
    "forced_eos_token_id": lambda v: True,
    "exponential_decay_length_penalty": lambda v: True,
    "stop_strings": lambda v: bool(v),
    "constraints": lambda v: bool(v),
    "force_words_ids": lambda v: bool(v),
    "watermarking_config": lambda v: True,
    "token_healing": lambda v: bool(v),
    "prompt_lookup_num_tokens": lambda v: True,
    "max_time": lambda v: True,
}


def _ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


@dataclass(frozen=True)
class GreedyDecoding:
    """What greedy decoding under one generation config needs: the end-of-sequence ids and the logits processors.

    Build with :meth:`from_model`; :meth:`processors` gives the processors for one prompt length.
    """

    config: GenerationConfig
    eos_ids: tuple[int, ...]

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> GreedyDecoding:
        """The model's ``generation_config`` (its eos ids, else the text config's, as ``generate`` falls back).

        Raises:
            UnsupportedGenerationError: a setting of the config changes decoding beyond these processors.
        """
        config = getattr(model, "generation_config", None) or GenerationConfig()
        refused = [
            name
            for name, needs_more in _REFUSED.items()
            if getattr(config, name, None) is not None and needs_more(getattr(config, name))
        ]
        if refused:
            shown = ", ".join(f"{name}={getattr(config, name)!r}" for name in refused)
            raise UnsupportedGenerationError(
                f"the generation config of {type(model).__name__} sets {shown}: the engine decodes greedily with "
                "repetition/n-gram/bad-word/min-length/suppress processors only; unset these settings "
                "(model.generation_config) to sweep this model"
            )
        eos = _ids(config.eos_token_id) or _ids(getattr(model.config.get_text_config(), "eos_token_id", None))
        return cls(config=config, eos_ids=tuple(dict.fromkeys(eos)))

    def processors(self, prompt_len: int, device: torch.device) -> LogitsProcessorList:
        """The processors ``generate`` would apply after a prompt of ``prompt_len`` tokens, in its order."""
        config, eos = self.config, torch.tensor(self.eos_ids, device=device, dtype=torch.long)
        found = LogitsProcessorList()
        if config.sequence_bias is not None:
            found.append(SequenceBiasLogitsProcessor(sequence_bias=config.sequence_bias))
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            found.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
            found.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            found.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if config.min_length is not None and config.min_length > 0 and self.eos_ids:
            found.append(MinLengthLogitsProcessor(config.min_length, eos, device=device))
        if config.min_new_tokens is not None and config.min_new_tokens > 0 and self.eos_ids:
            found.append(
                MinNewTokensLengthLogitsProcessor(prompt_len, config.min_new_tokens, eos, device=device)
            )
        if config.remove_invalid_values:
            found.append(InfNanRemoveLogitsProcessor())
        if config.suppress_tokens is not None:
            found.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
        if config.begin_suppress_tokens is not None:
            found.append(
                SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, prompt_len, device=device)
            )
        return found

    def next_tokens(
        self, processors: LogitsProcessorList, sequences: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """``[B]`` next tokens: ``logits`` ``[B, V]`` of the last position, in float32, processed, argmax."""
        return processors(sequences, logits.float()).argmax(dim=-1)
