"""Attention figures of VAR from plain numpy data: visual sinks, attention before/after, per-layer/head maps.

Nothing here touches a model: the model side captures an :class:`AttentionCapture` (or a ``VARStats``) and
these functions only draw it. Every function returns a :class:`matplotlib.figure.Figure` drawn on the Agg
canvas and never registered with pyplot, so nothing opens a window and nothing leaks between calls; save it
with ``fig.savefig(path)`` or log it with ``mlflow.log_figure(fig, "name.png")``.

Terms (docs/method.md): a *visual sink* is an image token whose sink score phi reaches tau in that layer;
a head is *selected* for a query row when its visual non-sink ratio r reaches rho; VAR then moves a fraction
p of the sinks' attention to the visual non-sinks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = ["AttentionCapture", "sink_overlay", "attention_before_after", "layer_head_heatmaps"]

_SINK_COLOUR = "#00e5ff"  # cyan: readable on both the photo and the magma heatmap
_HEAT_CMAP = "magma"
_SHARE_CMAP = "viridis"


@dataclass(frozen=True, eq=False)
class AttentionCapture:
    """What one prompt's attention looked like, with VAR off and on, in some decoder layers.

    Produced on the model side (last prompt token's attention rows, the visual sink masks and the heads VAR
    selected); the dashboards only read it. Arrays are validated at construction: a shape that does not match
    ``grid``, ``layers`` or each other raises :class:`ValueError` naming the field and both shapes.

    Attributes:
        image: ``[H, W, 3]`` uint8, the image as the model saw it (after resizing and cropping).
        grid: ``(rows, cols)`` of image tokens, e.g. ``(24, 24)`` for 576 tokens.
        layers: the decoder layers captured (0-based, as in transformers), one per leading row of the arrays.
        visual_sinks: bool ``[len(layers), rows * cols]``, the visual sink tokens of each layer (row-major).
        before: float ``[len(layers), heads, rows * cols]``, attention of the last prompt token on each image
            token, VAR off.
        after: the same with VAR on.
        selected: bool ``[len(layers), heads]``, the heads VAR selected for that row.
        title: shown above every figure of this capture.
    """

    image: np.ndarray
    grid: tuple[int, int]
    layers: tuple[int, ...]
    visual_sinks: np.ndarray
    before: np.ndarray
    after: np.ndarray
    selected: np.ndarray
    title: str

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"AttentionCapture.image must be [H, W, 3] (RGB), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"AttentionCapture.image must be uint8, got {image.dtype}")

        grid = tuple(int(n) for n in self.grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(
                f"AttentionCapture.grid must be (rows, cols) of positive ints, got {self.grid!r}"
            )
        tokens = grid[0] * grid[1]

        layers = tuple(int(layer) for layer in self.layers)
        if not layers:
            raise ValueError("AttentionCapture.layers is empty: capture at least one layer")
        if len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(f"AttentionCapture.layers must be distinct layer numbers >= 0, got {layers}")

        sinks = np.asarray(self.visual_sinks)
        _expect_shape(
            "visual_sinks", sinks, (len(layers), tokens), f"(len(layers), rows * cols) with grid {grid}"
        )
        _expect_bool("visual_sinks", sinks)

        before, after = np.asarray(self.before), np.asarray(self.after)
        if before.ndim != 3:
            raise ValueError(
                f"AttentionCapture.before must be [n_layers, heads, rows * cols], got shape {before.shape}"
            )
        heads = before.shape[1]
        expected = (len(layers), heads, tokens)
        for name, array in (("before", before), ("after", after)):
            _expect_shape(name, array, expected, f"(len(layers), heads, rows * cols) with grid {grid}")
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"AttentionCapture.{name} must be a float array, got {array.dtype}")
            if not np.all(np.isfinite(array)) or np.any(array < 0):
                raise ValueError(f"AttentionCapture.{name} must hold finite attention probabilities >= 0")

        selected = np.asarray(self.selected)
        _expect_shape("selected", selected, (len(layers), heads), "(len(layers), heads)")
        _expect_bool("selected", selected)

        for name, value in (
            ("image", image),
            ("grid", grid),
            ("layers", layers),
            ("visual_sinks", sinks),
            ("before", before),
            ("after", after),
            ("selected", selected),
            ("title", str(self.title)),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, captured: Any, *, size: int = 448) -> AttentionCapture:
        """The capture of a model-side ``workers.results.CapturedAttention``: its image fitted to the token grid
        (cells of the same size, the longer side ``size`` pixels at most), titled with the task, the example and
        the configuration."""
        from PIL import Image, ImageOps

        rows, cols = captured.grid
        cell = max(1, size // max(rows, cols))
        shown = ImageOps.fit(
            Image.fromarray(np.asarray(captured.image, dtype=np.uint8)), (cols * cell, rows * cell)
        )
        config = captured.config
        return cls(
            image=np.asarray(shown, dtype=np.uint8),
            grid=(rows, cols),
            layers=captured.layers,
            visual_sinks=captured.visual_sinks,
            before=captured.before,
            after=captured.after,
            selected=captured.selected,
            title=f"{captured.task} {captured.example_id}: tau {config.tau:.1f}, rho {config.rho:.2f}, "
            f"p {config.p:.2f} ({config.convention})",
        )

    @property
    def heads(self) -> int:
        """Number of attention heads per captured layer."""
        return int(self.before.shape[1])

    def layer_index(self, layer: int) -> int:
        """Row of ``layer`` (a decoder layer number) in the arrays; ValueError naming the captured layers."""
        try:
            return self.layers.index(int(layer))
        except ValueError as e:
            raise ValueError(f"layer {layer} was not captured; captured layers: {list(self.layers)}") from e


def _expect_shape(name: str, array: np.ndarray, expected: tuple[int, ...], meaning: str) -> None:
    if array.shape != expected:
        raise ValueError(f"AttentionCapture.{name} has shape {array.shape}, expected {expected} = {meaning}")


def _expect_bool(name: str, array: np.ndarray) -> None:
    if array.dtype != np.bool_:
        raise ValueError(f"AttentionCapture.{name} must be a bool array, got {array.dtype}")


def _new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, not registered with pyplot (no window, no global state)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _image_axes(ax: Any, capture: AttentionCapture) -> tuple[float, float]:
    """Set ``ax`` up to draw over the image in pixel coordinates; returns a token cell's (width, height)."""
    height, width = capture.image.shape[:2]
    rows, cols = capture.grid
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return width / cols, height / rows


