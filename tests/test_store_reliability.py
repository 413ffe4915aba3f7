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
from tests.store_fixtures import (  # noqa: F401 - fixtures
    PG_HOST,
    PG_PORT,
    _pg_connect,
    db_url,
    pg_database,
    scratch_pg_database,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _cmtwin() -> list[str]:
    path = shutil.which("cmtwin")
    return [path] if path else [sys.executable, "-m", "cmtwin"]


@pytest.fixture
def fresh_pg_database():
    """A brand-new, empty PostgreSQL database (no schema yet); yields its plain postgresql:// URL."""
    with scratch_pg_database("cmtwin_fresh") as name:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"


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


class _BusyOnWal:
    """A connection whose journal-mode switch is refused `busy` times ("database is locked"), as SQLite refuses it
    at once, busy timeout or not, to one of two connections switching a fresh file together."""

    def __init__(self, busy: int, error: str = "database is locked"):
        self.busy, self.error, self.done = busy, error, []

    def execute(self, sql: str):
        if "journal_mode" in sql and self.busy:
            self.busy -= 1
            raise sqlite3.OperationalError(self.error)
        self.done.append(sql)


def test_a_busy_journal_mode_switch_is_waited_out_not_reported(monkeypatch):
    from cmtwin.store import direct

    db = _BusyOnWal(busy=3)
    direct.apply_pragmas(db)
    assert db.done == [f"PRAGMA {p}" for p in direct.SQLITE_PRAGMAS]  # every pragma, in order, once
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):  # other errors are not retried
        direct.apply_pragmas(_BusyOnWal(busy=1, error="disk I/O error"))
    monkeypatch.setattr(direct, "SQLITE_BUSY_TIMEOUT_S", 0.05)  # ... nor a lock held past the busy timeout
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        direct.apply_pragmas(_BusyOnWal(busy=10**6))


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


# --- 3. query memory bounded in bytes -------------------------------------------------------------------------


def test_sqlite_query_cannot_build_a_value_past_the_byte_budget(tmp_path):
    from cmtwin.store.query import run_readonly_query

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    open_store(url)
    with pytest.raises(StoreError) as err:
        run_readonly_query(url, "select length(randomblob(2000000))", max_bytes=1_000_000)
    assert "--max-bytes budget of 1,000,000 bytes" in str(err.value) and "too big" in str(err.value)
    assert "Fix: narrow the query" in str(err.value) and err.value.key == "--max-bytes"
    assert run_readonly_query(url, "select length(randomblob(500000))", max_bytes=1_000_000).rows == [(500000,)]


def test_query_default_budget_stops_a_900_mb_blob(workdir, capsys):
    open_store()
    assert main(["query", "select length(randomblob(900000000))"]) == 2
    err = capsys.readouterr().err
    assert "larger than the --max-bytes budget of 100,000,000 bytes" in err and "pass a larger --max-bytes" in err


def test_many_rows_past_the_byte_budget_are_refused(db_url, request):  # noqa: F811
    from cmtwin.store.query import run_readonly_query

    open_store(db_url)
    sql = ("select repeat('x', 1000) from generate_series(1, 5000)" if db_url.startswith("postgresql") else
           "with recursive c(x) as (select 1 union all select x + 1 from c where x < 5000) "
           "select printf('%.1000c', 'x') from c")
    with pytest.raises(StoreError, match=r"passed the budget at row 9\d\d"):
        run_readonly_query(db_url, sql, max_rows=100000, max_bytes=1_000_000, allow_superuser=True)
    assert len(run_readonly_query(db_url, sql, max_rows=100000, allow_superuser=True).rows) == 5000


