"""Shared fixtures: tiny random-weight LMMs of the real architectures, with planted sinks."""

from __future__ import annotations

import functools

import pytest
import torch
from support import CASES, PRESETS, build_prompt, make_image


@functools.cache
def _loaded(name: str, dtype: torch.dtype):
    """One model per (preset, dtype) for the whole session (built once, whichever fixture asks first)."""
    from workers.models import load_model

    torch.set_num_threads(2)
    return load_model(name, device="cpu", dtype=dtype)


@pytest.fixture(scope="session", params=PRESETS)
def tiny(request):
    """(name, model, processor) for each preset in float32, sinks planted; shared by the session, so never leave
    it patched."""
    return (request.param, *_loaded(request.param, torch.float32))


@pytest.fixture(scope="session", params=CASES, ids=[case.id for case in CASES])
def case(request):
    """(Case, model, processor): the preset table (tests/support.py), every preset in float32 and bfloat16."""
    return (request.param, *_loaded(request.param.preset, request.param.dtype))


@pytest.fixture()
def tiny_inputs(tiny):
    _, _, processor = tiny
    prompt = build_prompt(processor, "Is the circle red or blue? Answer with the option's letter. A. Red B. Blue")
    return processor(images=make_image(0), text=prompt, return_tensors="pt")
