"""Executor timing (cmtwin/executor/timing.py): the CUDA-graph path driven on a CPU through a fake device
(FakeCuda: deterministic device clock, torch.cuda's capture rules), and the synchronised path unchanged."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from cmtwin.executor.timing import (  # noqa: E402
    CaptureFailed,
    FakeCuda,
    GraphClock,
    SyncClock,
    fallback_clock,
    method_text,
    summarize,
)


def test_summarize_median_extremes_and_spread():
    t = summarize([5.0, 10.0, 10.0, 10.0, 20.0])
    assert (t.n, t.min_s, t.median_s, t.max_s) == (5, 5.0, 10.0, 20.0)
    assert (t.p10_s, t.p90_s) == (5.0, 20.0) and t.spread == pytest.approx(1.5)
    with pytest.raises(ValueError):
        summarize([])


def test_an_operator_is_captured_on_a_side_stream_replayed_then_timed_by_events():
    fake = FakeCuda(cost_us=lambda i: 10.0 * (i + 1), jitter=(1.0, 1.0, 1.0, 2.0, 0.5))
    clock = GraphClock(fake, warmup=2, replays=5)
    x = torch.ones(4)
    with clock.session():
        with clock.op("a") as box:
            y = x * 2  # really runs on the CPU: the pass goes on with its value
        with clock.op("b") as box_b:
            z = y + 1
    anchor, g0, g1 = fake.graphs  # an empty graph holds the session's memory pool; then one per operator
    assert anchor.replayed == 1 and g0.replayed == g1.replayed == 2 + 5  # warm-up replays, then the timed ones
    # timed replays take jitter factors 3..7 (cycled): 2.0, 0.5, 1.0, 1.0, 1.0 -> median 1.0 x the graph's cost
    assert box.seconds == pytest.approx(20e-6) and box_b.seconds == pytest.approx(30e-6)
    label, t = clock.records[0]
    assert label == "a" and t.n == 5 and t.spread == pytest.approx(1.5)  # (20 - 5) / 10
    assert fake.spins == 2  # a spin before each burst of replays, not counted in any replay
    assert float(z.sum()) == 12.0
    d = clock.describe()
    assert d["method"] == "cuda-graph" and d["graphs"] == 2 and d["replays"] == 5 and d["fallback"] is None
    assert "CUDA graphs" in method_text(clock)


def test_capture_needs_a_session_and_a_replay_before_the_next_capture():
    fake = FakeCuda()
    clock = GraphClock(fake, warmup=1, replays=1)
    with pytest.raises(RuntimeError, match="session"):
        with clock.op("a"):
            pass
    # the fake holds the clock to torch's rules: capture on the default stream is refused
    g = fake.CUDAGraph()
    with pytest.raises(RuntimeError, match="non-default stream"):
        g.capture_begin()
    # and a pool whose graphs were all deleted takes no capture: why a session keeps an empty graph alive
    pool = fake.graph_pool_handle()
    with fake.stream(fake.Stream()):
        g = fake.CUDAGraph()
        g.capture_begin(pool=pool)
        g.capture_end()
        g.replay()
        del g
        with pytest.raises(RuntimeError, match="use_count"):
            fake.CUDAGraph().capture_begin(pool=pool)


def test_a_host_synchronise_inside_a_capture_fails_it_with_the_reason_and_the_stream_recovers():
    fake = FakeCuda()
    clock = GraphClock(fake, warmup=1, replays=3)
    with clock.session():
        with pytest.raises(CaptureFailed) as e:
            with clock.op("topk"):
                fake.synchronize()  # what .item() / .tolist() do on a GPU
        assert e.value.label == "topk" and "not permitted when stream is capturing" in e.value.reason
        with clock.op("next") as box:  # no capture is left open
            pass
    assert box.seconds == pytest.approx(10e-6, rel=0.2)
    sync = fallback_clock(clock, e.value)
    assert sync.method == "sync" and "topk" in sync.describe()["fallback"]


def test_errors_that_are_not_capture_failures_propagate_unchanged():
    fake = FakeCuda()
    clock = GraphClock(fake)
    with clock.session(), pytest.raises(ValueError):
        with clock.op("a"):
            raise ValueError("a bug")
    assert fake._capturing is None


def test_segment_mode_graphs_segments_and_leaves_their_operators_untimed():
    from cmtwin.executor.layers import Timer

    fake = FakeCuda(cost_us=lambda i: 7.0, jitter=())
    clock = GraphClock(fake, warmup=1, replays=2)
    tm = Timer(True, clock=clock)
    with clock.session():
        with tm.segment("attention"):  # op mode: segments are not captured
            with tm("q_a_proj"):
                pass
        clock.mode = "segment"
        with tm.segment("attention"):
            with tm("q_a_proj"):
                pass
            with tm("o_proj"):
                pass
    assert tm.events == [("q_a_proj", pytest.approx(7e-6))]
    assert tm.segments == [("attention", pytest.approx(7e-6))]
    assert fake.captures == 1 + 2  # the session's empty graph, one operator, one segment


def test_the_sync_clock_is_todays_method():
    from cmtwin.executor.layers import Timer

    tm = Timer(True, clock=SyncClock())
    with tm("x"):
        sum(range(1000))
    assert tm.events[0][0] == "x" and tm.events[0][1] > 0 and tm.segments == []
    assert SyncClock().describe() == {"method": "sync", "device_sync": False, "fallback": None}


def test_graph_timing_is_refused_on_a_cpu_and_auto_is_sync():
    from cmtwin.config.compose import load_spec
    from cmtwin.errors import CmtwinError
    from cmtwin.executor.timing import clock_for

    spec = load_spec(["+deployment=r1_ep320", "executor.timing=graph"])[0]
    with pytest.raises(CmtwinError) as e:
        clock_for(spec.executor, "cpu")
    assert e.value.key == "executor.timing"
    assert clock_for(load_spec(["+deployment=r1_ep320"])[0].executor, "cpu").method == "sync"


def test_calibrate_probes_and_operators_go_through_the_graph_clock():
    from cmtwin.config.compose import load_spec
    from cmtwin.executor.calibrate import measure_classes, measure_peaks

    fake = FakeCuda(cost_us=lambda i: 100.0, jitter=())
    pk = measure_peaks("cpu", quick=True, clock=GraphClock(fake, warmup=1, replays=2))
    assert pk["launch_us"] == pytest.approx(100.0)  # the probe's graph replays, not the host's time
    assert pk["peak_tflops"]["fp32"] == pytest.approx(2 * 256**3 / 100e-6 / 1e12)
    spec = load_spec(["executor.scale=0.01", "executor.kv_len=4"], require_deployment=False)[0]
    fake = FakeCuda(cost_us=lambda i: 3.0, jitter=())
    pairs = measure_classes(spec, "cpu", quick=True, reps=1, max_ranks=4, clock=GraphClock(fake, warmup=1, replays=2))
    from cmtwin.executor.calibrate import PER_RANK

    # every timed operator is one graph of 3 us; a rank's routed experts share theirs evenly
    assert {round(us, 9) for _, us in pairs} == {3.0, round(3.0 / PER_RANK, 9)}
    assert {op.name for op, us in pairs if us < 3.0} == {"routed_experts_gate_up", "routed_experts_act",
                                                           "routed_experts_down"}
    assert fake.captures > 1 and all(g.replayed == 3 for g in fake.graphs[1:])
