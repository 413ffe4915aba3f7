"""Hardware profiles (conf/hardware/*.yaml): peaks, capacities and efficiencies, every constant with its source.

A profile describes one *die* (the rank unit: half an Ascend 910C package, a whole GPU) and how many dies
make the accelerator *device* (the package). Rule 1 of the twin: every number names where it comes from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cmtwin.config.base import Frozen

Dtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "fp4"]

PHYSICAL_RANGE = (1e-6, 1e7)
"""Bounds on a die's capacities, bandwidths (GB/s) and peaks (TFLOPS) and its core counts: far outside any device
(a CPU core gives ~0.1 TFLOPS in fp32 but bf16 without native support at under 0.001: `cmtwin calibrate` measured
0.00063 on a loaded 2-core VM; a wafer-scale die ~1e6 cores), close enough that times stay finite."""


class Sourced(Frozen):
    """A constant and where it comes from (a datasheet, a published operator table, or calibrate)."""

    value: float
    """The number, in the unit its key names."""
    source: str = Field(min_length=3)
    """Where the number comes from: a datasheet, a paper's table, `cmtwin calibrate <date, device>`, or an
    explicit 'assumption: ...' with its reasoning."""


class Curve(Frozen):
    """An efficiency that depends on a shape coordinate, interpolated piecewise-linearly in log2(x)."""

    x: Literal["tokens", "kv_len", "bytes"] = "tokens"
    """The shape coordinate the curve is indexed by."""
    points: tuple[tuple[float, float], ...] = Field(min_length=1)
    """(x, efficiency) pairs with x ascending; efficiency in (0, 1]."""
    source: str = Field(min_length=3)
    """Where the points come from."""

    @model_validator(mode="after")
    def _check(self) -> Curve:
        xs = [p[0] for p in self.points]
        if xs != sorted(xs) or len(set(xs)) != len(xs):
            raise ValueError(f"curve x values must be strictly ascending, got {xs}")
        for x, eff in self.points:
            if x <= 0 or not 0 < eff <= 1.0:
                raise ValueError(f"curve point ({x}, {eff}): x must be > 0 and efficiency in (0, 1]")
        return self

    def at(self, x: float) -> float:
        """The efficiency at x (clamped at the ends)."""
        import math

        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        lx = math.log2(x)
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x <= x1:
                f = (lx - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
                return y0 + f * (y1 - y0)
        return pts[-1][1]  # pragma: no cover - unreachable


class Efficiency(Frozen):
    """Achievable fractions of the compute peak and of memory bandwidth for one operator class."""

    compute: Sourced | Curve | None = None
    """Fraction of the dtype's dense peak reached when compute-bound."""
    memory: Sourced | Curve | None = None
    """Fraction of memory bandwidth reached when memory-bound."""
    overhead_us: Sourced | None = None
    """Fixed time per call beyond the roofline (launch, sync, tail), if it differs from the profile's."""


class DieSpec(Frozen):
    """The figures of one die."""

    cube_cores: Sourced
    """Matrix cores (Ascend AIC; on a GPU, SMs)."""
    vector_cores: Sourced
    """Vector cores (Ascend AIV; on a GPU, SMs; on a CPU, cores)."""
    memory_gib: Sourced
    """Device memory (HBM) capacity in GiB."""
    memory_bandwidth_GB_per_s: Sourced
    """Peak device-memory bandwidth in GB/s (1e9 bytes per second)."""
    peak_tflops: dict[Dtype, Sourced] = Field(min_length=1)
    """Dense peak in TFLOPS (TOPS for int8) by dtype; a dtype absent here is unsupported."""


class StreamCores(Frozen):
    """The cores one microbatch stream gets when two microbatches run on split cores."""

    cube_cores: int = Field(ge=0)
    """Matrix cores given to the stream."""
    vector_cores: int = Field(ge=0)
    """Vector cores given to the stream."""


class Microbatching(Frozen):
    """How two microbatches overlap on this hardware."""

    mode: Literal["split_cores", "overlap_comm"]
    """split_cores: the attention stream and the MoE stream (gate, dispatch, experts, combine) run at once on
    disjoint core sets (CloudMatrix-Infer); overlap_comm: computation uses all cores and communication of one
    microbatch hides behind computation of the other (DeepSeek's two-microbatch overlap with DeepEP)."""
    attention: StreamCores | None = None
    """split_cores: the attention stream's cores."""
    moe: StreamCores | None = None
    """split_cores: the MoE stream's cores."""
    prefill_comm_on_vector_cores: bool = False
    """Prefill: a microbatch's communication (all-gather, all-to-all, dispatch, combine) runs on the vector
    cores and DMA engines while the cube cores compute the other microbatch, so that microbatch's vector
    operators (norms, activations, top-k) wait for the communication instead of overlapping it."""
    prefill_inline_comm: tuple[Literal["sp_all_gather", "tp_all_to_all", "tp_all_reduce", "moe_all_reduce",
                                       "moe_tp_all_reduce", "dispatch", "combine"], ...] = ()
    """Prefill: collectives that run inside their stage on the compute lane rather than beside the other
    microbatch (CloudMatrix-Infer's staged-MLA all-gather and all-to-all: Fig. 18b puts only dispatch and combine
    on the SDMA lane)."""
    prefill_comm_cores: Sourced | None = None
    """Prefill: cores (SMs) a communication kernel holds while it runs beside the other microbatch's computation
    (DeepEP's normal kernels: 24 SMs), so the computation keeps the rest of the die; null: none (low-latency
    kernels, the 910C's DMA engines)."""
    source: str = Field(min_length=3)
    """Where the split (and the prefill placement of the communication) comes from."""


