"""`cmtwin calibrate`: measure the local device (or import measurements) -> a hardware profile YAML."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from cmtwin.cli.common import add_format, add_overrides, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure the local device into a hardware profile (hardware=<name>)",
                       description="Microbenchmark the executor's operator classes over a grid of token counts "
                                   "(at executor.scale and executor.dtype) plus matmul peaks, copy bandwidth and "
                                   "launch overhead, and write a hardware profile YAML under "
                                   "./cmtwin_conf/hardware/ that hardware=<name> and executor.profile=<name> "
                                   "select. --import fits a profile to kernel timings measured elsewhere instead.")
    add_overrides(p)
    add_format(p)
    p.add_argument("--name", help="profile name (default: local_<device>, or <file stem> with --import)")
    p.add_argument("--out", metavar="FILE", help="write here (default: ./cmtwin_conf/hardware/<name>.yaml)")
    p.add_argument("--import", dest="import_file", metavar="JSON",
                   help="fit to kernel timings measured elsewhere: a JSON file of rows {op, shape, dtype, seconds, flops, bytes} (docs/your-cluster.md; examples: benchmarks/data/h200_kernels_*.json in a checkout)")
    p.add_argument("--base", default="h100_sxm", help="with --import: the profile giving peaks and bandwidth")
    p.add_argument("--quick", action="store_true", help="a coarser grid (tests)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.executor import calibrate as C

    spec, _ = load_spec(args.overrides, require_deployment=False)
    out: dict = {}
    if args.import_file:
        from cmtwin.executor.api import load_profile

        base = load_profile(args.base)
        pairs = C.probe_rows(args.import_file)
        name = args.name or f"{base.name}_{Path(args.import_file).stem}"
        src = f"cmtwin calibrate --import {Path(args.import_file).name} (on {base.name} peaks)"
        hw = C.fit_imported(pairs, base, src, name)
        loo = C.leave_one_out(pairs, base)
        errs = [abs(p - m) / m for _, m, p in loo]
        med = statistics.median(errs)
        header = (f"Fitted by `cmtwin calibrate --import {args.import_file} --base {args.base}`: {len(pairs)} rows.\n"
                  f"Leave-one-shape-out: median |error| {med:.1%}, max {max(errs):.1%}.")
        out.update(rows=len(pairs), loso_median_abs_err=med, loso_max_abs_err=max(errs),
                   loso=[{"op": n, "measured_us": m, "predicted_us": p} for n, m, p in loo])
    else:
        from cmtwin.cli.common import progress_bar, say
        from cmtwin.executor import budget, timing
        from cmtwin.executor.run import pick_device, set_threads

        device = pick_device(spec.executor.device, spec.executor.dtype)
        set_threads(spec.executor, device)
        clock = timing.clock_for(spec.executor, device)  # CUDA graphs on CUDA, as execute times its operators
        name = args.name or f"local_{device}"
        est = budget.check_calibrate(spec, device, quick=args.quick)  # refuses at once what will not fit
        say(f"[dim]{est.memory_line()}[/]")
        bar, progress = progress_bar()
        t0 = time.perf_counter()
        with bar:
            total = C.grid_passes(args.quick) * len(C.grid_points(spec, device, quick=args.quick))
            done = [0]

            def tick():
                done[0] += 1
                progress("operators over the token grid", done[0], total)

            def measure(clock):  # the peaks, then the operators; all of it again, synchronised, if a capture fails
                progress("peaks (matmul, copy, launch)", 0, 1)
                peaks = C.peaks_profile(device, name, quick=args.quick, clock=clock)
                progress("peaks (matmul, copy, launch)", 1, 1)
                rough, est.time_basis = budget.with_operator_cost(peaks[0], device)
                est.seconds = C.seconds(spec, device, rough, quick=args.quick)
                bar.console.print(f"[dim]{est.time_line()}[/]")
                done[0] = 0
                progress("operators over the token grid", 0, total)
                return C.calibrate_local(spec, device=device, name=name, quick=args.quick, tick=tick, peaks=peaks,
                                         clock=clock)

            (hw, pairs), clock = timing.with_fallback(
                clock, measure, warn=lambda c: say(f"[yellow]warning:[/] {c.describe()['fallback']}"))
        out["wall_s"] = round(time.perf_counter() - t0, 3)
        out["estimate"] = {**est.to_dict(), "measured_peak_bytes": est.measured_peak(device)}
        measured = out["estimate"]["measured_peak_bytes"]
        say(f"[dim]calibrate took {out['wall_s']:.0f} s (estimated {est.seconds:.0f} s); memory estimated "
            f"{budget.fmt(est.peak_bytes)}" + (f", peak resident growth {budget.fmt(measured)}" if measured is not None
                                               else "") + "[/]")
        from cmtwin.twin.cost import op_time

        fit = [(op.name, op.tokens, us, op_time(op, hw).us) for op, us in pairs]
        errs = [abs(p - m) / m for *_, m, p in fit]
        worst = max(range(len(fit)), key=errs.__getitem__)
        wname, wtokens, *_ = fit[worst]
        header = (f"Measured by `cmtwin calibrate {' '.join(args.overrides)}` on {device}: {len(pairs)} operator "
                  f"timings ({timing.method_text(clock)}); in-sample median |error| {statistics.median(errs):.1%}, "
                  f"max {errs[worst]:.1%} ({wname} at {wtokens} tokens).")
        out.update(measurements=len(pairs), in_sample_median_abs_err=statistics.median(errs),
                   in_sample_max_abs_err=errs[worst], timing=clock.describe())
    path = Path(args.out) if args.out else Path("cmtwin_conf") / "hardware" / f"{name}.yaml"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(C.profile_yaml(hw, header))
    except OSError as exc:
        from cmtwin.errors import CmtwinError

        raise CmtwinError(f"--out {path}: cannot write the file ({exc.strerror}).", key="--out",
                          fix="give a writable file path") from None
    out.update(profile=name, path=str(path))
    if args.format == "json":
        print_json(out)
    else:
        print(header)
        print(f"wrote {path} (select with hardware={name} or executor.profile={name})", file=sys.stderr)
    return 0
