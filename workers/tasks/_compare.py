"""Paired comparison of two systems on the same examples: does A (the best VAR configuration) beat B (VAR off)?

Both systems answered the same examples, which come in independent groups (an MMVP pair, a POPE image). With a
metric M computed by the task's own scorer over a set of groups G, the observed difference is

    delta = M_A(G) - M_B(G).

Clustered paired bootstrap (the interval). Draw R resamples G*_1 .. G*_R of |G| groups with replacement (the
same draw for both systems, so the pairing is kept) and recompute delta*_r = M_A(G*_r) - M_B(G*_r) with the
scorer itself: right for ratio metrics (F1, CHAIR) and sums (MME), not only for means. The 95% interval is the
2.5th and 97.5th percentiles of delta* (percentile bootstrap). A group drawn again enters again under keys of
its own (``<id>#<n>``), so scorers that pair questions by group see two groups, not one of double size.

Paired randomisation test (the p-value). Under H0 "A and B are exchangeable", swapping the two systems' answers
within any group leaves the distribution of delta unchanged. Draw R swap patterns s in {0, 1}^|G| (each group
swapped with probability 1/2), recompute delta_s, and

    p = (1 + #{r : |delta_s_r| >= |delta|}) / (1 + R)      (two-sided; never 0).

Both are seeded: the same inputs give the same interval and p-value. Nothing here touches a model.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["PairedComparison", "paired_comparison", "MIN_RESAMPLES"]

MIN_RESAMPLES = 2000


@dataclass(frozen=True)
class PairedComparison:
    """``delta`` = metric(A) - metric(B) on the same examples, its 95% interval and a paired p-value."""

    metric: str
    direction: str  # "maximize" or "minimize": which sign of delta is a gain
    value_a: float
    value_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_groups: int
    n_resamples: int

    @property
    def gain(self) -> bool:
        """A is better than B beyond noise: the whole interval lies on the better side of 0, and p < 0.05."""
        better = self.ci_low > 0 if self.direction == "maximize" else self.ci_high < 0
        return better and self.p_value < 0.05

    def describe(self) -> str:
        """One line, e.g. ``+0.031 [+0.004, +0.058], p = 0.02, 150 groups``."""
        text = f"{self.delta:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}], p = {self.p_value:.2g}, {self.n_groups} groups"
        return text if self.gain else f"{text}: no evidence of a gain"


def paired_comparison(
    task: Any,
    predictions_a: Mapping[str, str],
    predictions_b: Mapping[str, str],
    *,
    metric: str | None = None,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Compare two systems' predictions (example id -> raw answer) on every example of ``task``.

    ``metric`` defaults to the task's headline metric; its direction is the task's. See the module docstring
    for the bootstrap and the randomisation test.
    """
    metric = metric or task.metric
    groups: dict[str, list[Any]] = {}
    for example in task.examples:
        groups.setdefault(example.group, []).append(example)
    keys = list(groups)

    copies: dict[tuple[str, int], list[Any]] = {}  # (group, n-th draw of it) -> its examples under new keys

    def drawn(key: str, n: int) -> list[Any]:
        if n == 0:
            return groups[key]
        if (key, n) not in copies:
            copies[key, n] = [replace(e, id=f"{e.id}#{n}", group=f"{e.group}#{n}") for e in groups[key]]
        return copies[key, n]

    def value(chosen: Sequence[tuple[str, bool]]) -> float:
        """The metric of A - B on ``chosen`` (group key, swapped); a group drawn again is a group of its own."""
        examples, answers_a, answers_b = [], {}, {}
        times: dict[str, int] = {}
        for key, swapped in chosen:
            first, second = (predictions_b, predictions_a) if swapped else (predictions_a, predictions_b)
            n = times[key] = times.get(key, -1) + 1
            for original, example in zip(groups[key], drawn(key, n), strict=True):
                examples.append(example)
                answers_a[example.id], answers_b[example.id] = first[original.id], second[original.id]
        return task.scorer(examples, answers_a)[metric] - task.scorer(examples, answers_b)[metric]

    observed_a = task.score(predictions_a)[metric]
    observed_b = task.score(predictions_b)[metric]
    delta = observed_a - observed_b
    rng = random.Random(seed)
    boot = [value([(rng.choice(keys), False) for _ in keys]) for _ in range(resamples)]
    swaps = [value([(key, rng.random() < 0.5) for key in keys]) for _ in range(resamples)]
    boot = sorted(d for d in boot if not math.isnan(d))
    extreme = sum(abs(d) >= abs(delta) - 1e-12 for d in swaps if not math.isnan(d))
    return PairedComparison(
        metric=metric,
        direction=task.direction,
        value_a=observed_a,
        value_b=observed_b,
        delta=delta,
        ci_low=_percentile(boot, 0.025),
        ci_high=_percentile(boot, 0.975),
        p_value=(1 + extreme) / (1 + resamples),
        n_groups=len(keys),
        n_resamples=resamples,
    )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the order statistics (numpy's default); NaN when nothing is left."""
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
