"""`cmtwin query` safety: the statement guard, the read-only connection behind it, timeouts and errors."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

import cmtwin.store.query as query
from cmtwin.errors import StoreError
from cmtwin.store.query import check_readonly, run_readonly_query
from store_fixtures import add_example_runs, db_url, pg_database  # noqa: F401 - fixtures

ALLOWED = [
    "select 1",
    "SELECT * FROM runs;",
    "select ';' as s",
    "select 'drop table runs; delete from runs' as s",
    "  -- a leading comment\nselect 1",
    "select 1 /* ; drop table runs */",
    "with x as (select id from runs) select * from x",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) SELECT * FROM c",
    "values (1, 'a'), (2, 'b')",
    "explain select * from runs",
    "select replace(verb, 'p', 'P') from runs",
    'select "delete" from (select 1 as "delete") t',
    "(select 1) union (select 2)",
    "select id from runs order by id desc limit 5 offset 1",
    "select count(*) from metrics where name like 'decode.%'",
]

REFUSED = [
    ("drop table runs", "refused DROP"),
    ("select 1; drop table runs", "2 statements (the second starts with DROP)"),
    ("PRAGMA journal_mode=DELETE", "refused PRAGMA"),
    ("ATTACH 'x.db' AS x", "refused ATTACH"),
    ("DETACH x", "refused DETACH"),
    ("WITH x AS (DELETE FROM runs RETURNING *) SELECT * FROM x", "refused DELETE inside a WITH query"),
    ("delete from runs", "refused DELETE"),
    ("insert into runs (verb) values ('x')", "refused INSERT"),
    ("update runs set status = 'ok'", "refused UPDATE"),
    ("replace into metrics values (1, 'a', 1.0)", "refused REPLACE"),
    ("select * into runs_copy from runs", "refused INTO"),
    ("explain analyze delete from runs", "refused ANALYZE"),
    ("EXPLAIN ANALYZE SELECT 1", "refused ANALYZE"),
    ("create table t (x int)", "refused CREATE"),
    ("alter table runs add column x int", "refused ALTER"),
    ("vacuum", "refused VACUUM"),
    ("set statement_timeout = 0", "refused SET"),
    ("begin; drop table runs; commit", "refused: the input holds 3 statements"),
    ("select 1 -- hidden\n; drop table runs", "the second starts with DROP"),
    ("/* select */ drop table runs", "refused DROP"),
    ("select 1 /* */; delete from runs", "the second starts with DELETE"),
    ("select 'a' ; ; update runs set verb = 'x'", "the second starts with UPDATE"),
    ("", "the query is empty"),
    ("-- nothing but a comment", "the query is empty"),
    ("select 'unterminated", "unterminated ' quote"),
    ("select 1 /* open", "unterminated /* comment"),
]

RULE = "only a single SELECT, WITH, EXPLAIN (without ANALYZE) or VALUES query is allowed"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("sql", ALLOWED)
def test_guard_allows(sql, dialect):
    check_readonly(sql, dialect)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize(("sql", "why"), REFUSED)
def test_guard_refuses(sql, why, dialect):
    with pytest.raises(StoreError) as err:
        check_readonly(sql, dialect)
    assert why in str(err.value)
    if sql.strip() and "unterminated" not in why:
        assert RULE in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("sql", "postgres_ok"),
    [
        # PostgreSQL nests block comments, SQLite does not: each dialect is tokenized by its own rules.
        ("select 1 /* /* */ ; drop table runs */", True),
        # E'' strings take backslash escapes in PostgreSQL only.
        ("select E'\\'; drop table runs; --'", True),
        ("select E'\\\\'; drop table runs", False),
        # Dollar quoting is PostgreSQL's.
        ("select $tag$; drop table runs $tag$", True),
        ("select $$;drop table runs$$", True),
    ],
)
def test_guard_follows_the_dialect(sql, postgres_ok):
    with pytest.raises(StoreError):
        check_readonly(sql, "sqlite")
    if postgres_ok:
        check_readonly(sql, "postgresql")
    else:
        with pytest.raises(StoreError, match="DROP"):
            check_readonly(sql, "postgresql")


def _snapshot(url: str, directory=None):
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        state = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}
        columns = {t: [c["name"] for c in inspect(conn).get_columns(t)] for t in tables}
        if conn.dialect.name == "sqlite":
            state["journal_mode"] = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        else:
            state["read_only_default"] = conn.exec_driver_sql("SHOW default_transaction_read_only").scalar()
            state["statement_timeout"] = conn.exec_driver_sql("SHOW statement_timeout").scalar()
    engine.dispose()
    files = sorted(p.name for p in directory.iterdir()) if directory is not None else None
    return tables, state, columns, files


@pytest.fixture(scope="module")
def query_role():
    """On PostgreSQL, a read-only role for `query` (a superuser is refused); dropped at the module's end."""
    import uuid

    from store_fixtures import _pg_connect

    made = {"role": f"cmtwin_q_{uuid.uuid4().hex[:10]}", "databases": set()}
    yield made
    for dbname in made["databases"]:
        try:
            conn = _pg_connect(dbname)
        except Exception:  # noqa: BLE001 - the database is gone already, and the role's grants with it
            continue
        with conn:
            conn.execute(f'DROP OWNED BY "{made["role"]}"')
    if made["databases"]:
        with _pg_connect("postgres") as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{made["role"]}"')


