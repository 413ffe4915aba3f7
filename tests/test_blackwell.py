"""Blackwell: the B200 / GB200 / GB300 profiles, the NVL72 rack topology, FP4 (NVFP4) and the r1_gb200_nvl72
deployment (docs/blackwell.md)."""

from __future__ import annotations

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.model.precision import BYTES, PRECISIONS
from cmtwin.planner.plan import compile_plan
from cmtwin.topology.fabric import fabric_for
from cmtwin.twin.predict import predict


def _plan(*overrides):
    spec, _ = load_spec(["+deployment=r1_gb200_nvl72", *overrides])
    return spec, compile_plan(spec)


def test_nvl72_is_one_nvlink_domain_of_72_gpus():
    spec, plan = _plan()
    fab = fabric_for(spec)
    assert len(fab.dies()) == 72 and fab.devices_per_node == 72
    assert plan.pools_of("decode")[0].dies == 48 and len(plan.pools_of("prefill")) == 3
    # EP48 never leaves the rack: dispatch uses the scale-up fixed cost and NVLink 5's Hybrid-EP rate
    pred = predict(spec, plan)
    assert pred.decode.tokens_per_s_per_device > 0 and pred.prefill.ttft_ms > 0
    assert {"dispatch", "combine"} <= {r.operator for r in pred.breakdown if r.phase == "decode"}


def test_fp4_halves_gemm_bytes_and_runs_only_where_the_hardware_has_it():
    assert BYTES["fp4"] == pytest.approx(4.5 / 8)  # NVFP4: 4 bits + an 8-bit scale per 16 values
    assert PRECISIONS["fp4"].gemm == "fp4" and PRECISIONS["fp4"].dispatch == "fp8"
    fp8_spec, fp8 = _plan()
    fp4_spec, fp4 = _plan("precision=fp4")
    w8 = fp8.pools_of("decode")[0].memory
    w4 = fp4.pools_of("decode")[0].memory
    assert w4.used < w8.used  # expert weights at 0.5625 instead of 1 byte per value
    assert predict(fp4_spec, fp4).decode.tpot_ms < predict(fp8_spec, fp8).decode.tpot_ms
    from cmtwin.errors import ConfigError

    for dep in ("r1_h200_disagg", "r1_ep320"):
        with pytest.raises(ConfigError, match="precision=fp4 needs fp4"):
            load_spec([f"+deployment={dep}", "precision=fp4"])
    with pytest.raises(ConfigError, match="needs int8"):  # Blackwell Ultra dropped INT8
        load_spec(["+deployment=r1_gb200_nvl72", "hardware=gb300", "topology=gb300_nvl72", "precision=int8"])


@pytest.mark.parametrize("hardware,topology", [("b200_sxm", "b200_cluster"), ("gb300", "gb300_nvl72")])
def test_the_other_blackwell_systems_plan(hardware, topology):
    extra = ["prefill.instances=0", "decode.devices=8", "decode.ep=8", "decode.redundant_experts=0"]
    spec, plan = _plan(f"hardware={hardware}", f"topology={topology}", *extra)
    assert predict(spec, plan).decode.tokens_per_s_per_device > 0


def test_search_explores_wide_ep_inside_the_rack():
    from cmtwin.search.run import search

    spec, _ = load_spec(["+deployment=r1_gb200_nvl72", "search.precisions=[fp8]", "search.mtp_draft_tokens=[0]",
                         "search.decode_devices=[24,48,72]", "search.decode_batches=[64,256]", "search.modes=[agg]",
                         "search.simulate_top=0", "search.decode_tp=[1]", "search.moe_tp=[1]"])
    res = search(spec, workers=1)
    assert max(c.decode.ep for c in res.candidates) == 72


def test_the_grace_cpus_back_a_caching_pool():
    """36 Grace CPUs per rack, on NVLink by C2C (450 GB/s one way); with caching.enabled their LPDDR5X holds the KV
    pool (dram_fraction of 36 x 440 GiB), and a prefix-heavy simulation fetches from it."""
    from cmtwin.sim.serving import Simulator

    spec, plan = _plan("caching.enabled=true")
    fab = fabric_for(spec)
    cpus = list(fab.cpus())
    assert len(cpus) == 36 and spec.host.name == "grace"
    assert fab.injection_gbps(cpus[0].id, "nvlink") == 3600
    pool = plan.caching
    assert pool.cpus == 36
    assert pool.capacity_bytes == pytest.approx(36 * 440 * 2**30 * spec.caching.dram_fraction)
    spec, plan = _plan("caching.enabled=true", "workload=offline_prefix", "sim.duration_s=30")
    res = Simulator(spec, plan).run()
    assert res.cache_hit_ratio > 0.5
