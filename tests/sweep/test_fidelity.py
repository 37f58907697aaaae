"""Rungs of tuning groups: seeded, shared, geometric, whole groups."""

from __future__ import annotations

import pytest

from sweep.fidelity import Rungs
from var_core.errors import ConfigError

GROUPS = [f"pair{i}" for i in range(22)]


def test_geometric_rungs_are_seeded_whole_and_end_with_every_group():
    rungs = Rungs.geometric(GROUPS, seed=0)
    assert rungs == Rungs.geometric(GROUPS, seed=0)  # the same order for every trial of the sweep
    assert rungs.order != Rungs.geometric(GROUPS, seed=1).order
    assert sorted(rungs.order) == sorted(GROUPS)
    assert rungs.ends == (3, 6, 11, 22) and rungs.clock == (1, 2, 4, 8)  # ceil(22/8), ceil(22/4), ...
    slices = [rungs.new_groups(r) for r in range(len(rungs))]
    assert [g for part in slices for g in part] == list(rungs.order)  # each group once, never split
    assert rungs.seen(1) == rungs.order[:6]


def test_small_splits_drop_repeated_rungs_and_keep_the_full_clock():
    rungs = Rungs.geometric(GROUPS[:3], seed=0)
    assert rungs.ends == (1, 2, 3) and rungs.clock == (1, 4, 8)
    one = Rungs.geometric(GROUPS[:1], seed=0)
    assert one.ends == (1,) and one.clock == (8,)
    assert Rungs.single(GROUPS).ends == (22,) and len(Rungs.single(GROUPS)) == 1


def test_no_groups_is_an_error():
    with pytest.raises(ConfigError, match="at least one tuning group"):
        Rungs.geometric([], seed=0)
