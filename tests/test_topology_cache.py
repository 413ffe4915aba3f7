"""The on-disk topology cache cannot run code: entries are checked, versioned JSON (never unpickled), used only
when the current user owns them and nobody else can write to them, and rebuilt otherwise."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest

from cmtwin.errors import TopologyError
from cmtwin.topology import fabric as fabric_mod
from cmtwin.topology.fabric import Fabric, freeze_overrides, get_fabric
from cmtwin.topology.schema import load_topology

OVERRIDES = freeze_overrides({"nodes": 3})


class _Planted:
    """A pickle whose loading writes a marker file (what a replaced cache entry could do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # noqa: SIM115 - creating the file is the whole payload


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMTWIN_CACHE_DIR", str(tmp_path / "cache"))
    fabric_mod._cached_fabric.cache_clear()
    yield tmp_path / "cache" / "fabric"
    fabric_mod._cached_fabric.cache_clear()


def _fresh() -> Fabric:
    fabric_mod._cached_fabric.cache_clear()  # what a new process starts with
    return get_fabric("gpu_cluster", OVERRIDES)


def _entry() -> os.PathLike:
    return fabric_mod._disk_path(load_topology("gpu_cluster", dict(OVERRIDES)))


def _count_builds(monkeypatch) -> list:
    builds = []
    real = Fabric.__init__

    def counting(self, spec):
        builds.append(spec.name)
        real(self, spec)

    monkeypatch.setattr(Fabric, "__init__", counting)
    return builds


def test_entry_is_private_json_and_rebuilds_the_same_fabric(cache, monkeypatch):
    built = _fresh()
    path = _entry()
    assert path.suffix == ".json" and path.is_file()
    if hasattr(os, "getuid"):
        assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(path.read_text())
    assert data["format"] == fabric_mod.CACHE_FORMAT and data["version"] == fabric_mod.CACHE_VERSION
    builds = _count_builds(monkeypatch)
    loaded = _fresh()
    assert builds == [] and loaded is not built, "the second process reads the entry instead of building"
    g1, g2 = built.graph, loaded.graph
    assert list(g1.nodes(data=True)) == list(g2.nodes(data=True))
    assert list(g1.edges(keys=True, data=True)) == list(g2.edges(keys=True, data=True))
    assert all(list(g1.pred[v]) == list(g2.pred[v]) for v in g1), "predecessor order (path ties) is kept"
    assert g2.graph == g1.graph and loaded.planes == built.planes
    for attr in ("_node_of", "_order", "_dies", "_cpus", "_inj", "_ej", "_up", "_down", "_class"):
        assert getattr(loaded, attr) == getattr(built, attr), attr
    dies = loaded.dies()
    assert loaded.route(dies[0], dies[-1], "ib") == built.route(built.dies()[0], built.dies()[-1], "ib")
    assert loaded.all_to_all_time_us(dies, 7680, "ib") == built.all_to_all_time_us(built.dies(), 7680, "ib")


@pytest.mark.parametrize("suffix", [".json", ".pickle"])
def test_planted_pickle_does_not_run(cache, tmp_path, suffix):
    """A cache entry replaced by a malicious pickle (at the entry's path, or where the old pickle cache lived)
    is never unpickled: the marker file is not written and the fabric is rebuilt."""
    path = _entry().with_suffix(suffix)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps(_Planted(str(marker))))
    os.chmod(path, 0o600)
    fabric = _fresh()
    assert not marker.exists(), "loading the cache ran code"
    assert len(fabric.dies()) == len(Fabric(load_topology("gpu_cluster", dict(OVERRIDES))).dies())
    if suffix == ".json":
        assert json.loads(_entry().read_text())["format"] == fabric_mod.CACHE_FORMAT, "the bad entry is replaced"


@pytest.mark.parametrize("body", [b"torn", b"[]", b'{"format": "cmtwin-fabric", "version": 0}',
                                  b"[" * 100_000, b'{"format": "cmtwin-fabric", "version": 1, "key": "x"}'])
