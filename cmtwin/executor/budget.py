"""Before `cmtwin execute` or `cmtwin calibrate` starts: the memory it will need, the time it will take, and
whether this machine has that memory.

Memory is counted from the shapes the run allocates (cmtwin.executor.run.PoolShape.memory for execute,
cmtwin.executor.calibrate.memory for calibrate, both built on modules.weight_bytes, whose shapes are the ones
make_weights draws), and compared with the memory available now: MemAvailable in /proc/meminfo (free memory
on a GPU), or CMTWIN_MEM_AVAILABLE when set. A run that does not fit is refused at once, naming what it would
need, what is available and the settings that fit (the largest executor.scale, fewer layers or ranks).

Time: execute times a pilot -- a few of each pool's ranks, one pass and the reference -- and scales it to the
run (execute_pilot); calibrate, whose grid is fixed, costs its operators with the twin's roofline
(cmtwin.twin.cost.op_time) on the peaks it has just measured, with the executor's smallest operator as the
fixed cost of each (with_operator_cost): a rough figure, as it is made before any operator is calibrated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from cmtwin.errors import CmtwinError

ENV = "CMTWIN_MEM_AVAILABLE"
"""Overrides the available memory (bytes, or with a unit: 512M, 8G, 8GiB)."""
USABLE = 0.9
"""The share of the available memory a run may plan to use: the rest is left for what the estimate does not
count -- the allocator's slack (peak resident memory measured 2-10% above the estimated tensors) and the
other processes of the machine, whose use moves while the run goes."""
GRAPH_SEGMENTS = 22 << 20
"""Segment slack of a CUDA graph pool: one 2 MiB small-allocation segment and one 20 MiB large-allocation segment
(PyTorch's caching allocator, c10/cuda/CUDACachingAllocator.cpp: small requests are packed into 2 MB buffers,
requests of 1-10 MB split a 20 MB block), which a private pool cuts afresh from the device."""


def graph_pool_bytes(ex, device: str, transient: int) -> int:
    """What timing with CUDA graphs adds (cmtwin.executor.timing.GraphClock; 0 for a synchronised run): every
    capture allocates from the session's private graph pool, which eager allocations (the token exchange, the
    reference, the next phase's eager warm-up) cannot reuse, so the largest transient can be held twice, once
    there and once in the ordinary pool, plus the pool's own segments (GRAPH_SEGMENTS). A stated conservative
    assumption, not a measurement: no GPU run has measured it yet (the GPU check records torch's peak)."""
    if device != "cuda" or ex.timing == "sync" or ex.processes > 1:
        return 0
    return int(transient) + GRAPH_SEGMENTS


def parse_size(text: str) -> int:
    """Bytes from '123456', '1.5e9', '512M', '8G', '8GiB', '8 GB' (units are binary: K, M, G, T = 2^10...)."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise CmtwinError(f"{ENV}={text!r}: not a size.", key=ENV, fix="give bytes or a size such as 8G or 512M")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def available_memory(device: str) -> tuple[int, str]:
    """(bytes available now, where the figure comes from)."""
    if os.environ.get(ENV):
        return parse_size(os.environ[ENV]), ENV
    if device == "cuda":
        from cmtwin.executor.modules import torch

        return int(torch().cuda.mem_get_info()[0]), "free CUDA memory"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages (os.sysconf)"
    except (ValueError, OSError, AttributeError):  # neither is there: nothing is refused
        import sys

        return sys.maxsize, f"not known here (set {ENV})"


def resident_bytes() -> int | None:
    """This process's resident memory now (VmRSS), None where /proc is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def fmt(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass
class Estimate:
    """A run's memory (bytes by part; their sum is the peak) against the memory available, and its time."""

    verb: str
    parts: dict[str, int]
    available_bytes: int
    available_from: str
    seconds: float | None = None
    time_basis: str | None = None
    baseline_rss: int | None = field(default_factory=resident_bytes)

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def usable_bytes(self) -> int:
        return int(USABLE * self.available_bytes)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    def memory_line(self) -> str:
        parts = ", ".join(f"{k} {fmt(v)}" for k, v in self.parts.items() if v)
        return (f"{self.verb} needs about {fmt(self.peak_bytes)} of memory ({parts}); {fmt(self.available_bytes)} "
                f"available ({self.available_from})")

    def time_line(self) -> str:
        return f"{self.verb} should take about {_secs(self.seconds)} ({self.time_basis})"

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "parts_bytes": dict(self.parts), "available_bytes": self.available_bytes,
                "available_from": self.available_from, "seconds": self.seconds, "time_basis": self.time_basis}

    def measured_peak(self, device: str = "cpu") -> int | None:
        """What the run took at its peak: on a GPU the peak of allocated device memory, on a CPU the process's
        peak resident memory above what it held when the estimate was made."""
        if device == "cuda":
            from cmtwin.executor.modules import torch

            return int(torch().cuda.max_memory_allocated())
        if self.baseline_rss is None:
            return None
        return max(0, peak_resident_bytes() - self.baseline_rss)


