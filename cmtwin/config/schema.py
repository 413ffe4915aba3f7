"""The validated spec: the composed Hydra config as one frozen pydantic model.

Hydra composes (cmtwin/config/compose.py); this module validates. Parallel-degree checks put the
arithmetic in the message, e.g. `decode.ep (320) != ...`. Units: a *device* is the accelerator package
(an NPU = 2 dies; a GPU), a *rank* is a die; `ep` and `tp` count ranks.
"""

from __future__ import annotations

import dataclasses

from typing import Any, Literal

from pydantic import Field, model_validator

from cmtwin.config.base import Frozen
from cmtwin.config.workload import WorkloadSpec
from cmtwin.executor.spec import ExecutorSpec
from cmtwin.sim.spec import SearchSpec as SearchSpace
from cmtwin.sim.spec import SimSpec
from cmtwin.model.arch import ModelSpec
from cmtwin.model.precision import PRECISIONS, Precision, PrecisionName
from cmtwin.twin.hardware import HardwareProfile


class DeploymentInfo(Frozen):
    """Which deployment overlay was selected."""

    name: str | None = None
    """The deployment's name (its file under conf/deployment/); null when none was selected."""
    description: str = ""
    """One line on what the deployment is and where it comes from."""


class TopologyRef(Frozen):
    """Which topology file to build, with parameter overrides."""

    name: str = Field(min_length=1)
    """Name of this topology option."""
    file: str = Field(min_length=1)
    """Topology file under topologies/ (stem) or a path inside the working directory."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Overrides merged onto the file's top-level keys before validation (e.g. nodes: 22)."""


class Serving(Frozen):
    """How prefill and decode share devices."""

    mode: Literal["disagg", "agg"] = "disagg"
    """disagg: separate prefill and decode pools; agg: one pool (the decode.* keys) serves both, with chunked
    prefill mixed into decode steps."""
    concurrency: int | None = Field(default=None, ge=1)
    """Total concurrent requests over all decode (or aggregated) instances; when set, the batch follows from it
    (concurrency / (instances x attention groups), rounded to whole requests per group) instead of
    decode.batch_per_group / decode.batch_per_device."""
    engine: Literal["sglang", "vllm"] = "sglang"
    """agg: whose scheduler sets the per-step token budget's default and scope (cmtwin/twin/agg.py): SGLang's
    --chunked-prefill-size is per instance and divided over the DP-attention groups; vLLM's
    --max-num-batched-tokens is per engine core, one per DP rank."""
    max_batched_tokens: int | None = Field(default=None, ge=1)
    """agg: the token budget of one engine step (decode tokens plus the prefill chunk), as the engine's flag
    (SGLang --chunked-prefill-size, vLLM --max-num-batched-tokens); null: the engine's default for the device."""


class PrefillSpec(Frozen):
    """The prefill pool: `instances` replicas of `devices_per_instance` devices."""

    instances: int = Field(ge=0)
    """Prefill instances (0 = no prefill pool)."""
    devices_per_instance: int = Field(ge=1)
    """Devices (packages) per instance."""
    ep: int = Field(ge=1)
    """Expert-parallel ranks (dies) per instance."""
    tp: int = Field(default=1, ge=1)
    """Attention tensor-parallel degree (dies); attention data-parallel degree = ranks / (tp x pp)."""
    tp_mode: Literal["allreduce", "sp_tp_sp"] = "allreduce"
    """allreduce: heads split, o_proj row-parallel, an all-reduce per block (Megatron); sp_tp_sp: the staged
    sequence-parallel / head-parallel MLA of CloudMatrix-Infer (all-gather, then all-to-all)."""
    moe_tp: int = Field(default=1, ge=1)
    """Tensor-parallel degree of each expert (its intermediate split moe_tp ways); moe_tp x ep x pp = ranks."""
    pp: int = Field(default=1, ge=1)
    """Pipeline stages (layers split pp ways)."""
    redundant_experts: int = Field(default=0, ge=0)
    """Extra routed-expert replicas placed for load balancing."""
    dedicated_shared_ranks: int = Field(default=0, ge=0)
    """Ranks holding only a shared-expert replica (0 = the shared expert is colocated on every rank)."""
    tokens_per_device: int = Field(ge=1)
    """Tokens per device in one forward (the prefill batch)."""
    microbatches: int = Field(default=2, ge=1, le=2)
    """2 = overlap compute with dispatch/combine across two microbatches; 1 = off."""


