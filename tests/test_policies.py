"""Policies: registries, presets through Hydra, and sequence-parallel attention (twin and exact kernels)."""

from __future__ import annotations

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.errors import CmtwinError, ConfigError
from cmtwin.planner.plan import compile_plan
from cmtwin.topology.fabric import fabric_for
from cmtwin.policy.registry import Registry, registry

LONG = ["+deployment=r1_ep320", "workload=long_128k", "decode.batch_per_device=4"]


def test_registry_refuses_duplicates_and_lists_valid_names():
    reg = Registry("demo")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(ConfigError, match="Valid: ring, tokenring"):
        registry("sp_attention").get("ulysses")


def test_presets_select_through_hydra_and_validate_their_parameters():
    spec, _ = load_spec([*LONG, "+policies/sp_attention=tokenring"])
    assert spec.policies.build("sp_attention").name == "tokenring"
    with pytest.raises(CmtwinError, match="degrees"):
        load_spec([*LONG, "+policies/sp_attention=ring", "policies.sp_attention.degrees=[0]"])
    with pytest.raises(CmtwinError, match="Valid: ring, tokenring"):
        load_spec([*LONG, "+policies/sp_attention=ring", "policies.sp_attention.name=ulysses"])


def _sp_table(*overrides):
    from cmtwin.twin.predict import predict

    spec, _ = load_spec([*LONG, "+policies/sp_attention=tokenring", *overrides])
    return predict(spec, compile_plan(spec)).policies["sp_attention"]


def test_plan_reports_both_policies_for_sp_degrees_4_to_32():
    table = _sp_table()
    assert {(r["policy"], r["degree"]) for r in table} == {(p, n) for p in ("ring", "tokenring") for n in (4, 8, 16, 32)}
    for n in (4, 8, 16, 32):
        ring = next(r for r in table if r["policy"] == "ring" and r["degree"] == n)
        tok = next(r for r in table if r["policy"] == "tokenring" and r["degree"] == n)
        # MLA in MHA form: a K/V block (192 + 128 per head) outweighs a Q block (192) or an out block (128)
        assert tok["bytes_per_step"] < ring["bytes_per_step"]
        # ... and on the UB the step transfer follows the volume
        assert tok["block_comm_us"] / ring["block_comm_us"] == pytest.approx(
            tok["bytes_per_step"] / ring["bytes_per_step"], rel=0.05)
        assert tok["prefill_ms"] <= ring["prefill_ms"]
    # more SP ranks: less attention time per prompt
    times = [next(r for r in table if r["policy"] == "tokenring" and r["degree"] == n)["attention_ms"] for n in (4, 8, 16, 32)]
    assert times == sorted(times, reverse=True)


def test_with_grouped_query_attention_sending_q_costs_more():
    from cmtwin.policy.sp_attention import RingAttention, SPParams, TokenRing

    spec, _ = load_spec(["+deployment=r1_h100_ep72", "model=llama3_70b", "mtp.draft_tokens=0"])
    m = spec.model  # 64 query heads, 8 KV heads
    assert TokenRing(SPParams()).step_bytes(m, 1024) > RingAttention(SPParams()).step_bytes(m, 1024)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("schedule", ["ring", "tokenring"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_blockwise_lse_merge_matches_full_attention(schedule, causal, ranks):
    from cmtwin.executor.blockwise import full_attention, sp_attention

    g = torch.Generator().manual_seed(ranks)
    q, k, v = (torch.randn(3, 64, 16, generator=g, dtype=torch.float64) for _ in range(3))
    got = sp_attention(q, k, v, ranks=ranks, causal=causal, schedule=schedule)
    want = full_attention(q, k, v, causal=causal)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_sp_attention_on_an_aggregated_deployment_is_bad_input_not_a_crash():
    from cmtwin.twin.predict import predict

    spec, _ = load_spec(["+deployment=r1_h100_tp16", "+policies/sp_attention=tokenring"])
    with pytest.raises(ConfigError, match="no prefill pool"):
        predict(spec, compile_plan(spec))