def _secs(s: float | None) -> str:
    if s is None:
        return "an unknown time"
    if s < 90:
        return f"{max(1, round(s))} s"
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ execute
def _with(spec, **executor):
    return spec.model_copy(update={"executor": spec.executor.model_copy(update=executor)})


def execute_parts(spec, plan, device: str = "cpu") -> dict[str, int]:
    """Bytes of an execute by part: every phase's pool is built before the passes (weights, their casts,
    inputs), each keeps its routing and last result between passes, and the largest transient of one pass
    or reference comes on top. With executor.processes=P, each worker builds one phase's pool again. On CUDA
    with graph timing, the graphs' private pool (graph_pool_bytes) comes on top."""
    from cmtwin.executor.run import PoolShape, phases_of

    ex = spec.executor
    mems = [PoolShape.of(spec, plan, ph).memory(ex.dtype, ex.kv_len) for ph in phases_of(spec, plan)]
    parts = {k: sum(m[k] for m in mems) for k in ("weights", "weight casts", "inputs")}
    parts["kept between passes"] = sum(m["routing kept"] + m["result kept"] for m in mems)
    # A pass's transient buffers, once freed, stay in the allocator's heap (glibc keeps them for reuse and the
    # reference's differently-sized ones do not fit them): measured at scale 0.02 on r1_ep320, resident memory
    # after the passes held most of a pass's peak when the reference began. So the two add up.
    parts["pass transient"] = max(m["pass peak"] for m in mems)
    if ex.reference:
        parts["reference transient"] = max(m["reference peak"] for m in mems)
    if ex.processes > 1:
        parts["worker processes"] = ex.processes * max(
            m["weights"] + m["weight casts"] + m["inputs"] + m["routing kept"] + m["pass peak"] for m in mems)
    parts["CUDA graph pool"] = graph_pool_bytes(ex, device, parts["pass transient"])
    return parts


def execute_estimate(spec, plan, device: str) -> Estimate:
    avail, source = available_memory(device)
    return Estimate("execute", execute_parts(spec, plan, device), avail, source)


def check_execute(spec, plan, device: str) -> Estimate:
    """The estimate, or a CmtwinError (exit 2) naming the memory needed and available and what fits."""
    est = execute_estimate(spec, plan, device)
    if est.fits:
        return est
    ex = spec.executor
    avail = est.usable_bytes

    def need(**kw) -> int:
        return sum(execute_parts(_with(spec, **kw), plan, device).values())

    fixes = []
    s = _largest_scale(lambda x: need(scale=x) <= avail, ex.scale)
    if s is not None:
        fixes.append(f"executor.scale={s:g} (about {fmt(need(scale=s))})")
    if ex.layers > 1:
        n = _largest_int(lambda x: need(layers=x) <= avail, ex.layers - 1)
        if n:
            fixes.append(f"executor.layers={n} (about {fmt(need(layers=n))})")
    from cmtwin.executor.run import PoolShape, phases_of

    widest = max(PoolShape.of(spec, plan, ph).nranks for ph in phases_of(spec, plan))
    if widest > 1:
        n = _largest_int(lambda x: need(ranks=x) <= avail, widest - 1)
        if n:
            fixes.append(f"executor.ranks={n} (about {fmt(need(ranks=n))})")
    if len(phases_of(spec, plan)) > 1:  # one pool's weights instead of two
        fixes += [f"executor.phase={ph} (about {fmt(need(phase=ph))})" for ph in phases_of(spec, plan)
                  if need(phase=ph) <= avail]
    if ex.processes > 1:
        fixes.append("executor.processes=1 (each worker process builds its own weights)")
    raise _refusal(est, spec, fixes)


# ------------------------------------------------------------------------------------------------ calibrate
def calibrate_estimate(spec, device: str, *, quick: bool = False) -> Estimate:
    from cmtwin.executor import calibrate as C

    avail, source = available_memory(device)
    return Estimate("calibrate", C.memory(spec, device, quick=quick), avail, source)


def check_calibrate(spec, device: str, *, quick: bool = False) -> Estimate:
    from cmtwin.executor import calibrate as C

    est = calibrate_estimate(spec, device, quick=quick)
    if est.fits:
        return est

    def need(x: float) -> int:
        return sum(C.memory(_with(spec, scale=x), device, quick=quick).values())

    s = _largest_scale(lambda x: need(x) <= est.usable_bytes, spec.executor.scale)
    raise _refusal(est, spec, [f"executor.scale={s:g} (about {fmt(need(s))})"] if s else [])


