"""The lean event loop (issue 21 item 3): arrivals merged in from the pre-generated columns instead of one heap
event each, a wake-up only while a line is idle, routing through a heap, ranks kept by request count, memoised
KV transfer costs. What these change must not change the simulation: each mechanism is checked against the
straightforward way it replaced."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.policy.batching import FcfsLruScheduler
from cmtwin.sim.engine import Arrival, DecodeStepDone, Environment, Stop
from cmtwin.sim.serving import DecodeInstance, Request, Simulator


def _setup(*overrides, deployment="r1_ep320"):
    spec, _ = load_spec([f"+deployment={deployment}", *overrides])
    return spec, compile_plan(spec)


def test_merge_pulls_the_stream_before_the_first_event_at_or_after_it():
    env = Environment()
    stream = [0.5, 1.0, 2.5, 2.5, 7.0]
    log = []

    def pull(now):
        while stream and stream[0] <= now:
            log.append(("in", stream.pop(0), now))
        return stream[0] if stream else float("inf")

    env.on(Arrival, lambda ev: log.append(("wake", env.now)))
    env.on(DecodeStepDone, lambda ev: log.append(("step", env.now)))
    env.on(Stop, lambda ev: log.append(("stop", env.now)))
    env.merge(pull, stream[0], blind=(DecodeStepDone,))
    env.schedule(1.0, Arrival())  # at the time of an element: the element enters first
    env.schedule(2.0, DecodeStepDone(0, 0))
    env.schedule(3.0, DecodeStepDone(0, 1))  # blind: leaves the elements at 2.5 for the next event
    env.schedule(4.0, Stop())
    env.run()
    assert log == [("in", 0.5, 1.0), ("in", 1.0, 1.0), ("wake", 1.0), ("step", 2.0), ("step", 3.0),
                   ("in", 2.5, 4.0), ("in", 2.5, 4.0), ("stop", 4.0)]
    assert stream == [7.0] and env.events == 4  # after the last event: never pulled; pulls are not events


def test_arrivals_are_not_events_and_every_request_is_accounted_for():
    """Prefill saturated: the lines are busy, so the arrivals enter in bulk at the events that free capacity; the
    engine dispatches far fewer events than there are requests, and none is lost."""
    spec, plan = _setup("workload=chat_4k", "workload.load=1.2", "sim.duration_s=120")
    sim = Simulator(spec, plan)
    res = sim.run()
    c = sim.census()
    assert c["arrived"] > 15_000 and res.events < c["arrived"] / 2
    assert c["arrived"] == c["completed"] + c["queued_prefill"] + c["in_prefill"] + c["waiting_decode"] + c["decoding"]
    assert sim.next_id == c["arrived"]


def test_an_arrival_at_an_idle_line_starts_at_its_own_time():
    """At a low rate a request finds the prefill pool idle: the wake-up starts its forward when it arrives, so its
    TTFT is one forward plus the KV transfer, not that plus a wait for the next event (a sample tick, up to 1 s).
    (A request routed to a line still busy with the previous one waits for it: the least-loaded line is the
    one with the fewest queued tokens, the first of equals.)"""
    spec, plan = _setup("workload=fixed_1k", "workload.rate_per_s=0.5", "sim.duration_s=60", "sim.warmup_s=0")
    sim = Simulator(spec, plan)
    res = sim.run()
    inst = sim.instances[0]
    one = (sim.ptable.step_us(1024 / inst.dies, 1024) + sim.ptable.kv_transfer_us(1024)) / 1e3
    ttft = np.asarray(res.latencies.ttft) * 1e3
    at_once = np.abs(ttft - one) <= 1e-9 * one
    assert len(ttft) > 15 and at_once.mean() > 0.8 and (ttft >= one * (1 - 1e-9)).all()


@pytest.mark.parametrize("overrides", [
    ("workload=bursty_chat", "sim.duration_s=30"),  # lognormal lengths, EMS prefix cache, bursts
    ("workload=fixed_1k", "workload.load=1.3", "sim.duration_s=20", "decode.instances=2", "prefill.instances=4",
     "workload.prompt_len=512"),
])
def test_fcfs_arrivals_may_skip_the_decode_steps(monkeypatch, overrides):
    """fcfs_lru routes by the prefill lines' queues alone (bulk_arrivals): taking arrivals in before every event,
    decode steps included, gives the same simulation, down to the events dispatched (pulls are not events)."""
    spec, plan = _setup(*overrides)
    lean = Simulator(spec, plan)
    assert lean.sched.bulk_arrivals
    a = lean.run().to_dict()
    merge = Environment.merge
    monkeypatch.setattr(Environment, "merge", lambda env, pull, first, blind=(): merge(env, pull, first))
    b = Simulator(spec, plan, tables=(lean.dtable, lean.ptable)).run().to_dict()
    assert a == b


class _Line:
    def __init__(self, load):
        self.queued_tokens, self.failed, self.queue = load, False, []

    @property
    def load(self):
        return float("inf") if self.failed else self.queued_tokens

    def push(self, r):
        self.queue.append(r)
        self.queued_tokens += r.prompt


def test_heap_routing_is_the_least_loaded_line_request_by_request():
    """FcfsLruScheduler.enqueue routes a batch by the lines' loads kept in a list: the same lines as asking min() for
    the least-loaded line (the first of equals) before each request, failed lines (load inf) never chosen."""
    rng = random.Random(7)

    class Sim:
        drafts = 1
        cache = None
        block_tokens = 0

        class spec:
            class sim:
                prefill_policy = "least_loaded"

    for trial in range(50):
        loads = [rng.choice([0, 0, 100, 4096, 5000]) for _ in range(rng.randint(2, 7))]
        batch = [Request(i, 0.0, rng.choice([100, 512, 4096]), 10, -1, 0) for i in range(rng.randint(1, 40))]
        heap_lines, min_lines = [_Line(x) for x in loads], [_Line(x) for x in loads]
        if trial % 5 == 0:
            heap_lines[0].failed = min_lines[0].failed = True
        FcfsLruScheduler(Sim()).enqueue(batch, heap_lines)
        for r in batch:
            min(min_lines, key=lambda x: x.load).push(r)
        assert [[r.id for r in x.queue] for x in heap_lines] == [[r.id for r in x.queue] for x in min_lines]


def test_ranks_by_request_count_match_argmin_and_max():
    d = DecodeInstance(0, devices=8, ranks=37, cap=6, kv_cap=10**9)
    rng = random.Random(3)
    held = []
    for i in range(4000):
        if held and (rng.random() < 0.45 or d.held == d.ranks * d.cap):
            r = held.pop(rng.randrange(len(held)))
            d.leave(r, 1)
        else:
            r = Request(i, 0.0, 10, 10, -1, 0)
            d.wait(r)
            rank = d.least_busy() if rng.random() < 0.7 else rng.choice(
                [g for g in range(d.ranks) if d.rank_count[g] < d.cap])
            d.take(r, rank, 1)
            held.append(r)
        counts = np.asarray(d.rank_count)
        assert d.least_busy() == int(counts.argmin()) and d.busiest == int(counts.max())
        assert [bin(lv).count("1") for lv in d.levels] == [int((counts == c).sum()) for c in range(len(d.levels))]


def test_kv_transfer_cost_is_memoised_per_prompt_length():
    spec, plan = _setup("sim.duration_s=5")
    t = Simulator(spec, plan).ptable
    for p in (1, 100, 4096, 4097, 131072):
        assert t.kv_transfer_us(p) == t.kv(p, 0) and t.kv_transfer_us(p) == t.kv_transfer_us(p)
    assert set(t.kv_us) == {1, 100, 4096, 4097, 131072} and t.kv_us[4096] == t.kv(4096, 0)


@pytest.mark.parametrize("kv_capacity", [None, 40_000])
def test_fcfs_promises_are_the_answers_it_would_give(monkeypatch, kv_capacity):
    """fcfs_lru promises that release(r, d) is r.kv_need and that place(r, d) is the least busy rank whenever r's KV
    fits there, so the simulator reads these instead of asking per request. Asking every time gives the same
    simulation, with KV room to spare and with KV scarce (placements past the least busy rank, admissions deferred).
    A decode group fails midway, so which requests each rank holds (not only how many) shows in the results."""
    spec, plan = _setup("workload=chat_4k", "workload.load=1.1", "sim.duration_s=30",
                        "failures.events=[{t_s:12,die:'n12.npu3.d0'}]")

    def run(sim):
        res = sim.run()
        return res.to_dict(), res.latencies.ttft.tolist(), res.latencies.e2e.tolist(), sim.failures_seen

    fast = Simulator(spec, plan, kv_capacity_per_die=kv_capacity)
    assert fast._least_busy and fast._releases_need
    a = run(fast)
    monkeypatch.setattr(FcfsLruScheduler, "releases_kv_need", False)
    monkeypatch.setattr(FcfsLruScheduler, "places_least_busy", False)
    slow = Simulator(spec, plan, kv_capacity_per_die=kv_capacity, tables=(fast.dtable, fast.ptable))
    assert not slow._least_busy and not slow._releases_need
    assert run(slow) == a
    assert (a[0]["requests"]["kv_blocked"] > 0) == (kv_capacity is not None) and a[3][0][2] > 0
