"""Deployment -> Plan: roles, ranks, expert placement, KV routes and memory per die.

The plan is the single description every later stage reads (twin, simulator, executor, TUI). It is a
plain, JSON-ready structure; `Plan.to_dict()` is what `--format json` prints and the store keeps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cmtwin.config.identity import spec_hash
from cmtwin.config.schema import Spec
from cmtwin.errors import PlanError
from cmtwin.planner.layout import Layout, layout_of
from cmtwin.planner.memory import GIB, MemoryBreakdown, die_memory
from cmtwin.planner.placement import ExpertPlacement, place_experts
from cmtwin.topology.fabric import fabric_for
from cmtwin.config.budget import token_budget
from cmtwin.planner import failures


class DieRole(NamedTuple):
    """What one die does. A named tuple: a search compiles ~5,000 plans of 768 dies, and a frozen dataclass's
    field-by-field __init__ made building them a third of the search's twin stage."""

    die: str  # topology node id
    node: int
    device: int
    role: str  # prefill | decode
    instance: int
    rank: int  # rank within the instance (attention DP rank / SP rank)
    ep_rank: int
    tp_group: int
    experts: tuple[int, ...]  # routed experts held (ids); empty on dedicated shared ranks
    shared: bool  # holds a shared-expert replica


@dataclass(frozen=True)
class Pool:
    """One instance of a phase (prefill instance i, or the decode instance)."""

    role: str
    instance: int
    devices: int
    dies: int
    nodes: tuple[int, ...]
    layout: Layout
    ep: int
    tp: int
    dp: int  # attention data-parallel degree
    tokens_per_die: int  # prefill: tokens per forward; decode: tokens per step (batch x verify width)
    batch_per_die: float  # decode: requests per die (a TP group's / tp); prefill: prompts per die per forward
    placement: ExpertPlacement
    memory: MemoryBreakdown  # of the most loaded die kind
    memory_by_kind: dict[str, MemoryBreakdown]
    failed_ranks: tuple[int, ...] = ()  # failures.policy=degrade: ranks of this instance that are down
    groups_down: int = 0  # attention groups (DP ranks, TP groups) with a failed die: they serve nothing

    @property
    def alive(self) -> float:
        """Share of the attention groups still serving."""
        return (self.dp - self.groups_down) / self.dp if self.dp else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "instance": self.instance,
            "devices": self.devices,
            "dies": self.dies,
            "nodes": list(self.nodes),
            "ep": self.ep,
            "tp": self.tp,
            "dp": self.dp,
            "layout": self.layout.to_dict(),
            "tokens_per_die": self.tokens_per_die,
            "batch_per_die": self.batch_per_die,
            "experts": self.placement.summary(),
            "memory_per_die": {k: v.to_dict() for k, v in self.memory_by_kind.items()},
            **({"failed_ranks": list(self.failed_ranks), "groups_down": self.groups_down,
                "experts_lost": list(self.placement.lost_experts())} if self.failed_ranks else {}),
        }


@dataclass(frozen=True)
class CachingPool:
    """The EMS caching pool over the host CPUs' DRAM."""

    nodes: int
    cpus: int
    capacity_bytes: float
    block_tokens: int
    block_bytes: int
    blocks: int
    ssd_tb: float

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "cpus": self.cpus, "capacity_tib": round(self.capacity_bytes / 2**40, 3),
                "block_tokens": self.block_tokens, "block_mib": round(self.block_bytes / 2**20, 3),
                "blocks": self.blocks, "ssd_tb": self.ssd_tb}