def _outline_sinks(ax: Any, capture: AttentionCapture, sinks: np.ndarray, *, fill: bool) -> None:
    cell_w, cell_h = capture.image.shape[1] / capture.grid[1], capture.image.shape[0] / capture.grid[0]
    for token in np.flatnonzero(sinks):
        row, col = divmod(int(token), capture.grid[1])
        ax.add_patch(
            Rectangle(
                (col * cell_w, row * cell_h),
                cell_w,
                cell_h,
                linewidth=1.6,
                edgecolor=_SINK_COLOUR,
                facecolor=(0.0, 0.9, 1.0, 0.35) if fill else "none",
            )
        )


def sink_overlay(capture: AttentionCapture, layer: int) -> Figure:
    """The image with its token grid drawn and the visual sinks of ``layer`` marked.

    Args:
        capture: the captured prompt.
        layer: a decoder layer number from ``capture.layers``.

    Raises:
        ValueError: ``layer`` was not captured.
    """
    index = capture.layer_index(layer)
    sinks = capture.visual_sinks[index]
    rows, cols = capture.grid
    height, width = capture.image.shape[:2]

    aspect = width / height
    figure = _new_figure(min(max(5.0 * aspect, 3.5), 10.0), 5.6)
    ax = figure.add_subplot()
    ax.imshow(capture.image, extent=(0, width, height, 0), interpolation="nearest")
    cell_w, cell_h = _image_axes(ax, capture)
    grid_style = {"color": "white", "linewidth": 0.5 if max(rows, cols) > 12 else 0.8, "alpha": 0.55}
    for c in range(cols + 1):
        ax.axvline(c * cell_w, **grid_style)
    for r in range(rows + 1):
        ax.axhline(r * cell_h, **grid_style)
    _outline_sinks(ax, capture, sinks, fill=True)

    n_sinks = int(sinks.sum())
    ax.set_title(
        f"layer {layer}: {n_sinks} visual sink{'s' if n_sinks != 1 else ''} of {rows * cols} image tokens"
    )
    ax.set_xlabel(f"token grid {rows} x {cols}")
    ax.legend(
        handles=[Patch(facecolor=(0.0, 0.9, 1.0, 0.35), edgecolor=_SINK_COLOUR, label="visual sink")],
        loc="upper right",
        fontsize="small",
        framealpha=0.8,
    )
    figure.suptitle(capture.title)
    return figure


