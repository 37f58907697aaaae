"""Progress of the long steps (prefixes, trials) as people read it: k/N, elapsed, ETA, best so far.

On a terminal each step is a tqdm bar, and the sweep's log lines print above it; elsewhere (a Ray job's log, a
file, CI) there are no bars, and the same facts end each progress line instead.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Progress", "bars"]


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """``total`` steps of ``what``; :meth:`advance` after each, :meth:`line` for the plain-text form."""

    def __init__(self, what: str, total: int, *, bar: bool) -> None:
        self.what, self.total, self.done = what, total, 0
        self.started = time.monotonic()
        self.best: str | None = None
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit="", dynamic_ncols=True, leave=True, file=sys.stderr)

    @property
    def drawn(self) -> bool:
        """Whether this progress is a bar (else the caller logs :meth:`line`)."""
        return self._bar is not None

    def begin(self) -> None:
        """Start the clock now (the step waited for another one until now)."""
        self.started = time.monotonic()
        if self._bar is not None:
            self._bar.reset(total=self.total)

    def advance(self, steps: int = 1, *, best: str | None = None) -> None:
        self.done = min(self.total, self.done + steps)
        self.best = best if best is not None else self.best
        if self._bar is not None:
            self._bar.update(steps)
            if self.best is not None:
                self._bar.set_postfix_str(f"best {self.best}")

    def set(self, done: int) -> None:
        self.advance(done - self.done)

    def line(self) -> str:
        """``[6/12, 00:14 elapsed, ETA 00:14, best 0.1429]``"""
        elapsed = time.monotonic() - self.started
        parts = [f"{self.done}/{self.total}", f"{_clock(elapsed)} elapsed"]
        if 0 < self.done < self.total:
            parts.append(f"ETA {_clock(elapsed / self.done * (self.total - self.done))}")
        if self.best is not None:
            parts.append(f"best {self.best}")
        return "[" + ", ".join(parts) + "]"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def bars() -> Iterator[bool]:
    """Whether to draw bars (stderr is a terminal); while they are drawn, log lines print above them."""
    if not sys.stderr.isatty():
        yield False
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield True
