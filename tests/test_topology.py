"""Topology layer: shipped files, graph counts and invariants, routes, fabric figures, bad files, fuzzing."""

from __future__ import annotations

import copy

import networkx as nx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmtwin.errors import TopologyError
from cmtwin.paths import topologies_dir
from cmtwin.topology import (
    Fabric,
    available_topologies,
    build_graph,
    check_invariants,
    export_topology,
    freeze_overrides,
    get_fabric,
    load_topology,
    parse_topology,
)

SHIPPED = ("cloudmatrix384", "gpu_cluster", "single_host")


def raw(name: str) -> dict:
    return yaml.safe_load((topologies_dir() / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def cm() -> Fabric:
    return get_fabric("cloudmatrix384")


@pytest.fixture(scope="module")
def gpu() -> Fabric:
    return get_fabric("gpu_cluster")


# ------------------------------------------------------------------------------------------ shipped files


def test_shipped_files_are_listed():
    assert set(SHIPPED) <= set(available_topologies())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_file_loads_and_passes_invariants(name):
    spec = load_topology(name)
    graph = build_graph(spec)
    check_invariants(graph, spec)
    assert nx.is_frozen(graph)
    assert nx.number_of_selfloops(graph) == 0
    for u, v, d in graph.edges(data=True):
        assert set(d) == {"plane", "bandwidth_gbps", "latency_us"}
        assert any(e["plane"] == d["plane"] for e in graph[v][u].values()), "links go both ways"


def test_params_override_counts():
    spec = load_topology("gpu_cluster", {"nodes": 22})
    assert spec.nodes == 22
    assert spec.param_values()["nodes"] == 22
    fab = get_fabric("gpu_cluster", freeze_overrides({"nodes": 22, "nvlink_bandwidth_gbps": 1600}))
    assert len(fab.dies()) == 176
    assert fab.injection_gbps("n21.gpu7", "nvlink") == 1600
    assert get_fabric("gpu_cluster", freeze_overrides({"nodes": 22, "nvlink_bandwidth_gbps": 1600})) is fab
    four = Fabric(load_topology("gpu_cluster", {"gpus_per_node": 4}))
    assert four.devices_per_node == 4
    assert sum(1 for _, a in four.graph.nodes(data=True) if a.get("tier") == "leaf") == 4
    assert len(Fabric(load_topology("single_host", {"devices": 4})).dies()) == 4


def test_fabric_disk_cache_round_trip(tmp_path, monkeypatch):
    """A second process loads the built Fabric from the cache folder; it answers like a fresh build, a torn
    entry is rebuilt, and an empty CMTWIN_CACHE_DIR turns the cache off."""
    from cmtwin.topology import fabric as fabric_mod

    monkeypatch.setenv("CMTWIN_CACHE_DIR", str(tmp_path))
    overrides = freeze_overrides({"nodes": 3})

    def fresh() -> Fabric:
        fabric_mod._cached_fabric.cache_clear()  # what a new process starts with
        return get_fabric("gpu_cluster", overrides)

    built = fresh()
    (entry,) = (tmp_path / "fabric").glob("*.json")
    loaded = fresh()
    assert loaded is not built
    dies = loaded.dies()
    assert [d.id for d in dies] == [d.id for d in built.dies()]
    assert loaded.all_to_all_time_us(dies, 7680, "ib") == built.all_to_all_time_us(built.dies(), 7680, "ib")
    assert loaded.route(dies[0], dies[-1], "ib") == built.route(built.dies()[0], built.dies()[-1], "ib")
    entry.write_bytes(b"torn")
    assert len(fresh().dies()) == len(dies)
    assert entry.read_bytes() != b"torn", "a torn entry is replaced by a good one"
    other = freeze_overrides({"nodes": 4})
    fabric_mod._cached_fabric.cache_clear()
    get_fabric("gpu_cluster", other)
    assert len(list((tmp_path / "fabric").glob("*.json"))) == 2, "a changed topology gets its own entry"
    monkeypatch.setenv("CMTWIN_CACHE_DIR", "")
    fabric_mod._cached_fabric.cache_clear()
    get_fabric("gpu_cluster", freeze_overrides({"nodes": 5}))
    assert len(list((tmp_path / "fabric").glob("*.json"))) == 2
    fabric_mod._cached_fabric.cache_clear()


# ------------------------------------------------------------------------------------------ CloudMatrix384


def test_cm384_counts(cm):
    g = cm.graph
    tiers = {}
    for _, a in g.nodes(data=True):
        tiers[a.get("tier", a["kind"])] = tiers.get(a.get("tier", a["kind"]), 0) + 1
    assert len(cm.dies()) == 768 and tiers["die"] == 768
    assert len(cm.cpus()) == 192
    assert tiers["l1"] == 48 * 7
    assert tiers["l2"] == 7 * 16
    assert (cm.nodes, cm.devices_per_node, cm.dies_per_device) == (48, 8, 2)
    for n, a in g.nodes(data=True):
        if a.get("tier") == "l2":
            assert a["ports"] == 48
            assert g.out_degree(n) == 48, "each L2 chip: one link from L1 chip i of each of the 48 nodes"
    assert [d.index for d in cm.dies()] == list(range(768))
    d = cm.dies()[16 * 3 + 2 * 5 + 1]
    assert (d.id, d.node, d.device, d.die) == ("n03.npu5.d1", 3, 5, 1)
    assert "n03.cpu2" in g and "n03.l1s4" in g and "l2.p3.s15" in g and "rdma" in g and "vpc" in g


def test_cm384_ub_uplink_equals_npu_bandwidth(cm):
    for node in (0, 17, 47):
        assert cm.uplink_gbps(node, "ub") == pytest.approx(7 * 16 * 28 * 8)  # 3,136 GB/s
        npus = sum(cm.injection_gbps(d, "ub") for d in cm.dies() if d.node == node)
        assert npus == pytest.approx(8 * 392 * 8)
        assert cm.uplink_gbps(node, "ub") == pytest.approx(npus)
    assert cm.injection_gbps("n00.npu0.d0", "ub") == pytest.approx(7 * 224)
    assert cm.injection_gbps("n00.cpu0", "ub") == pytest.approx(160 * 8, rel=1e-6)
    assert cm.injection_gbps("n00.cpu0", "vpc") == 400 and cm.injection_gbps("n00.cpu1", "vpc") == 0


def test_cm384_blocking_uplink_is_refused():
    spec = load_topology("cloudmatrix384", {"connections[2].bandwidth_gbps": 112})
    with pytest.raises(TopologyError, match=r"non-blocking.*uplink is 12544 Gbps"):
        check_invariants(build_graph(spec), spec)


def test_cm384_routes(cm):
    intra = cm.route("n00.npu0.d0", "n00.npu3.d1", "ub")
    assert intra.hops == 2 and cm.graph.nodes[intra.path[1]]["tier"] == "l1"
    assert intra.latency_us == pytest.approx(1.2)  # paper v2 Table 1, NPU-NPU intra-node read
    inter = cm.route("n00.npu0.d0", "n05.npu3.d1", "ub")
    assert inter.hops == 4
    assert [cm.graph.nodes[x].get("tier") for x in inter.path[1:-1]] == ["l1", "l2", "l1"]
    assert inter.latency_us == pytest.approx(1.9)  # inter-node read
    assert inter.latency_us == pytest.approx(sum(
        min(d["latency_us"] for d in cm.graph[u][v].values() if d["plane"] == "ub")
        for u, v in zip(inter.path, inter.path[1:])
    ))
    assert inter.bottleneck_gbps == 224
    assert cm.route("n00.npu0.d0", "n01.cpu3", "ub").latency_us == pytest.approx(1.7)
    assert cm.route("n00.npu0.d0", "n00.npu0.d1", "d2d").hops == 1
    rdma = cm.route("n00.npu0.d0", "n30.npu7.d1", "rdma")
    assert rdma.path[1] == "rdma" and rdma.bottleneck_gbps == 200
    with pytest.raises(TopologyError, match="no route from n00.cpu0"):
        cm.route("n00.cpu0", "n00.npu0.d0", "rdma")
    with pytest.raises(TopologyError, match="no link on plane rdma"):
        cm.path_bandwidth_gbps("n00.cpu0", "n00.npu0.d0", "rdma")
    with pytest.raises(TopologyError, match="plane 'nvlink' is not wired"):
        cm.route("n00.npu0.d0", "n00.npu1.d0", "nvlink")
    with pytest.raises(TopologyError, match="no element 'n00.npu9.d0'"):
        cm.route("n00.npu9.d0", "n00.npu1.d0", "ub")


def test_cm384_path_bandwidth(cm):
    assert cm.path_bandwidth_gbps("n00.npu0.d0", "n09.npu4.d0", "ub") / 8 == pytest.approx(196)
    assert cm.path_bandwidth_gbps("n00.npu0.d0", "n00.npu4.d0", "ub") / 8 == pytest.approx(196)
    assert cm.path_bandwidth_gbps("n00.npu0.d0", "n00.npu0.d1", "d2d") / 8 == pytest.approx(270)
    assert cm.path_bandwidth_gbps("n00.npu0.d0", "n09.npu4.d0", "rdma") == 200
    t = cm.p2p_time_us("n00.npu0.d0", "n09.npu4.d0", 196_000, "ub")
    assert t.transfer_us == pytest.approx(1.0) and t.latency_us == pytest.approx(1.9)


def test_cm384_all_to_all_one_node_vs_two(cm):
    dies = cm.dies()
    nbytes = 128 * 7680 // 16
    one = cm.all_to_all_time_us(dies[:16], nbytes, "ub")
    two = cm.all_to_all_time_us(dies[:32], nbytes, "ub")
    assert one.transfer_us == pytest.approx(15 * nbytes * 8 / (1568 * 1e3))
    assert two.transfer_us == pytest.approx(31 * nbytes * 8 / (1568 * 1e3))
    assert one.bottleneck == "injection n00.npu0.d0 ub" and one.algorithm == "full_mesh"
    assert one.latency_us == pytest.approx(1.2) and two.latency_us == pytest.approx(1.9)
    assert two.time_us > one.time_us
    assert cm.all_to_all_time_us(dies[:1], nbytes, "ub").time_us == 0


def test_cm384_collectives(cm):
    dies = cm.dies()[:32]
    ag = cm.all_gather_time_us(dies, 1 << 20, "ub")
    assert ag.algorithm == "full_mesh" and ag.time_us == cm.all_to_all_time_us(dies, 1 << 20, "ub").time_us
    ring = cm.all_gather_time_us(dies, 1 << 20, "rdma")
    assert ring.algorithm == "ring"
    assert ring.transfer_us == pytest.approx(31 * (1 << 20) * 8 / (200 * 1e3))
    assert ring.latency_us == pytest.approx(31 * 3.0)
    ar = cm.all_reduce_time_us(dies, 32 << 20, "ub")
    assert ar.algorithm == "reduce_scatter+all_gather (full_mesh)"
    assert ar.time_us == pytest.approx(2 * cm.all_gather_time_us(dies, 1 << 20, "ub").time_us)
    with pytest.raises(TopologyError, match="listed twice"):
        cm.all_to_all_time_us([dies[0], dies[0]], 1, "ub")


# ------------------------------------------------------------------------------------------ GPU cluster


def test_gpu_cluster_planes_and_rails(gpu):
    assert len(gpu.dies()) == 16 and gpu.dies_per_device == 1
    assert gpu.dies()[5].id == "n00.gpu5"
    nv = gpu.route("n00.gpu0", "n00.gpu5", "nvlink")
    assert nv.hops == 2 and gpu.graph.nodes[nv.path[1]]["tier"] == "nvswitch" and nv.bottleneck_gbps == 3600
    with pytest.raises(TopologyError, match="no route"):
        gpu.route("n00.gpu0", "n01.gpu0", "nvlink")
    same_rail = gpu.route("n00.gpu3", "n01.gpu3", "ib")
    assert same_rail.path == ("n00.gpu3", "leaf3", "n01.gpu3")
    cross = gpu.route("n00.gpu3", "n01.gpu4", "ib")
    assert cross.hops == 4 and cross.path[1] == "leaf3" and cross.path[3] == "leaf4"
    for d in gpu.dies():
        leaves = [v for v in gpu.graph[d.id] if gpu.graph.nodes[v].get("tier") == "leaf"]
        assert leaves == [f"leaf{d.device}"], "GPU i of every node sits on rail leaf i"
    assert gpu.path_bandwidth_gbps("n00.gpu0", "n01.gpu5", "ib") == 400
    assert gpu.uplink_gbps(0, "ib") == 8 * 400
    a2a = gpu.all_to_all_time_us(gpu.dies(), 1 << 20, "ib")
    assert a2a.transfer_us == pytest.approx(15 * (1 << 20) * 8 / 400e3)
    assert a2a.latency_us == pytest.approx(cross.latency_us)


def test_single_host_ring():
    fab = Fabric(load_topology("single_host", {"devices": 4}))
    assert [d.id for d in fab.dies()] == ["n00.dev0", "n00.dev1", "n00.dev2", "n00.dev3"]
    ag = fab.all_gather_time_us(fab.dies(), 1 << 20, "host")
    assert ag.algorithm == "ring" and ag.bottleneck == "injection n00.dev0 host"
    assert ag.transfer_us == pytest.approx(3 * (1 << 20) * 8 / 504e3)
    assert ag.latency_us == pytest.approx(3 * 2.0)
    assert fab.route("n00.dev0", "n00.cpu0", "host").latency_us == pytest.approx(1.1)
    assert fab.uplink_gbps(0, "host") == 0


def test_declared_roles_and_die_ids(cm, gpu):
    """Each shipped file declares its plane roles and die-id scheme; the Fabric exposes them as declared."""
    r = cm.roles
    assert (r.scale_up, r.inter_node, r.scale_out, r.frontend) == ("ub", "ub", "rdma", "vpc")
    assert cm.roles_of("ub") == ("scale_up", "inter_node") and cm.roles_of("rdma") == ("scale_out",)
    assert cm.roles_of("d2d") == ()
    r = gpu.roles
    assert (r.scale_up, r.inter_node, r.scale_out, r.frontend) == ("nvlink", "ib", "ib", None)
    assert gpu.roles_of("ib") == ("inter_node", "scale_out")
    host = Fabric(load_topology("single_host"))
    assert host.roles_of("host") == ("scale_up", "inter_node", "scale_out")
    with pytest.raises(TopologyError, match="plane 'nvlink' is not wired here"):
        cm.roles_of("nvlink")
    assert cm.device_id_prefix == "npu" and gpu.device_id_prefix == "gpu"
    assert cm.die_id(3, 5, 1) == "n03.npu5.d1" and gpu.die_id(1, 7) == "n01.gpu7"
    for fab in (cm, gpu):
        assert all(fab.die_id(d.node, d.device, d.die) == d.id for d in fab.dies())
        assert all(fab.domain_of(d) == d.node for d in fab.dies()[::7])
    wide = Fabric(load_topology("gpu_cluster", {"nodes": 2}))
    assert wide.die_id(0, 0) == "n00.gpu0"


def test_roles_may_be_overridden_like_any_key():
    """A what-if: the KV transfer over UB instead of RDMA is a key-path override of `roles.scale_out`."""
    spec = load_topology("cloudmatrix384", {"nodes": 2, "roles.scale_out": "ub"})
    assert spec.roles.scale_out == "ub" and spec.roles.scale_up == "ub"
    with pytest.raises(TopologyError, match=r"`roles.scale_out` = 'nvlink' names no plane this file wires"):
        load_topology("cloudmatrix384", {"nodes": 2, "roles.scale_out": "nvlink"})


def test_disk_cache_key_follows_the_file(tmp_path, monkeypatch):
    """The on-disk Fabric cache is keyed on the validated spec: editing a user's topology file (its roles
    included) gives a new entry, and the in-process cache sees the file's new version."""
    from cmtwin.topology import fabric as fabric_mod

    monkeypatch.setenv("CMTWIN_CACHE_DIR", str(tmp_path / "cache"))
    data = raw("single_host")
    name = write(tmp_path, monkeypatch, data, "mine.yaml")
    key = fabric_mod._disk_path(load_topology(name))
    assert key == fabric_mod._disk_path(load_topology(name)), "the same file gives the same key"
    first = get_fabric(name)
    assert first.roles.scale_out == "host"
    data["connections"].append({"plane": "lan", "from": "cpu", "to": "bus", "bandwidth_gbps": 100,
                                "latency_us": 5.0, "source": "assumption: a test plane"})
    data["roles"]["frontend"] = "lan"
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    stat = path.stat()
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a distinct mtime on coarse clocks
    edited = load_topology(name)
    assert fabric_mod._disk_path(edited) != key, "an edited file gets its own cache entry"
    second = get_fabric(name)
    assert second is not first and second.roles.frontend == "lan" and "lan" in second.planes
    assert len(list((tmp_path / "cache" / "fabric").glob("*.json"))) == 2
    fabric_mod._cached_fabric.cache_clear()


def test_gpu_cluster_port_limit():
    spec = load_topology("gpu_cluster", {"nodes": 40})
    with pytest.raises(TopologyError, match=r"leaf0 uses 72 ports, more than its 64"):
        Fabric(spec)


def test_export(gpu):
    graphml = export_topology(gpu, "graphml")
    assert graphml.startswith("<?xml") and "n01.gpu7" in graphml
    again = nx.read_graphml(__import__("io").BytesIO(graphml.encode()), force_multigraph=True)
    assert again.number_of_edges() == gpu.graph.number_of_edges()
    doc = __import__("json").loads(export_topology(gpu.graph, "json"))
    assert len(doc["nodes"]) == gpu.graph.number_of_nodes() and len(doc["edges"]) == gpu.graph.number_of_edges()


# ------------------------------------------------------------------------------------------ bad files


def write(tmp_path, monkeypatch, data, name="t.yaml"):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return name


def mutated(name, path, value):
    data = raw(name)
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return data


BAD_DICTS = [
    ("negative bandwidth", mutated("cloudmatrix384", ["connections", 0, "bandwidth_gbps"], -224),
     ["connections[0].bandwidth_gbps", "-224", "> 0"]),
    ("zero nodes", mutated("gpu_cluster", ["nodes"], 0), ["`nodes`", "= 0", ">= 1"]),
    ("unknown key", mutated("gpu_cluster", ["node", "devices", "colour"], "green"),
     ["node.devices.colour", "'green'", "keys allowed here"]),
    ("wrong type", mutated("cloudmatrix384", ["node", "devices", "count"], "eight"),
     ["node.devices.count", "'eight'", "whole number"]),
    ("missing source", mutated("single_host", ["connections", 0, "sources"], {"latency_us": "x"}),
     ["connections[0].bandwidth_gbps", "504", "no source"]),
    ("source typo", mutated("single_host", ["connections", 0, "sources", "bandwith_gbps"], "x"),
     ["connections[0].sources.bandwith_gbps"]),
    ("unknown target", mutated("gpu_cluster", ["connections", 1, "to"], "leef"), ["connections[1].to", "'leef'"]),
    ("bad pattern counts", mutated("cloudmatrix384", ["fabric", 0, "groups"], 6),
     ["connections[2].pattern", "same_group", "groups == 7"]),
    ("params disagree", mutated("gpu_cluster", ["fabric", 0, "count"], 4),
     ["params.gpus_per_node", "fabric[0].count=4", "make them equal"]),
    ("renamed plane, roles not", mutated("gpu_cluster", ["connections", 0, "plane"], "nvlinc"),
     ["roles.scale_up", "'nvlink'", "names no plane this file wires", "nvlinc, ib"]),
    ("missing roles", {k: v for k, v in raw("gpu_cluster").items() if k != "roles"},
     ["`roles`", "(missing)", "nvlink, ib", "roles: {scale_up: nvlink"]),
    ("missing role", mutated("cloudmatrix384", ["roles"], {"scale_up": "ub", "inter_node": "ub"}),
     ["roles.scale_out", "(missing)", "KV transfer", "ub, rdma, vpc"]),
    ("unknown role", mutated("gpu_cluster", ["roles", "scaleout"], "ib"),
     ["roles.scaleout", "is no role", "did you mean `scale_out`", "scale_up, inter_node, scale_out, frontend"]),
    ("role not a name", mutated("gpu_cluster", ["roles", "scale_out"], 3),
     ["roles.scale_out", "= 3", "nvlink, ib"]),
    ("role plane without dies", mutated("cloudmatrix384", ["roles", "scale_out"], "vpc"),
     ["roles.scale_out", "'vpc'", "wires no die", "rdma, ub"]),
    ("frontend without cpus", mutated("cloudmatrix384", ["roles", "frontend"], "rdma"),
     ["roles.frontend", "'rdma'", "wires no cpu", "ub, vpc"]),
    ("inter-node role on a node-local plane", mutated("gpu_cluster", ["roles", "inter_node"], "nvlink"),
     ["roles.inter_node", "node_local", "2 nodes", "spans the nodes: ib"]),
    ("d2d is reserved", mutated("single_host", ["connections", 0, "plane"], "d2d"),
     ["connections[0].plane", "reserved", "die_to_die"]),
    ("id prefix ending in a digit", mutated("gpu_cluster", ["node", "devices", "id_prefix"], "h100"),
     ["node.devices.id_prefix", "'h100'"]),
    ("missing key", {k: v for k, v in raw("cloudmatrix384").items() if k != "node"}, ["`node`", "missing"]),
    ("nan latency", mutated("gpu_cluster", ["connections", 0, "latency_us"], float("nan")),
     ["connections[0].latency_us", "nan"]),
    ("boolean count", mutated("gpu_cluster", ["nodes"], True), ["`nodes`", "True"]),
]


@pytest.mark.parametrize("label,data,needles", BAD_DICTS, ids=[b[0] for b in BAD_DICTS])
def test_bad_files_give_one_clear_error(tmp_path, monkeypatch, label, data, needles):
    name = write(tmp_path, monkeypatch, data)
    with pytest.raises(TopologyError) as exc:
        load_topology(name)
    text = str(exc.value)
    assert "t.yaml" in text and "Fix:" in text
    for needle in needles:
        assert needle in text, (needle, text)


def test_dangling_link(tmp_path, monkeypatch):
    data = raw("cloudmatrix384")
    data["links"] = [{"a": "n00.npu0.d0", "b": "n99.npu0.d0", "plane": "ub", "bandwidth_gbps": 224,
                      "latency_us": 0.5, "source": "assumption: what-if"}]
    spec = load_topology(write(tmp_path, monkeypatch, data), {"nodes": 2})
    with pytest.raises(TopologyError, match=r"`links\[0\]\.b` = 'n99\.npu0\.d0' names no declared element"):
        build_graph(spec)


def test_extra_links_what_if(tmp_path, monkeypatch):
    link = {"a": "n00.npu0.d0", "b": "n01.npu0.d0", "plane": "ub", "bandwidth_gbps": 800, "latency_us": 0.2,
            "source": "assumption: what-if direct link"}
    fab = Fabric(load_topology(write(tmp_path, monkeypatch, raw("cloudmatrix384")), {"nodes": 2, "links": [link]}))
    assert fab.route("n00.npu0.d0", "n01.npu0.d0", "ub").hops == 1
    loop = dict(link, a="l2.p0.s0", b="l2.p0.s1")
    with pytest.raises(TopologyError, match="two switches of tier 'l2'"):
        Fabric(load_topology("cloudmatrix384", {"nodes": 2, "links": [loop]}))
    with pytest.raises(TopologyError, match="self-loop"):
        Fabric(load_topology("cloudmatrix384", {"nodes": 2, "links": [dict(link, b=link["a"])]}))


def test_non_utf8_names_the_byte_offset(tmp_path, monkeypatch):
    name = write(tmp_path, monkeypatch, b"name: x\nnodes: 4\n# caf\xe9\n")
    with pytest.raises(TopologyError, match=r"not UTF-8: byte 0xe9 at byte offset 22"):
        load_topology(name)


def test_oversized_file(tmp_path, monkeypatch):
    name = write(tmp_path, monkeypatch, "# padding\n" * 110_000)
    with pytest.raises(TopologyError, match=r"larger than the 1,048,576-byte \(1 MiB\) limit"):
        load_topology(name)


def test_yaml_syntax_error_names_the_line(tmp_path, monkeypatch):
    name = write(tmp_path, monkeypatch, "name: x\nnodes: 4\nnode: {devices: [\n  oops\n")
    with pytest.raises(TopologyError, match=r"YAML syntax error at line \d+"):
        load_topology(name)


def test_duplicate_key_names_both_lines(tmp_path, monkeypatch):
    name = write(tmp_path, monkeypatch, "name: x\nnodes: 4\nnodes: 5\n")
    with pytest.raises(TopologyError, match=r"line 3.*duplicate key 'nodes' \(first given on line 2\)"):
        load_topology(name)


def test_document_not_a_mapping(tmp_path, monkeypatch):
    with pytest.raises(TopologyError, match="is a list, not a mapping"):
        load_topology(write(tmp_path, monkeypatch, "- 1\n- 2\n"))


def test_missing_file_lists_the_names():
    with pytest.raises(TopologyError, match=r"`cloudmatrix385` not found.*cloudmatrix384, gpu_cluster"):
        load_topology("cloudmatrix385")


def test_path_may_not_escape(tmp_path, monkeypatch):
    sub = tmp_path / "work"
    sub.mkdir()
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(raw("single_host")))
    monkeypatch.chdir(sub)
    with pytest.raises(TopologyError, match="outside the allowed folders"):
        load_topology("../outside.yaml")
    with pytest.raises(TopologyError, match="outside the allowed folders"):
        load_topology(tmp_path / "outside.yaml")
    (sub / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    with pytest.raises(TopologyError, match="outside the allowed folders"):
        load_topology("link.yaml")
    (sub / "inside.yaml").write_text(yaml.safe_dump(raw("single_host")))
    assert load_topology("inside.yaml").name == "single_host"


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"nodez": 3}, "override `nodez` = 3 names no param and no key"),
        ({"fabric[0].count": 4}, "`params.gpus_per_node` names several keys that disagree"),
        ({"nodes.count": 4}, "goes through `nodes`, which holds 2, not a mapping"),
        ({"connections[9].latency_us": 1}, "`connections[9]` is no existing list item"),
        ({"nodes": -2}, "key `nodes` = -2"),
    ],
)
def test_bad_overrides(overrides, needle):
    with pytest.raises(TopologyError) as exc:
        load_topology("gpu_cluster", overrides)
    assert needle in str(exc.value)


