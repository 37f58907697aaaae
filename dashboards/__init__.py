"""dashboards: figures and reports of varsweep results; reads MLflow and the store, never drives a model.

- :mod:`dashboards.attention`: :class:`AttentionCapture` and its figures (visual sinks, attention before/after
  VAR, layer x head statistics).
- :mod:`dashboards.sweep_plots`: Optuna's plots of a sweep's study.
- :mod:`dashboards.leaderboard`: the best-settings leaderboard page and its command line
  (``python -m dashboards.leaderboard``).

Names are imported lazily, so ``import dashboards`` (and the leaderboard command) load neither matplotlib nor
Optuna until a figure is asked for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dashboards.attention import (
        AttentionCapture,
        attention_before_after,
        layer_head_heatmaps,
        sink_overlay,
    )
    from dashboards.leaderboard import mlflow_run_url, render_leaderboard
    from dashboards.sweep_plots import sweep_figures

__all__ = [
    "AttentionCapture",
    "attention_before_after",
    "layer_head_heatmaps",
    "mlflow_run_url",
    "render_leaderboard",
    "sink_overlay",
    "sweep_figures",
]

_MODULE_OF = {
    "AttentionCapture": "dashboards.attention",
    "attention_before_after": "dashboards.attention",
    "layer_head_heatmaps": "dashboards.attention",
    "sink_overlay": "dashboards.attention",
    "mlflow_run_url": "dashboards.leaderboard",
    "render_leaderboard": "dashboards.leaderboard",
    "sweep_figures": "dashboards.sweep_plots",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dashboards' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
