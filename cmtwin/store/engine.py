"""Opening the run store: URL resolution, engines, SQLite pragmas, schema creation and upgrades.

`open_store` is on the path of every verb, so it stays cheap on an existing database: one query reads the
schema revision, and Alembic is imported only when a fresh database must be stamped or an old one upgraded.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from cmtwin.errors import StoreError
from cmtwin.paths import migrations_dir
from cmtwin.store.direct import HEAD_REVISION, apply_pragmas, pid_alive, resolve_url, strict_json_dumps
from cmtwin.store.models import Base, Run

log = logging.getLogger("cmtwin.store")

_ENGINE_OPTION = "cmtwin_sqlite_begin"
_cache: dict[str, Store] = {}
_cache_lock = threading.Lock()


@dataclass(eq=False)
class Store:
    """An open run store: an Engine and its session factory. Share it; it is cached per URL."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session] = field(repr=False)
    _writer: sessionmaker[Session] = field(repr=False)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading (a deferred transaction, rolled back at the end)."""
        with self.sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one write transaction, committed on success and rolled back on any error.

        On SQLite the transaction takes the write lock up front (BEGIN IMMEDIATE), so concurrent writers
        wait on the busy timeout instead of failing on a stale snapshot.
        """
        with self._writer.begin() as session:
            yield session

    def close(self) -> None:
        """Dispose of the engine's connections and forget this store in the per-URL cache."""
        with _cache_lock:
            if _cache.get(self.url) is self:
                del _cache[self.url]
        self.engine.dispose()


@dataclass(frozen=True)
class UpgradeResult:
    """What `upgrade_store` did: the revision before (None: no schema), the revision after, the backup."""

    from_revision: str | None
    to_revision: str
    backup: Path | None


def normalize_url(url: str) -> URL:
    """Parse a store URL: a relative SQLite path becomes absolute, a bare postgresql:// uses psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(
            f"{url!r} is not a database URL; use e.g. sqlite:///runs.db or postgresql://user@host/db"
        ) from exc
    backend = parsed.get_backend_name()
    driver = parsed.get_driver_name()
    if backend == "sqlite" and driver != "pysqlite":
        raise StoreError(
            f"--db {display_url(parsed)}: the SQLite driver {driver!r} is not supported; "
            "use a plain sqlite:///path/to/runs.db URL"
        )
    if backend == "postgresql" and parsed.drivername not in ("postgresql", "postgresql+psycopg"):
        raise StoreError(
            f"--db {display_url(parsed)}: the PostgreSQL driver {driver!r} is not supported (the run store "
            "uses psycopg 3); use postgresql://user@host/db or postgresql+psycopg://user@host/db"
        )
    if backend == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or path.startswith("file:"):
            raise StoreError(
                f"the run store must be a SQLite file, not {url!r}; use e.g. sqlite:///cmtwin.db"
            )
        return parsed.set(database=str(Path(path).expanduser().absolute()))
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed
    raise StoreError(f"the run store supports SQLite and PostgreSQL, not {backend!r} ({url!r})")


def display_url(url: URL | str) -> str:
    """A URL safe to print (password hidden)."""
    return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path:
    """The file behind a normalized SQLite URL."""
    return Path(url.database or "")


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open (and cache) the run store at `url` (resolved by `resolve_url`), ready for reads and writes.

    A fresh database is created and stamped at head. A SQLite database at an older revision is backed up to
    `<file>.bak-<rev>-<timestamp>` and upgraded; a PostgreSQL one is refused until `cmtwin db upgrade` runs.
    A database newer than this cmtwin, or one with tables but no alembic_version, is refused. With
    `create=False` a missing SQLite file is an error instead of a new store. Runs left 'running' by a
    process that no longer exists on this host are marked 'interrupted'.
    """
    parsed = normalize_url(resolve_url(url))
    key = parsed.render_as_string(hide_password=False)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        engine = _make_engine(parsed, create=create)
        try:
            _ensure_schema(engine, parsed, upgrade_postgresql=False)
            writer_engine = engine.execution_options(**{_ENGINE_OPTION: "BEGIN IMMEDIATE"})
            store = Store(
                url=key,
                engine=engine,
                sessions=sessionmaker(engine, expire_on_commit=False),
                _writer=sessionmaker(writer_engine, expire_on_commit=False),
            )
            _mark_interrupted(store)
        except BaseException:
            engine.dispose()
            raise
        _cache[key] = store
        return store


def close_all_stores() -> None:
    """Dispose of every cached store's engine (before dropping a database, or after a fork)."""
    with _cache_lock:
        stores = list(_cache.values())
        _cache.clear()
    for store in stores:
        store.engine.dispose()