def _refusal(est: Estimate, spec, fixes: list[str]) -> CmtwinError:
    ex = spec.executor
    what = (f"executor.scale={ex.scale:g}" + (f", executor.layers={ex.layers}" if est.verb == "execute" else "")
            + f", executor.dtype={ex.dtype}")
    fix = ("run with " + ", or ".join(fixes) if fixes else "run on a machine with more memory") + (
        f"; {ENV}=<bytes> overrides the available figure")
    return CmtwinError(f"{est.verb} at {what} would need about {fmt(est.peak_bytes)} of memory at its peak ("
                       + ", ".join(f"{k} {fmt(v)}" for k, v in est.parts.items() if v)
                       + f"), but {fmt(est.available_bytes)} is available ({est.available_from}; a run may plan "
                       f"{USABLE:.0%} of it, {fmt(est.usable_bytes)}).",
                       key="executor.scale", fix=fix)


def _largest_scale(fits: Callable[[float], bool], below: float, floor: float = 1e-3) -> float | None:
    """The largest scale under `below` (two significant digits, rounded down) that fits; None if not even
    `floor` does."""
    import math

    if not fits(floor):
        return None
    lo, hi = floor, below
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    digits = 1 - math.floor(math.log10(lo))
    s = math.floor(lo * 10**digits) / 10**digits
    return s if s > 0 and fits(s) else None


def _largest_int(fits: Callable[[int], bool], top: int) -> int | None:
    """The largest of 1..top that fits (None if none does)."""
    from cmtwin.twin.slo import largest_true

    return largest_true(fits, 1, top) if top >= 1 else None


# ------------------------------------------------------------------------------------------------ time
def with_operator_cost(hw, device: str):
    """(profile, basis): a peaks-only profile whose fixed cost per operator is the executor's smallest operator
    (an RMSNorm of one token, timed as the executor times it) instead of one bare kernel launch: every
    executed operator runs several kernels and the timer around them."""
    us = _smallest_op_us(device)
    hw = hw.model_copy(update={"launch_overhead_us": hw.launch_overhead_us.model_copy(
        update={"value": us, "source": "the executor's RMSNorm of one token"})})
    return hw, (f"a rough figure: the twin's roofline on this {device}'s peaks with {us:.0f} us per operator, "
                "before calibration measures each operator")


def _smallest_op_us(device: str) -> float:
    import statistics

    from cmtwin.executor import layers as L
    from cmtwin.executor.modules import Kernels, torch

    t = torch()
    K = Kernels("fp32", 1e-6)
    x, w = t.randn(1, 64, device=device), t.randn(64, device=device)
    tm = L.Timer(True, device == "cuda")
    for _ in range(51):
        with tm("norm"):
            K.rmsnorm(x, w)
    return statistics.median(s for _, s in tm.events[1:]) * 1e6


def execute_pilot(spec, plan, device: str) -> tuple[float, str]:
    """(seconds, basis): each phase's pool built and run on a few of its ranks (an eighth, at most 8, at least
    1) -- one untimed and one timed pass and the reference -- and scaled to the run: building by the bytes
    built, a pass and the reference by the ranks, the pass by warm-up + executor.passes. The pilot runs this
    executor on this machine as it is now (its load included), which no cost model of the kernels alone
    does: the executor's own bookkeeping between operators is a third of a pass at reduced scale."""
    import time as _time

    from cmtwin.executor import timing
    from cmtwin.executor.api import prediction_profile
    from cmtwin.executor.run import PoolRun, PoolShape, phases_of
    from cmtwin.topology.fabric import fabric_for

    ex = spec.executor
    hw_pred, fabric = prediction_profile(spec, device), fabric_for(spec)
    total, pilots = 0.0, []
    for ph in phases_of(spec, plan):
        full = PoolShape.of(spec, plan, ph)
        k = max(1, min(8, full.nranks // 8))
        small = _with(spec, ranks=k)
        t0 = _time.perf_counter()
        run = PoolRun(small, plan, ph, device=device, hw_pred=hw_pred, hw_comm=spec.hardware, fabric=fabric)
        t1 = _time.perf_counter()

        def pilot(clock):  # timed the way the run will be: graphed passes cost more (a fallback: synchronised)
            with clock.session():
                run.clock = clock
                run.run(timed=False)
                return _time.perf_counter(), run.run()

        clock = timing.clock_for(ex, device)
        (t2, res), _ = timing.with_fallback(clock, pilot)
        t3 = _time.perf_counter()
        if ex.reference:
            run.reference(res)
        t4 = _time.perf_counter()
        big, little = full.memory(ex.dtype, ex.kv_len), run.shape.memory(ex.dtype, ex.kv_len)
        built = sum(big[x] for x in ("weights", "inputs")) / max(1, sum(little[x] for x in ("weights", "inputs")))
        passes = 1 + ex.passes + (1 if clock.method != "sync" else 0)  # warm-up, timed, a graphed-segment pass
        total += (t1 - t0) * built + full.nranks / k * ((t3 - t2) * passes + (t4 - t3))
        pilots.append(f"{k} of {full.nranks} {ph} ranks")
    return total, f"a pilot of {' and '.join(pilots)} timed now on this {device}, scaled to the run"
