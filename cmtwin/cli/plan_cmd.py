"""`cmtwin plan`: compose + validate -> compile -> predict -> record a run -> print."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from cmtwin.cli.common import add_db, add_format, add_overrides, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="compile a deployment into a plan, predict it, record the run",
                       description="Compile a deployment into a plan (roles, ranks, expert placement, memory per "
                                   "die), predict its performance with the twin, and record the run.")
    add_overrides(p, sweep=True)
    add_format(p)
    add_db(p)
    p.add_argument("--out", metavar="FILE", help="also write the plan (and prediction) as JSON to FILE")
    p.add_argument("--no-record", action="store_true", help="do not record the run in the store")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    spec, composed = load_spec(args.overrides)
    plan = compile_plan(spec)
    from cmtwin.twin.predict import predict

    prediction = predict(spec, plan)
    plan_dict = plan.to_dict()
    out = {"plan_hash": plan.plan_hash, "plan": plan_dict, "prediction": prediction.to_dict()}
    out_file = _open_out(args.out) if args.out else None  # a bad path fails before anything is recorded
    run_id = None
    if not args.no_record:
        from cmtwin.store.engine import open_store
        from cmtwin.store.repo import record_run

        store = open_store(args.db or spec.store.url)
        run_id = record_run(
            store, verb="plan", deployment=spec.deployment.name, plan_hash=plan.plan_hash,
            overrides=list(composed.overrides), config=composed.config, status="ok", started_at=started,
            finished_at=datetime.now(timezone.utc), plan=plan_dict, prediction=out["prediction"],
            metrics=prediction.metrics())
    out = {"run_id": run_id, **out}
    if out_file is not None:
        import json

        with out_file:
            out_file.write(json.dumps(out, indent=2, default=str) + "\n")
    if args.format == "json":
        print_json(out)
    else:
        from cmtwin.cli.render import render_plan

        render_plan(spec, plan, prediction, run_id=run_id, elapsed_s=time.perf_counter() - t0)
    return 0


def _open_out(path: str):
    """Open --out for writing now, so an unwritable path is bad input before the run is recorded."""
    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        from cmtwin.errors import CmtwinError

        raise CmtwinError(f"--out {path}: cannot write the file ({exc.strerror}).", key="--out",
                          fix="give a writable file path") from None
