"""Shared fixtures: tiny random-weight LMMs of the real architectures, with planted sinks."""

from __future__ import annotations

import pytest
import torch
from support import PRESETS, build_prompt, make_image


@pytest.fixture(scope="session", params=PRESETS)
def tiny(request):
    """(name, model, processor) for each preset, sinks planted; shared by the session, so never leave it patched."""
    from workers.models import load_model

    torch.set_num_threads(2)
    model, processor = load_model(request.param, device="cpu")
    return request.param, model, processor


@pytest.fixture()
def tiny_inputs(tiny):
    _, _, processor = tiny
    prompt = build_prompt(processor, "Is the circle red or blue? Answer with the option's letter. A. Red B. Blue")
    return processor(images=make_image(0), text=prompt, return_tensors="pt")
