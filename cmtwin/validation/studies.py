"""Layout studies made of twin predictions (printed as Markdown for docs/layouts.md).

    python -m cmtwin.validation.studies h200     # 8 x H200, 1,024/1,024 tokens: TP8 vs DP8 attention, agg vs disagg
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


def main(argv: list[str]) -> None:  # pragma: no cover - a report for people
    if argv[:1] == ["h200"]:
        print(h200_layouts())
    else:
        print(__doc__)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
