"""Fast, link-limited communication figures on a frozen fabric graph.

A Fabric is built once per (topology, overrides) and answers from per-endpoint and per-node aggregates:
injection bandwidth of every endpoint, uplink bandwidth of every node, one route per class of endpoint pair.
It never enumerates paths per pair. Figures are raw fabric limits; the efficiency of real collective kernels
is applied by the twin on top.

Bandwidth figures are cuts: a transfer between two endpoints is limited by the source's injection, the
destination's ejection and, when its route leaves a node, that node's uplink (downlink at the far end).
Switches are taken as internally non-blocking. Latency is the sum of per-link latencies along a hop-count
shortest path. Endpoints are grouped into wiring classes (the links an endpoint has on the plane, named
relative to its node); a pair's route latency is computed once per (class, class, same node or not), which
is exact for tiered fabrics whose nodes are wired alike (an extra link gives its ends classes of their own).

Routes are searched on the fabric's edge form: its nodes and directed links as columns in the graph's own order
(_edge_form_of), which is also what the on-disk cache stores. A Fabric read from the cache therefore answers every
query without networkx; its networkx graph is rebuilt from the edge form only when something asks for `.graph`
(an export, a failure what-if, the TUI's map).
"""

from __future__ import annotations

import base64
import difflib
import functools
import math
import json
import sys
from array import array
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmtwin.cachefile import entry_path, read_json, write_text
from cmtwin.errors import TopologyError
from cmtwin.topology.graph import ENDPOINT_KINDS, build_graph, check_invariants, node_label
from cmtwin.topology.schema import ROLES, PlaneRoles, TopologySpec, load_topology

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True, slots=True)
class DieRef:
    """An accelerator die (the rank unit): its node id and position."""

    id: str
    node: int
    device: int
    die: int
    index: int


@dataclass(frozen=True, slots=True)
class CpuRef:
    """A host CPU endpoint."""

    id: str
    node: int
    cpu: int
    index: int


@dataclass(frozen=True, slots=True)
class Route:
    """A hop-count shortest path on one plane; bottleneck is the slowest link on it, latency their sum."""

    path: tuple[str, ...]
    hops: int
    bottleneck_gbps: float
    latency_us: float


@dataclass(frozen=True, slots=True)
class CommTime:
    """A link-limited communication time: transfer (bandwidth) part plus latency part, and what limits it."""

    time_us: float
    transfer_us: float
    latency_us: float
    bottleneck: str
    """The limiting cut: "injection n00.npu0.d0 ub", "uplink n03 ub", "latency", or "none"."""
    algorithm: str
    """"full_mesh", "ring", "reduce_scatter+all_gather (full_mesh)", "p2p"."""


Endpoint = str | DieRef | CpuRef


def _us(nbytes: float, gbps: float) -> float:
    """Microseconds to move nbytes at gbps gigabits per second."""
    return nbytes * 8.0 / (gbps * 1e3)


