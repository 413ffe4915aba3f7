"""Aggregated serving as engines run it (the per-step token budget, chunks per prompt, the wait for the budget) and
batches of any size per attention group (cmtwin/twin/agg.py, decode.batch_per_group, serving.concurrency)."""

from __future__ import annotations

import math

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.config.budget import engine_default_budget, token_budget
from cmtwin.twin.predict import predict

AGG = "+deployment=r1_h200_tp8_agg"


def _predict(*overrides: str):
    spec, _ = load_spec(list(overrides))
    return spec, predict(spec, compile_plan(spec))


@pytest.mark.parametrize("engine,tp,per_group", [("sglang", 8, 8192), ("sglang", 1, 1024), ("vllm", 1, 8192)])
def test_budget_default_and_scope_follow_the_engine(engine, tp, per_group):
    """SGLang's --chunked-prefill-size is per instance and divided over the DP-attention groups; vLLM's
    --max-num-batched-tokens is per engine core (DP rank). Both default to 8192 on an H200."""
    spec, _ = load_spec([AGG, f"serving.engine={engine}", f"decode.tp={tp}", "decode.batch_per_device=16"])
    assert token_budget(spec).per_group == per_group
    spec, _ = load_spec([AGG, f"serving.engine={engine}", f"decode.tp={tp}", "serving.max_batched_tokens=4096"])
    assert token_budget(spec).flag == 4096


def test_engine_defaults_by_device_memory():
    assert [engine_default_budget("sglang", g) for g in (24, 80, 141, 192)] == [2048, 8192, 8192, 16384]
    assert [engine_default_budget("vllm", g) for g in (40, 64, 80, 141)] == [2048, 2048, 8192, 8192]


@pytest.mark.parametrize("tp", [8, 1])
@pytest.mark.parametrize("prompt", [1024, 8192])
def test_prompt_is_prefilled_in_as_few_chunks_as_the_budget_allows(tp, prompt):
    """The budget left after the decode tokens is a full chunk; a prompt takes ceil(P / chunk) steps, each
    carrying a full chunk, so TTFT is at least that many full-chunk steps."""
    spec, pred = _predict(AGG, f"decode.tp={tp}", f"workload.prompt_len={prompt}", "serving.concurrency=64")
    p, d = pred.prefill, pred.decode
    budget = token_budget(spec).per_group
    verify = 1 + spec.mtp.draft_tokens
    assert p.step_budget_tokens == budget
    room = budget - d.batch_per_group * verify
    assert p.chunk_tokens_per_group == min(prompt, room)
    assert p.chunks_per_prompt == math.ceil(prompt / room)
    assert p.ttft_ms == pytest.approx(p.chunks_per_prompt * p.step_ms + p.budget_wait_ms, abs=0.01)
    assert p.step_ms > d.step_ms  # a step carrying a full chunk is longer than the mean step


@pytest.mark.parametrize("tp", [8, 1])
def test_ttft_grows_with_prompt_length_and_load(tp):
    """At 8-256 concurrent requests of 1,024 and 8,192 prompt tokens (8 x H200): TTFT rises with the prompt
    (more chunks, longer chunk steps) and with the load (the wait for the budget)."""
    ttft = {}
    for prompt in (1024, 8192):
        for conc in (8, 64, 256):
            spec, _ = load_spec([AGG, f"decode.tp={tp}", f"workload.prompt_len={prompt}", f"serving.concurrency={conc}",
                                 "kv_cache_dtype=fp8"])
            try:
                plan = compile_plan(spec)
            except Exception:  # 256 x 9K tokens of MLA latent replicated 8 ways does not fit: not a figure
                continue
            p = predict(spec, plan).prefill
            ttft[prompt, conc] = (p.ttft_ms, p.budget_wait_ms, p.chunks_per_prompt)
    for conc in (8, 64):
        assert ttft[8192, conc][0] > 2 * ttft[1024, conc][0]
        assert ttft[8192, conc][2] >= ttft[1024, conc][2]
    for prompt in (1024, 8192):
        runs = [ttft[prompt, c] for c in (8, 64, 256) if (prompt, c) in ttft]
        assert [r[1] for r in runs] == sorted(r[1] for r in runs) and runs[-1][1] > runs[0][1]  # the wait rises
        assert [r[0] for r in runs] == sorted(r[0] for r in runs)


def test_tpot_reflects_the_prefill_tokens_sharing_the_steps():
    """Longer prompts bring more prefill tokens into every step: at the same batch and decode context the mean step
    (and so TPOT) is longer with 8K prompts than with 1K prompts, and a disaggregated decode step carries none."""
    fixed = ("serving.concurrency=64", "workload.kv_len=2048", "decode.tp=1")
    _, short = _predict(AGG, *fixed, "workload.prompt_len=1024")
    _, long = _predict(AGG, *fixed, "workload.prompt_len=8192")
    assert long.prefill.chunk_tokens_per_die > 4 * short.prefill.chunk_tokens_per_die
    assert long.decode.tpot_ms > 1.2 * short.decode.tpot_ms


