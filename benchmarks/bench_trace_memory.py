"""Peak memory of replaying a long trace against the same Poisson workload (issue 20: streaming trace reading).

usage: python benchmarks/bench_trace_memory.py [--requests N] [--rate R] [--duration S] [--jsonl]
Writes a trace of N requests (default 1,000,000) arriving as a Poisson stream at R req/s (default 100, so the
trace spans N/R s) with the workload's fixed lengths, then runs `cmtwin simulate` for S simulated seconds
(default 10) twice, each in a fresh process: once replaying the trace, once with the same Poisson workload
(workload.rate_per_s=R). Prints each peak RSS (ru_maxrss of that process) and the ratio trace / Poisson; the
goal is <= 2 (memory independent of the trace's length beyond the simulated window).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

GOAL = 2.0
PROMPT, OUTPUT = 1024, 256

CHILD = """
import json, resource, sys, time
from cmtwin.cli.main import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
wall = time.perf_counter() - t0
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"rc": rc, "rss_mb": rss_mb, "wall_s": wall}), file=sys.stderr)
"""


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _write_trace(path: str, n: int, rate: float, jsonl: bool) -> None:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    with open(path, "w") as fh:
        if not jsonl:
            fh.write("timestamp_s,prompt_len,output_len\n")
        step = 100_000
        for a in range(0, n, step):
            part = t[a:a + step]
            if jsonl:
                fh.writelines(f'{{"timestamp_s": {x:.6f}, "prompt_len": {PROMPT}, "output_len": {OUTPUT}}}\n'
                              for x in part)
            else:
                fh.writelines(f"{x:.6f},{PROMPT},{OUTPUT}\n" for x in part)


def _run(cwd: str, overrides: list[str]) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, "simulate", *overrides, "--no-plots", "--format", "json"],
                       cwd=cwd, capture_output=True, text=True)
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "{}"
    out = json.loads(last) if last.startswith("{") else {"rc": p.returncode, "error": p.stderr[-500:]}
    if p.returncode or out.get("rc"):
        raise SystemExit(f"cmtwin simulate {' '.join(overrides)} failed: {p.stderr[-800:]}")
    out["arrived"] = json.loads(p.stdout)["simulation"]["requests"]["arrived"]
    return out


def main() -> None:
    n = int(_arg("--requests", "1000000"))
    rate = float(_arg("--rate", "100"))
    duration = float(_arg("--duration", "10"))
    jsonl = "--jsonl" in sys.argv
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()}")
    common = ["+deployment=r1_ep320", f"sim.duration_s={duration:g}", f"workload.prompt_len={PROMPT}",
              f"workload.output_len={OUTPUT}", "workload.length_dist=fixed", "workload.prefix_share=0"]
    with tempfile.TemporaryDirectory() as tmp:
        name = "big.jsonl" if jsonl else "big.csv"
        t0 = time.perf_counter()
        _write_trace(os.path.join(tmp, name), n, rate, jsonl)
        size = os.path.getsize(os.path.join(tmp, name)) / 1e6
        print(f"trace: {n:,} requests at {rate:g} req/s ({n / rate:,.0f} s), {size:.0f} MB {name} "
              f"(written in {time.perf_counter() - t0:.1f} s); {duration:g} s simulated")
        poisson = _run(tmp, [*common, "workload.arrival=poisson", f"workload.rate_per_s={rate:g}"])
        trace = _run(tmp, [*common, "workload.arrival=trace", f"workload.trace={name}"])
    for label, r in (("poisson", poisson), ("trace", trace)):
        print(f"{label:8s} peak RSS {r['rss_mb']:7.0f} MB, {r['arrived']:,} requests arrived, {r['wall_s']:.1f} s wall")
    ratio = trace["rss_mb"] / poisson["rss_mb"]
    print(f"trace / poisson peak RSS: {ratio:.2f} (goal <= {GOAL:g}: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
