"""One trial of a sweep, as it runs in a Ray Tune trial process, and the report it sends back.

A trial process only waits: it sends its configuration to every ModelWorker, which gathers the configurations of
concurrent trials into one engine batch, merges the workers' answers, scores them with the task's pure scorer and
reports, one rung of tuning groups after another (one rung: all of them, when nothing stops trials early). So it must stay thin: nothing here (or in what it imports) loads torch or transformers, and Tune reuses the
process for the next trial. A trial reports whether torch was loaded in its process, so the driver can say so.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from sweep.fidelity import Rungs
from sweep.search import config_from_params
from var_core.config import Convention
from var_core.stats import VARStats
from workers.calls import get_each_resending
from workers.results import merge_results

__all__ = [
    "TrialReport",
    "run_trial",
    "OBJECTIVE",
    "FIDELITY",
    "EXAMPLES_SEEN",
    "COMPLETE",
    "FAILURE",
    "REPORT",
]

OBJECTIVE = "objective"  # the value Tune's searcher and scheduler read
FIDELITY = "fidelity"  # ASHA's clock: the rung's nominal size in eighths of the tuning groups
EXAMPLES_SEEN = "examples_seen"  # Optuna's step for the intermediate value
COMPLETE = "complete"  # the trial saw every tuning example (else it was stopped early)
FAILURE = "failure"  # why the trial failed (a metric that is not a number): it ends FAIL, once, not retried
# the whole TrialReport, as plain data (Tune hands searchers a flattened copy: use the above)
REPORT = "report"


@dataclass(frozen=True)
class TrialReport:
    """What one trial measured by the end of a rung; encoded for Tune by :meth:`to_result` and decoded by
    :meth:`from_result`."""

    number: int  # the Optuna trial number
    role: str  # "baseline", "paper-defaults" or "search"
    params: dict[str, float]
    rung: int  # 0, 1, ...: the rungs of tuning groups seen so far
    examples_seen: int
    complete: bool  # every tuning example seen: the trial's final value
    objective: float
    metrics: dict[str, float]  # every metric of the task's scorer on the examples seen, stderr included
    var_stats: dict[str, float]  # VARStats.summary() of the configuration (zeros for VAR off)
    layer_head: dict[str, list[list[float]]]  # "selected_share", "mean_ratio": [layers][heads]
    answers: dict[str, str]  # example id -> raw answer, for the examples seen
    torch_loaded: bool  # whether the trial process had torch loaded (it should not)

    def to_result(self, fidelity: int) -> dict[str, Any]:
        return {
            OBJECTIVE: self.objective,
            FIDELITY: fidelity,
            EXAMPLES_SEEN: self.examples_seen,
            COMPLETE: self.complete,
            REPORT: asdict(self),
        }

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> TrialReport:
        return cls(**result[REPORT])


def run_trial(
    config: dict[str, Any], *, actors: list[Any], task: Any, metric: str, convention: Convention, rungs: Rungs
) -> None:
    """The Tune trainable: evaluate one configuration on every worker's tuning examples, rung by rung, reporting
    the metric after each (a scheduler may stop the trial at a report)."""
    from ray import tune

    params = {k: float(v) for k, v in config.items() if k in ("tau", "rho", "p", "summ")}
    var_config = config_from_params(params, convention)
    answers: dict[str, str] = {}
    stats: VARStats | None = None
    for rung in range(len(rungs)):
        groups = rungs.new_groups(rung)
        result = merge_results(_evaluate_on_every_worker(actors, var_config, groups))[0]
        answers.update(result.answers)
        if result.stats is not None:
            stats = result.stats if stats is None else stats + result.stats
        seen = task.select(rungs.seen(rung))
        scores = seen.score(answers)
        value = float(scores[metric])
        if not math.isfinite(value):  # not a crash to retry: the configuration's trial fails, once
            tune.report({OBJECTIVE: value, FIDELITY: rungs.clock[rung], FAILURE: f"{metric} is {value}"})
            return
        # VAR off selects and moves nothing: its statistics are zeros, so runs compare column by column
        summed = stats or VARStats.empty(1, 1, 1)
        report = TrialReport(
            number=int(config["trial_number"]),
            role=str(config["role"]),
            params=params,
            rung=rung,
            examples_seen=len(seen.examples),
            complete=rung == len(rungs) - 1,
            objective=value,
            metrics={k: float(v) for k, v in scores.items()},
            var_stats=summed.summary(),
            layer_head={
                "selected_share": summed.selected_share[0].tolist(),
                "mean_ratio": summed.mean_ratio[0].tolist(),
            },
            answers=dict(answers),
            torch_loaded="torch" in sys.modules,
        )
        tune.report(report.to_result(rungs.clock[rung]))


def _evaluate_on_every_worker(actors: list[Any], var_config: Any, groups: Any) -> list[Any]:
    """Each worker's results for one configuration. A call that reached a worker Ray is restarting fails with
    ActorUnavailableError (Ray does not know whether it ran); evaluating is idempotent, so it is sent again until
    the worker is back (``workers.calls.RESTART_PATIENCE``)."""
    return get_each_resending([partial(a.evaluate.remote, [var_config], "tuning", groups) for a in actors])
