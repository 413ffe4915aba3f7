"""Fabric roles are declared, not guessed (issue 18, item 3): a user's own topology whose planes carry other
names than the shipped ones (ub -> fabric_a, rdma -> fabric_b, vpc -> fabric_c; nvlink -> scaleup,
ib -> scaleout), with its `roles:` declared accordingly and selected the way a user selects one
(./cmtwin_conf/topology/<name>.yaml pointing at a file in the working directory), predicts exactly what the
shipped topology predicts, plane names in the bound labels aside; a missing role is a clear exit-2 error.

Collective efficiencies in a hardware profile are keyed by the role a plane plays (efficiency_scale_up,
efficiency_inter_node, efficiency_scale_out), never by a plane's name, so the shipped profiles are used
unchanged on the renamed fabric; a profile keyed by plane names (efficiency_nvlink) is refused (it would
otherwise run every plane at its full link rate)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmtwin.cli.main import main
from cmtwin.paths import conf_dir, topologies_dir

CM384 = {"ub": "fabric_a", "rdma": "fabric_b", "vpc": "fabric_c"}
GPU = {"nvlink": "scaleup", "ib": "scaleout"}

# deployment -> (shipped topology option, its renamed copy, plane renames, hardware profile)
CASES = {
    "r1_ep320": ("cloudmatrix384", "cm384_renamed", CM384, "ascend_910c"),
    "r1_h800_ep144": ("h800_cluster", "h800_renamed", GPU, "h800_sxm"),
}


def _rename_planes(data: dict, names: dict[str, str]) -> dict:
    """A topology file with its planes renamed everywhere a plane is named (roles included)."""
    out = yaml.safe_load(yaml.safe_dump(data))
    for conn in out["connections"]:
        conn["plane"] = names.get(conn["plane"], conn["plane"])
    for link in out.get("links") or ():
        link["plane"] = names.get(link["plane"], link["plane"])
    for key in ("non_blocking", "node_local"):
        if key in out:
            out[key] = [names.get(p, p) for p in out[key]]
    out["roles"] = {role: names.get(p, p) for role, p in out["roles"].items()}
    out["name"] = out["name"] + "_renamed"
    return out


def _user_conf(workdir: Path, deployment: str, *, roles: bool = True) -> str:
    """Write the renamed topology (file + option) under ./cmtwin_conf; return the topology option's name."""
    shipped, renamed, names, _ = CASES[deployment]
    option = yaml.safe_load((conf_dir() / "topology" / f"{shipped}.yaml").read_text())
    data = _rename_planes(yaml.safe_load((topologies_dir() / f"{option['file']}.yaml").read_text()), names)
    if not roles:
        del data["roles"]
    for folder in ("topologies", "topology"):
        (workdir / "cmtwin_conf" / folder).mkdir(parents=True, exist_ok=True)
    (workdir / "cmtwin_conf" / "topologies" / f"{renamed}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (workdir / "cmtwin_conf" / "topology" / f"{renamed}.yaml").write_text(yaml.safe_dump({
        "name": renamed, "file": f"cmtwin_conf/topologies/{renamed}.yaml", "params": option.get("params") or {},
    }, sort_keys=False))
    return renamed


def _prediction(overrides: list[str]):
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    spec, _ = load_spec(overrides)
    plan = compile_plan(spec)
    return spec, plan, predict(spec, plan)


