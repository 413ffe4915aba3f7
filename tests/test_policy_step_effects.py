"""Decode-step policies (speculation, layer_skip, model_routing, token_transform): presets, the one StepEffect
hook in the twin, and the breakdown rows it changes."""

from __future__ import annotations

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.errors import CmtwinError
from cmtwin.planner.plan import compile_plan
from cmtwin.twin.effects import IDENTITY, StepEffect, combined_effect
from cmtwin.policy.registry import registry

BASE = ["+deployment=r1_ep320"]


def _predict(*overrides):
    from cmtwin.twin.predict import predict

    spec, _ = load_spec([*BASE, *overrides])
    return spec, predict(spec, compile_plan(spec))


@pytest.fixture(scope="module")
def base():
    return _predict()[1]


def _rows(pred, op):
    return [r for r in pred.breakdown if r.phase == "decode" and r.operator == op]


@pytest.mark.parametrize("family,preset", [("speculation", "mtp"), ("speculation", "ppd"),
                                           ("layer_skip", "skipdecode"), ("model_routing", "duo"),
                                           ("token_transform", "tokenadapt"), ("token_transform", "flextok")])
def test_every_preset_composes_validates_and_reports(family, preset):
    spec, pred = _predict(f"+policies/{family}={preset}")
    assert spec.policies.build(family).name == preset
    assert pred.policies[family]["policy"] == preset
    assert preset in registry(family).names()


def test_no_policy_is_the_identity_effect(base):
    spec, _ = load_spec(BASE)
    assert combined_effect(spec) == IDENTITY and IDENTITY.is_identity
    assert not any(f in base.policies for f in ("speculation", "layer_skip", "model_routing", "token_transform"))


def test_mtp_preset_mirrors_the_mtp_keys(base):
    # r1_ep320 runs mtp.draft_tokens=1 at acceptance 0.7; the mtp preset with the same numbers gives the same step
    _, pred = _predict("+policies/speculation=mtp")
    assert pred.decode == base.decode
    _, pred2 = _predict("+policies/speculation=mtp", "policies.speculation.draft_tokens=2")
    assert pred2.decode.tokens_per_step == pytest.approx(1 + 0.7 + 0.49)
    assert pred2.decode.step_ms > base.decode.step_ms
    assert sum(r.calls for r in pred2.breakdown if r.phase == "decode" and r.stream == "mtp" and r.operator == "mtp_eh_proj") == 2


def test_ppd_sizes_its_tree_for_the_hardware_and_shows_the_verify_cost(base):
    _, pred = _predict("+policies/speculation=ppd")
    table = pred.policies["speculation"]["table"]
    best = max(table, key=lambda r: r["tokens_per_s_per_device"])
    assert best["selected"] and sum(r["selected"] for r in table) == 1
    tps = [r["tokens_per_step"] for r in table]
    assert tps == sorted(tps) and tps[0] > 1.0  # bigger trees accept more ...
    steps = [r["step_ms"] for r in table]
    assert steps == sorted(steps)  # ... and cost more to verify
    mem = [r["memory_overhead_mib"] for r in table]
    assert mem == sorted(mem)
    assert pred.decode.tokens_per_s_per_device == pytest.approx(best["tokens_per_s_per_device"], rel=1e-3)
    # wider verify: more attention time than the base step's 2 tokens per request
    assert _rows(pred, "mla_attention")[0].time_us > _rows(base, "mla_attention")[0].time_us
    assert not [r for r in pred.breakdown if r.phase == "decode" and r.stream == "mtp"]  # no separate draft pass


def test_ppd_tree_grows_greedily_by_path_probability():
    from cmtwin.policy.speculation import sparse_tree

    nodes = sparse_tree(6, (0.6, 0.45, 0.35), 3, 0.35)
    probs = [p for _, p in nodes]
    assert probs == sorted(probs, reverse=True)
    assert nodes[0] == ((0,), 0.6) and nodes[1][0] == (0, 0)
    paths = {p for p, _ in nodes}
    assert all(p[:-1] in paths for p in paths if len(p) > 1)  # a tree: every node's parent is in it
    assert all(len(p) <= 3 for p in paths)


def test_skipdecode_runs_fewer_layers_and_cuts_the_step(base):
    _, pred = _predict("+policies/layer_skip=skipdecode")
    eff = pred.policies["layer_skip"]
    assert eff["layer_fraction"] == pytest.approx(0.5) and eff["kv_bytes_scale"] == pytest.approx(0.5)
    # 61 layers -> 30 run (the 3 dense and 28 MoE layers are skipped); the per-layer rows show fewer calls
    assert _rows(pred, "mla_attention")[0].calls < _rows(base, "mla_attention")[0].calls
    assert pred.decode.step_ms < 0.6 * base.decode.step_ms
    assert pred.decode.tokens_per_s_per_device > 1.7 * base.decode.tokens_per_s_per_device


