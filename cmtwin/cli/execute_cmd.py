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
    p.add_argument("--compare", action="store_true",
                   help="print the twin's predicted layer and operator times beside the measured ones for the "
                        "deployment's shipped profile and this device's calibrated one (local_<device>, from "
                        "`cmtwin calibrate`), with the error of each; stored with the run (metrics compare.*)")
    p.add_argument("--measurement", metavar="FILE",
                   help="with --compare: also write the measurement (measured operator events, graphed segments, "
                        "the executed operators' shapes) as JSON, which cmtwin.executor.compare.replay re-predicts "
                        "on any machine (benchmarks/gpu_check.py stores it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan

    spec, composed = load_spec(args.overrides)
    if args.measurement and not args.compare:
        from cmtwin.errors import CmtwinError

        raise CmtwinError("--measurement writes what --compare compares; it needs --compare.", key="--measurement",
                          fix="add --compare")
    if args.compare and spec.executor.processes > 1:
        from cmtwin.errors import CmtwinError

        raise CmtwinError(f"--compare re-predicts each rank's operators at the loads that rank saw, which the worker "
                          f"processes of executor.processes={spec.executor.processes} do not hand back.",
                          key="executor.processes", fix="run --compare with executor.processes=1")
    plan = compile_plan(spec)
    from cmtwin.executor import budget, timing
    from cmtwin.executor.api import execute, prediction_choice, profile_note
    from cmtwin.executor.run import pick_device, set_threads

    device = pick_device(spec.executor.device, spec.executor.dtype)
    set_threads(spec.executor, device)
    hw, why = prediction_choice(spec, device)  # an unknown executor.profile is refused before any estimate
    clock = timing.clock_for(spec.executor, device)  # executor.timing=graph on a CPU is refused here
    profiles = None
    if args.compare:
        from cmtwin.executor.compare import profiles_for

        profiles = profiles_for(spec, device, chosen=hw)
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
            res = execute(spec, plan=plan, progress=progress, clock=clock)
        err = res.max_rel_err
        ok = err is None or err <= tol
        metrics = {"wall_s": res.wall_s}
        if err is not None:
            metrics["max_rel_err"] = err
        for ph, d in res.per_layer().items():
            metrics[f"{ph}_layer_measured_us"] = d["measured_us"]
            metrics[f"{ph}_layer_predicted_us"] = d["predicted_us"]
            if d.get("graph_us") is not None:
                metrics[f"{ph}_layer_graph_us"] = d["graph_us"]
        summary = None
        if profiles is not None:
            from cmtwin.executor.compare import compare, measurement_of, metrics_of

            measurement = measurement_of(res)
            summary = compare(measurement, profiles)
            metrics.update(metrics_of(summary))
            if args.measurement:
                _write_json(args.measurement, measurement)
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
           "timing": res.timing, "per_layer": res.per_layer(), "ops": res.per_op(),
           "phases": [{"phase": p.phase, "ranks": p.ranks, "tokens": p.tokens, "near_ties": p.ties,
                       "expert_rows": p.expert_rows}
                      for p in res.phases]}
    if summary is not None:
        out["compare"] = summary
    if args.format == "json":
        print_json(out)
    else:
        _render(spec, out)
        if summary is not None:
            from cmtwin.cli.common import console

            console().print(compare_renderable(summary))
    return 0 if ok else 1


def _write_json(path: str, data) -> None:
    import json
    from pathlib import Path

    from cmtwin.errors import CmtwinError

    try:
        Path(path).write_text(json.dumps(data, separators=(",", ":")))
    except OSError as exc:
        raise CmtwinError(f"--measurement {path}: cannot write the file ({exc.strerror}).", key="--measurement",
                          fix="give a writable file path") from None


