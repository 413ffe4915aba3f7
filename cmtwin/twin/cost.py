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

from cmtwin.model.operators import Op
from cmtwin.twin.hardware import Curve, Efficiency, HardwareProfile, Sourced

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
    """An operator's modelled time and what bounds it."""

    name: str
    cls: str
    us: float
    bound: str  # compute | memory
    compute_us: float
    memory_us: float
    overhead_us: float


def _value(e: Sourced | Curve | None, op: Op, default: float) -> float:
    """A constant efficiency, or a curve read at the operator's coordinate (tokens, context length, bytes)."""
    if e is None:
        return default
    if isinstance(e, Curve):
        return e.at({"tokens": op.tokens, "kv_len": op.kv_len, "bytes": op.bytes}[e.x])
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
"""Per profile (held, so its id is not reused while the entry lives): (op, shares) -> OpTime. Profiles are
frozen; a search asks for the same few thousand operator shapes about 1.7 million times."""


def op_time(op: Op, hw: HardwareProfile, *, cube_share: float = 1.0, vector_share: float = 1.0) -> OpTime:
    """Time of one operator on this die (or its share of the cores)."""
    entry = _MEMO.get(id(hw))
    if entry is None or entry[0] is not hw:
        if len(_MEMO) >= 64:
            _MEMO.clear()
        entry = _MEMO[id(hw)] = (hw, {})
    memo = entry[1]
    key = (op, cube_share, vector_share)
    t = memo.get(key)
    if t is None:
        if len(memo) >= 100_000:
            memo.clear()
        t = memo[key] = _op_time(op, hw, cube_share, vector_share)
    return t


def _op_time(op: Op, hw: HardwareProfile, cube_share: float, vector_share: float) -> OpTime:
    eff = efficiency(hw, op.cls, op.name)
    vector = op.cls in VECTOR_CLASSES
    share = vector_share if vector else cube_share
    bw = hw.die.memory_bandwidth_GB_per_s.value * 1e9 * _value(eff.memory, op, 1.0) * share
    memory_us = op.bytes / bw * 1e6 if op.bytes else 0.0
    if vector or op.flops == 0:
        compute_us = 0.0
    else:
        peak = hw.peak_flops(op.dtype if hw.supports(op.dtype) else "bf16")
        compute_us = op.flops / (peak * _value(eff.compute, op, 1.0) * share) * 1e6
    overhead = eff.overhead_us.value if eff.overhead_us is not None else hw.launch_overhead_us.value
    bound = "compute" if compute_us >= memory_us else "memory"
    return OpTime(op.name, op.cls, max(compute_us, memory_us) + overhead, bound, compute_us, memory_us, overhead)
