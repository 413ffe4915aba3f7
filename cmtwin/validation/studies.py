"""Layout studies made of twin predictions (printed as Markdown for docs/layouts.md).

    python -m cmtwin.validation.studies h200     # 8 x H200, 1,024/1,024 tokens: TP8 vs DP8 attention, agg vs disagg
    python -m cmtwin.validation.studies layouts [--plot DIR]  # TP vs DP attention on 8 x H200 and 16 x H100,
                                                              # 1K/1K and 8K/1K, TPOT and TTFT vs concurrency
"""

from __future__ import annotations

import sys


def _predict(overrides: list[str]):
    from cmtwin.config.compose import load_spec
    from cmtwin.errors import CmtwinError
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    try:
        spec, _ = load_spec(overrides)
        return predict(spec, compile_plan(spec))
    except CmtwinError:
        return None  # infeasible at this point (e.g. the KV cache does not fit)


def h200_layouts(concurrency=(8, 16, 32, 64, 128, 256, 512)) -> str:
    """Output tokens/s per GPU on 2 x 8 H200 (1,024/1,024): both nodes aggregated (TP8 or DP8 attention) vs one
    TP8 prefill node feeding one DP8/EP8 decode node, at the same total concurrency."""
    rows = []
    for c in concurrency:
        agg = {}
        for name, tp in (("TP8", 8), ("DP8", 1)):
            p = _predict(["+deployment=r1_h200_tp8_agg", f"decode.tp={tp}", f"serving.concurrency={c}"])
            agg[name] = p
        d = _predict(["+deployment=r1_h200_disagg", f"serving.concurrency={2 * c}"])
        if d is not None:
            # decode node output vs prefill node input capacity (1,024 prompt tokens per 1,024 output tokens)
            out = d.decode.tokens_per_s_per_device * 8
            cap = d.prefill.tokens_per_s_per_device * 8
            disagg = min(out, cap) / 16
            bound = "prefill" if cap < out else "decode"
        rows.append((c, agg, d, disagg if d else None, bound if d else ""))
    lines = ["| concurrency per node | TP8 agg tok/s/GPU (TPOT ms) | DP8 agg tok/s/GPU (TPOT ms) | "
             "disagg tok/s/GPU (TPOT ms, bound) |", "|---|---|---|---|"]
    fmt = lambda p: "infeasible" if p is None else f"{p.decode.tokens_per_s_per_device:,.0f} ({p.decode.tpot_ms:.1f})"
    cross_tp, cross_agg = None, None
    for c, agg, d, dis, bound in rows:
        dis_s = "infeasible" if d is None else f"{dis:,.0f} ({d.decode.tpot_ms:.1f}, {bound})"
        lines.append(f"| {c} | {fmt(agg['TP8'])} | {fmt(agg['DP8'])} | {dis_s} |")
        best_agg = max((p.decode.tokens_per_s_per_device for p in agg.values() if p), default=0)
        if agg["TP8"] and agg["DP8"] and cross_tp is None and agg["DP8"].decode.tokens_per_s_per_device > agg["TP8"].decode.tokens_per_s_per_device:
            cross_tp = c
        if dis is not None and cross_agg is None and dis > best_agg:
            cross_agg = c
    lines.append("")
    lines.append(f"DP8 attention overtakes TP8 from a concurrency of {cross_tp} per node." if cross_tp else
                 "TP8 attention stays ahead of DP8 over this range.")
    lines.append(f"Disaggregation overtakes the best aggregated layout from a concurrency of {cross_agg} per node."
                 if cross_agg else "The best aggregated layout stays ahead of disaggregation over this range.")
    return "\n".join(lines)


