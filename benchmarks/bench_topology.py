"""Build and query time of the CloudMatrix384 fabric graph (26,592 links), without the on-disk cache.

usage: python benchmarks/bench_topology.py [--repeat N]
Prints the machine and its load, the median and best build time, and one EP320 all-to-all query.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

os.environ["CMTWIN_CACHE_DIR"] = ""  # measure the build itself, not the cache

from cmtwin.topology.fabric import Fabric  # noqa: E402
from cmtwin.topology.schema import load_topology  # noqa: E402


def main() -> None:
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 5
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"load {os.getloadavg()[0]:.2f} · Python {platform.python_version()}")
    builds, queries = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fab = Fabric(load_topology("cloudmatrix384"))
        builds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fab.all_to_all_time_us(fab.dies()[:320], 7680, "ub")
        queries.append(time.perf_counter() - t0)
    print(f"cloudmatrix384 build: median {statistics.median(builds):.2f} s, best {min(builds):.2f} s")
    print(f"EP320 all-to-all query: median {statistics.median(queries) * 1e3:.1f} ms, "
          f"best {min(queries) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
