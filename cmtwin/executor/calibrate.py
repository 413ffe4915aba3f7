"""`cmtwin calibrate`: measure the local device -> a hardware profile the twin's cost model can use.

Peaks: a large matmul per dtype (peak_tflops), a large copy (memory bandwidth), a tiny kernel (launch
overhead). Operators: the executor's own kernels, one rank of a layer at the configured scale, over a grid
of token counts (decode and prefill); each measurement is paired with the catalogue operator of the same
shape. Per operator (by name: GEMMs of one class differ by shape) and per class (the fallback for operators
not measured), the efficiency at a token count is the one that makes the twin's roofline
(cmtwin.twin.cost.op_time) reproduce the measured time: eff(x) = sum roofline_at_eff_1 / sum (measured -
overhead). Compute and memory efficiency share the curve (x = tokens); between grid points it interpolates.

Import: kernel timings measured elsewhere (a JSON file of rows {op, shape, dtype, seconds, flops, bytes}; format in
docs/your-cluster.md, examples in benchmarks/data/h200_kernels_*.json) are fitted
on a base profile's peaks: a launch overhead for the table and, per class and token count, the compute and
memory efficiencies that minimise the relative error; leave-one-shape-out error reports how well it predicts.
"""

from __future__ import annotations

import math
import platform
import statistics
from datetime import date

from cmtwin.errors import CmtwinError
from cmtwin.executor.modules import torch
from cmtwin.executor.timing import SyncClock
from cmtwin.model.operators import Op
from cmtwin.twin.cost import op_time
from cmtwin.twin.hardware import HardwareProfile

DECODE_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PREFILL_GRID = (8, 16, 32, 64, 128, 256, 512)  # and executor.prefill_tokens / decode_tokens when not on the grid
KV_GRID = (16, 64, 256, 1024, 4096)  # decode attention alone by context length (and executor.kv_len)
KV_BATCHES = (4, 32)  # ... at these decode batches (tokens, one request each)


def _median_time(fn, reps: int, cuda: bool, clock=None, label: str = "probe") -> float:
    """fn's time (seconds): the median of reps synchronised calls after one untimed call, or with a graph
    clock (CUDA) the median of its graph's replays."""
    if clock is None or clock.method == "sync":
        clock = SyncClock(torch().cuda if cuda else None)
    return clock.time_callable(fn, reps, label)


def last_level_cache_bytes(device: str) -> int:
    """The device's last-level cache: a GPU's L2 (torch), a CPU's highest cache level (sysfs); 32 MiB where
    neither can be read."""
    if device == "cuda":
        return int(getattr(torch().cuda.get_device_properties(0), "L2_cache_size", 0) or 32 << 20)
    from pathlib import Path

    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
        best = max(best, int(size.rstrip("KM")) * mult)
    return best or 32 << 20


def cold_ranks(rank_bytes: int, llc: int, max_ranks: int, min_ranks: int = 4) -> int:
    """Ranks whose data together is at least twice the last-level cache (so each rank's operator finds its
    inputs and weights evicted by the others', as in an execute over a large pool), within [min, max]."""
    return max(min_ranks, min(max_ranks, math.ceil(2 * llc / max(1, rank_bytes))))


def undisturbed(per_rank) -> float:
    """An operator's time from repeated measurements of it on several ranks: per rank the fastest repetition,
    then the mean over ranks. Load from elsewhere on the machine (other processes, a virtual machine's
    neighbours) only ever adds time, in bursts of up to tens of percent on a shared 2-core VM; the fastest of
    several repetitions is the operator's own time, where a median still carries part of the bursts. `cmtwin
    execute` reduces its passes the same way (cmtwin.executor.api.fastest_events), so the two compare."""
    mins = [min(v) for v in per_rank]
    return sum(mins) / len(mins)