def test_malformed_or_stale_entry_is_rebuilt(cache, monkeypatch, body):
    _fresh()
    path = _entry()
    path.write_bytes(body)
    builds = _count_builds(monkeypatch)
    assert len(_fresh().dies()) > 0 and builds, "rebuilt"
    assert json.loads(path.read_text())["format"] == fabric_mod.CACHE_FORMAT


def test_tampered_index_is_rejected(cache, monkeypatch):
    """An entry whose edges point past the node list (or hold non-numbers) is not used."""
    _fresh()
    path = _entry()
    data = json.loads(path.read_text())
    v = _column(data["edges"], "v")
    v[0] = len(data["nodes"]) + 5
    _store(data["edges"], "v", v)
    path.write_text(json.dumps(data))
    builds = _count_builds(monkeypatch)
    _fresh()
    assert builds


def _column(where: dict, key: str, dtype: str = "<i4") -> list:
    """A packed column of an entry (fabric._PACKED), as a list to edit; _store puts it back."""
    return fabric_mod._unpack(where[key], dtype).tolist()


def _store(where: dict, key: str, xs: list, dtype: str = "<i4") -> None:
    where[key] = fabric_mod._pack(xs, dtype)


def _repeat_an_edge(data):
    cols = data["edges"]
    for c in ("u", "v", "k"):
        xs = _column(cols, c)
        xs[1] = xs[0]
        _store(cols, c, xs)


def _lose_a_predecessor(data):
    pred = _column(data, "pred")
    pred[0] = next(u for u in range(len(data["nodes"])) if u != pred[0])
    _store(data, "pred", pred)


def _swap_predecessor_counts(data):
    counts = _column(data, "pred_count")
    i = next(i for i in range(len(counts) - 1) if counts[i] != counts[i + 1])
    counts[i], counts[i + 1] = counts[i + 1], counts[i]
    _store(data, "pred_count", counts)


def _links_out_of_graph_order(data):
    cols = data["edges"]
    for c, dtype in fabric_mod._PACKED.items():
        _store(cols, c, _column(cols, c, dtype)[::-1], dtype)


def _bad_base64(data):
    data["edges"]["bw"] = data["edges"]["bw"][:-3] + "!!="


def _infinite_bandwidth(data):
    bw = _column(data["edges"], "bw", "<f8")
    bw[0] = float("inf")
    _store(data["edges"], "bw", bw, "<f8")


@pytest.mark.parametrize("tamper", [_repeat_an_edge, _lose_a_predecessor, _swap_predecessor_counts, _bad_base64,
                                    _infinite_bandwidth, _links_out_of_graph_order])
def test_entry_that_describes_no_graph_is_rejected(cache, monkeypatch, tamper):
    """The edge form must describe a graph: distinct edges, and each node's predecessors exactly the nodes linked
    to it (the checks run on integer columns)."""
    _fresh()
    path = _entry()
    data = json.loads(path.read_text())
    tamper(data)
    path.write_text(json.dumps(data))
    builds = _count_builds(monkeypatch)
    _fresh()
    assert builds


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file owners")
def test_entry_owned_by_someone_else_is_ignored_with_a_warning(cache, monkeypatch, caplog):
    _fresh()
    path = _entry()
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # the file now belongs to "someone else"
    builds = _count_builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="cmtwin.cache"):
        fabric = _fresh()
    assert builds and len(fabric.dies()) > 0, "rebuilt instead of read"
    lines = [r.getMessage() for r in caplog.records if r.name == "cmtwin.cache" and str(path) in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"owned by uid {me}" in lines[0] and "CMTWIN_CACHE_DIR" in lines[0]


def test_a_topology_read_again_comes_from_its_parse_cache(cache, tmp_path, monkeypatch):
    """A topology file's parsed form is cached by its bytes: read again, the same spec without YAML (a process
    that reads it again imports no yaml); an edited file is parsed again; a form JSON would not give back exactly
    is not cached."""
    import subprocess
    import sys

    from cmtwin.topology import schema

    monkeypatch.chdir(tmp_path)
    src = (schema.topologies_dir() / "gpu_cluster.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(src)
    first = load_topology("mine.yaml")
    code = ("import sys; from cmtwin.topology.schema import load_topology; spec = load_topology('mine.yaml'); "
            "print(spec.model_dump_json()); print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CMTWIN_CACHE_DIR": str(tmp_path / "cache")}).stdout.split("\n")
    assert out[0] == first.model_dump_json() and out[1] == "False"
    (tmp_path / "mine.yaml").write_text(src.replace("name: gpu_cluster", "name: edited", 1))
    assert load_topology("mine.yaml").name == "edited"
    entries = len(list((tmp_path / "cache" / "topology-yaml").iterdir()))
    assert entries == 2
    schema._write_parse_cache(tmp_path / "cache" / "topology-yaml" / "x.json", {1: "a number key"})
    assert len(list((tmp_path / "cache" / "topology-yaml").iterdir())) == entries


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file modes")
def test_entry_writable_by_others_is_ignored(cache, monkeypatch, caplog):
    _fresh()
    path = _entry()
    os.chmod(path, 0o666)
    builds = _count_builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="cmtwin.cache"):
        _fresh()
    assert builds and any("writable by other users" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="needs O_NOFOLLOW")
