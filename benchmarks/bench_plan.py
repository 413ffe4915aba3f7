"""Wall time of `cmtwin plan` (compile + predict + record), end to end as a user runs it.

usage: python benchmarks/bench_plan.py [--repeat N]
Prints the machine, the median and best wall time per deployment, and the ratio to the 3 s goal.
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
GOAL_S = 3.0


def main() -> None:
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for dep in DEPLOYMENTS:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                subprocess.run(["cmtwin", "plan", f"+deployment={dep}", "--format", "json"], cwd=tmp, check=True,
                               stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            print(f"cmtwin plan +deployment={dep:14s} median {med:.2f} s, best {min(times):.2f} s "
                  f"({med / GOAL_S:.2f} x the {GOAL_S:.0f} s goal)")


if __name__ == "__main__":
    main()
