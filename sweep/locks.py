"""Locks that several sweep drivers on one database take in turn.

Two drivers that start together must not both create the schema of a new database (the store's, Optuna's, a
SQLite MLflow's), both queue a new study's starting points, or both ask for the study's last trial. PostgreSQL:
a session advisory lock, held on a connection of its own. SQLite: an exclusive ``flock`` on a file beside the
database (drivers on one machine: SQLite hosts one driver per study, see sweep.records). Other URLs (an MLflow
server) need no lock: the server orders its own writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from sweep.settings import first_line, normalise_database_url, redact_url
from var_core.errors import VarsweepError

__all__ = ["database_lock", "is_sqlite", "LockError"]


class LockError(VarsweepError, RuntimeError):
    """The database that should hold a lock cannot be reached."""


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


@contextlib.contextmanager
def database_lock(url: str, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of the database at ``url`` for the ``with`` block (see the module docstring)."""
    url = normalise_database_url(url)
    if url.startswith("postgresql"):
        with _advisory_lock(url, name):
            yield
    elif is_sqlite(url) and make_url(url).database not in (None, "", ":memory:"):
        with _file_lock(Path(str(make_url(url).database)).with_suffix(f".{_slug(name)}.lock")):
            yield
    else:
        yield


@contextlib.contextmanager
def _advisory_lock(url: str, name: str) -> Iterator[None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    try:
        try:
            connection = engine.connect()
        except OperationalError as e:
            cause = first_line(e.orig or e)
            raise LockError(
                f"cannot lock the database at {redact_url(url)}: it is unreachable ({cause})"
            ) from e
        with connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError:  # a folder we cannot write to: the database itself will say so, in its own words
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _slug(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:12]
