"""Build the fabric graph of a TopologySpec (a frozen networkx.MultiDiGraph) and check its invariants.

Node ids (stable, readable; the node number is zero-padded to at least two digits):
  n03.npu5.d1   die 1 of device 5 of node 3 (devices of several dies)
  n03.gpu5      device 5 of node 3 when a device is one die
  n03.cpu2      CPU 2 of node 3
  n03.l1s4      switch 4 of node switch group "l1s" of node 3
  l2.p3.s15     switch 15 of sub-plane 3 of fabric group "l2" (groups > 1)
  leaf3         switch 3 of fabric group "leaf" (one group, several switches)
  rdma          the only switch of fabric group "rdma"
Every link is two directed edges with attrs plane, bandwidth_gbps (one way) and latency_us.

networkx is imported by the functions that build or check a graph: a fabric read from the cache answers without
it (cmtwin/topology/fabric.py), and `cmtwin plan` does not pay for its import.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from cmtwin.errors import TopologyError
from cmtwin.topology.schema import D2D_PLANE, TopologySpec

if TYPE_CHECKING:
    import networkx as nx

ENDPOINT_KINDS = ("die", "cpu")
"""Node kinds that send and receive traffic; switches only forward."""

_REL_TOL = 1e-9


def node_label(node: int, nodes: int) -> str:
    """The id prefix of a node: n03 (zero-padded to the width of the largest node number, at least 2)."""
    return f"n{node:0{max(2, len(str(nodes - 1)))}d}"


def build_graph(spec: TopologySpec) -> nx.MultiDiGraph:
    """Expand the tiered spec into a frozen MultiDiGraph of dies, CPUs and switches (see the module doc)."""
    import networkx as nx

    g = nx.MultiDiGraph(
        name=spec.name,
        nodes=spec.nodes,
        devices_per_node=spec.node.devices.count,
        dies_per_device=spec.node.devices.dies_per_device,
    )
    dev = spec.node.devices
    cpu_count = spec.node.cpus.count if spec.node.cpus else 0
    # local[node][group] -> list indexed by local index, each entry the element ids at that index
    local: list[dict[str, list[list[str]]]] = []
    nodes_out: list[tuple[str, dict]] = []
    for n in range(spec.nodes):
        lab = node_label(n, spec.nodes)
        groups: dict[str, list[list[str]]] = {"die": [], "cpu": []}
        for d in range(dev.count):
            ids = []
            for k in range(dev.dies_per_device):
                nid = f"{lab}.{dev.id_prefix}{d}" + (f".d{k}" if dev.dies_per_device > 1 else "")
                index = (n * dev.count + d) * dev.dies_per_device + k
                attrs = {"kind": "die", "node": n, "device": d, "die": k, "index": index, "model": dev.name}
                nodes_out.append((nid, attrs))
                ids.append(nid)
            groups["die"].append(ids)
        for c in range(cpu_count):
            nid = f"{lab}.cpu{c}"
            attrs = {"kind": "cpu", "node": n, "cpu": c, "index": n * cpu_count + c, "model": spec.node.cpus.name}
            nodes_out.append((nid, attrs))
            groups["cpu"].append([nid])
        for sw in spec.node.switches:
            groups[sw.name] = []
            for i in range(sw.count):
                nid = f"{lab}.{sw.name}{i}"
                nodes_out.append((nid, _switch_attrs(sw, i, node=n)))
                groups[sw.name].append([nid])
        local.append(groups)
    fabric: dict[str, list[list[str]]] = {}  # group -> sub-plane -> switch ids
    for fg in spec.fabric:
        fabric[fg.name] = []
        for p in range(fg.groups):
            ids = []
            for i in range(fg.count):
                if fg.groups > 1:
                    nid = f"{fg.name}.p{p}.s{i}"
                elif fg.count > 1:
                    nid = f"{fg.name}{i}"
                else:
                    nid = fg.name
                nodes_out.append((nid, _switch_attrs(fg, i, subplane=p)))
                ids.append(nid)
            fabric[fg.name].append(ids)
    g.add_nodes_from(nodes_out)
    if g.number_of_nodes() != len(nodes_out):
        seen: set[str] = set()
        dup = next(nid for nid, _ in nodes_out if nid in seen or seen.add(nid))
        raise TopologyError(
            f"Topology {spec.origin}: two elements get the id `{dup}`.",
            key="node.switches",
            fix="rename a switch group so its ids differ from the devices', CPUs' and other groups'",
        )

    edges: list[tuple[str, str, dict]] = []

    def link(a: str, b: str, plane: str, bw: float, lat: float, times: int = 1) -> None:
        attrs = {"plane": plane, "bandwidth_gbps": float(bw), "latency_us": float(lat)}
        for _ in range(times):
            edges.append((a, b, attrs))
            edges.append((b, a, attrs))

    if dev.dies_per_device > 1:
        d2d = dev.die_to_die
        for groups in local:
            for ids in groups["die"]:
                for i, a in enumerate(ids):
                    for b in ids[i + 1 :]:
                        link(a, b, D2D_PLANE, d2d.bandwidth_gbps, d2d.latency_us)

    for conn in spec.connections:
        if conn.from_ in fabric:
            sources = [[sid] for sub in fabric[conn.from_] for sid in sub]
            per_source = [(sources, None)]
        else:
            per_source = [(groups[conn.from_], groups) for groups in local]
        for elements, groups in per_source:
            for idx, ids in enumerate(elements):
                if conn.from_indices is not None and idx not in conn.from_indices:
                    continue
                targets = _targets(conn.to, conn.pattern, idx, groups, fabric)
                for a in ids:
                    for b in targets:
                        link(a, b, conn.plane, conn.bandwidth_gbps, conn.latency_us, conn.links_per_pair)

    for i, extra in enumerate(spec.links):
        for end, nid in (("a", extra.a), ("b", extra.b)):
            if nid not in g:
                raise TopologyError(
                    f"Topology {spec.origin}: key `links[{i}].{end}` = {nid!r} names no declared element "
                    "(a dangling link).",
                    key=f"links[{i}].{end}",
                    fix=f"use an existing id such as {_example_ids(g)}",
                )
        if extra.a == extra.b:
            raise TopologyError(
                f"Topology {spec.origin}: key `links[{i}]` joins {extra.a!r} to itself (a self-loop).",
                key=f"links[{i}].b",
                fix="link two different elements",
            )
        ta, tb = g.nodes[extra.a].get("tier"), g.nodes[extra.b].get("tier")
        if ta is not None and ta == tb:
            raise TopologyError(
                f"Topology {spec.origin}: key `links[{i}]` joins {extra.a!r} and {extra.b!r}, two switches of tier "
                f"{ta!r}: a loop the tiered structure forbids.",
                key=f"links[{i}]",
                fix="link a switch only to an endpoint or to a switch of another tier",
            )
        link(extra.a, extra.b, extra.plane, extra.bandwidth_gbps, extra.latency_us)

    g.add_edges_from(edges)
    return nx.freeze(g)


def _switch_attrs(group, i: int, *, node: int | None = None, subplane: int | None = None) -> dict:
    attrs: dict = {"kind": "switch", "tier": group.tier, "group": group.name, "switch": i}
    if node is not None:
        attrs["node"] = node
    if subplane is not None:
        attrs["subplane"] = subplane
    if group.ports is not None:
        attrs["ports"] = group.ports
    if group.port_bandwidth_gbps is not None:
        attrs["port_bandwidth_gbps"] = group.port_bandwidth_gbps
    return attrs


def _targets(to: str, pattern: str, idx: int, groups: dict | None, fabric: dict) -> list[str]:
    if groups is not None and to in groups:
        column = groups[to]
        if pattern == "same_index":
            return column[idx]
        return [ids[0] for ids in column]
    subplanes = fabric[to]
    if pattern == "same_index":
        return [subplanes[0][idx]]
    if pattern == "same_group":
        return list(subplanes[idx])
    return [sid for sub in subplanes for sid in sub]


def _example_ids(g: nx.MultiDiGraph) -> str:
    return ", ".join(f"`{n}`" for n in list(g.nodes)[:3])


def _same_scope_pair(roots: dict[tuple, str]) -> tuple[str, str]:
    first: dict = {}
    for (scope, _), ep in roots.items():
        if scope in first:
            return first[scope], ep
        first[scope] = ep
    raise AssertionError("no two components share a scope")


def check_invariants(graph: nx.MultiDiGraph, spec: TopologySpec) -> None:
    """Raise TopologyError unless the graph is a sound fabric for `spec`.

    Checks: every element is declared (no dangling link), no self-loops, every link has both directions and
    positive bandwidth, each plane connects all its endpoints (per node on `node_local` planes), no switch
    links to a switch of its own tier, switch port counts and port bandwidths are respected, and on every
    `non_blocking` plane that spans nodes each node's uplink carries its dies' full injection bandwidth.
    """
    name = spec.origin
    for nid, attrs in graph.nodes(data=True):
        if attrs.get("kind") not in (*ENDPOINT_KINDS, "switch"):
            raise TopologyError(
                f"Topology {name}: element `{nid}` is named by a link but never declared (a dangling link).",
                key="links",
                fix="declare the element, or link an existing one",
            )
    import networkx as nx

    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(
            f"Topology {name}: `{loops[0][0]}` links to itself (a self-loop).", key="links", fix="remove the link"
        )
    nodes = graph.nodes
    directed: set[tuple[str, str, str]] = set()
    injection: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    uplink: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    ports_used: dict[str, int] = defaultdict(int)
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent.get(x, x)
        return root

    for u, v, d in graph.edges(data=True):
        plane, bw = d.get("plane"), d.get("bandwidth_gbps")
        if plane is None or not isinstance(bw, (int, float)) or not bw > 0 or not d.get("latency_us", -1) >= 0:
            raise TopologyError(
                f"Topology {name}: link {u} -> {v} lacks a plane, a positive bandwidth_gbps or a latency_us >= 0 "
                f"({d}).",
                key="links",
                fix="give every link plane, bandwidth_gbps > 0 and latency_us >= 0",
            )
        directed.add((u, v, plane))
        ku, kv = nodes[u], nodes[v]
        if ku["kind"] == "switch" and kv["kind"] == "switch" and ku["tier"] == kv["tier"]:
            raise TopologyError(
                f"Topology {name}: switches {u} and {v} share tier {ku['tier']!r} yet are linked "
                "(a loop the tiered structure forbids).",
                key="links",
                fix="link a switch only to the tier above or below it",
            )
        if ku["kind"] == "switch":
            ports_used[u] += 1
            pbw = ku.get("port_bandwidth_gbps")
            if pbw is not None and bw > pbw * (1 + _REL_TOL):
                raise TopologyError(
                    f"Topology {name}: link {u} -> {v} carries {bw:g} Gbps, more than the {pbw:g} Gbps a port of "
                    f"`{ku['group']}` carries.",
                    key=f"fabric.{ku['group']}.port_bandwidth_gbps",
                    fix="lower the link bandwidth or raise the port bandwidth (with its source)",
                )
        if ku["kind"] in ENDPOINT_KINDS:
            injection[plane][u] += bw
        nu = ku.get("node")
        if nu is not None and kv.get("node") != nu:
            uplink[plane][nu] += bw
        ra, rb = find((plane, u)), find((plane, v))
        if ra != rb:
            parent[ra] = rb
    for u, v, plane in directed:
        if (v, u, plane) not in directed:
            raise TopologyError(
                f"Topology {name}: link {u} -> {v} on plane {plane} has no reverse direction.",
                key="links",
                fix="links are bidirectional: add both directions",
            )
    for sid, used in ports_used.items():
        ports = nodes[sid].get("ports")
        if ports is not None and used > ports:
            raise TopologyError(
                f"Topology {name}: switch {sid} uses {used} ports, more than its {ports}.",
                key=f"{nodes[sid]['group']}.ports",
                fix="reduce the counts that link to this switch (nodes, links_per_pair), or add switches",
            )
    for plane, members in injection.items():
        if plane == D2D_PLANE:  # joins the dies of one package only, by construction
            continue
        local = plane in spec.node_local
        roots: dict[tuple, str] = {}
        for ep in members:
            scope = nodes[ep]["node"] if local else None
            roots.setdefault((scope, find((plane, ep))), ep)
        scopes = [s for s, _ in roots]
        if len(set(scopes)) < len(scopes):
            a, b = list(roots.values())[:2] if not local else _same_scope_pair(roots)
            where = f"within node {nodes[a]['node']}" if local else "across the fabric"
            raise TopologyError(
                f"Topology {name}: plane {plane} is split {where}; {a} cannot reach {b} on it.",
                key="connections",
                fix=f"wire every endpoint of plane {plane} to a common switch tier",
            )
    for plane in (p for p in spec.non_blocking if p not in spec.node_local):
        need: dict[int, float] = defaultdict(float)
        for ep, bw in injection[plane].items():
            if nodes[ep]["kind"] == "die":
                need[nodes[ep]["node"]] += bw
        for n, dies_bw in sorted(need.items()):
            have = uplink[plane].get(n, 0.0)
            if have < dies_bw * (1 - _REL_TOL):
                raise TopologyError(
                    f"Topology {name}: plane {plane} is declared non-blocking, but node {n}'s uplink is "
                    f"{have:g} Gbps ({have / 8:g} GB/s) < its dies' injection {dies_bw:g} Gbps ({dies_bw / 8:g} GB/s).",
                    key="non_blocking",
                    fix=f"raise the uplink bandwidth or switch count, or drop {plane} from non_blocking",
                )