# The layout decision: one aggregated instance, TP attention over all its GPUs or DP attention (one rank per GPU),
# EP over all of them, FP8 weights and KV cache, at the same concurrency.
SYSTEMS = {
    "8 x H200": ("+deployment=r1_h200_tp8_agg", 8),
    "16 x H100": ("+deployment=r1_h100_tp16", 16),
}
WORKLOADS = {"1K/1K": (1024, 1024), "8K/1K": (8192, 1024)}
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def layout_point(system: str, workload: str, tp: int, concurrency: int):
    """(prediction, requests actually served) for one point, or (None, c) where the plan does not fit. DP attention
    below one request per rank runs the step of one request per rank with the other ranks idle in attention (they
    still join every MoE collective): the same step, fewer tokens."""
    deployment, gpus = SYSTEMS[system]
    prompt, output = WORKLOADS[workload]
    groups = gpus // tp
    served = max(concurrency, groups)
    p = _predict([deployment, f"decode.tp={tp}", f"serving.concurrency={served}", "kv_cache_dtype=fp8",
                  f"workload.prompt_len={prompt}", f"workload.output_len={output}", "mtp.draft_tokens=0"])
    return p, min(concurrency, served)


def layout_decision(plot_dir=None) -> str:
    """TPOT, TTFT and output tokens/s per GPU against concurrency for TP and DP attention (Markdown), where the
    curves cross, and the operators that make the difference at 8 and 128 requests."""
    out = []
    curves = {}
    for system, (_, gpus) in SYSTEMS.items():
        for workload in WORKLOADS:
            out += [f"### {system}, {workload} tokens", "",
                    f"| concurrency | TP{gpus}: TPOT ms | TTFT ms | tok/s/GPU | DP{gpus}: TPOT ms | TTFT ms | tok/s/GPU |",
                    "|---|---|---|---|---|---|---|"]
            rows = {}
            for c in CONCURRENCY:
                cells = []
                for tp in (gpus, 1):
                    p, served = layout_point(system, workload, tp, c)
                    if p is None:
                        cells.append(None)
                        continue
                    tps = p.decode.tokens_per_s_per_device * served / max(served, gpus // tp * p.decode.batch_per_group)
                    cells.append((p.decode.tpot_ms, p.prefill.ttft_ms, tps, p))
                rows[c] = cells
                fmt = lambda x: "does not fit" + " | |" if x is None else f"{x[0]:.1f} | {x[1]:,.0f} | {x[2]:,.0f}"
                out.append(f"| {c} | {fmt(cells[0])} | {fmt(cells[1])} |")
            curves[system, workload] = rows
            both = [(c, r) for c, r in rows.items() if r[0] and r[1]]
            cross = next((c for c, r in both if r[1][0] < r[0][0]), None)
            out += ["", f"DP{gpus} attention gives the lower TPOT from {cross} concurrent requests on." if cross else
                    f"TP{gpus} attention gives the lower TPOT at every concurrency that fits.", ""]
            for c in (8, 128):
                r = rows.get(c)
                if not r or not r[0] or not r[1]:
                    continue
                parts = []
                for label, cell in ((f"TP{gpus}", r[0]), (f"DP{gpus}", r[1])):
                    top = sorted((x for x in cell[3].breakdown if x.phase == "decode"), key=lambda x: -x.time_us)[:4]
                    parts.append(f"{label}: " + ", ".join(f"{x.operator} {x.time_us / 1e3:.1f}" for x in top))
                out.append(f"- at {c} requests, the decode step's largest operators (ms): " + "; ".join(parts))
            out.append("")
    if plot_dir is not None:
        out.append(f"plot: {_plot_layouts(curves, plot_dir)}")
    return "\n".join(out)


def _plot_layouts(curves, plot_dir) -> str:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), sharey=False)
    for ax, ((system, workload), rows) in zip(axes, curves.items()):
        gpus = SYSTEMS[system][1]
        for i, label in enumerate((f"TP{gpus}", f"DP{gpus}")):
            pts = [(c, r[i][0]) for c, r in rows.items() if r[i]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{system}, {workload}", fontsize=9)
        ax.set_xlabel("concurrent requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("TPOT ms (twin)")
    fig.tight_layout()
    path = Path(plot_dir) / "layout_decision.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv: list[str]) -> None:  # pragma: no cover - a report for people
    if argv[:1] == ["h200"]:
        print(h200_layouts())
    elif argv[:1] == ["layouts"]:
        plot = argv[argv.index("--plot") + 1] if "--plot" in argv else None
        print(layout_decision(plot))
    else:
        print(__doc__)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