def upgrade_store(url: str | None = None) -> UpgradeResult:
    """Bring the store at `url` to the head revision (`cmtwin db upgrade`), backing up SQLite files first.

    A missing or empty database is created at head. On PostgreSQL a warning reminds to pg_dump first.
    """
    parsed = normalize_url(resolve_url(url))
    key = parsed.render_as_string(hide_password=False)
    with _cache_lock:
        cached = _cache.pop(key, None)
    if cached is not None:
        cached.engine.dispose()
    engine = _make_engine(parsed, create=True)
    try:
        return _ensure_schema(engine, parsed, upgrade_postgresql=True)
    finally:
        engine.dispose()


def current_revision(url: str | None = None) -> tuple[str, str | None]:
    """The schema state of the store at `url`, without changing it: (state, revision).

    state is 'missing' (no SQLite file), 'empty' (no tables), 'unmanaged' (tables, no alembic_version),
    'unstamped' (cmtwin's tables, an empty alembic_version), 'head', 'older' or 'newer'; revision is the stamped one (None when there is none).
    """
    parsed = normalize_url(resolve_url(url))
    if parsed.get_backend_name() == "sqlite" and not sqlite_path(parsed).exists():
        return "missing", None
    engine = _make_engine(parsed, create=False)
    try:
        return _schema_state(engine, parsed)
    finally:
        engine.dispose()


def known_revisions() -> list[str]:
    """The revisions shipped in migrations/versions, oldest first (file names start with the revision id)."""
    versions = migrations_dir() / "versions"
    return sorted(p.name.split("_", 1)[0] for p in versions.glob("[0-9]*_*.py"))


def missing_store_error(path: Path) -> StoreError:
    """The error for a SQLite store file that does not exist (yet)."""
    return StoreError(
        f"there is no run store at {path}; record a run first, e.g. `cmtwin plan +deployment=r1_ep320`, "
        "or point --db / CMTWIN_DB_URL at an existing store"
    )


def _make_engine(url: URL, *, create: bool) -> Engine:
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if not path.exists():
            if not create:
                raise missing_store_error(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the run store {path}: its folder {path.parent} cannot be created "
                    f"({exc.strerror or exc}); point --db / CMTWIN_DB_URL at a writable place, "
                    "e.g. sqlite:///cmtwin.db"
                ) from exc
        engine = create_engine(url, json_serializer=strict_json_dumps)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True, json_serializer=strict_json_dumps)
    except (NoSuchModuleError, ImportError) as exc:  # pragma: no cover - depends on the installed extras
        raise StoreError(
            f"cannot use {display_url(url)}: {exc}; install the PostgreSQL driver: pip install 'cmtwin[postgres]'"
        ) from exc


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself, so DDL is transactional too.
    dbapi_connection.isolation_level = None
    apply_pragmas(dbapi_connection)


def _sqlite_on_begin(connection: Any) -> None:
    connection.exec_driver_sql(connection.get_execution_options().get(_ENGINE_OPTION, "BEGIN"))


def _schema_state(engine: Engine, url: URL) -> tuple[str, str | None]:
    try:
        with engine.connect() as conn:
            try:
                revisions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            except DBAPIError as exc:
                if exc.connection_invalidated or not _is_missing_table(exc):
                    raise
                conn.rollback()
                return ("unmanaged" if inspect(conn).get_table_names() else "empty"), None
            if not revisions:
                tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
                if tables & set(Base.metadata.tables):
                    return "unstamped", None  # the revision row was lost; tables of ours are there
    except DBAPIError as exc:
        raise StoreError(f"cannot open the run store at {display_url(url)}: {exc.orig}") from exc
    if not revisions:
        return "older", None  # stamped, then downgraded to base: no tables of ours
    if len(revisions) > 1:
        raise StoreError(
            f"the database at {display_url(url)} has several schema revisions ({', '.join(revisions)}); "
            "cmtwin uses a single linear history, so this is not a cmtwin store"
        )
    revision = revisions[0]
    if revision == HEAD_REVISION:
        return "head", revision
    return ("older" if revision in known_revisions() else "newer"), revision


def _is_missing_table(exc: DBAPIError) -> bool:
    message = str(exc.orig).lower()
    return "no such table" in message or "does not exist" in message


SCHEMA_LOCK_ID = 0x636D7477  # "cmtw"
"""First key of the PostgreSQL advisory lock taken while a schema is created or upgraded (the second key is
hashtext(current_schema()), so stores in different schemas of one database do not wait on each other)."""