# ------------------------------------------------------------------------------------------ fuzzing


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


BASES = {
    "gpu_cluster": raw("gpu_cluster"),
    "single_host": raw("single_host"),
    "cloudmatrix384": dict(raw("cloudmatrix384"), nodes=2),
}
IDS = ["n00.gpu0", "n01.gpu7", "leaf0", "spine1", "n00.nvs0", "n00.dev0", "n00.cpu0", "n00.bus0",
       "n00.npu0.d0", "n01.l1s3", "l2.p0.s0", "rdma", "nowhere"]
scalars = st.one_of(
    st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True, width=32), st.booleans(), st.none(),
    st.sampled_from(["ub", "ib", "nvlink", "die", "cpu", "leaf", "l1s", "all", "same_index", "same_group", "x", ""]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["count", "source", "bandwidth_gbps", "zz"]), scalars, max_size=2),
    st.builds(
        lambda a, b, plane, bw: [{"a": a, "b": b, "plane": plane, "bandwidth_gbps": bw, "latency_us": 0.1,
                                  "source": "assumption: fuzz"}],
        st.sampled_from(IDS), st.sampled_from(IDS), st.sampled_from(["ub", "ib", "host", "rdma"]), st.integers(-1, 900),
    ),
)


@st.composite
def mutations(draw):
    base = draw(st.sampled_from(sorted(BASES)))
    data = copy.deepcopy(BASES[base])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths + [("links",)]))
        parent = data
        try:
            for p in path[:-1]:
                parent = parent[p]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(parent, dict) and draw(st.booleans()) and path[-1] in parent:
            del parent[path[-1]]
        elif isinstance(parent, (dict, list)):
            parent[path[-1]] = draw(values)
    names = list(BASES[base].get("params", {})) + ["bogus", "nodes", "links"]
    overrides = draw(st.dictionaries(st.sampled_from(names), values, max_size=2))
    return data, overrides


