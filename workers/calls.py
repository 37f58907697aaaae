"""Calls to a ModelWorker that Ray may be restarting (its process killed, its node lost). No torch here: trial
processes import this."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["get_resending"]


def get_resending(ref: Any, resend: Callable[[], Any], patience: float) -> Any:
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
