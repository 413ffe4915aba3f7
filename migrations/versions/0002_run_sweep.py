"""Runs remember the sweep they belong to (`cmtwin plan|simulate|search -m ...`: one Hydra multirun).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07

Migrations are frozen history: they spell out their columns instead of importing cmtwin.store.models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("sweep", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_runs_sweep"), ["sweep"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(batch.f("ix_runs_sweep"))
        batch.drop_column("sweep")
