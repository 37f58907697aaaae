"""One idea of "transient" for every database call the sweep makes, and one way to wait it out.

A database that restarts, a network that blips, a SQLite file locked by a concurrent writer or a disk that is full
for a moment: the call is tried again with a growing delay until a deadline. Everything else (a read-only
database, a missing table, a refused password, a wrong database name) fails at once with its own message, since
waiting cannot fix it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from var_core.errors import VarsweepError

__all__ = ["is_transient", "retrying", "ReadOnlyDatabaseError"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# OperationalError covers both kinds; these messages (SQLite's, PostgreSQL's) say that waiting cannot help
_PERMANENT = (
    "readonly database",
    "read-only",
    "no such table",
    "no such column",
    "syntax error",
    "permission denied",
    "password authentication failed",
    "authentication failed",
    "does not exist",
    "unable to open database file",
    "attempt to write a readonly database",
)


class ReadOnlyDatabaseError(VarsweepError, PermissionError):
    """A SQLite database whose file or folder cannot be written (SQLite may call it "locked")."""


def _unwritable(url: str | None) -> str | None:
    """Why the SQLite database at ``url`` cannot be written, if it cannot (its folder or file is read-only)."""
    if not url or not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    path = Path(database)
    if not os.access(path.parent, os.W_OK):
        return f"{path}: its folder is read-only, so SQLite cannot write the database"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path}: the file is read-only"
    return None


def is_transient(error: BaseException) -> bool:
    """True for a lost or busy connection (worth another try), False for an error a retry cannot fix."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OperationalError) or (
            isinstance(seen, DBAPIError) and seen.connection_invalidated
        ):
            text = str(seen).lower()
            return not any(marker in text for marker in _PERMANENT)
        seen = seen.__cause__ or seen.__context__
    return False


def retrying(operation: Callable[[], T], *, what: str, seconds: float, url: str | None = None) -> T:
    """``operation()``, tried again while it fails transiently, for up to ``seconds``; each wait is logged.

    ``url`` (the database's): a SQLite file that has become read-only raises :class:`ReadOnlyDatabaseError` at
    once, though SQLite reports it as a busy ("locked") database.
    """
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return operation()
        except Exception as e:
            if not is_transient(e) or time.monotonic() + delay > deadline:
                raise
            reason = _unwritable(url)
            if reason is not None:
                raise ReadOnlyDatabaseError(reason) from e
            log.warning("database unreachable (%s); retrying in %.1f s", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