class DecodeSpec(Frozen):
    """The decode pool: one instance of `devices` devices, data-parallel attention, expert-parallel MoE."""

    devices: int = Field(ge=0)
    """Devices (packages) per decode instance (0 = no decode pool)."""
    instances: int = Field(default=1, ge=1)
    """Decode instances (replicas of the layout)."""
    ep: int = Field(ge=1)
    """Expert-parallel ranks (dies); moe_tp x ep x pp = ranks (ignored for a dense model)."""
    tp: int = Field(default=1, ge=1)
    """Attention tensor-parallel degree (dies); attention data-parallel degree = ranks / (tp x pp)."""
    tp_mode: Literal["allreduce", "sp_tp_sp"] = "allreduce"
    """How tensor-parallel attention communicates (decode uses allreduce)."""
    moe_tp: int = Field(default=1, ge=1)
    """Tensor-parallel degree of each expert (its intermediate split moe_tp ways)."""
    pp: int = Field(default=1, ge=1)
    """Pipeline stages (layers split pp ways)."""
    redundant_experts: int = Field(default=0, ge=0)
    """Extra routed-expert replicas placed for load balancing."""
    dedicated_shared_ranks: int = Field(default=0, ge=0)
    """Ranks holding only a shared-expert replica (0 = colocated on every rank)."""
    batch_per_device: int = Field(ge=1)
    """Concurrent requests per device (split evenly over its dies); a TP group of t dies serves t x that."""
    batch_per_group: int | None = Field(default=None, ge=1)
    """Concurrent requests per attention group (a DP rank, or a TP group of `tp` dies); when set it replaces
    batch_per_device, so TP16 at 2 or 77 requests can be asked (2/16 or 77/16 requests per die)."""
    microbatches: int = Field(default=2, ge=1, le=2)
    """2 = two microbatches interleaved on two streams with split cores; 1 = off."""
    max_tokens_per_rank: int | None = Field(default=None, ge=1)
    """Dispatch/combine buffer depth per peer; default: batch per die x tokens per step."""


class CachingSpec(Frozen):
    """The caching pool (EMS) over the nodes' host DRAM."""

    enabled: bool = False
    """Whether a caching pool is part of the deployment."""
    dram_fraction: float = Field(default=0.5, gt=0, le=1)
    """Share of each host CPU's DRAM given to the pool."""
    block_tokens: int = Field(default=256, ge=128, le=512)
    """Tokens per KV block (prefix-hash granularity)."""
    ssd_tb_per_node: float = Field(default=0.0, ge=0, le=10_000)
    """SSD tier below DRAM per node, in TB (at most 10,000: a server holds tens to hundreds; larger values overflowed
    the simulator's block count)."""


class MTPSpec(Frozen):
    """Multi-token prediction used as speculative decoding."""

    draft_tokens: int = Field(default=0, ge=0, le=4)
    """Draft tokens per step (0 = off)."""
    acceptance: float = Field(default=0.7, ge=0, le=1)
    """Probability that each draft token is accepted (user input; the paper assumes 0.7)."""

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens per step (mtp_tokens_per_step)."""
        return mtp_tokens_per_step(self.draft_tokens, self.acceptance)


def mtp_tokens_per_step(k: int, a: float) -> float:
    """Expected tokens per decode step with k draft tokens, each accepted with probability a given the previous
    ones were: 1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a) (k + 1 at a = 1)."""
    if k == 0:
        return 1.0
    if a >= 1.0:
        return float(k + 1)
    return (1 - a ** (k + 1)) / (1 - a)


class PlacementSpec(Frozen):
    """How experts are placed and how evenly the routed load falls on them."""

    balance: Literal["default", "perfect"] = "default"
    """perfect: every expert gets the same load; default: the published expert-load skew, relieved by replicas."""
    expert_load_cv: float = Field(default=0.0, ge=0, le=3)
    """Coefficient of variation of per-expert routed load (popularity skew) under `default` balance; a user
    input measured on your traffic (0 = equal popularity; finite-batch routing noise is always modelled)."""
    load_fluctuation_cv: float = Field(default=0.12, ge=0, le=3)
    """Under `default` balance: how much each expert slot's load varies from one iteration to the next around what
    the placement expected (coefficient of variation). 0.12: the residual of offline EPLB on DeepSeek-R1 traffic,
    TensorRT-LLM's statistics at EP32 and EP36 (cmtwin/twin/load.py derives it)."""
    first_node: int = Field(default=0, ge=0)
    """First node of the topology the deployment occupies."""


