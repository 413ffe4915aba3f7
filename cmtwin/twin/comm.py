"""Communication time on the topology graph (rule 4 of the twin).

A collective is a set of flows. For one representative rank of a symmetric group, the bytes it sends to
peers on its own node travel on the scale-up plane, the rest on the inter-node plane (the planes the topology
file declares under `roles:`; a plane's name means nothing here); each plane's share
of the time is bytes / (achievable fraction x the rank's injection bandwidth on that plane), the planes run
in parallel, and the path latency of the farthest peer is added. Link sharing beyond the rank's own links
(node uplinks) comes from the fabric's cut figures. The achievable fractions and fixed costs of real
kernels are calibrated on operator tables (cmtwin/twin/calibration.py) and live in the hardware profile's
`collectives:` section, each with its source. A plane's efficiency for a kind is looked up under the roles the
plane plays (`efficiency_scale_up`, `efficiency_inter_node`, `efficiency_scale_out`, in that order), never under
a plane's name, so one profile fits any plane names; a profile whose efficiencies are keyed otherwise (by plane
name, `efficiency_ub`) is refused (ConfigError) rather than silently run at the full link rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from cmtwin.errors import ConfigError
from cmtwin.twin.hardware import HardwareProfile
from cmtwin.vec import all_of, every, vmax


@dataclass(frozen=True)
class CommTime:
    """A collective's modelled time for one rank, and what bounds it."""

    name: str
    us: float
    bytes: float
    bound: str  # the plane/link that limits it


@dataclass(frozen=True)
class Planes:
    intra: str  # the scale-up plane: between dies of one node
    inter: str  # the inter-node plane: between nodes (the scale-up plane again on a supernode, or scale-out)
    scale_out: str  # the plane for the prefill->decode KV transfer


@cache
def planes(fabric) -> Planes:
    """The planes the fabric's topology file declares for each role (`roles:`); no name is interpreted."""
    roles = fabric.roles
    return Planes(roles.scale_up, roles.inter_node, roles.scale_out)


@dataclass(frozen=True)
class GroupShape:
    """Where a rank's peers are, for a symmetric group of dies."""

    size: int
    same_node: int  # peers on the representative rank's node (excluding itself)
    intra_gbps: float  # representative rank's injection bandwidth, intra-node plane
    inter_gbps: float
    intra_latency_us: float
    inter_latency_us: float
    planes: Planes
    fabric: object = field(default=None, compare=False, repr=False)  # whose roles name the planes

    @property
    def nodes(self) -> int:
        """Nodes the group spans (its ranks spread evenly, as the representative rank's node holds them)."""
        return max(1, round(self.size / (self.same_node + 1)))


@cache
def _group_shape_cached(fabric, die_ids: tuple[str, ...]) -> GroupShape:
    pl = planes(fabric)
    rep = die_ids[0]
    node = fabric.domain_of(rep)
    same = [d for d in die_ids[1:] if fabric.domain_of(d) == node]
    other = [d for d in die_ids[1:] if fabric.domain_of(d) != node]
    intra_lat = fabric.route(rep, same[-1], pl.intra).latency_us if same else 0.0
    inter_lat = fabric.route(rep, other[-1], pl.inter).latency_us if other else 0.0
    # a collective runs at its slowest rank's pace: the group's least injection (a failed link or switch makes
    # one rank slower than the rest; a healthy fabric is symmetric and every rank gives the same figure)
    intra = min(fabric.injection_gbps(d, pl.intra) for d in die_ids)
    inter = min(fabric.injection_gbps(d, pl.inter) for d in die_ids)
    if other:  # the group's ranks on a node share its uplink towards the other nodes
        per_node: dict = {}
        for d in die_ids:
            n = fabric.domain_of(d)
            per_node[n] = per_node.get(n, 0) + 1
        inter = min([inter] + [fabric.uplink_gbps(n, pl.inter) / k for n, k in per_node.items()
                               if n is not None and fabric.uplink_gbps(n, pl.inter) > 0])
    return GroupShape(
        size=len(die_ids),
        same_node=len(same),
        intra_gbps=intra,
        inter_gbps=inter,
        intra_latency_us=intra_lat,
        inter_latency_us=inter_lat,
        planes=pl,
        fabric=fabric,
    )


def group_shape(fabric, die_ids) -> GroupShape:
    return _group_shape_cached(fabric, tuple(die_ids))


def _entry(hw: HardwareProfile, kind: str) -> dict:
    return hw.collectives.get(kind) or hw.collectives.get("p2p") or {}


def _cal(hw: HardwareProfile, kind: str, key: str, default: float) -> float:
    v = _entry(hw, kind).get(key)
    return v.value if v is not None else default


