"""Read-only SQL over the run store (`cmtwin query`), guarded in two layers.

1. A statement guard: after removing comments and quoted text, the input must be ONE statement starting
   with SELECT, WITH, VALUES or EXPLAIN (without ANALYZE), and contain no writing keyword (a data-modifying
   CTE, SELECT INTO, ATTACH...). The tokenizer follows the target dialect's quoting rules, since a comment
   or string that one dialect closes earlier than another could hide a statement.
2. A read-only connection that runs exactly one statement: SQLite opened with mode=ro plus an authorizer
   that allows only reads, and a progress handler that enforces the timeout; PostgreSQL in a READ ONLY
   transaction with a local statement_timeout, the query sent as one prepared statement.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cmtwin.errors import StoreError
from cmtwin.store.direct import MAX_COUNT
from cmtwin.store.engine import display_url, missing_store_error, normalize_url, resolve_url, sqlite_path

ALLOWED_FIRST = ("SELECT", "WITH", "VALUES", "EXPLAIN")
"""The keywords a query may start with."""

FORBIDDEN = frozenset(
    """INSERT UPDATE DELETE MERGE UPSERT DROP CREATE ALTER ATTACH DETACH PRAGMA VACUUM REINDEX COPY GRANT
    REVOKE TRUNCATE REPLACE SET CALL DO INTO ANALYZE ANALYSE LOCK""".split()
)
"""Keywords refused anywhere in a query (a column with one of these names must be double-quoted)."""

_RULE = "only a single SELECT, WITH, EXPLAIN (without ANALYZE) or VALUES query is allowed"
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class QueryResult:
    """Column names, rows (at most max_rows) and whether more rows were left out."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def _skip_quoted(sql: str, i: int, close: str, *, backslash: bool = False) -> int:
    """Index just past the quoted text opened at sql[i] (a doubled `close` is an escaped one)."""
    j = i + 1
    while j < len(sql):
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == close:
            if j + 1 < len(sql) and sql[j + 1] == close and close != "]":
                j += 2
                continue
            return j + 1
        j += 1
    raise StoreError(f"the query has an unterminated {close} quote; close it")


def _skip_block_comment(sql: str, i: int, *, nested: bool) -> int:
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth = depth + 1 if nested or depth == 0 else depth
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise StoreError("the query has an unterminated /* comment; close it with */")


def tokenize(sql: str, dialect: str = "sqlite") -> list[str]:
    """The query's words and punctuation with comments removed and each quoted string or identifier
    replaced by a placeholder ('<str>' / '<ident>'), following `dialect`'s ('sqlite'/'postgresql') rules."""
    pg = dialect == "postgresql"
    tokens: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i, nested=pg)
        elif c == "'":
            # PostgreSQL E'...' strings take backslash escapes.
            escaped = pg and bool(tokens) and tokens[-1].upper() == "E" and sql[i - 1] in "eE"
            if escaped:
                tokens.pop()
            i = _skip_quoted(sql, i, "'", backslash=escaped)
            tokens.append("<str>")
        elif c == '"' or (not pg and c in "`["):
            i = _skip_quoted(sql, i, {"[": "]"}.get(c, c))
            tokens.append("<ident>")
        elif pg and c == "$" and (m := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(), m.end())
            if end < 0:
                raise StoreError(f"the query has an unterminated {m.group()} quote; close it")
            i = end + len(m.group())
            tokens.append("<str>")
        elif m := _WORD.match(sql, i):
            tokens.append(m.group())
            i = m.end()
        else:
            tokens.append(c)
            i += 1
    return tokens