def _default_heads(capture: AttentionCapture, index: int, max_heads: int) -> list[int]:
    """The selected heads of a layer; when more than ``max_heads``, those whose attention VAR changed most."""
    chosen = np.flatnonzero(capture.selected[index])
    if len(chosen) > max_heads:
        change = np.abs(capture.after[index, chosen] - capture.before[index, chosen]).sum(-1)
        chosen = chosen[np.argsort(-change, kind="stable")[:max_heads]]
    return sorted(int(h) for h in chosen)


def attention_before_after(
    capture: AttentionCapture, layer: int, heads: Sequence[int] | None = None, max_heads: int = 4
) -> Figure:
    """Per head, the last prompt token's attention on the image grid with VAR off and on, over the image.

    One row per head: "before" and "after" heatmaps share one colour scale (square-root scale, so that the
    non-sink tokens stay visible beside the sinks) with one colour bar; visual sinks are outlined. Panel
    titles give the image attention mass and the sinks' share of it.

    Args:
        capture: the captured prompt.
        layer: a decoder layer number from ``capture.layers``.
        heads: heads to show, in this order. Default: the heads VAR selected in this layer, at most
            ``max_heads`` of them (those whose attention changed most), in head order.
        max_heads: cap on the default choice (explicit ``heads`` are all shown).

    Raises:
        ValueError: ``layer`` not captured, a head out of range or repeated, or ``max_heads`` < 1.
    """
    if max_heads < 1:
        raise ValueError(f"max_heads must be >= 1, got {max_heads}")
    index = capture.layer_index(layer)
    if heads is None:
        shown = _default_heads(capture, index, max_heads)
    else:
        shown = [int(h) for h in heads]
        bad = [h for h in shown if not 0 <= h < capture.heads]
        if bad:
            raise ValueError(f"heads {bad} out of range: the capture has heads 0..{capture.heads - 1}")
        if len(set(shown)) != len(shown):
            raise ValueError(f"heads {shown} has repeats")

    sinks = capture.visual_sinks[index]
    rows, cols = capture.grid
    height, width = capture.image.shape[:2]
    n_selected = int(capture.selected[index].sum())

    if not shown:
        figure = _new_figure(6.0, 2.4)
        ax = figure.add_subplot()
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            f"no head selected in layer {layer}\n({capture.heads} heads; VAR left this row unchanged)",
            ha="center",
            va="center",
            fontsize="large",
        )
        figure.suptitle(f"{capture.title}: attention before/after VAR, layer {layer}")
        return figure

    panel = 3.2
    aspect = width / height
    figure = _new_figure(2 * panel * aspect + 1.2, panel * len(shown) + 0.6)
    axes = figure.subplots(len(shown), 2, squeeze=False)
    greyscale = capture.image.mean(axis=2).astype(np.uint8)
    for row_axes, head in zip(axes, shown, strict=True):
        maps = (capture.before[index, head], capture.after[index, head])
        vmax = max(float(maps[0].max()), float(maps[1].max()), 1e-12)
        norm: Normalize = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
        tag = "selected" if capture.selected[index, head] else "not selected"
        mappable = None
        for ax, values, when in zip(row_axes, maps, ("before VAR", "after VAR"), strict=True):
            ax.imshow(greyscale, cmap="gray", extent=(0, width, height, 0), interpolation="bilinear")
            mappable = ax.imshow(
                values.reshape(rows, cols),
                cmap=_HEAT_CMAP,
                norm=norm,
                alpha=0.78,
                extent=(0, width, height, 0),
                interpolation="nearest",
            )
            _image_axes(ax, capture)
            _outline_sinks(ax, capture, sinks, fill=False)
            mass = float(values.sum())
            sink_share = float(values[sinks].sum()) / mass if mass > 0 else 0.0
            ax.set_title(
                f"head {head} ({tag}), {when}\nimage mass {mass:.3f}, sinks {sink_share:.0%}", fontsize=9
            )
        row_axes[0].set_ylabel(f"head {head}")
        figure.colorbar(mappable, ax=list(row_axes), shrink=0.9, label="attention (sqrt scale)")
    figure.suptitle(
        f"{capture.title}: layer {layer}, {n_selected}/{capture.heads} heads selected"
        f" (visual sinks outlined in cyan)"
    )
    return figure


