"""sweep_figures on real in-memory Optuna studies, including ones with too few trials to plot."""

from __future__ import annotations

import warnings

import matplotlib
import optuna
import pytest
from matplotlib import pyplot as plt
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from dashboards.sweep_plots import sweep_figures

ALL = {"history", "importances", "contour_tau_rho", "contour_rho_p"}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def _objective(tau: float, rho: float, p: float) -> float:
    """A toy accuracy with its best near tau 20, rho 0.5, p 0.4."""
    return 0.6 - ((tau - 20) / 40) ** 2 - (rho - 0.5) ** 2 - (p - 0.4) ** 2


def make_study(trials: int, *, params: tuple[str, ...] = ("tau", "rho", "p"), broken: bool = False):
    study = optuna.create_study(
        study_name="tiny-llava:mmvp:paper",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    ranges = {"tau": (5.0, 40.0), "rho": (0.2, 0.9), "p": (0.0, 1.0)}
    for _ in range(trials):
        trial = study.ask()
        point = {name: trial.suggest_float(name, *ranges[name]) for name in params}
        study.tell(trial, _objective(point.get("tau", 20.0), point.get("rho", 0.5), point.get("p", 0.4)))
    if broken:  # what a real sweep leaves behind: a failed, a pruned and a still-running trial
        for state in (TrialState.FAIL, TrialState.PRUNED):
            trial = study.ask()
            trial.suggest_float("tau", *ranges["tau"])
            study.tell(trial, state=state)
        study.ask().suggest_float("rho", *ranges["rho"])
    return study


def test_full_study_gives_every_figure(tmp_path, render_png):
    study = make_study(10, broken=True)
    facecolor = matplotlib.rcParams["axes.facecolor"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = sweep_figures(study)
    assert set(figures) == ALL
    assert not [w for w in caught if issubclass(w.category, ExperimentalWarning)]
    assert matplotlib.rcParams["axes.facecolor"] == facecolor  # Optuna's ggplot style did not leak
    assert plt.get_fignums() == []  # detached from pyplot
    for name, figure in figures.items():
        (tmp_path / f"{name}.png").write_bytes(render_png(figure))  # examples to look at
    assert figures["history"].axes[0].get_title() == "Optimization history: tiny-llava:mmvp:paper"
    contour = figures["contour_tau_rho"].axes[0]
    assert {contour.get_xlabel(), contour.get_ylabel()} == {"tau", "rho"}
    contour = figures["contour_rho_p"].axes[0]
    assert {contour.get_xlabel(), contour.get_ylabel()} == {"rho", "p"}
    importances = figures["importances"].axes[0]
    assert importances.get_title() == "Parameter importances: tiny-llava:mmvp:paper"
    assert importances.get_title(loc="left") == ""  # Optuna's own title replaced, not overlapping
    assert sorted(t.get_text() for t in importances.get_yticklabels()) == ["p", "rho", "tau"]


def test_experimental_warning_is_silenced_only_inside():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep_figures(make_study(3))
        optuna.visualization.matplotlib.plot_optimization_history(make_study(1))
    plt.close("all")
    assert [w for w in caught if issubclass(w.category, ExperimentalWarning)]  # the direct call still warns


def test_single_trial_study_gives_history_only(render_png):
    figures = sweep_figures(make_study(1, broken=True))
    assert set(figures) == {"history"}
    render_png(figures["history"])


def test_empty_and_failed_only_studies_give_nothing():
    assert sweep_figures(make_study(0)) == {}
    assert sweep_figures(make_study(0, broken=True)) == {}


def test_missing_parameter_skips_its_contour():
    figures = sweep_figures(make_study(6, params=("tau", "rho")))
    assert set(figures) == {"history", "importances", "contour_tau_rho"}


def test_constant_parameters_skip_importances_and_contours():
    study = optuna.create_study(direction="minimize")
    for value in (0.3, 0.2):
        study.enqueue_trial({"tau": 20.0, "rho": 0.5, "p": 0.4})
        trial = study.ask()
        for name in ("tau", "rho", "p"):
            trial.suggest_float(name, 0.0, 40.0)
        study.tell(trial, value)
    assert set(sweep_figures(study)) == {"history"}
