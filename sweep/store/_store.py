"""The best-settings store: SQLite by default, PostgreSQL (psycopg 3) in production.

The schema comes only from the Alembic migrations in ``sweep/store/migrations``. A database with no varsweep tables
is migrated on first use (so the embedded default needs no setup); a database at another revision is refused,
naming the upgrade command, ``python -m sweep.store upgrade``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, inspect, or_, select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from sweep.retry import is_transient, retrying
from sweep.settings import first_line, normalise_database_url, redact_url
from sweep.store.models import VERSION_TABLE, BestSettings, Sweep
from var_core.errors import VarsweepError

__all__ = ["Store", "StoreError", "SchemaError", "BestRecord", "SweepRecord", "upgrade"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(VarsweepError, RuntimeError):
    """The settings database cannot be reached or used."""


class SchemaError(StoreError):
    """The database's schema is not the one this version of varsweep needs."""


@dataclass(frozen=True)
class BestRecord:
    """A row of ``best_settings`` (DESIGN.md "Contract details")."""

    model: str
    task: str
    convention: str
    tau: float
    rho: float
    p: float
    summ: float
    first_layer: int
    metric: str
    direction: str
    tuning_value: float
    heldout_value: float
    baseline_heldout: float
    n_tuning: int
    n_heldout: int
    sweep_id: str
    study: str
    mlflow_run_id: str | None
    git_commit: str | None
    data_fingerprint: str
    updated_at: datetime | None = None
    # the paired comparison of heldout_value against baseline_heldout (None on rows of older releases)
    ci_low: float | None = None  # 95% clustered bootstrap interval of delta
    ci_high: float | None = None
    p_value: float | None = None  # paired randomisation test
    n_resamples: int | None = None

    @property
    def delta(self) -> float:
        """heldout_value - baseline_heldout: what VAR changed on the held-out split."""
        return self.heldout_value - self.baseline_heldout

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        out["delta"] = self.delta
        return out


@dataclass(frozen=True)
class SweepRecord:
    """A row of ``sweeps``: one driver of a study."""

    id: str
    key: str
    model: str
    task: str
    convention: str
    status: str
    trials: int
    started_at: datetime
    finished_at: datetime | None
    message: str | None
    heartbeat_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    mlflow_run_id: str | None = None

    def describe(self) -> str:
        """Who ran it: ``host h, pid p, started 2026-12-01 21:30 UTC``."""
        started = _utc(self.started_at).strftime("%Y-%m-%d %H:%M UTC")
        return f"host {self.host or '?'}, pid {self.pid or '?'}, started {started}"


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive times
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("sweep.store") / "migrations"))
    config.attributes["connection"] = connection
    return config


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    if head is None:
        raise SchemaError("the store's migrations have no head revision")
    return head


def _current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def upgrade(url: str) -> str:
    """Migrate the database at ``url`` to the newest schema; returns the revision."""
    from alembic import command

    engine = _engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        return _head_revision()
    finally:
        engine.dispose()


def _engine(url: str) -> Engine:
    url = normalise_database_url(url)
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = 10
    elif url.startswith("sqlite"):
        connect_args["timeout"] = 30  # wait for a concurrent writer's lock rather than fail
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _alive(record: SweepRecord, now: datetime, grace: float) -> bool:
    last = record.heartbeat_at or record.started_at
    return (now - _utc(last)).total_seconds() <= grace


