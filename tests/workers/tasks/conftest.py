"""Fixtures of the task-layer tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def wordnet() -> None:
    """CHAIR needs WordNet 3.0 (Debian's wordnet-base): skip without it locally, fail in CI (CI installs it)."""
    from workers.tasks._wordnet import find_wordnet

    if find_wordnet() is None:
        message = "WordNet 3.0 is not installed: apt-get install wordnet-base"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
