"""`cmtwin execute`: run the plan's real kernels on the local device, twin-timed communication, numerics check."""

from __future__ import annotations

import argparse

from cmtwin.cli.common import add_db, add_format, add_overrides, print_json, progress_bar, say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("execute", help="run the plan's real kernels locally and compare with the twin",
                       description="Build the per-rank computation of the plan's layers in PyTorch (seeded random "
                                   "weights, executor.scale shrinks the shapes), run a decode step and a prefill "
                                   "chunk with real data movement between ranks, check the result against a "
                                   "single-device reference, charge communication from the twin's topology model, "
                                   "record the timeline and print measured vs predicted per operator.")
    add_overrides(p)
    add_format(p)
    add_db(p)
    p.add_argument("--no-record", action="store_true", help="do not record the run in the store")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan

    spec, composed = load_spec(args.overrides)
    plan = compile_plan(spec)
    from cmtwin.executor import budget
    from cmtwin.executor.api import execute, prediction_choice, profile_note
    from cmtwin.executor.run import pick_device, set_threads

    device = pick_device(spec.executor.device)
    set_threads(spec.executor, device)
    hw, why = prediction_choice(spec, device)  # an unknown executor.profile is refused before any estimate
    est = budget.check_execute(spec, plan, device)  # refuses at once what will not fit
    say(f"[dim]{est.memory_line()}[/]")
    est.seconds, est.time_basis = budget.execute_pilot(spec, plan, device)
    say(f"[dim]{est.time_line()}[/]")
    note = profile_note(hw, why, device)
    if note["warning"]:
        say(f"[yellow]warning:[/] {note['warning']}")

    import contextlib

    store = run_id = None
    lifecycle = contextlib.nullcontext()
    if not args.no_record:
        from cmtwin.store.engine import open_store
        from cmtwin.store.repo import run_lifecycle, start_run

        store = open_store(args.db or spec.store.url)
        run_id = start_run(store, verb="execute", deployment=spec.deployment.name, plan_hash=plan.plan_hash,
                           overrides=list(composed.overrides), config=composed.config)
        lifecycle = run_lifecycle(store, run_id)
    from cmtwin.executor.run import TOL

    tol = TOL[spec.executor.dtype]
    bar, progress = progress_bar()
    with lifecycle:
        with bar:
            res = execute(spec, plan=plan, progress=progress)
        err = res.max_rel_err
        ok = err is None or err <= tol
        metrics = {"wall_s": res.wall_s}
        if err is not None:
            metrics["max_rel_err"] = err
        for ph, d in res.per_layer().items():
            metrics[f"{ph}_layer_measured_us"] = d["measured_us"]
            metrics[f"{ph}_layer_predicted_us"] = d["predicted_us"]
        if store is not None:
            from cmtwin.store.repo import add_timeline, finish_run, set_metrics

            add_timeline(store, run_id, res.timeline)
            set_metrics(store, run_id, metrics)
            if not ok:
                finish_run(store, run_id, "failed", f"numerics: max rel err {err:.3g} > {tol:g}")
    verdict = "skipped" if err is None else (f"{'ok' if ok else 'FAILED'}, max rel err {err:.2g}")
    estimate = {**est.to_dict(), "measured_peak_bytes": est.measured_peak(device)}
    out = {"run_id": run_id, "device": res.device, "profile": res.profile, "prediction_profile": res.profile_note,
           "wall_s": round(res.wall_s, 3), "numerics": verdict, "max_rel_err": err, "estimate": estimate,
           "per_layer": res.per_layer(), "ops": res.per_op(),
           "phases": [{"phase": p.phase, "ranks": p.ranks, "tokens": p.tokens, "near_ties": p.ties}
                      for p in res.phases]}
    if args.format == "json":
        print_json(out)
    else:
        _render(spec, out)
    return 0 if ok else 1


def _render(spec, out) -> None:
    from rich.table import Table

    from cmtwin.cli.common import console

    c = console()
    ex = spec.executor
    note = out["prediction_profile"]
    how = {"calibrated": "calibrated on this device", "executor.profile": "chosen with executor.profile",
           "deployment": "the deployment's hardware, NOT this device"}[note["chosen_by"]]
    c.print(f"[bold]execute[/] {spec.deployment.name}: {ex.layers} layers, scale {ex.scale:g}, {ex.dtype} on "
            f"{out['device']}, predictions from profile {out['profile']} ({how})"
            + (f"  (run {out['run_id']})" if out["run_id"] else ""))
    for p in out["phases"]:
        c.print(f"  {p['phase']}: {p['ranks']} ranks, {p['tokens']} tokens"
                + (f", {p['near_ties']} near-tie routing choices adopted" if p["near_ties"] else ""))
    t = Table(title="per operator: mean per rank and layer (comm: twin-modelled)")
    for col in ("phase", "op", "kind", "measured us", "predicted us", "pred/meas"):
        t.add_column(col, justify="right" if "us" in col or "/" in col else "left", no_wrap=True)
    for r in out["ops"]:
        k = r["n"] or 1
        m, pr = r["measured_us"] / k, r["predicted_us"] / k
        t.add_row(r["phase"], r["op"], r["kind"], f"{m:.1f}", f"{pr:.1f}", f"{pr / m:.2f}" if m else "-")
    c.print(t)
    for ph, d in out["per_layer"].items():
        e = d["rel_err"]
        c.print(f"  {ph} layer compute per rank: measured {d['measured_us']:.1f} us, predicted "
                f"{d['predicted_us']:.1f} us ({e:+.1%})" if e is not None else f"  {ph}: no compute measured")
    c.print(f"numerics: {out['numerics']}")
    e = out["estimate"]
    from cmtwin.executor.budget import fmt

    grew = e["measured_peak_bytes"]
    c.print(f"wall {out['wall_s']:.2f} s (estimated {e['seconds']:.0f} s); memory: estimated {fmt(e['peak_bytes'])}"
            + (f", peak resident growth {fmt(grew)}" if grew is not None else ""))
    if note["warning"]:
        c.print(f"[yellow]warning:[/] {note['warning']}")