class Fabric:
    """A topology's frozen graph with fast routing and collective-time queries (see the module doc)."""

    def __init__(self, spec: TopologySpec, graph: nx.MultiDiGraph | None = None):
        """Build the graph of `spec` (or take `graph`, a view of it with failed switches removed), check its
        invariants (TopologyError) and index it."""
        self.spec = spec
        self._graph: nx.MultiDiGraph | None = build_graph(spec) if graph is None else graph
        self._edges: dict[str, Any] | None = None  # the edge form, derived from the graph when first needed
        if graph is None:
            check_invariants(self._graph, spec)
        g = self._graph
        self._index_nodes(g.nodes(data=True))
        inj: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        ej: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        up: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        down: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        wiring: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        kind = {n: a["kind"] for n, a in g.nodes(data=True)}
        for u, v, d in g.edges(data=True):
            plane, bw = d["plane"], d["bandwidth_gbps"]
            nu, nv = self._node_of[u], self._node_of[v]
            if kind[u] in ENDPOINT_KINDS:
                inj[plane][u] += bw
                peer = ("local", v.split(".", 1)[1]) if nu is not None and nv == nu else ("remote", v)
                wiring[plane][u].append((peer, bw, d["latency_us"]))
            if kind[v] in ENDPOINT_KINDS:
                ej[plane][v] += bw
            if nu is not None and nv != nu:
                up[plane][nu] += bw
            if nv is not None and nu != nv:
                down[plane][nv] += bw
        self.planes: tuple[str, ...] = tuple(sorted({p for _, _, p in g.edges(data="plane")}))
        self._inj = {p: dict(inj[p]) for p in self.planes}
        self._ej = {p: dict(ej[p]) for p in self.planes}
        self._up = {p: dict(up[p]) for p in self.planes}
        self._down = {p: dict(down[p]) for p in self.planes}
        self._class: dict[str, dict[str, int]] = {}
        for plane in self.planes:
            ids: dict[tuple, int] = {}
            self._class[plane] = {ep: ids.setdefault(tuple(sorted(w)), len(ids)) for ep, w in wiring[plane].items()}
        self._memos()

    @property
    def graph(self) -> nx.MultiDiGraph:
        """The frozen networkx graph (dies, CPUs, switches; links with plane, bandwidth_gbps, latency_us); a fabric
        read from the cache rebuilds it from its edge form on first use."""
        if self._graph is None:
            self._graph = _graph_of(self._edges)
        return self._graph

    def _edge_form(self) -> dict[str, Any]:
        """The graph as columns (see _edge_form_of); a built fabric derives it on first use."""
        if self._edges is None:
            self._edges = _edge_form_of(self._graph)
        return self._edges

    def _index_nodes(self, nodes: Iterable[tuple[str, dict]]) -> None:
        """The per-element indexes (node of each element, insertion order, dies and CPUs) from the graph's nodes
        and their attributes, in graph order."""
        nodes = list(nodes)
        self._node_of: dict[str, int | None] = {n: a.get("node") for n, a in nodes}
        self._order = {n: i for i, (n, _) in enumerate(nodes)}
        dies, cpus = [], []
        for n, a in nodes:
            if a["kind"] == "die":
                dies.append(DieRef(n, a["node"], a["device"], a["die"], a["index"]))
            elif a["kind"] == "cpu":
                cpus.append(CpuRef(n, a["node"], a["cpu"], a["index"]))
        self._dies = tuple(sorted(dies, key=lambda d: (d.node, d.device, d.die)))
        self._cpus = tuple(sorted(cpus, key=lambda c: (c.node, c.cpu)))

    def _memos(self) -> None:
        self._links: dict[str, tuple[_Lazy, _Lazy]] = {}  # per plane, for route searches (_plane_links)
        self._pairs: dict[tuple, tuple[float, bool]] = {}
        self._route = functools.lru_cache(maxsize=1 << 16)(self._compute_route)

    def __getstate__(self) -> dict:
        """Pickled without its memos (the route cache, plane links, pair latencies): they refill on use."""
        state = dict(self.__dict__)
        del state["_route"]
        state["_links"], state["_pairs"] = {}, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._route = functools.lru_cache(maxsize=1 << 16)(self._compute_route)

    # ------------------------------------------------------------------------------------ inventory

    @property
    def name(self) -> str:
        """The topology's name."""
        return self.spec.name

    @property
    def nodes(self) -> int:
        """Number of nodes."""
        return self.spec.nodes

    @property
    def devices_per_node(self) -> int:
        """Accelerator packages per node."""
        return self.spec.node.devices.count

    @property
    def dies_per_device(self) -> int:
        """Dies (ranks) per package."""
        return self.spec.node.devices.dies_per_device

    @property
    def roles(self) -> PlaneRoles:
        """The plane of each role, as the topology file declares it: `.scale_up` (between the dies of a node),
        `.inter_node` (between nodes), `.scale_out` (prefill -> decode KV transfer), `.frontend` (the CPUs'
        front-end network, or None)."""
        return self.spec.roles

    def roles_of(self, plane: str) -> tuple[str, ...]:
        """The roles `plane` plays, in the order scale_up, inter_node, scale_out, frontend (empty if none)."""
        self._plane(plane)
        return tuple(r for r in (*ROLES, "frontend") if getattr(self.spec.roles, r) == plane)

    @property
    def device_id_prefix(self) -> str:
        """The stem of device ids: a die's id is n<node>.<prefix><device>[.d<die>] (see die_id)."""
        return self.spec.node.devices.id_prefix

    def die_id(self, node: int, device: int, die: int = 0) -> str:
        """The id of die `die` of device `device` of node `node`: the topology's die-id scheme (n03.npu5.d1,
        n03.gpu5), the node zero-padded to the width of the largest node number (at least two digits)."""
        stem = f"{node_label(node, self.nodes)}.{self.device_id_prefix}{device}"
        return stem + (f".d{die}" if self.dies_per_device > 1 else "")

    def dies(self) -> tuple[DieRef, ...]:
        """All dies, sorted by (node, device, die)."""
        return self._dies

    def cpus(self) -> tuple[CpuRef, ...]:
        """All CPUs, sorted by (node, cpu)."""
        return self._cpus

    def domain_of(self, element: Endpoint) -> int | None:
        """The node holding an element (None for switches above the nodes)."""
        return self._node_of[self._known(element)]

    def injection_gbps(self, endpoint: Endpoint, plane: str) -> float:
        """Sum of the bandwidth of the endpoint's links on `plane` (0.0 when it has none)."""
        self._plane(plane)
        return self._inj[plane].get(self._known(endpoint), 0.0)

    def uplink_gbps(self, node: int, plane: str) -> float:
        """Sum of the bandwidth of the links leaving node `node` towards the tiers above it on `plane`."""
        self._plane(plane)
        if not (isinstance(node, int) and 0 <= node < self.nodes):
            raise TopologyError(
                f"Fabric {self.name}: node {node!r} does not exist.", key="node", fix=f"use 0..{self.nodes - 1}"
            )
        return self._up[plane].get(node, 0.0)

    # ------------------------------------------------------------------------------------ routes

    def route(self, src: Endpoint, dst: Endpoint, plane: str) -> Route:
        """A hop-count shortest path from src to dst over `plane`'s links only (TopologyError if none)."""
        a, b = self._known(src), self._known(dst)
        self._plane(plane)
        if a == b:
            raise TopologyError(f"Fabric {self.name}: route from {a} to itself.", key="dst", fix="name another element")
        return self._route(a, b, plane)

    def _compute_route(self, a: str, b: str, plane: str) -> Route:
        links = self._links.get(plane)
        if links is None:
            links = self._links[plane] = _plane_links(self._edge_form(), plane)
        succ, pred = links
        path = _shortest_path(succ, pred, self._order[a], self._order[b])
        if path is None:
            planes = ", ".join(p for p in self.planes if self._inj.get(p, {}).get(a) and self._inj.get(p, {}).get(b))
            raise TopologyError(
                f"Fabric {self.name}: no route from {a} to {b} on plane {plane}.",
                key="plane",
                fix=f"use a plane joining both ({planes or 'none does'})",
            )
        bottleneck, latency = math.inf, 0.0
        for u, v in zip(path, path[1:]):
            bw, lat = succ[u][v]
            bottleneck = min(bottleneck, bw)
            latency += lat
        names = self._edge_form()["nodes"]
        return Route(tuple(names[i] for i in path), len(path) - 1, bottleneck, latency)

    def _pair(self, a: str, b: str, plane: str) -> tuple[float, bool]:
        """(route latency, whether the route leaves a's node), cached per wiring-class pair."""
        same = self._node_of[a] == self._node_of[b]
        key = (plane, self._class[plane][a], self._class[plane][b], same)
        hit = self._pairs.get(key)
        if hit is None:
            r = self.route(a, b, plane)
            home = self._node_of[a]
            hit = self._pairs[key] = (r.latency_us, any(self._node_of[x] != home for x in r.path))
        return hit

    def _cut(self, a: str, b: str, plane: str) -> tuple[float, str]:
        """The smallest cut between endpoints a and b on `plane`: (gbps, its name)."""
        _, leaves = self._pair(a, b, plane)
        cuts = [(self._inj[plane][a], f"injection {a} {plane}"), (self._ej[plane][b], f"ejection {b} {plane}")]
        if leaves:
            na, nb = self._node_of[a], self._node_of[b]
            cuts.append((self._up[plane][na], f"uplink {node_label(na, self.nodes)} {plane}"))
            cuts.append((self._down[plane][nb], f"downlink {node_label(nb, self.nodes)} {plane}"))
        return min(cuts, key=lambda c: c[0])

    def path_bandwidth_gbps(self, src: Endpoint, dst: Endpoint, plane: str) -> float:
        """Aggregate (multi-path) bandwidth from src to dst on `plane`: min of src injection, dst ejection and
        the node uplinks the route crosses (CloudMatrix384 die to die on UB: 7 x 224 Gbps = 196 GB/s)."""
        a, b = self._endpoint(src, plane), self._endpoint(dst, plane)
        if a == b:
            raise TopologyError(f"Fabric {self.name}: {a} to itself.", key="dst", fix="name another endpoint")
        return self._cut(a, b, plane)[0]

    # ------------------------------------------------------------------------------------ collectives

    def p2p_time_us(self, src: Endpoint, dst: Endpoint, nbytes: float, plane: str) -> CommTime:
        """Time to move nbytes from src to dst over all paths of `plane` (path bandwidth) plus route latency."""
        a, b = self._endpoint(src, plane), self._endpoint(dst, plane)
        _check_bytes(nbytes)
        if a == b:
            return CommTime(0.0, 0.0, 0.0, "none", "p2p")
        gbps, name = self._cut(a, b, plane)
        latency = self._pair(a, b, plane)[0]
        transfer = _us(nbytes, gbps)
        return CommTime(transfer + latency, transfer, latency, name, "p2p")

    def all_to_all_time_us(self, endpoints: Iterable[Endpoint], bytes_per_pair: float, plane: str) -> CommTime:
        """Every endpoint sends bytes_per_pair to every other: the slowest of per-endpoint injection/ejection
        and per-node uplink/downlink times, plus the route latency of the farthest pair."""
        _check_bytes(bytes_per_pair)
        return self._full_mesh(self._endpoints(endpoints, plane), bytes_per_pair, plane, "full_mesh")

    def all_gather_time_us(self, endpoints: Iterable[Endpoint], bytes_per_rank: float, plane: str) -> CommTime:
        """Every endpoint ends with every other's bytes_per_rank: direct full mesh on a non-blocking plane,
        a ring (in graph order) otherwise; `algorithm` says which."""
        _check_bytes(bytes_per_rank)
        eps = self._endpoints(endpoints, plane)
        if plane in self.spec.non_blocking:
            return self._full_mesh(eps, bytes_per_rank, plane, "full_mesh")
        return self._ring(eps, bytes_per_rank, plane)

    def all_reduce_time_us(self, endpoints: Iterable[Endpoint], bytes_per_rank: float, plane: str) -> CommTime:
        """All-reduce of a bytes_per_rank buffer on every endpoint: reduce-scatter then all-gather of
        bytes_per_rank / n chunks (the same traffic twice); no reduction compute is counted."""
        _check_bytes(bytes_per_rank)
        eps = self._endpoints(endpoints, plane)
        half = self.all_gather_time_us(eps, bytes_per_rank / max(1, len(eps)), plane)
        return CommTime(
            2 * half.time_us,
            2 * half.transfer_us,
            2 * half.latency_us,
            half.bottleneck,
            f"reduce_scatter+all_gather ({half.algorithm})",
        )

    def _full_mesh(self, eps: list[str], nbytes: float, plane: str, algorithm: str) -> CommTime:
        n = len(eps)
        if n < 2:
            return CommTime(0.0, 0.0, 0.0, "none", algorithm)
        inj, ej, cls = self._inj[plane], self._ej[plane], self._class[plane]
        per_endpoint = (n - 1) * nbytes
        worst, name = 0.0, "none"
        groups: dict[tuple[int, int], list[str]] = defaultdict(list)
        for e in eps:
            limit, side = (inj[e], "injection") if inj[e] <= ej[e] else (ej[e], "ejection")
            t = _us(per_endpoint, limit)
            if t > worst:
                worst, name = t, f"{side} {e} {plane}"
            groups[(self._node_of[e], cls[e])].append(e)
        per_node: dict[int, Counter] = defaultdict(Counter)
        for (node, c), members in groups.items():
            per_node[node][c] = len(members)
        latency = 0.0
        for node, counts in per_node.items():
            m = sum(counts.values())
            crossing = m * (n - m)
            for ca, na in counts.items():
                for cb, nb in counts.items():
                    pairs = na * nb - (na if ca == cb else 0)
                    if pairs == 0:
                        continue
                    a = groups[(node, ca)][0]
                    b = groups[(node, cb)][1 if ca == cb else 0]
                    lat, leaves = self._pair(a, b, plane)
                    latency = max(latency, lat)
                    crossing += pairs if leaves else 0
            if crossing:
                label = node_label(node, self.nodes)
                for table, side in ((self._up, "uplink"), (self._down, "downlink")):
                    gbps = table[plane].get(node, 0.0)
                    t = _us(crossing * nbytes, gbps) if gbps > 0 else math.inf
                    if t > worst:
                        worst, name = t, f"{side} {label} {plane}"
        nodes_of_class: dict[int, list[int]] = defaultdict(list)
        for node, c in groups:
            nodes_of_class[c].append(node)
        for ca, nodes_a in nodes_of_class.items():
            for cb, nodes_b in nodes_of_class.items():
                pair = next(((x, y) for x in nodes_a[:2] for y in nodes_b[:2] if x != y), None)
                if pair is not None:
                    lat, _ = self._pair(groups[(pair[0], ca)][0], groups[(pair[1], cb)][0], plane)
                    latency = max(latency, lat)
        if worst == 0.0 and latency > 0.0:
            name = "latency"
        return CommTime(worst + latency, worst, latency, name, algorithm)

    def _ring(self, eps: list[str], nbytes: float, plane: str) -> CommTime:
        n = len(eps)
        if n < 2:
            return CommTime(0.0, 0.0, 0.0, "none", "ring")
        ring = sorted(eps, key=self._order.__getitem__)
        step, name, step_latency = 0.0, "none", 0.0
        flows_out: Counter = Counter()
        flows_in: Counter = Counter()
        for a, b in zip(ring, ring[1:] + ring[:1]):
            gbps, cut = self._cut(a, b, plane)
            lat, leaves = self._pair(a, b, plane)
            step_latency = max(step_latency, lat)
            if leaves:
                flows_out[self._node_of[a]] += 1
                flows_in[self._node_of[b]] += 1
            t = _us(nbytes, gbps)
            if t > step:
                step, name = t, cut
        for flows, table, side in ((flows_out, self._up, "uplink"), (flows_in, self._down, "downlink")):
            for node, count in flows.items():
                t = _us(count * nbytes, table[plane][node])
                if t > step:
                    step, name = t, f"{side} {node_label(node, self.nodes)} {plane}"
        if step == 0.0 and step_latency > 0.0:
            name = "latency"
        return CommTime((n - 1) * (step + step_latency), (n - 1) * step, (n - 1) * step_latency, name, "ring")

    # ------------------------------------------------------------------------------------ argument checks

    def _plane(self, plane: str) -> None:
        if plane not in self.planes:
            raise TopologyError(
                f"Fabric {self.name}: plane {plane!r} is not wired here.",
                key="plane",
                fix=f"use one of: {', '.join(self.planes)}",
            )

    def _known(self, element: Endpoint) -> str:
        nid = element.id if isinstance(element, (DieRef, CpuRef)) else element
        if not isinstance(nid, str) or nid not in self._node_of:
            close = difflib.get_close_matches(str(nid), list(self._node_of), n=3)
            raise TopologyError(
                f"Fabric {self.name}: no element {nid!r}.",
                key="endpoint",
                fix=f"use an id like {', '.join(close) if close else self._dies[0].id}",
            )
        return nid

    def _endpoint(self, element: Endpoint, plane: str) -> str:
        nid = self._known(element)
        self._plane(plane)
        if nid not in self._inj[plane]:
            kinds = sorted({self.graph.nodes[e]["kind"] for e in self._inj[plane]})
            raise TopologyError(
                f"Fabric {self.name}: {nid} has no link on plane {plane} (its endpoints are: {', '.join(kinds)}).",
                key="plane",
                fix="pick a plane the endpoint is wired to",
            )
        return nid

    def _endpoints(self, endpoints: Iterable[Endpoint], plane: str) -> list[str]:
        eps = [self._endpoint(e, plane) for e in endpoints]
        if len(set(eps)) != len(eps):
            dup = next(e for e, c in Counter(eps).items() if c > 1)
            raise TopologyError(
                f"Fabric {self.name}: endpoint {dup} is listed twice.", key="endpoints", fix="list each endpoint once"
            )
        return eps


