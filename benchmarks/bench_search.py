"""Search speed: `cmtwin search` over the default space for CloudMatrix384's 384 NPUs.

usage: python benchmarks/bench_search.py [--workers N] [--no-sim] [--against REV [--repeat N]]
Prints the machine (cores, load average), the space (candidates, decode and prefill evaluations, those left out
as dominated, compiled plans, twin calls, pruned configurations), the wall time of each stage and of the whole
command, and the ratio to the goal (issue #21: >= 10,000 distinct plans, not decode x prefill combinations, in <= 30 s
with the frontier's simulations). A distinct plan is one (serving mode, layout, precision, MTP, instance size, batch,
microbatches) the twin evaluates; plans that differ only in batch share one compile, each batch checked by the
planner's memory arithmetic (planner.plan.decode_memory). The default space covers serving modes (disagg, agg) and
layouts (attention TP 1-16, moe_tp 1-2, decode instances 1-2) as well as the pool split, batch, microbatching, MTP
and precision. For scale: a peer GPU configurator's default 32-GPU agg/disagg sweep took 137 s on this kind of
machine.

--against REV also times git revision REV's search (exported with `git archive`, its own cache folder, one untimed
run each first to fill the caches), the two run alternately N times (--repeat, default 2) so that both see the same
load; the fastest of each and their ratio are printed (the machine's speed cancels out of the ratio).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, export, load, machine

GOAL_S = 30.0
GOAL_PLANS = 10_000


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _search(code: Path, overrides: list[str], cache: Path | None = None) -> tuple[float, dict]:
    """One `cmtwin search` of the code at `code` in an empty folder (its caches in `cache`, else the user's):
    (wall s, its JSON)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CMTWIN_DB_URL", "CMTWIN_FULL_ERROR")}
    env["PYTHONPATH"] = str(code)
    if cache is not None:
        env["CMTWIN_CACHE_DIR"] = str(cache)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "cmtwin.cli.main", "search", *overrides, "--format", "json"],
                           cwd=tmp, env=env, check=True, capture_output=True, text=True)
        return time.perf_counter() - t0, json.loads(p.stdout)


def main() -> None:
    overrides = ["+deployment=r1_ep320", "search.devices=384", f"search.workers={_arg('--workers', '0')}",
                 *(["search.simulate_top=0"] if "--no-sim" in sys.argv else [])]
    print(machine())
    if "--against" in sys.argv:
        rev, repeat = _arg("--against", "HEAD"), int(_arg("--repeat", "2"))
        with tempfile.TemporaryDirectory() as tmp:
            codes = {"this": ROOT, rev: export(rev, Path(tmp) / "against")}
            caches = {name: Path(tmp) / f"cache-{k}" for k, name in enumerate(codes)}
            for name, code in codes.items():  # untimed: each code fills its own caches
                _search(code, overrides, caches[name])
            walls: dict[str, list[float]] = {name: [] for name in codes}
            for _ in range(repeat):
                for name, code in codes.items():
                    wall, out = _search(code, overrides, caches[name])
                    walls[name].append(wall)
                    print(f"{name}: {wall:.1f} s for {out['candidates']:,} candidates from {out['compiled_plans']:,} "
                          f"compiles, frontier {len(out['frontier'])}")
        this, other = min(walls["this"]), min(walls[rev])
        print(f"fastest: this checkout {this:.1f} s, {rev} {other:.1f} s: {this / other:.2f} x; {this / GOAL_S:.2f} x "
              f"the {GOAL_S:.0f} s goal; {load()}")
        return
    wall, out = _search(ROOT, overrides)
    print(f"search {' '.join(overrides)}")
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
          f"{out['candidates'] / wall:,.0f} candidates/s; {load()}")


if __name__ == "__main__":
    main()
