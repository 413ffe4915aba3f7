"""Planner: the r1_ep320 layout, expert placement, memory budgets, and invariants over random deployments
(Hypothesis): every routed expert placed, replica counts add up, roles disjoint, no die over capacity, and
invalid combinations raise ConfigError/PlanError (never another exception)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, defaultdict
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmtwin.config.compose import load_spec
from cmtwin.config.schema import Spec
from cmtwin.errors import CmtwinError, ConfigError, PlanError, TopologyError
from cmtwin.planner.memory import GIB
from cmtwin.planner.placement import place_experts
from cmtwin.planner.plan import Plan, compile_plan
from cmtwin.topology.fabric import fabric_for
from cmtwin.twin.predict import predict

# examples per property: 20 in the suite (each compiles a random deployment); CMTWIN_FUZZ_EXAMPLES=N for a thorough run
PROPERTY = settings(max_examples=int(os.environ.get("CMTWIN_FUZZ_EXAMPLES", "20")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@cache
def _spec(*overrides: str) -> Spec:
    return load_spec(list(overrides))[0]


@cache
def _plan(*overrides: str) -> Plan:
    return compile_plan(_spec(*overrides))


# ------------------------------------------------------------------------------------------ the invariants


def check_plan(spec: Spec, plan: Plan) -> None:
    """Every invariant a compiled plan must keep; raises AssertionError naming the broken one."""
    fabric = fabric_for(spec)
    known = {d.id: d for d in fabric.dies()}
    dpd = spec.hardware.dies
    assert plan.dies_per_device == dpd == fabric.dies_per_device
    # roles disjoint: a die plays one role in one pool, and exists in the fabric
    ids = [r.die for r in plan.dies]
    assert len(ids) == len(set(ids)), "a die is used twice"
    assert set(ids) <= set(known), "a die that the topology does not have"
    assert {r.role for r in plan.dies} <= {"prefill", "decode"}
    by_pool: dict[tuple[str, int], list] = defaultdict(list)
    for r in plan.dies:
        by_pool[(r.role, r.instance)].append(r)
    assert set(by_pool) == {(p.role, p.instance) for p in plan.pools}
    assert len(plan.pools) == len(by_pool), "two pools with one (role, instance)"
    # a device (package) is never split between pools
    pool_of_device: dict[tuple[int, int], tuple[str, int]] = {}
    for r in plan.dies:
        d = known[r.die]
        assert pool_of_device.setdefault((d.node, d.device), (r.role, r.instance)) == (r.role, r.instance)
    # the sizes asked for
    p, dc = spec.prefill, spec.decode
    assert len(plan.pools_of("prefill")) == p.instances
    assert len(plan.pools_of("decode")) == (1 if dc.devices else 0)
    assert plan.devices_used == p.instances * p.devices_per_instance + dc.devices
    assert len(plan.dies) == plan.devices_used * dpd
    assert min(known[i].node for i in ids) >= spec.placement.first_node
    moe = spec.model.moe
    for pool in plan.pools:
        roles = sorted(by_pool[(pool.role, pool.instance)], key=lambda r: r.rank)
        cfg = p if pool.role == "prefill" else dc
        assert pool.dies == len(roles) == pool.devices * dpd
        assert [r.rank for r in roles] == list(range(pool.dies))
        lay = pool.layout
        assert (lay.ranks, lay.tp, lay.ep, lay.moe_tp, lay.pp) == (pool.dies, cfg.tp, cfg.ep, cfg.moe_tp, cfg.pp)
        assert pool.ep == cfg.ep and pool.tp == cfg.tp
        assert pool.dp * pool.tp * lay.pp == pool.dies
        assert all(r.tp_group == r.rank // pool.tp for r in roles)
        # no die over capacity
        assert pool.memory_by_kind
        for kind, mem in pool.memory_by_kind.items():
            assert mem.capacity == spec.hardware.memory_bytes
            assert mem.used <= mem.capacity, f"{pool.role}/{kind} over capacity"
            assert all(v >= 0 for _, v in mem.rows()), f"{pool.role}/{kind}: a negative part"
            assert mem.kv_token_capacity * mem.kv_bytes_per_token >= mem.kv_cache - mem.kv_bytes_per_token
        assert pool.memory.used == max(m.used for m in pool.memory_by_kind.values())
        if moe is None:
            assert all(r.experts == () and not r.shared for r in roles)
            continue
        pl = pool.placement
        routed, redundant, dedicated = moe.routed_experts, cfg.redundant_experts, cfg.dedicated_shared_ranks
        # replica counts: one copy per expert plus the redundant ones, summing to routed + redundant
        assert len(pl.replicas) == routed
        assert all(n >= 1 for n in pl.replicas)
        assert sum(pl.replicas) == routed + redundant
        assert sum(n - 1 for n in pl.replicas) == redundant
        assert max(pl.replicas) <= pool.ep - dedicated
        assert pl.dedicated_shared_ranks == dedicated
        # every pipeline stage holds the whole expert layout: ep ranks of moe_tp dies each
        stage = pool.dies // lay.pp
        assert stage == lay.moe_tp * pool.ep
        for s in range(lay.pp):
            members = roles[s * stage:(s + 1) * stage]
            assert [r.ep_rank for r in members] == [i // lay.moe_tp for i in range(stage)]
            for i in range(0, stage, lay.moe_tp):  # the moe_tp slices of one EP rank hold the same experts
                assert len({r.experts for r in members[i:i + lay.moe_tp]}) == 1
            heads = members[::lay.moe_tp]
            copies = Counter(e for r in heads for e in r.experts)
            assert set(copies) == set(range(routed)), "a routed expert is not placed"
            assert all(copies[e] == pl.replicas[e] for e in range(routed))
            for r in members:
                assert len(set(r.experts)) == len(r.experts), "two copies of an expert on one rank"
                if r.ep_rank < pool.ep - dedicated:
                    assert len(r.experts) == pl.routed_slots_per_rank
                    assert r.shared == (moe.shared_experts > 0 and dedicated == 0)
                else:
                    assert r.experts == () and r.shared
    if p.instances and dc.devices:  # KV routes: every decode rank is fed by exactly one prefill instance
        fed = Counter()
        for first, step, count in plan.kv_routes.values():
            fed.update(range(first, first + step * count, step))
        assert fed == Counter(range(dc.devices * dpd))


@pytest.mark.parametrize("deployment", ["r1_ep320", "r1_h800_ep144", "r1_h200_tp8_agg"])
def test_die_ids_are_the_roles_dies_in_rank_order(deployment):
    plan = _plan(f"+deployment={deployment}")
    for role in {r.role for r in plan.dies}:
        assert plan.die_ids(role) == tuple(r.die for r in plan.dies if r.role == role)
        for inst in {r.instance for r in plan.dies if r.role == role}:
            assert plan.die_ids(role, inst) == tuple(r.die for r in plan.dies if r.role == role and r.instance == inst)
    assert plan.die_ids("nobody") == ()


def test_check_plan_can_fail():
    spec, plan = _spec("+deployment=r1_h100_ep72"), _plan("+deployment=r1_h100_ep72")
    check_plan(spec, plan)
    twice = dataclasses.replace(plan, dies=plan.dies + plan.dies[:1])
    with pytest.raises(AssertionError, match="used twice"):
        check_plan(spec, twice)
    dropped = tuple(r._replace(experts=()) if r.role == "decode" and r.ep_rank == 0 else r for r in plan.dies)
    with pytest.raises(AssertionError):
        check_plan(spec, dataclasses.replace(plan, dies=dropped))


# ------------------------------------------------------------------------------------------ r1_ep320


def test_r1_ep320_layout():
    spec, plan = _spec("+deployment=r1_ep320"), _plan("+deployment=r1_ep320")
    check_plan(spec, plan)
    assert (plan.deployment, plan.model, plan.hardware, plan.topology) == (
        "r1_ep320", "deepseek_r1", "ascend_910c", "cloudmatrix384")
    assert plan.devices_total == 384 and plan.dies_per_device == 2 and plan.devices_used == 6 * 16 + 160
    # decode: 160 NPUs = 320 dies; EP320 = 256 routed + 32 redundant (one per die) + 32 shared-expert dies
    (dec,) = plan.pools_of("decode")
    assert (dec.devices, dec.dies, dec.ep, dec.tp, dec.dp) == (160, 320, 320, 1, 320)
    s = dec.placement.summary()
    assert s["routed_ranks"] == 288 and s["dedicated_shared_ranks"] == 32 and s["routed_slots_per_rank"] == 1
    assert s["routed_slots"] == 256 + 32 and s["replicated_experts"] == 32
    assert sorted(Counter(dec.placement.replicas).items()) == [(1, 224), (2, 32)]
    decode_dies = [r for r in plan.dies if r.role == "decode"]
    assert sum(1 for r in decode_dies if r.experts == () and r.shared) == 32
    assert sum(1 for r in decode_dies if len(r.experts) == 1 and not r.shared) == 288
    # prefill: 6 instances x 16 NPUs, EP32, 10 experts per die (9 routed slots + the shared expert)
    pre = plan.pools_of("prefill")
    assert len(pre) == 6
    for i, p in enumerate(pre):
        assert (p.instance, p.devices, p.dies, p.ep, p.tp, p.dp) == (i, 16, 32, 32, 16, 2)
        assert p.layout.tp_mode == "sp_tp_sp" and (p.layout.moe_tp, p.layout.pp) == (1, 1)
        assert p.placement.routed_slots_per_rank == 9 and p.placement.shared_on_every_rank
        assert p.placement.experts_on_rank(0) == 10
    # the pools sit on disjoint nodes: prefill on nodes 0-11, decode on 12-31
    assert set().union(*(p.nodes for p in pre)) == set(range(12))
    assert set(dec.nodes) == set(range(12, 32))
    # caching pool over every node's CPUs
    assert plan.caching is not None and plan.caching.cpus == 192 and plan.caching.nodes == 48
    assert plan.caching.blocks > 0 and plan.caching.capacity_bytes > 0
    # memory per decode die within 64 GB, with weights, KV cache and buffers all present
    for mem in dec.memory_by_kind.values():
        assert mem.capacity == 64 * GIB
        assert 0 < mem.used <= 64 * GIB
        assert mem.weights_experts > 0 and mem.kv_cache > 0 and mem.dispatch_buffers > 0
    assert set(dec.memory_by_kind) == {"routed", "shared"}


def test_plan_to_dict_is_json_ready():
    import json

    d = _plan("+deployment=r1_ep320").to_dict()
    again = json.loads(json.dumps(d, allow_nan=False))
    assert again == d
    assert len(d["dies"]) == 512 and d["devices_used"] == 256
    assert [p["role"] for p in d["pools"]] == ["prefill"] * 6 + ["decode"]
    assert d["pools"][-1]["memory_per_die"]["routed"]["used_gib"] <= 64
    assert "dies" not in _plan("+deployment=r1_ep320").to_dict(with_dies=False)


@pytest.mark.parametrize(
    ("deployment", "decode", "slots"),
    [("r1_h100_ep72", (72, 72, 72), 4), ("r1_h800_ep144", (144, 144, 144), 2)],
)
def test_gpu_deployments(deployment, decode, slots):
    spec, plan = _spec(f"+deployment={deployment}"), _plan(f"+deployment={deployment}")
    check_plan(spec, plan)
    (dec,) = plan.pools_of("decode")
    assert (dec.devices, dec.dies, dec.ep) == decode
    assert dec.placement.routed_slots_per_rank == slots  # (256 + 32) / ep
    assert dec.placement.shared_on_every_rank
    assert plan.dies_per_device == 1 and plan.caching is None
    (pre,) = plan.pools_of("prefill")
    assert (pre.devices, pre.ep, pre.placement.routed_slots_per_rank) == (32, 32, 9)


def test_plan_hash_is_the_spec_identity():
    a = _plan("+deployment=r1_ep320")
    assert compile_plan(_spec("+deployment=r1_ep320")).plan_hash == a.plan_hash
    assert _plan("+deployment=r1_ep320", "decode.batch_per_device=64").plan_hash != a.plan_hash
    assert re.fullmatch(r"[0-9a-f]{16}", a.plan_hash)


# ------------------------------------------------------------------------------------------ placement


def test_placement_spreads_replicas_over_hot_experts():
    model = _spec("+deployment=r1_ep320").model
    pl = place_experts(model, phase="decode", ep=64, redundant=64, dedicated_shared=0, balance="default",
                       load_cv=1.0)
    hot = sorted(range(256), key=lambda e: -pl.load[e])
    assert min(pl.replicas[e] for e in hot[:16]) >= 2, "the hottest experts get the replicas"
    assert all(pl.replicas[e] == 1 for e in hot[-64:])
    flat = place_experts(model, phase="decode", ep=64, redundant=64, dedicated_shared=0, balance="perfect")
    assert pl.summary()["max_over_mean_rank_load"] >= flat.summary()["max_over_mean_rank_load"] >= 1.0


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        (dict(ep=300, redundant=0, dedicated_shared=0),
         ["routed (256) + redundant (0) = 256 expert slots do not divide over decode.ep (300)"]),
        (dict(ep=320, redundant=1, dedicated_shared=32),
         ["decode.ep (320) - dedicated_shared_ranks (32) = 288 routed ranks", "257"]),
        (dict(ep=32, redundant=0, dedicated_shared=32), ["= 0 routed ranks"]),
        (dict(ep=2, redundant=768, dedicated_shared=0), ["redundant_experts (768)"]),
    ],
)
def test_placement_errors_carry_the_arithmetic(kwargs, needles):
    model = _spec("+deployment=r1_ep320").model
    with pytest.raises(PlanError) as info:
        place_experts(model, phase="decode", balance="default", **kwargs)
    for n in needles:
        assert n in str(info.value)


def test_every_rank_holds_every_expert_when_redundancy_fills_them():
    # the limit case: each of 4 ranks holds all 256 experts, whatever the skew
    model = _spec("+deployment=r1_ep320").model
    for cv in (0.0, 1.0, 3.0):
        pl = place_experts(model, phase="decode", ep=4, redundant=768, dedicated_shared=0, balance="default",
                           load_cv=cv)
        assert pl.replicas == (4,) * 256
        assert all(r == tuple(range(256)) for r in pl.ranks)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_skewed_load_with_many_replicas_never_crashes(cv):
    # used to give a hot expert more replicas than there are ranks -> IndexError (exit 1)
    model = _spec("+deployment=r1_ep320").model
    for ep, redundant in ((2, 22), (8, 144), (32, 256), (5, 239)):
        pl = place_experts(model, phase="decode", ep=ep, redundant=redundant, dedicated_shared=0,
                           balance="default", load_cv=cv)
        assert max(pl.replicas) <= ep and sum(pl.replicas) == 256 + redundant
        assert Counter(e for r in pl.ranks for e in r) == Counter(dict(enumerate(pl.replicas)))


# ------------------------------------------------------------------------------------------ memory


def test_hbm_overflow_names_hbm_and_the_breakdown():
    spec = _spec("+deployment=r1_ep320", "decode.batch_per_device=4000")
    with pytest.raises(PlanError) as info:
        compile_plan(spec)
    msg = str(info.value)
    m = re.search(r"HBM overflow on a decode die \(routed\): needs ([\d.]+) GiB but one ascend_910c die has 64 GiB", msg)
    assert m, msg
    breakdown = msg.split("Breakdown (GiB): ")[1].split(". Fix")[0]
    parts = {k: float(v) for k, v in re.findall(r"(.+?) (\d+\.\d+)(?:, |\.?$)", breakdown)}
    assert {"KV cache (batch)", "weights: experts", "reserve"} <= set(parts)
    assert sum(parts.values()) == pytest.approx(float(m.group(1)), abs=0.05 * len(parts))
    assert "decode.batch_per_device" in msg and "\n" not in msg
    # prefill overflows too: BF16 weights on 64 GB dies
    with pytest.raises(PlanError, match=r"HBM overflow on a prefill die .*weights: experts 48\.40"):
        compile_plan(_spec("+deployment=r1_ep320", "precision=bf16"))


def test_kv_capacity_shrinks_as_the_batch_grows():
    small = _plan("+deployment=r1_ep320", "decode.batch_per_device=32").pools_of("decode")[0].memory
    big = _plan("+deployment=r1_ep320", "decode.batch_per_device=128").pools_of("decode")[0].memory
    assert big.kv_cache == pytest.approx(4 * small.kv_cache)
    assert big.used > small.used and big.weights == small.weights


@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [
        (["placement.first_node=47"], PlanError, "more devices than the topology has"),
        (["prefill.instances=0", "decode.devices=0"], PlanError, "neither a prefill nor a decode pool"),
        (["topology=single_host"], PlanError, "dies per device"),
        (["model=qwen3_235b_a22b", "mtp.draft_tokens=0"], PlanError, "no shared expert"),
        (["decode.redundant_experts=1"], PlanError, "EP cannot hold the experts"),
    ],
)
def test_infeasible_deployments_are_plan_errors(overrides, error, needle):
    with pytest.raises(error, match=re.escape(needle)):
        compile_plan(load_spec(["+deployment=r1_ep320", *overrides])[0])


# ------------------------------------------------------------------------------------------ properties

BASES = {
    # name: (dies per device, devices per node, the deployment's node count; None: the fixed CloudMatrix384)
    "r1_ep320": (2, 8, None),
    "r1_h100_ep72": (1, 8, 13),
    "r1_h800_ep144": (1, 8, 22),
}
CM384_DEVICES = 384
GPU_MAX_NODES = 32  # gpu_cluster's leaf switches have 64 ports: one per node plus one per spine


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def valid_deployments(draw) -> list[str]:
    """Random deployments that must compile: r1_ep320 or a GPU deployment with its pools resized and
    re-laid-out (ranks = moe_tp x ep x pp; attention tp x dp x pp)."""
    base = draw(st.sampled_from(sorted(BASES)))
    dpd, per_node, nodes = BASES[base]
    cap = CM384_DEVICES if nodes is None else GPU_MAX_NODES * per_node  # devices
    out = [f"+deployment={base}"]
    routed = 256
    # decode: R routed ranks x `slots` experts each (= routed + redundant), plus dedicated shared-expert ranks
    decode_devices = 0
    if draw(st.integers(0, 4)):
        slots = draw(st.integers(1, 5))
        lo = -(-routed // slots)
        dedicated = draw(st.sampled_from([0, 0, 8, 16, 32]))
        if lo + dedicated > cap * dpd:
            dedicated = 0
        routed_ranks = draw(st.integers(lo, min(lo + 48, cap * dpd - dedicated)))
        redundant = routed_ranks * slots - routed
        ep = routed_ranks + dedicated
        splits = [(1, 1)] + ([(2, 1), (1, 2)] if 2 * ep <= cap * dpd else [])
        if ep % dpd:
            splits = splits[1:]
        moe_tp, pp = draw(st.sampled_from(splits))
        ranks = ep * moe_tp * pp
        decode_devices = ranks // dpd
        tp = draw(st.sampled_from([t for t in (1, 2) if ranks % (t * pp) == 0]))
        batch_per_die = draw(st.integers(1, (40 if dpd == 2 else 48) // tp))
        out += [f"decode.devices={decode_devices}", f"decode.ep={ep}", f"decode.moe_tp={moe_tp}", f"decode.pp={pp}",
                f"decode.tp={tp}", f"decode.redundant_experts={redundant}",
                f"decode.dedicated_shared_ranks={dedicated}", f"decode.batch_per_device={batch_per_die * dpd}",
                f"decode.microbatches={draw(st.sampled_from([1, 2]))}"]
    else:
        out += ["decode.devices=0"]
    # prefill: instances of `dpi` devices split as moe_tp x ep x pp (ep >= 16), an attention TP stage
    dpi = draw(st.sampled_from([16, 32] if dpd == 2 else [32, 64]))
    room = (cap - decode_devices) // dpi
    instances = min(draw(st.integers(0 if decode_devices else 1, 3)), room)
    p_ranks = dpi * dpd
    moe_tp, pp = draw(st.sampled_from([(1, 1), (2, 1), (1, 2)]))
    p_ep = p_ranks // (moe_tp * pp)
    p_slots = draw(st.integers(-(-routed // p_ep), -(-routed // p_ep) + 1))
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8, 16) if p_ranks % (t * pp) == 0]))
    out += [f"prefill.instances={instances}", f"prefill.devices_per_instance={dpi}", f"prefill.ep={p_ep}",
            f"prefill.moe_tp={moe_tp}", f"prefill.pp={pp}", f"prefill.tp={tp}",
            f"prefill.tp_mode={draw(st.sampled_from(['allreduce', 'sp_tp_sp']))}",
            f"prefill.redundant_experts={p_ep * p_slots - routed}",
            f"prefill.tokens_per_device={draw(st.sampled_from([1024, 2048, 4096, 8192])) * dpd}",
            f"prefill.microbatches={draw(st.sampled_from([1, 2]))}"]
    used = instances * dpi + decode_devices
    if nodes is not None:  # the deployment's own cluster size when the pools fit it, else the largest
        nodes = draw(st.sampled_from([nodes, GPU_MAX_NODES])) if used <= nodes * per_node else GPU_MAX_NODES
        out += [f"topology.params.nodes={nodes}"]
        free_nodes = nodes - -(-used // per_node)
    else:
        free_nodes = (CM384_DEVICES - used) // per_node
    out += [f"placement.first_node={draw(st.integers(0, free_nodes))}",
            f"placement.balance={draw(st.sampled_from(['default', 'perfect']))}",
            f"placement.expert_load_cv={draw(st.sampled_from([0.0, 0.3, 1.0, 2.0]))}",
            f"mtp.draft_tokens={draw(st.integers(0, 2))}",
            f"mtp.acceptance={draw(st.sampled_from([0.0, 0.5, 0.85, 1.0]))}",
            f"workload={draw(st.sampled_from(['chat_1k', 'chat_4k']))}"]
    return out


@PROPERTY
@given(valid_deployments())
def test_random_valid_deployments_keep_the_invariants(overrides):
    spec, _ = load_spec(overrides)
    plan = compile_plan(spec)
    check_plan(spec, plan)
    pred = predict(spec, plan).to_dict()
    for phase in ("prefill", "decode"):
        if plan.pools_of(phase):
            assert pred[phase]["tokens_per_s_per_device"] > 0


INT_KEYS = {
    "decode.devices": st.integers(0, 400),
    "decode.ep": st.integers(-1, 700),
    "decode.redundant_experts": st.integers(-1, 1200),
    "decode.dedicated_shared_ranks": st.integers(0, 400),
    "decode.batch_per_device": st.integers(-1, 5000),
    "decode.max_tokens_per_rank": st.integers(0, 4096),
    "prefill.instances": st.integers(-1, 12),
    "prefill.devices_per_instance": st.integers(0, 64),
    "prefill.ep": st.integers(0, 130),
    "prefill.tp": st.integers(0, 33),
    "prefill.moe_tp": st.integers(0, 8),
    "prefill.pp": st.integers(0, 8),
    "decode.tp": st.integers(0, 8),
    "decode.moe_tp": st.integers(0, 8),
    "decode.pp": st.integers(0, 8),
    "prefill.redundant_experts": st.integers(0, 1200),
    "prefill.dedicated_shared_ranks": st.integers(0, 64),
    "prefill.tokens_per_device": st.integers(0, 70000),
    "mtp.draft_tokens": st.integers(-1, 5),
    "placement.first_node": st.integers(0, 60),
    "workload.kv_len": st.integers(0, 300000),
    "memory.activation_tokens": st.integers(0, 100000),
}
OTHER_KEYS = {
    "placement.expert_load_cv": st.floats(-0.5, 4.0, allow_nan=False).map(lambda x: round(x, 3)),
    "mtp.acceptance": st.floats(-0.5, 1.5, allow_nan=False).map(lambda x: round(x, 3)),
    "precision": st.sampled_from(["int8", "fp8", "bf16", "fp4"]),
    "model": st.sampled_from(["deepseek_r1", "qwen3_235b_a22b", "llama3_70b"]),
    "hardware": st.sampled_from(["ascend_910c", "h100_sxm", "h800_sxm", "h200_sxm", "kunpeng_920"]),
    "workload": st.sampled_from(["chat_1k", "chat_4k", "long_128k"]),
    "placement.balance": st.sampled_from(["default", "perfect", "worst"]),
    "prefill.tp_mode": st.sampled_from(["allreduce", "sp_tp_sp", "ring"]),
    "decode.tp_mode": st.sampled_from(["allreduce", "sp_tp_sp"]),
}
ALL_KEYS = {**INT_KEYS, **OTHER_KEYS}


@st.composite
def arbitrary_overrides(draw) -> list[str]:
    base = draw(st.sampled_from(sorted(BASES)))
    keys = draw(st.lists(st.sampled_from(sorted(ALL_KEYS)), min_size=1, max_size=5, unique=True))
    return [f"+deployment={base}"] + [f"{k}={draw(ALL_KEYS[k])}" for k in keys]


@PROPERTY
@given(arbitrary_overrides())
def test_arbitrary_overrides_compile_or_raise_a_user_error(overrides):
    try:
        spec, _ = load_spec(overrides)
        plan = compile_plan(spec)
        prediction = predict(spec, plan)
    except (ConfigError, PlanError, TopologyError) as exc:
        msg = str(exc)
        assert msg and "\n" not in msg.strip() and "Traceback" not in msg
        return
    check_plan(spec, plan)
    assert prediction.to_dict()["bottleneck"]


def test_user_errors_are_cmtwin_errors_with_exit_code_2():
    for cls in (ConfigError, PlanError, TopologyError):
        assert issubclass(cls, CmtwinError) and cls("x").exit_code == 2