@cache
def _efficiency_keys(fabric, plane: str) -> tuple[str, ...]:
    """Profile keys that may hold `plane`'s efficiency, in order: by each role it plays."""
    return tuple(f"efficiency_{r}" for r in fabric.roles_of(plane))


def _eff(hw: HardwareProfile, fabric, kind: str, plane: str) -> float:
    """The achievable fraction of `plane`'s link bandwidth for collective `kind` (1.0 when the profile gives
    none for it, which is legal: an optimistic bound)."""
    entry = _entry(hw, kind)
    for key in _efficiency_keys(fabric, plane):
        v = entry.get(key)
        if v is not None:
            return v.value
    _refuse_foreign_keys(hw, fabric, kind, entry, plane)
    return 1.0


def _refuse_foreign_keys(hw: HardwareProfile, fabric, kind: str, entry: dict, plane: str) -> None:
    """An efficiency keyed by anything but a role (a plane's name, `efficiency_nvlink`) would otherwise be
    dropped silently and the plane run at its full link rate."""
    known = {f"efficiency_{r}" for r in type(fabric.roles).model_fields}
    foreign = sorted(k for k in entry if k.startswith("efficiency_") and k not in known)
    if not foreign:
        return
    which = kind if kind in hw.collectives else "p2p"
    roles = fabric.roles_of(plane)
    want = f"efficiency_{roles[0]}" if roles else "efficiency_<role>"
    raise ConfigError(
        f"hardware profile {hw.name}: `collectives.{which}` gives {', '.join(foreign)}, which name no role "
        f"(topology {fabric.name}'s planes: {', '.join(fabric.planes)}; plane {plane} is "
        f"{' and '.join(roles) or 'in no role'}), so its efficiency on {plane} would silently be 1.0.",
        key=f"hardware.collectives.{which}",
        fix=f"key the efficiencies by the role of the plane they were measured on (`{want}`; efficiency_scale_up, "
        "efficiency_inter_node, efficiency_scale_out), which holds on any plane names",
    )


def _spread_time(hw: HardwareProfile, g: GroupShape, kind: str, send_bytes) -> tuple[float, str]:
    """Seconds x 1e6 for a rank to send send_bytes (a number, or an array of them) spread evenly over the group
    (itself included), and the plane that bounds it (of an array: the scale-up plane where it bounds them all)."""
    if g.size <= 1 or not every(send_bytes > 0):
        return 0.0, "local"
    remote = g.size - 1 - g.same_node  # peers on other nodes
    intra_b = send_bytes * g.same_node / g.size
    inter_b = send_bytes * remote / g.size
    pi, po = g.planes.intra, g.planes.inter
    if pi == po:  # one plane (UB): all of it through the rank's links, the off-node part also through the node's
        eff = _eff(hw, g.fabric, kind, pi)  # uplinks, shared by the group's ranks there (binding only when a
        t = (intra_b + inter_b) / (g.intra_gbps / 8 * 1e9 * eff)  # switch or sub-plane failed: CM384 is non-blocking)
        t_up = inter_b / (g.inter_gbps / 8 * 1e9 * eff) if remote and g.inter_gbps else 0.0
        return vmax(t, t_up) * 1e6, pi
    t_in = intra_b / (g.intra_gbps / 8 * 1e9 * _eff(hw, g.fabric, kind, pi)) * 1e6 if g.same_node else 0.0
    t_out = inter_b / (g.inter_gbps / 8 * 1e9 * _eff(hw, g.fabric, kind, po)) * 1e6 if remote else 0.0
    return vmax(t_in, t_out), pi if all_of(t_in >= t_out) else po


def _latency(g: GroupShape) -> float:
    return max(g.intra_latency_us, g.inter_latency_us)


def dispatch_combine(hw: HardwareProfile, fabric, die_ids, *, kind: str, send_copies: float, recv_copies: float,
                     msg_bytes: float) -> CommTime:
    """MoE dispatch (kind='dispatch') or combine ('combine') for one rank.

    send_copies: token copies this rank sends (tokens x distinct destination ranks); recv_copies: copies the
    busiest rank receives. The rank's time is the larger of its send and receive volumes over its links,
    plus the kernel's fixed cost and the farthest peer's latency.
    """
    g = group_shape(fabric, die_ids)
    vol = vmax(send_copies, recv_copies) * msg_bytes
    t, plane = _spread_time(hw, g, kind, vol)
    return CommTime(kind, t + _fixed(hw, kind, g) + _latency(g), vol, f"comm:{plane}")


def has_node_forwarding(hw: HardwareProfile, kind: str) -> bool:
    """Whether the profile calibrates a node-forwarding kernel for this kind (DeepEP's normal kernels)."""
    return "normal_efficiency_inter_node" in (hw.collectives.get(kind) or {})


