"""PostgreSQL roles for the run store: the read-only role `cmtwin query` connects as (`cmtwin db create-query-role`).

`query` runs each statement in a READ ONLY transaction behind a statement guard, but a superuser can still read
server files (pg_read_file), list folders or reload the configuration from inside one. A role that may only
connect and SELECT the store's tables closes that; `query` refuses a superuser unless told otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from cmtwin.errors import StoreError
from cmtwin.store.engine import display_url, normalize_url, resolve_url

DEFAULT_QUERY_ROLE = "cmtwin_query"
"""The role `cmtwin db create-query-role` creates unless --role names another."""

_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class QueryRole:
    """What `create_query_role` did: the role, the SQL it ran (in order) and the URL to query with."""

    role: str
    created: bool
    statements: list[str]
    query_url: str


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def query_role_sql(role: str, database: str, schema: str, owner: str, *, create: bool) -> list[str]:
    """The statements that make `role` a login role that can only read the store's tables in `schema`."""
    r, s = _quote(role), _quote(schema)
    statements = []
    if create:
        statements.append(f"CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")
    statements += [
        f"ALTER ROLE {r} SET default_transaction_read_only = on",
        f"GRANT CONNECT ON DATABASE {_quote(database)} TO {r}",
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
        # Tables a later schema revision adds (created by the store's owner) are readable too.
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {_quote(owner)} IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
    ]
    return statements


def create_query_role(url: str | None = None, role: str = DEFAULT_QUERY_ROLE) -> QueryRole:
    """Create (or refresh the grants of) a read-only role for `cmtwin query` on the PostgreSQL store at `url`.

    Run it as the store's owner or an administrator; it is idempotent. The store's schema must exist (run any
    verb once, or `cmtwin db upgrade`). A role that exists and is a superuser is refused, not changed.
    """
    parsed: URL = normalize_url(resolve_url(url))
    where = display_url(parsed)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(
            f"--db {where}: a query role is a PostgreSQL notion; a SQLite store is opened read-only by `query` "
            "already", key="--db", fix="pass --db postgresql://OWNER@HOST/DB",
        )
    if not _ROLE_NAME.fullmatch(role):
        raise StoreError(
            f"--role {role[:80]!r} is not a plain role name", key="--role",
            fix=f"use lower-case letters, digits and _ (at most 63), e.g. --role {DEFAULT_QUERY_ROLE}",
        )
    engine = create_engine(parsed, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            database, schema, owner = conn.execute(
                text("SELECT current_database(), current_schema(), current_user")
            ).one()
            if role == owner:
                raise StoreError(
                    f"--role {role}: that is the role this URL connects as (the store's owner)", key="--role",
                    fix=f"name another role, e.g. --role {DEFAULT_QUERY_ROLE}",
                )
            if schema is None or conn.execute(text("SELECT to_regclass('runs')")).scalar() is None:
                raise StoreError(
                    f"there is no run store at {where} yet, so there is nothing to grant", key="--db",
                    fix=f"create its schema first: cmtwin db upgrade --db {where}",
                )
            existing = conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
            if existing is not None and existing[0]:
                raise StoreError(
                    f"--role {role} exists and is a superuser; cmtwin will not use it for queries", key="--role",
                    fix=f"name another role, e.g. --role {DEFAULT_QUERY_ROLE}",
                )
            statements = query_role_sql(role, database, schema, owner, create=existing is None)
            for statement in statements:
                conn.exec_driver_sql(statement)
    except DBAPIError as exc:
        raise StoreError(
            f"cannot set up the query role {role} on {where}: {str(exc.orig).strip()}", key="--db",
            fix="run it as the store's owner or a role with CREATEROLE",
        ) from exc
    finally:
        engine.dispose()
    query_url = parsed.set(username=role, password=None).render_as_string(hide_password=True)
    return QueryRole(role, existing is None, statements, query_url)
