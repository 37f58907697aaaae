"""What an evaluation returns, as plain data: no torch, so a thin trial process can receive and merge it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from var_core.config import VARConfig
from var_core.stats import VARStats

__all__ = ["ConfigResult", "CapturedAttention", "merge_results"]


@dataclass
class ConfigResult:
    """One configuration's results over the examples it was evaluated on."""

    config: VARConfig | None  # None: VAR off (the baseline)
    answers: dict[str, str] = field(default_factory=dict)  # example id -> raw answer text
    choices: dict[str, int] = field(default_factory=dict)  # option tasks: index of the chosen option
    tokens: dict[str, list[int]] = field(default_factory=dict)  # generation tasks: generated token ids
    stats: VARStats | None = None


@dataclass(frozen=True, eq=False)
class CapturedAttention:
    """The last prompt token's attention on the image, before and after VAR, in every layer VAR modified
    (``EvalEngine.capture``); the dashboards draw it (``dashboards.AttentionCapture.of``)."""

    task: str
    example_id: str
    config: VARConfig
    image: np.ndarray  # [H, W, 3] uint8: the example's image as loaded
    grid: tuple[int, int]  # (rows, cols) of the image tokens that cover the whole image
    layers: tuple[int, ...]  # the decoder layers VAR modified, one per leading row below
    visual_sinks: np.ndarray  # bool [layers, rows * cols]
    before: np.ndarray  # float [layers, heads, rows * cols]: VAR off
    after: np.ndarray  # the same, VAR on
    selected: np.ndarray  # bool [layers, heads]: the heads VAR selected for that row


def merge_results(
    per_worker: Sequence[Sequence[ConfigResult]], order: Sequence[str] | None = None
) -> list[Any]:
    """Join the workers' ``ConfigResult`` lists (same configs, disjoint examples) into one list.

    With ``order`` (example ids), every per-example dict follows it, whatever worker answered first.
    """

    def ordered(parts: dict[str, Any]) -> dict[str, Any]:
        return parts if order is None else {i: parts[i] for i in order if i in parts}

    merged = []
    for parts in zip(*per_worker, strict=True):
        result = ConfigResult(config=parts[0].config)
        for part in parts:
            result.answers.update(part.answers)
            result.choices.update(part.choices)
            result.tokens.update(part.tokens)
            if part.stats is not None:
                result.stats = part.stats if result.stats is None else result.stats + part.stats
        result.answers, result.choices, result.tokens = (
            ordered(result.answers),
            ordered(result.choices),
            ordered(result.tokens),
        )
        merged.append(result)
    return merged
