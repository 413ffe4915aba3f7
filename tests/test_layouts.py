"""Parallel layouts: memory arithmetic and communication volumes against hand-computed values."""

from __future__ import annotations

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.errors import CmtwinError
from cmtwin.planner.plan import compile_plan
from cmtwin.topology.fabric import fabric_for
from cmtwin.twin.predict import predict

GIB = 2**30
# DeepSeek-V3 shapes, by hand from config.json
Q_A, KV_A, NORMS = 7168 * 1536, 7168 * 576, 1536 + 512
UP = 128 * (1536 * 192 + 512 * 256)  # q_b + kv_b
O = 128 * 128 * 7168
EXPERT = 3 * 7168 * 2048
KV_TOKEN = 61 * 576 * 2  # bf16 latent + rope key, 61 layers


def _plan(*overrides):
    spec, _ = load_spec(list(overrides))
    return spec, compile_plan(spec)


def test_tp16_ep16_memory_on_h100():
    spec, plan = _plan("+deployment=r1_h100_tp16")
    mem = plan.pools_of("decode")[0].memory_by_kind["routed"]
    per_layer = Q_A + KV_A + NORMS + (UP + O) / 16  # fp8: one byte per weight
    assert mem.weights_attention == pytest.approx(61 * per_layer)
    assert mem.weights_experts == pytest.approx(58 * (256 // 16 + 1) * EXPERT)  # 16 routed + the shared one
    assert mem.weights_embedding == pytest.approx(2 * 129280 * 7168 * 2 / 16)  # bf16, vocab-parallel
    # MLA's latent is not split by heads: every TP rank holds the whole group's cache
    assert mem.kv_cache == pytest.approx(8 * 16 * 1536 * KV_TOKEN)  # 8 requests per GPU x 16 TP ranks


def test_memory_fits_only_with_the_right_sharding():
    spec, plan = _plan("+deployment=r1_h100_tp16")
    assert plan.pools_of("decode")[0].memory.used < 80 * GIB
    with pytest.raises(CmtwinError, match="HBM overflow"):
        _plan("+deployment=r1_h100_tp16", "precision=bf16")  # twice the weight bytes
    with pytest.raises(CmtwinError, match=r"moe_tp \(1\) x decode.ep \(1\) x decode.pp \(1\) = 1 != "):
        _plan("+deployment=r1_h100_tp16", "decode.ep=1")  # experts unsharded


def test_moe_tp_halves_each_expert():
    spec, plan = _plan("+deployment=r1_h200_disagg", "decode.ep=4", "decode.moe_tp=2")
    mem = plan.pools_of("decode")[0].memory_by_kind["routed"]
    mtp_layers = 1
    assert mem.weights_experts == pytest.approx((58 + mtp_layers) * (256 // 4 + 1) * EXPERT / 2)


def test_pipeline_stage_holds_its_layers():
    spec, plan = _plan("+deployment=r1_h200_disagg", "decode.ep=4", "decode.pp=2")
    mem = plan.pools_of("decode")[0].memory_by_kind["routed"]
    # the busiest stage: the last one holds layers 31-61 (all MoE) and the MTP module
    assert mem.weights_experts == pytest.approx((30 + 1) * (256 // 4 + 1) * EXPERT)
    pred = predict(spec, plan)
    assert any(r.operator == "pp_send_recv" for r in pred.breakdown)


def test_tp_all_reduce_volume_and_time():
    from cmtwin.twin import comm

    spec, plan = _plan("+deployment=r1_h200_tp8_agg")
    fab = fabric_for(spec)
    ids = [d.die for d in plan.dies][:8]
    nbytes = 100 * 7168 * 2
    c = comm.all_reduce(spec.hardware, fab, ids, nbytes=nbytes)
    assert c.bytes == 2 * nbytes
    eff = spec.hardware.collectives["p2p"]["efficiency_scale_up"].value  # NVLink plays scale_up
    expected = 2 * nbytes * 7 / 8 / (eff * 3600 / 8 * 1e9) * 1e6  # 7 of 8 shares leave the GPU over NVLink
    lat = fab.route(ids[0], ids[-1], "nvlink").latency_us
    fixed = spec.hardware.collectives["all_reduce"]["fixed_us"].value  # NCCL's per-call cost inside a node
    assert c.us == pytest.approx(expected + 2 * lat + fixed)


@pytest.mark.parametrize("overrides,needle", [
    (["decode.tp=3"], "decode.tp (3) x decode.pp (1) must divide the devices per instance (8)"),
    (["decode.moe_tp=2"], "decode.moe_tp (2) x decode.ep (8) x decode.pp (1) = 16 != devices per instance (8)"),
    (["decode.tp=16"], "decode.tp (16) x decode.pp (1) must divide"),
    (["prefill.instances=1"], "serving.mode=agg serves prefill on the decode pool"),
])
def test_invalid_layouts_show_the_arithmetic(overrides, needle):
    with pytest.raises(CmtwinError) as err:
        _plan("+deployment=r1_h200_tp8_agg", *overrides)
    assert needle in str(err.value)


@pytest.mark.parametrize("deployment", ["r1_h200_tp8_agg", "r1_h200_disagg", "r1_h100_tp16", "r1_cm384_tp16"])
def test_new_deployments_predict_with_their_tp_communication(deployment):
    spec, plan = _plan(f"+deployment={deployment}")
    pred = predict(spec, plan).to_dict()
    assert pred["decode"]["tokens_per_s_per_device"] > 0 and pred["prefill"]["ttft_ms"] > 0
    assert "tp_all_reduce" in {r["operator"] for r in pred["breakdown"]}


def test_tp_attention_reads_the_whole_latent_on_every_rank():
    """TP8 vs DP8 attention at the same batch per GPU: the FLOPs per GPU are the same (8x the tokens on 1/8
    of the heads) but TP multiplies the KV each GPU reads by 8 (MLA), so its attention turns memory-bound."""
    tp, _ = _plan("+deployment=r1_h200_tp8_agg")
    dp, _ = _plan("+deployment=r1_h200_tp8_agg", "decode.tp=1")
    p_tp, p_dp = predict(tp, compile_plan(tp)), predict(dp, compile_plan(dp))
    att = lambda p: next(r for r in p.breakdown if r.operator == "mla_attention" and r.stream == "serial")
    assert att(p_tp).time_us > 1.5 * att(p_dp).time_us and att(p_tp).bound == "memory"
    assert not [r for r in p_dp.breakdown if r.operator == "tp_all_reduce"]


def test_fp8_kv_cache_halves_kv_memory_and_reads_and_fits_what_bf16_does_not():
    """DeepSeek-R1 on 16 x H100 (TP16 EP16, FP8 weights), 8,192/1,024 tokens at 77 concurrent requests: the BF16
    KV cache overflows HBM, an FP8 one (kv_cache_dtype=fp8) fits; at 2 requests both plan, FP8 reading half the KV."""
    from cmtwin.errors import PlanError
    from cmtwin.twin.predict import predict

    base = ["+deployment=r1_h100_tp16", "precision=fp8", "workload.prompt_len=8192", "workload.output_len=1024"]
    with pytest.raises(PlanError, match="HBM overflow"):
        _plan(*base, "serving.concurrency=77")
    spec, plan = _plan(*base, "serving.concurrency=77", "kv_cache_dtype=fp8")
    assert spec.prec.kv_cache == "fp8" and spec.prec.gemm == "fp8" and predict(spec, plan).decode.tpot_ms > 0
    kv = {}
    for dtype in ("bf16", "fp8"):
        s, p = _plan(*base, "serving.concurrency=2", f"kv_cache_dtype={dtype}")
        rows = predict(s, p).breakdown
        kv[dtype] = next(r.time_us for r in rows if r.phase == "decode" and r.operator == "mla_attention"
                         and r.stream != "mtp")
    assert kv["fp8"] < kv["bf16"]
