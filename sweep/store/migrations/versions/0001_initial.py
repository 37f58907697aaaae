"""best_settings and sweeps

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "best_settings",
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("convention", sa.String(16), nullable=False),
        sa.Column("tau", sa.Float(), nullable=False),
        sa.Column("rho", sa.Float(), nullable=False),
        sa.Column("p", sa.Float(), nullable=False),
        sa.Column("summ", sa.Float(), nullable=False),
        sa.Column("first_layer", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(128), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("tuning_value", sa.Float(), nullable=False),
        sa.Column("heldout_value", sa.Float(), nullable=False),
        sa.Column("baseline_heldout", sa.Float(), nullable=False),
        sa.Column("n_tuning", sa.Integer(), nullable=False),
        sa.Column("n_heldout", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.String(64), nullable=False),
        sa.Column("study", sa.String(512), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "task", "convention", name="pk_best_settings"),
    )
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("convention", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_index("ix_sweeps_key", "sweeps", ["key"])


def downgrade() -> None:
    op.drop_index("ix_sweeps_key", table_name="sweeps")
    op.drop_table("sweeps")
    op.drop_table("best_settings")
