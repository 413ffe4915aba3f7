"""The run store on SQLite and PostgreSQL: schema lifecycle, repository round trips, CLI verbs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, delete, func, inspect, select, text, update
from sqlalchemy.exc import StatementError
from sqlalchemy.pool import NullPool

from cmtwin.errors import StoreError
from cmtwin.store import (
    ArtifactRef,
    TimelineEvent,
    add_artifact,
    add_samples,
    add_timeline,
    close_all_stores,
    finish_run,
    get_run,
    get_samples,
    get_timeline,
    list_runs,
    open_store,
    record_run,
    resolve_url,
    set_metrics,
    start_run,
    upgrade_store,
)
from cmtwin.store.engine import HEAD_REVISION, alembic_config, current_revision, known_revisions
from cmtwin.store.models import Base, Metric, PlanRecord, PredictionRecord, Run, Sample, TimelineEntry
from store_fixtures import T0, add_example_runs, db_url, pg_database  # noqa: F401 - fixtures

TABLES = {"runs", "plans", "predictions", "metrics", "samples", "artifacts", "timeline"}


def _engine(url: str):
    return create_engine(url, poolclass=NullPool)


def _count_runs(url: str) -> int:
    engine = _engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(Run)).scalar_one()
    engine.dispose()
    return n


# --- URL resolution -------------------------------------------------------------------------------


def test_resolve_url_precedence(monkeypatch):
    monkeypatch.delenv("CMTWIN_DB_URL", raising=False)
    assert resolve_url() == "sqlite:///cmtwin.db"
    monkeypatch.setenv("CMTWIN_DB_URL", "sqlite:///env.db")
    assert resolve_url() == "sqlite:///env.db"
    assert resolve_url("sqlite:///explicit.db") == "sqlite:///explicit.db"


def test_unsupported_urls_are_refused():
    with pytest.raises(StoreError, match="SQLite and PostgreSQL"):
        open_store("mysql://x@localhost/db")
    with pytest.raises(StoreError, match="SQLite file"):
        open_store("sqlite://")


def test_relative_sqlite_path_is_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///cmtwin.db")
    assert (tmp_path / "cmtwin.db").exists()
    assert store is open_store(f"sqlite:///{tmp_path / 'cmtwin.db'}")  # cached per (absolute) URL
    store.close()


# --- schema lifecycle ------------------------------------------------------------------------------


def test_head_revision_matches_the_migrations():
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == [HEAD_REVISION]
    ordered = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert known_revisions() == ordered  # file names start with the revision id, oldest first


def test_fresh_store_is_created_and_stamped(db_url):
    assert current_revision(db_url)[0] in ("missing", "empty")
    store = open_store(db_url)
    assert TABLES <= set(inspect(store.engine).get_table_names())
    assert current_revision(db_url) == ("head", HEAD_REVISION)
    assert open_store(db_url) is store  # cached per URL


def test_sqlite_pragmas_are_set(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}")
    with store.engine.connect() as conn:
        pragma = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                  ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")}
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000, "synchronous": 1}


def test_every_revision_upgrades_and_downgrades(db_url):
    """Walk the migrations one step at a time up to head (schema == models), then back down to base."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = _engine(db_url)
    for revision in known_revisions():
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    for _ in known_revisions():
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "-1")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()
    assert current_revision(db_url) == ("head", HEAD_REVISION)


def test_newer_revision_is_refused(db_url):
    open_store(db_url).close()
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError) as err:
        open_store(db_url)
    message = str(err.value)
    assert "schema revision 9999, newer than this cmtwin" in message
    assert f"(head {HEAD_REVISION})" in message and "pip install -U cmtwin" in message
    assert current_revision(db_url) == ("newer", "9999")


def test_tables_without_alembic_version_are_refused(db_url):
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(StoreError, match="no alembic_version table"):
        open_store(db_url)


def _downgrade_to_base(url: str) -> None:
    from alembic import command

    open_store(url).close()
    engine = _engine(url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    engine.dispose()


def test_old_sqlite_store_is_backed_up_and_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _downgrade_to_base(url)
    assert current_revision(url) == ("older", None)
    store = open_store(url)
    backups = list(tmp_path.glob("old.db.bak-base-*"))
    assert len(backups) == 1 and backups[0].stat().st_size > 0
    assert current_revision(url) == ("head", HEAD_REVISION)
    assert list_runs(store) == []


@pytest.mark.postgres
def test_old_postgresql_store_needs_db_upgrade(pg_database):
    import uuid

    from store_fixtures import _pg_connect

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with _pg_connect(pg_database) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_database}?options=-csearch_path%3D{schema}"
    _downgrade_to_base(url)
    with pytest.raises(StoreError, match=r"older than this cmtwin .*pg_dump.*cmtwin db upgrade"):
        open_store(url)
    result = upgrade_store(url)
    assert (result.from_revision, result.to_revision, result.backup) == (None, HEAD_REVISION, None)
    assert list_runs(open_store(url)) == []
    close_all_stores()