def check_readonly(sql: str, dialect: str = "sqlite") -> None:
    """Raise StoreError unless `sql` is a single read-only query (see the module docstring)."""
    statements: list[list[str]] = [[]]
    for token in tokenize(sql, dialect):
        if token == ";":
            statements.append([])
        else:
            statements[-1].append(token)
    statements = [s for s in statements if s]
    if not statements:
        raise StoreError(f"the query is empty; {_RULE}")
    if len(statements) > 1:
        raise StoreError(
            f"refused: the input holds {len(statements)} statements (the second starts with "
            f"{_first_word(statements[1])}); {_RULE}"
        )
    words = [t.upper() for t in statements[0]]
    first = _first_word(words)
    if first not in ALLOWED_FIRST:
        raise StoreError(f"refused {first}: {_RULE}")
    for k, word in enumerate(words):
        if word in FORBIDDEN and not (word == "REPLACE" and words[k + 1 : k + 2] == ["("]):
            raise StoreError(f"refused {word} inside a {first} query: {_RULE}")


def _first_word(tokens: list[str]) -> str:
    return next((t.upper() for t in tokens if _WORD.fullmatch(t)), tokens[0])


DEFAULT_MAX_BYTES = 100_000_000
"""The default byte budget of one query's result (`cmtwin query --max-bytes`)."""

_FETCH_BATCH = 256


def _too_big_error(max_bytes: int, detail: str) -> StoreError:
    return StoreError(
        f"the query's result is larger than the --max-bytes budget of {max_bytes:,} bytes ({detail}).",
        key="--max-bytes",
        fix="narrow the query (fewer columns or rows, LIMIT, substr() of long values), or pass a larger "
        f"--max-bytes (e.g. --max-bytes {min(max_bytes * 4, MAX_COUNT)})",
    )


def _value_size(value: Any) -> int:
    if isinstance(value, str | bytes | bytearray | memoryview):
        return len(value) + 16
    return 16


def _timeout_error(timeout_s: float) -> StoreError:
    return StoreError(f"query stopped after {timeout_s:g} s (statement timeout); narrow it or pass --timeout")


def run_readonly_query(
    url: str | None, sql: str, *, timeout_s: float = 10.0, max_rows: int = 10000,
    max_bytes: int = DEFAULT_MAX_BYTES, allow_superuser: bool = True,
) -> QueryResult:
    """Run one read-only query against the store at `url` (resolved by resolve_url); see the module doc.

    Memory is bounded in rows (max_rows) and in bytes (max_bytes: the fetched values' sizes added up; on
    SQLite also the largest string or blob the query may build, via SQLITE_LIMIT_LENGTH on its connection).
    On PostgreSQL, allow_superuser=False refuses a connection as a superuser (see `superuser_error`); `cmtwin
    query` passes False unless --allow-superuser is given.
    Refused statements, SQL errors, timeouts and results over a budget raise StoreError (exit 2).
    """
    from cmtwin.config.compose import short_repr

    if not 1000 <= max_bytes <= MAX_COUNT:
        raise StoreError(f"--max-bytes {short_repr(max_bytes)} is out of range (1000 to {MAX_COUNT})", key="--max-bytes",
                         fix=f"pass e.g. --max-bytes {DEFAULT_MAX_BYTES}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise StoreError(
            f"--timeout {short_repr(timeout_s)} is not a positive finite number of seconds", key="--timeout",
            fix="pass e.g. --timeout 10",
        )
    if not 1 <= max_rows <= MAX_COUNT:
        raise StoreError(f"--max-rows {short_repr(max_rows)} is out of range (1 to {MAX_COUNT})", key="--max-rows",
                         fix="pass e.g. --max-rows 10000")
    parsed = normalize_url(resolve_url(url))
    dialect = parsed.get_backend_name()
    check_readonly(sql, dialect)
    if dialect == "sqlite":
        return _query_sqlite(sqlite_path(parsed), sql, timeout_s, max_rows, max_bytes)
    return _query_postgresql(parsed, sql, timeout_s, max_rows, max_bytes, allow_superuser)


