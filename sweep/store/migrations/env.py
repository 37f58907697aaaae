"""Alembic environment of the varsweep store: the connection comes from the caller (sweep.store.upgrade)."""

from __future__ import annotations

from alembic import context

from sweep.store.models import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
