"""Simulation speed: one hour of simulated traffic at the r1_ep320 deployment's full load.

usage: python benchmarks/bench_sim.py [--duration S] [--workload NAME] [--cli]
Prints the machine, the cost-table build time, the event-loop wall time, requests and events, and the ratio
to the goal (<= 60 s of wall time for >= 100,000 requests in one simulated hour). --cli times the whole
`cmtwin simulate` command instead (samples to SQLite, plots).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time

GOAL_S = 60.0


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    duration = float(_arg("--duration", "3600"))
    workload = _arg("--workload", "chat_4k")
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    overrides = ["+deployment=r1_ep320", f"workload={workload}", f"sim.duration_s={duration:g}",
                 "workload.load=1.0"]
    if "--cli" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run(["cmtwin", "simulate", *overrides, "--format", "json"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
        print(f"cmtwin simulate {' '.join(overrides)}: {wall:.1f} s wall ({wall / GOAL_S:.2f} x the {GOAL_S:.0f} s goal)")
        return
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan
    from cmtwin.sim.serving import Simulator

    spec, _ = load_spec(overrides)
    plan = compile_plan(spec)
    t0 = time.perf_counter()
    sim = Simulator(spec, plan)
    t1 = time.perf_counter()
    res = sim.run()
    t2 = time.perf_counter()
    rq = res.requests
    wall = t2 - t0
    print(f"{' '.join(overrides)}: offered {res.rate_per_s:.1f} req/s (twin capacity: prefill "
          f"{res.capacity_per_s['prefill']:.1f}, decode {res.capacity_per_s['decode']:.1f})")
    print(f"tables {t1 - t0:.2f} s ({sim.dtable.calls} decode_step + {sim.ptable.calls} prefill_forward calls); "
          f"event loop {t2 - t1:.2f} s for {res.events:,} events ({res.events / (t2 - t1):,.0f} events/s)")
    print(f"requests: {rq['arrived']:,} arrived, {rq['completed']:,} completed in {duration:g} simulated s; "
          f"TTFT p99 {res.ttft_ms['p99']} ms, TPOT p50 {res.tpot_ms['p50']} ms")
    print(f"wall {wall:.1f} s = {wall / GOAL_S:.2f} x the {GOAL_S:.0f} s goal; simulated/wall = {duration / wall:,.0f} x")


if __name__ == "__main__":
    main()
