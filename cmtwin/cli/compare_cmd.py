"""`cmtwin compare`: two or more deployments predicted side by side, per device, per supernode and per kW."""

from __future__ import annotations

import argparse
import shlex

from cmtwin.cli.common import add_db, add_format, print_json

_DEPLOYMENT = "+deployment="


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="predict several deployments side by side (per device, per supernode, per kW)",
        description="Compile and predict each deployment and print them side by side: decode and prefill "
                    "figures per device, per supernode (the pool's devices) and per kW of accelerator power, with "
                    "each phase's bottleneck. Every +deployment=NAME is one system; the other overrides apply to "
                    "all of them. Each system is recorded as a plan run (compare them later with `cmtwin runs diff`).",
        epilog="Example: cmtwin compare +deployment=r1_ep320 +deployment=r1_gb200_nvl72 slo.tpot_ms=50 "
               "--system '+deployment=r1_gb200_nvl72 precision=fp4'")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="one +deployment=NAME per system, and Hydra overrides applied to every system")
    p.add_argument("--system", action="append", default=[], metavar="OVERRIDES",
                   help="one more system, as a quoted list of overrides (e.g. '+deployment=r1_gb200_nvl72 "
                        "precision=fp4'); the common overrides apply to it too")
    add_format(p)
    add_db(p)
    p.add_argument("--no-record", action="store_true", help="do not record the runs in the store")
    p.set_defaults(func=run)


def common_of(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith(_DEPLOYMENT)]


def systems_of(overrides: list[str], extra: list[str]) -> list[list[str]]:
    """Each system's overrides: its own (a +deployment=, or a --system list) followed by the common ones."""
    from cmtwin.errors import CmtwinError

    own = [[o] for o in overrides if o.startswith(_DEPLOYMENT)] + [shlex.split(s) for s in extra if shlex.split(s)]
    common = common_of(overrides)
    if len(own) < 2:
        raise CmtwinError(f"cmtwin compare: {len(own)} system(s) given; a comparison needs two or more.",
                          key="+deployment", fix="give two or more +deployment=NAME (or --system '...' lists), "
                                                  "e.g. cmtwin compare +deployment=r1_ep320 +deployment=r1_gb200_nvl72")
    return [o + common for o in own]


def figures(spec, plan, pred) -> dict:
    """One system's row of the comparison."""
    hw = spec.hardware
    watts = hw.power_w.value if hw.power_w is not None else None
    out: dict = {"deployment": spec.deployment.name, "plan_hash": plan.plan_hash, "hardware": plan.hardware,
                 "precision": plan.precision, "devices_in_supernode": plan.devices_total,
                 "devices_used": sum(p.devices for p in plan.pools), "power_w_per_device": watts,
                 "power_source": hw.power_w.source if hw.power_w is not None else None}
    for phase in ("decode", "prefill"):
        fig = getattr(pred, phase)
        if fig is None:
            out[phase] = None
            continue
        devices = sum(p.devices for p in plan.pools_of(phase)) or sum(p.devices for p in plan.pools)
        per_dev = fig.tokens_per_s_per_device
        row = {"tokens_per_s_per_device": per_dev, "devices": devices, "tokens_per_s_pool": per_dev * devices,
               "tokens_per_s_per_kw": per_dev / (watts / 1000) if watts else None,
               "bottleneck": pred.bottlenecks.get(phase, "")}
        if phase == "decode":
            row |= {"tpot_ms": fig.tpot_ms, "batch_per_device": fig.batch_per_device}
        else:
            row |= {"ttft_ms": fig.ttft_ms}
        out[phase] = row
    return out


def run(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    rows = []
    common = common_of(args.overrides)
    specs = [(o, *load_spec(o)) for o in systems_of(args.overrides, args.system)]  # all compose before any records
    for overrides, spec, composed in specs:  # every system compiles and predicts before any is recorded
        started = datetime.now(timezone.utc)
        plan = compile_plan(spec)
        pred = predict(spec, plan)
        row = figures(spec, plan, pred)
        row["overrides"] = overrides
        row["system"] = " ".join(o.removeprefix(_DEPLOYMENT) for o in overrides[:len(overrides) - len(common)])
        rows.append((row, spec, composed, plan, pred, started))
    if not args.no_record:
        from cmtwin.cli.plan_cmd import record_plan

        url = args.db or specs[0][1].store.url
        for row, spec, composed, plan, pred, started in rows:
            row["run_id"] = record_plan(url, spec, composed, plan, pred, started=started)
    rows = [r[0] for r in rows]
    if args.format == "json":
        print_json({"common_overrides": common, "systems": rows})
    else:
        _render(rows, common)
    return 0


def _render(rows: list[dict], common: list[str]) -> None:
    from rich.table import Table

    from cmtwin.cli.common import console

    # the title a line above the table (a table's title wraps to the table's width)
    title = ("Predicted side by side" + (f" ({' '.join(common)})" if common else "")
             + "; per kW counts the accelerators' published board power only")
    t = Table()
    t.add_column("")
    for r in rows:
        t.add_column(r["system"].replace(" ", "\n"), justify="right")

    def line(label: str, get) -> None:
        vals = [get(r) for r in rows]
        if any(v not in (None, "") for v in vals):
            t.add_row(label, *("—" if v in (None, "") else v for v in vals))

    def num(phase: str, key: str, fmt: str = "{:,.0f}"):
        return lambda r: None if r[phase] is None or r[phase].get(key) is None else fmt.format(r[phase][key])

    line("hardware, precision", lambda r: f"{r['hardware']}, {r['precision']}")
    line("devices used / in the supernode", lambda r: f"{r['devices_used']} / {r['devices_in_supernode']}")
    line("power per device (W)", lambda r: f"{r['power_w_per_device']:,.0f}" if r["power_w_per_device"] else None)
    line("decode devices", num("decode", "devices"))
    line("decode batch per device", num("decode", "batch_per_device", "{:,.1f}"))
    line("TPOT (ms)", num("decode", "tpot_ms", "{:,.2f}"))
    line("decode tokens/s per device", num("decode", "tokens_per_s_per_device"))
    line("decode tokens/s per supernode", num("decode", "tokens_per_s_pool"))
    line("decode tokens/s per kW", num("decode", "tokens_per_s_per_kw"))
    line("prefill devices", num("prefill", "devices"))
    line("TTFT (ms)", num("prefill", "ttft_ms", "{:,.1f}"))
    line("prefill tokens/s per device", num("prefill", "tokens_per_s_per_device"))
    line("prefill tokens/s per supernode", num("prefill", "tokens_per_s_pool"))
    line("prefill tokens/s per kW", num("prefill", "tokens_per_s_per_kw"))
    line("run", lambda r: str(r.get("run_id") or ""))
    c = console()
    c.print(title)
    c.print(t)
    for r in rows:
        for phase in ("decode", "prefill"):
            if r[phase] and r[phase]["bottleneck"]:
                c.print(f"{r['system']}, {phase}: {r[phase]['bottleneck']}")
    for r in rows:
        if r["power_w_per_device"] is None:
            c.print(f"{r['system']}: no per-kW figure: {r['hardware']} has no published board power in its profile")
