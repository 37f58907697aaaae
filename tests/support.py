"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import numpy as np
from PIL import Image

PRESETS = ("tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl")


def make_image(seed: int, size: int = 112) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_prompt(processor, question: str) -> str:
    """A chat prompt with one image, in the model's own format."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
