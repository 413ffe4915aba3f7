"""GraphML and node-link JSON export of a topology graph (for `cmtwin export topology`)."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Literal

from cmtwin.topology.fabric import Fabric

if TYPE_CHECKING:
    import networkx as nx


def export_topology(fabric_or_graph: Fabric | nx.MultiDiGraph, fmt: Literal["graphml", "json"] = "graphml") -> str:
    """The fabric graph as a GraphML document or as networkx node-link JSON (nodes, edges with their attrs)."""
    import networkx as nx

    graph = fabric_or_graph.graph if isinstance(fabric_or_graph, Fabric) else fabric_or_graph
    if fmt == "graphml":
        buf = io.BytesIO()
        nx.write_graphml(graph, buf, encoding="utf-8")
        return buf.getvalue().decode("utf-8")
    if fmt == "json":
        return json.dumps(nx.node_link_data(graph, edges="edges"), indent=1, sort_keys=True) + "\n"
    raise ValueError(f"unknown export format {fmt!r}: use 'graphml' or 'json'")
