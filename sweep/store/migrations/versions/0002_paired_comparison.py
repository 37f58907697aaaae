"""best_settings: the paired held-out comparison against VAR off (delta, 95% interval, p-value)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Rows written by the previous release get delta = heldout_value - baseline_heldout (what it is by definition); their
interval and p-value stay empty, since the per-example answers behind them were not kept.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("delta", "ci_low", "ci_high", "p_value")


def upgrade() -> None:
    with op.batch_alter_table("best_settings") as table:  # batch mode: SQLite alters tables by copying them
        for name in _COLUMNS:
            table.add_column(sa.Column(name, sa.Float(), nullable=True))
        table.add_column(sa.Column("n_resamples", sa.Integer(), nullable=True))
    op.execute("UPDATE best_settings SET delta = heldout_value - baseline_heldout")


def downgrade() -> None:
    with op.batch_alter_table("best_settings") as table:
        for name in (*_COLUMNS, "n_resamples"):
            table.drop_column(name)
