"""Recording a finished run through sqlite3 alone (cmtwin/store/direct.py): the rows are exactly those that
repo.record_run writes, SQLAlchemy is not imported on that path, and every case it does not cover goes through
open_store as before."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from cmtwin.errors import StoreError
from cmtwin.store import direct
from cmtwin.store.direct import record_finished_run
from cmtwin.store.engine import close_all_stores, normalize_url, open_store
from cmtwin.store.repo import get_run, record_run

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
RUN = dict(
    verb="plan", deployment="r1_ep320", plan_hash="abc123", overrides=["+deployment=r1_ep320", "decode.ep=32"],
    config={"decode": {"ep": 32, "ratio": 0.5, "none": None, "list": [1, 2.5, "x"]}, "name": "CloudMatrix™ §3"},
    status="ok", started_at=T0, finished_at=T0 + timedelta(seconds=1.5), plan={"dies": [{"id": "n00.npu0.d0"}]},
    prediction={"decode": {"tpot_ms": 50.0}, "bottleneck": None}, metrics={"decode.tpot_ms": 50.0, "n": 3},
)


def _rows(path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(path)) as db:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("runs", "plans", "predictions", "metrics")}


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """Two fresh stores at head (created and stamped by open_store), and no SQLAlchemy path taken unnoticed."""
    monkeypatch.setenv("CMTWIN_SWEEP", "sweep-1")
    paths = [tmp_path / "direct.db", tmp_path / "orm.db"]
    for p in paths:
        open_store(f"sqlite:///{p}")
    close_all_stores()
    yield paths
    close_all_stores()


def test_the_rows_are_exactly_those_record_run_writes(stores, monkeypatch):
    direct_db, orm_db = stores
    monkeypatch.setattr("cmtwin.store.engine.open_store", lambda url: pytest.fail("took the SQLAlchemy path"))
    assert record_finished_run(f"sqlite:///{direct_db}", **RUN) == 1
    monkeypatch.undo()
    monkeypatch.setenv("CMTWIN_SWEEP", "sweep-1")
    assert record_run(open_store(f"sqlite:///{orm_db}"), **RUN) == 1
    assert _rows(direct_db) == _rows(orm_db)
    read = get_run(open_store(f"sqlite:///{direct_db}"), 1)
    assert (read.config, read.started_at, read.metrics) == (RUN["config"], T0, {"decode.tpot_ms": 50.0, "n": 3.0})


def test_plan_records_without_importing_sqlalchemy(tmp_path):
    code = ("import sys; from cmtwin.cli.main import main; "
            "rc = main(['plan', '+deployment=r1_ep320', '--format', 'json']); "
            "print(rc, 'sqlalchemy' in sys.modules, file=sys.stderr)")

    def plan() -> str:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in __import__("os").environ.items() if k != "CMTWIN_DB_URL"})
        assert r.returncode == 0, r.stderr
        return r.stderr.strip().splitlines()[-1]

    assert plan() == "0 True"  # no store yet: open_store creates and stamps it
    assert plan() == "0 False"  # a store at head: sqlite3 alone
    with closing(sqlite3.connect(tmp_path / "cmtwin.db")) as db:
        assert db.execute("SELECT id, verb, status FROM runs").fetchall() == [(1, "plan", "ok"), (2, "plan", "ok")]
        assert db.execute("SELECT count(*) FROM plans").fetchone() == (2,)


def test_a_run_left_running_by_a_dead_process_goes_through_open_store(stores):
    path = stores[0]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO runs (verb, overrides, status, started_at, software_version, host, pid) VALUES "
                   "('simulate', '[]', 'running', '2026-01-01 00:00:00.000000', '0', ?, 999999999)",
                   (__import__("socket").gethostname(),))
    assert record_finished_run(f"sqlite:///{path}", **RUN) == 2
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT status FROM runs ORDER BY id").fetchall() == [("interrupted",), ("ok",)]


def test_another_revision_goes_through_open_store(stores, monkeypatch):
    path = stores[0]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="newer than this cmtwin"):
        record_finished_run(f"sqlite:///{path}", **RUN)


@pytest.mark.parametrize("bad", [dict(status="bogus"), dict(plan_hash=None)])
def test_what_sqlite_refuses_is_reported_by_record_run(stores, bad):
    with pytest.raises(StoreError):
        record_finished_run(f"sqlite:///{stores[0]}", **{**RUN, **bad})
    assert _rows(stores[0])["runs"] == []


def test_non_finite_values_are_refused_and_nothing_is_written(stores):
    with pytest.raises(StoreError, match=r"prediction key decode.tpot_ms is inf"):
        record_finished_run(f"sqlite:///{stores[0]}", **{**RUN, "prediction": {"decode": {"tpot_ms": float("inf")}}})
    assert _rows(stores[0])["runs"] == []


@pytest.mark.parametrize("url", ["sqlite:///runs.db", "sqlite:///sub dir/a@b.db", "sqlite:////tmp/x.db",
                                 "sqlite:///~/x.db"])
def test_the_sqlite_file_is_the_one_open_store_opens(url):
    assert direct.sqlite_file(url) == __import__("pathlib").Path(normalize_url(url).database)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///a.db?mode=ro", "sqlite:///a%20b.db",
                                 "sqlite+pysqlite:///a.db", "postgresql://u@h/db"])
def test_other_urls_are_left_to_open_store(url):
    assert direct.sqlite_file(url) is None
