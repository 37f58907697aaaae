"""The sweep's pictures in MLflow: per trial a layer x head heatmap; per sweep Optuna's plots and attention maps."""

from __future__ import annotations

from typing import Any

import numpy as np

from sweep.tracking import Tracker

__all__ = ["log_layer_head", "log_sweep"]


def log_layer_head(tracker: Tracker, run_id: str, layer_head: dict[str, list[list[float]]]) -> None:
    """Share of selected (head, query) rows and mean visual non-sink ratio, per layer and head, on a trial's run."""
    import matplotlib.pyplot as plt

    from dashboards import layer_head_heatmaps

    figure = layer_head_heatmaps(
        np.asarray(layer_head["selected_share"]), np.asarray(layer_head["mean_ratio"])
    )
    tracker.log_figure(figure, "var/layer_head.png", run_id=run_id)
    plt.close(figure)


def log_sweep(tracker: Tracker, study: Any, capture: Any, *, best_run: str | None) -> None:
    """Optuna's plots of the study on the parent run; the attention maps on the parent and the best trial's run."""
    import matplotlib.pyplot as plt

    from dashboards import AttentionCapture, attention_before_after, sink_overlay, sweep_figures

    for name, figure in sweep_figures(study).items():
        tracker.log_figure(figure, f"sweep/{name}.png")
        plt.close(figure)
    attention = AttentionCapture.of(capture)  # a workers.results.CapturedAttention
    busiest = int(np.argmax(attention.selected.sum(axis=1)))  # the layer where VAR selected most heads
    pictures = {
        "attention/sinks.png": sink_overlay(attention, attention.layers[0]),
        "attention/before_after.png": attention_before_after(attention, attention.layers[busiest]),
    }
    for path, figure in pictures.items():
        for run_id in {tracker.parent_id, best_run} - {None}:
            tracker.log_figure(figure, path, run_id=run_id)
        plt.close(figure)
