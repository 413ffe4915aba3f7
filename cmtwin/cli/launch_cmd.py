"""`cmtwin export launch`: a plan or a search candidate as an engine's launch material (SGLang, vLLM,
TensorRT-LLM, vLLM-Ascend). `cmtwin import launch`: launch commands of those engines back into a deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

from cmtwin.cli.common import add_db
from cmtwin.launch.engine import ENGINES


def add_export(what: argparse._SubParsersAction) -> None:
    p = what.add_parser("launch", help="write an engine's launch commands for a plan or a search candidate")
    p.add_argument("source", nargs="*", metavar="RUN_OR_OVERRIDE",
                   help="a run id (a plan run, or a search run with --candidate) or 'last', or Hydra overrides "
                        "such as +deployment=r1_h200_disagg")
    p.add_argument("--engine", required=True, choices=ENGINES)
    p.add_argument("--candidate", type=int, metavar="N",
                   help="a search run's candidate (its # column; default: the best of the frontier)")
    p.add_argument("--out", metavar="DIR", help="default: launch/<deployment>-<engine>")
    p.add_argument("--nearest", action="store_true",
                   help="when the engine cannot express the plan, export the nearest plan it can (and say so)")
    add_db(p)
    p.set_defaults(func=_export)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="read an engine's launch commands into a deployment")
    what = p.add_subparsers(dest="import_what", metavar="{launch}")
    what.required = True
    i = what.add_parser("launch", help="launch scripts, their directory, or a quoted command -> "
                                       "./cmtwin_conf/deployment/NAME.yaml")
    i.add_argument("items", nargs="+", metavar="FILE_OR_COMMAND")
    i.add_argument("--engine", choices=ENGINES, help="default: recognised from the command")
    i.add_argument("--name", help="deployment name (default: the exported one's, else 'imported')")
    i.add_argument("--hardware", help="hardware profile the commands run on (when they carry no cmtwin context)")
    i.add_argument("--nodes", type=int, help="nodes of the topology (default: what the commands use)")
    i.add_argument("--workload", help="workload option (default: chat_1k)")
    i.set_defaults(func=_import)


def _run_overrides(args) -> tuple[list[str], str]:
    """The overrides of RUN (a plan run, or a search run's candidate), or the overrides given; and a label for the
    output folder ('' or '-c<candidate>')."""
    src = args.source
    if not src or not (src[0].isdigit() or src[0] == "last"):
        return list(src), ""
    from cmtwin.config.compose import load_spec
    from cmtwin.errors import CmtwinError
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run, list_runs

    store = open_store(args.db or load_spec([], require_deployment=False)[0].store.url)
    if src[0] == "last":
        runs = list_runs(store, limit=1)
        if not runs:
            raise CmtwinError("the store has no run yet.", key="RUN", fix="run `cmtwin plan +deployment=...` first")
        run_id = runs[0].id
    else:
        run_id = int(src[0])
    run = get_run(store, run_id)
    overrides = list(run.overrides) + list(src[1:])
    if run.verb == "search":
        front = (run.prediction or {}).get("frontier") or []
        pool = front + ((run.prediction or {}).get("best_per_layout") or [])
        pick = front[0] if args.candidate is None and front else next(
            (c for c in pool if c["index"] == args.candidate), None)
        if pick is None:
            raise CmtwinError(f"search run {run_id} stored no candidate #{args.candidate} (it keeps the frontier and "
                              "the best per layout).", key="--candidate",
                              fix="pick a # from the tables `cmtwin search` printed, or leave --candidate out")
        overrides += pick["overrides"]
        return overrides, f"-c{pick['index']}"
    if args.candidate is not None:
        raise CmtwinError(f"--candidate applies to a search run; run {run_id} is a {run.verb} run.", key="--candidate",
                          fix="drop --candidate, or give a search run's id")
    return overrides, ""


def _export(args) -> int:
    from cmtwin.cli.common import say
    from cmtwin.launch.export import export_launch

    from cmtwin.config.compose import load_spec

    overrides, label = _run_overrides(args)
    name = load_spec(overrides)[0].deployment.name or "plan"
    out = Path(args.out or f"launch/{name}{label}-{args.engine}")
    res = export_launch(overrides, args.engine, out, nearest=args.nearest)
    if res.nearest:
        say(f"{args.engine} cannot express the plan as given (" + "; ".join(res.refused) + "); exported the nearest "
            "plan: " + " ".join(res.nearest))
    say(f"wrote {len(res.written)} files to {out}/ (start with {out}/README.md)")
    for p in res.written:
        print(p)
    return 0


def _import(args) -> int:
    from cmtwin.cli.common import say
    from cmtwin.launch.importer import import_launch, write_deployment

    imp = import_launch(args.items, engine=args.engine, name=args.name, hardware=args.hardware, nodes=args.nodes,
                        workload=args.workload)
    path = write_deployment(imp)
    if imp.unknown:
        say(f"flags {imp.engine} knows but cmtwin does not model, or {imp.engine} does not know: " + " ".join(imp.unknown))
    if imp.skipped:
        say("not engine processes (skipped): " + "; ".join(imp.skipped))
    print(path)
    say(f"predict it: cmtwin plan +deployment={imp.name}")
    return 0

