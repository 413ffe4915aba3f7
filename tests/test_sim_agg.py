"""Aggregated serving in the simulator (serving.mode=agg): one pool, prefill chunks mixed into decode steps,
step times from the twin's decode_step(..., chunk_tokens=) through the lookup tables."""

from __future__ import annotations

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.topology.fabric import fabric_for
from cmtwin.sim.serving import Simulator


def _setup(*overrides):
    spec, _ = load_spec(["+deployment=r1_h200_tp8_agg", *overrides])
    return spec, compile_plan(spec)


def test_agg_table_grid_point_is_the_twin():
    from cmtwin.twin.step import decode_step

    spec, plan = _setup("sim.duration_s=5")
    sim = Simulator(spec, plan)
    t = sim.dtable
    b, kv, ch = t.batches[3], t.kvs[2], t.chunks[2]
    twin = decode_step(spec, plan, spec.hardware, fabric_for(spec), batch_per_die=b / spec.decode.tp, kv_len=kv,
                       chunk_tokens=ch)  # the table is indexed by requests per TP group
    assert t.step_us(b, kv, ch) == pytest.approx(twin.step_us, rel=1e-9)
    assert t.step_us(b, kv, ch) > t.step_us(b, kv, 0)


def test_agg_agrees_with_plan_at_saturation():
    """Fixed 1k/1k shapes at 1.3 x capacity: output tokens/s per device and TPOT within 5% of cmtwin plan."""
    from cmtwin.twin.predict import predict

    spec, plan = _setup("workload=fixed_1k", "sim.duration_s=150", "sim.warmup_s=60")
    res = Simulator(spec, plan).run()
    pred = predict(spec, plan).decode
    assert res.decode["batch_occupancy"] > 0.97
    assert res.tokens_per_s_per_device == pytest.approx(pred.tokens_per_s_per_device, rel=0.05)
    assert res.tpot_ms["p50"] == pytest.approx(pred.tpot_ms, rel=0.05)
    assert res.decode["kv_peak_fraction"] <= 1.0


def test_agg_conservation_and_littles_law():
    spec, plan = _setup("workload=bursty_chat", "sim.duration_s=30", "sim.warmup_s=0", "workload.load=0.8")
    sim = Simulator(spec, plan)
    res = sim.run()
    c = sim.census()
    assert c["arrived"] == c["completed"] + c["queued_prefill"] + c["in_prefill"] + c["waiting_decode"] + c["decoding"]
    assert c["completed"] > 50
    # Little: mean in system = arrival rate x mean time in system (over all requests; drain to close it)
    spec, plan = _setup("workload=bursty_chat", "sim.duration_s=30", "sim.warmup_s=0", "workload.load=0.6",
                        "sim.drain=true")
    sim = Simulator(spec, plan)
    res = sim.run()
    c = sim.census()
    assert c["completed"] == c["arrived"]
    total_time = sum(res.latencies.e2e)  # every request arrived in [0, duration] and completed
    assert res.little["area"] == pytest.approx(total_time, rel=1e-6)


def test_agg_ttft_grows_with_prompt_over_chunk():
    """A smaller step budget leaves smaller chunks: a prompt spans more steps (TP8, 256 decode slots per group)."""
    ttft = []
    for budget in (2048, 512, 320):
        spec, plan = _setup("workload=fixed_1k", "workload.output_len=32", "workload.rate_per_s=2",
                            f"serving.max_batched_tokens={budget}",
                            "sim.duration_s=30", "sim.warmup_s=5")
        ttft.append(Simulator(spec, plan).run().ttft_ms["p50"])
    assert ttft[0] < ttft[1] < ttft[2]
