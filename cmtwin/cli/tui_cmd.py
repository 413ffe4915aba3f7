"""`cmtwin tui`: the live monitor and history browser (Textual, imported only when the verb runs)."""

from __future__ import annotations

import argparse

from cmtwin.errors import StoreError

_TABS = ("plan", "supernode", "prediction", "live", "timeline")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cmtwin tui` to the parser."""
    p = subparsers.add_parser(
        "tui",
        help="live monitor and history browser (read-only)",
        description="A terminal UI over the run store: the runs (refreshed while any is running), one run's "
        "plan, supernode map, prediction, live metrics and timeline, two runs compared, read-only SQL. "
        "It never writes to the store. Press ? inside for the keys.",
        epilog="Example: cmtwin tui last --tab live",
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="open this run (an id, or 'last')")
    p.add_argument("--db", metavar="URL",
                   help="database URL (default: $CMTWIN_DB_URL, else sqlite:///cmtwin.db in the current directory)")
    p.add_argument("--tab", choices=_TABS, default="plan", help="the tab RUN opens on (plan)")
    p.add_argument("--poll", type=float, default=1.0, metavar="S", help="refresh period in seconds while runs are active (1)")
    p.set_defaults(func=cmd_tui)


def _run_id(text: str | None, source) -> int | None:
    if text is None:
        return None
    if text == "last":
        runs = source.list_runs()
        if not runs:
            raise StoreError("there are no runs yet; record one first, e.g. `cmtwin plan +deployment=r1_ep320`")
        return runs[0].id
    try:
        run_id = int(text)
    except ValueError:
        raise StoreError(f"RUN must be a run id or 'last', not {text!r}; `cmtwin runs ls` lists them") from None
    source.get_run(run_id)  # StoreError (exit 2) if there is no such run
    return run_id


def cmd_tui(args: argparse.Namespace) -> int:
    from cmtwin.tui.data import store_source

    if args.poll <= 0:
        raise StoreError(f"--poll must be a positive number of seconds, not {args.poll:g}")
    source = store_source(args.db)
    run_id = _run_id(args.run, source)
    from cmtwin.tui.app import create_app

    create_app(run_id=run_id, tab=args.tab, poll_s=args.poll, source=source).run()
    return 0
