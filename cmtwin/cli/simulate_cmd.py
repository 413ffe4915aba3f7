"""`cmtwin simulate`: compose + validate -> compile -> simulate request streams -> record samples, metrics
and plots -> print a summary (or one JSON object)."""

from __future__ import annotations

import argparse
import sys
import time

from cmtwin.cli.common import add_db, add_format, add_overrides, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="discrete-event serving simulation of a deployment under a workload",
                       description="Simulate a deployment serving a request stream (Poisson, bursty or a trace; by "
                                   "default at 0.8 x the twin's sustainable rate), timed by the twin; report "
                                   "TTFT/TPOT/end-to-end percentiles, throughput per device, goodput under the "
                                   "deployment's slo.* targets (none set: no goodput), utilisation, queues, cache hits "
                                   "and whether the run reached steady state; record the time series, metrics and "
                                   "plots in the run store.")
    add_overrides(p, sweep=True)
    add_format(p)
    add_db(p)
    p.add_argument("--out-dir", metavar="DIR", default="runs",
                   help="parent folder of the run's output folder <DIR>/<run_id>/ (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run)


class SampleWriter:
    """Buffers time-series rows and writes them to the store in batches (every ~1 s of wall time)."""

    def __init__(self, store, run_id: int, every_s: float = 1.0, max_rows: int = 5000):
        self.store, self.run_id = store, run_id
        self.buf: list = []
        self.all: list = []
        self.every, self.max_rows = every_s, max_rows
        self.last = time.monotonic()
        self.written = 0

    def __call__(self, rows: list) -> None:
        self.buf.extend(rows)
        self.all.extend(rows)
        if len(self.buf) >= self.max_rows or time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.buf and self.store is not None:
            from cmtwin.store.repo import add_samples

            self.written += add_samples(self.store, self.run_id, self.buf)
        self.buf = []
        self.last = time.monotonic()


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                    TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)