def _check_bytes(nbytes: float) -> None:
    if not (isinstance(nbytes, (int, float)) and math.isfinite(nbytes) and nbytes >= 0):
        raise ValueError(f"byte count must be a finite number >= 0, got {nbytes!r}")


class _FrozenMap(Mapping):
    """A hashable read-only mapping (a dict inside a frozen override value, e.g. an extra link)."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))

    def __repr__(self) -> str:
        return repr(self._data)


def freeze_overrides(overrides: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A hashable, canonical form of an overrides dict for get_fabric: nested mappings become dotted keys,
    lists become tuples, keys are sorted."""
    flat: dict[str, Any] = {}

    def freeze(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(freeze(v) for v in value)
        if isinstance(value, Mapping):
            return _FrozenMap({str(k): freeze(v) for k, v in value.items()})
        return value

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and (value or not prefix):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = freeze(value)

    walk("", dict(overrides or {}))
    return tuple(sorted(flat.items()))


def _source_identity(name: str | Path) -> tuple[str, int | None]:
    """What a topology reference points at now: a path resolves against the working directory and carries the
    file's modification time, so a changed folder or an edited file is not served from the cache."""
    text = str(name)
    if "/" in text or text.endswith((".yaml", ".yml")):
        try:
            path = Path(text).resolve()
            return str(path), path.stat().st_mtime_ns
        except OSError:
            return text, None
    return text, None


@functools.cache
def _cached_fabric(identity: tuple[str, int | None], name: str, overrides: tuple[tuple[str, Any], ...]) -> Fabric:
    spec = load_topology(name, dict(overrides))
    path = _disk_path(spec)
    if path is not None:
        fabric = _read_cache(path, spec)
        if fabric is not None:
            return fabric
    fabric = Fabric(spec)
    if path is not None:
        _write_cache(path, fabric)
    return fabric


CACHE_FORMAT = "cmtwin-fabric"
CACHE_VERSION = 2
"""Bumped whenever the layout of a cache file changes (an older file is then rebuilt, never misread)."""


class _BadCache(Exception):
    """A cache file that does not hold exactly what _write_cache writes (it is rebuilt)."""


def _read_cache(path: Path, spec: TopologySpec) -> Fabric | None:
    """The Fabric stored at `path`, or None (missing, torn, stale, malformed, or not to be trusted: see
    cmtwin/cachefile.py). The file is JSON: the fabric's edge form (the graph's nodes and edges as columns, in
    graph order) and its aggregates."""
    data = read_json(path, "topology")
    if data is None:
        return None
    try:
        return _from_cache(data, spec, path.stem)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, _BadCache):
        return None  # stale or malformed: rebuilt and rewritten


