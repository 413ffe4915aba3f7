"""Repository functions over a Store: every read and write of runs goes through here (no SQL elsewhere).

Writers commit in one transaction each, so a failure leaves nothing half-written. Readers return frozen
dataclasses (or named tuples for bulk rows), detached from any session.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from cmtwin import __version__
from cmtwin.errors import StoreError
from cmtwin.executor.trace import TimelineEvent
from cmtwin.store.direct import SWEEP_ENV, check_json_finite
from cmtwin.store.engine import Store
from cmtwin.store.models import (
    RUN_STATUSES,
    TIMELINE_KINDS,
    Artifact,
    Metric,
    PlanRecord,
    PredictionRecord,
    Run,
    Sample,
    TimelineEntry,
)

FINAL_STATUSES = tuple(s for s in RUN_STATUSES if s != "running")
"""The statuses `finish_run` accepts."""


class SamplePoint(NamedTuple):
    """One stored time-series point; `id` grows monotonically, for incremental polling (since_id)."""

    id: int
    t: float
    name: str
    value: float


@dataclass(frozen=True)
class ArtifactRef:
    """A file a run produced."""

    kind: str
    path: str


@dataclass(frozen=True)
class RunSummary:
    """One line of `cmtwin runs ls`."""

    id: int
    verb: str
    deployment: str | None
    plan_hash: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    metrics: dict[str, float]
    sweep: str | None = None  # the `-m` multirun it belongs to


@dataclass(frozen=True)
class RunDetail:
    """Everything stored about one run except its bulk rows (samples, timeline)."""

    id: int
    verb: str
    deployment: str | None
    plan_hash: str | None
    overrides: list[str]
    config: dict[str, Any] | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    software_version: str
    host: str
    pid: int
    message: str | None
    output_dir: str | None
    plan: dict[str, Any] | None
    prediction: dict[str, Any] | None
    metrics: dict[str, float]
    artifacts: tuple[ArtifactRef, ...]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _duration(started: datetime, finished: datetime | None) -> float | None:
    return None if finished is None else (finished - started).total_seconds()


def _check_status(status: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if status not in allowed:
        raise StoreError(f"run status {status!r} is not one of {', '.join(allowed)}")


def _new_run(
    session: Session,
    *,
    verb: str,
    deployment: str | None,
    plan_hash: str | None,
    overrides: Iterable[str],
    config: Mapping[str, Any] | None,
    status: str,
    started_at: datetime,
    finished_at: datetime | None,
    plan: Mapping[str, Any] | None,
    prediction: Mapping[str, Any] | None,
    message: str | None,
    output_dir: str | None,
) -> int:
    for what, value in (("config", config), ("plan", plan), ("prediction", prediction)):
        check_json_finite(what, value)
    run = Run(
        verb=verb,
        deployment=deployment,
        plan_hash=plan_hash,
        overrides=list(overrides),
        config=dict(config) if config is not None else None,
        status=status,
        started_at=started_at,
        finished_at=finished_at,
        software_version=__version__,
        host=socket.gethostname(),
        pid=os.getpid(),
        message=message,
        output_dir=output_dir,
        sweep=os.environ.get(SWEEP_ENV) or None,
    )
    session.add(run)
    session.flush()
    if plan is not None:
        if plan_hash is None:
            raise StoreError(f"run of {verb!r} has a plan but no plan_hash; pass the plan's identity hash")
        session.add(PlanRecord(run_id=run.id, plan_hash=plan_hash, plan=dict(plan)))
    if prediction is not None:
        session.add(PredictionRecord(run_id=run.id, prediction=dict(prediction)))
    session.flush()
    return run.id


def _put_metrics(session: Session, run_id: int, metrics: Mapping[str, float]) -> None:
    for name, value in metrics.items():
        session.merge(Metric(run_id=run_id, name=name, value=float(value)))
    session.flush()


def record_run(
    store: Store,
    *,
    verb: str,
    deployment: str | None,
    plan_hash: str | None,
    overrides: Iterable[str],
    config: Mapping[str, Any] | None,
    status: str,
    started_at: datetime,
    finished_at: datetime | None,
    plan: Mapping[str, Any] | None = None,
    prediction: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    message: str | None = None,
    output_dir: str | None = None,
) -> int:
    """Record a finished run with its plan, prediction and metrics in ONE transaction; return its id.

    If anything fails (a value that is not JSON-serializable, a metric that is not a number...), nothing
    is written. Naive datetimes are taken as UTC.
    """
    _check_status(status, RUN_STATUSES)
    with store.write() as session:
        run_id = _new_run(
            session,
            verb=verb,
            deployment=deployment,
            plan_hash=plan_hash,
            overrides=overrides,
            config=config,
            status=status,
            started_at=started_at,
            finished_at=finished_at,
            plan=plan,
            prediction=prediction,
            message=message,
            output_dir=output_dir,
        )
        _put_metrics(session, run_id, metrics or {})
    return run_id


def start_run(
    store: Store,
    *,
    verb: str,
    deployment: str | None,
    plan_hash: str | None,
    overrides: Iterable[str],
    config: Mapping[str, Any] | None,
    plan: Mapping[str, Any] | None = None,
    prediction: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
    started_at: datetime | None = None,
) -> int:
    """Record a run in status 'running' (committed at once, so monitors see it); return its id.

    started_at: when the command's work began (default: now). A command that does work before it creates the row
    (composing, compiling, a search's candidates) passes its own start, so the run's duration covers all of it.
    Close it with `finish_run`; if this process dies first, the next `open_store` marks it 'interrupted'.
    """
    with store.write() as session:
        return _new_run(
            session,
            verb=verb,
            deployment=deployment,
            plan_hash=plan_hash,
            overrides=overrides,
            config=config,
            status="running",
            started_at=started_at or _now(),
            finished_at=None,
            plan=plan,
            prediction=prediction,
            message=None,
            output_dir=output_dir,
        )


def _require_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise StoreError(f"run {run_id} not found; `cmtwin runs ls` lists the runs")
    return run


def finish_run(store: Store, run_id: int, status: str, message: str | None = None) -> None:
    """Close a run: set its final status (ok, failed, interrupted, cancelled), finish time and message."""
    _check_status(status, FINAL_STATUSES)
    with store.write() as session:
        run = _require_run(session, run_id)
        run.status = status
        run.finished_at = _now()
        run.message = message


@contextmanager
def run_lifecycle(store: Store, run_id: int):
    """Close a started run however its work ends: `ok` on success, `cancelled` on Ctrl-C (SIGINT),
    `failed` with the reason on an error. Samples committed before the end stay; a SIGKILL leaves the run
    `running`, and the next open of the store marks it `interrupted` (its pid is gone).

        run_id = start_run(store, ...)
        with run_lifecycle(store, run_id):
            ...  # add_samples(...) in batches as the work progresses
    """
    try:
        yield run_id
    except KeyboardInterrupt:
        finish_run(store, run_id, "cancelled", "interrupted by the user (SIGINT)")
        raise
    except BaseException as exc:
        finish_run(store, run_id, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        raise
    else:
        with store.read() as session:
            still_running = _require_run(session, run_id).status == "running"
        if still_running:
            finish_run(store, run_id, "ok")


def set_metrics(store: Store, run_id: int, metrics: Mapping[str, float]) -> None:
    """Insert or replace key metrics of a run (one transaction)."""
    with store.write() as session:
        _require_run(session, run_id)
        _put_metrics(session, run_id, metrics)


def _bulk_insert(store: Store, table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Insert plain tuples in one transaction: COPY on PostgreSQL (psycopg), else the driver's executemany. A
    search writes ~750,000 sample rows; SQLAlchemy Core building a parameter dict per row took half of SQLite's
    6.8 s for them, and psycopg's executemany 27.7 s on a local server."""
    if not rows:
        return
    with store.write() as session:
        conn = session.connection()
        if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
            # COPY streams the rows in one command (executemany: one round trip per row)
            with conn.connection.driver_connection.cursor() as cur:
                with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
            return
        marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
        if marks is None:  # a driver without positional parameters (numeric, named): let Core build it
            conn.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
            return
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([marks] * len(columns))})"
        conn.exec_driver_sql(sql, rows)