@dataclass(frozen=True)
class Plan:
    """A compiled deployment."""

    spec: Any = field(repr=False)  # the validated spec it was compiled from
    deployment: str
    model: str
    hardware: str
    topology: str
    precision: str
    devices_total: int  # devices in the topology
    dies_per_device: int
    pools: tuple[Pool, ...]
    dies: tuple[DieRole, ...]
    caching: CachingPool | None
    kv_routes: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # prefill inst -> (first, step, count) of decode ranks
    devices_per_node: int = 0  # as the topology declares (node.devices.count); the TUI's grid width
    device_id_prefix: str = ""  # the topology's die-id stem (n03.npu5.d1: "npu")
    failed_dies: tuple[str, ...] = ()  # failures.*: the dies down (the TUI's map marks them)

    @functools.cached_property
    def plan_hash(self) -> str:
        """The plan's identity: its spec's canonical hash (cmtwin.config.identity.spec_hash), worked out when first
        asked for (a search compiles thousands of plans it never names)."""
        return spec_hash(self.spec)

    def pools_of(self, role: str) -> list[Pool]:
        return [p for p in self.pools if p.role == role]

    def die_ids(self, role: str, instance: int | None = None) -> tuple[str, ...]:
        """Ids of the dies with `role` (of one instance of it), in rank order."""
        return self._die_ids.get((role, instance), ())

    @functools.cached_property
    def _die_ids(self) -> dict[tuple[str, int | None], tuple[str, ...]]:
        # the twin asks for these on every evaluation (a search makes ~27,000 of them over 768 dies)
        out: dict[tuple[str, int | None], list[str]] = {}
        for r in self.dies:
            out.setdefault((r.role, r.instance), []).append(r.die)
        for (role, _), ids in list(out.items()):  # instances in order: a role's dies in rank order
            out.setdefault((role, None), []).extend(ids)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def devices_used(self) -> int:
        return sum(p.devices for p in self.pools)

    def to_dict(self, *, with_dies: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "plan_hash": self.plan_hash,
            "deployment": self.deployment,
            "model": self.model,
            "hardware": self.hardware,
            "topology": self.topology,
            "precision": self.precision,
            "devices_total": self.devices_total,
            "devices_used": self.devices_used,
            "dies_per_device": self.dies_per_device,
            "devices_per_node": self.devices_per_node,
            "device_id_prefix": self.device_id_prefix,
            "pools": [p.to_dict() for p in self.pools],
            "caching": self.caching.to_dict() if self.caching else None,
            "kv_routes": {str(k): {"decode_rank_first": a, "step": b, "count": c}
                          for k, (a, b, c) in self.kv_routes.items()},
            **({"failed_dies": list(self.failed_dies)} if self.failed_dies else {}),
        }
        if with_dies:
            d["dies"] = [
                {"die": r.die, "role": r.role, "instance": r.instance, "rank": r.rank, "ep_rank": r.ep_rank,
                 "tp_group": r.tp_group, "experts": list(r.experts), "shared": r.shared}
                for r in self.dies
            ]
        return d


def _check_memory(spec: Spec, phase: str, kind: str, mem: MemoryBreakdown) -> None:
    if mem.used <= mem.capacity:
        return
    rows = ", ".join(f"{k} {v:.2f}" for k, v in mem.rows() if v > 0.005)
    need = mem.used / GIB
    have = mem.capacity / GIB
    fix = {
        "decode": "lower decode.batch_per_device or workload.kv_len, raise decode.ep (fewer experts per die), "
                  "or use precision=int8/fp8",
        "prefill": "lower prefill.tokens_per_device, raise prefill.ep or prefill.tp, or use a smaller precision",
    }[phase]
    raise PlanError(
        f"HBM overflow on a {phase} die ({kind}): needs {need:.2f} GiB but one {spec.hardware.name} die has "
        f"{have:.0f} GiB. Breakdown (GiB): {rows}.", key=f"{phase}", fix=fix)


def _checked_memory(spec: Spec, role: str, layout: Layout, placement, tokens_per_die: int, kv_tokens: float,
                    buffer_tokens: int) -> dict[str, MemoryBreakdown]:
    """Memory per die of each kind of a pool (routed or dense ranks, dedicated shared-expert ranks), checked
    against the die's HBM (PlanError naming the overflow)."""
    kinds: dict[str, MemoryBreakdown] = {}
    shared_count = spec.model.moe.shared_experts if spec.model.moe else 0
    routed_kind = placement.routed_slots_per_rank + (shared_count if placement.shared_on_every_rank else 0)
    kinds["routed" if spec.model.is_moe else "dense"] = die_memory(
        spec, phase=role, layout=layout, experts_on_die=routed_kind, tokens_per_die=tokens_per_die,
        kv_tokens=kv_tokens, buffer_tokens=buffer_tokens)
    if placement.dedicated_shared_ranks:
        kinds["shared"] = die_memory(spec, phase=role, layout=layout, experts_on_die=shared_count,
                                     tokens_per_die=tokens_per_die, kv_tokens=kv_tokens, buffer_tokens=buffer_tokens)
    for kind, mem in kinds.items():
        _check_memory(spec, role, kind, mem)
    return kinds