def compare_renderable(summary: dict):
    """The comparison as rich tables: per profile, each phase's layer (measured as the sum of its operators,
    and as graphed segments where timed with CUDA graphs) and every operator, predicted and measured."""
    from rich.console import Group
    from rich.text import Text

    from cmtwin.cli.common import compact_table

    def pct(e):
        return "-" if e is None else f"{e:+.1%}"

    def num(x):
        return "-" if x is None else f"{x:,.1f}"

    tm = summary.get("timing") or {}
    how = ("CUDA graphs, median of the replays" if tm.get("method") == "cuda-graph"
           else "synchronised per operator" + (f" ({tm['fallback']})" if tm.get("fallback") else ""))
    parts = [Text(f"compare: measured ({how}) vs predicted, per rank and layer; error = (predicted - measured) "
                  f"/ measured, within {summary.get('within', 0.2):.0%} claimed for a calibrated profile")]
    parts.append(Text("layer compute per rank, us (graph: the layer's segments as CUDA graphs)"))
    layers = compact_table()
    for col in ("profile", "phase", "measured", "predicted", "error", "graph", "vs graph"):
        # the profile's name folds where the terminal is narrow; the figures do not
        layers.add_column(col, justify="left" if col in ("profile", "phase") else "right", no_wrap=col != "profile",
                          overflow="fold")
    for p in summary["profiles"]:
        for ph, d in p["per_layer"].items():
            layers.add_row(f"{p['name']} ({p['role']})", ph, num(d.get("measured_us")), num(d.get("predicted_us")),
                           pct(d.get("rel_err")), num(d.get("graph_us")), pct(d.get("graph_rel_err")))
    parts.append(layers)
    profs = summary["profiles"]
    if profs:
        parts.append(Text("operators: mean per rank and layer, us"))
        ops = compact_table()
        ops.add_column("phase")
        ops.add_column("op", no_wrap=True)
        ops.add_column("measured", justify="right")
        for p in profs:
            ops.add_column(f"{p['name']}", justify="right")
            ops.add_column("error", justify="right")
        keyed = [{(r["phase"], r["op"]): r for r in p["ops"]} for p in profs]
        for key, r0 in keyed[0].items():
            row = [key[0], key[1], num(r0["measured_us"])]
            for k in keyed:
                r = k.get(key)
                row += [num(r["predicted_us"]) if r else "-", pct(r["rel_err"]) if r else "-"]
            ops.add_row(*row)
        parts.append(ops)
    return Group(*parts)


def _render(spec, out) -> None:
    from cmtwin.cli.common import compact_table, console

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
    tm = out.get("timing") or {}
    if tm.get("method") == "cuda-graph":
        c.print(f"  timing: each operator in its own CUDA graph, median of {tm['replays']} replays after "
                f"{tm['warmup']} (median spread {tm['spread_median'] or 0:.1%}); layers also as graphed segments")
    elif tm.get("fallback"):
        c.print(f"  [yellow]timing:[/] {tm['fallback']}")
    c.print("per operator: mean per rank and layer, us (comm: twin-modelled)")
    t = compact_table()
    for col in ("phase", "op", "kind", "measured", "predicted", "pred/meas"):
        t.add_column(col, justify="left" if col in ("phase", "op", "kind") else "right", no_wrap=True)
    for r in out["ops"]:
        k = r["n"] or 1
        m, pr = r["measured_us"] / k, r["predicted_us"] / k
        t.add_row(r["phase"], r["op"], r["kind"], f"{m:.1f}", f"{pr:.1f}", f"{pr / m:.2f}" if m else "-")
    c.print(t)
    for ph, d in out["per_layer"].items():
        e = d["rel_err"]
        c.print(f"  {ph} layer compute per rank: measured {d['measured_us']:.1f} us, predicted "
                f"{d['predicted_us']:.1f} us ({e:+.1%})" + (f"; as graphed segments {d['graph_us']:.1f} us "
                                                            f"({d['graph_rel_err']:+.1%})" if d.get("graph_us") else "")
                if e is not None else f"  {ph}: no compute measured")
    c.print(f"numerics: {out['numerics']}")
    e = out["estimate"]
    from cmtwin.executor.budget import fmt

    grew = e["measured_peak_bytes"]
    c.print(f"wall {out['wall_s']:.2f} s (estimated {e['seconds']:.0f} s); memory: estimated {fmt(e['peak_bytes'])}"
            + (f", peak resident growth {fmt(grew)}" if grew is not None else ""))
    if note["warning"]:
        c.print(f"[yellow]warning:[/] {note['warning']}")
