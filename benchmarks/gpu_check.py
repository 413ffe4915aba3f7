"""GPU check: on a CUDA machine, calibrate the GPU and execute DeepSeek-R1 layers at true shapes, compare the
twin's predictions with the executor's measurements, and store the result so machines without a GPU can test
against it. Installs nothing and needs no network. Budget: under 5 minutes on one H100/H200.

usage: python benchmarks/gpu_check.py [--deployment r1_h100_ep72] [--hardware h200_sxm] [--layers 2] [--ranks 4] [--scale 1.0]
                                      [--dtype bf16] [--prefill-tokens 4096] [--kv-len 128] [--out benchmarks/data]
                                      [--name NAME] [--ref JSON] [--no-fp8] [--allow-cpu]

Steps (each a `cmtwin` command, so the same code paths as a user's), in a scratch directory:
  1. cmtwin calibrate executor.scale=S executor.dtype=D executor.prefill_tokens=P executor.kv_len=K
     -> ./cmtwin_conf/hardware/local_cuda.yaml; on CUDA every operator is timed in CUDA graphs
     (executor.timing=auto), the grid includes the executed prefill chunk
  2. (optional, --ref) cmtwin calibrate --import <kernel timings>: leave-one-shape-out error of the import fit
  3. cmtwin execute +deployment=... [hardware=<this GPU's shipped profile>] (same scale, dtype, tokens)
     executor.layers=L executor.ranks=R --compare
     --measurement FILE: per-operator CUDA graphs, then each rank's segments as graphs; predicted vs measured
     for the deployment's shipped profile and the freshly calibrated one. R is the most ranks up to --ranks
     that the memory estimate lets start (4 on an H200; an H100's 80 GB refuses 4 ranks' 4K-token prefill)
  4. (unless --no-fp8) cmtwin execute ... executor.dtype=fp8 executor.phase=decode executor.layers=1
     executor.ranks=2: fp8 numerics through torch._scaled_mm, or the refusal where the device has no kernel
Writes OUT/<name>_check.json (name: the GPU's, e.g. nvidia_h200): environment, commands, wall times, the
comparison, the measurement and the calibrated profile. tests/test_executor_compare.py replays every
benchmarks/data/*_check.json with the twin as it is (cmtwin.executor.compare.replay).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(args: list[str], timeout: float, cwd: Path) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], capture_output=True, text=True,
                           timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return 124, "", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        print(r.stderr[-3000:], file=sys.stderr)
    return r.returncode, r.stdout, dt


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "device"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def fitting_ranks(overrides: list[str], most: int, device: str) -> tuple[int, list[str]]:
    """The most ranks (at most `most`) whose execute the memory estimate lets start on this device (the same
    check execute makes before it allocates, graph pool included), and a line per count refused."""
    from cmtwin.config.compose import load_spec
    from cmtwin.executor import budget
    from cmtwin.planner.plan import compile_plan

    notes = []
    for r in range(most, 0, -1):
        spec = load_spec([*overrides, f"executor.ranks={r}"])[0]
        est = budget.execute_estimate(spec, compile_plan(spec), device)
        if est.fits or r == 1:
            return r, notes
        notes.append(f"executor.ranks={r} needs about {budget.fmt(est.peak_bytes)}, "
                     f"{budget.fmt(est.usable_bytes)} usable")
    return 1, notes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployment", default="r1_h100_ep72",
                    help="an EP deployment whose ranks hold few experts (EP72: 3-4 per rank), so 4 ranks fit a GPU")
    ap.add_argument("--hardware", help="the shipped profile to compare with (default: h200_sxm on an H200, "
                                       "h100_sxm on an H100, else the deployment's)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--scale", default="1.0")
    ap.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "int8", "fp8"))
    ap.add_argument("--no-fp8", action="store_true",
                    help="skip the short fp8 step (a decode layer on 2 ranks, executor.dtype=fp8: numerics, or the "
                         "refusal where torch has no float8 scaled matmul for this device)")
    ap.add_argument("--prefill-tokens", type=int, default=4096, help="prefill chunk per rank (4K-16K on a GPU)")
    ap.add_argument("--kv-len", type=int, default=128, help="context of every decode request")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "data"), help="folder for <name>_check.json")
    ap.add_argument("--name", help="file stem (default: the GPU's name, e.g. nvidia_h200)")
    ap.add_argument("--ref", default=str(ROOT.parent / "shared" / "reference" / "h100_kernels_graph.json"),
                    help="kernel timings to import for the leave-one-shape-out check (skipped when absent)")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run on a CPU (a smoke test of this script; use a small --scale and --prefill-tokens)")
    a = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print("gpu_check: no CUDA device; nothing to do (--allow-cpu runs it on the CPU)", file=sys.stderr)
        return 0
    device = "cuda" if cuda else "cpu"
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    t_all = time.perf_counter()
    print(f"device: {gpu}  torch {torch.__version__}  cuda {torch.version.cuda}")
    shape = [f"executor.scale={a.scale}", f"executor.dtype={a.dtype}", f"executor.prefill_tokens={a.prefill_tokens}",
             f"executor.kv_len={a.kv_len}"]
    hardware = a.hardware or next((p for key, p in (("H200", "h200_sxm"), ("H100", "h100_sxm")) if key in gpu), None)
    record: dict = {
        "gpu": gpu, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git_commit(),
        "measured": True, "note": None if cuda else "a CPU smoke run of benchmarks/gpu_check.py --allow-cpu, "
                                                     "not a GPU measurement",
        "commands": [], "wall_s": {}}
    with tempfile.TemporaryDirectory(prefix="cmtwin-gpu-check-") as tmp:
        work = Path(tmp)
        cmd = ["calibrate", *shape, "--format", "json"]
        rc, out, dt = sh(cmd, 150, work)
        record["commands"].append("cmtwin " + " ".join(cmd))
        record["wall_s"]["calibrate"] = round(dt, 1)
        print(f"calibrate: rc {rc} in {dt:.1f} s")
        if rc != 0:
            print("calibrate failed", file=sys.stderr)
            return 1
        cal = json.loads(out)
        record["calibrate"] = {k: cal.get(k) for k in ("measurements", "in_sample_median_abs_err",
                                                        "in_sample_max_abs_err", "timing", "wall_s")}
        print(f"  {cal['measurements']} timings ({(cal.get('timing') or {}).get('method')}), in-sample median "
              f"|err| {cal['in_sample_median_abs_err']:.1%}, max {cal['in_sample_max_abs_err']:.1%}")
        import yaml

        record["calibrated_profile"] = yaml.safe_load(Path(cal["path"]).read_text() if Path(cal["path"]).is_absolute()
                                                      else (work / cal["path"]).read_text())
        ref = Path(a.ref)
        if ref.is_file():
            rc, out, dt = sh(["calibrate", "--import", str(ref), "--format", "json"], 60, work)
            if rc == 0:
                loso = json.loads(out)["loso_median_abs_err"]
                record["import"] = {"file": ref.name, "loso_median_abs_err": loso}
                print(f"import {ref.name}: LOSO median |err| {loso:.1%} ({dt:.1f} s)")
        meas = work / "measurement.json"
        over = [f"+deployment={a.deployment}", *([f"hardware={hardware}"] if hardware else []), *shape,
                f"executor.layers={a.layers}"]
        ranks, refused = fitting_ranks(over, a.ranks, device)  # e.g. 4 ranks' 4K-token prefill logits on an H100
        for line in refused:
            print(f"memory: {line}; fewer ranks")
        record["ranks"] = {"asked": a.ranks, "ran": ranks, "refused": refused}
        cmd = ["execute", *over,
               f"executor.ranks={ranks}", "--compare", "--measurement", str(meas), "--format", "json", "--no-record"]
        rc, out, dt = sh(cmd, max(60.0, 290.0 - (time.perf_counter() - t_all)), work)  # the 5-minute budget
        record["commands"].append("cmtwin " + " ".join(cmd[:-1]).replace(str(meas), "measurement.json"))
        record["wall_s"]["execute"] = round(dt, 1)
        if rc not in (0, 1) or not out.strip():
            print(f"execute failed (rc {rc})", file=sys.stderr)
            return 1
        res = json.loads(out)
        record.update(numerics=res["numerics"], timing=res["timing"], estimate=res["estimate"],
                      phases=res["phases"], compare=res["compare"], measurement=json.loads(meas.read_text()))
        record["shipped_profile"] = next(p["name"] for p in res["compare"]["profiles"] if p["role"] == "shipped")
    print(f"execute: {dt:.1f} s, numerics {res['numerics']}, timing {res['timing'].get('method')}"
          + (f" (fallback: {res['timing']['fallback']})" if res["timing"].get("fallback") else ""))
    for p in res["compare"]["profiles"]:
        for ph, d in p["per_layer"].items():
            graph = (f", graphed {d['graph_us']:.1f} us ({d['graph_rel_err']:+.1%})" if d.get("graph_us") else "")
            print(f"{p['name']:>24s} ({p['role']}) {ph}: measured {d['measured_us']:.1f} us, predicted "
                  f"{d['predicted_us']:.1f} us ({(d['rel_err'] or 0):+.1%}){graph}")
    left = 290.0 - (time.perf_counter() - t_all)
    if not a.no_fp8 and a.dtype != "fp8" and left > 40:  # W8A8 fp8 through torch._scaled_mm, at the same shapes
        cmd = ["execute", f"+deployment={a.deployment}", *[x for x in shape if "dtype" not in x],
               "executor.dtype=fp8", "executor.phase=decode", "executor.layers=1", "executor.ranks=2",
               "executor.timing=sync", "--format", "json", "--no-record"]
        with tempfile.TemporaryDirectory(prefix="cmtwin-gpu-check-fp8-") as tmp8:
            rc, out, dt = sh(cmd, left - 10, Path(tmp8))
        record["commands"].append("cmtwin " + " ".join(cmd))
        record["wall_s"]["execute_fp8"] = round(dt, 1)
        fp8 = {"rc": rc}
        if out.strip().startswith("{"):
            r8 = json.loads(out)
            fp8.update(numerics=r8.get("numerics"), max_rel_err=r8.get("max_rel_err"), phases=r8.get("phases"),
                       per_layer=r8.get("per_layer"))
        record["fp8"] = fp8
        print(f"execute fp8: rc {rc} in {dt:.1f} s" + (f", numerics {fp8.get('numerics')}" if "numerics" in fp8
                                                       else " (exit 2: refused, see stderr above)" if rc == 2 else ""))
    record["wall_s"]["total"] = round(time.perf_counter() - t_all, 1)
    path = Path(a.out) / f"{a.name or slug(gpu)}_check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"wrote {path}; total {record['wall_s']['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
