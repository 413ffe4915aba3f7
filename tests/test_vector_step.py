"""The vector step: decode_steps over a vector of batches (and contexts) gives, element by element, the very floats
decode_step gives at each batch (one model, the scalar call being the same code on numbers), and the search, which
steps every batch that fits in one pass, finds the same candidates and frontier as stepping them one by one."""

from __future__ import annotations

import numpy as np
import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.topology.fabric import fabric_for

# CM384 (split cores, SP-TP-SP prefill, dedicated shared-expert ranks, MTP), GPU TP attention (agg, across two
# nodes), TP8 agg with MTP, a disaggregated GPU pair, sliding-window GQA (gpt-oss) and a dense model.
DEPLOYMENTS = ["r1_ep320", "r1_h100_tp16", "r1_h200_tp8_agg", "r1_h200_disagg", "gpt_oss_120b_h100",
               "llama31_70b_h100"]


def _setup(deployment: str, *overrides: str):
    spec, _ = load_spec([f"+deployment={deployment}", *overrides])
    return spec, compile_plan(spec), spec.hardware, fabric_for(spec)


MIXED = np.array([1, 2, 2, 1, 2, 4, 1, 2])  # per batch, in one vector


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
@pytest.mark.parametrize("microbatches", [1, 2, MIXED], ids=["mb1", "mb2", "mixed"])
def test_vector_step_equals_scalar_step(deployment, microbatches):
    from cmtwin.twin.step import decode_step, decode_steps

    spec, plan, hw, fabric = _setup(deployment)
    tp = spec.decode.tp
    batches = np.array([1, 2, 3, 8, 17, 32, 64, 96]) / tp  # per die: fractional under TP; 1 request: one microbatch
    kvs = np.array([300, 1024, 2048, 700, 4096, 9000, 128, 2500])
    for kv_len in (None, kvs):
        r = decode_steps(spec, plan, hw, fabric, batch_per_die=batches, kv_len=kv_len, microbatches=microbatches)
        for i, b in enumerate(batches.tolist()):
            m = microbatches if np.ndim(microbatches) == 0 else int(microbatches[i])
            one = decode_step(spec, plan, hw, fabric, batch_per_die=b, microbatches=m,
                              kv_len=None if kv_len is None else int(kvs[i]))
            got = (r.step_us[i], r.tpot_ms[i], r.tokens_per_s_per_device[i], r.chunk_tokens[i], r.batch_per_device[i])
            assert got == (one.step_us, one.tpot_ms, one.tokens_per_s_per_device, one.chunk_tokens,
                           one.batch_per_device), (deployment, b, kv_len)
            assert r.tokens_per_step == one.tokens_per_step and r.verify_tokens == one.verify_tokens


@pytest.mark.parametrize("deployment", ["r1_h200_tp8_agg", "r1_h100_tp16"])
def test_vector_agg_prefill_equals_scalar(deployment):
    from cmtwin.twin.agg import agg_prefill
    from cmtwin.twin.step import decode_steps

    spec, plan, hw, fabric = _setup(deployment)
    batches = np.array([1, 4, 16, 64]) / spec.decode.tp
    r = decode_steps(spec, plan, hw, fabric, batch_per_die=batches)
    a = agg_prefill(spec, plan, hw, fabric, batch_per_die=batches, decode_step_us=r.step_us,
                    tokens_per_step=r.tokens_per_step, verify_tokens=r.verify_tokens)
    for i, b in enumerate(batches.tolist()):
        one = agg_prefill(spec, plan, hw, fabric, batch_per_die=b, decode_step_us=r.step_us[i].item(),
                          tokens_per_step=r.tokens_per_step, verify_tokens=r.verify_tokens)
        assert (a.ttft_ms[i], a.tokens_per_s_per_device[i], a.wait_ms[i], a.chunk_step_us[i], a.chunks_per_prompt[i]) \
            == (one.ttft_ms, one.tokens_per_s_per_device, one.wait_ms, one.chunk_step_us, one.chunks_per_prompt)


def _one_by_one(monkeypatch):
    """Make the search step (and price agg TTFT for) every batch on its own, through the scalar calls."""
    import cmtwin.twin.agg as agg
    import cmtwin.twin.step as step
    from cmtwin.twin.results import DecodeSteps

    scalar_agg = agg.agg_prefill

    def decode_steps(spec, plan, hw, fabric, *, batch_per_die, microbatches=None, chunk_tokens=None, **kw):
        shape = np.shape(batch_per_die)
        chunks = np.broadcast_to(np.asarray(0.0 if chunk_tokens is None else chunk_tokens), shape).tolist()
        mbs = np.broadcast_to(np.asarray(0 if microbatches is None else microbatches), shape).tolist()
        rs = [step.decode_step(spec, plan, hw, fabric, batch_per_die=b, microbatches=m or None,
                               chunk_tokens=None if chunk_tokens is None else c, **kw)
              for b, c, m in zip(np.asarray(batch_per_die).tolist(), chunks, mbs)]
        return DecodeSteps(*(np.array([getattr(r, f) for r in rs]) for f in ("step_us", "chunk_tokens", "tpot_ms")),
                           rs[0].tokens_per_step, np.array([r.tokens_per_s_per_device for r in rs]),
                           np.array([r.batch_per_device for r in rs]), np.array([r.kv_len for r in rs]),
                           rs[0].draft_tokens, rs[0].verify_tokens)

    def agg_prefill(spec, plan, hw, fabric, *, batch_per_die, decode_step_us, microbatches=None, **kw):
        mbs = np.broadcast_to(np.asarray(0 if microbatches is None else microbatches), batch_per_die.shape).tolist()
        rs = [scalar_agg(spec, plan, hw, fabric, batch_per_die=b, decode_step_us=s, microbatches=m or None, **kw)
              for b, s, m in zip(batch_per_die.tolist(), decode_step_us.tolist(), mbs)]
        return type(rs[0])(rs[0].budget, *(np.array([getattr(r, f) for r in rs]) for f in (
            "chunk_tokens", "chunks_per_prompt", "chunk_step_us", "wait_ms", "ttft_ms", "budget_utilisation",
            "tokens_per_s_per_device")))

    monkeypatch.setattr(step, "decode_steps", decode_steps)
    monkeypatch.setattr(agg, "agg_prefill", agg_prefill)


@pytest.mark.parametrize("overrides", [
    ["+deployment=r1_ep320", "search.decode_devices=[32,96]", "search.decode_tp=[1,4]", "search.prefill_tp=[1]"],
    ["+deployment=r1_h200_tp8_agg", "search.precisions=[fp8]", "search.decode_batches=[1,2,8,32,128,256]"],
    ["+deployment=r1_h200_disagg", "search.require_failures=1", "search.decode_batches=[8,32,128]",
     "search.decode_tp=[1,8]"],
])
def test_search_vector_equals_one_by_one(monkeypatch, overrides):
    from cmtwin.search.run import search

    spec, _ = load_spec([*overrides, "search.simulate_top=0"])

    def figures(r):
        return ([c.to_dict() for c in r.candidates], r.frontier, r.decode_evals, r.twin_calls, r.pruned,
                r.prune_example)

    vector = figures(search(spec, workers=1, simulate=False))
    with monkeypatch.context() as m:
        _one_by_one(m)
        scalar = figures(search(spec, workers=1, simulate=False))
    assert vector[0] and vector[1]
    assert vector == scalar