def test_skipdecode_budget_must_not_increase():
    with pytest.raises(CmtwinError, match="must not increase"):
        load_spec([*BASE, "+policies/layer_skip=skipdecode", "policies.layer_skip.min_layers_fraction=1.0",
                   "policies.layer_skip.max_layers_fraction=0.5"])
    pol = registry("layer_skip").build({"name": "skipdecode"})
    budgets = [pol.budget(t, 61) for t in range(0, 8000, 97)]
    assert budgets == sorted(budgets, reverse=True)


def test_duo_scales_the_ffn_work_and_adds_a_router(base):
    _, pred = _predict("+policies/model_routing=duo")
    assert pred.policies["model_routing"]["ffn_scale"] == pytest.approx(0.4 * 0.25 + 0.4)
    assert _rows(pred, "routed_experts_gate_up")[0].time_us < _rows(base, "routed_experts_gate_up")[0].time_us
    assert _rows(pred, "mlp_gate_up")[0].time_us < _rows(base, "mlp_gate_up")[0].time_us
    assert _rows(pred, "dispatch")[0].time_us < _rows(base, "dispatch")[0].time_us
    assert _rows(pred, "duo_router")
    with pytest.raises(CmtwinError, match="!= 1"):
        load_spec([*BASE, "+policies/model_routing=duo", "policies.model_routing.p_big=0.9"])


def test_tokenadapt_shortens_the_context_and_counts_text_tokens(base):
    _, pred = _predict("+policies/token_transform=tokenadapt")
    assert pred.decode.kv_len == round(4096 / 1.2)
    assert pred.decode.tokens_per_step == pytest.approx(base.decode.tokens_per_step * 1.2)
    assert _rows(pred, "mla_attention")[0].time_us < _rows(base, "mla_attention")[0].time_us
    assert pred.decode.tokens_per_s_per_device > base.decode.tokens_per_s_per_device


def test_flextok_image_tokens_lengthen_the_context_and_charge_the_decoder(base):
    _, pred = _predict("+policies/token_transform=flextok", "policies.token_transform.tokens_per_image=256",
                       "policies.token_transform.images_per_request=4",
                       "policies.token_transform.generated_image_share=0.1")
    assert pred.decode.kv_len == 4096 + 4 * 256
    assert _rows(pred, "flextok_decoder")[0].time_us > 0
    assert pred.decode.step_ms > base.decode.step_ms
    with pytest.raises(CmtwinError, match="tokens_per_image"):
        load_spec([*BASE, "+policies/token_transform=flextok", "policies.token_transform.tokens_per_image=257"])


def test_effects_compose_in_one_fold():
    a = StepEffect(layer_fraction=0.5, kv_len_scale=0.8)
    b = StepEffect(ffn_scale=0.5, verify_tokens=4, tokens_per_step=2.0)
    c = a.then(b)
    assert (c.layer_fraction, c.ffn_scale, c.verify_tokens, c.tokens_per_step, c.kv_len_scale) == (0.5, 0.5, 4, 2.0, 0.8)
    spec, pred = _predict("+policies/layer_skip=skipdecode", "+policies/token_transform=tokenadapt")
    assert set(pred.policies) >= {"layer_skip", "token_transform"}


def test_skipdecode_halves_decode_kv_bytes_per_token_in_the_plan():
    spec0, _ = load_spec(BASE)
    spec1, _ = load_spec([*BASE, "+policies/layer_skip=skipdecode"])
    m0 = compile_plan(spec0).pools_of("decode")[0]
    m1 = compile_plan(spec1).pools_of("decode")[0]
    d0, d1 = m0.to_dict()["memory_per_die"]["routed"], m1.to_dict()["memory_per_die"]["routed"]
    assert d1["kv_bytes_per_token"] == d0["kv_bytes_per_token"] // 2
    assert d1["kv_token_capacity"] > 1.9 * d0["kv_token_capacity"]


def test_r2r_charges_both_models_passes_and_memory(base):
    _, pred = _predict("+policies/model_routing=r2r")
    (t,) = pred.policies["model_routing"]["table"]
    assert t["large_tokens_per_call"] == 10 and t["large_requests_per_die"] == round(48 * 0.1)
    assert t["step_ms"] == pytest.approx(t["small_step_ms"] + t["large_step_ms"], abs=2e-3)
    assert 0 < t["small_weights_gib_per_die"] < t["large_weights_gib_per_die"]
    assert t["large_only_tokens_per_s_per_device"] == base.decode.tokens_per_s_per_device
    assert {r.stream for r in pred.breakdown} >= {"r2r_small", "r2r_large"}
    # escalating less often: a cheaper large-model pass per step
    _, lo = _predict("+policies/model_routing=r2r", "policies.model_routing.large_fraction=0.05")
    assert lo.policies["model_routing"]["table"][0]["large_step_ms"] < t["large_step_ms"]