def test_budget_taken_by_the_decodes_is_refused_with_the_fix():
    from cmtwin.errors import PlanError

    spec, _ = load_spec([AGG, "decode.tp=1", "serving.max_batched_tokens=256", "decode.batch_per_device=32"])
    with pytest.raises(PlanError) as e:
        predict(spec, compile_plan(spec))
    assert e.value.key == "serving.max_batched_tokens"
    # SGLang divides the 256-token flag over 8 DP ranks: 32 per rank, below the 64 decode tokens of each
    assert "32 tokens per attention group" in str(e.value) and "32 requests x 2 tokens" in str(e.value)
    assert "set serving.max_batched_tokens to 520 or more" in e.value.fix


# --- any batch ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("concurrency", [2, 77])
def test_h100_tp16_fp8_kv_at_2_and_77_requests(concurrency):
    """DeepSeek-R1 on 16 x H100, TP16 EP16, FP8 weights and KV, 8,192/1,024 tokens: one TP group serves exactly
    the offered requests (2/16 or 77/16 per GPU), and the prediction follows the batch."""
    spec, pred = _predict("+deployment=r1_h100_tp16", f"serving.concurrency={concurrency}", "kv_cache_dtype=fp8",
                          "workload.prompt_len=8192", "workload.output_len=1024")
    d = pred.decode
    assert d.batch_per_group == concurrency
    assert d.batch_per_device == pytest.approx(concurrency / 16, abs=1e-4)
    assert d.tokens_per_s_per_device > 0 and pred.prefill.ttft_ms > 0
    bf16_kv, _ = load_spec(["+deployment=r1_h100_tp16", f"serving.concurrency={concurrency}",
                            "workload.prompt_len=8192", "workload.output_len=1024"])
    fp8 = compile_plan(spec).pools_of("decode")[0].memory
    if concurrency == 2:
        bf16 = compile_plan(bf16_kv).pools_of("decode")[0].memory
        assert fp8.kv_bytes_per_token == pytest.approx(bf16.kv_bytes_per_token / 2)
    else:  # 77 requests of 9K tokens fit 80 GB only with the KV in FP8
        from cmtwin.errors import PlanError

        with pytest.raises(PlanError, match="HBM overflow"):
            compile_plan(bf16_kv)


def test_batch_per_group_sets_requests_per_tp_group():
    """decode.batch_per_group replaces batch_per_device: TP8 at 4 requests is 0.5 per GPU, and fewer requests give
    a shorter step (fewer experts hit, less KV read)."""
    _, four = _predict(AGG, "decode.batch_per_group=4")
    _, sixty_four = _predict(AGG, "decode.batch_per_group=64")
    assert four.decode.batch_per_device == 0.5 and four.decode.batch_per_group == 4
    assert four.decode.tpot_ms < sixty_four.decode.tpot_ms


def test_concurrency_splits_over_instances_and_attention_groups():
    spec, _ = load_spec([AGG, "decode.tp=1", "serving.concurrency=40"])
    assert spec.decode_batch_per_group == 5 and spec.decode_batch_per_die == 5  # 8 DP ranks
    spec, _ = load_spec([AGG, "serving.concurrency=40"])
    assert spec.decode_batch_per_group == 40 and spec.decode_batch_per_die == 5.0  # one TP8 group


def test_search_explores_small_batches_per_group():
    """The search tries 1-8 requests per attention group on every layout (the low-latency points)."""
    from cmtwin.search.run import search

    spec, _ = load_spec([AGG, "search.precisions=[fp8]", "search.modes=[agg]", "search.mtp_draft_tokens=[0]",
                         "search.decode_batches=[64]", "search.decode_tp=[8]", "search.simulate_top=0"])
    res = search(spec, workers=1)
    groups = {c.decode.batch_per_group for c in res.candidates if c.decode.tp == 8}
    assert {1, 2, 4, 8} <= groups


def test_a_fractional_batch_still_steps_whole_tokens_per_die():
    """TP16 at 2 requests is 0.125 requests per die, but a die runs whole tokens (the executor allocates them)."""
    for overrides in (["+deployment=r1_h100_tp16", "serving.concurrency=2"], ["+deployment=r1_ep320"]):
        spec, _ = load_spec(overrides)
        pool = compile_plan(spec).pools_of("decode")[0]
        assert isinstance(pool.tokens_per_die, int) and pool.tokens_per_die >= 1
