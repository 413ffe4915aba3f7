"""What an engine needs to know about a compiled plan: per role (prefill, decode, or the aggregated pool), the
instances, their nodes and ranks, the parallel layout, batch limits, speculative decoding, precision and the step
budget, in engine terms (an engine sees every die as a device: a 910C's two dies are two NPUs to vLLM-Ascend).

A layout an engine cannot express raises `Inexpressible` with the reason and the overrides of the nearest plan it
can express, so `cmtwin export launch` never approximates silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmtwin.errors import CmtwinError


class Inexpressible(CmtwinError):
    """The engine cannot run this plan as planned; `nearest` are the overrides of the closest plan it can run."""

    def __init__(self, engine: str, reasons: list[str], nearest: list[str]):
        self.engine, self.reasons, self.nearest = engine, reasons, nearest
        near = " ".join(nearest)
        super().__init__(f"{engine} cannot express this plan: " + "; ".join(reasons) + ".", key="--engine",
                         fix=f"predict the nearest plan it can run with `cmtwin plan ... {near}`, or export it with "
                             f"`cmtwin export launch ... --nearest`")


@dataclass(frozen=True)
class Role:
    """One pool of the plan as an engine launches it."""

    role: str  # prefill | decode | agg
    section: str  # the spec section it comes from: prefill | decode
    instances: int
    devices: int  # devices (packages) per instance
    ranks: int  # engine devices (dies) per instance
    nodes: int  # nodes per instance
    ranks_per_node: int
    tp: int  # attention tensor parallel
    dp: int  # attention data parallel
    ep: int
    moe_tp: int
    pp: int
    tp_mode: str
    redundant: int
    dedicated_shared: int
    microbatches: int
    batch_per_group: int  # decode/agg: requests per attention group; prefill: prompts per rank per forward
    tokens_per_rank: int  # prefill: tokens per rank per forward; decode: 0

    @property
    def world(self) -> int:
        """Ranks of one pipeline stage (the engines' tensor-parallel world with DP attention)."""
        return self.ranks // self.pp

    @property
    def max_running(self) -> int:
        """Concurrent requests of one instance."""
        return self.batch_per_group * self.dp


@dataclass(frozen=True)
class LaunchView:
    spec: object
    plan: object
    roles: tuple[Role, ...]
    model_path: str
    precision: str
    kv_cache_dtype: str
    drafts: int
    moe: bool
    experts: int  # routed experts of the model (0 for a dense model)
    budget: int | None  # agg: the engine flag's step budget (serving.max_batched_tokens or the engine default)

    @property
    def disaggregated(self) -> bool:
        return any(r.role == "prefill" for r in self.roles)

    def role(self, name: str) -> Role | None:
        return next((r for r in self.roles if r.role == name), None)


def launch_view(spec, plan) -> LaunchView:
    from cmtwin.topology.fabric import fabric_for

    fabric = fabric_for(spec)
    per_node = fabric.devices_per_node * spec.hardware.dies
    roles = []
    for section in ("prefill", "decode"):
        pools = plan.pools_of(section)
        if not pools:
            continue
        pool = pools[0]
        lay = pool.layout
        ph = getattr(spec, section)
        role = "agg" if section == "decode" and spec.serving.mode == "agg" else section
        decode = section == "decode"
        roles.append(Role(
            role=role, section=section, instances=len(pools), devices=pool.devices, ranks=pool.dies,
            nodes=len(pool.nodes), ranks_per_node=min(pool.dies, per_node), tp=lay.tp, dp=lay.attention_dp,
            ep=lay.ep, moe_tp=lay.moe_tp, pp=lay.pp, tp_mode=lay.tp_mode, redundant=ph.redundant_experts,
            dedicated_shared=ph.dedicated_shared_ranks, microbatches=ph.microbatches,
            batch_per_group=round(pool.batch_per_die * lay.tp) if decode else pool.batch_per_die,
            tokens_per_rank=0 if decode else int(pool.tokens_per_die)))
    budget = None
    if spec.serving.mode == "agg":
        from cmtwin.config.budget import token_budget

        budget = token_budget(spec).flag
    moe = spec.model.moe
    return LaunchView(spec=spec, plan=plan, roles=tuple(roles), model_path=spec.model.hf_id or spec.model.name,
                      precision=spec.precision, kv_cache_dtype=spec.prec.kv_cache, drafts=spec.mtp.draft_tokens,
                      moe=moe is not None, experts=moe.routed_experts if moe else 0, budget=budget)


def check_common(engine: str, view: LaunchView, *, tp_modes=("allreduce",), shared_ranks: bool = False) -> None:
    """Refuse what no GPU engine expresses: the staged SP-TP-SP MLA and ranks holding only the shared expert."""
    reasons, nearest = [], []
    for r in view.roles:
        if r.tp_mode not in tp_modes:
            reasons.append(f"{r.section}.tp_mode={r.tp_mode} (the staged sequence/head-parallel MLA) has no {engine} "
                           "equivalent")
            nearest.append(f"{r.section}.tp_mode=allreduce")
        if r.dedicated_shared and not shared_ranks:
            reasons.append(f"{r.section}.dedicated_shared_ranks={r.dedicated_shared}: {engine} colocates the shared "
                           "expert on every rank")
            nearest.append(f"{r.section}.dedicated_shared_ranks=0")
            if r.redundant and view.moe:  # the slots must still divide over all ep ranks
                slots = -(-(view.experts + r.redundant) // r.ep) * r.ep
                nearest.append(f"{r.section}.redundant_experts={slots - view.experts}")
    if reasons:
        raise Inexpressible(engine, reasons, nearest)
