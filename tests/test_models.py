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
    ("gpt_oss_120b", 116.83e9, 0.005),  # sinks and QKV biases left out: 0.03 % of it
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
    ("gpt_oss_120b", 2 * 8 * 64 * 36 * 2),  # every token kept (no context given): the bound
]


@pytest.mark.parametrize("name,expected", KV)
def test_kv_bytes_per_token_by_hand(name, expected):
    assert kv_bytes_per_token(_model(name), PRECISIONS["bf16"]) == expected
    assert kv_bytes_per_token(_model(name), PRECISIONS["bf16"].__class__(**{**PRECISIONS["bf16"].__dict__,
                                                                             "kv_cache": "fp8"})) == expected // 2


def test_active_parameters_of_the_moe_models():
    """Per token: attention, the dense layers, top-k routed + shared experts (the cards' 'activated'). The cards
    differ in what else counts: DeepSeek's 37B and Kimi's 32B include embedding and LM head, MiniMax's 10B neither,
    gpt-oss's 5.1B the LM head (unembedding) only."""
    from cmtwin.model.operators import weight_params

    for name, active, counted in (("deepseek_r1", 37e9, "both"), ("kimi_k2", 32e9, "both"),
                                  ("minimax_m2", 10e9, "none"), ("gpt_oss_120b", 5.1e9, "head")):
        m = _model(name)
        w = weight_params(m)
        per_moe = w.attention + w.norms + w.router + w.shared_expert + m.moe.experts_per_token * w.expert
        n = m.dense.layers * (w.attention + w.norms + w.dense_mlp) + m.moe_layers * per_moe
        n += {"both": w.embedding + w.lm_head, "head": w.lm_head, "none": 0}[counted]
        assert n == pytest.approx(active, rel=0.03), name


def test_sliding_window_layers_keep_and_read_only_the_window():
    """gpt-oss: 18 of 36 layers attend to the last 128 tokens. Per request of context 1,536 the KV is 18 full layers
    x 1,536 + 18 x 128 tokens; decode attention reads the same; causal prefill of a 4,096 prompt: a sliding layer's
    query sees at most 128 tokens."""
    from cmtwin.model.operators import attention_ops

    m = _model("gpt_oss_120b")
    per_layer_token = 2 * 8 * 64 * 2
    assert kv_bytes_per_token(m, PRECISIONS["bf16"], context=1536) == pytest.approx(
        (18 * 1536 + 18 * 128) * per_layer_token / 1536, abs=1)
    assert m.attention_context(1536, prefill=False) == (18 * 1536 + 18 * 128) / 36
    assert m.attention_context(4096, prefill=True) == (18 * 4096 + 18 * 256) / 36
    assert m.attention_context(100, prefill=False) == 100  # shorter than the window: as a full layer
    full = _model("llama31_8b")
    assert full.attention_context(4096, prefill=False) == 4096
    decode = next(o for o in attention_ops(m, PRECISIONS["bf16"], tokens=1, requests=1, kv_len=1536)
                  if o.name == "gqa_attention")
    assert decode.kv_bytes == pytest.approx(1 * 832 * 2 * 8 * 64 * 2)


def test_mxfp4_experts_are_weight_only():
    """gpt-oss's experts stored in MXFP4 (4.25 bits) and computed in BF16 (Hopper has no FP4 tensor cores)."""
    from cmtwin.model.operators import expert_ops

    m = _model("gpt_oss_120b")
    up = expert_ops(m, PRECISIONS["mxfp4"], tokens_per_expert=[4.0])[0]
    assert up.weight_bytes == pytest.approx(2880 * 2 * 2880 * 4.25 / 8) and up.dtype == "bf16"


@pytest.mark.parametrize("deployment", ["gpt_oss_120b_h100", "qwen3_235b_h200", "qwen3_32b_h100", "llama31_8b_h100", "llama31_70b_h100",
                                        "kimi_k2_h200", "minimax_m2_h100"])
def test_each_model_has_a_deployment_that_plans(deployment):
    spec, _ = load_spec([f"+deployment={deployment}"])
    pred = predict(spec, compile_plan(spec))
    assert pred.decode.tokens_per_s_per_device > 0 and pred.prefill.ttft_ms > 0
    assert any(r.phase == "decode" for r in pred.breakdown)