def _fetch(cursor: Any, max_rows: int, max_bytes: int) -> QueryResult:
    """At most max_rows rows (and whether more were left), fetched in batches until the byte budget is spent."""
    if cursor.description is None:
        return QueryResult([], [], False)
    columns = [d[0] for d in cursor.description]
    rows: list[tuple[Any, ...]] = []
    used = 0
    while len(rows) <= max_rows:
        batch = cursor.fetchmany(min(_FETCH_BATCH, max_rows + 1 - len(rows)))
        if not batch:
            break
        for r in batch:
            used += sum(_value_size(v) for v in r)
            if used > max_bytes:
                raise _too_big_error(max_bytes, f"it passed the budget at row {len(rows) + 1:,}")
            rows.append(tuple(r))
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)


_SQLITE_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def _sqlite_authorizer(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY


def _query_sqlite(path: Any, sql: str, timeout_s: float, max_rows: int, max_bytes: int) -> QueryResult:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if not path.exists():
        raise missing_store_error(path)
    uri = f"file:{quote(str(path))}?mode=ro"
    engine = create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False), poolclass=NullPool
    )
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        deadline = time.monotonic() + timeout_s
        dbapi.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        dbapi.set_authorizer(_sqlite_authorizer)
        # No string or blob the query builds (randomblob(9e8), a huge group_concat) may pass the budget.
        dbapi.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_bytes)
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql)
            return _fetch(cursor, max_rows, max_bytes)
        except sqlite3.Error as exc:
            if time.monotonic() > deadline and "interrupt" in str(exc):
                raise _timeout_error(timeout_s) from exc
            if "too big" in str(exc):
                raise _too_big_error(max_bytes, f"one value would be larger: SQLite said {exc}") from exc
            if "not authorized" in str(exc):
                raise StoreError(f"refused by the read-only connection ({exc}); {_RULE}") from exc
            raise StoreError(f"the query failed on {path}: {exc}") from exc
    finally:
        raw.close()
        engine.dispose()


def _is_superuser(cursor: Any) -> bool:
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cursor.fetchone()
    return bool(row and row[0])


def superuser_error(url: Any) -> StoreError:
    """The refusal of `query` as a PostgreSQL superuser (it could read server files through pg_read_file)."""
    where = display_url(url)
    return StoreError(
        f"refused: {where} connects as a PostgreSQL superuser, who can read server files (pg_read_file), list "
        "folders and reload the server's configuration even inside a read-only transaction.",
        key="--db",
        fix=f"create a read-only role once with `cmtwin db create-query-role --db {where}` and query as it "
        "(--db postgresql://cmtwin_query@HOST/DB), or pass --allow-superuser if you mean it",
    )


def _query_postgresql(
    url: Any, sql: str, timeout_s: float, max_rows: int, max_bytes: int, allow_superuser: bool
) -> QueryResult:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        raw = engine.raw_connection()
    except DBAPIError as exc:
        raise StoreError(f"cannot open the run store at {display_url(url)}: {exc.orig}") from exc
    errors = engine.dialect.loaded_dbapi
    try:
        cursor = raw.cursor()
        cursor.execute("SET TRANSACTION READ ONLY")
        cursor.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
        if not allow_superuser and _is_superuser(cursor):
            raise superuser_error(url)
        try:
            if _first_word(tokenize(sql, "postgresql")) == "EXPLAIN":
                # A server-side prepared statement holds exactly one command (and takes no % placeholders).
                cursor.execute(sql, prepare=True)
            else:
                # A server-side cursor (DECLARE, sent as one extended-protocol command): rows come in batches,
                # so the byte budget stops a big result before it is all in memory.
                cursor = raw.driver_connection.cursor(name="cmtwin_query")
                cursor.execute(sql)
            return _fetch(cursor, max_rows, max_bytes)
        except errors.Error as exc:
            if getattr(exc, "sqlstate", None) == "57014":  # query_canceled
                raise _timeout_error(timeout_s) from exc
            raise StoreError(f"the query failed on {display_url(url)}: {str(exc).strip()}") from exc
    finally:
        try:
            raw.rollback()
        except errors.Error:  # the query ended the connection (pg_terminate_backend): nothing left to undo
            raw.invalidate()  # drop it without the pool's reset (which would fail on it again)
        else:
            raw.close()
        engine.dispose()
