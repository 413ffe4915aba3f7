"""Wall time of `cmtwin plan` (compose + compile + predict + record), end to end as a user runs it.

usage: python benchmarks/bench_plan.py [--repeat N]
Prints the machine and its load, then per deployment the median and best wall time warm (the composed config and
the fabric read from the cache, as every run after the first) and without the cache (CMTWIN_CACHE_DIR="": Hydra
composes and the fabric is built each time), their ratio, and the ratio to issue 21's 0.5 s goal.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

DEPLOYMENTS = ["r1_ep320", "r1_h800_ep144", "r1_h100_ep72"]
GOAL_S = 0.5


def _times(dep: str, cwd: str, repeat: int, env: dict) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(["cmtwin", "plan", f"+deployment={dep}", "--format", "json"], cwd=cwd, check=True, env=env,
                       stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()} · load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        warm_env = {**os.environ, "CMTWIN_CACHE_DIR": os.path.join(tmp, "cache")}
        cold_env = {**os.environ, "CMTWIN_CACHE_DIR": ""}
        for dep in DEPLOYMENTS:
            _times(dep, tmp, 1, warm_env)  # fills the cache
            warm, cold = _times(dep, tmp, repeat, warm_env), _times(dep, tmp, repeat, cold_env)
            w, c = statistics.median(warm), statistics.median(cold)
            print(f"cmtwin plan +deployment={dep:14s} warm median {w:.2f} s (best {min(warm):.2f}), no cache "
                  f"{c:.2f} s: {w / c:.2f} x; {w / GOAL_S:.2f} x the {GOAL_S} s goal")


if __name__ == "__main__":
    main()
