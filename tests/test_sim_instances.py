"""Several decode (or aggregated) instances in the simulator (issue 9): the global scheduler routes each request
to the least-loaded instance, every instance steps on its own, and the figures per device aggregate over all of
them."""

from __future__ import annotations

import numpy as np
import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.sim.serving import Simulator

# r1_ep320 with 4 prefill instances and 2 decode instances fills the 384 NPUs; half of it is 2 + 1. Prompts of
# 512 tokens keep decode the bottleneck (prefill capacity is then ample)
TWO = ["+deployment=r1_ep320", "prefill.instances=4", "decode.instances=2", "workload.prompt_len=512"]
HALF = ["+deployment=r1_ep320", "prefill.instances=2", "workload.prompt_len=512"]


def _sim(*overrides, **kw):
    spec, _ = load_spec(list(overrides))
    return Simulator(spec, compile_plan(spec), **kw)


def test_two_decode_instances_at_saturation_match_one_at_half_the_load():
    """fixed_1k at 1.3 x capacity (decode the bottleneck): two decode instances fed by four prefill instances give
    the tokens/s per device of one decode instance fed by two at half the rate, each instance the twin's figure."""
    from cmtwin.twin.predict import predict

    runs = {}
    for name, ov in (("two", TWO), ("half", HALF)):
        sim = _sim(*ov, "workload=fixed_1k", "sim.duration_s=150", "sim.warmup_s=60")
        runs[name] = (sim, sim.run())
    (s2, two), (s1, half) = runs["two"], runs["half"]
    assert s2.rate == pytest.approx(2 * s1.rate, rel=1e-9)
    assert two.decode["instances"] == 2 and two.decode["devices"] == 2 * half.decode["devices"] == 320
    assert two.decode["batch_occupancy"] > 0.98 and half.decode["batch_occupancy"] > 0.98
    assert two.decode["tokens_per_s_per_device"] == pytest.approx(half.decode["tokens_per_s_per_device"], rel=0.02)
    assert two.tokens_per_s_per_device == pytest.approx(half.tokens_per_s_per_device, rel=0.02)
    assert two.tpot_ms["p50"] == pytest.approx(half.tpot_ms["p50"], rel=0.02)
    per = [x["tokens_per_s_per_device"] for x in two.decode["per_instance"].values()]
    assert len(per) == 2 and per[0] == pytest.approx(per[1], rel=0.02)  # the router balances them
    # the pool figure is the device-weighted mean of the instances'
    assert two.decode["tokens_per_s_per_device"] == pytest.approx(float(np.mean(per)), rel=1e-9)
    twin = predict(s2.spec, s2.plan).decode.tokens_per_s_per_device
    assert two.decode["tokens_per_s_per_device"] == pytest.approx(twin, rel=0.03)


def test_conservation_and_littles_law_with_two_decode_instances():
    sim = _sim(*TWO, "workload=bursty_chat", "sim.duration_s=20", "sim.warmup_s=0")
    sim.run()
    c = sim.census()
    assert c["arrived"] == c["completed"] + c["queued_prefill"] + c["in_prefill"] + c["waiting_decode"] + c["decoding"]
    assert c["arrived"] > 1000 and 0 < c["completed"] < c["arrived"]
    sim = _sim(*TWO, "workload=bursty_chat", "sim.duration_s=20", "sim.warmup_s=0", "sim.drain=true")
    res = sim.run()
    c = sim.census()
    assert c["completed"] == c["arrived"]
    w = float(np.mean(res.latencies.e2e))
    assert res.little["mean_in_system"] == pytest.approx(c["arrived"] / res.end_s * w, rel=1e-9)
    for d in sim.decoders:  # both served, and gave everything back
        assert d.steps > 0 and sum(d.rank_count) == 0 and sum(d.rank_kv) == 0 and d.held == d.waiting == 0


def test_two_aggregated_instances_match_one_at_half_the_load():
    """serving.mode=agg with two replicas of the pool (each prefilling and decoding its own requests)."""
    agg = ["+deployment=r1_h200_tp8_agg", "workload=fixed_1k", "sim.duration_s=150", "sim.warmup_s=60"]
    two = _sim(*agg, "decode.instances=2", "topology.params.nodes=2").run()
    one = _sim(*agg).run()
    assert two.decode["instances"] == 2
    assert two.tokens_per_s_per_device == pytest.approx(one.tokens_per_s_per_device, rel=0.02)
    per = [x["tokens_per_s_per_device"] for x in two.decode["per_instance"].values()]
    assert per[0] == pytest.approx(per[1], rel=0.02)
    sim = _sim("+deployment=r1_h200_tp8_agg", "decode.instances=2", "topology.params.nodes=2", "workload=bursty_chat",
               "sim.duration_s=30", "sim.warmup_s=0", "workload.load=0.6", "sim.drain=true")
    res = sim.run()
    assert sim.census()["completed"] == sim.census()["arrived"]
    assert res.little["area"] == pytest.approx(sum(res.latencies.e2e), rel=1e-6)
    assert all(d.steps > 0 for d in sim.decoders)


def test_kv_peaks_per_die_and_pool_over_instances():
    res = _sim(*TWO, "workload=bursty_chat", "sim.duration_s=10", "sim.warmup_s=0").run()
    d = res.decode
    per = d["per_instance"].values()
    assert d["kv_peak_tokens_per_die"] == max(x["kv_peak_tokens_per_die"] for x in per)
    # the pool's peak is at most the sum of the instances' peaks (they need not peak together)
    assert max(x["kv_peak_tokens"] for x in per) <= d["kv_peak_tokens"] <= sum(x["kv_peak_tokens"] for x in per)
    assert d["kv_peak_bytes"] == d["kv_peak_tokens"] * (d["kv_peak_bytes_per_die"] / d["kv_peak_tokens_per_die"])
