"""The best-settings store (SQLAlchemy 2, Alembic migrations in this package). See :mod:`sweep.store._store`."""

from sweep.store._store import BestRecord, SchemaError, Store, StoreError, SweepRecord, upgrade

__all__ = ["BestRecord", "SchemaError", "Store", "StoreError", "SweepRecord", "upgrade"]
