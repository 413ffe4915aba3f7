"""The run store's tables (SQLAlchemy 2 typed declarative).

Every verb records a run; a run owns its plan, prediction, key metrics, time series samples, artifacts
and executor timeline, all deleted with it (ON DELETE CASCADE). JSON columns use sqlalchemy.JSON so the
same models serve SQLite and PostgreSQL. Timestamps are stored in UTC and read back timezone-aware.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_STATUSES = ("running", "ok", "failed", "interrupted", "cancelled")
"""Every status a run can have; all but 'running' are final."""

TIMELINE_KINDS = ("compute", "comm")
"""What a timeline event spends its time on."""

# Named constraints make later ALTERs (and SQLite batch migrations) deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit key on PostgreSQL (samples grow fast); SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC: naive inputs are taken as UTC, outputs are always timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        # SQLite has no time zones: store the naive UTC wall time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base holding the store's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _run_fk() -> ForeignKey:
    return ForeignKey("runs.id", ondelete="CASCADE")


class Run(Base):
    """One invocation of a verb (plan, simulate, search, execute, calibrate...)."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('running', 'ok', 'failed', 'interrupted', 'cancelled')", name="status_valid"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    verb: Mapped[str] = mapped_column(String(32))
    deployment: Mapped[str | None] = mapped_column(String(200))
    plan_hash: Mapped[str | None] = mapped_column(String(128), index=True)
    overrides: Mapped[list[str]] = mapped_column(JSON)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    software_version: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(Text)
    sweep: Mapped[str | None] = mapped_column(String(64), index=True)
    """The sweep (one `-m` multirun) the run belongs to; null for a single run."""


class PlanRecord(Base):
    """The compiled plan of a run (at most one per run)."""

    __tablename__ = "plans"

    run_id: Mapped[int] = mapped_column(_run_fk(), primary_key=True)
    plan_hash: Mapped[str] = mapped_column(String(128))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)


class PredictionRecord(Base):
    """The twin's prediction for a run (at most one per run)."""

    __tablename__ = "predictions"

    run_id: Mapped[int] = mapped_column(_run_fk(), primary_key=True)
    prediction: Mapped[dict[str, Any]] = mapped_column(JSON)


class Metric(Base):
    """A key scalar result of a run, e.g. 'decode.tokens_per_s_per_device'."""

    __tablename__ = "metrics"

    run_id: Mapped[int] = mapped_column(_run_fk(), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Sample(Base):
    """One point of a time series written while a run progresses."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    t: Mapped[float] = mapped_column(Float)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    """A file a run produced (a plot, a trace...)."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)


class TimelineEntry(Base):
    """One operator on one rank in an executor timeline, with the twin's prediction beside it."""

    __tablename__ = "timeline"
    __table_args__ = (CheckConstraint("kind IN ('compute', 'comm')", name="kind_valid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_run_fk(), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(200))
    start_us: Mapped[float] = mapped_column(Float)
    dur_us: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    predicted_us: Mapped[float | None] = mapped_column(Float)
