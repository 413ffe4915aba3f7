"""Did a simulation reach steady state? The measurement window is split in two halves and three figures compared:

- the requests waiting (for a prefill forward, or with their KV landed, for a decode slot): a backlog that grows
  over the window means the offered load exceeds what the deployment sustains;
- the median TTFT of the requests arriving in each half (counted when their first token is known, so requests
  still decoding at the horizon are included);
- decode output tokens/s per device: a second half well above the first means the decode pool was still filling.

A run is steady when none of them moved by more than its tolerance: the waiting count's least-squares trend over the
window (slope x window) by more than a quarter of its mean, twice its scatter about the trend and 2 requests; the
TTFT median by more than 20% and 10 ms (more when a half holds few requests: 2/sqrt(n), about three standard errors
of a median); decode throughput by more than 10% (more for a small pool, whose population fluctuates by about its
square root). An offered load at or above the twin's capacity estimate is never called steady: such a queue has no
stationary state, however flat a short window looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TTFT_TOL = 0.20
"""Largest relative change of the TTFT median between the halves of a steady window."""
TTFT_FLOOR_MS = 10.0
"""...and absolute change, ms (a median of a few tens of ms moves by more than 20% on a forward's granularity)."""
WAITING_TOL = 0.25
"""Largest trend of the waiting requests over the window, relative to their mean (above twice their scatter)."""
THROUGHPUT_TOL = 0.10
"""Largest relative change of decode tokens/s between the halves (raised to 3/sqrt(requests decoding))."""
MIN_REQUESTS = 20
"""Fewest first tokens per half of the window for a verdict."""
MIN_TICKS = 5
"""Fewest samples (sim.sample_interval_s apart) over the window for a verdict."""


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def steady_state(firsts: tuple[Sequence[float], Sequence[float]], series: list[tuple[float, int, int, float]],
                 window: tuple[float, float], *, rate: float, load: float | None,
                 decode_devices: int, offline: bool) -> dict:
    """The verdict and its figures. firsts: the arrival times and the TTFTs (s), as two columns, of the requests
    that arrived in the window; series: (t, waiting, decoding, cumulative output tokens) at every sample tick;
    window: (start, end) simulated s."""
    w0, w1 = window
    out: dict = {"reached": None, "verdict": "", "window_s": [_r(w0), _r(w1)],
                 "ttft_p50_ms": {"first_half": None, "second_half": None},
                 "waiting": {"first_half": None, "second_half": None, "slope_per_s": None},
                 "decode_tokens_per_s_per_device": {"first_half": None, "second_half": None}}
    if offline:
        out["verdict"] = "not applicable: an offline batch drains; it has no steady state"
        return out
    mid = 0.5 * (w0 + w1)
    at, x = (np.asarray(c, dtype=float) for c in firsts)
    late = at >= mid
    ttft = [x[~late], x[late]]
    p50 = [1e3 * float(np.median(h)) if len(h) else None for h in ttft]
    out["ttft_p50_ms"] = {"first_half": _r(p50[0]), "second_half": _r(p50[1])}
    ticks = [s for s in series if w0 <= s[0] <= w1]
    if len(ticks) >= MIN_TICKS:
        t = np.array([s[0] for s in ticks])
        q = np.array([s[1] for s in ticks], dtype=float)
        first, second = q[t < mid], q[t >= mid]
        wq = [float(first.mean()) if len(first) else None, float(second.mean()) if len(second) else None]
        slope, icpt = (float(x) for x in np.polyfit(t, q, 1))
        scatter = float(np.std(q - (icpt + slope * t)))
        out["waiting"] = {"first_half": _r(wq[0], 2), "second_half": _r(wq[1], 2), "slope_per_s": _r(slope, 4)}
        st = np.array([0.0] + [s[0] for s in series])
        so = np.array([0.0] + [s[3] for s in series])
        o0, om, o1 = np.interp([w0, mid, w1], st, so)
        tp = [(om - o0) / (mid - w0) / decode_devices, (o1 - om) / (w1 - mid) / decode_devices]
        out["decode_tokens_per_s_per_device"] = {"first_half": _r(tp[0], 2), "second_half": _r(tp[1], 2)}
        decoding = float(np.mean([s[2] for s in ticks]))
    else:
        wq, tp, decoding, slope, scatter = [None, None], [None, None], 0.0, 0.0, 0.0
    if len(ticks) < MIN_TICKS or min(len(x) for x in ttft) < MIN_REQUESTS:
        out["verdict"] = (f"too short to tell ({len(ticks)} samples, {len(ttft[0])} + {len(ttft[1])} first tokens in "
                          f"the window's halves): raise sim.duration_s")
        return out
    why: list[str] = []
    backlog = False
    trend = slope * (w1 - w0)
    if abs(trend) > max(2.0, 2.0 * scatter, WAITING_TOL * float(np.mean(wq))):
        backlog = trend > 0
        why.append(f"waiting requests {'grew' if trend > 0 else 'fell'} {wq[0]:,.0f} -> {wq[1]:,.0f} "
                   f"({slope:+,.2f}/s)")
    ttft_tol = max(TTFT_TOL, 2.0 / math.sqrt(min(len(x) for x in ttft)))
    if abs(p50[1] - p50[0]) > max(ttft_tol * p50[0], TTFT_FLOOR_MS):
        backlog |= p50[1] > p50[0]
        why.append(f"TTFT p50 moved {p50[0]:,.0f} -> {p50[1]:,.0f} ms")
    filling = False
    tol = max(THROUGHPUT_TOL, 3.0 / math.sqrt(decoding)) if decoding > 0 else THROUGHPUT_TOL
    if tp[0] > 0 and abs(tp[1] / tp[0] - 1.0) > tol:
        filling = tp[1] > tp[0]
        why.append(f"decode tokens/s per device moved {tp[0]:,.0f} -> {tp[1]:,.0f}")
    if load is not None and load >= 1.0:
        backlog = True
        why.append(f"the load offered is {load:.2f} x the twin's capacity estimate, where a queue never settles")
    halves = (f"TTFT p50 {p50[0]:,.0f} -> {p50[1]:,.0f} ms, waiting {wq[0]:,.0f} -> {wq[1]:,.0f} requests, decode "
              f"{tp[0]:,.0f} -> {tp[1]:,.0f} tokens/s per device (first -> second half of the window)")
    if not why:
        out["reached"] = True
        out["verdict"] = f"reached: {halves}"
        return out
    out["reached"] = False
    hint = []
    if backlog:
        hint.append(f"lower workload.load or workload.rate_per_s: the {rate:,.1f} req/s offered are more than the "
                    "deployment sustains")
    if filling or not backlog:
        hint.append("the run is still settling: raise sim.duration_s (or sim.warmup_s)")
    advice = "; ".join(hint)
    out["verdict"] = f"NOT reached: {'; '.join(why)}. {advice[0].upper()}{advice[1:]}."
    return out