def measure_peaks(device: str, *, quick: bool = False, clock=None) -> dict:
    t = torch()
    cuda = device == "cuda"
    n, nel = _peak_sizes(device, quick)
    peaks = {}
    for name, dt in (("fp32", t.float32), ("bf16", t.bfloat16)):
        a = t.randn(n, n, device=device).to(dt)
        b = t.randn(n, n, device=device).to(dt)
        sec = _median_time(lambda: a @ b, 3 if quick else 5, cuda, clock, f"{name} matmul")
        peaks[name] = 2 * n**3 / sec / 1e12
    src = t.randn(nel, device=device)
    dst = t.empty_like(src)
    sec = _median_time(lambda: dst.copy_(src), 5, cuda, clock, "copy")
    bw = 2 * 4 * nel / sec / 1e9
    x = t.randn(1, 8, device=device)
    w = t.randn(8, 8, device=device)
    launch = _median_time(lambda: x @ w, 50, cuda, clock, "launch") * 1e6
    return {"peak_tflops": peaks, "bandwidth_GB_per_s": bw, "launch_us": launch, "n": n}


PER_RANK = 9  # routed experts on a calibrated rank (EP32: 8 routed + 1 redundant)


def grid_points(spec, device: str, *, quick: bool = False, max_ranks: int = 32) -> list[tuple[str, int, int, int]]:
    """The grid measure_classes measures: (phase, tokens, rows per local expert, ranks) per point; phase 'kv'
    is decode attention alone (mla_attention) at a context length, ('kv', batch, kv_len, ranks), over
    KV_BATCHES x KV_GRID. At each point there are enough ranks that their data overflows the last-level cache
    twice (cold_ranks)."""
    from cmtwin.executor.modules import Kernels, scaled_model

    ex = spec.executor
    model = scaled_model(spec.model, ex.scale)
    itemsize = Kernels(ex.dtype, spec.model.norm_eps).dt.itemsize
    if quick:
        max_ranks = min(max_ranks, 8)
    grids = {"decode": DECODE_GRID[::3] if quick else DECODE_GRID, "prefill": PREFILL_GRID[::3] if quick else PREFILL_GRID}
    if not quick:  # the executed token counts themselves (a 4K-token prefill chunk on a GPU), not extrapolated
        for phase, T in (("decode", ex.decode_tokens), ("prefill", ex.prefill_tokens)):
            if T and T not in grids[phase]:
                grids[phase] = tuple(sorted((*grids[phase], T)))
    llc = last_level_cache_bytes(device)
    points = []
    for phase, grid in grids.items():
        for T in grid:
            per = max(1, T * model.moe.experts_per_token // 2)
            points.append((phase, T, per, cold_ranks(_point_elements(model, phase, T, per, ex.kv_len) * itemsize,
                                                     llc, max_ranks)))
    kvs = KV_GRID[::2] if quick else KV_GRID
    if ex.kv_len not in kvs:
        kvs = tuple(sorted((*kvs, ex.kv_len)))
    for T in KV_BATCHES[:1] if quick else KV_BATCHES:
        for kv in kvs:
            points.append(("kv", T, kv, cold_ranks(_point_elements(model, "kv", T, kv, kv) * itemsize, llc,
                                                   max_ranks)))
    return points


def _point_elements(model, phase: str, T: int, per: int, kv_len: int) -> int:
    """Elements one rank of a grid point holds: its input, its experts' rows and weights, its latent cache (a
    'kv' point: its latent and rope queries and its cache with the new token)."""
    att, moe = model.attention, model.moe
    if phase == "kv":
        return T * (att.heads + kv_len + 1) * (att.kv_lora_rank + att.qk_rope_head_dim)
    return (T * model.hidden + PER_RANK * per * model.hidden + PER_RANK * 3 * model.hidden * moe.intermediate
            + (T * kv_len * (att.kv_lora_rank + att.qk_rope_head_dim) if phase == "decode" else 0))


def memory(spec, device: str, *, quick: bool = False) -> dict[str, int]:
    """Bytes calibrate allocates, from the shapes measure_peaks and measure_classes allocate: the peak probes
    (transient), the weights (two layers, PER_RANK routed experts per rank of the widest grid point; drawing
    the largest one is transient), every grid point's inputs (made once, kept to the end) and one grid point's
    largest transient (every rank's attention output and one rank's largest operator, layers.transient_bytes);
    on CUDA with graph timing, the graphs' private pool (budget.graph_pool_bytes)."""
    from cmtwin.executor.modules import Kernels, largest_weight_bytes, scaled_model, weight_bytes

    ex = spec.executor
    model = scaled_model(spec.model, ex.scale)
    att = model.attention
    es = Kernels(ex.dtype, spec.model.norm_eps).dt.itemsize
    points = grid_points(spec, device, quick=quick)
    out = weight_bytes(model, layers=2, dense_layers=1, experts=PER_RANK * max(p[3] for p in points), mtp=False,
                       dtype=ex.dtype)
    inputs = 0
    for phase, T, per, ranks in points:
        if phase == "kv":
            inputs += ranks * es * _point_elements(model, "kv", T, per, per)
            continue
        cache = T * ex.kv_len * (att.kv_lora_rank + att.qk_rope_head_dim) if phase == "decode" else 0
        inputs += ranks * es * (T * model.hidden + PER_RANK * per * model.hidden + cache)
    out["inputs"] = inputs
    n, nel = _peak_sizes(device, quick)
    probes = max(3 * 4 * n * n, 2 * 4 * nel)  # a matmul's two operands and its product; the copy's two buffers
    from cmtwin.executor.layers import transient_bytes

    grid = max(ranks * T * model.hidden * es  # every rank's attention output
               + max(transient_bytes(model, es, phase=phase, tokens=T, kv_len=ex.kv_len, dense=d,
                                     expert_rows=[] if d else [per] * PER_RANK) for d in (True, False))
               for phase, T, per, ranks in points if phase != "kv")
    for phase, T, kv, ranks in points:  # decode attention alone: every rank's output, one rank's scores
        if phase == "kv":
            grid = max(grid, ranks * T * att.heads * att.kv_lora_rank * es
                       + T * att.heads * (kv + 1) * (3 * es + 4) + T * att.heads * att.kv_lora_rank * es)
    out["largest transient"] = max(probes, grid, largest_weight_bytes(model))
    from cmtwin.executor.budget import graph_pool_bytes

    out["CUDA graph pool"] = graph_pool_bytes(ex, device, max(probes, grid))  # probes and grid are captured
    return out


def _peak_sizes(device: str, quick: bool) -> tuple[int, int]:
    """measure_peaks' matmul size and copy length."""
    cuda = device == "cuda"
    n = (8192 if cuda else 1024) if not quick else 256
    nel = (1 << 28) if cuda else (1 << 22 if quick else 1 << 24)
    return n, nel


REPS = 6  # timed passes over the grid (after one warm-up pass); --quick: 2


def grid_passes(quick: bool = False) -> int:
    """Passes measure_classes makes over its grid, the warm-up included."""
    return (min(REPS, 2) if quick else REPS) + 1


def measure_classes(spec, device: str, *, quick: bool = False, reps: int = REPS, max_ranks: int = 32,
                    tick=None, clock=None) -> list[tuple[Op, float]]:
    """(catalogue op, measured us) for the executor's kernels at the scaled shapes over the token grid.

    Measured the way `cmtwin execute` runs them: several ranks, each with its own inputs, KV cache, expert
    weights and expert rows, every operator run for all ranks before the next (attention of every rank, then
    routing, experts, shared expert, LM head), so an operator meets the caches it meets in an execute, not a
    single rank's layer repeated hot. At each grid point there are enough ranks that their data overflows the
    last-level cache twice (cold_ranks), as when an execute cycles over a pool of 32 or 320 ranks; per rank
    the fastest of the reps, then the mean over ranks (undisturbed). tick() after each grid point measured.
    clock: how each operator is timed, as `cmtwin execute` times it (cmtwin.executor.timing; default a
    synchronised perf_counter): on CUDA each operator is captured in a CUDA graph and timed over replays,
    the first pass over the grid (the warm-up) running eagerly on the clock's stream."""
    from cmtwin.executor.modules import Kernels, make_weights, scaled_model
    from cmtwin.executor.run import precision_of

    t = torch()
    ex = spec.executor
    model = scaled_model(spec.model, ex.scale)
    att, moe = model.attention, model.moe
    K = Kernels(ex.dtype, spec.model.norm_eps)
    prec = precision_of(ex.dtype)
    per_rank = PER_RANK
    if quick:  # a coarse, fast pass (tests): fewer ranks and repetitions
        reps, max_ranks = min(reps, 2), min(max_ranks, 8)
    points = grid_points(spec, device, quick=quick, max_ranks=max_ranks)
    W = make_weights(model, layers=2, dense_layers=1, seed=ex.seed, device=device,
                     experts=range(per_rank * max(p[3] for p in points)))
    dense, lw = W.layers
    g = t.Generator().manual_seed(ex.seed)
    cuda = device == "cuda"
    clock = clock if clock is not None else SyncClock(t.cuda if cuda else None)
    out: list[tuple[Op, float]] = []

    def rand(*shape):
        return t.randn(*shape, generator=g).to(device, K.dt)

    cases = []  # (phase, T, per, inputs): every grid point's inputs, made once
    H, c, r = att.heads, att.kv_lora_rank, att.qk_rope_head_dim
    for phase, T, per, ranks in points:
        if phase == "kv":  # latent and rope queries, the cache with the new token; per is the kv_len
            cases.append((phase, T, per, [(rand(T, H, c), rand(T, H, r)) for _ in range(ranks)], None,
                          [(rand(T, per + 1, c), rand(T, per + 1, r)) for _ in range(ranks)], None, {}))
            continue
        xs = [rand(T, model.hidden) for _ in range(ranks)]
        rows = [[rand(per, model.hidden) for _ in range(per_rank)] for _ in range(ranks)]
        kv = ([(rand(T, ex.kv_len, att.kv_lora_rank), rand(T, ex.kv_len, att.qk_rope_head_dim))
               for _ in range(ranks)] if phase == "decode" else None)
        pos = (t.full((T,), ex.kv_len, dtype=t.long, device=device) if phase == "decode"
               else t.arange(T, device=device))
        cases.append((phase, T, per, xs, rows, kv, pos, {}))
    # Round-robin over the grid, a pass per rep: a burst of load on the machine slows every grid point a
    # little instead of a few a lot (which would bend the curves).
    with clock.session():
        _grid_passes(K, W, lw, dense, model, att, moe, per_rank, cases, reps, clock, tick)
    for phase, T, per, *_, samples in cases:
        ops = grid_ops(model, prec, phase, T, per, per if phase == "kv" else ex.kv_len)
        by: dict[str, list] = {}
        for o in ops:
            by.setdefault(o.name, []).append(o)
        for op, per_r in samples.items():
            if op in by:  # a routed expert operator per expert, each its share
                us = undisturbed(per_r.values())
                out += [(o, us / len(by[op])) for o in by[op]]
    return out


def _grid_passes(K, W, lw, dense, model, att, moe, per_rank, cases, reps, clock, tick) -> None:
    """reps + 1 passes over the grid (the first untimed: the warm-up), every operator for all ranks of a grid
    point before the next; each timed operator's microseconds land in its grid point's samples."""
    from cmtwin.executor import layers as L

    scale = (att.qk_nope_head_dim + att.qk_rope_head_dim) ** -0.5
    for rep in range(reps + 1):
        for phase, T, per, xs, rows, kv, pos, samples in cases:
            ranks = len(xs)
            tms = [L.Timer(rep > 0, clock=clock) for _ in range(ranks)]  # the first pass warms up
            if phase == "kv":  # decode attention alone at this context length
                for r in range(ranks):
                    with tms[r]("mla_attention"):
                        L.mla_core(*xs[r], *kv[r], scale)
            elif phase == "decode":
                ys = [L.attention_decode(K, lw, xs[r], pos, *kv[r], att, tms[r]) for r in range(ranks)]
            else:
                ys = [L.attention_prefill(K, lw, xs[r], pos, att, tms[r]) for r in range(ranks)]
            if phase != "kv":
                for r in range(ranks):
                    L.dense_mlp(K, dense, ys[r], tms[r])
                for r in range(ranks):
                    L.route(K, lw, ys[r], moe, tms[r])
                for r in range(ranks):
                    L.experts(K, lw, [(r * per_rank + e, rows[r][e]) for e in range(per_rank)], tms[r])
                for r in range(ranks):
                    L.shared_expert(K, lw, ys[r], tms[r])
                for r in range(ranks):
                    L.lm_head(K, W, ys[r], tms[r])
            for r, tm in enumerate(tms):
                for op, sec in tm.events:
                    samples.setdefault(op, {}).setdefault(r, []).append(sec * 1e6)
            if tick:
                tick()


def grid_ops(model, prec, phase: str, T: int, per: int, kv_len: int) -> list[Op]:
    """The catalogue operators one rank runs at a grid point: attention, the dense MLP, the MoE with
    PER_RANK experts of `per` rows each and the shared expert over T tokens, the LM head; at a 'kv' point the
    decode attention alone (mla_attention over kv_len cached tokens and the new one)."""
    from cmtwin.executor.predict import catalogue_ops
    from cmtwin.model.operators import attention_ops

    if phase == "kv":
        return [o for o in attention_ops(model, prec, tokens=T, requests=T, kv_len=kv_len + 1, form="absorbed")
                if o.name == "mla_attention"]
    ops = catalogue_ops(model, prec, phase=phase, tokens=T, kv_len=kv_len, dense=False,
                        loads=[per] * PER_RANK, shared_tokens=T)
    ops += catalogue_ops(model, prec, phase=phase, tokens=T, kv_len=kv_len, dense=True)[-4:]
    ops += catalogue_ops(model, prec, phase=phase, tokens=T, kv_len=kv_len, dense=False, head=True)
    return ops


def seconds(spec, device: str, hw: HardwareProfile, *, quick: bool = False) -> float:
    """The grid's time under the twin's cost model on `hw` (this device's probed or calibrated profile):
    every grid point's operators on every rank, warm-up pass included."""
    from cmtwin.executor.modules import scaled_model
    from cmtwin.executor.run import precision_of

    ex = spec.executor
    model = scaled_model(spec.model, ex.scale)
    prec = precision_of(ex.dtype)
    return grid_passes(quick) * sum(
        ranks * sum(op_time(o, hw).us for o in grid_ops(model, prec, phase, T, per, per if phase == "kv" else ex.kv_len))
        for phase, T, per, ranks in grid_points(spec, device, quick=quick)) / 1e6


def peaks_profile(device: str, name: str, *, quick: bool = False, clock=None) -> tuple[HardwareProfile, dict]:
    """A profile of this device's peaks (matmul per dtype, copy bandwidth, launch overhead), no efficiency
    curves: the roofline calibrate fits its curves on, and the estimate of a run before any calibration.
    clock: how the probes are timed (cmtwin.executor.timing; default synchronised); its method is named in
    every constant's source."""
    from cmtwin.executor.timing import method_text
    from cmtwin.twin.hardware import DieSpec, Sourced

    t = torch()
    pk = measure_peaks(device, quick=quick, clock=clock)
    if device == "cuda":
        dev_name = t.cuda.get_device_name()
        mem = t.cuda.get_device_properties(0).total_memory / 2**30
        cores = t.cuda.get_device_properties(0).multi_processor_count
    else:
        import os

        dev_name = f"{platform.machine()} cpu, {t.get_num_threads()} threads"
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        cores = t.get_num_threads()
    src = f"cmtwin calibrate {date.today().isoformat()}, {dev_name}"
    if clock is not None:
        src += f", timed with {method_text(clock)}"
    hw = HardwareProfile(
        name=name, kind="gpu" if device == "cuda" else "cpu",
        dies_per_device=Sourced(value=1, source=f"{src}: one device is one rank"),
        die=DieSpec(
            cube_cores=Sourced(value=cores, source=f"{src}: compute units torch uses"),
            vector_cores=Sourced(value=cores, source=f"{src}: compute units torch uses"),
            memory_gib=Sourced(value=round(mem, 2), source=f"{src}: device memory"),
            memory_bandwidth_GB_per_s=Sourced(value=round(pk["bandwidth_GB_per_s"], 2),
                                              source=f"{src}: fp32 copy, read + write bytes"),
            peak_tflops={k: Sourced(value=float(f"{v:.4g}"), source=f"{src}: {pk['n']}^3 {k} matmul")
                         for k, v in pk["peak_tflops"].items()}),
        launch_overhead_us=Sourced(value=round(pk["launch_us"], 3), source=f"{src}: a 1x8x8 matmul"))
    return hw, {**pk, "source": src}


def calibrate_local(spec, *, device: str, name: str, quick: bool = False, tick=None,
                    peaks=None, clock=None) -> tuple[HardwareProfile, list]:
    """Measure this device: peaks (unless given, from peaks_profile), then the operator classes; returns the
    profile and the (op, us) pairs. tick() after each grid point of each pass. clock: how every operator is
    timed (cmtwin.executor.timing.clock_for: CUDA graphs on CUDA, as `cmtwin execute` times them)."""
    hw, pk = peaks or peaks_profile(device, name, quick=quick, clock=clock)
    ex = spec.executor
    pairs = measure_classes(spec, device, quick=quick, tick=tick, clock=clock)
    hw = fit_local(pairs, hw, f"{pk['source']}: executor kernels at scale {ex.scale:g}, {ex.dtype}, kv_len {ex.kv_len}",
                   name)
    return hw, pairs


def _roofline_only(hw: HardwareProfile) -> HardwareProfile:
    """The profile's peaks and bandwidth with no efficiencies and no launch overhead: op_time is then the bare
    roofline, the denominator of every fitted efficiency."""
    return hw.model_copy(update={"efficiency": {},
                                 "launch_overhead_us": hw.launch_overhead_us.model_copy(update={"value": 0.0})})


def lift_peaks(pairs, base: HardwareProfile) -> HardwareProfile:
    """The base profile with each dtype's peak and the memory bandwidth raised to the fastest rate any measured
    operator reached (net of its launch overhead), so that no fitted efficiency exceeds 1. One large matmul
    and one copy are not always the fastest kernels of a device (a 256^3 matmul under --quick, cache-resident
    operands on a CPU); an efficiency capped at 1 instead would leave such an operator's prediction too slow
    by the ratio. A raised figure says so in its source."""
    hw = _roofline_only(base)
    launch = base.launch_overhead_us.value
    for _ in range(8):  # a raised compute peak can leave an operator memory-bound: settle both
        compute: dict[str, float] = {}
        memory = 1.0
        for op, us in pairs:
            ot = op_time(op, hw)
            busy = us - min(launch, 0.5 * us)
            if ot.compute_us >= ot.memory_us and ot.compute_us > busy:
                dt = op.dtype if hw.supports(op.dtype) else "bf16"
                compute[dt] = max(compute.get(dt, 1.0), ot.compute_us / busy)
            elif ot.memory_us > ot.compute_us and ot.memory_us > busy:
                memory = max(memory, ot.memory_us / busy)
        if not compute and memory == 1.0:
            break
        die = hw.die
        peaks = dict(die.peak_tflops)
        for dt, f in compute.items():
            q = peaks[dt]
            peaks[dt] = q.model_copy(update={"value": q.value * f * (1 + 1e-9),
                                             "source": _lifted(q.source, "the fastest calibrated operator")})
        bw = die.memory_bandwidth_GB_per_s
        if memory > 1.0:
            bw = bw.model_copy(update={"value": bw.value * memory * (1 + 1e-9),
                                       "source": _lifted(bw.source, "the fastest calibrated memory-bound operator")})
        hw = hw.model_copy(update={"die": die.model_copy(update={"peak_tflops": peaks,
                                                                  "memory_bandwidth_GB_per_s": bw})})
    return base.model_copy(update={"die": hw.die})


def _lifted(source: str, what: str) -> str:
    head = source.split("; raised to ")[0]
    return f"{head}; raised to {what}"


def fit_local(pairs, base: HardwareProfile, source: str, name: str) -> HardwareProfile:
    """Efficiency curves per operator name and per class from (op, measured us) pairs: at each token count,
    eff = sum roofline at efficiency 1 / sum (measured - overhead). The overhead is the measured launch
    overhead, capped at half the fastest time of that operator (a timer's floor, not a fit parameter). The
    peaks are first raised to the fastest measured rates (lift_peaks), so an efficiency never needs capping."""
    from cmtwin.twin.hardware import Efficiency, Sourced

    base = lift_peaks(pairs, base)
    zero = _roofline_only(base)
    cells: dict[str, list[tuple[Op, float, float]]] = {}  # key -> (op, roofline at efficiency 1, measured us)
    for op, us in pairs:
        ot = op_time(op, zero)
        for key in (f"op:{op.name}", op.cls):
            cells.setdefault(key, []).append((op, max(ot.compute_us, ot.memory_us), us))
    eff = {}
    for key, rows in sorted(cells.items()):
        o = min(base.launch_overhead_us.value, 0.5 * min(us for *_, us in rows))
        axes = ["tokens"]
        if rows[0][0].cls == "attention_decode" and len({op.kv_len for op, *_ in rows}) > 1:
            axes += ["kv_len", "bytes"]  # measured at several context lengths: the axis that fits them best
        curve = _curve(rows, "tokens", o, source)
        if len(axes) > 1:  # each row predicted by the curve fitted without it: a curve with a point per row
            errs = {a: _leave_one_out_error(rows, a, o) for a in axes}  # would fit itself exactly in-sample
            axis = min(axes, key=lambda a: (round(errs[a], 9), axes.index(a)))  # ties: tokens, as before
            curve = _curve(rows, axis, o, f"{source}; x = {axis}, leave-one-out median |error| "
                           + ", ".join(f"{a} {100 * (math.exp(e) - 1):.1f}%" for a, e in errs.items()))
        eff[key] = Efficiency(compute=curve, memory=curve,
                              overhead_us=Sourced(value=round(o, 3), source=f"{source}: launch overhead, capped at "
                                                  "half the operator's fastest time"))
    return base.model_copy(update={"name": name, "efficiency": eff})


def _coord(op: Op, axis: str) -> float:
    return {"tokens": op.tokens, "kv_len": op.kv_len, "bytes": op.bytes}[axis]


def _curve(rows, axis: str, o: float, source: str):
    """The efficiency curve over `axis` that reproduces the measurements: at each coordinate,
    eff = sum roofline at efficiency 1 / sum (measured - overhead) of the rows there."""
    from cmtwin.twin.hardware import Curve

    at: dict[float, list[tuple[float, float]]] = {}
    for op, roof, us in rows:
        at.setdefault(float(_coord(op, axis)), []).append((roof, us))
    pts = []
    for x, rs in sorted(at.items()):
        roof, busy = sum(r for r, _ in rs), sum(us - o for _, us in rs)
        pts.append((x, min(1.0, max(1e-6, roof / busy)) if roof > 0 else 1.0))
    return Curve(x=axis, points=tuple(pts), source=source)


def _leave_one_out_error(rows, axis: str, o: float) -> float:
    """Median over rows of |log(predicted / measured)|, each row predicted (overhead + roofline / efficiency) by
    the curve over `axis` fitted to the other rows."""
    errs = []
    for i, (op, roof, us) in enumerate(rows):
        rest = rows[:i] + rows[i + 1:]
        if not rest:
            return 0.0
        c = _curve(rest, axis, o, "leave-one-out")
        errs.append(abs(math.log(max(1e-12, o + roof / c.at(_coord(op, axis))) / max(1e-12, us))))
    return statistics.median(errs)


def profile_yaml(hw: HardwareProfile, header: str = "") -> str:
    import yaml

    data = hw.model_dump(mode="json", exclude_none=True)
    for e in data.get("efficiency", {}).values():
        for part in ("compute", "memory"):
            if isinstance(e.get(part), dict) and "points" in e[part]:
                e[part]["points"] = [list(p) for p in e[part]["points"]]
    text = yaml.safe_dump(data, sort_keys=False, width=160)
    return "".join(f"# {line}\n" for line in header.splitlines()) + text


# ------------------------------------------------------------------------------------------ import
PROBE_CLASS = {
    "q_a_proj": "gemm", "q_b_proj": "gemm", "kv_a_proj": "gemm", "o_proj": "gemm", "dense_gate_up": "gemm",
    "dense_down": "gemm", "router": "gemm", "lm_head": "gemm", "dense_gate_up_int8": "gemm",
    "expert_ffn": "grouped_gemm", "experts_grouped_bmm": "grouped_gemm",
    "mla_decode_absorbed": "attention_decode", "prefill_attn_causal_sdpa": "attention_prefill",
    "rmsnorm": "norm", "router_topk_grouped": "router",
}
DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32", "torch.int8": "int8",
          "torch.float8_e4m3fn": "fp8"}