class MemorySpec(Frozen):
    """Per-die memory budget settings."""

    reserve_gb_per_die: float = Field(default=3.0, ge=0)
    """Runtime, workspace and fragmentation reserve per die, GiB."""
    activation_tokens: int | None = Field(default=None, ge=1)
    """Tokens whose activations must fit at once (default: the phase's tokens per die per forward)."""


class FailureEvent(Frozen):
    """One failure in simulated time."""

    t_s: float = Field(ge=0)
    """When it fails, seconds from the start."""
    die: str = Field(min_length=1)
    """The die (as plan.dies lists it); its whole attention group stops."""


class FailuresSpec(Frozen):
    """Components down for a what-if (cmtwin/planner/failures.py): the plan is recompiled on what is left."""

    dies: list[str] = Field(default_factory=list)
    """Die ids as `cmtwin plan --format json` (plan.dies) and the TUI show them, e.g. n03.npu5.d1 or n00.gpu3. A
    device with a failed die is out as a whole (its other die cannot hold a rank's share of a 2-die layout)."""
    devices: list[str] = Field(default_factory=list)
    """Whole devices (packages), e.g. n03.npu5 or n00.gpu3."""
    switches: list[str] = Field(default_factory=list)
    """Switches down, by id as `cmtwin export topology` lists them (l2.p3.s5, n00.l1s2): collectives price the
    surviving routes and links."""
    planes: list[str] = Field(default_factory=list)
    """Switch groups down by id prefix, e.g. l2.p3 (CloudMatrix384's L2 UB sub-plane 3 of 7)."""
    links: list[str] = Field(default_factory=list)
    """Single links down, as `source-target` with the ids `cmtwin export topology` gives an edge's ends, e.g.
    n00.npu0.d0-n00.l1s0 (both directions go): a die with one link fewer injects less on that plane."""
    events: list[FailureEvent] = Field(default_factory=list)
    """`cmtwin simulate`: failures in time, e.g. [{t_s: 600, die: n12.npu0.d1}]: the die's attention group stops,
    its requests are re-queued with their KV recomputed, and after recovery_s the group serves again (the plan
    switched to a spare)."""
    recovery_s: float = Field(default=60.0, ge=0)
    """`cmtwin simulate`: seconds from a failure to the replanned group serving again (assumption: a spare device
    brought in and the plan switched; 60 s unless measured for the deployment)."""
    policy: Literal["replan", "degrade", "refuse"] = "replan"
    """replan: the same layout on the surviving devices (spares first); degrade: the layout stays, the failed ranks'
    attention groups stop serving and their experts fall to the other replicas (EPLB's rule), experts with no replica
    left are lost; refuse: an error if a failure hits a device the plan uses."""

    @property
    def in_fabric(self) -> bool:
        """Whether links, switches or sub-planes are down (the fabric becomes a view without them)."""
        return bool(self.switches or self.planes or self.links)

    @property
    def any(self) -> bool:
        """Whether anything is down (a what-if to compare with the healthy plan)."""
        return bool(self.dies or self.devices or self.in_fabric)

    def healed(self) -> FailuresSpec:
        """The same settings with nothing down."""
        return self.model_copy(update={"dies": [], "devices": [], "switches": [], "planes": [], "links": []})


class SloSpec(Frozen):
    """Latency targets; when set the twin searches the largest batch that meets them."""

    tpot_ms: float | None = Field(default=None, gt=0)
    """Time per output token target, ms."""
    ttft_ms: float | None = Field(default=None, gt=0)
    """Time to first token target, ms."""


class StoreSpec(Frozen):
    """Where runs are recorded."""

    url: str = Field(min_length=1)
    """SQLAlchemy URL (sqlite:///cmtwin.db by default; CMTWIN_DB_URL overrides)."""


def layout_errors(phase: str, ph, devices: int, dies: int, model: ModelSpec) -> list[str]:
    """The parallel-degree arithmetic of one instance of a phase, as messages (empty when it adds up)."""
    ranks = devices * dies
    where = f"devices per instance ({devices}) x dies per device ({dies}) = {ranks} ranks"
    out = []
    if ranks % (ph.tp * ph.pp):
        out.append(f"{phase}.tp ({ph.tp}) x {phase}.pp ({ph.pp}) must divide the {where}")
    if model.moe is not None and ph.moe_tp * ph.ep * ph.pp != ranks:
        out.append(f"{phase}.moe_tp ({ph.moe_tp}) x {phase}.ep ({ph.ep}) x {phase}.pp ({ph.pp}) = "
                   f"{ph.moe_tp * ph.ep * ph.pp} != {where}")
    if ph.pp > model.layers:
        out.append(f"{phase}.pp ({ph.pp}) > layers ({model.layers})")
    heads = model.attention.heads
    if heads % ph.tp:
        out.append(f"{phase}.tp ({ph.tp}) must divide the attention heads ({heads})")
    if model.moe is not None and model.moe.intermediate % ph.moe_tp:
        out.append(f"{phase}.moe_tp ({ph.moe_tp}) must divide the expert intermediate ({model.moe.intermediate})")
    return out