def _figures(pred, names: dict[str, str] | None = None) -> dict[str, Any]:
    """What is compared: the printed prefill/decode figures, bottleneck and notes, and every breakdown row with
    its unrounded time; plane names mapped back to the shipped ones (`comm:fabric_a` -> `comm:ub`)."""
    back = {new: old for old, new in (names or {}).items()}

    def unname(value: Any) -> Any:
        if isinstance(value, str) and back:
            return re.sub(r"\b(" + "|".join(map(re.escape, back)) + r")\b", lambda m: back[m.group(1)], value)
        if isinstance(value, dict):
            return {k: unname(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [unname(v) for v in value]
        return value

    doc = pred.to_dict()
    rows = [(r.phase, r.stream, r.operator, r.time_us, r.bound, r.calls) for r in pred.breakdown]
    return unname({"prefill": doc["prefill"], "decode": doc["decode"], "bottleneck": doc["bottleneck"],
                   "notes": doc["notes"], "breakdown": doc["breakdown"], "rows": rows})


@pytest.mark.parametrize("deployment", sorted(CASES))
def test_renamed_planes_predict_exactly_as_the_shipped_fabric(deployment, workdir):
    _, _, names, _ = CASES[deployment]
    topology = _user_conf(workdir, deployment)
    _, _, reference = _prediction([f"+deployment={deployment}"])
    base = _figures(reference)
    assert base["rows"], "a prediction has a breakdown"

    # the shipped hardware profile, unchanged, on the renamed fabric
    spec, plan, renamed = _prediction([f"+deployment={deployment}", f"topology={topology}"])
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin import comm

    assert _figures(renamed, names) == base
    assert [d.die for d in plan.dies] == [d.die for d in compile_plan_of(deployment).dies]
    fabric = fabric_for(spec)
    assert set(names.values()) <= set(fabric.planes) and not set(names) & set(fabric.planes)
    pl = comm.planes(fabric)
    shipped_pl = comm.planes(fabric_for(_prediction([f"+deployment={deployment}"])[0]))
    assert (pl.intra, pl.inter, pl.scale_out) == tuple(names[p] for p in
                                                       (shipped_pl.intra, shipped_pl.inter, shipped_pl.scale_out))


def compile_plan_of(deployment: str):
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan

    return compile_plan(load_spec([f"+deployment={deployment}"])[0])


def test_ems_fetch_reads_the_declared_planes(workdir):
    """The simulator's EMS fetch over the inter-node plane and over the front-end plane costs the same on the
    renamed CloudMatrix384 as on the shipped one."""
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.sim.tables import FetchCost

    topology = _user_conf(workdir, "r1_ep320")
    costs = []
    for overrides in ([], [f"topology={topology}"]):
        spec, plan, _ = _prediction(["+deployment=r1_ep320", *overrides])
        fab = fabric_for(spec)
        dies = list(plan.die_ids("prefill", 0))
        nbytes = 64 * plan.caching.block_bytes
        costs.append([FetchCost(spec.hardware, fab, dies=dies, plane=p, ssd_gbps=50, nodes_total=48).us(nbytes)
                      for p in ("ub", "vpc")])
    assert costs[0] == costs[1] and costs[0][0] < costs[0][1]


@pytest.mark.parametrize("renamed", [False, True])
def test_a_plane_keyed_profile_is_refused_not_run_at_line_rate(workdir, capsys, renamed):
    """The shipped h800_sxm profile keyed by plane names (`efficiency_nvlink`, `efficiency_ib`) instead of roles
    is refused, on the shipped planes as on renamed ones."""
    prof = yaml.safe_load((conf_dir() / "hardware" / "h800_sxm.yaml").read_text())
    plane_of = {"efficiency_scale_up": "efficiency_nvlink", "efficiency_inter_node": "efficiency_ib"}
    prof["collectives"] = {kind: {plane_of.get(k, k): v for k, v in entries.items()}
                           for kind, entries in prof["collectives"].items()}
    prof["name"] = "h800_planes"
    (workdir / "cmtwin_conf" / "hardware").mkdir(parents=True, exist_ok=True)
    (workdir / "cmtwin_conf" / "hardware" / "h800_planes.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    overrides = [f"topology={_user_conf(workdir, 'r1_h800_ep144')}"] if renamed else []
    assert main(["plan", "+deployment=r1_h800_ep144", "hardware=h800_planes", *overrides]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "hardware profile h800_planes" in err and "efficiency_ib, efficiency_nvlink" in err
    assert ("scaleout, scaleup" if renamed else "ib, nvlink") in err
    assert "efficiency_scale_up" in err and "Traceback" not in err


def test_a_missing_role_is_a_clear_exit_2_error(workdir, capsys):
    topology = _user_conf(workdir, "r1_ep320", roles=False)
    assert main(["plan", "+deployment=r1_ep320", f"topology={topology}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "Traceback" not in err
    assert "cmtwin_conf/topologies/cm384_renamed.yaml" in err
    assert "key `roles` = (missing)" in err
    assert "Planes wired here: fabric_a, fabric_b, fabric_c" in err
    assert "Fix: add `roles: {scale_up: fabric_a, inter_node: fabric_a, scale_out: fabric_b}`" in err


def test_the_tui_lays_out_the_declared_nodes_and_ids(workdir):
    """The plan carries what the topology declares (devices per node, the die-id stem) and the TUI's map reads
    it: no 8-per-node and no hardware-name assumption. A fabric of 4-device nodes with id stem `acc_`, whose plan
    uses 2 devices of each node, shows 4 rows; a pools-only record rebuilds ids in the same scheme."""
    from cmtwin.tui.data import describe_device, supernode_map

    topology = _user_conf(workdir, "r1_h800_ep144")
    spec, plan, _ = _prediction(["+deployment=r1_h800_ep144", f"topology={topology}"])
    doc = plan.to_dict()
    assert (doc["devices_per_node"], doc["device_id_prefix"]) == (8, "gpu")

    fake = {"devices_total": 12, "dies_per_device": 1, "devices_per_node": 4, "device_id_prefix": "acc_",
            "pools": [{"role": "decode", "instance": 0, "devices": 4, "nodes": [0, 1]}],
            "dies": [{"die": f"n0{n}.acc_{d}", "role": "decode", "instance": 0, "rank": 2 * n + d}
                     for n in (0, 1) for d in (0, 1)]}
    grid = supernode_map(fake)
    assert (grid.kind, grid.nodes, grid.per_node) == ("acc_", 3, 4)
    assert grid.role_counts() == {"decode": 4, "idle": 8}
    assert describe_device(grid.cell(2, 3), grid.kind) == ["node 02 acc_3: idle (no role in this plan)"]
    pools_only = supernode_map({k: v for k, v in fake.items() if k != "dies"})
    assert (pools_only.kind, pools_only.nodes, pools_only.per_node) == ("acc_", 3, 4)
    assert [d.die for d in pools_only.cell(0, 3).dies] == ["n00.acc_3"]  # a pool fills its nodes in order
    assert pools_only.cell(1, 0).role == "idle"