def _decode_sizes(spec: Spec, lay: Layout) -> tuple[int, float, int]:
    """A decode die's (tokens per step, KV-cache tokens, dispatch buffer tokens) at the spec's batch."""
    k = spec.mtp.draft_tokens
    dcfg = spec.decode
    batch = spec.decode_batch_per_die
    tokens = max(1, math.ceil(batch * (1 + k)))  # whole tokens per die (a TP group's share rounds up)
    if spec.serving.mode == "agg":  # activations of the largest step: the whole step budget
        tokens = max(tokens, math.ceil(token_budget(spec).per_group / dcfg.tp))
    kv_tokens = batch * (spec.workload.decode_kv_len + k) * lay.kv_replication(spec.model)
    return tokens, kv_tokens, dcfg.max_tokens_per_rank or tokens


def decode_memory(spec: Spec, plan: Plan) -> MemoryBreakdown:
    """The decode pool's memory per die (its fullest kind) at the spec's batch, for a plan compiled from the same
    spec at another batch (nothing else in a plan depends on the batch): compile_plan's own arithmetic and
    checks (PlanError on an overflow), without placing anything again. A plan with failed dies is compiled anew."""
    if plan.failed_dies:
        return compile_plan(spec).pools_of("decode")[0].memory
    pool = plan.pools_of("decode")[0]
    tokens, kv_tokens, buffer_tokens = _decode_sizes(spec, pool.layout)
    kinds = _checked_memory(spec, "decode", pool.layout, pool.placement, tokens, kv_tokens, buffer_tokens)
    return max(kinds.values(), key=lambda m: m.used)


def _pool(spec: Spec, *, role: str, instance: int, dies: list, layout: Layout, redundant: int,
          dedicated: int, tokens_per_die: int, batch_per_die: float, kv_tokens: float,
          buffer_tokens: int) -> tuple[Pool, list[DieRole]]:
    ep, tp = layout.ep, layout.tp
    placement = place_experts(spec.model, phase=role, ep=ep, redundant=redundant, dedicated_shared=dedicated,
                              balance=spec.placement.balance, load_cv=spec.placement.expert_load_cv)
    kinds = _checked_memory(spec, role, layout, placement, tokens_per_die, kv_tokens, buffer_tokens)
    shared_count = spec.model.moe.shared_experts if spec.model.moe else 0
    roles = []
    moe, stage, moe_tp, held = spec.model.is_moe, layout.stage_ranks, layout.moe_tp, placement.ranks
    has_shared, everywhere = moe and shared_count > 0, placement.shared_on_every_rank
    for r, d in enumerate(dies):  # positional and hoisted: ~5,000 plans of 768 dies in a search
        ep_rank = (r % stage) // moe_tp
        experts = held[ep_rank] if moe else ()
        roles.append(DieRole(d.id, d.node, d.device, role, instance, r, ep_rank, r // tp, experts,
                             has_shared and (everywhere or not experts)))
    worst = max(kinds.values(), key=lambda m: m.used)
    devices = len(dies) // spec.hardware.dies
    pool = Pool(role=role, instance=instance, devices=devices, dies=len(dies),
                nodes=tuple(sorted({d.node for d in dies})), layout=layout, ep=ep, tp=tp, dp=layout.attention_dp,
                tokens_per_die=tokens_per_die, batch_per_die=batch_per_die, placement=placement, memory=worst,
                memory_by_kind=kinds)
    return pool, roles


