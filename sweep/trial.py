"""One trial of a sweep, as it runs in a Ray Tune trial process, and the report it sends back.

A trial process only waits: it sends its configuration to every ModelWorker, which gathers the configurations of
concurrent trials into one engine batch, merges the workers' answers, scores them with the task's pure scorer and
reports. So it must stay thin: nothing here (or in what it imports) loads torch or transformers, and Tune reuses the
process for the next trial. A trial reports whether torch was loaded in its process, so the driver can say so.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from sweep.search import config_from_params
from var_core.config import Convention
from var_core.errors import VarsweepError
from var_core.stats import VARStats
from workers.results import merge_results

__all__ = ["TrialReport", "run_trial", "OBJECTIVE", "REPORT"]

OBJECTIVE = "objective"  # the value Tune's searcher reads
REPORT = "report"  # the whole TrialReport, as plain data


@dataclass(frozen=True)
class TrialReport:
    """What one trial measured; encoded for Tune by :meth:`to_result` and decoded by :meth:`from_result`."""

    number: int  # the Optuna trial number
    role: str  # "baseline", "paper-defaults" or "search"
    params: dict[str, float]
    objective: float
    metrics: dict[str, float]  # every metric of the task's scorer
    var_stats: dict[str, float]  # VARStats.summary() of the configuration (zeros for VAR off)
    layer_head: dict[str, list[list[float]]]  # "selected_share", "mean_ratio": [layers][heads]
    torch_loaded: bool  # whether the trial process had torch loaded (it should not)

    def to_result(self) -> dict[str, Any]:
        return {OBJECTIVE: self.objective, REPORT: asdict(self)}

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> TrialReport:
        return cls(**result[REPORT])


def run_trial(
    config: dict[str, Any], *, actors: list[Any], task: Any, metric: str, convention: Convention
) -> None:
    """The Tune trainable: evaluate one configuration on every worker's tuning examples and report it."""
    import ray
    from ray import tune

    params = {k: float(v) for k, v in config.items() if k in ("tau", "rho", "p", "summ")}
    var_config = config_from_params(params, convention)
    result = merge_results(ray.get([a.evaluate.remote([var_config], "tuning") for a in actors]))[0]
    scores = task.score(result.answers)
    # VAR off selects and moves nothing: its statistics are zeros, so runs compare column by column
    stats = result.stats or VARStats.empty(1, 1, 1)
    value = float(scores[metric])
    if not math.isfinite(value):
        raise VarsweepError(f"metric {metric} is {value} for {params}")
    report = TrialReport(
        number=int(config["trial_number"]),
        role=str(config["role"]),
        params=params,
        objective=value,
        metrics={k: float(v) for k, v in scores.items()},
        var_stats=stats.summary(),
        layer_head={"selected_share": stats.selected_share[0].tolist(), "mean_ratio": stats.mean_ratio[0].tolist()},
        torch_loaded="torch" in sys.modules,
    )
    tune.report(report.to_result())