class HardwareProfile(Frozen):
    """One accelerator (or host CPU) kind."""

    name: str = Field(min_length=1)
    """Profile name, the file's stem."""
    kind: Literal["npu", "gpu", "cpu"]
    """Accelerator family."""
    dies_per_device: Sourced
    """Dies per package: a device (NPU, GPU) is the package, a rank is a die."""
    die: DieSpec
    """Per-die figures."""
    launch_overhead_us: Sourced
    """Fixed cost per operator launch in microseconds."""
    power_w: Sourced | None = None
    """Board power of one device (its published maximum, TDP) in watts; null where no figure is published.
    `cmtwin compare` divides throughput by it (accelerators only: hosts, switches and cooling are not counted)."""
    efficiency: dict[str, Efficiency] = Field(default_factory=dict)
    """Efficiency by operator class (gemm, grouped_gemm, attention_decode, attention_prefill, elementwise...)."""
    collectives: dict[str, dict[str, Sourced]] = Field(default_factory=dict)
    """Collective-kernel calibration by kind (dispatch, combine, p2p): fixed_us and efficiency_<plane>."""
    microbatching: Microbatching | None = None
    """How two microbatches overlap; null: no overlap is modelled (microbatches=2 behaves as 1)."""

    @model_validator(mode="after")
    def _ranges(self) -> HardwareProfile:
        d = self.dies_per_device.value
        bad: list[str] = []
        if d < 1 or d != int(d):
            bad.append(f"dies_per_device.value = {d:g}: must be a positive integer")
        die = self.die
        for key, q in (("die.memory_gib", die.memory_gib), ("die.memory_bandwidth_GB_per_s", die.memory_bandwidth_GB_per_s),
                       *((f"die.peak_tflops.{k}", v) for k, v in die.peak_tflops.items())):
            if not PHYSICAL_RANGE[0] <= q.value <= PHYSICAL_RANGE[1]:
                bad.append(f"{key}.value = {q.value:g}: must lie in [{PHYSICAL_RANGE[0]:g}, {PHYSICAL_RANGE[1]:g}]")
        for key, q in (("die.cube_cores", die.cube_cores), ("die.vector_cores", die.vector_cores)):
            if not 0 <= q.value <= PHYSICAL_RANGE[1]:  # a CPU has no matrix cores
                bad.append(f"{key}.value = {q.value:g}: must lie in [0, {PHYSICAL_RANGE[1]:g}]")
        if self.power_w is not None and not 0 < self.power_w.value <= PHYSICAL_RANGE[1]:
            bad.append(f"power_w.value = {self.power_w.value:g}: must lie in (0, {PHYSICAL_RANGE[1]:g}]")
        if self.launch_overhead_us.value < 0:
            bad.append(f"launch_overhead_us.value = {self.launch_overhead_us.value:g}: must be >= 0")
        mb = self.microbatching
        held = mb.prefill_comm_cores.value if mb is not None and mb.prefill_comm_cores is not None else None
        if held is not None and not 1 <= held < die.cube_cores.value:
            bad.append(f"microbatching.prefill_comm_cores ({held:g}) must be 1 or more and leave the computation some "
                       f"of the die's {die.cube_cores.value:g} cores")
        for stream in (mb.attention, mb.moe) if mb is not None and mb.mode == "split_cores" else ():
            if stream is not None and not (1 <= stream.cube_cores <= die.cube_cores.value
                                           and 1 <= stream.vector_cores <= die.vector_cores.value):
                bad.append(f"microbatching: a stream's cores ({stream.cube_cores} cube, {stream.vector_cores} vector) "
                           f"must be 1 to the die's ({die.cube_cores.value:g}, {die.vector_cores.value:g})")
        for cls, eff in self.efficiency.items():
            for part in ("compute", "memory"):
                e = getattr(eff, part)
                if isinstance(e, Sourced) and not 0 < e.value <= 1:
                    bad.append(f"efficiency.{cls}.{part}.value = {e.value:g}: an efficiency lies in (0, 1]")
            if eff.overhead_us is not None and eff.overhead_us.value < 0:
                bad.append(f"efficiency.{cls}.overhead_us.value = {eff.overhead_us.value:g}: must be >= 0")
        for kind, entries in self.collectives.items():
            for key, q in entries.items():
                if "efficiency" in key and not 0 < q.value <= 1:
                    bad.append(f"collectives.{kind}.{key}.value = {q.value:g}: an efficiency lies in (0, 1]")
                elif key.startswith("fixed_us") and q.value < 0:
                    bad.append(f"collectives.{kind}.{key}.value = {q.value:g}: must be >= 0")
        if bad:
            raise ValueError(f"hardware profile {self.name}: " + "; ".join(bad))
        return self

    @property
    def dies(self) -> int:
        return int(self.dies_per_device.value)

    @property
    def memory_bytes(self) -> float:
        return self.die.memory_gib.value * 2**30

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in FLOP/s for dtype; raises KeyError naming the supported ones."""
        try:
            return self.die.peak_tflops[dtype].value * 1e12  # type: ignore[index]
        except KeyError:
            raise KeyError(f"{self.name} has no {dtype} peak (supported: {sorted(self.die.peak_tflops)})") from None

    def supports(self, dtype: str) -> bool:
        return dtype in self.die.peak_tflops
