"""Verbs over the run store: `cmtwin query`, `cmtwin runs ls|show|diff`, `cmtwin db upgrade|current`.

Handlers import sqlalchemy, rich and the store lazily, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from cmtwin.errors import StoreError
from cmtwin.store.direct import MAX_COUNT

_DB_HELP = "database URL (default: $CMTWIN_DB_URL, else sqlite:///cmtwin.db in the current directory)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the store verbs to the `cmtwin` parser."""
    q = subparsers.add_parser(
        "query",
        help="read-only SQL over the run history",
        description="Run ONE read-only query (SELECT, WITH, VALUES or EXPLAIN) on the run store. "
        "Tables: runs, plans, predictions, metrics, samples, artifacts, timeline.",
        epilog='Example: cmtwin query "SELECT name, value FROM metrics WHERE run_id = 3"',
    )
    q.add_argument("sql", help="the query")
    q.add_argument("--db", metavar="URL", help=_DB_HELP)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default: table)")
    q.add_argument("--timeout", type=float, default=10.0, metavar="S", help="stop the query after S seconds (10)")
    q.add_argument("--max-rows", type=int, default=10000, metavar="N", help="print at most N rows (10000)")
    q.add_argument("--max-bytes", type=int, default=100_000_000, metavar="B",
                   help="refuse a result (or, on SQLite, any value the query builds) larger than B bytes (100000000)")
    q.add_argument("--allow-superuser", action="store_true",
                   help="run even when the PostgreSQL URL connects as a superuser (refused by default; see "
                   "`cmtwin db create-query-role`)")
    q.set_defaults(func=cmd_query)

    runs = subparsers.add_parser("runs", help="list, show and compare recorded runs")
    runs_sub = runs.add_subparsers(dest="runs_action", metavar="ACTION")
    runs_sub.required = True
    ls = runs_sub.add_parser("ls", help="the newest runs first")
    ls.add_argument("--db", metavar="URL", help=_DB_HELP)
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (50)")
    ls.add_argument("--verb", metavar="V", help="only runs of this verb (plan, simulate...)")
    ls.add_argument("--status", choices=("running", "ok", "failed", "interrupted", "cancelled"))
    ls.add_argument("--sweep", metavar="ID", help="only the runs of one sweep (`cmtwin plan|simulate|search -m`)")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(func=cmd_runs_ls)
    show = runs_sub.add_parser("show", help="everything stored about one run")
    show.add_argument("run", metavar="RUN", help="a run id, or 'last'")
    show.add_argument("--db", metavar="URL", help=_DB_HELP)
    show.add_argument("--format", choices=("table", "json"), default="table")
    show.set_defaults(func=cmd_runs_show)
    diff = runs_sub.add_parser("diff", help="config keys and metrics that differ between two runs")
    diff.add_argument("a", metavar="A", help="a run id, or 'last'")
    diff.add_argument("b", metavar="B", help="a run id, or 'last'")
    diff.add_argument("--db", metavar="URL", help=_DB_HELP)
    diff.add_argument("--format", choices=("table", "json"), default="table")
    diff.set_defaults(func=cmd_runs_diff)

    db = subparsers.add_parser("db", help="the run store's schema")
    db_sub = db.add_subparsers(dest="db_action", metavar="ACTION")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="back up (SQLite) and upgrade the schema to this cmtwin's head")
    up.add_argument("--db", metavar="URL", help=_DB_HELP)
    up.set_defaults(func=cmd_db_upgrade)
    cur = db_sub.add_parser("current", help="the schema revision of the store")
    cur.add_argument("--db", metavar="URL", help=_DB_HELP)
    cur.set_defaults(func=cmd_db_current)
    role = db_sub.add_parser(
        "create-query-role",
        help="create a read-only PostgreSQL role for `cmtwin query` (prints the SQL it runs)",
        description="Create (or refresh the grants of) a login role that can only read the store's tables, "
        "for `cmtwin query --db postgresql://ROLE@HOST/DB`. Run it as the store's owner or an administrator.",
    )
    role.add_argument("--db", metavar="URL", help=_DB_HELP)
    role.add_argument("--role", default="cmtwin_query", metavar="NAME", help="the role's name (cmtwin_query)")
    role.set_defaults(func=cmd_db_create_query_role)


