"""`cmtwin search`: explore the plan space within a device budget; Pareto frontier; every point to SQL."""

from __future__ import annotations

import argparse
import time

from cmtwin.cli.common import add_db, add_format, add_overrides, print_json, progress_bar

STORED = ("tokens_per_s_per_device", "tpot_ms", "ttft_ms", "requests_per_s")
"""Per-candidate figures stored as samples named search.<figure> (t = the candidate's index)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search serving modes, layouts, pool splits, batch, MTP, precision within a "
                                      "device budget",
                       description="Explore agg/disagg serving, parallel layouts (attention TP, moe_tp x ep, pp, "
                                   "instances), the prefill/decode split, decode batch, microbatching, MTP and "
                                   "precision within search.devices; evaluate every candidate with the analytic twin, "
                                   "simulate the best few; print the Pareto frontier (tokens/s per device vs TPOT and "
                                   "TTFT) and the best candidate per layout, plot it, store every point.")
    add_overrides(p, sweep=True)
    add_format(p)
    add_db(p)
    p.add_argument("--out-dir", metavar="DIR", default="runs", help="parent of the run's folder (default: %(default)s)")
    p.add_argument("--top", type=int, default=10, help="frontier rows to print (default: %(default)s)")
    p.set_defaults(func=run)


def candidate_rows(result) -> list[tuple[float, str, float]]:
    """Every evaluated candidate as sample rows (t = index): its figures and its parameters. precision and mode are
    indexes into cmtwin.search.run.PRECISION_CODES and MODE_CODES; prefill.* are 0 for an aggregated candidate."""
    from cmtwin.search.run import MODE_CODES, PRECISION_CODES

    front = set(result.frontier)
    rows = []
    for i, c in enumerate(result.candidates):
        t = float(i)
        d, p = c.decode, c.prefill
        rows += [(t, "search.tokens_per_s_per_device", c.tokens_per_s_per_device), (t, "search.tpot_ms", c.tpot_ms),
                 (t, "search.ttft_ms", c.ttft_ms), (t, "search.requests_per_s", c.requests_per_s),
                 (t, "search.pareto", 1.0 if i in front else 0.0), (t, "search.devices", c.devices),
                 (t, "search.mode", MODE_CODES.index(c.mode)), (t, "search.concurrency", c.concurrency),
                 (t, "search.decode.devices", d.devices), (t, "search.decode.instances", c.decode_instances),
                 (t, "search.decode.tp", d.tp), (t, "search.decode.moe_tp", d.moe_tp), (t, "search.decode.ep", d.ep),
                 (t, "search.decode.pp", d.pp), (t, "search.decode.batch_per_group", d.batch_per_group),
                 (t, "search.decode.microbatches", d.microbatches), (t, "search.mtp.draft_tokens", d.mtp),
                 (t, "search.precision", PRECISION_CODES.index(d.precision)),
                 (t, "search.prefill.instances", c.prefill_instances)]
        rows += [(t, f"search.prefill.{k}", getattr(p, k) if p else 0) for k in PREFILL_STORED]
    return rows


PREFILL_STORED = ("devices_per_instance", "tp", "moe_tp", "ep", "pp", "tokens_per_device")
"""Prefill parameters stored per candidate as search.prefill.<key>."""


def run(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone
    from pathlib import Path

    from cmtwin.config.compose import load_spec
    from cmtwin.search.run import search, simulate_frontier

    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)  # the run row is created after the search; its duration covers the search
    spec, composed = load_spec(args.overrides)
    bar, progress = progress_bar({"twin": "twin: candidate groups", "simulate": "simulating the best"})
    with bar:
        result = search(spec, progress=progress, simulate=False)  # the frontier's simulations: below
    if not result.candidates:
        from cmtwin.errors import PlanError

        raise PlanError(f"no candidate plan fits search.devices ({result.budget}) and the SLO "
                        f"(slo.tpot_ms={spec.slo.tpot_ms}, slo.ttft_ms={spec.slo.ttft_ms}); {result.pruned} "
                        f"configurations were pruned (layout, memory, placement), e.g.: {result.prune_example}",
                        key="search", fix="relax slo.*, widen search.decode_batches or the layout lists "
                        "(search.decode_tp, moe_tp, pp), or raise search.devices")
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import (add_artifact, add_samples, run_lifecycle, set_metrics, set_output_dir,
                                   set_prediction, start_run)

    front = [{"index": i, **result.candidates[i].to_dict()} for i in result.frontier]
    layouts = [{"index": i, **result.candidates[i].to_dict()} for i in result.best_per_layout()]
    store = open_store(args.db or spec.store.url)
    run_id = start_run(store, verb="search", deployment=spec.deployment.name, plan_hash=None,
                       overrides=list(composed.overrides), config=composed.config, started_at=started)
    out_dir = Path(args.out_dir) / str(run_id)
    with run_lifecycle(store, run_id):  # ok, cancelled on SIGINT, failed on an error
        # the frontier's simulations run in the worker processes while this one writes every candidate to the
        # store (a search's ~1.5 M sample rows take SQLite seconds); the summary follows once they are done
        with bar, simulate_frontier(spec, result) as sims:
            rows = candidate_rows(result)
            for k in range(0, len(rows), 100_000):
                add_samples(store, run_id, rows[k:k + 100_000])
            sims.results(progress)
        set_prediction(store, run_id, {"frontier": front, "best_per_layout": layouts, "simulated": result.simulated})
        out_dir.mkdir(parents=True, exist_ok=True)
        set_output_dir(store, run_id, out_dir)
        from cmtwin.search.plots import frontier_plot

        plot = frontier_plot(result, out_dir / "frontier.png",
                             f"{spec.deployment.name}: {len(result.candidates):,} plans for {result.budget} devices",
                             labelled=result.frontier[: args.top])  # the frontier table's rows, by their # column
        add_artifact(store, run_id, "plot", str(plot))
        best = result.candidates[result.frontier[0]]
        metrics = {"search.candidates": len(result.candidates), "search.frontier": len(result.frontier),
                   "search.compiled_plans": result.compiled, "search.twin_calls": result.twin_calls,
                   "search.pruned": result.pruned, "search.best.tokens_per_s_per_device": best.tokens_per_s_per_device,
                   "search.best.tpot_ms": best.tpot_ms, "search.best.ttft_ms": best.ttft_ms,
                   **{f"search.wall_s.{k}": v for k, v in result.wall_s.items()},
                   "wall_s": time.perf_counter() - t0}
        set_metrics(store, run_id, metrics)
    wall = time.perf_counter() - t0
    if args.format == "json":
        print_json({"run_id": run_id, "budget_devices": result.budget, "candidates": len(result.candidates),
                    "decode_evaluations": result.decode_evals, "prefill_evaluations": result.prefill_evals,
                    "compiled_plans": result.compiled, "pruned": result.pruned, "twin_calls": result.twin_calls,
                    "decode_dominated": result.decode_dominated, "prefill_dominated": result.prefill_dominated,
                    "frontier": front, "best_per_layout": layouts, "simulated": result.simulated, "plot": str(plot),
                    "wall_s": {**{k: round(v, 3) for k, v in result.wall_s.items()}, "total": round(wall, 3)}})
        return 0
    from cmtwin.cli.common import console

    c = console()
    c.print(f"[bold]search[/] {spec.deployment.name}: {len(result.candidates):,} candidate plans for "
            f"{result.budget} devices ({result.compiled} compiled, {result.twin_calls:,} twin calls, "
            f"{result.pruned:,} pruned), frontier {len(result.frontier)}")
    c.print(_table(f"Pareto frontier (best {min(args.top, len(front))} by tokens/s per device; # labels them in the "
                   "plot)", front[: args.top], c.width))
    c.print(_table("Best candidate per serving mode and decode attention TP", layouts[: args.top], c.width))
    for s in result.simulated:
        sim = s.get("simulation")
        if sim:
            k = s.get("simulated_share", 1)
            share = f" (one of {k} identical shares simulated: {k * sim['rate_per_s']:.0f} req/s in all)" if k > 1 else ""
            c.print(f"simulated #{s['index']}: {sim['tokens_per_s_per_device']:,.0f} tok/s/dev, TPOT p50 "
                    f"{sim['tpot_ms']['p50']:.1f} ms, TTFT p50 {sim['ttft_ms']['p50']:.0f} ms at "
                    f"{sim['rate_per_s']:.0f} req/s{share}")
        else:
            c.print(f"simulated #{s['index']}: {s.get('error')}")
    c.print(f"plot: {plot}")
    c.print(f"run {run_id} recorded; every candidate is in samples (name LIKE 'search.%', t = #); "
            f"{wall:.1f} s wall")
    return 0


def _table(title: str, rows: list[dict], width: int):
    """A frontier table: the figures one line per candidate; its layout in a last column where the terminal is wide
    enough for it whole, else in a list under the figures (# to layout)."""
    from rich.console import Group
    from rich.table import Table

    from cmtwin.cli.common import compact_table

    cols = ("#", "tok/s/dev", "TPOT ms", "TTFT ms", "batch/group", "conc", "mb", "MTP", "prec", "bound")
    cells = []
    for d in rows:
        dd = d["decode"]
        cells.append((str(d["index"]), f"{d['tokens_per_s_per_device']:,.0f}", f"{d['tpot_ms']:.1f}",
                      f"{d['ttft_ms']:.0f}", str(dd["batch_per_group"]), f"{d['concurrency']:,}",
                      str(dd["microbatches"]), str(dd["mtp"]), dd["precision"], d["bottleneck"]))
    widths = [max(len(h), *(len(r[k]) for r in cells)) if cells else len(h) for k, h in enumerate(cols)]
    inline = sum(w + 2 for w in widths) + max((len(d["layout"]) for d in rows), default=0) <= width
    t = compact_table()
    for col, w in zip(cols, widths):
        t.add_column(col, justify="right", no_wrap=True, min_width=w)
    if inline:
        t.add_column("layout", no_wrap=True)
    for r, d in zip(cells, rows):
        t.add_row(*r, *((d["layout"],) if inline else ()))
    if inline or not rows:
        return Group(title, t)  # the title a line of its own (a table's title wraps to the table's width)
    legend = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1, 0, 0))
    legend.add_column("#", justify="right", style="dim", no_wrap=True)
    legend.add_column("layout")
    for d in rows:
        legend.add_row(f"#{d['index']}", d["layout"])
    return Group(title, t, legend)