def test_missing_sqlite_store_without_create(tmp_path):
    path = tmp_path / "none.db"
    with pytest.raises(StoreError, match=r"no run store at .*none\.db.*cmtwin plan \+deployment=r1_ep320"):
        open_store(f"sqlite:///{path}", create=False)
    assert not path.exists()


# --- repository round trips ------------------------------------------------------------------------


def test_record_run_round_trip(db_url):
    store = open_store(db_url)
    run_id = record_run(
        store,
        verb="plan",
        deployment="r1_ep320",
        plan_hash="abc123",
        overrides=["+deployment=r1_ep320", "model.layers=61"],
        config={"model": {"layers": 61, "name": "r1"}, "tags": ["a", "b"]},
        status="ok",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=3),
        plan={"roles": {"prefill": 32, "decode": 160}},
        prediction={"tpot_ms": 49.5, "breakdown": [{"op": "attn", "us": 120.0}]},
        metrics={"decode.tokens_per_s_per_device": 1943.0},
        message="done",
    )
    run = get_run(store, run_id)
    assert (run.verb, run.deployment, run.plan_hash, run.status, run.message) == (
        "plan", "r1_ep320", "abc123", "ok", "done"
    )
    assert run.overrides == ["+deployment=r1_ep320", "model.layers=61"]
    assert run.config == {"model": {"layers": 61, "name": "r1"}, "tags": ["a", "b"]}
    assert run.plan == {"roles": {"prefill": 32, "decode": 160}}
    assert run.prediction["breakdown"][0] == {"op": "attn", "us": 120.0}
    assert run.metrics == {"decode.tokens_per_s_per_device": 1943.0}
    assert run.started_at == T0 and run.started_at.tzinfo is not None
    assert run.duration_s == pytest.approx(3.0)
    assert run.artifacts == ()


def test_naive_datetimes_are_utc(db_url):
    store = open_store(db_url)
    run_id = record_run(store, verb="plan", deployment=None, plan_hash=None, overrides=[], config=None,
                        status="failed", started_at=datetime(2025, 1, 1, 8), finished_at=None)
    run = get_run(store, run_id)
    assert run.started_at == datetime(2025, 1, 1, 8, tzinfo=timezone.utc)
    assert run.finished_at is None and run.duration_s is None and run.plan is None


def test_live_run_round_trip(db_url):
    store = open_store(db_url)
    run_id = start_run(store, verb="simulate", deployment="r1_ep320", plan_hash="h", overrides=["x=1"],
                       config={"workload": {"rate": 2.0}}, plan={"p": 1})
    assert get_run(store, run_id).status == "running"
    assert add_samples(store, run_id, [(0.1 * i, "queue_len", float(i)) for i in range(500)]) == 500
    assert add_samples(store, run_id, []) == 0
    first = get_samples(store, run_id)
    assert len(first) == 500 and first[3].t == pytest.approx(0.3) and first[3].name == "queue_len"
    add_samples(store, run_id, [(99.0, "ttft_ms", 12.5)])
    newer = get_samples(store, run_id, since_id=first[-1].id)
    assert [(p.t, p.name, p.value) for p in newer] == [(99.0, "ttft_ms", 12.5)]

    events = [TimelineEvent(1, "dispatch", 10.0, 5.0, "comm", 4.0), (0, "attn", 0.0, 20.0, "compute"),
              (0, "moe", 20.0, 30.0, "compute", None)]
    assert add_timeline(store, run_id, events) == 3
    assert get_timeline(store, run_id) == [
        TimelineEvent(0, "attn", 0.0, 20.0, "compute", None),
        TimelineEvent(0, "moe", 20.0, 30.0, "compute", None),
        TimelineEvent(1, "dispatch", 10.0, 5.0, "comm", 4.0),
    ]
    with pytest.raises(StoreError, match="kind 'gpu'"):
        add_timeline(store, run_id, [(0, "x", 0.0, 1.0, "gpu")])

    add_artifact(store, run_id, "plot", "/tmp/ttft.png")
    set_metrics(store, run_id, {"ttft_p99_ms": 800.0, "tpot_p99_ms": 50.0})
    set_metrics(store, run_id, {"ttft_p99_ms": 750.0})
    finish_run(store, run_id, "ok", message="SLO met")
    run = get_run(store, run_id)
    assert run.status == "ok" and run.message == "SLO met" and run.finished_at >= run.started_at
    assert run.metrics == {"tpot_p99_ms": 50.0, "ttft_p99_ms": 750.0}
    assert run.artifacts == (ArtifactRef("plot", "/tmp/ttft.png"),)

    with pytest.raises(StoreError, match="'running' is not one of ok, failed"):
        finish_run(store, run_id, "running")
    with pytest.raises(StoreError, match="run 424242 not found; `cmtwin runs ls` lists the runs"):
        get_run(store, 424242)
    with pytest.raises(StoreError, match="run 424242 not found"):
        set_metrics(store, 424242, {"x": 1.0})