@st.composite
def plausible_mutations(draw):
    """Numbers replaced by other positive numbers, params overridden with plausible values: mostly valid."""
    base = draw(st.sampled_from(sorted(BASES)))
    data = copy.deepcopy(BASES[base])
    numeric = [p for p in _paths(data) if p and type(_get(data, p)) in (int, float)]
    for path in draw(st.lists(st.sampled_from(numeric), max_size=3)):
        _get(data, path[:-1])[path[-1]] = draw(st.one_of(st.integers(1, 9), st.floats(0.01, 5000)))
    params = sorted(BASES[base].get("params", {}))
    overrides = draw(st.dictionaries(st.sampled_from(params), st.integers(1, 12), max_size=2)) if params else {}
    return data, overrides


def _get(data, path):
    for p in path:
        data = data[p]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutations(), plausible_mutations()))
def test_fuzzed_topologies_build_or_raise_topology_error(case):
    data, overrides = case
    try:
        fab = Fabric(parse_topology(data, origin="fuzz", overrides=overrides))
    except TopologyError as exc:
        assert str(exc).strip()
        return
    assert fab.graph.number_of_nodes() > 0
    for plane in fab.planes:
        eps = [e for e in (*fab.dies(), *fab.cpus()) if fab.injection_gbps(e, plane) > 0]
        if len(eps) < 2:
            continue
        try:  # node-local planes legitimately raise for pairs in different nodes
            for query in (fab.all_to_all_time_us, fab.all_gather_time_us, fab.all_reduce_time_us):
                assert query(eps, 1024, plane).time_us >= 0
            assert fab.p2p_time_us(eps[0], eps[-1], 1024, plane).time_us >= 0
            assert fab.path_bandwidth_gbps(eps[0], eps[-1], plane) > 0
        except TopologyError as exc:
            assert "no route" in str(exc)
