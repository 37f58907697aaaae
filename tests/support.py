"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath), and the table of preset cases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# every offline preset of a real architecture (workers.models.PRESETS, less the benchmarks' larger model)
PRESETS = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl")


@dataclass(frozen=True)
class Case:
    """One row of the preset table: a preset in a dtype, and the tolerances its comparisons are held to.

    ``atol`` / ``rtol`` bound logits (and attention probabilities, ``probs_atol``) of two computations that are
    equal in exact arithmetic but round differently: the engine's shared-prefix suffix against a full-prompt
    forward, a padded batch against its rows alone, the fast or eager VAR path against the reference. In float32
    they differ by accumulation order only; bfloat16 (8-bit mantissa: steps of 2^-8 relative) rounds every
    hidden state, so its bounds are a few bf16 steps of the logits' scale. Where logits can differ, an argmax
    (a choice, a generated token) is compared only when its margin exceeds ``2 * atol`` (a near-tie can flip).
    """

    preset: str
    dtype: torch.dtype
    atol: float
    rtol: float
    probs_atol: float

    @property
    def id(self) -> str:
        return f"{self.preset}-{str(self.dtype).removeprefix('torch.')}"


CASES = [
    case
    for preset in PRESETS
    for case in (
        Case(preset, torch.float32, atol=1e-4, rtol=1e-4, probs_atol=1e-6),
        Case(preset, torch.bfloat16, atol=0.04, rtol=0.01, probs_atol=2.5e-2),
    )
]


def make_image(seed: int, size: int | tuple[int, int] = 112) -> Image.Image:
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def build_prompt(processor, question: str) -> str:
    """A chat prompt with one image, in the model's own format."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def on_model(inputs, model) -> dict:
    """Processor outputs ready for ``model``: floating tensors (pixels) in the model's dtype."""
    dtype = next(model.parameters()).dtype
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def assert_var_acted(summary: dict) -> None:
    """Rows were selected and attention mass moved (VAR.md sec. 7: VAR can silently do nothing)."""
    assert summary["selected_share"] > 0, summary
    assert summary["mass_moved_per_row"] > 0, summary


def assert_same_tokens(tokens, want, want_logits, case: Case) -> int:
    """Greedy ``tokens`` equal ``want`` (tokens with the logits each was chosen from), step by step; in bfloat16
    only up to the first step whose two best logits lie within ``2 * case.atol`` (a near-tie the tolerance
    lets flip; after it the sequences may part). Returns how many steps were compared."""
    for step, (token, expected, logits) in enumerate(zip(list(tokens), list(want), want_logits, strict=True)):
        top = logits.float().topk(2).values
        if case.dtype != torch.float32 and float(top[0] - top[1]) <= 2 * case.atol:
            return step
        assert int(token) == int(expected), (step, list(tokens), list(want))
    return len(list(want))
