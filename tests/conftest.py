"""Shared fixtures: tiny random-weight LMMs of the real architectures, with planted sinks."""

from __future__ import annotations

import pytest
import torch
from support import CASES, PRESETS, TEST_THREADS, build_prompt, loaded, make_image

from sweep.cluster import LOCAL_RAY_ENVIRONMENT

torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session", params=PRESETS)
def tiny(request):
    """(name, model, processor) for each preset in float32, sinks planted; shared by the session, so never leave
    it patched."""
    return (request.param, *loaded(request.param))


# bfloat16 matmuls are emulated on most CPUs (several times slower than float32): those cases are slow
_CASE_PARAMS = [
    pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.dtype == torch.bfloat16 else [])
    for case in CASES
]


@pytest.fixture(scope="session", params=_CASE_PARAMS)
def case(request):
    """(Case, model, processor): the preset table (tests/support.py), every preset in float32 and bfloat16."""
    return (request.param, *loaded(request.param.preset, request.param.dtype))


@pytest.fixture(autouse=True)
def _local_ray_environment_stays_in_its_test(monkeypatch):
    """An in-process sweep sets Ray's variables for a local Ray (sweep.cluster.local_ray_environment) in this
    process's environment; they are taken back after each test, so a later test's multi-node Ray in the same
    process (pytest-xdist runs many tests per process) does not inherit a single-node switch."""
    for name in LOCAL_RAY_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def tiny_inputs(tiny):
    _, _, processor = tiny
    prompt = build_prompt(
        processor, "Is the circle red or blue? Answer with the option's letter. A. Red B. Blue"
    )
    return processor(images=make_image(0), text=prompt, return_tensors="pt")


@pytest.fixture(scope="session")
def anyres():
    """("tiny-llava-next", model, processor): one preset, for engine behaviour that is the same on every family
    (its prefixes carry the most inputs: image_sizes, five crops)."""
    return ("tiny-llava-next", *loaded("tiny-llava-next"))
