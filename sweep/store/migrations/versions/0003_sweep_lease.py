"""sweeps: the driver's lease (heartbeat, host, pid) and its MLflow run

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A running sweep renews heartbeat_at; another driver of the study treats a sweep whose lease has run out as dead
(status "killed"). Rows of older releases have no heartbeat: they count as dead once they are older than the
grace period.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as table:
        table.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("host", sa.String(255), nullable=True))
        table.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        table.add_column(sa.Column("mlflow_run_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as table:
        for name in ("heartbeat_at", "host", "pid", "mlflow_run_id"):
            table.drop_column(name)