def _jsonable(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if is_dataclass(value):
        return asdict(value)
    return str(value)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _print_json(obj: Any) -> None:
    """Standard JSON on stdout: a non-finite number (a metric of inf, an old store's `Infinity`) prints as null."""
    plain = json.loads(json.dumps(obj, default=_jsonable))
    json.dump(_finite_or_none(plain), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")




def _count_option(option: str, value: int, example: str) -> int:
    """A --limit value: a whole number from 1 to MAX_COUNT, else StoreError naming the fix."""
    if not 1 <= value <= MAX_COUNT:
        from cmtwin.config.compose import short_repr

        raise StoreError(
            f"{option} {short_repr(value)} is out of range: it must be a whole "
            f"number from 1 to {MAX_COUNT:,}.",
            key=option, fix=f"pass e.g. {option} {example}",
        )
    return value


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _figure(value: float) -> str:
    """A metric for reading: counts and large figures (bytes, tokens) whole with thousands separators, not as
    1.19165e+12; others as _cell."""
    if 1e4 <= abs(value) < 1e18 and (float(value).is_integer() or abs(value) >= 1e5):
        return f"{value:,.0f}"
    return _cell(value)


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s"


def cmd_query(args: argparse.Namespace) -> int:
    """`cmtwin query SQL`: print the rows of one read-only query."""
    import csv

    from cmtwin.store.query import run_readonly_query

    # --timeout, --max-rows and --max-bytes are checked by run_readonly_query (the TUI calls it too)
    result = run_readonly_query(args.db, args.sql, timeout_s=args.timeout, max_rows=args.max_rows,
                                max_bytes=args.max_bytes, allow_superuser=args.allow_superuser)
    if args.format == "json":
        _print_json([dict(zip(result.columns, row)) for row in result.rows])
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        from rich.table import Table

        table = Table(*result.columns, show_edge=False)
        for row in result.rows:
            table.add_row(*(_cell(v) for v in row))
        console = _console()
        console.print(table)
        console.print(f"{len(result.rows)} row(s)", style="dim")
    if result.truncated:
        print(f"note: only the first {args.max_rows} rows are shown; pass --max-rows or narrow the query",
              file=sys.stderr)
    return 0


def _run_id(store: Any, text: str) -> int:
    from cmtwin.store.repo import list_runs

    if text == "last":
        latest = list_runs(store, limit=1)
        if not latest:
            raise StoreError("there are no runs yet; record one, e.g. `cmtwin plan +deployment=r1_ep320`")
        return latest[0].id
    try:
        run_id = int(text)
    except ValueError:
        raise StoreError(
            f"RUN must be a run id or 'last', not {text[:40]!r}; `cmtwin runs ls` lists the runs", key="RUN"
        ) from None
    if not 1 <= run_id <= MAX_COUNT:
        raise StoreError(
            f"RUN {text[:40]} is not a run id: run ids are whole numbers from 1 to {MAX_COUNT:,}.",
            key="RUN", fix="pass an id that `cmtwin runs ls` lists, or 'last'",
        )
    return run_id


def cmd_runs_ls(args: argparse.Namespace) -> int:
    """`cmtwin runs ls`: the newest runs, one line each, with their key figures (the TUI's runs table: decode tokens/s
    per device, TPOT and TTFT, whichever the verb stored); every metric with `runs show` or --format json."""
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import list_runs

    _count_option("--limit", args.limit, "50")
    runs = list_runs(open_store(args.db, create=False), limit=args.limit, verb=args.verb, status=args.status,
                     sweep=args.sweep)
    if args.format == "json":
        _print_json(runs)
        return 0
    from cmtwin.cli.common import compact_table
    from cmtwin.tui.data import STATUS_MARK, TOKENS_METRICS, TPOT_METRICS, TTFT_METRICS, fmt_num, key_metric

    swept = not args.sweep and any(r.sweep for r in runs)  # --sweep: the column would repeat its argument
    styles = {"ok": "green", "failed": "red", "running": "cyan", "interrupted": "yellow", "cancelled": "yellow"}
    rows = [(str(r.id), r.verb, r.deployment or "", f"{STATUS_MARK[r.status]} {r.status}",
             fmt_num(key_metric(r.metrics, TOKENS_METRICS)), fmt_num(key_metric(r.metrics, TPOT_METRICS)),
             fmt_num(key_metric(r.metrics, TTFT_METRICS)), _seconds(r.duration_s),
             r.started_at.strftime("%m-%d %H:%M"), *((r.sweep or "",) if swept else ())) for r in runs]
    headers = ("id", "verb", "deployment", "status", "tok/s/dev", "TPOT ms", "TTFT ms", "duration", "started",
               *(("sweep",) if swept else ()))
    widths = [max(len(h), *(len(row[k]) for row in rows)) if rows else len(h) for k, h in enumerate(headers)]
    console = _console()
    keep = list(range(len(headers)))
    for k in (9, 8, 6, 7):  # too wide for the terminal: leave out the sweep, start, TTFT and duration, in that order
        if sum(widths[i] + 2 for i in keep) - 1 <= console.width:
            break
        if k in keep:
            keep.remove(k)
    table = compact_table()
    for k in keep:
        # the figures keep their width; on a narrow terminal the deployment's name is cut with an ellipsis
        table.add_column(headers[k], justify="right" if k == 0 or 4 <= k <= 7 else "left", no_wrap=True,
                         overflow="ellipsis", min_width=widths[k] if k != 2 else min(widths[k], 8))
    for row, r in zip(rows, runs):
        cells = (*row[:3], f"[{styles[r.status]}]{row[3]}[/]", *row[4:])
        table.add_row(*(cells[k] for k in keep))
    console.print(table if runs else "no runs recorded yet")
    if runs:
        console.print(f"{'started in UTC; ' if 8 in keep else ''}every metric of a run: `cmtwin runs show ID`",
                      style="dim")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    """`cmtwin runs show RUN`: one run's fields, overrides, metrics and artifacts (all of it with --format json)."""
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run

    store = open_store(args.db, create=False)
    run = get_run(store, _run_id(store, args.run))
    if args.format == "json":
        _print_json(run)
        return 0
    from rich.table import Table

    fields = Table(show_header=False, show_edge=False, box=None)
    for name, value in (
        ("run", run.id), ("verb", run.verb), ("deployment", run.deployment), ("status", run.status),
        ("message", run.message), ("started (UTC)", _when(run.started_at)),
        ("finished (UTC)", _when(run.finished_at)), ("duration", _seconds(run.duration_s)),
        ("plan hash", run.plan_hash), ("overrides", " ".join(run.overrides)),
        ("software", f"cmtwin {run.software_version}"), ("host / pid", f"{run.host} / {run.pid}"),
        ("output dir", run.output_dir),
        ("plan", "stored" if run.plan is not None else "none"),
        ("prediction", "stored" if run.prediction is not None else "none"),
    ):
        fields.add_row(f"[bold]{name}[/]", _cell(value) if value not in (None, "") else "")
    console = _console()
    console.print(fields)
    if run.metrics:
        metrics = Table(show_edge=False)
        metrics.add_column("metric", no_wrap=True)
        metrics.add_column("value", justify="right")
        for name, value in run.metrics.items():
            metrics.add_row(name, _figure(value))
        console.print(metrics)
    for artifact in run.artifacts:
        console.print(f"{artifact.kind}: {artifact.path}")
    return 0


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted.key: leaf}; lists are leaves."""
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


_MISSING = "<absent>"


def cmd_runs_diff(args: argparse.Namespace) -> int:
    """`cmtwin runs diff A B`: config keys (dotted) and metrics whose values differ between two runs."""
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run

    store = open_store(args.db, create=False)
    a, b = (get_run(store, _run_id(store, x)) for x in (args.a, args.b))
    left, right = (
        {"verb": r.verb, "deployment": r.deployment, "plan_hash": r.plan_hash, "overrides": " ".join(r.overrides),
         **flatten(r.config or {}, "config")}
        for r in (a, b)
    )
    config = [
        (key, left.get(key, _MISSING), right.get(key, _MISSING))
        for key in sorted(left.keys() | right.keys())
        if left.get(key, _MISSING) != right.get(key, _MISSING)
    ]
    metrics = []
    for name in sorted(a.metrics.keys() | b.metrics.keys()):
        va, vb = a.metrics.get(name), b.metrics.get(name)
        if va != vb:
            delta = vb - va if va is not None and vb is not None else None
            ratio = vb / va if delta is not None and va != 0 else None
            metrics.append((name, va, vb, delta, ratio))
    if args.format == "json":
        _print_json({
            "a": a.id, "b": b.id,
            "config": [{"key": k, "a": va, "b": vb} for k, va, vb in config],
            "metrics": [{"name": n, "a": va, "b": vb, "delta": d, "ratio": r} for n, va, vb, d, r in metrics],
        })
        return 0
    from rich.table import Table

    console = _console()
    if not config and not metrics:
        console.print(f"runs {a.id} and {b.id} have the same config and metrics")
        return 0
    if config:
        table = Table(show_edge=False)
        table.add_column("key", no_wrap=True)
        table.add_column(f"run {a.id}", overflow="fold")
        table.add_column(f"run {b.id}", overflow="fold")
        for key, va, vb in config:
            table.add_row(key, _cell(va), _cell(vb))
        console.print(table)
    if metrics:
        table = Table(show_edge=False)
        table.add_column("metric", no_wrap=True)
        for header in (f"run {a.id}", f"run {b.id}", "B - A", "B / A"):
            table.add_column(header, justify="right")
        for name, va, vb, delta, ratio in metrics:
            table.add_row(name, _cell(va), _cell(vb), _cell(delta), "" if ratio is None else f"{ratio:.3f}x")
        console.print(table)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """`cmtwin db upgrade`: back up (SQLite) and upgrade the store's schema to head."""
    from cmtwin.store.engine import display_url, normalize_url, resolve_url, upgrade_store

    where = display_url(normalize_url(resolve_url(args.db)))
    result = upgrade_store(args.db)
    if result.from_revision == result.to_revision:
        print(f"{where} is already at schema revision {result.to_revision} (head)")
        return 0
    print(f"upgraded {where} from schema revision {result.from_revision or 'none'} to {result.to_revision}")
    if result.backup is not None:
        print(f"backup: {result.backup}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    """`cmtwin db current`: the store's schema revision and how it compares with this cmtwin's head."""
    from cmtwin.store.engine import HEAD_REVISION, current_revision, display_url, normalize_url, resolve_url

    where = display_url(normalize_url(resolve_url(args.db)))
    state, revision = current_revision(args.db)
    explain = {
        "missing": "no database yet; the first recorded run creates it",
        "empty": "empty database; the first recorded run creates the schema",
        "unmanaged": "has tables but no alembic_version: not a cmtwin store",
        "unstamped": "has cmtwin's tables but an empty alembic_version: restore it from a backup",
        "head": "up to date",
        "older": "older than this cmtwin; run `cmtwin db upgrade`",
        "newer": "newer than this cmtwin; upgrade cmtwin: pip install -U cmtwin",
    }[state]
    print(f"{where}: schema revision {revision or 'none'} (head {HEAD_REVISION}): {explain}")
    return 0


def cmd_db_create_query_role(args: argparse.Namespace) -> int:
    """`cmtwin db create-query-role`: a read-only PostgreSQL role for `cmtwin query`, with the SQL shown."""
    from cmtwin.store.roles import create_query_role

    result = create_query_role(args.db, args.role)
    print("-- " + ("created" if result.created else "refreshed the grants of") + f" role {result.role}:")
    for statement in result.statements:
        print(statement + ";")
    print(f"-- query as it (set a password with \\password {result.role} in psql if the server asks for one):")
    print(f'cmtwin query --db "{result.query_url}" "SELECT id, verb, status FROM runs"')
    return 0