def test_list_runs_filters_and_metrics(db_url):
    ids = add_example_runs(db_url)
    store = open_store(db_url)
    start_run(store, verb="simulate", deployment=None, plan_hash=None, overrides=[], config=None)
    runs = list_runs(store)
    assert [r.verb for r in runs] == ["simulate", "plan", "plan"]  # newest first
    assert runs[1].id == ids[1] and runs[1].metrics["decode.tokens_per_s_per_device"] == 2100.5
    assert runs[1].duration_s == pytest.approx(2.5) and runs[0].duration_s is None
    assert [r.id for r in list_runs(store, verb="plan", limit=1)] == [ids[1]]
    assert [r.verb for r in list_runs(store, status="running")] == ["simulate"]


def test_deleting_a_run_cascades(db_url):
    ids = add_example_runs(db_url)
    store = open_store(db_url)
    add_samples(store, ids[0], [(0.0, "x", 1.0)])
    with store.write() as session:
        session.execute(delete(Run).where(Run.id == ids[0]))
    with store.read() as session:
        for model in (PlanRecord, PredictionRecord, Metric, Sample, TimelineEntry):
            assert session.scalar(select(func.count()).select_from(model).where(model.run_id == ids[0])) == 0


@pytest.mark.parametrize("bad", ["metric", "prediction"])
def test_record_run_is_atomic(db_url, bad):
    store = open_store(db_url)
    kwargs = dict(verb="plan", deployment="d", plan_hash="h", overrides=[], config={"a": 1}, status="ok",
                  started_at=T0, finished_at=T0, plan={"p": 1}, prediction={"ok": 1.0}, metrics={"m": 1.0})
    if bad == "metric":
        kwargs["metrics"] = {"good": 1.0, "bad": object()}
    else:
        kwargs["prediction"] = {"not_json": object()}
    with pytest.raises((TypeError, StatementError)):
        record_run(store, **kwargs)
    assert _count_runs(db_url) == 0
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(PlanRecord)) == 0
    assert record_run(store, **{**kwargs, "metrics": {"m": 1.0}, "prediction": None}) >= 1


def test_runs_of_dead_processes_are_marked_interrupted(db_url):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = open_store(db_url)
    orphan = start_run(store, verb="simulate", deployment=None, plan_hash=None, overrides=[], config=None)
    alive = start_run(store, verb="simulate", deployment=None, plan_hash=None, overrides=[], config=None)
    with store.write() as session:
        session.execute(update(Run).where(Run.id == orphan).values(pid=dead.pid))
    store.close()
    store = open_store(db_url)
    run = get_run(store, orphan)
    assert run.status == "interrupted" and str(dead.pid) in run.message and run.finished_at is not None
    assert get_run(store, alive).status == "running"  # this process is alive


# --- CLI verbs --------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    """Run `cmtwin ...` in-process (the whole CLI)."""
    import cmtwin.cli.main as cli_main

    return cli_main.main


