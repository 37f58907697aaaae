"""Shared data for the dashboards tests: a small synthetic attention capture (no model)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # Optuna's plots go through pyplot; keep the test process headless

import numpy as np
import pytest

from dashboards.attention import AttentionCapture

ROWS, COLS, HEADS = 8, 8, 4
LAYERS = (2, 5)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(figure) -> bytes:
    """Render a figure to PNG and check it is a real, non-trivial image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    data = buffer.getvalue()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000, f"suspiciously small PNG ({len(data)} bytes)"
    return data


def make_image(height: int = 96, width: int = 128) -> np.ndarray:
    """A non-square RGB test picture: a colour gradient with a red disc."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 90)], axis=-1
    )
    disc = (x - width * 0.6) ** 2 + (y - height * 0.45) ** 2 < (min(height, width) * 0.22) ** 2
    image[disc] = (220, 30, 40)
    return image.astype(np.uint8)


def make_capture(selected: np.ndarray | None = None, **changes) -> AttentionCapture:
    """2 captured layers x 4 heads over an 8 x 8 grid; VAR moves 40% of the sinks' mass to the other tokens."""
    rng = np.random.default_rng(0)
    tokens = ROWS * COLS
    sinks = np.zeros((len(LAYERS), tokens), dtype=bool)
    sinks[0, [9, 10, 45]] = True
    sinks[1, [9, 30, 31, 62]] = True
    default = np.array([[True, False, True, False], [True, True, True, True]])
    if selected is None:
        selected = default
    moves = selected if np.shape(selected) == default.shape else default  # the wrong-shape tests
    before = rng.random((len(LAYERS), HEADS, tokens)) * 0.004
    before += np.where(sinks[:, None, :], 0.08, 0.0)  # sinks soak up the visual attention
    after = before.copy()
    for li in range(len(LAYERS)):
        for h in range(HEADS):
            if not moves[li, h]:
                continue
            moved = 0.4 * (1 + h) / HEADS * before[li, h, sinks[li]].sum()  # heads move different amounts
            others = ~sinks[li]
            after[li, h, sinks[li]] *= 1 - 0.4 * (1 + h) / HEADS
            after[li, h, others] += moved * before[li, h, others] / before[li, h, others].sum()
    fields = dict(
        image=make_image(),
        grid=(ROWS, COLS),
        layers=LAYERS,
        visual_sinks=sinks,
        before=before,
        after=after,
        selected=selected,
        title="synthetic: a red disc",
    )
    return AttentionCapture(**(fields | changes))


@pytest.fixture()
def capture() -> AttentionCapture:
    return make_capture()


@pytest.fixture()
def capture_factory():
    """``make_capture(selected=None, **field_changes)``: the synthetic capture with some fields replaced."""
    return make_capture


@pytest.fixture()
def render_png():
    """``render_png(figure) -> bytes``: PNG bytes, checked for the signature and a non-trivial size."""
    return png_bytes