def probe_rows(path) -> list[tuple[Op, float]]:
    """(Op, measured us) of a kernel-timing JSON file (docs/your-cluster.md); rows with errors and unknown ops are skipped."""
    import json

    try:
        data = json.loads(open(path, encoding="utf-8").read())
        rows = data["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CmtwinError(f"--import {path}: not a kernel-timing JSON file ({exc}; the format is in docs/your-cluster.md).", key="--import") from None
    out = []
    for r in rows:
        cls = PROBE_CLASS.get(r.get("op"))
        if cls is None or "seconds" not in r or not r.get("seconds"):
            continue
        shape = r["shape"]
        tokens = shape[1] if r["op"] == "experts_grouped_bmm" else (shape[2] if r["op"] == "prefill_attn_causal_sdpa" else shape[0])
        op = Op(f"{r['op']}{shape}", cls, float(r.get("flops") or 0.0), float(r.get("bytes") or 0.0), 0.0,
                dtype=DTYPES.get(r.get("dtype"), "bf16"), tokens=max(1, int(tokens)))
        out.append((op, r["seconds"] * 1e6))
    if not out:
        raise CmtwinError(f"--import {path}: no usable rows (op, shape, seconds).", key="--import")
    return out


def fit_imported(pairs, base: HardwareProfile, source: str, name: str) -> HardwareProfile:
    """Profile = base peaks + one fitted launch overhead for the table + per-class (compute, memory)
    efficiency curves over tokens, minimising the summed |log(predicted / measured)|."""
    import numpy as np

    from cmtwin.twin.hardware import Curve, Efficiency, Sourced

    zero = _roofline_only(base)
    cells: dict = {}
    for op, us in pairs:
        ot = op_time(op, zero)
        cells.setdefault(op.cls, {}).setdefault(op.tokens, []).append((ot.compute_us, ot.memory_us, us))
    grid = np.geomspace(0.02, 1.0, 48)
    ec, em = np.meshgrid(grid, grid, indexing="ij")

    def fit_class(xs, o):
        total, best = 0.0, {}
        for x, rows in xs.items():
            err = np.zeros_like(ec)
            for c, m, us in rows:
                err += np.abs(np.log((np.maximum(c / ec, m / em) + o) / us))
            i = np.unravel_index(np.argmin(err), err.shape)
            best[x] = (float(ec[i]), float(em[i]))
            total += float(err[i])
        return total, best

    o_best, e_best, fits = 0.0, math.inf, {}
    for o in np.arange(0.0, 10.01, 0.5):
        res = {cls: fit_class(xs, o) for cls, xs in cells.items()}
        e = sum(r[0] for r in res.values())
        if e < e_best:
            o_best, e_best, fits = float(o), e, res
    eff = {}
    for cls, (_, best) in fits.items():
        pts = sorted(best.items())
        eff[cls] = Efficiency(compute=Curve(x="tokens", points=tuple((float(x), c) for x, (c, _) in pts), source=source),
                              memory=Curve(x="tokens", points=tuple((float(x), m) for x, (_, m) in pts), source=source))
    return base.model_copy(update={
        "name": name, "efficiency": eff,
        "launch_overhead_us": Sourced(value=o_best, source=f"{source}: fitted with the efficiencies")})


def leave_one_out(pairs, base: HardwareProfile) -> list[tuple[str, float, float]]:
    """Leave-one-shape-out: (op, measured us, predicted us) with each row predicted by a fit without it."""
    out = []
    for i, (op, us) in enumerate(pairs):
        hw = fit_imported(pairs[:i] + pairs[i + 1:], base, "leave-one-out", base.name)
        out.append((op.name, us, op_time(op, hw).us))
    return out