def test_cli_runs_ls_show_diff(db_url, cli, capsys):
    a, b = add_example_runs(db_url)
    assert cli(["runs", "ls", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "r1_ep320" in out and "ok" in out and "2.50 s" in out
    lines = out.splitlines()  # one line per run, newest first, with its key figures (the TUI's)
    assert lines[0].split()[:5] == ["id", "verb", "deployment", "status", "tok/s/dev"]
    assert lines[2].split()[:7] == [str(b), "plan", "r1_ep320", "✓", "ok", "2100", "50"]
    assert lines[3].split()[:6] == [str(a), "plan", "r1_ep320", "✓", "ok", "1943"]
    assert "decode.tokens_per_s_per_device" not in out and "every metric of a run: `cmtwin runs show ID`" in out

    assert cli(["runs", "ls", "--db", db_url, "--format", "json", "--limit", "1"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in listed] == [b] and listed[0]["metrics"]["decode.tokens_per_s_per_device"] == 2100.5

    assert cli(["runs", "show", str(a), "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "hash0" in out and "deployment.decode.batch=96" in out and "decode.tokens_per_s_per_device" in out
    assert cli(["runs", "show", "last", "--db", db_url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"] == {"roles": {"decode": 160}}

    assert cli(["runs", "diff", str(a), str(b), "--db", db_url, "--format", "json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    keys = {row["key"]: (row["a"], row["b"]) for row in diff["config"]}
    assert keys["config.deployment.decode.batch"] == (96, 128) and "config.deployment.decode.ep" not in keys
    assert "plan_hash" in keys
    metric = {m["name"]: m for m in diff["metrics"]}
    assert set(metric) == {"decode.tokens_per_s_per_device"}
    assert metric["decode.tokens_per_s_per_device"]["delta"] == pytest.approx(157.5)
    assert cli(["runs", "diff", str(a), str(b), "--db", db_url]) == 0
    assert "config.deployment.decode.batch" in capsys.readouterr().out


def test_cli_runs_ls_fits_a_narrow_terminal(db_url, cli, capsys, monkeypatch):
    add_example_runs(db_url)
    monkeypatch.setenv("COLUMNS", "56")
    assert cli(["runs", "ls", "--db", db_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines[:4])) <= 56  # the start and duration left out, not the figures folded
    assert lines[0].split() == ["id", "verb", "deployment", "status", "tok/s/dev", "TPOT", "ms"]


def test_cli_errors_exit_2(tmp_path, cli, capsys):
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert cli(["runs", "ls", "--db", missing]) == 2
    assert "cmtwin plan +deployment=r1_ep320" in capsys.readouterr().err
    assert not (tmp_path / "nothing.db").exists()
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    add_example_runs(url)
    assert cli(["runs", "show", "99", "--db", url]) == 2
    assert "run 99 not found" in capsys.readouterr().err
    assert cli(["runs", "show", "first", "--db", url]) == 2
    assert "RUN must be a run id or 'last'" in capsys.readouterr().err


def test_cli_query_formats(tmp_path, cli, capsys):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    add_example_runs(url)
    sql = "SELECT run_id, name, value FROM metrics WHERE name LIKE 'decode.tokens%' ORDER BY run_id"
    assert cli(["query", sql, "--db", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["value"] for r in rows] == [1943.0, 2100.5]
    assert cli(["query", sql, "--db", url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "run_id,name,value", "1,decode.tokens_per_s_per_device,1943.0", "2,decode.tokens_per_s_per_device,2100.5",
    ]
    assert cli(["query", sql, "--db", url]) == 0
    assert "2100.5" in capsys.readouterr().out
    assert cli(["query", "SELECT id FROM runs", "--db", url, "--max-rows", "1", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["id", "1"] and "--max-rows" in captured.err
    assert cli(["query", "DELETE FROM runs", "--db", url]) == 2
    assert "refused DELETE" in capsys.readouterr().err
    assert cli(["query", "SELECT * FROM nope", "--db", url]) == 2
    assert "no such table: nope" in capsys.readouterr().err


def test_cli_db_current_and_upgrade(tmp_path, cli, capsys):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert cli(["db", "current", "--db", url]) == 0
    assert "no database yet" in capsys.readouterr().out
    _downgrade_to_base(url)
    assert cli(["db", "current", "--db", url]) == 0
    assert "cmtwin db upgrade" in capsys.readouterr().out
    assert cli(["db", "upgrade", "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"from schema revision none to {HEAD_REVISION}" in out and "backup: " in out
    assert cli(["db", "upgrade", "--db", url]) == 0
    assert "already at schema revision" in capsys.readouterr().out
    assert cli(["db", "current", "--db", url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_runs_show_writes_large_figures_whole():
    from cmtwin.cli.store_cmds import _figure

    assert _figure(1_191_653_586_432.0) == "1,191,653,586,432"  # bytes: not 1.19165e+12
    assert _figure(56_331.0) == "56,331" and _figure(123_456.7) == "123,457"
    assert _figure(2100.5) == "2100.5" and _figure(0.0902) == "0.0902" and _figure(12_345.6) == "12345.6"