def test_symlinked_entry_is_not_followed(cache, tmp_path, monkeypatch):
    _fresh()
    path = _entry()
    real = tmp_path / "elsewhere.json"
    real.write_bytes(path.read_bytes())
    os.chmod(real, 0o600)
    path.unlink()
    path.symlink_to(real)
    builds = _count_builds(monkeypatch)
    _fresh()
    assert builds, "a symlinked entry is rebuilt, not followed"


@pytest.mark.parametrize("name", ["cloudmatrix384", "gpu_cluster", "nvl72_rack", "single_host"])
def test_routes_are_networkx_shortest_paths(name):
    """Routes are searched on the edge form, not on the graph: the same paths as nx.shortest_path on the plane's
    view of the graph (ties broken alike), with the fastest link of each hop as its bottleneck and latency."""
    import random

    import networkx as nx

    fabric = Fabric(load_topology(name))
    g = fabric.graph
    rng = random.Random(7)
    nodes = list(g.nodes)
    for plane in fabric.planes:
        view = nx.subgraph_view(g, filter_edge=lambda u, v, k, p=plane: g[u][v][k]["plane"] == p)
        ends = list(fabric._inj[plane])
        pairs = [(ends[0], b) for b in ends[1:60]] + [tuple(rng.sample(nodes, 2)) for _ in range(200)]
        for a, b in pairs:
            try:
                expected = nx.shortest_path(view, a, b)
            except nx.NetworkXNoPath:
                with pytest.raises(TopologyError, match="no route"):
                    fabric.route(a, b, plane)
                continue
            route = fabric.route(a, b, plane)
            assert list(route.path) == expected, (a, b, plane)
            best = [max((d for d in g[u][v].values() if d["plane"] == plane), key=lambda d: d["bandwidth_gbps"])
                    for u, v in zip(expected, expected[1:])]
            assert route.bottleneck_gbps == min(d["bandwidth_gbps"] for d in best)
            assert route.latency_us == sum(d["latency_us"] for d in best)


def test_a_cached_fabric_answers_without_networkx(tmp_path):
    """`cmtwin plan` reads the fabric from the cache and never imports networkx; asking for the graph rebuilds it
    (the same graph the build made, see the first test)."""
    import subprocess
    import sys

    code = ("import sys; from cmtwin.topology.fabric import get_fabric; f = get_fabric('cloudmatrix384'); "
            "d = f.dies(); f.route(d[0], d[-1], f.roles.inter_node); f.all_to_all_time_us(d[:64], 7680, "
            "f.roles.scale_up); print('networkx' in sys.modules, end=' '); "
            "print(f.graph.number_of_edges(), 'networkx' in sys.modules)")
    env = {**os.environ, "CMTWIN_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    built, cached = (r.stdout.split() for r in runs)
    assert built[0] == "True" and cached == ["False", built[1], "True"]
