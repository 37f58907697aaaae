"""The search space over (tau, rho, p[, summ]) per task group, and the trials a sweep starts with.

Ranges are written in the paper convention and converted for the official one (official rho = 1 - paper rho;
official p = 1 - paper p, docs/method.md sections 4 and 6). ``p`` = 0 moves no attention: VAR is off. The baseline trial
is that point, evaluated as VAR off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from var_core import ConfigError, VARConfig, paper_defaults
from var_core.config import DEFAULT_SUMM, Convention

__all__ = [
    "SearchSpace",
    "StartPoint",
    "space_for",
    "warm_start_points",
    "BASELINE",
    "PAPER_DEFAULTS",
    "WARM_START",
    "config_from_params",
    "full_params",
]

BASELINE = "baseline"
PAPER_DEFAULTS = "paper-defaults"
WARM_START = "warm-start"

# paper-convention rho ranges around each group's published default (general 0.8, hallucination 0.5, vision 0.9)
_RHO_RANGE = {"general": (0.5, 1.0), "hallucination": (0.2, 0.9), "vision-centric": (0.6, 1.0)}
_TAU_RANGE = (5.0, 40.0)  # real sinks reach phi ~ 50, other tokens ~ 5 (docs/method.md sec. 7)
_SUMM_RANGE = (0.0, 0.5)


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of each searched parameter, in the sweep's convention."""

    group: str
    convention: Convention
    tau: tuple[float, float]
    rho: tuple[float, float]
    p: tuple[float, float]
    summ: tuple[float, float] | None  # None: summ stays at 0.2

    def suggest(self, trial: Any) -> dict[str, float]:
        """Sample a point with an Optuna trial (define-by-run)."""
        params = {
            "tau": trial.suggest_float("tau", *self.tau),
            "rho": trial.suggest_float("rho", *self.rho),
            "p": trial.suggest_float("p", *self.p),
        }
        if self.summ is not None:
            params["summ"] = trial.suggest_float("summ", *self.summ)
        return params

    def baseline(self) -> dict[str, float]:
        """VAR off: the paper's defaults with p moving nothing (paper p = 0; official p = 1, sinks keep all)."""
        return self.paper_defaults() | {"p": 0.0 if self.convention == "paper" else 1.0}

    def paper_defaults(self) -> dict[str, float]:
        config = paper_defaults(self.group, self.convention)
        point = {"tau": config.tau, "rho": config.rho, "p": float(config.p)}  # type: ignore[arg-type]
        return point | ({"summ": config.summ} if self.summ is not None else {})


@dataclass(frozen=True)
class StartPoint:
    """A configuration a new study evaluates before the sampler's own: the baseline, the paper's defaults, or a
    best setting stored by an earlier sweep (its ``source``)."""

    role: str
    params: dict[str, float]
    source: str = ""


def warm_start_points(space: SearchSpace, rows: Sequence[Any]) -> list[StartPoint]:
    """Stored best settings (``BestRecord`` rows of other tasks or models) as start points of a new study.

    Each is converted to the sweep's convention (official rho = 1 - paper rho, official p = 1 - paper p: see
    docs/method.md), clipped into the search space, and kept once: a point equal (to 4 decimals) to the baseline,
    the paper's defaults or an earlier row is dropped. Rows come in the order given (the best first, say).
    """
    seen = {_key(space.baseline()), _key(space.paper_defaults())}
    points = []
    for row in rows:
        rho, p = (row.rho, row.p) if row.convention == space.convention else (1 - row.rho, 1 - row.p)
        params = {"tau": _clip(row.tau, space.tau), "rho": _clip(rho, space.rho), "p": _clip(p, space.p)}
        if space.summ is not None:
            params["summ"] = _clip(row.summ, space.summ)
        if _key(params) in seen:
            continue
        seen.add(_key(params))
        source = f"{row.model}:{row.task}:{row.convention} (held-out {row.metric} {row.heldout_value:.4f})"
        points.append(StartPoint(role=WARM_START, params=params, source=source))
    return points


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return min(max(float(value), bounds[0]), bounds[1])


def _key(params: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, round(v, 4)) for k, v in params.items()))


def space_for(
    group: str,
    convention: Convention,
    *,
    search_summ: bool = False,
    tau: tuple[float, float] | None = None,
    rho: tuple[float, float] | None = None,
    p: tuple[float, float] | None = None,
) -> SearchSpace:
    """The group's space in ``convention``; ``tau``/``rho``/``p`` override a range (given in that convention)."""
    if rho is None:
        lo, hi = _RHO_RANGE[group]
        rho = (lo, hi) if convention == "paper" else (round(1 - hi, 10), round(1 - lo, 10))
    space = SearchSpace(
        group=group,
        convention=convention,
        tau=_check_range("tau", tau or _TAU_RANGE, low=0.0, high=None),
        rho=_check_range("rho", rho, low=0.0, high=1.0),
        p=_check_range("p", p or (0.0, 1.0), low=0.0, high=1.0),
        summ=_SUMM_RANGE if search_summ else None,
    )
    return space


def _check_range(
    name: str, bounds: tuple[float, float], *, low: float, high: float | None
) -> tuple[float, float]:
    lo, hi = (float(b) for b in bounds)
    inside = (lo > low if name == "tau" else lo >= low) and (high is None or hi <= high)
    if not (inside and lo < hi):
        allowed = "tau > 0" if name == "tau" else f"{name} in [{low:g}, {high:g}]"
        raise ConfigError(f"--{name}-range {lo:g} {hi:g} is out of range: needs low < high and {allowed}")
    return lo, hi


def full_params(params: dict[str, float]) -> dict[str, float]:
    """A trial's parameters with summ at its default when the sweep does not search it."""
    return {"summ": DEFAULT_SUMM, **params}


def config_from_params(params: dict[str, float], convention: Convention) -> VARConfig | None:
    """The VARConfig of a trial's parameters; None when it moves no attention (VAR off)."""
    full = full_params(params)
    config = VARConfig(
        tau=full["tau"], rho=full["rho"], p=full["p"], summ=full["summ"], convention=convention
    )
    return None if config.kept_fraction == 1.0 else config