class PoliciesSpec(Frozen):
    """Selected policy presets (`+policies/<family>=<preset>`), each validated by its registered policy."""

    sp_attention: dict[str, Any] | None = None
    """Sequence-parallel attention for long prefill (tokenring, ring)."""
    speculation: dict[str, Any] | None = None
    """Speculative decoding (mtp, ppd)."""
    layer_skip: dict[str, Any] | None = None
    """Layer skipping / adaptive compute (skipdecode)."""
    model_routing: dict[str, Any] | None = None
    """Routing between models or model parts (duo)."""
    token_transform: dict[str, Any] | None = None
    """Token-count transforms in workloads (tokenadapt, flextok)."""
    batching: dict[str, Any] | None = None
    """Batching and scheduling of `cmtwin simulate` (fcfs_lru, the default when none is selected; batchllm)."""

    @model_validator(mode="after")
    def _known(self) -> PoliciesSpec:
        from cmtwin.policy.registry import registry

        for family in type(self).model_fields:
            preset = getattr(self, family)
            if preset is not None:
                registry(family).build(preset)  # raises ConfigError naming the key and the valid names
        return self

    def build(self, family: str):
        """The policy object of a selected family, or None."""
        from cmtwin.policy.registry import registry

        preset = getattr(self, family)
        return None if preset is None else registry(family).build(preset)


class SearchSpec(SearchSpace):
    """Plan-search settings: the budget, the space and how much to simulate (SearchSpace, cmtwin/sim/spec.py), and
    where the search's work runs (an orchestration setting, no part of the plan: left out of the spec hash)."""

    backend: Literal["process", "ray"] = "process"
    """Where the search's candidate batches (one per instance size) and its simulations run: process (a local pool
    of search.workers processes) or ray (Ray tasks on the Ray instance this process is connected to, else the one
    RAY_ADDRESS or the latest `ray start` names, else a new local one; needs the ray extra: pip install -e ".[ray]").
    Both give the same candidates and frontier."""


