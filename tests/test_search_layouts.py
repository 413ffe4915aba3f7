"""The search over parallel layouts: attention TP, moe_tp x ep, pp, instances and agg vs disagg, on GPU clusters
and on CloudMatrix384. Candidates carry their layout, every one passes the planner's own checks, the best
re-plans to the same figures through `cmtwin plan`, and pruning dominated evaluations keeps the frontier."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.config.schema import layout_errors
from cmtwin.search import run
from cmtwin.search.run import pareto, pp_options, search, tp_options

# 2 x 8 H200 (r1_h200_disagg's topology), FP8, 1,024 / 1,024 tokens: a small but complete layout space
H200 = ["+deployment=r1_h200_disagg", "search.precisions=[fp8]", "search.mtp_draft_tokens=[1]",
        "search.decode_batches=[8,32,128]", "search.prefill_tokens_per_device=[8192]"]
# one 8 x H200 node: no room for a prefill instance beside a decode node, so aggregated only
H200_NODE = ["+deployment=r1_h200_tp8_agg", "search.precisions=[fp8]", "search.mtp_draft_tokens=[1]",
             "search.decode_batches=[1,4,16,64,256]"]


def _search(overrides, **kw):
    spec, _ = load_spec(overrides + ["search.simulate_top=0"])
    return spec, search(spec, workers=1, simulate=False, **kw)


@pytest.fixture(scope="module")
def h200():
    return _search(H200)


def _layouts(res):
    return {(c.mode, c.decode.tp) for c in res.candidates}


def test_h200_space_holds_tp8_and_dp8_aggregated_and_disaggregated(h200):
    spec, res = h200
    assert {("agg", 8), ("agg", 1), ("disagg", 8), ("disagg", 1)} <= _layouts(res)
    agg = [c for c in res.candidates if c.mode == "agg"]
    # replicas fill the budget: two 8-GPU pools or one 16-GPU pool (and then pipeline stages of one node each)
    assert {(c.decode_instances, c.decode.devices) for c in agg} == {(2, 8), (1, 16)}
    assert all(c.devices == 16 and c.prefill is None and c.prefill_instances == 0 for c in agg)
    assert any(c.decode.pp == 2 for c in agg) and all(c.decode.pp == 1 for c in agg if c.decode.devices == 8)
    # MoE-TP 1 and 2 are both evaluated (search.moe_tp); the candidates keep only undominated decode points, and
    # on 8-16 H200s every MoE-TP-1 point is now matched or beaten by a MoE-TP-2 one
    assert list(spec.search.moe_tp) == [1, 2] and {c.decode.moe_tp for c in res.candidates} <= {1, 2}
    assert res.decode_dominated > 0
    disagg = [c for c in res.candidates if c.mode == "disagg"]
    assert disagg and all(c.prefill is not None and c.devices <= 16 for c in disagg)
    assert {c.prefill.tp for c in disagg} <= {1, 2, 4, 8}


def test_single_h200_node_searches_aggregated_layouts_only():
    spec, res = _search(H200_NODE)
    assert {c.mode for c in res.candidates} == {"agg"}
    assert {("agg", 1), ("agg", 8)} <= _layouts(res)
    # TP8 reads 8x the MLA latent per GPU: it wins the latency end, DP attention the throughput end
    front = [res.candidates[i] for i in res.frontier]
    assert front[0].decode.tp < front[-1].decode.tp
    assert max(front, key=lambda c: c.concurrency).decode.tp == 1
    assert min(front, key=lambda c: c.tpot_ms).decode.tp == 8


def test_best_per_layout_is_the_best_of_each_mode_and_tp(h200):
    spec, res = h200
    best = {(res.candidates[i].mode, res.candidates[i].decode.tp): res.candidates[i] for i in res.best_per_layout()}
    assert set(best) == _layouts(res)
    for c in res.candidates:
        assert c.tokens_per_s_per_device <= best[(c.mode, c.decode.tp)].tokens_per_s_per_device


def _check_layout(spec, devices, ph):
    ranks = devices * spec.hardware.dies
    assert layout_errors("x", ph, devices, spec.hardware.dies, spec.model) == []
    assert ph.moe_tp * ph.ep * ph.pp == ranks


@pytest.mark.parametrize("which", ["h200", "cm384"])
def test_invalid_layouts_never_appear(which, h200):
    """Every candidate's layouts add up by the Spec's own arithmetic, TP groups stay in a node, and sampled candidates
    (and the largest batch of each layout) compile with every planner check."""
    from types import SimpleNamespace

    from cmtwin.planner.plan import compile_plan

    from cmtwin.topology.fabric import fabric_for

    spec, res = h200 if which == "h200" else _search(CM384)
    dies_per_node = fabric_for(spec).devices_per_node * spec.hardware.dies
    for c in res.candidates:
        d = c.decode
        _check_layout(spec, d.devices, SimpleNamespace(tp=d.tp, moe_tp=d.moe_tp, ep=d.ep, pp=d.pp))
        assert dies_per_node % d.tp == 0
        if c.prefill:
            p = c.prefill
            _check_layout(spec, p.devices_per_instance, SimpleNamespace(tp=p.tp, moe_tp=p.moe_tp, ep=p.ep, pp=p.pp))
    picks = {}
    for c in res.candidates:  # the largest batch of every decode layout
        key = (c.mode, c.decode.devices, c.decode.tp, c.decode.moe_tp, c.decode.pp)
        if key not in picks or c.decode.batch_per_device > picks[key].decode.batch_per_device:
            picks[key] = c
    base = H200[:1] if which == "h200" else CM384[:1]
    for c in list(picks.values())[:12]:
        s2, _ = load_spec(base + c.overrides())
        compile_plan(s2)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], cwd=cwd, capture_output=True, text=True)


def test_best_candidates_round_trip_through_cmtwin_plan(h200, workdir):
    """`cmtwin plan` of the reported overrides gives the search's figures: the aggregated best (tokens/s, TPOT,
    chunked-prefill TTFT) and the disaggregated best (both pools' rates combined as the search combines them)."""
    spec, res = h200
    best = res.candidates[res.frontier[0]]
    best_disagg = max((c for c in res.candidates if c.mode == "disagg"), key=lambda c: c.tokens_per_s_per_device)
    assert best.mode == "agg"
    for c in (best, best_disagg):
        p = _cli("plan", "+deployment=r1_h200_disagg", *c.overrides(), "--format", "json", cwd=workdir)
        assert p.returncode == 0, p.stderr
        pred = json.loads(p.stdout)["prediction"]
        dec, pre = pred["decode"], pred["prefill"]
        assert dec["tpot_ms"] == pytest.approx(c.tpot_ms, rel=1e-3)
        assert dec["tokens_per_s_per_device"] == pytest.approx(c.decode.tokens_per_s_per_device, rel=1e-3)
        assert dec["batch_per_device"] == c.decode.batch_per_device
        w = spec.workload
        if c.mode == "agg":
            assert pre["ttft_ms"] == pytest.approx(c.ttft_ms, rel=1e-3)
            system = dec["tokens_per_s_per_device"]
        else:
            d, q = c.decode, c.prefill
            assert pre["tokens_per_s_per_device"] == pytest.approx(q.tokens_per_s_per_device, rel=1e-3)
            assert pre["ttft_ms"] == pytest.approx(c.ttft_ms, rel=0.02)  # KV sent to another decode die
            rate = min(c.prefill_instances * q.devices_per_instance * pre["tokens_per_s_per_device"] / w.prompt_len,
                       c.decode_instances * d.devices * dec["tokens_per_s_per_device"] / w.output_len)
            system = rate * w.output_len / c.devices
        assert system == pytest.approx(c.tokens_per_s_per_device, rel=1e-3)


def test_pruning_dominated_evaluations_keeps_the_frontier():
    """Candidates are combined from the evaluations no sibling dominates; the frontier of every combination of every
    evaluation is the same set of points."""
    spec, _ = load_spec(H200 + ["search.decode_batches=[8,16,32,64,128]", "search.mtp_draft_tokens=[0,1]"])
    run._init(spec)
    budget = 16
    decode, prefill = [], []
    for d, modes in run.pool_sizes(spec, budget).items():
        decode += run._decode_group((d, modes))[0]
    for p in (8,):
        prefill += run._prefill_group((p,))[0]
    pts = lambda cs: {(round(c.tokens_per_s_per_device, 6), round(c.tpot_ms, 6), round(c.ttft_ms, 6))
                      for c in (cs[i] for i in run._frontier(cs))}
    every = run._combine(spec, budget, decode, prefill)
    kept = run._combine(spec, budget, run.undominated_decode(decode), run.undominated_prefill(prefill))
    assert len(kept) < len(every)
    assert pts(kept) == pts(every)


def test_layout_options_follow_the_fabric():
    h100, _ = load_spec(["+deployment=r1_h100_tp16"])
    cm, _ = load_spec(["+deployment=r1_ep320"])
    assert tp_options(h100, "decode") == [1, 2, 4, 8, 16]  # a node's 8 GPUs, plus the deployment's TP16
    assert tp_options(cm, "decode") == [1, 2, 4, 8, 16]  # a node's 16 dies
    assert tp_options(cm, "prefill") == [1, 2, 4, 8, 16]
    assert pp_options(h100, "decode", 16) == [1, 2] and pp_options(h100, "decode", 8) == [1]  # stages of whole nodes
    assert pp_options(cm, "decode", 192) == [1]  # UB joins the whole supernode: no stage boundary to hide
    given, _ = load_spec(["+deployment=r1_ep320", "search.decode_tp=[4,1]", "search.pp=[1,3]"])
    assert tp_options(given, "decode") == [1, 4] and pp_options(given, "decode", 8) == [1, 3]


# CloudMatrix384, a slice of the default space with every layout dimension left at its default
CM384 = ["+deployment=r1_ep320", "search.decode_batches=[16,64,192,256]", "search.mtp_draft_tokens=[0]",
         "search.precisions=[int8]", "search.prefill_devices_per_instance=[8,16]",
         "search.prefill_tokens_per_device=[16384]", "search.decode_devices=[96,160,192,208,256,320]"]


def test_r1_ep320_search_keeps_the_known_best_region():
    """With layouts in the space and CloudMatrix-Infer's 50 ms TPOT SLO, the best plan on 384 NPUs is still its
    kind: disaggregated, DP attention over a decode pool of about half the supernode, INT8. (Without an SLO the
    most tokens per device come from aggregated serving at batch 256 and a TPOT of about 200 ms, now that prefill
    attention is costed from FlashAttention measurements: a point no serving system would run.)"""
    spec, res = _search(CM384 + ["slo.tpot_ms=50"])
    assert {c.decode.tp for c in res.candidates} == {1, 2, 4, 8, 16}
    assert {c.mode for c in res.candidates} == {"agg", "disagg"}
    best = res.candidates[res.frontier[0]]
    assert best.mode == "disagg" and best.decode.tp == 1 and best.decode.pp == 1
    assert 160 <= best.decode.devices * best.decode_instances <= 256
    assert best.decode.precision == "int8" and best.tpot_ms <= 50
    assert best.tokens_per_s_per_device > max(c.tokens_per_s_per_device for c in res.candidates if c.mode == "agg")


@pytest.mark.parametrize("override,needles", [
    ("search.decode_tp=[3]", ["decode.tp (3)", "must divide", "search.decode_tp"]),  # every structural invalid
    ("search.modes=[both]", ["search.modes", "'both'"]),
    ("search.pp=[0]", ["search.pp", "greater than or equal to 1"]),
    ("search.decode_tp=[]", ["search.decode_tp", "at least 1 item"]),
    ("search.decode_batches=[3]", ["search.decode_batches", "multiples of"]),
    ("search.modes=[disagg]", ["search.devices (8)", "add agg to search.modes"]),  # one node: no room for both pools
])
def test_search_layout_keys_reject_bad_values(override, needles, workdir):
    base = H200_NODE if "batches" not in override else ["+deployment=r1_ep320"]
    p = _cli("search", *base, override, "search.simulate_top=0", cwd=workdir)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    for n in needles:
        assert n in p.stderr, (n, p.stderr)


def test_pareto_of_two_and_four_coordinates():
    assert sorted(pareto([(1, 2), (2, 1), (2, 2), (1, 2)])) == [0, 1]
    assert sorted(pareto([(1, 1, 1, 2), (1, 1, 2, 1), (1, 1, 2, 2)])) == [0, 1]