def _edge_form_of(g: nx.MultiDiGraph) -> dict[str, Any]:
    """A graph as plain columns, enough to search its routes and to rebuild it exactly: the graph's attributes,
    its nodes with theirs, and its edges column by column in the graph's own order (each node's successors, then
    keys), with each node's predecessor order too, so that searches break ties between equally short paths as
    they would on the graph, and the rebuilt graph iterates exactly like the built one."""
    nodes = list(g.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    planes = sorted({p for _, _, p in g.edges(data="plane")})
    plane_pos = {p: i for i, p in enumerate(planes)}
    cols: dict[str, list] = {"u": [], "v": [], "k": [], "plane": [], "bw": [], "lat": []}
    for u, v, k, d in g.edges(keys=True, data=True):
        cols["u"].append(pos[u])
        cols["v"].append(pos[v])
        cols["k"].append(k)
        cols["plane"].append(plane_pos[d["plane"]])
        cols["bw"].append(float(d["bandwidth_gbps"]))
        cols["lat"].append(float(d["latency_us"]))
    return {
        "graph": dict(g.graph),
        "nodes": nodes,
        "attrs": [dict(a) for _, a in g.nodes(data=True)],
        "planes": planes,
        "edges": cols,
        "pred": [pos[u] for v in nodes for u in g._pred[v]],
        "pred_count": [len(g._pred[v]) for v in nodes],
    }


def _graph_of(form: dict[str, Any]) -> nx.MultiDiGraph:
    """The frozen graph an edge form describes (its adjacency in the same order as the graph it came from)."""
    import networkx as nx

    names, planes, cols = form["nodes"], form["planes"], form["edges"]
    g = nx.MultiDiGraph(**form["graph"])
    g.add_nodes_from(zip(names, form["attrs"]))
    gsucc, gpred = g._succ, g._pred
    for u, v, k, p, bw, lat in zip(cols["u"], cols["v"], cols["k"], cols["plane"], cols["bw"], cols["lat"]):
        gsucc[names[u]].setdefault(names[v], {})[k] = {"plane": planes[p], "bandwidth_gbps": bw, "latency_us": lat}
    at = 0
    for v, c in zip(names, form["pred_count"]):
        into = gpred[v]
        for u in form["pred"][at:at + c]:
            into[names[u]] = gsucc[names[u]][v]
        at += c
    return nx.freeze(g)


def _plane_links(form: dict[str, Any], plane: str) -> tuple[_Lazy, _Lazy]:
    """The links of one plane of an edge form, by node index and in graph order: (successors, predecessors), the
    successors of a node with the (bandwidth, latency) of its fastest link to each (the first of equals). A node's
    are worked out when a route search first reaches it (a search visits a few nodes of a plane's thousands)."""
    if plane not in form["planes"]:
        return _Lazy(lambda v: {}), _Lazy(lambda v: [])
    want, cols, count = form["planes"].index(plane), form["edges"], len(form["nodes"])
    us, vs, bws, lats = cols["u"], cols["v"], cols["bw"], cols["lat"]
    on = [e for e, p in enumerate(cols["plane"]) if p == want]  # graph order: grouped by u, ascending
    on_u = [us[e] for e in on]
    linked = {us[e] * count + vs[e] for e in on}
    pred, ends = form["pred"], [0, *accumulate(form["pred_count"])]

    def succ(u: int) -> dict[int, tuple[float, float]]:
        out: dict[int, tuple[float, float]] = {}
        for e in on[bisect_left(on_u, u):bisect_left(on_u, u + 1)]:
            v, w = vs[e], bws[e]
            best = out.get(v)
            if best is None or w > best[0]:
                out[v] = (w, lats[e])
        return out

    def into(v: int) -> list[int]:
        return [u for u in pred[ends[v]:ends[v + 1]] if u * count + v in linked]

    return _Lazy(succ), _Lazy(into)


class _Lazy:
    """A node's links, made on first use by `make` (node index -> its successors or predecessors) and kept."""

    __slots__ = ("make", "known")

    def __init__(self, make: Callable[[int], Any]):
        self.make, self.known = make, {}

    def __getitem__(self, v: int) -> Any:
        links = self.known.get(v)
        if links is None:
            links = self.known[v] = self.make(v)
        return links


def _shortest_path(succ: _Lazy, pred: _Lazy, a: int, b: int) -> list[int] | None:
    """A hop-count shortest path from a to b (None if there is none): networkx's bidirectional breadth-first
    search (nx.shortest_path without weights), step for step, so that a tie between equally short paths is
    broken as networkx breaks it on the graph (tests/test_topology_cache.py compares the two)."""
    ahead, behind = {a: None}, {b: None}
    forward, reverse = [a], [b]
    meet = None
    while forward and reverse and meet is None:
        if len(forward) <= len(reverse):
            level, forward = forward, []
            meet = _grow(level, succ, ahead, behind, forward)
        else:
            level, reverse = reverse, []
            meet = _grow(level, pred, behind, ahead, reverse)
    if meet is None:
        return None
    path, w = [], meet
    while w is not None:
        path.append(w)
        w = ahead[w]
    path.reverse()
    w = behind[path[-1]]
    while w is not None:
        path.append(w)
        w = behind[w]
    return path


def _grow(level: list[int], links: _Lazy, seen: dict, other: dict, fringe: list[int]) -> int | None:
    """One level of one side of _shortest_path: the element where it meets the other side, or None."""
    for v in level:
        for w in links[v]:
            if w not in seen:
                fringe.append(w)
                seen[w] = v
            if w in other:
                return w
    return None


_PACKED = {"u": "<i4", "v": "<i4", "k": "<i4", "plane": "<i4", "bw": "<f8", "lat": "<f8"}
"""The edge columns as the cache stores them: little-endian binary (int32, float64) in base64, not as JSON numbers
(reading 160,000 numbers out of JSON was half of reading CloudMatrix384's entry)."""

_TYPECODE = {"<i4": next(c for c in "il" if array(c).itemsize == 4), "<f8": "d"}
"""The array module's type codes of those layouts (read with the standard library: no numpy at start-up)."""


def _pack(xs: list, dtype: str) -> str:
    out = array(_TYPECODE[dtype], xs)  # OverflowError past int32, TypeError for a float in an int column
    if sys.byteorder == "big":
        out.byteswap()
    return base64.b64encode(out.tobytes()).decode("ascii")


def _unpack(text: Any, dtype: str) -> array:
    _need(isinstance(text, str))
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error is one
        raise _BadCache from None
    out = array(_TYPECODE[dtype])
    _need(len(raw) % out.itemsize == 0)
    out.frombytes(raw)
    if sys.byteorder == "big":
        out.byteswap()
    return out


def _to_cache(fabric: Fabric, key: str) -> dict:
    """A JSON-able form of a built Fabric: its edge form (the edge columns and predecessor lists packed, _PACKED)
    and its aggregates, enough to answer every query without building or checking the graph (and to rebuild the
    graph exactly when one is asked for)."""
    form = fabric._edge_form()
    return {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
        **form,
        "edges": {c: _pack(form["edges"][c], dtype) for c, dtype in _PACKED.items()},
        "pred": _pack(form["pred"], "<i4"), "pred_count": _pack(form["pred_count"], "<i4"),
        "inj": fabric._inj, "ej": fabric._ej,
        "up": {p: [[n, bw] for n, bw in m.items()] for p, m in fabric._up.items()},
        "down": {p: [[n, bw] for n, bw in m.items()] for p, m in fabric._down.items()},
        "class": fabric._class,
    }


def _need(ok: bool) -> None:
    if not ok:
        raise _BadCache


def _types(xs: list) -> set:
    return set(map(type, xs))


def _ints(text: Any, below: int) -> list[int]:
    """A packed int32 column whose values all lie in [0, below)."""
    xs = _unpack(text, "<i4").tolist()
    _need(not xs or 0 <= min(xs) and max(xs) < below)
    return xs


def _from_cache(data: Any, spec: TopologySpec, key: str) -> Fabric:
    """The Fabric that _to_cache described, checked field by field (_BadCache on anything unexpected): its edge
    form must describe a graph (unique node names, unique edge keys, every predecessor listed once, exactly the
    edges into each node), so that the graph rebuilt from it on demand is the one that was built."""
    _need(isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("version") == CACHE_VERSION
          and data.get("key") == key)
    names, attrs, planes, cols = data["nodes"], data["attrs"], data["planes"], data["edges"]
    _need(isinstance(names, list) and _types(names) <= {str} and isinstance(attrs, list)
          and len(attrs) == len(names) and _types(attrs) <= {dict}
          and isinstance(planes, list) and _types(planes) <= {str} and len(set(planes)) == len(planes)
          and isinstance(cols, dict) and set(cols) == set(_PACKED) and isinstance(data["graph"], dict))
    count = len(names)
    _need(len(set(names)) == count)
    us, vs, ks = _ints(cols["u"], count), _ints(cols["v"], count), _ints(cols["k"], 1 << 30)
    ps = _ints(cols["plane"], len(planes))
    bws, lats = _unpack(cols["bw"], "<f8").tolist(), _unpack(cols["lat"], "<f8").tolist()
    _need(len(us) == len(vs) == len(ks) == len(ps) == len(bws) == len(lats)
          and all(map(math.isfinite, bws)) and all(map(math.isfinite, lats))
          and us == sorted(us))  # graph order: each node's links together, nodes in order
    pred, pred_count = _ints(data["pred"], count), _ints(data["pred_count"], count + 1)
    _need(len(pred_count) == count and sum(pred_count) == len(pred))
    # the edges (u, v, k) are distinct, and the predecessor lists hold exactly the linked pairs (u, v): each as one
    # integer (no tuple per edge: ints are not tracked by the garbage collector)
    multi = max(ks, default=0) + 1
    _need(len({(u * count + v) * multi + k for u, v, k in zip(us, vs, ks)}) == len(us))
    linked = {u * count + v for u, v in zip(us, vs)}
    into = [v for v, c in enumerate(pred_count) for _ in range(c)]
    _need(len(linked) == len(pred) and {u * count + v for u, v in zip(pred, into)} == linked)
    cols = {"u": us, "v": vs, "k": ks, "plane": ps, "bw": bws, "lat": lats}
    fabric = Fabric.__new__(Fabric)
    fabric.spec = spec
    fabric._graph = None
    fabric._edges = {"graph": data["graph"], "nodes": names, "attrs": attrs, "planes": planes, "edges": cols,
                     "pred": pred, "pred_count": pred_count}
    fabric._index_nodes(zip(names, attrs))
    fabric.planes = tuple(planes)

    def table(m: Any, cast) -> dict:
        _need(isinstance(m, dict) and set(m) == set(planes))
        out = {}
        for p, items in m.items():
            pairs = items.items() if isinstance(items, dict) else items
            out[p] = {cast(a): float(b) for a, b in pairs}
        return out

    fabric._inj, fabric._ej = table(data["inj"], str), table(data["ej"], str)
    fabric._up, fabric._down = table(data["up"], int), table(data["down"], int)
    cls = data["class"]
    _need(isinstance(cls, dict) and set(cls) == set(planes)
          and all(isinstance(m, dict) and all(type(c) is int for c in m.values()) for m in cls.values()))
    fabric._class = {p: dict(m) for p, m in cls.items()}
    fabric._memos()
    return fabric


def _write_cache(path: Path, fabric: Fabric) -> None:
    """Store a built Fabric (cmtwin/cachefile.py: atomic, private to the user)."""
    try:
        text = json.dumps(_to_cache(fabric, path.stem), separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, OverflowError):
        return
    write_text(path, text)


def _disk_path(spec: TopologySpec) -> Path | None:
    """The on-disk cache entry of a validated topology's Fabric. Building the CloudMatrix384 graph (26,592
    directed links) and checking its invariants takes ~0.25-0.5 s, a sixth of `cmtwin plan`; reading the
    entry back takes a fraction of that. The key covers the validated spec, the code that builds the graph,
    Python's version and the networkx installed (found, not imported), so an edited topology or a changed
    cmtwin never reads a stale entry."""
    from cmtwin.topology import graph, schema

    return entry_path("fabric", spec.model_dump_json(), packages=("networkx",),
                      files=[Path(m.__file__) for m in (graph, schema, sys.modules[__name__])])


def get_fabric(name: str | Path, overrides: tuple[tuple[str, Any], ...] = ()) -> Fabric:
    """The Fabric of a topology (name or path) with overrides from freeze_overrides(), built once per process
    for each file version."""
    return _cached_fabric(_source_identity(name), str(name), overrides)


def fabric_for(spec) -> Fabric:
    """The built, frozen fabric of a spec's topology (its file and parameter overrides), from the cache; with
    failed switches, sub-planes or links (failures.switches, failures.planes, failures.links), the view of it
    without them."""
    fabric = get_fabric(spec.topology.file, freeze_overrides(spec.topology.params))
    failures = getattr(spec, "failures", None)
    if failures is None or not failures.in_fabric:
        return fabric
    return _without(fabric, tuple(sorted(failures.switches)), tuple(sorted(failures.planes)),
                    tuple(sorted(failures.links)))


@functools.lru_cache(maxsize=16)
def _without(fabric: Fabric, switches: tuple[str, ...], planes: tuple[str, ...], links: tuple[str, ...] = ()) -> Fabric:
    """The fabric without these switches, the switches of these sub-planes (a switch id's prefix, e.g. l2.p3
    for CloudMatrix384's L2 sub-plane 3) and these links (source-target, both directions); refused when a plane
    no longer joins every die (naming the cut)."""
    import networkx as nx

    g = fabric.graph
    switch_ids = [n for n, a in g.nodes(data=True) if a["kind"] == "switch"]
    gone = set()
    for key, names, match in (("failures.switches", switches, lambda n, x: n == x),
                              ("failures.planes", planes, lambda n, x: n.startswith(x + "."))):
        for x in names:
            hit = [n for n in switch_ids if match(n, x)]
            if not hit:
                examples = ", ".join(sorted({n.rsplit(".", 1)[0] for n in switch_ids if not n.startswith("n")})[:4]
                                     if key == "failures.planes" else switch_ids[-3:])
                raise TopologyError(f"{key}: {x!r} names no switch of {fabric.name}.", key=key,
                                    fix=f"use switch ids as `cmtwin export topology` lists them, e.g. {examples}")
            gone.update(hit)
    view = g.copy()
    view.remove_nodes_from(gone)
    for link in links:
        ends = [(link[:i], link[i + 1:]) for i, c in enumerate(link) if c == "-"]  # ids may hold a '-' themselves
        ends = [(a, b) for a, b in ends if a in g and b in g]
        pairs = [(u, v, k) for a, b in ends for u, v in ((a, b), (b, a)) if view.has_edge(u, v) for k in view[u][v]]
        if not pairs:
            example = next(f"{u}-{v}" for u, v in g.edges() if g.nodes[u]["kind"] != "switch")
            raise TopologyError(f"failures.links: {link!r} names no link of {fabric.name}"
                                + (" (a switch at its end is already down)." if ends and any(g.has_edge(*e) for e in ends)
                                   else "."), key="failures.links",
                                fix=f"give a link as source-target with the ids `cmtwin export topology` lists, "
                                    f"e.g. {example}")
        view.remove_edges_from(pairs)
    dies = [d.id for d in fabric.dies()]
    for plane in sorted({fabric.roles.scale_up, fabric.roles.inter_node}):
        sub = nx.Graph((u, v) for u, v, p in view.edges(data="plane") if p == plane)
        reach = nx.node_connected_component(sub, dies[0]) if dies[0] in sub else {dies[0]}
        cut = [d for d in dies if d not in reach]
        if cut:
            raise TopologyError(f"the failures partition plane {plane} of {fabric.name}: {len(cut)} dies (e.g. {cut[0]}) "
                                f"no longer reach {dies[0]}.", key="failures.switches" if not links else "failures.links",
                                fix="fail fewer switches; a partitioned supernode cannot run one plan")
    return Fabric(fabric.spec, view)
