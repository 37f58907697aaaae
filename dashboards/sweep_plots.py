"""Figures of a sweep's Optuna study, drawn with ``optuna.visualization.matplotlib``.

:func:`sweep_figures` returns only the figures the study has data for: a figure that would be empty or
meaningless (too few complete trials, a parameter missing or never varied) is skipped, with the reason
logged at INFO level, and failed, pruned or running trials are ignored. Optuna marks its matplotlib plots
experimental; that warning is silenced inside this module only. Optuna also switches pyplot to its "ggplot"
style while plotting; the style is undone after each figure, so other figures of the process keep theirs.
The returned figures are detached from pyplot (no window, no "too many open figures" warning) and drawn on
the Agg canvas.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np
import optuna
from matplotlib import pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

__all__ = ["sweep_figures", "CONTOUR_PAIRS"]

log = logging.getLogger(__name__)

CONTOUR_PAIRS: tuple[tuple[str, str], ...] = (("tau", "rho"), ("rho", "p"))
"""The parameter pairs drawn as contour plots; the figure key is ``contour_<x>_<y>``."""


def _complete(study: optuna.Study, target: Callable[[FrozenTrial], float] | None) -> list[FrozenTrial]:
    """Complete trials with a finite objective (those Optuna's plots use)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    value: Callable[[FrozenTrial], float | None] = target or (lambda t: t.value)
    out = []
    for trial in trials:
        v = value(trial)
        if v is not None and math.isfinite(v):
            out.append(trial)
    return out


def _varies(trials: list[FrozenTrial], name: str) -> bool:
    return len({trial.params[name] for trial in trials if name in trial.params}) >= 2


def _detach(axes: Any, title: str) -> Figure:
    """The figure of Optuna's axes, closed in pyplot and re-attached to an Agg canvas, its title set.

    Every text is drawn as it is written: a study called ``cost $x$`` must not be parsed as mathtext (an odd
    number of ``$`` would fail the whole figure)."""
    first = axes.flat[0] if isinstance(axes, np.ndarray) else axes
    figure = first.figure
    plt.close(figure)
    FigureCanvasAgg(figure)
    if not isinstance(axes, np.ndarray):
        for loc in ("left", "right"):  # Optuna puts some titles on the left
            first.set_title("", loc=loc)
        first.set_title(title)
    else:
        figure.suptitle(title)
    for text in figure.findobj(matplotlib.text.Text):
        text.set_parse_math(False)
    return figure


def _plot(draw: Callable[[], Any], title: str) -> Figure:
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _detach(draw(), title)


def sweep_figures(study: optuna.Study) -> dict[str, Figure]:
    """Optimisation history, parameter importances and contour plots of a sweep's study.

    Keys, each present only when the study has data for it:

    - ``"history"``: objective per trial and best so far (>= 1 complete trial).
    - ``"importances"``: parameter importances (>= 2 complete trials and a parameter, present in all of them,
      that took >= 2 values).
    - ``"contour_tau_rho"``, ``"contour_rho_p"``: the objective over two parameters (>= 2 complete trials with
      both parameters, each having taken >= 2 values).

    Multi-objective studies are drawn for their first objective. Never raises for lack of trials.
    """
    multi = len(study.directions) > 1
    target: Callable[[FrozenTrial], float] | None = (lambda t: t.values[0]) if multi else None
    target_name = "objective 0" if multi else "Objective Value"
    trials = _complete(study, target)
    name = study.study_name
    figures: dict[str, Figure] = {}
    if not trials:
        log.info("study %s has no complete trial with a finite value: no figures", name)
        return figures

    figures["history"] = _plot(
        lambda: optuna.visualization.matplotlib.plot_optimization_history(
            study, target=target, target_name=target_name
        ),
        f"Optimization history: {name}",
    )

    shared = set.intersection(*(set(trial.params) for trial in trials))
    varying = sorted(p for p in shared if _varies(trials, p))
    if len(trials) >= 2 and varying:
        figures["importances"] = _plot(
            lambda: optuna.visualization.matplotlib.plot_param_importances(
                study, params=varying, target=target, target_name=target_name
            ),
            f"Parameter importances: {name}",
        )
    else:
        log.info(
            "study %s: no importances (%d complete trials, varying params %s)", name, len(trials), varying
        )

    for x, y in CONTOUR_PAIRS:
        key = f"contour_{x}_{y}"
        both = [trial for trial in trials if x in trial.params and y in trial.params]
        if len(both) >= 2 and _varies(both, x) and _varies(both, y):
            figures[key] = _plot(
                lambda x=x, y=y: optuna.visualization.matplotlib.plot_contour(
                    study, params=[x, y], target=target, target_name=target_name
                ),
                f"{x} x {y}: {name}",
            )
        else:
            log.info(
                "study %s: no %s (%d complete trials with %s and %s, or one never varied)",
                name,
                key,
                len(both),
                x,
                y,
            )
    return figures
