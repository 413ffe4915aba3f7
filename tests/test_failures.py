"""Failure what-ifs (cmtwin/planner/failures.py): failed dies or devices, and the plan replanned on the survivors,
degraded in place, or refused; `cmtwin plan` prints the healthy and the failed prediction side by side."""

from __future__ import annotations

import json

import pytest

from cmtwin.cli.main import main
from cmtwin.config.compose import load_spec
from cmtwin.errors import PlanError
from cmtwin.planner.plan import compile_plan
from cmtwin.twin.predict import predict


def _plan(*overrides, deployment="r1_ep320"):
    spec, _ = load_spec([f"+deployment={deployment}", *overrides])
    return spec, compile_plan(spec)


def test_replan_moves_the_failed_device_onto_a_spare():
    """r1_ep320 uses 256 of 384 NPUs: a decode die's NPU fails, the next device takes its place, nothing is lost."""
    spec, healthy = _plan()
    first = next(d.die for d in healthy.dies if d.role == "decode")
    fspec, failed = _plan(f"failures.dies=[{first}]")
    assert first not in {d.die for d in failed.dies}
    assert len(failed.dies) == len(healthy.dies)
    assert predict(fspec, failed).decode.tokens_per_s_per_device == predict(spec, healthy).decode.tokens_per_s_per_device


def test_replan_without_spares_is_refused_with_degrade_as_the_fix():
    with pytest.raises(PlanError) as e:
        _plan("failures.dies=[n00.gpu3]", deployment="r1_h200_tp8_agg")
    assert "1 failed" in str(e.value) and "failures.policy=degrade" in e.value.fix


def test_degrade_takes_the_groups_down_and_moves_their_experts_to_redundant_slots():
    """One decode NPU of r1_ep320 (two ranks of one expert each) under degrade: its two attention groups stop, and
    EPLB's re-placement on the 286 surviving routed ranks puts its experts into slots that held replicas: every
    expert is still served, two fewer are replicated."""
    spec, healthy = _plan()
    pool = healthy.pools_of("decode")[0]
    rank0 = next(d for d in healthy.dies if d.role == "decode" and d.rank == 0)
    fspec, failed = _plan(f"failures.dies=[{rank0.die}]", "failures.policy=degrade")
    fpool = failed.pools_of("decode")[0]
    assert fpool.failed_ranks == (0, 1)  # the whole NPU: both dies
    assert fpool.groups_down == 2 and fpool.alive == pytest.approx(318 / 320)
    after = fpool.placement
    assert after.ranks[0] == after.ranks[1] == () and after.lost_experts() == ()
    held = {e for r in after.ranks for e in r}
    assert set(pool.placement.ranks[0]) | set(pool.placement.ranks[1]) <= held and len(held) == 256
    replicated = lambda pl: sum(1 for n in pl.replicas if n > 1)  # noqa: E731
    assert replicated(after) == replicated(pool.placement) - 2
    a, b = predict(spec, healthy).decode, predict(fspec, failed).decode
    assert b.tokens_per_s_per_device == pytest.approx(a.tokens_per_s_per_device * 318 / 320, rel=0.01)


def test_more_failed_dies_than_the_redundancy():
    """33 decode dies (17 NPUs, 34 ranks) down, more than the 32 redundant slots: degrade loses the two least-loaded
    experts and lists them; replan takes 17 spare NPUs; refuse names the dies."""
    spec, healthy = _plan()
    dies = [d.die for d in healthy.dies if d.role == "decode"][:33]
    failures = "failures.dies=[" + ",".join(dies) + "]"
    _, degraded = _plan(failures, "failures.policy=degrade")
    pool = degraded.pools_of("decode")[0]
    assert len(pool.failed_ranks) == 34 and len(pool.placement.lost_experts()) == 2
    _, replanned = _plan(failures)
    assert not {d.die for d in replanned.dies} & set(dies) and replanned.devices_used == healthy.devices_used
    with pytest.raises(PlanError, match="failures.policy=refuse"):
        _plan(failures, "failures.policy=refuse")


def test_refuse_names_the_dies_it_would_lose():
    with pytest.raises(PlanError, match="failures.policy=refuse.*n12.npu0.d1"):
        _plan("failures.dies=[n12.npu0.d1]", "failures.policy=refuse")
    _plan("failures.dies=[n47.npu7.d1]", "failures.policy=refuse")  # an unused die: the plan stands


