"""Operator time: roofline on a share of the cores plus a fixed overhead (rule 3 of the twin).

time = max(flops / (peak[dtype] x eff_compute x cube_share), bytes / (bandwidth x eff_memory x share)) + overhead

Efficiencies come from the hardware profile by operator name where the profile has one (`op:<name>`:
a local `cmtwin calibrate` measures each of the executor's operators), else by operator class (a constant or a
curve over the token count). Norms and elementwise operators run on the vector units and are treated as memory-bound.
When microbatches run on split cores, a stream gets its share of the cube and vector cores and the same
share of memory bandwidth (assumption: each core's DMA engine moves its own operands).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmtwin.model.operators import Op
from cmtwin.twin.hardware import Curve, Efficiency, HardwareProfile, Sourced
from cmtwin.vec import ndim, numpy, vmax

if TYPE_CHECKING:
    import numpy as np

# Operator classes whose efficiency entry falls back to another one.
_FALLBACK = {
    "grouped_gemm": "gemm",
    "router": "gemm",
    "attention_prefill": "attention_decode",
    "norm": "elementwise",
}
VECTOR_CLASSES = {"norm", "elementwise"}


@dataclass(frozen=True)
class OpTime:
    """An operator's modelled time and what bounds it (numbers, or arrays over a vector of batch sizes)."""

    name: str
    cls: str
    us: float | np.ndarray
    compute_us: float | np.ndarray
    memory_us: float | np.ndarray
    overhead_us: float

    @property
    def bound(self) -> str:
        """compute | memory (of one shape: a step's breakdown is recorded for one batch)."""
        return "compute" if self.compute_us >= self.memory_us else "memory"


_CURVES: dict[int, tuple[Curve, dict]] = {}
"""Per curve (held, so its id is not reused while the entry lives): x -> efficiency. A search reads the same few
hundred coordinates thousands of times; Curve.at is read element by element so that a vector of shapes gives the
very floats a single shape gives (numpy's log2 differs from math.log2 in the last bit for a few values)."""


def _held_memo(table: dict, owner, limit: int) -> dict:
    """The memo kept for `owner` in `table` (keyed by id, the owner held so that its id is not reused while the
    entry lives); the table is emptied when it holds `limit` owners."""
    entry = table.get(id(owner))
    if entry is None or entry[0] is not owner:
        if len(table) >= limit:
            table.clear()
        entry = table[id(owner)] = (owner, {})
    return entry[1]


def _curve_at(c: Curve, x):
    if ndim(x) == 0:
        return c.at(x)
    memo = _held_memo(_CURVES, c, 256)
    out = []
    for v in x.tolist():
        e = memo.get(v)
        if e is None:
            e = memo[v] = c.at(v)
        out.append(e)
    return numpy().array(out)


def _value(e: Sourced | Curve | None, op: Op, default: float):
    """A constant efficiency, or a curve read at the operator's coordinate (tokens, context length, bytes)."""
    if e is None:
        return default
    if isinstance(e, Curve):
        return _curve_at(e, {"tokens": op.tokens, "kv_len": op.kv_len, "bytes": op.bytes}[e.x])
    return e.value


def efficiency(hw: HardwareProfile, cls: str, name: str | None = None) -> Efficiency:
    if name is not None and f"op:{name}" in hw.efficiency:
        return hw.efficiency[f"op:{name}"]
    seen = set()
    while cls not in hw.efficiency and cls in _FALLBACK and cls not in seen:
        seen.add(cls)
        cls = _FALLBACK[cls]
    return hw.efficiency.get(cls, _UNKNOWN)


_UNKNOWN = Efficiency()  # no entry: peak fractions 1.0, the profile's launch overhead


_MEMO: dict[int, tuple[HardwareProfile, dict]] = {}
"""Per profile (held, so its id is not reused while the entry lives): (op, shares) -> OpTime of one shape. Profiles
are frozen; the simulator's tables and the SLO search ask for the same operator shapes many times."""


def op_time(op: Op, hw: HardwareProfile, *, cube_share: float = 1.0, vector_share: float = 1.0) -> OpTime:
    """Time of one operator on this die (or its share of the cores). The operator's counts may be arrays (one
    shape per batch size): the time is then an array, element by element the time of that shape."""
    memo = _held_memo(_MEMO, hw, 64)
    try:
        key = (op, cube_share, vector_share)
        t = memo.get(key)
    except TypeError:  # counts given as arrays (a vector step): computed once, not memoised
        return _op_time(op, hw, cube_share, vector_share)
    if t is None:
        if len(memo) >= 100_000:
            memo.clear()
        t = memo[key] = _op_time(op, hw, cube_share, vector_share)
    return t


def _op_time(op: Op, hw: HardwareProfile, cube_share: float, vector_share: float) -> OpTime:
    eff, vector, bandwidth, peak, overhead = _constants(hw, op.cls, op.name, op.dtype)
    share = vector_share if vector else cube_share
    memory_us = op.bytes / (bandwidth * _value(eff.memory, op, 1.0) * share) * 1e6
    compute_us = 0.0 if vector else op.flops / (peak * _value(eff.compute, op, 1.0) * share) * 1e6
    return OpTime(op.name, op.cls, vmax(compute_us, memory_us) + overhead, compute_us, memory_us, overhead)


def _constants(hw: HardwareProfile, cls: str, name: str, dtype: str) -> tuple:
    """(efficiency entry, vector class, bandwidth in B/s, peak FLOP/s, fixed overhead) of an operator kind."""
    memo = _MEMO[id(hw)][1]
    key = ("constants", cls, name, dtype)
    c = memo.get(key)
    if c is None:
        eff = efficiency(hw, cls, name)
        peak = hw.peak_flops(dtype if hw.supports(dtype) else "bf16")
        overhead = eff.overhead_us.value if eff.overhead_us is not None else hw.launch_overhead_us.value
        c = memo[key] = (eff, cls in VECTOR_CLASSES, hw.die.memory_bandwidth_GB_per_s.value * 1e9, peak, overhead)
    return c