def add_samples(store: Store, run_id: int, rows: Iterable[tuple[float, str, float]]) -> int:
    """Append time-series points (t, name, value) to a run in one bulk transaction; return how many."""
    batch = [(run_id, float(t), str(name), float(v)) for t, name, v in rows]
    _bulk_insert(store, Sample.__table__, ("run_id", "t", "name", "value"), batch)
    return len(batch)


def add_timeline(store: Store, run_id: int, events: Iterable[TimelineEvent | tuple]) -> int:
    """Append executor timeline events (TimelineEvent or equal tuples) in one transaction; return how many."""
    batch = []
    for raw in events:
        ev = TimelineEvent(*raw)
        if ev.kind not in TIMELINE_KINDS:
            raise StoreError(f"timeline event {ev.op!r} has kind {ev.kind!r}; use one of {', '.join(TIMELINE_KINDS)}")
        batch.append((run_id, *ev))
    _bulk_insert(store, TimelineEntry.__table__, ("run_id", *TimelineEvent._fields), batch)
    return len(batch)


def add_artifact(store: Store, run_id: int, kind: str, path: str) -> None:
    """Attach a produced file (kind: 'plot', 'trace'...) to a run."""
    with store.write() as session:
        _require_run(session, run_id)
        session.add(Artifact(run_id=run_id, kind=kind, path=str(path)))


