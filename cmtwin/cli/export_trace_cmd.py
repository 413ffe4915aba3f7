"""`cmtwin export-trace RUN`: an executor run's timeline as Chrome/Perfetto trace JSON."""

from __future__ import annotations

import argparse
import sys

from cmtwin.cli.common import add_db


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-trace", help="write an execute run's timeline as Chrome/Perfetto trace JSON")
    p.add_argument("run_id", type=int, metavar="RUN", help="run id of a `cmtwin execute` run")
    p.add_argument("--out", metavar="FILE", help="default: run<RUN>.trace.json")
    add_db(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.executor.trace import write_trace
    from cmtwin.store.engine import open_store

    url = args.db or load_spec([], require_deployment=False)[0].store.url
    path = args.out or f"run{args.run_id}.trace.json"
    n = write_trace(open_store(url), args.run_id, path)
    print(f"wrote {path} ({n} events; open in ui.perfetto.dev or chrome://tracing)", file=sys.stderr)
    return 0
