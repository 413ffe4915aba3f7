"""One capacity model for the search and the simulator (cmtwin/twin/capacity.py), fed the workload's decode
KV length from the spec (a `workload.kv_len` override reaches the simulator's capacity)."""

from __future__ import annotations

import math

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.sim.serving import Simulator
from cmtwin.twin.capacity import decode_requests_per_s


def _capacity(*overrides: str) -> dict:
    spec, _ = load_spec(["+deployment=r1_ep320", "sim.duration_s=1", *overrides])
    sim = Simulator(spec, compile_plan(spec))
    return {"decode": sim.decode_capacity, "prefill": sim.prefill_capacity}


def test_the_simulator_reads_the_workloads_decode_kv_length():
    short, long = _capacity("workload.kv_len=1024"), _capacity("workload.kv_len=8192")
    assert long["decode"] < 0.9 * short["decode"]  # a longer context: a slower step, fewer requests/s
    assert long["prefill"] == pytest.approx(short["prefill"])  # prefill does not see the decode context


def test_decode_rate_counts_whole_steps_after_the_first_token():
    # 1,024 output tokens at 1.7 per step: the first comes from prefill, 1,023 more take ceil(601.8) = 602 steps
    assert decode_requests_per_s(slots=602, step_s=0.01, tokens_per_step=1.7, output_len=1024) == pytest.approx(100)
    assert decode_requests_per_s(slots=8, step_s=0.01, tokens_per_step=1.0, output_len=1) == math.inf