def dispatch_combine_forwarded(hw: HardwareProfile, fabric, die_ids, *, kind: str, tokens: float,
                               remote_nodes: float, recv_copies: float, msg_bytes: float) -> CommTime:
    """MoE dispatch or combine by node forwarding (DeepEP's normal kernels, prefill on GPUs): each of a rank's
    `tokens` crosses the inter-node plane once per remote destination node (`remote_nodes` on average), to the
    rank of the same index there, which forwards it over the scale-up plane to the destination ranks; the
    busiest rank receives `recv_copies` copies that way. The rank's time is the slower of its inter-node send and
    its scale-up receive, each at the profile's `normal_efficiency_<role>` of its links, plus the kernel's fixed
    cost and the farthest peer's latency."""
    g = group_shape(fabric, die_ids)
    if g.size <= 1:
        return CommTime(kind, 0.0, 0.0, "local")
    entry = hw.collectives[kind]
    rdma = tokens * remote_nodes * msg_bytes
    nvl = recv_copies * msg_bytes
    t_out = rdma / (g.inter_gbps / 8 * 1e9 * entry["normal_efficiency_inter_node"].value) * 1e6 if rdma else 0.0
    t_in = nvl / (g.intra_gbps / 8 * 1e9 * entry["normal_efficiency_scale_up"].value) * 1e6
    plane = g.planes.inter if t_out >= t_in else g.planes.intra
    return CommTime(kind, max(t_out, t_in) + _fixed(hw, kind, g) + _latency(g), rdma + nvl, f"comm:{plane}")


def _fixed(hw: HardwareProfile, kind: str, g: GroupShape, *, p2p_calls: int = 1) -> float:
    """A collective kernel's per-call fixed cost (launch, synchronisation, protocol start-up) beyond the path
    latency: the profile's `collectives.<kind>.fixed_us_scale_up` when the group stays inside one node,
    `fixed_us_inter_node` when it spans nodes, `fixed_us` where the profile gives one figure for both; without
    an entry for the kind, p2p's fixed_us per point-to-point step (rule 8: every collective has a fixed cost)."""
    entry = hw.collectives.get(kind)
    if entry:
        v = entry.get("fixed_us_inter_node" if g.same_node < g.size - 1 else "fixed_us_scale_up")
        v = v if v is not None else entry.get("fixed_us")
        if v is not None:
            return v.value
    return p2p_calls * _cal(hw, "p2p", "fixed_us", 0.0)


def all_gather(hw: HardwareProfile, fabric, die_ids, *, bytes_per_rank: float, name: str = "all_gather") -> CommTime:
    """Every rank gathers every other rank's bytes_per_rank (direct full mesh: each rank receives n-1 pieces)."""
    g = group_shape(fabric, die_ids)
    vol = bytes_per_rank * g.size  # spread over n ranks, (n-1)/n of it remote
    t, plane = _spread_time(hw, g, "p2p", vol)
    return CommTime(name, t + _fixed(hw, "all_gather", g) + _latency(g) if g.size > 1 else 0.0, vol, f"comm:{plane}")


def all_to_all(hw: HardwareProfile, fabric, die_ids, *, bytes_per_rank: float, name: str = "all_to_all") -> CommTime:
    """Every rank scatters bytes_per_rank evenly over the group (its own share stays local)."""
    g = group_shape(fabric, die_ids)
    t, plane = _spread_time(hw, g, "p2p", bytes_per_rank)
    return CommTime(name, t + _fixed(hw, "all_to_all", g) + _latency(g) if g.size > 1 else 0.0,
                    bytes_per_rank, f"comm:{plane}")


def all_reduce(hw: HardwareProfile, fabric, die_ids, *, nbytes: float, name: str = "all_reduce") -> CommTime:
    """Reduce-scatter then all-gather of nbytes: each rank moves 2 (n-1)/n x nbytes."""
    g = group_shape(fabric, die_ids)
    if g.size <= 1:
        return CommTime(name, 0.0, 0.0, "local")
    t, plane = _spread_time(hw, g, "p2p", 2.0 * nbytes)
    return CommTime(name, t + _fixed(hw, "all_reduce", g, p2p_calls=2) + 2 * _latency(g), 2.0 * nbytes,
                    f"comm:{plane}")


def p2p(hw: HardwareProfile, fabric, src: str, dst: str, *, nbytes: float, plane: str, name: str = "p2p") -> CommTime:
    """One transfer of nbytes between two endpoints on a plane."""
    r = fabric.route(src, dst, plane)
    bw = fabric.injection_gbps(src, plane) / 8 * 1e9 * _eff(hw, fabric, "p2p", plane)
    return CommTime(name, nbytes / bw * 1e6 + r.latency_us, nbytes, f"comm:{plane}")