def compile_plan(spec: Spec) -> Plan:
    """Compile a validated spec into a plan, or raise PlanError with the arithmetic."""
    fabric = fabric_for(spec)
    all_dies = list(fabric.dies())
    dpd = spec.hardware.dies
    if fabric.dies_per_device != dpd:
        raise PlanError(
            f"topology {spec.topology.name} has {fabric.dies_per_device} dies per device but hardware "
            f"{spec.hardware.name} has {dpd}.", key="hardware", fix="pick a hardware profile matching the topology")
    start = next((i for i, d in enumerate(all_dies) if d.node >= spec.placement.first_node), len(all_dies))
    free = all_dies[start:]
    failed = failures.failed_devices(spec, all_dies)
    free = failures.survivors(spec, free, failed)
    devices_total = len(all_dies) // dpd
    p, dcfg = spec.prefill, spec.decode
    want = p.instances * p.devices_per_instance + dcfg.instances * dcfg.devices
    if want == 0:
        raise PlanError("the deployment has neither a prefill nor a decode pool.", key="decode.devices",
                        fix="set prefill.instances and/or decode.devices")
    if want * dpd > len(free):
        raise PlanError(
            f"the deployment asks for more devices than the topology has: prefill.instances ({p.instances}) x "
            f"devices_per_instance ({p.devices_per_instance}) + decode.instances ({dcfg.instances}) x decode.devices "
            f"({dcfg.devices}) = {want} devices, "
            f"but {spec.topology.name} has {len(free) // dpd} from node {spec.placement.first_node} "
            f"({devices_total} in all{f', {len(failed)} failed' if failed else ''}).", key="decode.devices",
            fix="shrink the pools or use a larger topology (topology.params.nodes=...)"
            + (", or keep the layout without the failed devices (failures.policy=degrade)" if failed else ""))
    pools: list[Pool] = []
    roles: list[DieRole] = []
    cursor = 0
    for i in range(p.instances):
        n = p.devices_per_instance * dpd
        dies = free[cursor:cursor + n]
        cursor += n
        tpd = p.tokens_per_device // dpd
        lay = layout_of(p, p.devices_per_instance, dpd)
        rep = lay.kv_replication(spec.model) if lay.tp_mode == "allreduce" else 1.0
        pool, r = _pool(spec, role="prefill", instance=i, dies=dies, layout=lay, redundant=p.redundant_experts,
                        dedicated=p.dedicated_shared_ranks, tokens_per_die=tpd,
                        batch_per_die=max(1, tpd // spec.workload.prompt_len), kv_tokens=tpd * rep,
                        buffer_tokens=max(1, tpd // p.microbatches))
        pools.append(pool)
        roles += r
    for i in range(dcfg.instances if dcfg.devices else 0):
        n = dcfg.devices * dpd
        dies = free[cursor:cursor + n]
        cursor += n
        lay = layout_of(dcfg, dcfg.devices, dpd)
        tokens, kv_tokens, buffer_tokens = _decode_sizes(spec, lay)
        pool, r = _pool(spec, role="decode", instance=i, dies=dies, layout=lay,
                        redundant=dcfg.redundant_experts, dedicated=dcfg.dedicated_shared_ranks,
                        tokens_per_die=tokens, batch_per_die=spec.decode_batch_per_die, kv_tokens=kv_tokens,
                        buffer_tokens=buffer_tokens)
        pools.append(pool)
        roles += r
    pools = failures.apply(spec, pools, roles, {d.id: d for d in all_dies}, failed)
    caching = None
    if spec.caching.enabled and spec.host is not None:
        cpus = list(fabric.cpus())
        nodes = len({c.node for c in cpus})
        cap = len(cpus) * spec.host.memory_bytes * spec.caching.dram_fraction
        from cmtwin.model.operators import kv_bytes_per_token

        block = spec.caching.block_tokens * kv_bytes_per_token(spec.model, spec.prec)
        caching = CachingPool(nodes=nodes, cpus=len(cpus), capacity_bytes=cap, block_tokens=spec.caching.block_tokens,
                              block_bytes=block, blocks=int(cap // block), ssd_tb=spec.caching.ssd_tb_per_node * nodes)
    kv_routes = {}
    if p.instances and dcfg.devices:
        ranks = dcfg.devices * dpd
        for i in range(p.instances):
            kv_routes[i] = (i, p.instances, len(range(i, ranks, p.instances)))
    return Plan(
        spec=spec,
        deployment=spec.deployment.name or "",
        model=spec.model.name,
        hardware=spec.hardware.name,
        topology=spec.topology.name,
        precision=spec.precision,
        devices_total=devices_total,
        dies_per_device=dpd,
        pools=tuple(pools),
        dies=tuple(roles),
        caching=caching,
        kv_routes=kv_routes,
        devices_per_node=fabric.devices_per_node,
        device_id_prefix=fabric.device_id_prefix,
        failed_dies=tuple(d.id for d in all_dies if (d.node, d.device) in failed),
    )
