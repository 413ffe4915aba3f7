"""Search speed: `cmtwin search` over the default space for CloudMatrix384's 384 NPUs.

usage: python benchmarks/bench_search.py [--workers N] [--no-sim]
Prints the machine (cores, load average), the space (candidates, decode and prefill evaluations, those left out
as dominated, compiled plans, twin calls, pruned configurations), the wall time of each stage and of the whole
command, and the ratio to the goal (issue #21: >= 10,000 distinct plans, not decode x prefill combinations, in <= 30 s with the frontier's
simulations). A distinct plan is one (serving mode, layout, precision, MTP, instance size, batch, microbatches) the
twin evaluates; plans that differ only in batch share one compile, each batch checked by the planner's memory
arithmetic (planner.plan.decode_memory). The default space covers serving modes
(disagg, agg) and layouts (attention TP 1-16, moe_tp 1-2, decode instances 1-2) as well as the pool split, batch,
microbatching, MTP and precision. For scale: a peer GPU configurator's default 32-GPU agg/disagg sweep took 137 s
on this kind of machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

GOAL_S = 30.0
GOAL_PLANS = 10_000


def main() -> None:
    workers = sys.argv[sys.argv.index("--workers") + 1] if "--workers" in sys.argv else "0"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()} · load average before {load}")
    args = ["cmtwin", "search", "+deployment=r1_ep320", "search.devices=384", f"search.workers={workers}",
            "--format", "json"]
    if "--no-sim" in sys.argv:
        args.insert(-2, "search.simulate_top=0")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.run(args, cwd=tmp, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    out = json.loads(p.stdout)
    print(f"{' '.join(args[1:-2])}")
    print(f"candidates {out['candidates']:,} from {out['decode_evaluations']:,} decode evaluations "
          f"({out['decode_dominated']:,} dominated at their size and TP degree, left out) and "
          f"{out['prefill_evaluations']} prefill ({out['prefill_dominated']} dominated); compiled plans "
          f"{out['compiled_plans']:,}; twin calls {out['twin_calls']:,}; pruned {out['pruned']:,}; frontier "
          f"{len(out['frontier'])}; simulated {len(out['simulated'])}")
    distinct = out["decode_evaluations"] + out["prefill_evaluations"]
    print(f"distinct plans evaluated {distinct:,} ({distinct / GOAL_PLANS:.1f} x the {GOAL_PLANS:,} goal) from "
          f"{out['compiled_plans']:,} compiles")
    print(f"stages (s): {out['wall_s']}")
    best = out["frontier"][0]
    print(f"best: {best['tokens_per_s_per_device']:,.0f} tok/s/device, TPOT {best['tpot_ms']:.1f} ms, "
          f"{best['layout']}")
    print(f"wall {wall:.1f} s (whole command, store writes included) = {wall / GOAL_S:.2f} x the {GOAL_S:.0f} s goal; "
          f"{out['candidates'] / wall:,.0f} candidates/s")


if __name__ == "__main__":
    main()
