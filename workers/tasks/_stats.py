"""Closed-form standard errors (STYLE.md house rule 9: every score ships with its stderr).

Every metric here is a ratio of sums over independent clusters (the task's groups: an MMVP pair, a POPE
image): accuracy = sum(correct) / sum(questions), F1 = sum(2 TP) / sum(2 TP + FP + FN), CHAIR_i =
sum(hallucinated) / sum(mentions). Its standard error is the linearised (delta-method) one, clustered by
group:

    se(R)^2 = n / (n - 1) * sum_c (A_c - R B_c)^2 / (sum_c B_c)^2,   R = sum A / sum B, n clusters,

which for one question per cluster reduces to the usual sample stddev / sqrt(n) of a mean (lm-eval's
``mean_stderr``). Undefined values (no clusters, one cluster, a zero denominator) are NaN, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["ratio", "ratio_stderr", "combined_stderr", "clustered_mean"]

NAN = float("nan")


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """sum(numerators) / sum(denominators), NaN when the denominator is 0."""
    total = math.fsum(denominators)
    return math.fsum(numerators) / total if total else NAN


def ratio_stderr(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Cluster-robust linearised standard error of :func:`ratio` (formula in the module docstring)."""
    n = len(numerators)
    if n != len(denominators):
        raise ValueError(f"{n} numerators but {len(denominators)} denominators")
    total = math.fsum(denominators)
    if n < 2 or not total:
        return NAN
    value = math.fsum(numerators) / total
    residuals = math.fsum((a - value * b) ** 2 for a, b in zip(numerators, denominators, strict=True))
    return math.sqrt(n / (n - 1) * residuals) / total


def combined_stderr(weights: Sequence[float], stderrs: Sequence[float]) -> float:
    """Standard error of sum(w_i x_i) for independent x_i: sqrt(sum(w_i^2 se_i^2))."""
    return math.sqrt(math.fsum(w * w * s * s for w, s in zip(weights, stderrs, strict=True)))


def clustered_mean(groups: Sequence[str], values: Sequence[float]) -> tuple[float, float]:
    """Mean of per-item ``values`` and its standard error clustered by ``groups`` (one group key per item)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for group, value in zip(groups, values, strict=True):
        sums[group] = sums.get(group, 0.0) + value
        counts[group] = counts.get(group, 0) + 1
    numerators, denominators = list(sums.values()), [float(counts[g]) for g in sums]
    return ratio(numerators, denominators), ratio_stderr(numerators, denominators)
