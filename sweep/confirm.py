"""The honest end of a search: the best configuration against VAR off on the held-out split, paired.

The search only ever saw the tuning split, and the best of many trials flatters itself there. So the best
configuration and VAR off are evaluated on the held-out groups, and compared on the same examples
(:func:`workers.tasks.paired_comparison`: a clustered bootstrap interval and a randomisation p-value). One
attention capture of that configuration (or of the paper's defaults, when VAR off won) feeds the figures.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from sweep.plan import SweepPlan
from sweep.search import config_from_params

__all__ = ["Confirmation", "confirm"]

log = logging.getLogger("varsweep")


@dataclass(frozen=True)
class Confirmation:
    """The best trial on the held-out split, beside VAR off."""

    best: Any  # the study's best trial (optuna FrozenTrial)
    comparison: Any  # workers.tasks.PairedComparison: best (A) vs VAR off (B)
    off_answers: dict[str, str]
    best_answers: dict[str, str]
    capture: Any  # workers.results.CapturedAttention of the configuration shown

    @property
    def heldout_value(self) -> float:
        return float(self.comparison.value_a)

    @property
    def baseline_heldout(self) -> float:
        return float(self.comparison.value_b)


def confirm(plan: SweepPlan, study: Any, pool: Any) -> Confirmation:
    """Evaluate the study's best trial and VAR off on the held-out split; capture attention for the figures."""
    from workers.calls import get_resending
    from workers.tasks import paired_comparison

    best = study.best_trial
    convention = plan.request.convention
    config = config_from_params(best.params, convention)
    off, chosen = pool.evaluate([None, config], "heldout")
    comparison = paired_comparison(
        plan.heldout, chosen.answers, off.answers, metric=plan.metric, seed=plan.request.seed
    )
    log.info("VAR vs off on held-out: %s", comparison.describe())
    shown = config or config_from_params(plan.space.paper_defaults(), convention)
    # copied out of Ray: the result's arrays are views into the object store, which a local Ray's shutdown (begun
    # before the figures are drawn) takes away, and touching or freeing them after it ends the process; a worker
    # that Ray is restarting (its node lost) is asked again
    ask = partial(pool.actors[0].capture.remote, shown, "heldout")
    capture = copy.deepcopy(get_resending(ask(), ask))
    return Confirmation(
        best=best,
        comparison=comparison,
        off_answers=dict(off.answers),
        best_answers=dict(chosen.answers),
        capture=capture,
    )