class Spec(Frozen):
    """Everything a verb needs, validated."""

    hardware: HardwareProfile
    """The accelerator profile."""
    host: HardwareProfile | None = None
    """The host CPU profile (its DRAM backs the caching pool); null for none."""
    topology: TopologyRef
    """The fabric."""
    model: ModelSpec
    """The served model."""
    deployment: DeploymentInfo
    """The selected deployment overlay."""
    serving: Serving = Serving()
    """Disaggregated or aggregated serving."""
    precision: PrecisionName = "bf16"
    """int8 (W8A8), fp8 or bf16; expands per operator class (cmtwin/model/precision.py)."""
    kv_cache_dtype: Literal["bf16", "fp8"] | None = None
    """The KV cache's dtype (null: the precision preset's, BF16 in every preset). fp8 halves the KV memory per
    token and the attention's KV reads, as engines' FP8 KV caches do (vLLM/SGLang `--kv-cache-dtype
    fp8_e4m3`); the attention itself still computes in the preset's attention dtype."""
    prefill: PrefillSpec
    """The prefill pool."""
    decode: DecodeSpec
    """The decode pool (with serving.mode=agg: the one pool serving both phases)."""

    @property
    def decode_groups(self) -> int:
        """Attention groups (DP ranks or TP groups) of one decode instance: ranks / (tp x pp)."""
        d = self.decode
        return max(1, d.devices * self.hardware.dies // (d.tp * d.pp))

    @property
    def decode_batch_per_group(self) -> int:
        """Concurrent requests per attention group: from serving.concurrency when given (rounded to whole
        requests per group), else decode.batch_per_group, else decode.batch_per_device's share (per die x tp)."""
        d = self.decode
        if self.serving.concurrency is not None and d.devices:
            return max(1, round(self.serving.concurrency / (d.instances * self.decode_groups)))
        if d.batch_per_group is not None:
            return d.batch_per_group
        return d.batch_per_device // self.hardware.dies * d.tp

    @property
    def decode_batch_per_die(self) -> float:
        """Requests per die: a TP group's requests over its dies (fractional below one request per die)."""
        return self.decode_batch_per_group / self.decode.tp
    caching: CachingSpec = CachingSpec()
    """The caching pool."""
    mtp: MTPSpec = MTPSpec()
    """Multi-token prediction."""
    placement: PlacementSpec = PlacementSpec()
    """Expert placement and load balance."""
    memory: MemorySpec = MemorySpec()
    """Per-die memory budget settings."""
    workload: WorkloadSpec
    """Request shape."""
    slo: SloSpec = SloSpec()
    """Latency targets."""
    failures: FailuresSpec = FailuresSpec()
    """Failed components for a what-if (`cmtwin plan ... failures.dies=[n03.npu5.d1]`)."""
    store: StoreSpec
    """The run store."""
    sim: SimSpec = SimSpec()
    """Discrete-event serving simulation (`cmtwin simulate`)."""
    search: SearchSpec = SearchSpec()
    """Plan search (`cmtwin search`)."""
    executor: ExecutorSpec = ExecutorSpec()
    """Real-kernel execution (`cmtwin execute`, `cmtwin calibrate`)."""
    policies: PoliciesSpec = PoliciesSpec()
    """Policy presets in effect (techniques from related work)."""

    @property
    def prec(self) -> Precision:
        preset = PRECISIONS[self.precision]
        if self.kv_cache_dtype is None or self.kv_cache_dtype == preset.kv_cache:
            return preset
        return dataclasses.replace(preset, kv_cache=self.kv_cache_dtype)

    @model_validator(mode="after")
    def _cross_checks(self) -> Spec:
        errors: list[str] = []
        dies = self.hardware.dies
        p = self.prefill
        if p.instances:
            errors += layout_errors("prefill", p, p.devices_per_instance, dies, self.model)
        d = self.decode
        if d.devices:
            errors += layout_errors("decode", d, d.devices, dies, self.model)
            if d.tp_mode != "allreduce":
                errors.append(f"decode.tp_mode={d.tp_mode}: the staged SP-TP-SP form is a prefill layout; "
                              "use decode.tp_mode=allreduce")
            if d.batch_per_group is None and d.batch_per_device % dies:
                errors.append(f"decode.batch_per_device ({d.batch_per_device}) must split evenly over the "
                              f"{dies} dies of a device")
        if self.serving.mode == "agg":
            if p.instances:
                errors.append(f"serving.mode=agg serves prefill on the decode pool, but prefill.instances = "
                              f"{p.instances}; set prefill.instances=0 (or serving.mode=disagg)")
            if not d.devices:
                errors.append("serving.mode=agg needs the pool in decode.devices (0 given)")
        if self.mtp.draft_tokens and self.model.mtp_layers == 0:
            errors.append(f"mtp.draft_tokens ({self.mtp.draft_tokens}) needs a model with MTP layers; "
                          f"{self.model.name} has none (set mtp.draft_tokens=0)")
        for dtype in {self.prec.gemm, self.prec.attention}:
            if not self.hardware.supports(dtype):
                errors.append(f"precision={self.precision} needs {dtype} but {self.hardware.name} supports "
                              f"{sorted(self.hardware.die.peak_tflops)} (choose precision="
                              f"{' or '.join(p for p in PRECISIONS if self.hardware.supports(PRECISIONS[p].gemm))})")
        if self.caching.enabled and self.host is None:
            errors.append("caching.enabled is true but no host CPU profile is selected (hardware@host=...)")
        from cmtwin.sim.spec import MAX_SIM_SAMPLES

        interval = self.sim.sample_interval_s
        for key, duration in (("sim.duration_s", self.sim.duration_s), ("search.sim_duration_s",
                                                                        self.search.sim_duration_s)):
            samples = duration / interval  # cmtwin simulate also checks its expected requests before it starts
            if samples > MAX_SIM_SAMPLES:
                errors.append(f"{key} ({duration:g} s) / sim.sample_interval_s ({interval:g} s) = {samples:,.6g} "
                              f"time-series samples per simulation, above the limit of {MAX_SIM_SAMPLES:,} (lower "
                              f"{key} to at most {MAX_SIM_SAMPLES * interval:,.6g} or raise sim.sample_interval_s to "
                              f"at least {duration / MAX_SIM_SAMPLES:,.6g})")
        if errors:
            raise ValueError("; ".join(errors))
        return self
