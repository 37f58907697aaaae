"""The driver's MLflow writer: in order, after a quiet moment, everything run at shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from sweep.tracking import QuietWriter


def test_calls_run_in_order_once_no_call_came_for_the_quiet_time():
    writer = QuietWriter("test-writer", quiet=0.5, most=60.0)
    done: list[int] = []
    try:
        submitted = time.monotonic()
        futures = [writer.submit(done.append, i) for i in range(3)]
        time.sleep(0.1)
        assert done == []  # 0.5 s of quiet have not passed since the last call
        for future in futures:
            future.result(timeout=30)
        assert time.monotonic() - submitted >= 0.5
        assert done == [0, 1, 2]
    finally:
        writer.shutdown()


def test_a_steady_stream_of_calls_delays_each_at_most_its_longest_wait():
    writer = QuietWriter("test-writer", quiet=1.0, most=0.3)
    first = writer.submit(lambda: "first")
    try:
        ends = time.monotonic() + 3.0
        while time.monotonic() < ends:  # never 1 s of quiet
            writer.submit(lambda: None)
            time.sleep(0.05)
        assert first.done()
        assert first.result() == "first"
    finally:
        writer.shutdown()


def test_shutdown_runs_what_is_queued_without_waiting_for_quiet():
    writer = QuietWriter("test-writer", quiet=600.0, most=600.0)
    done = threading.Event()
    writer.submit(done.set)
    writer.shutdown(wait=True)
    assert done.is_set()
    with pytest.raises(RuntimeError, match="shut down"):
        writer.submit(done.set)


def test_an_error_is_handed_to_the_future_and_the_writer_goes_on():
    writer = QuietWriter("test-writer", quiet=0.0)
    try:
        failed = writer.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(timeout=30)
        assert writer.submit(lambda: "next").result(timeout=30) == "next"
    finally:
        writer.shutdown()
