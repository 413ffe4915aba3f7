"""Does a GPU profile transfer to a GPU it was not calibrated on? Calibrate on the measured H100 kernels, move
the efficiencies onto the H200 datasheet (same GH100 die, HBM3e at 4.8 TB/s), and predict kernels measured on
an H200 that no constant was fitted to.

usage: python benchmarks/bench_gpu_transfer.py [--h100 DIR] [--plot FILE]

Data: ../shared/reference/h100_kernels_{graph,eager}.json (one H100 80GB HBM3, torch 2.11, the project's
reference) and benchmarks/data/h200_kernels_{graph,eager}.json (one NVIDIA H200 141 GB, torch 2.11.0+cu130,
taken on 2026-11-27 with the same shared/reference/kernel_probe.py; 79 rows with CUDA graphs, 96 eager).
Three predictions of the H200 rows, each printed as median / 90th-percentile |error| and rows within 20 %:
  1. conf/hardware/h200_sxm.yaml as shipped (datasheet peaks, production-kernel efficiencies from H800 tables);
  2. `cmtwin calibrate --import` of the H100 rows on the h100_sxm peaks, then the h200_sxm die (peaks, HBM);
  3. the same H100 fit left on the H100 die: what ignoring the new memory would cost.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def summary(errs: list[float]) -> str:
    a = sorted(abs(e) for e in errs)
    return (f"median |err| {statistics.median(a):5.1%}  p90 {a[math.ceil(0.9 * len(a)) - 1]:6.1%}  "
            f"within 20%: {sum(x <= 0.2 for x in a)}/{len(a)}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--h100", default=str(HERE.parents[1] / "shared" / "reference"),
                    help="folder holding h100_kernels_graph.json and h100_kernels_eager.json")
    ap.add_argument("--plot", help="write predicted vs measured (variant 2, CUDA graphs) to this image")
    a = ap.parse_args()
    from cmtwin.executor.api import load_profile
    from cmtwin.executor.calibrate import fit_imported, probe_rows
    from cmtwin.twin.cost import op_time

    h100, h200 = load_profile("h100_sxm"), load_profile("h200_sxm")
    if not (Path(a.h100) / "h100_kernels_graph.json").is_file():
        print(f"bench_gpu_transfer: no h100_kernels_graph.json in {a.h100} (--h100 DIR)", file=sys.stderr)
        return 2
    print(f"predicting on {platform.platform()}; kernels measured on one H100 80GB HBM3 and one H200 141GB")
    scatter = []
    for mode in ("graph", "eager"):
        src = probe_rows(Path(a.h100) / f"h100_kernels_{mode}.json")
        dst = probe_rows(HERE / "data" / f"h200_kernels_{mode}.json")
        fit = fit_imported(src, h100, f"h100_kernels_{mode}.json", "h100_fit")
        moved = fit.model_copy(update={"name": "h100_fit_on_h200", "die": h200.die})
        variants = (("1. h200_sxm as shipped", h200), ("2. H100 fit on the H200 die", moved),
                    ("3. H100 fit on the H100 die", fit))
        print(f"\n{mode}: {len(src)} H100 rows fitted, {len(dst)} H200 rows predicted")
        for label, hw in variants:
            errs = [(op_time(op, hw).us - us) / us for op, us in dst]
            print(f"  {label:30s} {summary(errs)}")
        by_cls: dict[str, list[float]] = defaultdict(list)
        for op, us in dst:
            t = op_time(op, moved).us
            by_cls[op.cls].append((t - us) / us)
            if mode == "graph":
                scatter.append((us, t, op.cls))
        print("  variant 2 by operator class:")
        for cls, errs in sorted(by_cls.items()):
            print(f"    {cls:17s} {summary(errs)}")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 5))
        for cls in sorted({c for *_, c in scatter}):
            pts = [(m, p) for m, p, c in scatter if c == cls]
            ax.scatter([m for m, _ in pts], [p for _, p in pts], s=14, label=cls)
        lo, hi = min(min(m, p) for m, p, _ in scatter), max(max(m, p) for m, p, _ in scatter)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [1.2 * lo, 1.2 * hi], "k:", lw=0.6)
        ax.plot([lo, hi], [lo / 1.2, hi / 1.2], "k:", lw=0.6)
        ax.set(xscale="log", yscale="log", xlabel="measured on H200 (us)", ylabel="predicted from the H100 fit (us)",
               title="H100-calibrated twin on an H200 (CUDA graphs)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"\nwrote {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