def layer_head_heatmaps(
    selected_share: np.ndarray, mean_ratio: np.ndarray, first_layer: int | None = None
) -> Figure:
    """Two layer x head heatmaps: share of (head, query) rows VAR selected, and mean visual non-sink ratio.

    Inputs are ``[L, H]`` arrays, e.g. ``stats.selected_share[slot].numpy()`` and
    ``stats.mean_ratio[slot]`` of a ``var_core.VARStats`` (anything ``np.asarray`` accepts). Layers run up
    the y axis, heads along x; both colour scales span [0, 1]. With ``first_layer``, the layers below it
    (never modified by VAR) are hatched.

    Raises:
        ValueError: an input is not 2-D, the shapes differ, or ``first_layer`` is negative.
    """
    share = np.asarray(selected_share, dtype=np.float64)
    ratio = np.asarray(mean_ratio, dtype=np.float64)
    for name, array in (("selected_share", share), ("mean_ratio", ratio)):
        if array.ndim != 2:
            hint = " (pick one configuration slot, e.g. stats.selected_share[0])" if array.ndim == 3 else ""
            raise ValueError(f"{name} must be [layers, heads], got shape {array.shape}{hint}")
    if share.shape != ratio.shape:
        raise ValueError(f"selected_share has shape {share.shape} but mean_ratio has shape {ratio.shape}")
    if first_layer is not None and first_layer < 0:
        raise ValueError(f"first_layer must be >= 0, got {first_layer}")
    layers, heads = share.shape

    panel_width = min(3.4 + 0.18 * heads, 8.0)
    figure = _new_figure(2 * panel_width, min(3.0 + 0.18 * layers, 10.0))
    panels = (
        (share, "share of (head, query) rows selected", "selected share"),
        (ratio, "mean visual non-sink ratio r", "mean r"),
    )
    for position, (values, title, label) in enumerate(panels, start=1):
        ax = figure.add_subplot(1, 2, position)
        image = ax.imshow(
            values,
            origin="lower",
            aspect="auto",
            cmap=_SHARE_CMAP,
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(-0.5, heads - 0.5, -0.5, layers - 0.5),
        )
        if first_layer is not None and first_layer > 0:
            top = min(first_layer, layers) - 0.5
            ax.add_patch(
                Rectangle(
                    (-0.5, -0.5),
                    heads,
                    top + 0.5,
                    facecolor="none",
                    edgecolor="0.85",
                    hatch="//",
                    linewidth=0,
                )
            )
            ax.axhline(top, color="white", linewidth=1.5, linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        figure.colorbar(image, ax=ax, label=label)
    note = f"; layers below {first_layer} are never modified (hatched)" if first_layer else ""
    figure.suptitle(f"VAR statistics per layer and head ({layers} layers x {heads} heads){note}")
    return figure
