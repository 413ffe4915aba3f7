"""Recording a finished run through Python's sqlite3 driver, without importing SQLAlchemy.

Importing SQLAlchemy takes longer than everything else `cmtwin plan` does once its config and fabric are
cached (issue 21: the verb must start and finish in 0.5 s). So `record_finished_run` writes the run's rows with
sqlite3 in the common case: a SQLite store file that exists, is at the head revision and holds no run left
'running' by a process of this host that has ended. It writes exactly the rows `repo.record_run` writes
(tests/test_store_direct.py compares them column by column), in one BEGIN IMMEDIATE transaction, on a
connection set up as `engine._sqlite_on_connect` sets up SQLAlchemy's.

In every other case (no file yet, another revision, PostgreSQL, runs to mark interrupted, a URL with options,
any SQLite error, which rolls back what was begun) it goes through `engine.open_store` and `repo.record_run`,
which create, upgrade, refuse or report exactly as before. This module imports nothing of SQLAlchemy; the
pieces the two paths share (the head revision, strict JSON, the finite check, the liveness test) live here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cmtwin import __version__
from cmtwin.errors import StoreError

HEAD_REVISION = "0002"
"""The newest Alembic revision this cmtwin knows (tests check it against migrations/versions)."""

DEFAULT_URL = "sqlite:///cmtwin.db"
"""The store used when neither --db nor CMTWIN_DB_URL names one: cmtwin.db in the current directory."""

MAX_COUNT = 2**31 - 1
"""The largest run id (runs.id is a 32-bit integer on PostgreSQL), the largest --limit, --max-rows and --max-bytes."""
SWEEP_ENV = "CMTWIN_SWEEP"  # set by `cmtwin ... -m`: the sweep every run of one multirun records

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a store connection waits for another's lock (SQLite's busy timeout, and the journal-mode switch)."""
SQLITE_PRAGMAS = (f"busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000:.0f}", "journal_mode=WAL", "foreign_keys=ON",
                  "synchronous=NORMAL")
"""Set on every SQLite connection of the store, in this order (busy_timeout first), by `apply_pragmas`."""


def apply_pragmas(db: sqlite3.Connection) -> None:
    """SQLITE_PRAGMAS on a new connection. Switching a fresh file to WAL takes an exclusive lock, and SQLite answers
    "database is locked" at once, without its busy handler, while another connection holds one (concurrent first
    opens of a new store: 1 round in 60 of 8 processes under load here); it is retried for the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause = 0.005
    for pragma in SQLITE_PRAGMAS:
        while True:
            try:
                db.execute(f"PRAGMA {pragma}")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 0.2)


def resolve_url(explicit: str | None = None) -> str:
    """The store URL: `explicit` (from --db) > $CMTWIN_DB_URL > sqlite:///cmtwin.db in the current directory."""
    return explicit or os.environ.get("CMTWIN_DB_URL") or DEFAULT_URL


def strict_json_dumps(value: Any) -> str:
    """The JSON columns' serializer: standard JSON only (inf/nan raise ValueError instead of writing the
    non-standard `Infinity`/`NaN`); `check_json_finite` names the offending key before it gets here."""
    return json.dumps(value, allow_nan=False)


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The dotted path and value of the first non-finite float inside `value` (dicts, lists), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def check_json_finite(what: str, value: Any) -> None:
    """Refuse (StoreError, exit 2) a value holding inf or nan before it reaches a JSON column: JSON has no
    such numbers, and `Infinity` in runs.config breaks json_extract and every JSON reader of the store."""
    found = _non_finite(value, "")
    if found is not None:
        key, number = found
        raise StoreError(
            f"cannot record the run: {what} key {key or '(top level)'} is {number!r}, not a finite number, and the "
            "run store keeps strict JSON (no Infinity or NaN); nothing was written.",
            key=key or what,
            fix=f"give {key or what} a finite value (e.g. {key or what}=50), or leave it out to use the default",
        )


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sqlite_file(url: str) -> Path | None:
    """The file of a plain `sqlite:///path` URL, made absolute as `engine.normalize_url` makes it; None for any
    other URL (PostgreSQL, a driver name, query options, percent-escapes, an in-memory or `file:` database)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    path = url[len(prefix):]
    if not path or path == ":memory:" or path.startswith("file:") or any(c in path for c in "?%#"):
        return None
    return Path(path).expanduser().absolute()


def _utc_text(value: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy's SQLite DATETIME stores a `models.UTCDateTime`: naive UTC wall time, with
    microseconds."""
    if value is None:
        return None
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _record_sqlite(path: Path, fields: dict[str, Any]) -> int | None:
    """Insert the run and its rows into the store at `path`; None (nothing written) where this path does not
    apply or SQLite reports any error."""
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None,
                             timeout=SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return None
    with closing(db):
        try:
            apply_pragmas(db)
            if [r for (r,) in db.execute("SELECT version_num FROM alembic_version")] != [HEAD_REVISION]:
                return None
            host = socket.gethostname()
            stale = db.execute("SELECT pid FROM runs WHERE status = 'running' AND host = ?", (host,))
            if not all(pid_alive(pid) for (pid,) in stale):
                return None  # open_store marks them interrupted first
            db.execute("BEGIN IMMEDIATE")
            try:
                run_id = db.execute(
                    "INSERT INTO runs (verb, deployment, plan_hash, overrides, config, status, started_at, finished_at, "
                    "software_version, host, pid, message, output_dir, sweep) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (fields["verb"], fields["deployment"], fields["plan_hash"], strict_json_dumps(fields["overrides"]),
                     strict_json_dumps(fields["config"]), fields["status"], _utc_text(fields["started_at"]),
                     _utc_text(fields["finished_at"]), __version__, host, os.getpid(), fields["message"],
                     fields["output_dir"], os.environ.get(SWEEP_ENV) or None),
                ).lastrowid
                if fields["plan"] is not None:
                    db.execute("INSERT INTO plans (run_id, plan_hash, plan) VALUES (?, ?, ?)",
                               (run_id, fields["plan_hash"], strict_json_dumps(fields["plan"])))
                if fields["prediction"] is not None:
                    db.execute("INSERT INTO predictions (run_id, prediction) VALUES (?, ?)",
                               (run_id, strict_json_dumps(fields["prediction"])))
                db.executemany("INSERT INTO metrics (run_id, name, value) VALUES (?, ?, ?)",
                               [(run_id, name, float(value)) for name, value in fields["metrics"].items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, TypeError, ValueError):
            return None  # the full path writes it, or says what is wrong
    return run_id


def record_finished_run(
    url: str | None,
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
    """`repo.record_run` on the store at `url` (resolved by `resolve_url`), which is opened with SQLAlchemy only
    where sqlite3 alone cannot write the run (see the module doc). Returns the run's id."""
    for what, value in (("config", config), ("plan", plan), ("prediction", prediction)):
        check_json_finite(what, value)
    fields = dict(verb=verb, deployment=deployment, plan_hash=plan_hash, overrides=list(overrides),
                  config=dict(config) if config is not None else None, status=status, started_at=started_at,
                  finished_at=finished_at, plan=dict(plan) if plan is not None else None,
                  prediction=dict(prediction) if prediction is not None else None, metrics=dict(metrics or {}),
                  message=message, output_dir=output_dir)
    url = resolve_url(url)
    path = sqlite_file(url)
    if path is not None and path.is_file():
        run_id = _record_sqlite(path, fields)
        if run_id is not None:
            return run_id
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import record_run

    return record_run(open_store(url), **fields)