def test_plan_prints_healthy_and_failed_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "+deployment=r1_ep320", "failures.devices=[n12.npu0]", "failures.policy=degrade",
                 "--format", "json", "--no-record"]) == 0
    w = json.loads(capsys.readouterr().out)["prediction"]["failures"]
    assert w["policy"] == "degrade" and w["devices"] == ["n12.npu0"]
    assert w["failed"]["decode_tokens_per_s_per_device"] < w["healthy"]["decode_tokens_per_s_per_device"]
    assert w["blast_radius"]["decode[0]"]["groups_down"] == 2
    assert main(["plan", "+deployment=r1_ep320", "failures.devices=[n12.npu0]", "failures.policy=degrade",
                 "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "Failure what-if" in out and "attention groups serve nothing" in out


@pytest.mark.parametrize("override,needle", [
    ("failures.dies=[n99.npu0.d1]", "is not a die of cloudmatrix384"),
    ("failures.devices=[n00.npu0.d0]", "is not a device"),
    ("failures.policy=pray", "failures.policy"),
])
def test_bad_failures_exit_2(tmp_path, monkeypatch, capsys, override, needle):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "+deployment=r1_ep320", override, "--no-record"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# --- failures in time (cmtwin simulate) ------------------------------------------------------------------------

def _simulate_a_failure(die: str, *overrides):
    """r1_h200_disagg for 90 s (drained) with `die` failing at t = 40 s and recovering 20 s later: the simulator,
    its plan, after checking what every failure must show: every request completes (conservation), one failure
    with requests re-queued, and the failure and the recovery in the samples."""
    from cmtwin.sim.serving import Simulator

    spec, plan = _plan("sim.duration_s=90", "sim.warmup_s=10", "sim.drain=true", f"failures.events=[{{t_s:40,die:{die}}}]",
                       "failures.recovery_s=20", *overrides, deployment="r1_h200_disagg")
    rows = []
    sim = Simulator(spec, plan, sink=rows.extend)
    sim.run()
    c = sim.census()
    assert c["arrived"] == c["completed"] > 100
    [(t, failed, requeued)] = sim.failures_seen
    assert (t, failed) == (40.0, die) and requeued > 0
    names = {(round(t), n) for t, n, _ in rows if n.startswith("sim.")}
    assert (40, "sim.failure") in names and (60, "sim.recovery") in names
    return sim, plan


def test_a_die_failure_in_the_simulation_requeues_its_requests_and_recovers():
    """8 x H200 DP8 decode: one GPU's group fails, its requests go back to prefill with what they have generated,
    and the group serves again after recovery."""
    sim, plan = _simulate_a_failure("n01.gpu2", "workload.output_len=256")
    group = next(d.rank for d in plan.dies if d.die == "n01.gpu2")
    assert sim.decoders[0].rank_kv[group] < 2**62  # back in service


def test_a_prefill_die_failure_requeues_its_prompts_on_the_other_instances_and_recovers():
    """A die of prefill instance 0 fails and the whole instance stops (its EP group needs every rank): the prompts
    of its running forward and its queue go to the other instance and are computed again; the forward the
    failure cut never completes a request twice."""
    sim, plan = _simulate_a_failure("n00.gpu0", "topology.params.nodes=3", "prefill.instances=2",
                                    "workload.output_len=64")
    assert len(plan.pools_of("prefill")) == 2
    inst = sim.instances[0]
    assert not inst.failed and inst.epoch == 1 and sim.in_prefill == 0


def test_an_event_on_a_die_the_plan_does_not_use_is_refused():
    from cmtwin.errors import ConfigError
    from cmtwin.sim.serving import Simulator

    spec, plan = _plan("topology.params.nodes=3", "failures.events=[{t_s:5,die:n02.gpu7}]",
                       deployment="r1_h200_disagg")
    assert not any(d.die == "n02.gpu7" for d in plan.dies)
    with pytest.raises(ConfigError, match="not a die the plan uses"):
        Simulator(spec, plan).run()


def test_search_can_require_the_slo_with_one_die_down():
    """search.require_failures=1: a plan stays only if, with one attention group down and its requests spread over
    the instance's other groups (whose KV must hold them), TPOT still meets the SLO."""
    from cmtwin.search.run import search

    base = ["+deployment=r1_h200_disagg", "search.precisions=[fp8]", "search.simulate_top=0", "slo.tpot_ms=40",
            "search.mtp_draft_tokens=[0,1]", "search.decode_batches=[32,64,128]"]
    loose = search(load_spec(base)[0], workers=1)
    strict = search(load_spec([*base, "search.require_failures=1"])[0], workers=1)
    assert 0 < len(strict.candidates) < len(loose.candidates)
    for c in strict.candidates:
        assert c.decode.tpot_failed_ms is not None and c.tpot_ms <= c.decode.tpot_failed_ms <= 40
        assert c.decode.devices * c.decode.dies_per_device // c.decode.tp > 1  # a lone group has no one to absorb


# --- failed switches and sub-planes ---------------------------------------------------------------------------

def test_losing_one_of_the_seven_ub_subplanes_slows_collectives_by_the_remaining_planes():
    """CloudMatrix384's L2 UB tier has 7 sub-planes of 16 switch chips; losing l2.p3 leaves each node 6/7 of its
    uplink (7 x 16 x 224 -> 6 x 16 x 224 Gbps). A decode dispatch over EP320 (20 nodes, 16 ranks per node) then
    sends its off-node share through 21,504 / 16 = 1,344 Gbps instead of 1,568: by hand, the transfer part grows by
    (304/320 x bytes / 1,344) / (319/320 x bytes / 1,568); the fixed cost and latency do not change."""
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin import comm

    spec, plan = _plan()
    fspec, _ = _plan("failures.planes=[l2.p3]")
    f, f2 = fabric_for(spec), fabric_for(fspec)
    assert (f.uplink_gbps(0, "ub"), f2.uplink_gbps(0, "ub")) == (7 * 16 * 224, 6 * 16 * 224)
    ids = plan.die_ids("decode")
    nbytes = 100 * 7680
    c1, c2 = (comm.dispatch_combine(spec.hardware, fab, ids, kind="dispatch", send_copies=100, recv_copies=100,
                                    msg_bytes=7680) for fab in (f, f2))
    eff = comm._eff(spec.hardware, f, "dispatch", "ub")
    healthy = nbytes * 319 / 320 / (1568 / 8 * 1e9 * eff) * 1e6  # every peer but itself, through its 7 links
    failed = nbytes * (320 - 1 - 15) / 320 / (6 * 16 * 224 / 16 / 8 * 1e9 * eff) * 1e6
    assert c2.us - c1.us == pytest.approx(failed - healthy, rel=1e-6)


def test_a_partition_is_refused_naming_the_cut():
    with pytest.raises(Exception, match="partition plane ub"):
        _plan("failures.planes=[l2.p0,l2.p1,l2.p2,l2.p3,l2.p4,l2.p5,l2.p6]")
    with pytest.raises(Exception, match="names no switch"):
        _plan("failures.switches=[l9.p0.s0]")


def test_a_failed_link_slows_the_group_to_its_slowest_rank():
    """One of a decode die's 7 UB links down (a die in the middle of the group, not the first rank): that rank
    injects 6 x 224 Gbps instead of 7 x 224, and a dispatch over EP320 waits for it: by hand the transfer part
    grows by 7/6; every other rank's links, the fixed cost and the latency do not change."""
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin import comm

    spec, plan = _plan()
    ids = plan.die_ids("decode")
    mid = ids[len(ids) // 2]
    node = mid.split(".")[0]
    fspec, fplan = _plan(f"failures.links=[{mid}-{node}.l1s2]")
    f, f2 = fabric_for(spec), fabric_for(fspec)
    assert (f.injection_gbps(mid, "ub"), f2.injection_gbps(mid, "ub")) == (7 * 224, 6 * 224)
    assert f2.injection_gbps(ids[0], "ub") == 7 * 224
    assert [(r.die, r.role, r.rank) for r in fplan.dies] == [(r.die, r.role, r.rank) for r in plan.dies]  # no die lost
    c1, c2 = (comm.dispatch_combine(spec.hardware, fab, ids, kind="dispatch", send_copies=100, recv_copies=100,
                                    msg_bytes=7680) for fab in (f, f2))
    eff = comm._eff(spec.hardware, f, "dispatch", "ub")
    healthy = 100 * 7680 * 319 / 320 / (7 * 224 / 8 * 1e9 * eff) * 1e6
    assert c2.us - c1.us == pytest.approx(healthy * (7 / 6 - 1), rel=1e-6)
    assert predict(fspec, fplan).decode.tpot_ms > predict(spec, plan).decode.tpot_ms


@pytest.mark.parametrize("link, needle", [("frog", "names no link"), ("n00.npu0.d0-n00.l2s9", "names no link")])
def test_a_bad_link_is_exit_2_with_an_example(tmp_path, monkeypatch, capsys, link, needle):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "+deployment=r1_ep320", f"failures.links=[{link}]", "--no-record"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "failures.links" in err and "e.g. n00" in err and "Traceback" not in err


def test_a_gpu_whose_only_nic_link_fails_partitions_the_scale_out_plane():
    with pytest.raises(Exception, match="partition plane"):
        _plan("failures.links=[n00.gpu0-leaf0]", deployment="r1_h100_ep72")


def test_the_tui_map_marks_the_failed_devices():
    from cmtwin.tui.data import supernode_map

    _, replanned = _plan("failures.dies=[n12.npu0.d1]")
    _, degraded = _plan("failures.dies=[n12.npu0.d1]", "failures.policy=degrade")
    for plan in (replanned, degraded):
        grid = supernode_map(plan.to_dict())
        assert grid.cell(12, 0).role == "failed" and grid.role_counts()["failed"] == 1
        assert grid.cell(12, 1).role == "decode"


def test_the_blast_radius_names_what_a_fabric_failure_slows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for override, key, want in (("failures.planes=[l2.p3]", "nodes_uplink_cut", 48),
                                ("failures.links=[n20.npu3.d1-n20.l1s2]", "dies", 1)):
        assert main(["plan", "+deployment=r1_ep320", override, "--no-record", "--format", "json"]) == 0
        ub = json.loads(capsys.readouterr().out)["prediction"]["failures"]["links_slowed"]["ub"]
        assert ub[key] == want
        assert min(ub["worst_fraction"], ub["uplink_fraction"]) == pytest.approx(6 / 7)


def test_require_failures_checks_each_batchs_own_kv_with_one_group_down():
    """search.require_failures: a batch's TPOT with one group down is finite exactly when the batch the other groups
    then hold (ceil(b x groups / (groups - 1)) per group) passes the planner's memory checks, for small batches as
    for the largest (the KV of the largest fitting batch once stood in for every batch's, refusing small ones)."""
    import math

    from cmtwin.errors import CmtwinError
    from cmtwin.planner.plan import compile_plan
    from cmtwin.search.run import _decode_group, _init, _variant

    spec = load_spec(["+deployment=r1_h200_disagg", "search.precisions=[fp8]", "search.mtp_draft_tokens=[0]",
                      "search.decode_batches=[32,256,384,512]", "search.microbatches=[1]",
                      "search.require_failures=1", "search.decode_tp=[1]", "search.moe_tp=[1]"])[0]
    _init(spec)
    evals, _ = _decode_group((8, ("disagg",)))
    assert len({e.batch_per_group for e in evals}) >= 3
    finite = 0
    for e in evals:
        groups = e.devices * e.dies_per_device // (e.tp * e.pp)
        assert groups > 1
        b_f = math.ceil(e.batch_per_group * groups / (groups - 1))
        v = _variant(spec, precision=e.precision, mtp={"draft_tokens": e.mtp}, prefill={"instances": 0},
                     serving={"mode": "disagg", "concurrency": None},
                     decode={"devices": e.devices, "instances": 1, "tp": e.tp, "moe_tp": e.moe_tp, "ep": e.ep,
                             "pp": e.pp, "redundant_experts": e.redundant, "dedicated_shared_ranks": e.dedicated,
                             "batch_per_group": b_f},
                     slo={"tpot_ms": None, "ttft_ms": None})
        try:
            compile_plan(v)
            fits = True
        except CmtwinError:
            fits = False
        assert (e.tpot_failed_ms < float("inf")) == fits, (e.batch_per_group, b_f, e.tpot_failed_ms)
        finite += fits
    assert 0 < finite < len(evals)  # the largest batches cannot absorb a group, the smaller ones can
