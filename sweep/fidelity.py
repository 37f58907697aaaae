"""Multi-fidelity over evaluation examples: rungs of tuning groups that every trial sees in the same order.

A trial evaluates the tuning groups rung by rung and reports its metric after each; Ray Tune's ASHA scheduler
stops the trials that fall behind at a rung, so most configurations never pay for the whole tuning split. Two
rules make the rungs comparable: the order of the groups is fixed and seeded (the same for every trial, so a rung
compares like with like), and groups stay whole (an MMVP pair is never split). Rung sizes grow geometrically:
1/8, 1/4, 1/2 and all of the groups by default, rounded up and never empty; a rung that would repeat the
previous size is dropped. ASHA's clock is the rung's nominal size in eighths (1, 2, 4, 8), so its milestones
(grace period x reduction factor^k) fall exactly on the rungs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from var_core.errors import ConfigError

__all__ = ["Rungs", "EARLY_STOP", "REDUCTION_FACTOR"]

EARLY_STOP = ("off", "asha")
REDUCTION_FACTOR = 2  # ASHA keeps the best half of the trials at each rung
_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass(frozen=True)
class Rungs:
    """The tuning groups in their fixed order, and where each rung ends."""

    order: tuple[str, ...]  # every tuning group, once, in the order all trials see them
    ends: tuple[int, ...]  # groups seen at the end of each rung; the last is len(order)
    clock: tuple[int, ...]  # ASHA's time at each rung: the rung's nominal size in eighths

    @classmethod
    def single(cls, groups: Sequence[str]) -> Rungs:
        """One rung of every group: no early stopping."""
        return cls(order=tuple(groups), ends=(len(groups),), clock=(8,))

    @classmethod
    def geometric(cls, groups: Sequence[str], *, seed: int) -> Rungs:
        """Rungs of 1/8, 1/4, 1/2 and all of ``groups``, in a seeded order."""
        if not groups:
            raise ConfigError("multi-fidelity needs at least one tuning group")
        order = list(groups)
        random.Random(seed).shuffle(order)
        ends: list[int] = []
        clock: list[int] = []
        for fraction in _FRACTIONS:
            end = min(len(order), max(1, math.ceil(fraction * len(order))))
            if ends and end == ends[-1]:
                continue
            ends.append(end)
            clock.append(round(8 * fraction))
        if clock[-1] != 8:  # every rung's size was reached early: the whole split is the last rung
            clock[-1] = 8
        return cls(order=tuple(order), ends=tuple(ends), clock=tuple(clock))

    def __len__(self) -> int:
        return len(self.ends)

    def new_groups(self, rung: int) -> tuple[str, ...]:
        """The groups rung ``rung`` adds to the ones before it."""
        start = self.ends[rung - 1] if rung > 0 else 0
        return self.order[start : self.ends[rung]]

    def seen(self, rung: int) -> tuple[str, ...]:
        """Every group seen by the end of rung ``rung``."""
        return self.order[: self.ends[rung]]
