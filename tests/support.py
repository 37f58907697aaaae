"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath), and the table of preset cases."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# torch threads of a test process: the machine's two cores, or one each when pytest-xdist runs two test processes
# (two processes of two threads each would fight over the cores: some tests ran 10x slower)
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2

# every offline preset of a real architecture (workers.models.PRESETS, less the benchmarks' larger model)
PRESETS = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl")


@dataclass(frozen=True)
class Case:
    """One row of the preset table: a preset in a dtype, and the tolerances its comparisons are held to.

    Each pair of computations compared is equal in exact arithmetic and rounds differently:

    * ``atol`` / ``rtol``: logits of a left-padded batch against its rows run alone (other kernel shapes and
      padding: every hidden state rounds differently);
    * ``engine_atol``: the engine's logits (shared prefix computed in chunks, float32 suffix attention)
      against a full-prompt forward of the patched model; the prefix's operations are the same, so closer;
    * ``probs_atol``: attention probabilities of the VAR paths against the eager reference.

    In float32 they differ by accumulation order only. bfloat16 has an 8-bit mantissa: the logits themselves
    come out of the LM head in bf16, in steps of 2^-7 near 1 and 2^-6 near 2 (their scale here), and
    probabilities near 1 in steps of 2^-8; so its bounds are one or two such steps. Measured worst cases in
    bf16: padded batch 2.3e-2, engine option logits 2.4e-3 and decoding 1.6e-2 (one step at 2),
    probabilities 1.6e-2. Argmaxes (a choice, a generated token) may differ only where the reference ranks the
    two within twice the tolerance (:meth:`tie`); in float32 never.
    """

    preset: str
    dtype: torch.dtype
    atol: float
    rtol: float
    engine_atol: float
    probs_atol: float

    @property
    def id(self) -> str:
        return f"{self.preset}-{str(self.dtype).removeprefix('torch.')}"

    def tie(self, atol: float, logit: float = 0.0) -> float:
        """The margin under which two values near ``logit`` count as tied, for computations within ``atol`` +
        ``rtol`` x |logit| of each other (torch.testing's bound; ``logit`` 0 where a test compares with rtol 0):
        twice that. Decoded tokens need the relative part: a padded batch's 5th token was seen 0.094 (three bf16
        steps at the logits' scale there) from the one run alone."""
        return 0.0 if self.dtype == torch.float32 else 2 * (atol + self.rtol * abs(logit))


CASES = [
    case
    for preset in PRESETS
    for case in (
        Case(preset, torch.float32, atol=1e-4, rtol=1e-4, engine_atol=1e-4, probs_atol=1e-6),
        Case(preset, torch.bfloat16, atol=0.04, rtol=0.01, engine_atol=0.02, probs_atol=2.5e-2),
    )
]


@functools.cache
def loaded(name: str, dtype: torch.dtype = torch.float32):
    """``(model, processor)`` of a preset, one per (preset, dtype) for the whole session: fixtures and tests
    share them, so a test never leaves one patched or changed."""
    from workers.models import load_model

    torch.set_num_threads(TEST_THREADS)
    return load_model(name, device="cpu", dtype=dtype)


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
    """Rows were selected and attention mass moved (docs/method.md sec. 7: VAR can silently do nothing)."""
    assert summary["selected_share"] > 0, summary
    assert summary["mass_moved_per_row"] > 0, summary


def assert_same_tokens(tokens, want, want_logits, *, tie: Callable[[float], float]) -> int:
    """Greedy ``tokens`` equal ``want`` (tokens with the logits each was chosen from), step by step; where they
    first part, ``want``'s logits rank the two tokens within ``tie(the chosen logit)`` of each other (a near-tie
    the tolerance lets flip; the sequences may differ after it). Returns how many steps agreed."""
    for step, (token, expected, logits) in enumerate(zip(list(tokens), list(want), want_logits, strict=True)):
        if int(token) != int(expected):
            chosen = float(logits[int(expected)].float())
            gap = chosen - float(logits[int(token)].float())
            assert gap <= tie(chosen), (step, gap, chosen, list(tokens), list(want))
            return step
    return len(list(want))
