"""The sweep's service: how many trials run at once on the driver's node."""

from __future__ import annotations

import logging

import pytest

from sweep.service import _trials_at_once
from sweep.tuning import TRIAL_MEMORY
from workers.actor import PlacementError


def test_batch_runs_whole_where_the_driver_node_holds_it(caplog):
    with caplog.at_level(logging.WARNING, logger="varsweep"):
        assert _trials_at_once(16, room=26, memory=26 * TRIAL_MEMORY) == 16
    assert not caplog.records


def test_a_driver_node_with_less_room_gives_smaller_batches_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="varsweep"):
        assert _trials_at_once(16, room=5, memory=1.4 * 2**30) == 5
    (record,) = caplog.records
    assert record.getMessage() == (
        "the driver's node holds 5 trial processes (1.4 GiB of Ray memory, 256 MiB each): batches of 5 "
        "configurations, not --batch 16"
    )


def test_no_room_for_one_trial_is_a_one_line_error():
    with pytest.raises(
        PlacementError, match=r"^the driver's node has 100 MiB of Ray memory, less than one trial"
    ):
        _trials_at_once(4, room=0, memory=100 * 2**20)