def set_prediction(store: Store, run_id: int, prediction: Mapping[str, Any]) -> None:
    """Give a run its prediction (or replace it): for a command that knows it only after the run's rows are
    written (`cmtwin search`'s simulations finish while its candidates are stored)."""
    check_json_finite("prediction", prediction)
    with store.write() as session:
        _require_run(session, run_id)
        session.merge(PredictionRecord(run_id=run_id, prediction=dict(prediction)))


def set_output_dir(store: Store, run_id: int, path: str | os.PathLike | None) -> None:
    """Record (or clear, with None) the folder holding a run's files (plots, traces): `runs.output_dir`."""
    with store.write() as session:
        run = _require_run(session, run_id)
        run.output_dir = None if path is None else str(path)


def _metrics_by_run(session: Session, run_ids: list[int]) -> dict[int, dict[str, float]]:
    found: dict[int, dict[str, float]] = {rid: {} for rid in run_ids}
    if run_ids:
        rows = session.execute(
            select(Metric.run_id, Metric.name, Metric.value).where(Metric.run_id.in_(run_ids)).order_by(Metric.name)
        )
        for run_id, name, value in rows:
            found[run_id][name] = value
    return found


def list_runs(
    store: Store, limit: int = 50, verb: str | None = None, status: str | None = None, sweep: str | None = None
) -> list[RunSummary]:
    """The newest runs first, optionally only one verb, status or sweep, each with its key metrics."""
    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if sweep is not None:
        query = query.where(Run.sweep == sweep)
    if verb is not None:
        query = query.where(Run.verb == verb)
    if status is not None:
        query = query.where(Run.status == status)
    with store.read() as session:
        runs = session.scalars(query).all()
        metrics = _metrics_by_run(session, [r.id for r in runs])
    return [
        RunSummary(
            id=r.id,
            verb=r.verb,
            deployment=r.deployment,
            plan_hash=r.plan_hash,
            status=r.status,
            started_at=r.started_at,
            finished_at=r.finished_at,
            duration_s=_duration(r.started_at, r.finished_at),
            metrics=metrics[r.id],
            sweep=r.sweep,
        )
        for r in runs
    ]


def get_run(store: Store, run_id: int) -> RunDetail:
    """Everything about one run; StoreError if there is no such run."""
    with store.read() as session:
        r = _require_run(session, run_id)
        plan = session.get(PlanRecord, run_id)
        prediction = session.get(PredictionRecord, run_id)
        metrics = _metrics_by_run(session, [run_id])[run_id]
        artifacts = session.execute(
            select(Artifact.kind, Artifact.path).where(Artifact.run_id == run_id).order_by(Artifact.id)
        ).all()
    return RunDetail(
        id=r.id,
        verb=r.verb,
        deployment=r.deployment,
        plan_hash=r.plan_hash,
        overrides=list(r.overrides),
        config=r.config,
        status=r.status,
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration_s=_duration(r.started_at, r.finished_at),
        software_version=r.software_version,
        host=r.host,
        pid=r.pid,
        message=r.message,
        output_dir=r.output_dir,
        plan=plan.plan if plan else None,
        prediction=prediction.prediction if prediction else None,
        metrics=metrics,
        artifacts=tuple(ArtifactRef(kind, path) for kind, path in artifacts),
    )


def get_samples(store: Store, run_id: int, since_id: int = 0) -> list[SamplePoint]:
    """A run's samples with id > since_id, in insertion order (poll with the last id seen)."""
    query = (
        select(Sample.id, Sample.t, Sample.name, Sample.value)
        .where(Sample.run_id == run_id, Sample.id > since_id)
        .order_by(Sample.id)
    )
    with store.read() as session:
        return [SamplePoint(*row) for row in session.execute(query)]


def get_timeline(store: Store, run_id: int) -> list[TimelineEvent]:
    """A run's timeline events ordered by rank, then start time."""
    query = (
        select(
            TimelineEntry.rank,
            TimelineEntry.op,
            TimelineEntry.start_us,
            TimelineEntry.dur_us,
            TimelineEntry.kind,
            TimelineEntry.predicted_us,
        )
        .where(TimelineEntry.run_id == run_id)
        .order_by(TimelineEntry.rank, TimelineEntry.start_us, TimelineEntry.id)
    )
    with store.read() as session:
        return [TimelineEvent(*row) for row in session.execute(query)]
