"""Fixtures for the run-store tests (a plain module: tests/conftest.py belongs to the whole suite).

`db_url` is parametrized over SQLite (a file in tmp_path) and PostgreSQL at 127.0.0.1:5432 (a database
per test module, a fresh schema per test, selected with search_path). PostgreSQL tests skip with the
reason when the server is not reachable.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from cmtwin.store import close_all_stores, open_store, record_run

PG_HOST = "127.0.0.1"
PG_PORT = 5432


def _pg_connect(dbname: str):
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname=dbname, autocommit=True, connect_timeout=3
    )


@contextmanager
def scratch_pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (skip with the reason when the server is down);
    yields its name."""
    try:
        admin = _pg_connect("postgres")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: skip, and say why
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        close_all_stores()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, dropped afterwards; yields its name."""
    with scratch_pg_database("cmtwin_test") as name:
        yield name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty store URL: a SQLite file, or a fresh schema in the module's PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        dbname = request.getfixturevalue("pg_database")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with _pg_connect(dbname) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{dbname}?options=-csearch_path%3D{schema}"
    close_all_stores()


T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def add_example_runs(url: str) -> list[int]:
    """Record two finished plan runs that differ in one config key and in their metrics."""
    store = open_store(url)
    ids = []
    for k, (batch, tps) in enumerate(((96, 1943.0), (128, 2100.5))):
        ids.append(
            record_run(
                store,
                verb="plan",
                deployment="r1_ep320",
                plan_hash=f"hash{k}",
                overrides=["+deployment=r1_ep320", f"deployment.decode.batch={batch}"],
                config={"deployment": {"decode": {"batch": batch, "ep": 320}}, "model": {"name": "r1"}},
                status="ok",
                started_at=T0 + timedelta(minutes=k),
                finished_at=T0 + timedelta(minutes=k, seconds=2.5),
                plan={"roles": {"decode": 160}},
                prediction={"tpot_ms": 50.0},
                metrics={"decode.tokens_per_s_per_device": tps, "decode.tpot_ms": 50.0},
            )
        )
    return ids