@pytest.fixture
def populated(db_url, tmp_path, query_role):
    """A store with two runs; yields (url to query, folder to watch for stray files or None).

    On PostgreSQL the URL connects as a read-only role made by `create_query_role`, as the docs advise.
    """
    add_example_runs(db_url)
    if db_url.startswith("sqlite"):
        return db_url, tmp_path
    from sqlalchemy.engine import make_url

    from cmtwin.store.roles import create_query_role

    query_role["databases"].add(make_url(db_url).database)
    return create_query_role(db_url, query_role["role"]).query_url, None


def test_refused_statements_leave_the_db_unchanged(populated):
    url, folder = populated
    before = _snapshot(url, folder)
    for sql, why in REFUSED:
        with pytest.raises(StoreError) as err:
            run_readonly_query(url, sql)
        assert why in str(err.value)
    assert _snapshot(url, folder) == before


WRITES = [
    "drop table runs",
    "delete from runs",
    "insert into metrics values (1, 'x', 1.0)",
    "update runs set status = 'failed'",
    "create table t (x int)",
    "select 1; drop table runs",
    "commit; drop table runs",
]
SQLITE_WRITES = ["PRAGMA journal_mode=DELETE", "ATTACH 'x.db' AS x", "vacuum"]


def test_the_connection_is_read_only_without_the_guard(db_url, tmp_path, monkeypatch):
    """Layer (b): with the guard switched off, the connection itself still refuses every write (on PostgreSQL
    as the store's owner, a superuser here: the READ ONLY transaction alone, without a read-only role)."""
    add_example_runs(db_url)
    url, folder = db_url, (tmp_path if db_url.startswith("sqlite") else None)
    monkeypatch.setattr(query, "check_readonly", lambda sql, dialect: None)
    before = _snapshot(url, folder)
    for sql in WRITES + (SQLITE_WRITES if folder is not None else []):
        with pytest.raises(StoreError):
            run_readonly_query(url, sql, allow_superuser=True)
    assert _snapshot(url, folder) == before
    assert run_readonly_query(url, "select count(*) from runs", allow_superuser=True).rows == [(2,)]


def test_runaway_query_is_stopped(populated):
    url, _ = populated
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(StoreError, match=r"query stopped after 1 s \(statement timeout\); narrow it or pass --timeout"):
        run_readonly_query(url, sql, timeout_s=1.0)


def test_results_and_truncation(populated):
    url, _ = populated
    result = run_readonly_query(url, "select id, verb from runs order by id")
    assert (result.columns, result.rows, result.truncated) == (["id", "verb"], [(1, "plan"), (2, "plan")], False)
    assert run_readonly_query(url, "select id from runs", max_rows=1).truncated
    assert run_readonly_query(url, "select '100%' as pct").rows == [("100%",)]


def test_sql_errors_carry_the_database_message(populated):
    url, _ = populated
    with pytest.raises(StoreError) as err:
        run_readonly_query(url, "select * from no_such_table")
    assert "no_such_table" in str(err.value) and err.value.exit_code == 2
    with pytest.raises(StoreError, match="syntax error"):
        run_readonly_query(url, "select from where")


def test_missing_database_file(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(StoreError) as err:
        run_readonly_query(f"sqlite:///{path}", "select 1")
    assert str(path) in str(err.value) and "cmtwin plan +deployment=r1_ep320" in str(err.value)
    assert not path.exists()