class Store:
    """Best settings and sweep records in a SQL database (see the module docstring).

    Operations retry for up to ``retry_seconds`` when the database is unreachable (a restarting server), logging
    each wait, then raise :class:`StoreError`.
    """

    def __init__(self, url: str, *, retry_seconds: float = 120.0) -> None:
        self.url = normalise_database_url(url)
        self.retry_seconds = retry_seconds
        self.engine = _engine(self.url)
        self._retry(self._check_schema, "open the store")

    def __repr__(self) -> str:
        return f"Store({redact_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- schema
    def _check_schema(self) -> None:
        head = _head_revision()
        current = _current_revision(self.engine)
        if current == head:
            return
        has_tables = bool(set(inspect(self.engine).get_table_names()) & {"best_settings", "sweeps"})
        if current is None and not has_tables:
            log.info("creating the varsweep store schema in %s", redact_url(self.url))
            upgrade(self.url)
            return
        raise SchemaError(
            f"the store at {redact_url(self.url)} is at schema revision {current or 'none'}, this varsweep needs "
            f"{head}: run `python -m sweep.store upgrade` (VARSWEEP_DATABASE_URL set to that database)"
        )

    # ---------------------------------------------------------------- plumbing
    def _retry(self, operation: Callable[[], T], what: str) -> T:
        """``operation()``, waiting out a transient outage for up to ``retry_seconds`` (see sweep.retry)."""
        try:
            return retrying(operation, what=what, seconds=self.retry_seconds, url=self.url)
        except OperationalError as e:
            detail = first_line(e.orig or e)
            if is_transient(e):
                raise StoreError(
                    f"cannot {what}: the database at {redact_url(self.url)} is unreachable ({detail})"
                ) from e
            raise StoreError(f"cannot {what} in {redact_url(self.url)}: {detail}") from e
        except SQLAlchemyError as e:
            raise StoreError(f"cannot {what}: {first_line(e)}") from e

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    # ---------------------------------------------------------------- sweeps
    def start_sweep(
        self,
        *,
        key: str,
        model: str,
        task: str,
        convention: str,
        host: str | None = None,
        pid: int | None = None,
    ) -> str:
        """Record a sweep (driver) as running, its lease fresh; returns its id."""
        sweep_id = uuid.uuid4().hex
        now = datetime.now(UTC)

        def op() -> str:
            with self._session() as s:
                s.add(
                    Sweep(
                        id=sweep_id,
                        key=key,
                        model=model,
                        task=task,
                        convention=convention,
                        status="running",
                        trials=0,
                        started_at=now,
                        heartbeat_at=now,
                        host=host,
                        pid=pid,
                    )
                )
            return sweep_id

        return self._retry(op, "record the sweep")

    def beat(self, sweep_id: str, *, mlflow_run_id: str | None = None) -> None:
        """Renew a running sweep's lease (once, no waiting: the next beat comes soon)."""
        values: dict[str, Any] = {"heartbeat_at": datetime.now(UTC)}
        if mlflow_run_id is not None:
            values["mlflow_run_id"] = mlflow_run_id
        with self._session() as s:
            s.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.status == "running").values(**values))

    def reap(self, key: str, *, grace: float) -> list[SweepRecord]:
        """Mark the running sweeps of ``key`` whose lease ran out ``grace`` seconds ago as killed; returns them."""

        def op() -> list[SweepRecord]:
            now = datetime.now(UTC)
            dead = [r for r in self.sweeps(key) if r.status == "running" and not _alive(r, now, grace)]
            with self._session() as s:
                for record in dead:
                    last = _utc(record.heartbeat_at or record.started_at).strftime("%Y-%m-%d %H:%M:%S UTC")
                    s.execute(
                        update(Sweep)
                        .where(Sweep.id == record.id, Sweep.status == "running")
                        .values(
                            status="killed",
                            finished_at=now,
                            message=f"no heartbeat since {last}: the driver was killed or lost",
                        )
                    )
            return dead

        return self._retry(op, "mark dead sweeps")

    def live(self, key: str, *, grace: float) -> list[SweepRecord]:
        """The running sweeps of ``key`` whose lease is fresh (other drivers of the study, right now)."""
        now = datetime.now(UTC)
        return [r for r in self.sweeps(key) if r.status == "running" and _alive(r, now, grace)]

    def finish_sweep(self, sweep_id: str, *, status: str, trials: int, message: str | None = None) -> None:
        def op() -> None:
            with self._session() as s:
                s.execute(
                    update(Sweep)
                    .where(Sweep.id == sweep_id)
                    .values(status=status, trials=trials, finished_at=datetime.now(UTC), message=message)
                )

        self._retry(op, "record the end of the sweep")

    def sweeps(self, key: str | None = None) -> list[SweepRecord]:
        def op() -> list[SweepRecord]:
            with self._session() as s:
                query = select(Sweep).order_by(Sweep.started_at)
                if key is not None:
                    query = query.where(Sweep.key == key)
                return [
                    SweepRecord(**{f.name: getattr(r, f.name) for f in fields(SweepRecord)})
                    for r in s.scalars(query)
                ]

        return self._retry(op, "read the sweeps")

    # ---------------------------------------------------------------- best settings
    def upsert_best(self, record: BestRecord) -> bool:
        """Store ``record`` unless the stored row for its key is at least as good; True when it was written.

        Decided inside one statement (INSERT ... ON CONFLICT DO UPDATE ... WHERE better), so racing sweeps keep the
        better row. A stored row for another metric is never replaced by this one.
        """
        values = record.to_dict() | {"updated_at": datetime.now(UTC)}
        from sqlalchemy.dialects import postgresql, sqlite

        # both dialects have INSERT ... ON CONFLICT, each with its own insert()
        insert: Any = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(self.engine.dialect.name)
        if insert is None:
            raise StoreError(
                f"unsupported database dialect {self.engine.dialect.name!r}: use PostgreSQL or SQLite"
            )
        statement = insert(BestSettings).values(**values)
        new = statement.excluded
        better = or_(
            (BestSettings.direction == "maximize") & (new.heldout_value > BestSettings.heldout_value),
            (BestSettings.direction == "minimize") & (new.heldout_value < BestSettings.heldout_value),
        )
        upsert = statement.on_conflict_do_update(
            index_elements=["model", "task", "convention"],
            set_={k: new[k] for k in values if k not in ("model", "task", "convention")},
            where=(BestSettings.metric == new.metric) & better,
        ).returning(BestSettings.model)  # a row comes back only when it was inserted or replaced

        def op() -> bool:
            with self._session() as s:
                return s.execute(upsert).first() is not None

        return self._retry(op, "store the best settings")

    def best(
        self, *, model: str | None = None, task: str | None = None, convention: str | None = None
    ) -> list[BestRecord]:
        def op() -> list[BestRecord]:
            with self._session() as s:
                query = select(BestSettings).order_by(
                    BestSettings.model, BestSettings.task, BestSettings.convention
                )
                for column, value in (("model", model), ("task", task), ("convention", convention)):
                    if value is not None:
                        query = query.where(getattr(BestSettings, column) == value)
                return [
                    BestRecord(**{f.name: getattr(r, f.name) for f in fields(BestRecord)})
                    for r in s.scalars(query)
                ]

        return self._retry(op, "read the best settings")