def run(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone
    from pathlib import Path

    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.sim.serving import Simulator
    from cmtwin.sim.spec import check_simulated_work
    from cmtwin.twin.predict import predict

    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    spec, composed = load_spec(args.overrides)
    plan = compile_plan(spec)
    fabric = fabric_for(spec)
    prediction = predict(spec, plan)
    # Everything that can fail on bad input happens before the run row exists (trace parsing, tables).
    sim = Simulator(spec, plan, fabric=fabric)
    check_simulated_work(spec, rate_per_s=sim.rate, duration_s=sim.duration, capacity_per_s=sim.capacity)
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import add_artifact, run_lifecycle, set_metrics, set_output_dir, start_run

    store = open_store(args.db or spec.store.url)
    plan_dict = plan.to_dict(with_dies=False)
    run_id = start_run(store, verb="simulate", deployment=spec.deployment.name, plan_hash=plan.plan_hash,
                       overrides=list(composed.overrides), config=composed.config, plan=plan_dict,
                       prediction=prediction.to_dict(), started_at=started)
    writer = SampleWriter(store, run_id)
    sim.sink = writer
    out_dir = Path(args.out_dir) / str(run_id)
    # ok at the end, cancelled on SIGINT, failed on an error; the samples are flushed first either way
    with run_lifecycle(store, run_id):
        try:
            with _progress() as bar:
                task = bar.add_task("sim", total=sim.duration)
                sim.progress = lambda now, end: bar.update(task, completed=now)
                result = sim.run()
            writer.flush()
            plots: list[str] = []
            if not args.no_plots:
                from cmtwin.sim.plots import latency_cdf_plot, throughput_plot

                out_dir.mkdir(parents=True, exist_ok=True)
                set_output_dir(store, run_id, out_dir)
                title = f"{spec.deployment.name} / {spec.workload.name}: run {run_id}"
                refs = _references(spec, result, prediction)
                for kind, path in (("plot", throughput_plot(writer.all, out_dir / "throughput.png", title, refs=refs,
                                                            window=(result.warmup_s, result.duration_s),
                                                            verdict=result.steady_state.get("verdict"))),
                                   ("plot", latency_cdf_plot(result.latencies, out_dir / "latency_cdf.png", title, spec.slo))):
                    add_artifact(store, run_id, kind, str(path))
                    plots.append(str(path))
            metrics = result.metrics()
            metrics["wall_s"] = time.perf_counter() - t0
            set_metrics(store, run_id, metrics)
        finally:
            writer.flush()
    out = {"run_id": run_id, "plan_hash": plan.plan_hash, "output_dir": str(out_dir) if plots else None,
           "plots": plots, "simulation": result.to_dict(),
           "prediction": {k: prediction.to_dict()[k] for k in ("prefill", "decode")}}
    if args.format == "json":
        print_json(out)
    else:
        _render(spec, result, prediction, run_id, plots, time.perf_counter() - t0)
    return 0


def _references(spec, res, prediction) -> dict:
    """Horizontal reference lines for the throughput plot: the twin's steady-state figures (the plan's tokens/s per
    device at its full batch / full forward) and what the offered rate gives in steady state (rate x tokens per
    request over the pool's devices)."""
    w = spec.workload
    pd, dd = (f.to_dict() if f else {} for f in (prediction.prefill, prediction.decode))
    ddev = res.decode["devices"]
    pdev = res.prefill["devices"] or ddev  # agg: prefill runs on the decode pool
    load = f" = {res.load:.2f} x the twin's capacity" if res.load is not None else ""
    refs = {"decode.tokens_per_s_per_device": [], "prefill.tokens_per_s_per_device": []}
    if dd.get("tokens_per_s_per_device"):
        refs["decode.tokens_per_s_per_device"].append(
            (dd["tokens_per_s_per_device"], f"decode, twin (plan, full batch): {dd['tokens_per_s_per_device']:,.0f}"))
    if pd.get("tokens_per_s_per_device") and res.prefill["devices"]:
        refs["prefill.tokens_per_s_per_device"].append(
            (pd["tokens_per_s_per_device"],
             f"prefill, twin (plan, full forward): {pd['tokens_per_s_per_device']:,.0f}"))
    if w.arrival not in ("offline", "trace"):
        refs["decode.tokens_per_s_per_device"].append(
            (res.rate_per_s * w.output_len / ddev,
             f"decode at the offered {res.rate_per_s:,.1f} req/s{load}: {res.rate_per_s * w.output_len / ddev:,.0f}"))
        refs["prefill.tokens_per_s_per_device"].append(
            (res.rate_per_s * w.prompt_len / pdev,
             f"prefill at the offered rate: {res.rate_per_s * w.prompt_len / pdev:,.0f}"))
    return refs


def _fmt(x, nd=1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def _render(spec, res, prediction, run_id, plots, elapsed) -> None:
    from rich.markup import escape
    from rich.table import Table

    from cmtwin.cli.common import console

    c = console()
    w = spec.workload
    batching = (spec.policies.batching or {}).get("name", "fcfs_lru")
    if w.arrival == "offline":
        arrivals = f"a batch of {w.requests:,} at t = 0"
    elif res.load is not None:
        arrivals = f"{res.rate_per_s:,.1f} req/s = {res.load:.2f} x the twin's capacity"
    else:
        arrivals = f"{res.rate_per_s:,.1f} req/s"
    warm = f"{res.warmup_s:.4g} s warm-up" if res.warmup_s else "no warm-up"
    c.print(f"[bold]simulate[/] {spec.deployment.name} · workload {w.name} · batching {batching} · "
            f"{res.duration_s:g} s ({warm})")
    c.print(f"arrivals {w.arrival}, {arrivals}")
    c.print(f"twin capacity: prefill {res.capacity_per_s['prefill']:,.1f} req/s, decode "
            f"{res.capacity_per_s['decode']:,.1f} req/s")
    pd, dd = (f.to_dict() if f else {} for f in (prediction.prefill, prediction.decode))
    # two tables that fit 80 columns: latency percentiles, then one value per row (the twin's beside it where it has
    # one)
    lat = Table(title="latency, ms (requests arriving after the warm-up)", title_justify="left")
    for col in ("", "p50", "p90", "p99", "twin (plan)"):
        lat.add_column(col, justify="right" if col else "left")
    for name, q, nd, twin in (("TTFT", res.ttft_ms, 1, pd.get("ttft_ms")), ("TPOT", res.tpot_ms, 2, dd.get("tpot_ms")),
                              ("end-to-end", res.e2e_ms, 1, None)):
        lat.add_row(name, _fmt(q["p50"], nd), _fmt(q["p90"], nd), _fmt(q["p99"], nd),
                    "" if twin is None else _fmt(twin, nd))
    c.print(lat)
    t = Table(title="throughput and resources (measurement window)", title_justify="left")
    t.add_column("")
    t.add_column("simulated", justify="right")
    t.add_column("twin (plan)", justify="right")
    p, d = res.prefill, res.decode
    t.add_row("prefill tokens/s per device", _fmt(p["tokens_per_s_per_device"]),
              _fmt(pd.get("tokens_per_s_per_device")))
    t.add_row("decode tokens/s per device", _fmt(d["tokens_per_s_per_device"]), _fmt(dd.get("tokens_per_s_per_device")))
    if d["instances"] > 1:
        t.add_row(f"... per decode instance ({d['instances']})",
                  " / ".join(_fmt(x["tokens_per_s_per_device"]) for x in d["per_instance"].values()), "")
    t.add_row("output tokens/s per device, all", _fmt(res.tokens_per_s_per_device), "")
    if res.makespan_s is not None:
        t.add_row("makespan (s, last request done)", _fmt(res.makespan_s, 3), "")
    t.add_row("prefill tokens computed / prompt", f"{p['computed_tokens']:,} / {p['prompt_tokens']:,}", "")
    t.add_row("token saving ratio", f"{p['token_saving_ratio']:.1%}", "")
    gib = 2**30
    t.add_row("peak KV per decode die",
              f"{d['kv_peak_tokens_per_die']:,} tok, {d['kv_peak_bytes_per_die'] / gib:,.2f} GiB", "")
    t.add_row(f"peak KV, decode pool ({d['devices']} devices)",
              f"{d['kv_peak_tokens'] / 1e6:,.2f} M tok, {d['kv_peak_bytes'] / gib:,.1f} GiB", "")
    if res.goodput is None:
        t.add_row("goodput", "no SLO set", "")
    else:
        targets = ", ".join(f"{k} <= {v:g}" for k, v in res.slo.items() if v is not None)
        t.add_row(f"goodput, req/s meeting {targets}", f"{res.goodput:,.2f} ({res.goodput_fraction:.1%})", "")
    t.add_row("utilisation prefill / decode", f"{p['utilisation']:.1%} / {d['utilisation']:.1%}", "")
    t.add_row("decode batch occupancy", f"{d['batch_occupancy']:.1%}", "")
    t.add_row("cache hit ratio", f"{res.cache_hit_ratio:.1%}", "")
    rq = res.requests
    t.add_row("requests arrived / done / in flight",
              f"{rq['arrived']:,} / {rq['completed']:,} / {rq['arrived'] - rq['completed']:,}", "")
    c.print(t)
    if w.arrival == "offline" and res.makespan_s is not None and not spec.sim.drain:
        c.print(f"an offline batch: its rates are over the {res.duration_s - res.warmup_s:g} s window, not its "
                f"{res.makespan_s:.4g} s makespan; sim.drain=true measures it to its last completion")
    if res.goodput is None:
        c.print("goodput: no SLO set (the deployment's slo.ttft_ms and slo.tpot_ms are null); give targets to measure "
                "it, e.g. slo.ttft_ms=2000 slo.tpot_ms=50")
    st = res.steady_state
    if st.get("verdict"):
        mark = {True: "[green]", False: "[bold red]"}.get(st.get("reached"), "")
        c.print(f"steady state {mark}{escape(st['verdict'])}{'[/]' if mark else ''}")
    for p in plots:
        c.print(f"plot: {p}")
    c.print(f"run {run_id} recorded ({res.events:,} events, {elapsed:.1f} s wall)")
    sys.stdout.flush()
