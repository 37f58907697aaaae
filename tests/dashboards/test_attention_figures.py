"""Attention figures from synthetic captures: they render, reflect their input, and refuse bad shapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dashboards.attention import attention_before_after, layer_head_heatmaps, sink_overlay

REPO = Path(__file__).resolve().parents[2]


def _panel_titles(figure, word: str) -> list[str]:
    return [ax.get_title() for ax in figure.axes if word in ax.get_title()]


def test_public_names_are_exported_lazily():
    """In a fresh interpreter (independent of what this test process has imported)."""
    code = (
        "import sys, dashboards\n"
        "assert 'matplotlib' not in sys.modules and 'optuna' not in sys.modules, 'import dashboards is not lazy'\n"
        "from dashboards.attention import AttentionCapture\n"
        "assert dashboards.AttentionCapture is AttentionCapture\n"
        "print(','.join(n for n in dashboards.__all__ if callable(getattr(dashboards, n))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.strip().split(",")) == {
        "AttentionCapture",
        "attention_before_after",
        "layer_head_heatmaps",
        "mlflow_run_url",
        "render_leaderboard",
        "sink_overlay",
        "sweep_figures",
    }


def test_examples_of_every_figure_render(tmp_path, capture, render_png):
    """One PNG of each kind, kept in tmp_path to be looked at."""
    share = np.linspace(0, 1, 6 * 4).reshape(6, 4)
    ratio = np.clip(share[::-1] * 1.1, 0, 1)
    figures = {
        "sink_overlay": sink_overlay(capture, 5),
        "attention_before_after": attention_before_after(capture, 5, max_heads=3),
        "layer_head_heatmaps": layer_head_heatmaps(share, ratio, first_layer=2),
    }
    for name, figure in figures.items():
        data = render_png(figure)
        (tmp_path / f"{name}.png").write_bytes(data)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{n}.png" for n in figures)


def test_sink_overlay_marks_the_layer_sinks(capture, render_png):
    figure = sink_overlay(capture, 2)
    render_png(figure)
    (ax,) = figure.axes
    assert ax.get_title() == "layer 2: 3 visual sinks of 64 image tokens"
    assert ax.get_xlabel() == "token grid 8 x 8"
    assert len(ax.patches) == 3  # one filled square per sink
    assert figure.get_suptitle() == capture.title
    assert "4 visual sinks" in sink_overlay(capture, 5).axes[0].get_title()


def test_before_after_shows_selected_heads(capture, render_png):
    figure = attention_before_after(capture, 2)
    render_png(figure)
    before = _panel_titles(figure, "before VAR")
    after = _panel_titles(figure, "after VAR")
    assert [t.split(" (")[0] for t in before] == ["head 0", "head 2"]  # the selected heads of layer 2
    assert len(after) == 2
    assert all("(selected)" in t for t in before + after)
    colorbars = [ax for ax in figure.axes if ax.get_ylabel() == "attention (sqrt scale)"]
    assert len(colorbars) == 2  # one shared scale per head
    assert "2/4 heads selected" in figure.get_suptitle()


def test_before_after_caps_the_default_heads_by_change(capture):
    figure = attention_before_after(capture, 5, max_heads=3)
    heads = [t.split(" (")[0] for t in _panel_titles(figure, "before VAR")]
    assert heads == ["head 1", "head 2", "head 3"]  # of 4 selected, the 3 that moved most, in head order
    assert len(_panel_titles(attention_before_after(capture, 5), "after VAR")) == 4


def test_before_after_shares_the_scale_and_reports_sink_share(capture):
    figure = attention_before_after(capture, 2, heads=[1])
    axes = [ax for ax in figure.axes if "head 1" in ax.get_title()]
    assert len(axes) == 2
    norms = [ax.images[-1].norm for ax in axes]
    assert norms[0] is norms[1]  # one colour scale for before and after
    assert "(not selected)" in axes[0].get_title()
    # unselected head: VAR left it alone, so the sink share is the same before and after
    assert axes[0].get_title().split("sinks ")[1] == axes[1].get_title().split("sinks ")[1]


def test_before_after_with_no_selected_head_explains(capture_factory, render_png):
    capture = capture_factory(selected=np.zeros((2, 4), dtype=bool))
    figure = attention_before_after(capture, 2)
    render_png(figure)
    assert not _panel_titles(figure, "before VAR")
    assert "no head selected in layer 2" in figure.axes[0].texts[0].get_text()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: sink_overlay(c, 3), r"layer 3 was not captured; captured layers: \[2, 5\]"),
        (lambda c: attention_before_after(c, 2, heads=[4]), r"heads \[4\] out of range"),
        (lambda c: attention_before_after(c, 2, heads=[1, 1]), "repeats"),
        (lambda c: attention_before_after(c, 2, max_heads=0), "max_heads must be >= 1"),
    ],
)
def test_bad_figure_arguments_raise(capture, call, message):
    with pytest.raises(ValueError, match=message):
        call(capture)


def test_capture_rejects_shapes_that_do_not_match_the_grid(capture_factory):
    capture = capture_factory()
    with pytest.raises(ValueError, match=r"visual_sinks has shape \(2, 64\), expected \(2, 36\)"):
        capture_factory(grid=(6, 6))
    with pytest.raises(ValueError, match=r"after has shape \(2, 4, 63\), expected \(2, 4, 64\)"):
        capture_factory(after=capture.after[:, :, :63])
    with pytest.raises(ValueError, match=r"selected has shape \(2, 3\), expected \(2, 4\)"):
        capture_factory(selected=np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"visual_sinks has shape \(2, 64\), expected \(3, 64\)"):
        capture_factory(layers=(2, 5, 7))
    with pytest.raises(ValueError, match=r"before must be \[n_layers, heads, rows \* cols\]"):
        capture_factory(before=capture.before[0])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": np.zeros((8, 8), dtype=np.uint8)}, r"image must be \[H, W, 3\]"),
        ({"image": np.zeros((8, 8, 3), dtype=np.float32)}, "image must be uint8"),
        ({"visual_sinks": np.zeros((2, 64), dtype=int)}, "visual_sinks must be a bool array"),
        ({"grid": (0, 8)}, "grid must be"),
        ({"layers": (2, 2)}, "distinct layer numbers"),
        ({"before": np.full((2, 4, 64), np.nan)}, "finite attention probabilities"),
    ],
)
def test_capture_rejects_bad_fields(capture_factory, changes, message):
    with pytest.raises(ValueError, match=message):
        capture_factory(**changes)


def test_capture_is_frozen_and_normalised(capture):
    assert capture.layers == (2, 5) and capture.grid == (8, 8) and capture.heads == 4
    with pytest.raises(AttributeError):
        capture.title = "changed"


def test_layer_head_heatmaps_labels_and_colorbars(render_png):
    layers, heads = 6, 5
    share = np.random.default_rng(1).random((layers, heads))
    figure = layer_head_heatmaps(share, share / 2, first_layer=2)
    render_png(figure)
    maps = [ax for ax in figure.axes if ax.get_xlabel() == "head"]
    assert [ax.get_title() for ax in maps] == [
        "share of (head, query) rows selected",
        "mean visual non-sink ratio r",
    ]
    assert all(ax.get_ylabel() == "layer" for ax in maps)
    assert maps[0].images[0].get_array().shape == (layers, heads)
    colorbars = [ax.get_ylabel() for ax in figure.axes if ax not in maps]
    assert colorbars == ["selected share", "mean r"]
    assert "layers below 2 are never modified" in figure.get_suptitle()
    assert "never modified" not in layer_head_heatmaps(share, share).get_suptitle()


def test_layer_head_heatmaps_rejects_bad_shapes():
    with pytest.raises(
        ValueError, match=r"selected_share has shape \(4, 3\) but mean_ratio has shape \(4, 2\)"
    ):
        layer_head_heatmaps(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"pick one configuration slot"):
        layer_head_heatmaps(np.zeros((1, 4, 3)), np.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match="first_layer must be >= 0"):
        layer_head_heatmaps(np.zeros((4, 3)), np.zeros((4, 3)), first_layer=-1)
