"""Failure what-ifs (`failures.dies`, `failures.devices`, `failures.policy`): which devices are down, and what the
plan does about them.

- replan: the plan is compiled on the surviving devices, taken in order as before (so spare devices replace the
  failed ones); it is refused when too few survive.
- degrade: the layout stays where it was. A failed die's rank is down: its attention group (a DP rank, or the whole
  TP group) serves nothing, and its routed experts lose a replica each, their load going to the other replicas
  (EPLB's rule); an expert with no replica left is lost (tokens routed to it are dropped: a quality loss the plan
  lists). The twin then prices the hotter ranks (cmtwin.twin.load) and counts only the serving groups' tokens.
- refuse: a failure that hits a device the plan uses is an error naming it.

A device with a failed die is out as a whole: its other die cannot hold its share of a layout laid out by device.
Failed switches, switch sub-planes and links (failures.switches, failures.planes, failures.links) act on the fabric
instead: it becomes the view of the graph without them (cmtwin.topology.fabric.fabric_for), so collectives price
the surviving links and routes, and a plane that no longer joins every die is refused naming the cut.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from cmtwin.errors import PlanError


def failed_devices(spec, dies) -> set[tuple[int, int]]:
    """(node, device) of every device that is down; unknown ids are refused with examples of valid ones."""
    f = spec.failures
    if not f.dies and not f.devices:
        return set()
    by_die = {d.id: (d.node, d.device) for d in dies}
    by_device = {re.sub(r"\.d\d+$", "", d.id): (d.node, d.device) for d in dies}  # n03.npu5.d1 -> n03.npu5
    out = set()
    for key, ids, table in (("failures.dies", f.dies, by_die), ("failures.devices", f.devices, by_device)):
        for i in ids:
            if i not in table:
                examples = ", ".join(list(table)[:2] + list(table)[-1:])
                raise PlanError(f"{key}: {i!r} is not a {'die' if key.endswith('dies') else 'device'} of "
                                f"{spec.topology.name}.", key=key,
                                fix=f"use the ids `cmtwin plan --format json` lists under plan.dies, e.g. {examples}")
            out.add(table[i])
    return out


def survivors(spec, free: list, failed: set[tuple[int, int]]) -> list:
    """policy=replan: the dies left to allocate from."""
    if not failed or spec.failures.policy != "replan":
        return free
    return [d for d in free if (d.node, d.device) not in failed]


def apply(spec, pools: list, roles: list, dies_by_id: dict, failed: set[tuple[int, int]]) -> list:
    """After allocation: refuse, or degrade the pools that hold failed dies (replan already avoided them)."""
    if not failed or spec.failures.policy == "replan":
        return pools
    hit = [r for r in roles if (dies_by_id[r.die].node, dies_by_id[r.die].device) in failed]
    if not hit:
        return pools
    if spec.failures.policy == "refuse":
        where = ", ".join(f"{r.die} ({r.role} instance {r.instance}, rank {r.rank})" for r in hit[:4])
        raise PlanError(f"failures.policy=refuse: the failures hit dies the plan uses: {where}"
                        f"{' ...' if len(hit) > 4 else ''}.", key="failures.policy",
                        fix="use failures.policy=replan (spare devices take over) or degrade (the plan runs without them)")
    out = []
    for pool in pools:
        ranks = tuple(sorted(r.rank for r in hit if r.role == pool.role and r.instance == pool.instance))
        if not ranks:
            out.append(pool)
            continue
        lay = pool.layout
        groups = {r // lay.tp for r in ranks}  # TP groups are consecutive ranks; a DP rank is a group of one
        ep_ranks = {(r % lay.stage_ranks) // lay.moe_tp for r in ranks}
        out.append(replace(pool, placement=pool.placement.without(ep_ranks), failed_ranks=ranks,
                           groups_down=len(groups)))
    return out


def fabric_loss(healthy_spec, spec, plan) -> dict:
    """Per plane, the dies the plan uses whose injection bandwidth the failed links, switches or sub-planes cut
    (how many, a few of them, the smallest fraction left) and the nodes whose uplink they cut (the fabric's blast
    radius)."""
    from cmtwin.topology.fabric import fabric_for

    before, after = fabric_for(healthy_spec), fabric_for(spec)
    if before is after:
        return {}

    def cut(items, capacity: str, plane: str) -> list[tuple[float, Any]]:
        """(fraction left, item) of the items whose `capacity` (a Fabric method) on the plane the failures cut."""
        out = []
        for x in items:
            full = getattr(before, capacity)(x, plane)
            left = getattr(after, capacity)(x, plane) if plane in after.planes else 0.0
            if full > 0 and left < full:
                out.append((left / full, x))
        return out

    out: dict = {}
    for plane in before.planes:
        hit = cut([r.die for r in plan.dies], "injection_gbps", plane)
        nodes = cut(range(before.nodes), "uplink_gbps", plane)
        if hit or nodes:
            out[plane] = {"dies": len(hit), "examples": [d for _, d in sorted(hit)[:3]],
                          "worst_fraction": min(f for f, _ in hit) if hit else 1.0,
                          "nodes_uplink_cut": len(nodes), "uplink_fraction": min(f for f, _ in nodes) if nodes else 1.0}
    return out


def blast_radius(plan) -> dict:
    """What the failures touch in a degraded plan: per pool, the ranks down, attention groups down, experts lost."""
    return {f"{p.role}[{p.instance}]": {"ranks_down": list(p.failed_ranks), "groups_down": p.groups_down,
                                        "groups": p.dp, "experts_lost": list(p.placement.lost_experts())}
            for p in plan.pools if p.failed_ranks}
