"""Calls to a ModelWorker that Ray may be restarting (its process killed, its node lost). No torch here: trial
processes import this."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["RESTART_PATIENCE", "get_each_resending", "get_resending"]

# how long a caller waits for a worker that Ray is restarting (placed again, model reloaded): as long as the pool
# waits for its placement at the start (VARSWEEP_PLACEMENT_TIMEOUT's default)
RESTART_PATIENCE = 600.0


def get_resending(ref: Any, resend: Callable[[], Any], patience: float = RESTART_PATIENCE) -> Any:
    """``ray.get(ref)``; while Ray answers that the actor is unavailable (``ActorUnavailableError``: it does not
    know whether the call ran), the call is sent again with ``resend()``, once a second, for at most ``patience``
    seconds. Only for calls that may run twice (evaluating, reading counters)."""
    import ray
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + patience
    while True:
        try:
            return ray.get(ref)
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
            ref = resend()


def get_each_resending(calls: Sequence[Callable[[], Any]], patience: float = RESTART_PATIENCE) -> list[Any]:
    """Send every call at once (one per worker: they compute side by side), then each one's result as
    :func:`get_resending` gets it, in the order of ``calls``."""
    refs = [call() for call in calls]
    return [get_resending(ref, call, patience) for ref, call in zip(refs, calls, strict=True)]
