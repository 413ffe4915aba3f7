"""How well the twin, calibrated on this machine, predicts the executor's per-layer compute time.

usage: python benchmarks/bench_calibrated_cpu.py [--pairs N] [--scale S]
Each pair runs `cmtwin calibrate executor.scale=S` then `cmtwin execute +deployment=r1_ep320 executor.layers=2
executor.scale=S` in a scratch directory (so the local profile never lands in a checkout) and reads the
decode and prefill per-layer measured and predicted compute from the run's JSON. Prints every pair, the
median |error|, how many pairs are within the 20% goal, and the machine's own drift over the run (the range
of a fixed 512^3 fp32 matmul and a 16 MB copy, timed between pairs): on a shared VM the device itself
changes speed between the calibration and the execute, and no model can predict that part.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

GOAL = 0.20


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def probe() -> tuple[float, float]:
    """Fastest of 20: a 512^3 fp32 matmul and a 16 MB copy, in microseconds."""
    import torch

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    src = torch.randn(1 << 22)
    dst = torch.empty_like(src)

    def fastest(fn) -> float:
        fn()
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts) * 1e6

    return fastest(lambda: a @ b), fastest(lambda: dst.copy_(src))


def main() -> None:
    from rich.progress import Progress

    pairs, scale = int(_arg("--pairs", "8")), _arg("--scale", "0.02")
    print(f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()} · load {os.getloadavg()[0]:.2f}")
    errs: dict[str, list[float]] = {"decode": [], "prefill": []}
    probes = []
    with tempfile.TemporaryDirectory() as tmp, Progress() as bar:
        task = bar.add_task("calibrate + execute pairs", total=pairs)
        for i in range(pairs):
            probes.append(probe())
            subprocess.run(["cmtwin", "calibrate", f"executor.scale={scale}"], cwd=tmp, check=True,
                           capture_output=True)
            out = subprocess.run(["cmtwin", "execute", "+deployment=r1_ep320", "executor.layers=2",
                                  f"executor.scale={scale}", "--no-record", "--format", "json"],
                                 cwd=tmp, check=True, capture_output=True, text=True).stdout
            per_layer = json.loads(out)["per_layer"]
            line = []
            for ph, d in per_layer.items():
                errs[ph].append(d["rel_err"])
                line.append(f"{ph} measured {d['measured_us']:7.1f} us predicted {d['predicted_us']:7.1f} us "
                            f"({d['rel_err']:+.1%})")
            bar.console.print(f"pair {i + 1}: " + " · ".join(line), soft_wrap=True)
            bar.advance(task)
        probes.append(probe())
    for ph, xs in errs.items():
        within = sum(abs(e) <= GOAL for e in xs)
        print(f"{ph:8s} median |error| {statistics.median(abs(e) for e in xs):.1%}, max {max(abs(e) for e in xs):.1%}, "
              f"{within} of {len(xs)} within {GOAL:.0%}")
    mm, cp = [p[0] for p in probes], [p[1] for p in probes]
    print(f"machine drift over the run: 512^3 matmul {min(mm):.0f}-{max(mm):.0f} us ({max(mm) / min(mm):.2f}x), "
          f"16 MB copy {min(cp):.0f}-{max(cp):.0f} us ({max(cp) / min(cp):.2f}x)")


if __name__ == "__main__":
    main()
