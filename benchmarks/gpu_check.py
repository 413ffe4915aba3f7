"""GPU check: on a CUDA machine, calibrate the GPU and execute a few DeepSeek-R1 layers at true shapes,
printing measured vs predicted per operator. Budget: under 5 minutes.

usage: python benchmarks/gpu_check.py [--deployment r1_h100_ep72] [--layers 2] [--ranks 4] [--out DIR] [--ref JSON]

Steps (each a `cmtwin` command, so the same code paths as a user's):
  1. cmtwin calibrate executor.scale=1.0 executor.dtype=bf16      -> ./cmtwin_conf/hardware/local_cuda.yaml
  2. cmtwin calibrate --import <shared/reference/h100_kernels_graph.json> (when present): LOSO error
  3. cmtwin execute +deployment=... executor.scale=1.0 executor.dtype=bf16 executor.layers=L executor.ranks=R
     (predictions from local_cuda; communication from the deployment's twin topology model)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def sh(args: list[str], timeout: float) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], capture_output=True, text=True,
                       timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        print(r.stderr[-3000:], file=sys.stderr)
    return r.returncode, r.stdout, dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployment", default="r1_h100_ep72")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--scale", default="1.0")
    ap.add_argument("--out", default=".")
    ap.add_argument("--ref", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference"
                                         / "h100_kernels_graph.json"),
                    help="measured H100 kernels to import for the leave-one-shape-out check")
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test the script on a CPU (use a small --scale)")
    a = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print("gpu_check: no CUDA device; nothing to do (--allow-cpu runs it on the CPU)", file=sys.stderr)
        return 0
    profile = "local_cuda" if cuda else "local_cpu"
    t_all = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}  torch {torch.__version__}")
    rc, out, dt = sh(["calibrate", f"executor.scale={a.scale}", "executor.dtype=bf16", "--format", "json"], 150)
    print(f"calibrate: rc {rc} in {dt:.1f} s: {out.strip()[:300]}")
    ref = Path(a.ref)
    if ref.is_file():
        rc, out, dt = sh(["calibrate", "--import", str(ref), "--format", "json"], 60)
        if rc == 0:
            print(f"import {ref.name}: LOSO median |err| {json.loads(out)['loso_median_abs_err']:.1%} ({dt:.1f} s)")
    rc, out, dt = sh(["execute", f"+deployment={a.deployment}", f"executor.scale={a.scale}", "executor.dtype=bf16",
                      f"executor.layers={a.layers}", f"executor.ranks={a.ranks}", f"executor.profile={profile}",
                      "--format", "json", "--no-record"], 240)
    if rc not in (0, 1):
        print(f"execute failed (rc {rc})")
        return 1
    res = json.loads(out)
    print(f"execute: {dt:.1f} s, numerics {res['numerics']}, device {res['device']}, profile {res['profile']}")
    print(f"{'phase':8s} {'op':26s} {'kind':8s} {'measured us':>12s} {'predicted us':>13s} {'pred/meas':>9s}")
    for r in res["ops"]:
        n = r["n"] or 1
        m, p = r["measured_us"] / n, r["predicted_us"] / n
        print(f"{r['phase']:8s} {r['op']:26s} {r['kind']:8s} {m:12.1f} {p:13.1f} {p / m if m else 0:9.2f}")
    for ph, d in res["per_layer"].items():
        print(f"{ph}: layer compute per rank measured {d['measured_us']:.1f} us, predicted {d['predicted_us']:.1f} us "
              f"({(d['rel_err'] or 0):+.1%})")
    Path(a.out, "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"total {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
