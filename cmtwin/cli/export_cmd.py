"""`cmtwin export topology`: the fabric graph as GraphML or node-link JSON.
`cmtwin export trace RUN`: an executor run's timeline as Chrome/Perfetto trace JSON."""

from __future__ import annotations

import argparse
import sys

from cmtwin.cli.common import add_db


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a topology graph or an execute run's trace")
    what = p.add_subparsers(dest="export_what", metavar="{topology,trace}")
    what.required = True
    t = what.add_parser("topology", help="write the topology graph as GraphML or JSON")
    t.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides selecting the topology")
    t.add_argument("--format", choices=("graphml", "json"), default="json")
    t.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    t.set_defaults(func=_topology)
    tr = what.add_parser("trace", help="write an execute run's timeline as Chrome/Perfetto trace JSON")
    tr.add_argument("run_id", type=int, metavar="RUN", help="run id of a `cmtwin execute` run")
    tr.add_argument("--out", metavar="FILE", help="default: run<RUN>.trace.json")
    add_db(tr)
    tr.set_defaults(func=_trace)


def _topology(args) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.topology.export import export_topology
    from cmtwin.planner.plan import fabric_for

    spec, _ = load_spec(args.overrides, require_deployment=False)
    text = export_topology(fabric_for(spec), args.format)
    if args.out:
        from pathlib import Path

        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            from cmtwin.errors import CmtwinError

            raise CmtwinError(f"--out {args.out}: cannot write the file ({exc.strerror}).", key="--out",
                              fix="give a writable file path") from None
        print(f"wrote {args.out} ({spec.topology.name}, {args.format})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _trace(args) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.executor.trace import write_trace
    from cmtwin.store.engine import open_store

    url = args.db or load_spec([], require_deployment=False)[0].store.url
    path = args.out or f"run{args.run_id}.trace.json"
    n = write_trace(open_store(url), args.run_id, path)
    print(f"wrote {path} ({n} events; open in ui.perfetto.dev or chrome://tracing)", file=sys.stderr)
    return 0
