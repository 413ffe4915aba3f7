"""The two-stream microbatch schedule behind prefill overlap (cmtwin/twin/schedule.py)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cmtwin.twin.schedule import COMM, COMPUTE, VECTOR, layers_time, makespan, merged

phase = st.tuples(st.sampled_from([COMPUTE, COMM, VECTOR]), st.floats(0.0, 10.0))


def test_one_microbatch_is_serial():
    ph = [(COMPUTE, 3.0), (COMM, 2.0), (COMPUTE, 1.0), (COMM, 4.0)]
    assert makespan([ph] * 5, 1) == 5 * 10.0


def test_comm_hides_only_behind_the_other_microbatchs_compute():
    # a 1-unit compute then a 5-unit comm: with two microbatches, 5 units of comm per microbatch cannot hide
    # behind 1 unit of the other's compute, whatever the layer's totals (2 compute vs 10 comm per layer)
    ph = [(COMPUTE, 1.0), (COMM, 5.0)]
    per_layer = makespan([ph] * 20, 2) / 20
    assert per_layer >= 10.0 - 1e-9  # the comm stream is the bottleneck
    # balanced phases overlap perfectly: compute of B during comm of A
    ph = [(COMPUTE, 4.0), (COMM, 4.0)]
    assert makespan([ph] * 50, 2) / 50 == 8.0 + 4.0 / 50  # 2 x max per layer, plus the fill once


@settings(max_examples=200, deadline=None)
@given(st.lists(phase, min_size=1, max_size=8), st.integers(1, 4), st.integers(1, 12))
def test_between_the_max_and_the_sum(ph, m, layers):
    t = makespan([ph] * layers, m)
    comp = m * layers * sum(u for s, u in ph if s == COMPUTE)
    comm = m * layers * sum(u for s, u in ph if s == COMM)
    vec = m * layers * sum(u for s, u in ph if s == VECTOR)  # holds both streams
    assert max(comp, comm) + vec - 1e-6 <= t <= comp + comm + vec + 1e-6


def test_a_vector_phase_waits_for_the_other_microbatchs_comm():
    # norm (vector) -> GEMM -> dispatch: B's norm could run during A's dispatch if the norm only needed the
    # compute stream; on the vector cores it waits for the dispatch to finish
    free = [(COMPUTE, 1.0), (COMPUTE, 4.0), (COMM, 4.0)]
    held = [(VECTOR, 1.0), (COMPUTE, 4.0), (COMM, 4.0)]
    assert makespan([held] * 10, 2) > makespan([free] * 10, 2)
    assert makespan([held] * 10, 1) == makespan([free] * 10, 1)  # one microbatch: nothing to contend with


@settings(max_examples=100, deadline=None)
@given(st.lists(phase, min_size=1, max_size=8), st.lists(phase, min_size=1, max_size=8), st.integers(1, 3),
       st.integers(0, 10), st.integers(0, 40))
# a schedule that had not settled after the 3 layers the steady-state extrapolation used to schedule (141.0 was
# charged for 142.5): a dense layer of pure communication before MoE layers, three microbatches
@example(dense=[(COMM, 7.0)], moe=[(COMPUTE, 8.5), (COMM, 8.0)], m=3, nd=1, nm=5)
def test_layer_groups_take_the_whole_schedule(dense, moe, m, nd, nm):
    full = makespan([merged(dense)] * nd + [merged(moe)] * nm, m)
    assert abs(layers_time([(nd, dense), (nm, moe)], m) - full) <= 1e-6 * max(1.0, full)


def test_merged_fuses_neighbours_on_one_stream():
    assert merged([(COMPUTE, 1.0), (COMPUTE, 2.0), (COMM, 0.0), (COMM, 1.0), (COMPUTE, 1.0)]) == [
        (COMPUTE, 3.0), (COMM, 1.0), (COMPUTE, 1.0)]
