"""SIGINT and SIGTERM end a sweep the same way: as :class:`Interrupted`, raised where it is safe.

Ctrl-C, ``ray job stop`` and Kubernetes (SIGTERM) all ask the driver to stop. Inside :func:`handling` both signals
raise :class:`Interrupted` where they land, as Python does for Ctrl-C; inside :func:`deferred` (the search, where
a signal could land in the middle of a database transaction or inside Ray Tune's machinery) they only record the
request, and :func:`check` raises it at the next safe point. A second signal raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "handling", "take_back", "deferred", "check"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop by a signal; ``exit_code`` is the shell's 128 + signal number.

    A KeyboardInterrupt, so that libraries which clean up after Ctrl-C (Ray Tune stops its trials) do so for
    SIGTERM too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class _State:
    handling = False
    deferring = False
    pending: int | None = None


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.deferring and _state.pending is None:
        _state.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    _state.handling = True
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.handling, _state.pending = False, None


def take_back() -> None:
    """Install the handlers again, if :func:`handling` is active: ``ray.init`` installs a SIGTERM handler of its
    own (which aborts the process with a C++ stack dump)."""
    if _state.handling and threading.current_thread() is threading.main_thread():
        for s in _SIGNALS:
            signal.signal(s, _handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a signal is only recorded; :func:`check` raises it (and does on leaving the block)."""
    _state.deferring = True
    try:
        yield
    finally:
        _state.deferring = False
    check()


def check() -> None:
    """Raise :class:`Interrupted` if a signal was recorded."""
    if _state.pending is not None:
        signum, _state.pending = _state.pending, None
        raise Interrupted(signum)
