"""`cmtwin export topology`: the fabric graph as GraphML or node-link JSON.
`cmtwin export trace RUN`: an executor run's timeline as Chrome/Perfetto trace JSON.
`cmtwin export launch`: an engine's launch material (cmtwin/cli/launch_cmd.py)."""

from __future__ import annotations

import argparse
import sys

from cmtwin.cli.common import add_db


def register(sub: argparse._SubParsersAction) -> None:
    from cmtwin.cli.launch_cmd import add_export

    p = sub.add_parser("export", help="export a topology graph, an execute run's trace, or an engine's launch files")
    what = p.add_subparsers(dest="export_what", metavar="{topology,trace,launch}")
    what.required = True
    t = what.add_parser("topology", help="write the topology graph as GraphML or JSON")
    t.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides selecting the topology")
    t.add_argument("--format", choices=("graphml", "json"), default="json")
    t.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    t.set_defaults(func=_topology)
    tr = what.add_parser("trace", help="write an execute run's timeline as Chrome/Perfetto trace JSON")
    tr.add_argument("run_id", metavar="RUN", help="run id of a `cmtwin execute` run, or 'last' for the newest one")
    tr.add_argument("--out", metavar="FILE", help="default: run<ID>.trace.json")
    add_db(tr)
    tr.set_defaults(func=_trace)
    add_export(what)


def _topology(args) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.topology.export import export_topology
    from cmtwin.topology.fabric import fabric_for

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
    from cmtwin.store.engine import open_store

    url = args.db or load_spec([], require_deployment=False)[0].store.url
    store = open_store(url)
    run_id = _execute_run_id(store, args.run_id)
    path = args.out or f"run{run_id}.trace.json"
    n = _write_trace(store, run_id, path)
    print(f"wrote {path} ({n} events; open in ui.perfetto.dev or chrome://tracing)", file=sys.stderr)
    return 0


def _execute_run_id(store, text: str) -> int:
    """RUN as typed: an id, or 'last' for the newest `cmtwin execute` run (the only verb with a timeline)."""
    from cmtwin.errors import CmtwinError
    from cmtwin.store.repo import list_runs

    if text == "last":
        runs = list_runs(store, limit=1, verb="execute")
        if not runs:
            raise CmtwinError("there is no `cmtwin execute` run in this store yet, so there is no timeline to "
                              "export.", key="RUN",
                              fix="run one first, e.g. `cmtwin execute +deployment=r1_ep320 executor.scale=0.02`")
        return runs[0].id
    try:
        return int(text)
    except ValueError:
        raise CmtwinError(f"RUN must be a run id or 'last', not {text!r}.", key="RUN",
                          fix="`cmtwin runs ls` lists the runs; pick an execute run's id") from None


def _write_trace(store, run_id: int, path) -> int:
    """Write run_id's timeline to path; returns the number of events. A run without a timeline is bad input."""
    import json

    from cmtwin.errors import CmtwinError
    from cmtwin.executor.trace import trace_dict
    from cmtwin.store.repo import get_timeline

    events = get_timeline(store, run_id)
    if not events:
        raise CmtwinError(f"run {run_id} has no executor timeline; `cmtwin execute` records one.", key="RUN")
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(trace_dict(events), f)
    except OSError as exc:
        raise CmtwinError(f"--out {path}: cannot write the file ({exc.strerror}).", key="--out",
                          fix="give a writable file path") from None
    return len(events)
