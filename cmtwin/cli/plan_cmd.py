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
    whatif = _failure_whatif(spec, plan, prediction) if spec.failures.any else None
    if whatif is not None:
        out["prediction"]["failures"] = whatif
    out_file = _open_out(args.out) if args.out else None  # a bad path fails before anything is recorded
    run_id = None
    if not args.no_record:
        run_id = record_plan(args.db or spec.store.url, spec, composed, plan, prediction, started=started,
                             plan_dict=plan_dict, prediction_dict=out["prediction"])
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
        if whatif is not None:
            _render_whatif(whatif)
    return 0


def record_plan(url, spec, composed, plan, prediction, *, started, plan_dict=None, prediction_dict=None) -> int:
    """Record one plan run (verb plan, status ok) with its plan, prediction and metrics in the store at `url`;
    returns its id. SQLAlchemy is imported only where sqlite3 alone cannot write it (cmtwin/store/direct.py)."""
    from cmtwin.store.direct import record_finished_run

    return record_finished_run(
        url, verb="plan", deployment=spec.deployment.name, plan_hash=plan.plan_hash,
        overrides=list(composed.overrides), config=composed.config, status="ok", started_at=started,
        finished_at=datetime.now(timezone.utc), plan=plan_dict or plan.to_dict(),
        prediction=prediction_dict or prediction.to_dict(), metrics=prediction.metrics())


def _failure_whatif(spec, plan, prediction) -> dict:
    """The same deployment without the failures, beside this one: figures, bottleneck and blast radius."""
    from cmtwin.planner.failures import blast_radius, fabric_loss
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    healthy_spec = spec.model_copy(update={"failures": spec.failures.healed()})
    healthy_plan = compile_plan(healthy_spec)
    healthy = predict(healthy_spec, healthy_plan)

    def figures(pred) -> dict:
        d, p = pred.decode, pred.prefill
        return {"decode_tokens_per_s_per_device": d.tokens_per_s_per_device if d else None,
                "tpot_ms": d.tpot_ms if d else None,
                "prefill_tokens_per_s_per_device": p.tokens_per_s_per_device if p else None,
                "ttft_ms": p.ttft_ms if p else None, "bottleneck": pred.bottleneck}

    def placed(pl) -> dict:
        return {r.die: (r.role, r.instance, r.rank) for r in pl.dies}

    before, after = placed(healthy_plan), placed(plan)
    moved = sorted(d for d in before if d not in after) if spec.failures.policy == "replan" else []
    f = spec.failures
    return {"policy": f.policy, "dies": list(f.dies), "devices": list(f.devices), "switches": list(f.switches),
            "links_slowed": fabric_loss(healthy_spec, spec, plan),
            "planes": list(f.planes), "links": list(f.links),
            "healthy": figures(healthy), "failed": figures(prediction), "blast_radius": blast_radius(plan),
            "dies_vacated": moved, "dies_taken_over": sorted(d for d in after if d not in before)}


def _render_whatif(w: dict) -> None:
    from rich.table import Table

    from cmtwin.cli.common import console

    t = Table(title=f"Failure what-if (failures.policy={w['policy']}): "
                    + ", ".join(w["dies"] + w["devices"] + w["switches"] + w["planes"] + w["links"]), title_justify="left")
    for col in ("", "healthy", "with the failures", "change"):
        t.add_column(col, justify="left" if not col else "right")
    for key, label in (("decode_tokens_per_s_per_device", "decode tokens/s/device"), ("tpot_ms", "TPOT ms"),
                       ("prefill_tokens_per_s_per_device", "prefill tokens/s/device"), ("ttft_ms", "TTFT ms")):
        a, b = w["healthy"][key], w["failed"][key]
        if a is None:
            continue
        t.add_row(label, f"{a:,.2f}", f"{b:,.2f}", f"{(b - a) / a:+.1%}" if a else "")
    c = console()
    c.print(t)
    for pool, hit in w["blast_radius"].items():
        lost = hit["experts_lost"]
        c.print(f"{pool}: ranks {hit['ranks_down']} down, {hit['groups_down']} of {hit['groups']} attention groups "
                f"serve nothing, " + (f"experts {lost} lost (no replica left: their tokens are dropped)" if lost
                                      else "every expert still placed (EPLB re-placement on the survivors)"))
    if w["dies_vacated"]:
        c.print(f"replanned: {len(w['dies_vacated'])} dies vacated, {len(w['dies_taken_over'])} spare dies taken "
                f"over ({', '.join(w['dies_taken_over'][:4])}{' ...' if len(w['dies_taken_over']) > 4 else ''})")
    for plane, hit in w["links_slowed"].items():
        if hit["dies"]:
            c.print(f"{plane}: {hit['dies']} dies the plan uses lost links or switches on this plane (e.g. "
                    f"{', '.join(hit['examples'])}): they inject {hit['worst_fraction']:.0%} of their bandwidth at "
                    f"worst, and each collective they join waits for them")
        if hit["nodes_uplink_cut"]:
            c.print(f"{plane}: {hit['nodes_uplink_cut']} nodes keep {hit['uplink_fraction']:.0%} of their uplink at "
                    f"worst: off-node traffic of every group there shares what is left")
    c.print(f"bottleneck with the failures: {w['failed']['bottleneck']}")


def _open_out(path: str):
    """Open --out for writing now, so an unwritable path is bad input before the run is recorded."""
    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        from cmtwin.errors import CmtwinError

        raise CmtwinError(f"--out {path}: cannot write the file ({exc.strerror}).", key="--out",
                          fix="give a writable file path") from None