@contextmanager
def _schema_lock(engine: Engine, url: URL) -> Iterator[None]:
    """Serialize schema creation and upgrades between processes.

    PostgreSQL: a session-level advisory lock, held on its own connection while the schema is inspected,
    created and stamped (concurrent first writers of a fresh database otherwise race on CREATE TABLE).
    SQLite: nothing here; `_create_fresh` takes the database's write lock (BEGIN IMMEDIATE) and re-checks.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    try:
        conn = engine.connect()
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK_ID}, hashtext(current_schema()))")
        conn.commit()
    except DBAPIError as exc:
        raise StoreError(f"cannot open the run store at {display_url(url)}: {exc.orig}") from exc
    try:
        yield
    finally:
        try:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_ID}, hashtext(current_schema()))")
            conn.commit()
        finally:
            conn.close()  # a session lock also ends with its connection


def _ensure_schema(engine: Engine, url: URL, *, upgrade_postgresql: bool) -> UpgradeResult:
    state, revision = _schema_state(engine, url)
    if state == "head":
        return UpgradeResult(revision, HEAD_REVISION, None)  # the common case: no lock, one query
    with _schema_lock(engine, url):
        # Another process may have created or upgraded the schema while this one waited for the lock.
        return _ensure_schema_locked(engine, url, *_schema_state(engine, url), upgrade_postgresql=upgrade_postgresql)


def _ensure_schema_locked(
    engine: Engine, url: URL, state: str, revision: str | None, *, upgrade_postgresql: bool
) -> UpgradeResult:
    where = display_url(url)
    if state == "head":
        return UpgradeResult(revision, HEAD_REVISION, None)
    if state == "empty":
        _create_fresh(engine)
        return UpgradeResult(None, HEAD_REVISION, None)
    if state == "unmanaged":
        raise StoreError(
            f"the database at {where} has tables but no alembic_version table, so it is not a cmtwin run store "
            "(or one made by hand); point --db / CMTWIN_DB_URL at a cmtwin store or at an empty database"
        )
    if state == "unstamped":
        raise StoreError(
            f"the database at {where} has cmtwin's tables but its alembic_version table is empty, so its schema "
            "revision is unknown and cmtwin will not guess it; restore the store from a backup (a SQLite store's "
            "<file>.bak-* copies, a pg_dump), or point --db / CMTWIN_DB_URL at another store or an empty database"
        )
    if state == "newer":
        raise StoreError(
            f"the database at {where} is at schema revision {revision}, newer than this cmtwin "
            f"(head {HEAD_REVISION}); upgrade cmtwin: pip install -U cmtwin"
        )
    backup = None
    if url.get_backend_name() == "sqlite":
        backup = _backup_sqlite(sqlite_path(url), revision)
        log.warning("backed up %s to %s before upgrading its schema", sqlite_path(url), backup)
    elif not upgrade_postgresql:
        raise StoreError(
            f"the database at {where} is at schema revision {revision or 'base'}, older than this cmtwin "
            f"(head {HEAD_REVISION}); back it up (pg_dump) and run `cmtwin db upgrade --db {where}`"
        )
    else:
        log.warning("upgrading %s in place; make sure you have a pg_dump backup of it", where)
    _alembic(engine, "upgrade")
    return UpgradeResult(revision, HEAD_REVISION, backup)


def _create_fresh(engine: Engine) -> None:
    # An immediate (SQLite) transaction serializes two processes creating the same fresh store.
    with engine.connect().execution_options(**{_ENGINE_OPTION: "BEGIN IMMEDIATE"}) as conn, conn.begin():
        if inspect(conn).get_table_names():
            return  # another process created it meanwhile
        Base.metadata.create_all(conn)
        _alembic_command(conn, "stamp")


def _alembic(engine: Engine, command_name: str) -> None:
    with engine.begin() as conn:
        _alembic_command(conn, command_name)


def _alembic_command(conn: Any, command_name: str, revision: str = "head") -> None:
    from alembic import command

    getattr(command, command_name)(alembic_config(conn), revision)


def alembic_config(connection: Any = None, url: str | None = None) -> Any:
    """An Alembic Config built in code (no alembic.ini): migrations_dir() and a connection or a URL."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def _backup_sqlite(path: Path, revision: str | None) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.bak-{revision or 'base'}-{stamp}")
    # The backup API copies a consistent image, including pages still in the WAL.
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def _mark_interrupted(store: Store) -> None:
    host = socket.gethostname()
    with store.read() as session:
        stale = session.execute(
            select(Run.id, Run.pid).where(Run.status == "running", Run.host == host)
        ).all()
    dead = [(run_id, pid) for run_id, pid in stale if not pid_alive(pid)]
    if not dead:
        return
    now = datetime.now(timezone.utc)
    with store.write() as session:
        for run_id, pid in dead:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "running")
                .values(
                    status="interrupted",
                    finished_at=now,
                    message=f"process {pid} on {host} ended without finishing the run",
                )
            )
    log.info("marked %d run(s) interrupted: %s", len(dead), ", ".join(str(r) for r, _ in dead))
