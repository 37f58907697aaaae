"""The store's tables (SQLAlchemy 2). The schema itself is owned by the Alembic migrations beside this file."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "BestSettings", "Sweep", "VERSION_TABLE"]

# Optuna and MLflow each keep an `alembic_version` table; ours has its own name so the store can share a database.
VERSION_TABLE = "varsweep_alembic_version"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={"pk": "pk_%(table_name)s", "ix": "ix_%(table_name)s_%(column_0_name)s"}
    )


class BestSettings(Base):
    """The best VAR settings found for one (model, task, convention), confirmed on a held-out split."""

    __tablename__ = "best_settings"

    model: Mapped[str] = mapped_column(String(512), primary_key=True)
    task: Mapped[str] = mapped_column(String(128), primary_key=True)
    convention: Mapped[str] = mapped_column(String(16), primary_key=True)
    tau: Mapped[float] = mapped_column(Float)
    rho: Mapped[float] = mapped_column(Float)
    p: Mapped[float] = mapped_column(Float)
    summ: Mapped[float] = mapped_column(Float)
    first_layer: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(128))
    direction: Mapped[str] = mapped_column(String(16))
    tuning_value: Mapped[float] = mapped_column(Float)
    heldout_value: Mapped[float] = mapped_column(Float)
    baseline_heldout: Mapped[float] = mapped_column(Float)
    n_tuning: Mapped[int] = mapped_column(Integer)
    n_heldout: Mapped[int] = mapped_column(Integer)
    sweep_id: Mapped[str] = mapped_column(String(64))
    study: Mapped[str] = mapped_column(String(512))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the paired held-out comparison against VAR off (workers.tasks.paired_comparison); empty on older rows
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_resamples: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Sweep(Base):
    """One run of the sweep command (a driver): its key (the study), status, trial count and lease."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(512), index=True)
    model: Mapped[str] = mapped_column(String(512))
    task: Mapped[str] = mapped_column(String(128))
    convention: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed | interrupted | killed
    trials: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the driver's lease: renewed while it runs (see Store.beat / Store.reap)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
