"""The topology layer: declarative fabric files -> validated spec -> frozen graph -> fast Fabric queries."""

from cmtwin.topology.export import export_topology
from cmtwin.topology.fabric import CommTime, CpuRef, DieRef, Fabric, Route, freeze_overrides, get_fabric
from cmtwin.topology.graph import build_graph, check_invariants
from cmtwin.topology.schema import PlaneRoles, TopologySpec, available_topologies, load_topology, parse_topology

__all__ = [
    "CommTime",
    "CpuRef",
    "DieRef",
    "Fabric",
    "PlaneRoles",
    "Route",
    "TopologySpec",
    "available_topologies",
    "build_graph",
    "check_invariants",
    "export_topology",
    "freeze_overrides",
    "get_fabric",
    "load_topology",
    "parse_topology",
]
