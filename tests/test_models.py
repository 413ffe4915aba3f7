"""The models people serve now (conf/model/*.yaml, issue 24): parameter counts against their published figures and
KV bytes per token against the hand computation from config.json, and one deployment each that plans."""

from __future__ import annotations

import pytest

from cmtwin.config.compose import load_group_option, load_spec
from cmtwin.model.arch import ModelSpec
from cmtwin.model.operators import kv_bytes_per_token, total_params
from cmtwin.model.precision import PRECISIONS
from cmtwin.planner.plan import compile_plan
from cmtwin.twin.predict import predict


def _model(name: str) -> ModelSpec:
    return ModelSpec.model_validate(load_group_option("model", name))


# name, published total parameters (model cards), tolerance (the cards round: "1T", "230B")
PUBLISHED = [
    ("qwen3_32b", 32.8e9, 0.01),
    ("llama31_8b", 8.03e9, 0.01),
    ("llama31_70b", 70.6e9, 0.01),
    ("qwen3_235b_a22b", 235e9, 0.01),
    ("kimi_k2", 1.0e12, 0.05),
    ("minimax_m2", 230e9, 0.02),
    ("deepseek_r1", 685e9, 0.01),  # 671B + the 14B MTP module
]


@pytest.mark.parametrize("name,published,tol", PUBLISHED)
def test_parameter_counts_match_the_model_cards(name, published, tol):
    assert total_params(_model(name)) == pytest.approx(published, rel=tol)


# KV bytes per token in BF16, by hand: GQA 2 (K and V) x kv_heads x head_dim x layers x 2 bytes; MLA (kv_lora +
# rope) x layers x 2 bytes
KV = [
    ("qwen3_32b", 2 * 8 * 128 * 64 * 2),
    ("llama31_8b", 2 * 8 * 128 * 32 * 2),
    ("llama31_70b", 2 * 8 * 128 * 80 * 2),
    ("minimax_m2", 2 * 8 * 128 * 62 * 2),
    ("kimi_k2", (512 + 64) * 61 * 2),
]


@pytest.mark.parametrize("name,expected", KV)
def test_kv_bytes_per_token_by_hand(name, expected):
    assert kv_bytes_per_token(_model(name), PRECISIONS["bf16"]) == expected
    assert kv_bytes_per_token(_model(name), PRECISIONS["bf16"].__class__(**{**PRECISIONS["bf16"].__dict__,
                                                                             "kv_cache": "fp8"})) == expected // 2


def test_active_parameters_of_the_moe_models():
    """Per token: attention, the dense layers, top-k routed + shared experts (the cards' 'activated'). The cards
    differ in whether the embeddings count: DeepSeek's 37B and Kimi's 32B include them, MiniMax's 10B does not."""
    from cmtwin.model.operators import weight_params

    for name, active, with_embeddings in (("deepseek_r1", 37e9, True), ("kimi_k2", 32e9, True),
                                          ("minimax_m2", 10e9, False)):
        m = _model(name)
        w = weight_params(m)
        per_moe = w.attention + w.norms + w.router + w.shared_expert + m.moe.experts_per_token * w.expert
        n = m.dense.layers * (w.attention + w.norms + w.dense_mlp) + m.moe_layers * per_moe
        n += (w.embedding + w.lm_head) if with_embeddings else 0
        assert n == pytest.approx(active, rel=0.03), name


@pytest.mark.parametrize("deployment", ["qwen3_235b_h200", "qwen3_32b_h100", "llama31_8b_h100", "llama31_70b_h100",
                                        "kimi_k2_h200", "minimax_m2_h100"])
def test_each_model_has_a_deployment_that_plans(deployment):
    spec, _ = load_spec([f"+deployment={deployment}"])
    pred = predict(spec, compile_plan(spec))
    assert pred.decode.tokens_per_s_per_device > 0 and pred.prefill.ttft_ms > 0
    assert any(r.phase == "decode" for r in pred.breakdown)