# --- 4. a query that ends its own connection ------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_query_that_terminates_its_backend_exits_2_without_a_traceback(db_url, tmp_path):  # noqa: F811
    open_store(db_url)
    env = {k: v for k, v in os.environ.items() if k not in ("CMTWIN_DB_URL", "CMTWIN_FULL_ERROR")}
    proc = subprocess.run(
        [*_cmtwin(), "query", "select pg_terminate_backend(pg_backend_pid())", "--db", db_url, "--allow-superuser"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "terminating connection" in proc.stderr and "Traceback" not in proc.stderr
    assert "Exception during reset" not in proc.stderr


# --- 5. PostgreSQL roles ----------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_query_refuses_a_superuser_unless_told(db_url, capsys):  # noqa: F811
    from cmtwin.store.query import run_readonly_query

    open_store(db_url)  # the fixture connects as the server's superuser, postgres
    with pytest.raises(StoreError) as err:
        run_readonly_query(db_url, "select 1", allow_superuser=False)
    assert "connects as a PostgreSQL superuser" in str(err.value)
    assert "cmtwin db create-query-role" in str(err.value) and "--allow-superuser" in str(err.value)
    assert main(["query", "select 1", "--db", db_url]) == 2
    assert "superuser" in capsys.readouterr().err
    assert run_readonly_query(db_url, "select 1", allow_superuser=True).rows == [(1,)]


@pytest.fixture
def scratch_role():
    """A unique role name; the role (if made) is dropped after the test's databases are."""
    made = {"role": f"cmtwin_t_{uuid.uuid4().hex[:10]}", "databases": [], "grants_in": []}
    yield made
    close_all_stores()
    try:
        admin = _pg_connect("postgres")
    except Exception:  # noqa: BLE001 - no server: nothing was made
        return
    for dbname in made["grants_in"]:
        with _pg_connect(dbname) as conn:
            conn.execute(f'DROP OWNED BY "{made["role"]}"')
    with admin:
        for dbname in made["databases"]:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{made["role"]}"')


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_create_query_role_makes_a_role_that_only_reads(db_url, scratch_role, capsys):  # noqa: F811
    from sqlalchemy.engine import make_url

    from cmtwin.store.query import run_readonly_query

    role = scratch_role["role"]
    scratch_role["grants_in"].append(make_url(db_url).database)
    assert main(["db", "create-query-role", "--db", db_url, "--role", role]) == 2  # no store yet
    assert "cmtwin db upgrade" in capsys.readouterr().err
    record_run(open_store(db_url), verb="plan", deployment="d", plan_hash=None, overrides=[], config={"a": 1},
               status="ok", started_at=NOW, finished_at=NOW)
    assert main(["db", "create-query-role", "--db", db_url, "--role", role]) == 0
    out = capsys.readouterr().out
    assert f'CREATE ROLE "{role}" LOGIN NOSUPERUSER' in out and "GRANT SELECT ON ALL TABLES IN SCHEMA" in out
    assert main(["db", "create-query-role", "--db", db_url, "--role", role]) == 0  # again: grants refreshed
    assert "refreshed the grants" in capsys.readouterr().out
    query_url = make_url(db_url).set(username=role).render_as_string(hide_password=False)
    assert run_readonly_query(query_url, "select count(*) from runs", allow_superuser=False).rows == [(1,)]
    for sql in ("select pg_read_file('/etc/hostname')", "select pg_ls_dir('.')", "select pg_reload_conf()"):
        with pytest.raises(StoreError, match="permission denied"):
            run_readonly_query(query_url, sql)


def test_create_query_role_wants_postgresql_and_a_plain_name(tmp_path, capsys):
    assert main(["db", "create-query-role", "--db", f"sqlite:///{tmp_path / 'r.db'}"]) == 2
    assert "a query role is a PostgreSQL notion" in capsys.readouterr().err


@pytest.mark.postgres
def test_the_shipped_postgresql_config_cannot_read_server_files(scratch_role):
    """conf/store/postgres.yaml names a dedicated role, not a superuser: `query` through it (here on a scratch
    database owned by that role) is refused pg_read_file by the server itself."""
    import yaml
    from sqlalchemy.engine import make_url

    from cmtwin.paths import conf_dir
    from cmtwin.store.query import run_readonly_query

    shipped = make_url(yaml.safe_load((conf_dir() / "store" / "postgres.yaml").read_text())["url"])
    assert shipped.username not in (None, "postgres")
    try:
        admin = _pg_connect("postgres")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: skip, and say why
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    dbname = f"cmtwin_shipped_{uuid.uuid4().hex[:10]}"
    with admin:
        existing = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (shipped.username,)).fetchone()
        if existing is None:  # make the shipped role as docs/store.md says; dropped afterwards
            scratch_role["role"] = shipped.username
            admin.execute(f'CREATE ROLE "{shipped.username}" LOGIN')
        else:
            assert not existing[0], f"role {shipped.username} on this server is a superuser"
        admin.execute(f'CREATE DATABASE "{dbname}" OWNER "{shipped.username}"')
        scratch_role["databases"].append(dbname)
    url = shipped.set(host=PG_HOST, port=PG_PORT, database=dbname).render_as_string(hide_password=False)
    record_run(open_store(url), verb="plan", deployment="d", plan_hash=None, overrides=[], config={},
               status="ok", started_at=NOW, finished_at=NOW)
    assert run_readonly_query(url, "select count(*) from runs", allow_superuser=False).rows == [(1,)]
    for sql in ("select pg_read_file('/etc/hostname')", "select pg_read_file('postgresql.conf')"):
        with pytest.raises(StoreError, match="permission denied for function pg_read_file"):
            run_readonly_query(url, sql)
