"""Initial schema: runs and what they own (plans, predictions, metrics, samples, artifacts, timeline).

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Migrations are frozen history: they spell out their columns instead of importing cmtwin.store.models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _run_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["run_id"], ["runs.id"], name=op.f(f"fk_{table}_run_id_runs"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("verb", sa.String(length=32), nullable=False),
        sa.Column("deployment", sa.String(length=200), nullable=True),
        sa.Column("plan_hash", sa.String(length=128), nullable=True),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("software_version", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("output_dir", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'ok', 'failed', 'interrupted', 'cancelled')",
            name=op.f("ck_runs_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_plan_hash"), "runs", ["plan_hash"])
    op.create_index(op.f("ix_runs_status"), "runs", ["status"])

    op.create_table(
        "plans",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("plan_hash", sa.String(length=128), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        _run_fk("plans"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_plans")),
    )
    op.create_table(
        "predictions",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        _run_fk("predictions"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_predictions")),
    )
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        _run_fk("metrics"),
        sa.PrimaryKeyConstraint("run_id", "name", name=op.f("pk_metrics")),
    )
    op.create_table(
        "samples",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("t", sa.Float(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        _run_fk("samples"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
    )
    op.create_index(op.f("ix_samples_run_id"), "samples", ["run_id"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        _run_fk("artifacts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
    )
    op.create_index(op.f("ix_artifacts_run_id"), "artifacts", ["run_id"])
    op.create_table(
        "timeline",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=200), nullable=False),
        sa.Column("start_us", sa.Float(), nullable=False),
        sa.Column("dur_us", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("predicted_us", sa.Float(), nullable=True),
        sa.CheckConstraint("kind IN ('compute', 'comm')", name=op.f("ck_timeline_kind_valid")),
        _run_fk("timeline"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timeline")),
    )
    op.create_index(op.f("ix_timeline_run_id"), "timeline", ["run_id"])


def downgrade() -> None:
    for table in ("timeline", "artifacts", "samples"):
        op.drop_index(op.f(f"ix_{table}_run_id"), table_name=table)
        op.drop_table(table)
    for table in ("metrics", "predictions", "plans"):
        op.drop_table(table)
    op.drop_index(op.f("ix_runs_status"), table_name="runs")
    op.drop_index(op.f("ix_runs_plan_hash"), table_name="runs")
    op.drop_table("runs")
