"""The run store under hostile conditions (issue 20): a fresh PostgreSQL database under concurrent first
writers, non-finite numbers, unbounded query results, bad store URLs and damaged stores, and the
PostgreSQL role `query` runs as. Every bad input exits 2 with the value and the fix, never 1."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

from cmtwin.cli.main import main
from cmtwin.errors import StoreError
from cmtwin.store import close_all_stores, list_runs, open_store, record_run
from tests.store_fixtures import PG_HOST, PG_PORT, _pg_connect, db_url, pg_database  # noqa: F401 - fixtures

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _cmtwin() -> list[str]:
    path = shutil.which("cmtwin")
    return [path] if path else [sys.executable, "-m", "cmtwin"]


@pytest.fixture
def fresh_pg_database():
    """A brand-new, empty PostgreSQL database (no schema yet); yields its plain postgresql:// URL."""
    try:
        admin = _pg_connect("postgres")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: skip, and say why
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    name = f"cmtwin_fresh_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        close_all_stores()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# --- 1. concurrent first use of a fresh store -------------------------------------------------------------


@pytest.mark.postgres
def test_twelve_plans_on_a_fresh_postgresql_database_all_land(fresh_pg_database, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CMTWIN_DB_URL"}
    procs = [
        subprocess.Popen(
            [*_cmtwin(), "plan", "+deployment=r1_ep320", "--db", fresh_pg_database],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(12)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 12, "\n".join(e for e in errors if e)
    runs = list_runs(open_store(fresh_pg_database, create=False), limit=100)
    assert len(runs) == 12 and {r.status for r in runs} == {"ok"}


def _opener(url: str, q) -> None:
    try:
        from cmtwin.store import open_store, record_run

        record_run(open_store(url), verb="plan", deployment="w", plan_hash="h", overrides=[], config={},
                   status="ok", started_at=NOW, finished_at=NOW)
        q.put("ok")
    except Exception as exc:  # noqa: BLE001 - report to the parent
        q.put(repr(exc))


def test_concurrent_first_opens_create_the_schema_once(db_url):  # noqa: F811
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_opener, args=(db_url, q)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert sorted(q.get(timeout=5) for _ in procs) == ["ok"] * 8
    assert len(list_runs(open_store(db_url), limit=100)) == 8


# --- 4. bad store URLs and damaged stores: exit 2, not "a bug in cmtwin" -------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite:////proc/nope/x.db", "folder /proc/nope cannot be created"),
        ("postgresql+asyncpg://postgres@127.0.0.1/x", "the PostgreSQL driver 'asyncpg' is not supported"),
        ("sqlite+aiosqlite:///x.db", "the SQLite driver 'aiosqlite' is not supported"),
    ],
)
def test_bad_store_urls_exit_2(url, fragment, workdir, capsys):
    assert main(["plan", "+deployment=r1_ep320", "--db", url]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "internal error" not in err
    assert main(["db", "upgrade", "--db", url]) == 2
    assert fragment in capsys.readouterr().err


def test_empty_alembic_version_with_tables_is_refused_with_the_fix(tmp_path, capsys):
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    open_store(url)
    close_all_stores()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM alembic_version")
    with pytest.raises(StoreError, match="alembic_version table is empty") as err:
        open_store(url)
    assert "restore the store from a backup" in str(err.value)
    for argv in (["runs", "ls"], ["db", "upgrade"]):
        assert main([*argv, "--db", url]) == 2
        assert "alembic_version table is empty" in capsys.readouterr().err
    assert main(["db", "current", "--db", url]) == 0
    assert "restore it from a backup" in capsys.readouterr().out


# --- 2. strict JSON and finite, bounded CLI numbers ---------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", ["config", "plan", "prediction"])
def test_non_finite_json_is_refused_naming_the_key_and_nothing_is_written(db_url, bad, where):  # noqa: F811
    store = open_store(db_url)
    value = {"slo": {"tpot_ms": bad, "ttft_ms": 1.0}, "roles": [1.0, 2.0]}
    kwargs = {"config": {}, "plan": None, "prediction": None, where: value}
    with pytest.raises(StoreError) as err:
        record_run(store, verb="plan", deployment="r1_ep320", plan_hash="h", overrides=[], status="ok",
                   started_at=NOW, finished_at=NOW, metrics={"x": 1.0}, **kwargs)
    message = str(err.value)
    assert f"{where} key slo.tpot_ms is {bad!r}" in message and "Fix: give slo.tpot_ms a finite value" in message
    assert err.value.exit_code == 2 and err.value.key == "slo.tpot_ms"
    assert list_runs(store) == []


def test_the_json_columns_serializer_is_strict():
    from cmtwin.store.engine import strict_json_dumps

    assert strict_json_dumps({"a": [1.5]}) == '{"a": [1.5]}'
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            strict_json_dumps({"a": bad})


def test_json_output_is_standard_even_for_a_non_finite_metric(workdir, capsys):
    import json

    run = record_run(open_store(), verb="plan", deployment="d", plan_hash=None, overrides=[], config={},
                     status="ok", started_at=NOW, finished_at=NOW, metrics={"ratio": float("inf")})
    assert main(["runs", "show", str(run), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))["metrics"] == {"ratio": None}


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["query", "select 1", "--timeout", "nan"], "--timeout nan is not a positive finite number"),
        (["query", "select 1", "--timeout", "inf"], "--timeout inf is not a positive finite number"),
        (["query", "select 1", "--timeout", "0"], "Fix: pass e.g. --timeout 10"),
        (["query", "select 1", "--max-rows", "0"], "--max-rows 0 is out of range"),
        (["query", "select 1", "--max-rows", str(10**23)], "Fix: pass e.g. --max-rows 10000"),
        (["runs", "ls", "--limit", "-1"], "--limit -1 is out of range"),
        (["runs", "ls", "--limit", str(10**23)], "from 1 to 2,147,483,647. Fix: pass e.g. --limit 50"),
        (["runs", "show", str(10**23)], f"RUN {10**23} is not a run id"),
        (["runs", "diff", "1", str(10**23)], "Fix: pass an id that `cmtwin runs ls` lists"),
        (["runs", "show", "-3"], "RUN -3 is not a run id"),
    ],
)
def test_bad_numeric_options_exit_2_with_key_value_and_fix(argv, fragment, workdir, capsys):
    add = record_run(open_store(), verb="plan", deployment="d", plan_hash=None, overrides=[], config={},
                     status="ok", started_at=NOW, finished_at=NOW)
    assert add == 1
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "internal error" not in err


def test_the_query_function_refuses_a_nan_timeout(tmp_path):
    from cmtwin.store.query import run_readonly_query

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    open_store(url)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(StoreError, match="--timeout"):
            run_readonly_query(url, "select 1", timeout_s=bad)
