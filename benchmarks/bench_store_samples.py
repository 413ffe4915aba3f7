"""How fast `add_samples` writes time series: rows/s against the 10,000 rows/s the TUI and simulator need.

    python benchmarks/bench_store_samples.py [--db URL] [--rows 200000] [--batch 5000]

Without --db it uses a fresh SQLite file in a temporary folder. Prints the machine, then rows/s and its
ratio to the target.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

from cmtwin.store import add_samples, get_samples, open_store, start_run

TARGET_ROWS_PER_S = 10_000


def main() -> None:
    """Write --rows samples in batches of --batch and report the rate."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = open_store(url)
        run_id = start_run(store, verb="bench", deployment=None, plan_hash=None, overrides=[], config=None)
        names = ("queue_len", "ttft_ms", "tpot_ms", "kv_used_gb")
        start = time.perf_counter()
        written = 0
        while written < args.rows:
            n = min(args.batch, args.rows - written)
            add_samples(store, run_id, ((0.001 * (written + i), names[i % 4], float(i)) for i in range(n)))
            written += n
        elapsed = time.perf_counter() - start
        read_start = time.perf_counter()
        read = len(get_samples(store, run_id))
        read_elapsed = time.perf_counter() - read_start
        store.close()

    rate = written / elapsed
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")
    print(f"store:   {store.dialect} ({'given' if args.db else 'temporary file'})")
    print(f"write:   {written} rows in batches of {args.batch}: {elapsed:.3f} s = {rate:,.0f} rows/s "
          f"({rate / TARGET_ROWS_PER_S:.1f}x the {TARGET_ROWS_PER_S:,} rows/s target)")
    print(f"read:    {read} rows in {read_elapsed:.3f} s = {read / read_elapsed:,.0f} rows/s")


if __name__ == "__main__":
    main()
