"""The serving path of a deployment, at iteration granularity.

Entities: requests; a global scheduler; prefill instances running chunked-prefill forwards up to their token
budget (prefill.tokens_per_device x devices); the RDMA links that carry each finished prompt's KV to decode; the
decode instances (decode.instances), each stepping its DP ranks in lockstep (one event per step) with continuous
batching bounded by the batch and the KV capacity of every die, and MTP's expected tokens per step; the EMS
caching pool (prefix-hash blocks, LRU DRAM + SSD, served over UB or VPC). All times come from the twin
(cmtwin/sim/tables.py). With serving.mode=agg there is no prefill pool: each aggregated instance prefills prompts
chunk by chunk (FCFS, up to the chunk budget per die per step) inside its decode steps, and a prompt decodes on
the rank that prefilled it (no KV transfer).

Scheduling decisions (which line a request waits in, what a prefill forward computes and reuses, which decode die
a request occupies and the KV it holds there) are the batching policy's (cmtwin/policy/batching.py: fcfs_lru by
default, batchllm), asked through its one `Scheduler` hook. Requests that arrive at the same instant (an offline
batch) are handed to it together. Each request finishing prefill goes to the least-loaded decode instance (the
larger of its share of slots and of KV taken or awaited).

Arrivals are no events: the pre-generated stream (cmtwin/sim/traffic.py) is merged into the engine's
(Environment.merge, `_pull`), so the requests that arrived by an event's time join the lines in bulk just
before it; a wake-up (`Arrival`) is scheduled only while a line is idle, at the next request's time, so a
request that finds an idle line starts there when it arrives. A scheduler that routes by the lines' queues
alone (`bulk_arrivals`: fcfs_lru) lets the decode pool's steps in disaggregated serving go without taking
arrivals in: then arrivals move when prefill capacity frees up (a forward ends), at a sample, a failure or the
end. Results are those of one event per arrival, except for requests arriving at exactly an event's time,
which join before it.

Timing conventions: TTFT = arrival -> the prompt's prefill forward ends and its KV lands on its decode rank
(the twin's ttft = forward + KV transfer); TPOT = (completion - first token) / (output tokens - 1),
including any wait for a decode slot; end-to-end = arrival -> last token.
"""

from __future__ import annotations

import gc
import heapq
import math
import statistics
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter

import numpy as np

from cmtwin.errors import ConfigError
from cmtwin.sim.cache import EMSCache
from cmtwin.sim.engine import (
    Arrival,
    DecodeStepDone,
    DecodeWake,
    Environment,
    GroupDown,
    GroupUp,
    PrefillDown,
    PrefillUp,
    MeasureStart,
    PrefillDone,
    SampleTick,
    Stop,
)
from cmtwin.sim.steady import steady_state
from cmtwin.sim.tables import AggDecodeTable, DecodeTable, FetchCost, Memo, PrefillTable
from cmtwin.sim.traffic import Chunk, Stream, TraceSource, check_window, chunk_window
from cmtwin.twin.capacity import decode_requests_per_s, prefill_requests_per_s

COMPLETION_RATE_TAU_S = 5.0
FAILED_KV = 2**62
"""rank_kv of a failed group: larger than any KV capacity, so no request is placed there until it recovers."""
"""Time constant of the decode pool's completion-rate average that admission uses to foresee freed slots and KV:
long enough to span many decode steps (tens of ms each) and the arrivals of a burst, short enough to follow a
load change within seconds. A smoothing choice of the simulator, not a hardware figure."""

RECORD_BATCH = 8192
"""Completed requests whose latencies are recorded together when the samples' rows go nowhere (no sink): fewer
rounds of column work than one per sample, and a bounded number of requests kept."""

_ARRIVAL = Arrival()
_SAMPLE = SampleTick()
_STOP = Stop()
_MARK = MeasureStart()
_ARRIVED = attrgetter("t_arrival")
_LOAD = attrgetter("load")
_KV_NEED = attrgetter("kv_need")
_FIRST = attrgetter("t_first")
_DONE = attrgetter("t_done")
_OUTPUT = attrgetter("output")


class Request:
    """One request's state and timestamps (seconds of simulated time)."""

    __slots__ = ("id", "t_arrival", "prompt", "output", "prefix", "prefix_len", "todo", "hit", "t_first",
                 "t_done", "rank", "admit_step", "group", "shared", "kv_need")

    def __init__(self, rid: int, t: float, prompt: int, output: int, prefix: int, prefix_len: int):
        self.id = rid
        self.t_arrival = t
        self.prompt = prompt
        self.output = output
        self.prefix = prefix
        self.prefix_len = prefix_len
        self.todo = -1  # prompt tokens still to compute (-1: its prefill has not started)
        self.hit = 0  # prompt tokens reused instead of computed
        self.t_first = -1.0
        self.t_done = -1.0
        self.rank = -1
        self.admit_step = -1
        self.group = -1  # prefix group the batching policy put it in (-1: none)
        self.shared = 0  # leading prompt tokens whose KV it shares with its group on a decode die
        self.kv_need = 0  # KV tokens it is expected to hold on decode (the batching policy's estimate)


class PrefillInstance:
    __slots__ = ("index", "dies", "devices", "queue", "queued_tokens", "busy", "busy_since", "busy_acc",
                 "lanes", "running", "forwards", "fetch", "failed", "epoch")

    def __init__(self, index: int, dies: int, devices: int, fetch: FetchCost | None):
        self.index = index
        self.dies = dies
        self.devices = devices
        self.queue: deque[Request] = deque()
        self.queued_tokens = 0
        self.busy = False
        self.busy_since = 0.0
        self.busy_acc = 0.0
        self.lanes = [0.0] * dies  # RDMA port of each die: free at
        self.running: tuple = ()
        self.forwards = 0
        self.fetch = fetch
        self.failed = False  # failures.events: down until it recovers; routing sends nothing here meanwhile
        self.epoch = 0  # failures so far: a forward started before the last one is void

    @property
    def load(self) -> float:
        return math.inf if self.failed else self.queued_tokens

    @property
    def in_forward_kv(self) -> int:
        """KV tokens on decode of the requests the running forward completes (summed when asked: decode-aware
        admission by KV asks it, once per forward at most, and only some batching policies do)."""
        return sum(map(_KV_NEED, self.running))

    def push(self, r: Request) -> None:
        self.queue.append(r)
        self.queued_tokens += r.prompt

    def busy_total(self, now: float) -> float:
        return self.busy_acc + (now - self.busy_since if self.busy else 0.0)


class DecodeInstance:
    """One decode instance (with serving.mode=agg, one aggregated instance): DP ranks stepping in lockstep.

    rank_count / rank_kv: requests and reserved KV tokens per rank (die; lists, read one at a time); held / kv_sum
    their totals; waiting / waiting_kv the requests routed here that hold no slot yet (KV in flight or landed, or,
    in agg, prompts queued). The ranks are also kept by request count (`least_busy`, `busiest`), so neither the
    placement of a request nor the step time scans them.
    """

    __slots__ = ("index", "devices", "ranks", "cap", "kv_cap", "rank_count", "rank_kv", "rank_dec",
                 "n_active", "sum_prompt", "sum_admit", "step", "buckets", "ready", "busy", "busy_acc", "since",
                 "wake_at", "batch_sum", "steps", "out_tokens", "queue", "prefilling", "step_chunk", "step_done",
                 "held", "waiting", "waiting_kv", "kv_sum", "kv_sum_peak", "kv_die_peak", "levels", "bit", "low",
                 "busiest")
    failed = False  # an instance never fails whole: its groups do (rank_kv of a failed group is FAILED_KV)

    def __init__(self, index: int, devices: int, ranks: int, cap: int, kv_cap: int):
        self.index, self.devices, self.ranks, self.cap, self.kv_cap = index, devices, ranks, cap, kv_cap
        self.rank_count = [0] * ranks
        self.rank_kv = [0] * ranks
        self.levels: list[int] = [(1 << ranks) - 1]  # levels[c]: the ranks holding c requests, as a bit set
        self.bit = [1 << r for r in range(ranks)]  # a rank's bit
        self.low = 0  # requests on the least busy rank
        self.busiest = 0  # ... and on the busiest
        self.rank_dec = np.zeros(ranks, dtype=np.int64)  # agg: decoding requests per rank (slots minus prefill)
        self.n_active = 0  # decoding requests
        self.sum_prompt = 0
        self.sum_admit = 0
        self.step = 0
        self.buckets: dict[int, list[Request]] = {}  # requests by the step they finish in
        self.ready: list[tuple[float, int, Request]] = []  # disagg: (KV lands at, id, request)
        self.busy = False
        self.busy_acc = 0.0
        self.since = 0.0
        self.wake_at = math.inf
        self.batch_sum = 0.0  # sum over steps of decoding requests (for occupancy)
        self.steps = 0
        self.out_tokens = 0.0
        # agg: FCFS prompts waiting for a slot, prompts being prefilled (slot and KV held), and the step's prefill
        self.queue: deque[Request] = deque()
        self.prefilling: deque[Request] = deque()
        self.step_chunk = 0
        self.step_done: list[Request] = []
        self.held = 0
        self.waiting = 0
        self.waiting_kv = 0
        self.kv_sum = 0
        self.kv_sum_peak = 0
        self.kv_die_peak = 0

    @property
    def load(self) -> float:
        """The larger of the slots and the KV capacity taken or awaited (fractions)."""
        return max((self.held + self.waiting) / (self.ranks * self.cap),
                   (self.kv_sum + self.waiting_kv) / max(1, self.ranks * self.kv_cap))

    def wait(self, r: Request) -> None:
        self.waiting += 1
        self.waiting_kv += r.kv_need

    def push(self, r: Request) -> None:
        """agg: a prompt joins this instance's queue."""
        self.queue.append(r)
        self.wait(r)

    def rank_up(self, rank: int) -> None:
        """`rank` holds one request more: its bit moves up a level (levels[c]: the ranks holding c requests, a bit
        set) and the least and most busy follow. Runs once per admitted request."""
        levels, counts = self.levels, self.rank_count
        c = counts[rank]
        n = counts[rank] = c + 1
        bit = self.bit[rank]
        m = levels[c] = levels[c] ^ bit
        if not m and c == self.low:
            self.low = n
        if n == len(levels):
            levels.append(bit)
        else:
            levels[n] |= bit
        if n > self.busiest:
            self.busiest = n

    def rank_down(self, rank: int) -> None:
        """`rank` holds one request fewer: its bit moves down a level and the least and most busy follow."""
        levels, counts = self.levels, self.rank_count
        c = counts[rank]
        n = counts[rank] = c - 1
        bit = self.bit[rank]
        m = levels[c] = levels[c] ^ bit
        if not m and c == self.busiest:
            self.busiest = n
        levels[n] |= bit
        if n < self.low:
            self.low = n

    def take(self, r: Request, rank: int, added: int) -> None:
        """r leaves the waiting requests for a slot on `rank`, adding `added` KV tokens there."""
        self.waiting -= 1
        self.waiting_kv -= r.kv_need
        self.held += 1
        self.rank_up(rank)
        kv = self.rank_kv[rank] + added
        self.rank_kv[rank] = kv
        if kv > self.kv_die_peak:
            self.kv_die_peak = kv
        self.kv_sum += added
        if self.kv_sum > self.kv_sum_peak:
            self.kv_sum_peak = self.kv_sum
        r.rank = rank

    def leave(self, r: Request, freed: int) -> None:
        self.held -= 1
        rank = r.rank
        self.rank_down(rank)
        self.rank_kv[rank] -= freed
        self.kv_sum -= freed

    def least_busy(self) -> int:
        """The rank holding the fewest requests (the first of equals, as numpy's argmin): the lowest bit of its
        level."""
        m = self.levels[self.low]
        return (m & -m).bit_length() - 1

    def busy_total(self, now: float) -> float:
        return self.busy_acc + (now - self.since if self.busy else 0.0)


@dataclass
class Totals:
    """Cumulative counters (simulated)."""

    arrived: int = 0
    completed: int = 0
    prompt_tokens: int = 0  # prompt tokens of requests whose prefill finished
    computed_tokens: int = 0  # prompt tokens computed by prefill forwards (the prefill load)
    hit_tokens: int = 0  # prompt tokens of requests whose prefill finished that were reused instead of computed
    output_tokens: float = 0.0
    kv_blocked: int = 0  # admissions deferred because no rank had KV room
    prefill_stalls: int = 0  # forwards deferred by decode-aware admission
    in_system_area: float = 0.0  # integral of requests in the system over time
    decode_steps: int = 0
    kv_tokens: int = 0  # KV reserved over all decode dies
    kv_tokens_peak: int = 0
    last_done: float = 0.0  # when the latest request completed


@dataclass(frozen=True)
class Latencies:
    """A run's per-request latencies (s) of the requests that arrived in the measurement window and completed, in
    completion order, as arrays (TPOT: those with more than one output token)."""

    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray


@dataclass
class Recorded:
    """The same latencies while a run goes on: an array per recording round (`_record`); `joined()` is Latencies."""

    ttft: list = field(default_factory=list)
    tpot: list = field(default_factory=list)
    e2e: list = field(default_factory=list)

    def joined(self) -> Latencies:
        return Latencies(*(np.concatenate(x) if x else np.empty(0) for x in (self.ttft, self.tpot, self.e2e)))


class Simulator:
    """A discrete-event serving simulation of a compiled plan (disaggregated or aggregated).

    sink(rows) receives time-series samples [(t, name, value), ...] as they are taken; progress(now, end)
    is called at every sample.
    """

    def __init__(self, spec, plan, *, fabric=None, rate_per_s: float | None = None, duration_s: float | None = None,
                 seed: int | None = None, drain: bool | None = None, trace: Chunk | TraceSource | None = None,
                 sink: Callable[[list], None] | None = None, progress: Callable[[float, float], None] | None = None,
                 kv_capacity_per_die: int | None = None, tables: tuple | None = None):
        from cmtwin.topology.fabric import fabric_for
        from cmtwin.policy.registry import registry

        self.spec, self.plan = spec, plan
        sim, w = spec.sim, spec.workload
        self.duration = float(duration_s if duration_s is not None else sim.duration_s)
        self.offline = w.arrival == "offline"
        self.warmup = sim.warmup_s if sim.warmup_s is not None else (0.0 if self.offline else 0.1 * self.duration)
        if self.warmup >= self.duration:
            raise ConfigError(f"sim.warmup_s ({self.warmup:g}) must be below sim.duration_s ({self.duration:g}).",
                              key="sim.warmup_s", fix="lower sim.warmup_s or raise sim.duration_s")
        self.drain = sim.drain if drain is None else drain
        self.seed = sim.seed if seed is None else seed
        self.sink, self.progress = sink, progress
        self.interval = sim.sample_interval_s
        prefill_pools, decode_pools = plan.pools_of("prefill"), plan.pools_of("decode")
        self.agg = spec.serving.mode == "agg"
        if self.agg and not decode_pools:
            raise ConfigError("serving.mode=agg needs the pool in decode.devices (0 given).", key="decode.devices",
                              fix="give the aggregated pool devices (decode.devices=N)")
        if not self.agg and (not prefill_pools or not decode_pools):
            raise ConfigError(
                "cmtwin simulate models disaggregated serving and needs both a prefill pool (prefill.instances > 0) "
                f"and a decode pool (decode.devices > 0); this plan has {len(prefill_pools)} prefill instance(s) and "
                f"{len(decode_pools)} decode instance(s).", key="prefill.instances",
                fix="give the deployment both pools")
        hw = spec.hardware
        self.fabric = fabric = fabric or fabric_for(spec)
        if trace is None and w.arrival == "trace":
            trace = TraceSource(w.trace, max_len=w.max_len)  # streamed: read chunk by chunk up to the window
        self.trace = trace
        if trace is not None:  # one validating pass over the window (bad rows exit 2 before a run row exists)
            if isinstance(trace, TraceSource):
                self.trace_window = trace.window(self.duration)
                name = trace.path.name
            else:
                self.trace_window, name = chunk_window(trace, self.duration), "(in memory)"
            check_window(self.trace_window, name, warmup_s=self.warmup)
        # --- the decode (or aggregated) instances: one layout, so one set of tables
        # ranks are attention groups (a DP rank, or a TP group of tp dies): requests are placed on a group, whose
        # KV room in request tokens is a die's over its replication (MLA under TP keeps the group's latent per die)
        dpool = decode_pools[0]
        tp = dpool.layout.tp
        self.tp = tp
        self.ranks = dpool.dies // tp
        self.batch_cap = round(dpool.batch_per_die * tp)
        die_kv = kv_capacity_per_die if kv_capacity_per_die is not None else dpool.memory.kv_token_capacity
        self.kv_cap = int(die_kv * tp / dpool.layout.kv_replication(spec.model))
        self.kv_bytes = dpool.memory.kv_bytes_per_token
        self.drafts = spec.mtp.draft_tokens
        self.decoders = [DecodeInstance(k, pool.devices, self.ranks, self.batch_cap, self.kv_cap)
                         for k, pool in enumerate(decode_pools)]
        self._one_decoder = self.decoders[0] if len(self.decoders) == 1 else None  # else route to the least loaded
        self.decode_devices = sum(d.devices for d in self.decoders)
        max_prompt = self.trace_window.max_prompt if trace is not None else (w.prompt_len if w.length_dist == "fixed" or w.prompt_cv == 0 else w.max_len)
        max_kv = max(self.kv_cap // max(1, self.batch_cap) * 2, w.decode_kv_len * 2)
        # --- EMS
        self.cache = None
        self.block_tokens = 0
        self.block_bytes = 0.0
        caching = plan.caching if not self.agg else None  # agg: no EMS prefix cache yet
        if caching is not None:
            ssd_blocks = int(caching.ssd_tb * 1e12 // caching.block_bytes) if caching.ssd_tb else 0
            self.cache = EMSCache(caching.blocks, ssd_blocks, caching.block_tokens)
            self.block_tokens = caching.block_tokens
            self.block_bytes = caching.block_bytes
        # --- cost tables (the twin, sampled once), prefill lines and capacity
        self.instances: list[PrefillInstance] = []
        if self.agg:
            from cmtwin.config.budget import token_budget
            from cmtwin.twin.step import agg_chunk_per_die

            # each group's step budget (the engine's), less its decode tokens, goes to its prompts' chunks
            self.group_budget = token_budget(spec).per_group
            self.verify = 1 + spec.mtp.draft_tokens
            if tables is None:
                tables = (AggDecodeTable(spec, plan, hw, fabric, max_batch=self.batch_cap, max_kv=max_kv,
                                         max_chunk=math.ceil(self.group_budget / tp)), None)
            self.dtable, self.ptable = tables
            chunk = agg_chunk_per_die(spec, dpool.batch_per_die)  # the steady-state need per die
            dstep = self.dtable.step_us(self.batch_cap, w.decode_kv_len, chunk) / 1e6
            self.full_forward_s = dstep
            self.prefill_capacity = prefill_requests_per_s(
                tokens_per_s=len(self.decoders) * self.ranks * (self.group_budget - self.batch_cap * self.verify) / dstep,
                prompt_len=w.prompt_len)
        else:
            tpd = prefill_pools[0].tokens_per_die
            if tables is None:
                tables = (DecodeTable(spec, plan, hw, fabric, max_batch=self.batch_cap, max_kv=max_kv),
                          PrefillTable(spec, plan, hw, fabric, max_tokens_per_die=tpd, max_prompt=max_prompt))
            self.dtable, self.ptable = tables
            for pool in prefill_pools:
                dies = plan.die_ids("prefill", pool.instance)
                fetch = None
                if caching is not None:
                    fetch = FetchCost(hw, fabric, dies=dies, plane=sim.ems_plane, ssd_gbps=sim.ssd_read_gbps,
                                      nodes_total=caching.nodes)
                self.instances.append(PrefillInstance(pool.instance, pool.dies, pool.devices, fetch))
            self.inst_budget = tpd * prefill_pools[0].dies  # tokens per forward per instance
            self.full_forward_s = self.ptable.step_us(tpd, w.prompt_len) / 1e6
            dstep = self.dtable.step_us(self.batch_cap, w.decode_kv_len) / 1e6
            self.prefill_capacity = prefill_requests_per_s(
                tokens_per_s=len(self.instances) * self.inst_budget / self.full_forward_s, prompt_len=w.prompt_len)
        self.tps = self.dtable.tokens_per_step
        self._kv_s = Memo(lambda prompt: self.ptable.kv_us[prompt] / 1e6) if self.ptable else None
        tps = self.tps  # output tokens -> the decode steps after its admission in which a request ends
        self._span = Memo(lambda output: math.ceil((output - 1) / tps) - 1)
        # ... and the tokens its steps emit beyond its output (its last step's are counted whole, then taken back)
        self._over = Memo(lambda output: (self._span[output] + 1) * tps - (output - 1))
        self.decode_capacity = decode_requests_per_s(slots=len(self.decoders) * self.ranks * self.batch_cap,
                                                     step_s=dstep, tokens_per_step=self.tps, output_len=w.output_len)
        self.capacity = min(self.decode_capacity, self.prefill_capacity)
        if trace is not None:
            self.rate = self.trace_window.rate_per_s
        else:
            self.rate = rate_per_s or w.rate_per_s or w.load * self.capacity
        self.lines = self.decoders if self.agg else self.instances  # where arriving requests wait
        self.batching = spec.policies.build("batching") or registry("batching").build({"name": "fcfs_lru"})
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.env = env = Environment()
        env.on(Arrival, lambda ev: None)  # a wake-up: the engine has just pulled the arrivals in (_pull)
        env.on(PrefillDone, self._on_prefill_done)
        env.on(DecodeStepDone, self._on_decode_done)
        env.on(DecodeWake, self._on_wake)
        env.on(SampleTick, self._on_sample)
        env.on(Stop, lambda ev: env.stop())
        env.on(MeasureStart, self._on_mark)
        env.on(GroupDown, self._on_group_down)
        env.on(GroupUp, self._on_group_up)
        env.on(PrefillDown, self._on_prefill_down)
        env.on(PrefillUp, self._on_prefill_up)
        self.sched = self.batching.scheduler(self)
        self._bulk = getattr(self.sched, "bulk_arrivals", False)  # (a third-party scheduler may not say)
        self._releases_need = getattr(self.sched, "releases_kv_need", False)  # release(r, d) is r.kv_need
        self._least_busy = getattr(self.sched, "places_least_busy", False)  # place(r, d): the least busy rank if r fits
        self.failures_seen: list[tuple[float, str, int]] = []  # (t, die, requests re-queued)
        self.totals = Totals()
        self.rec = Recorded()
        self.next_id = 0
        self.stream = iter(Stream(self.spec.workload, rate_per_s=self.rate, until_s=self.duration, seed=self.seed,
                                  trace=self.trace))
        self._load_chunk()  # the arrivals: times as a list (bisected), requests made a chunk at a time
        self._next_t = self._t[0] if self._t else math.inf
        self._wake_at = math.inf  # when the pending Arrival wake-up fires (inf: none)
        self.in_system = 0
        self._area_t = 0.0
        self.in_prefill = 0  # requests in running forwards (agg: being prefilled) that will finish their prompt
        self.done_rate = 0.0  # EWMA of completions per second (COMPLETION_RATE_TAU_S)
        self.done_kv_rate = 0.0  # ... and of the decode KV tokens they free
        self._rate_t = 0.0
        self._last = self._snapshot(0.0) | {"arr": 0}
        self._win_ttft: list[float] = []
        self._done: list[Request] = []  # completed since the last sample, latencies not yet recorded (`_record`)
        self.samples_taken = 0
        self._stalled = False  # a prefill instance waits for decode room (decode-aware admission)
        self._mark_start: dict | None = None
        # arrival and TTFT of window arrivals once the first token is known (two lists of floats, not a tuple each:
        # objects that live to the end would keep the garbage collector busy)
        self._first_at: list[float] = []
        self._first_ttft: list[float] = []
        self._series: list[tuple[float, int, int, float]] = []  # per sample: (t, waiting, decoding, output tokens)

    # ------------------------------------------------------------------ arrivals
    def _load_chunk(self) -> bool:
        """The stream's next non-empty chunk: its arrival times as a list of floats and its requests, made together
        (ids in arrival order, following the previous chunk's); False once the stream is exhausted."""
        for c in self.stream:
            if len(c):
                self._t = c.t.tolist()
                base = self.next_id
                # tens of thousands of objects that all live on: the cyclic garbage collector, which would scan the
                # young ones every 700 allocations, waits until they are made (a pause, not a change of policy)
                collect = gc.isenabled()
                gc.disable()
                try:
                    self._reqs = list(map(Request, range(base, base + len(c)), self._t, c.prompt.tolist(),
                                          c.output.tolist(), c.prefix.tolist(), c.prefix_len.tolist()))
                finally:
                    if collect:
                        gc.enable()
                self._ci = 0
                return True
        self._t, self._reqs = [], []
        self._ci = 0
        return False

    def _pull(self, now: float) -> float:
        """The engine's merge of the arrival stream (Environment.merge): the requests that arrived at or before
        `now` leave the pre-generated columns and join the lines, handed to the batching policy together (one
        instant's at a time if the policy plans per instant); an idle line that receives work starts it. Returns
        when the next request arrives.

        Arrivals are taken in before every event at or after their time that can read or change what routing reads
        (with bulk_arrivals, not the decode pool's events in disaggregated serving), so routing sees the lines as
        they were at the arrival, with one exception made exact by the wake-up: a line that is idle starts work on
        its arrival, so while one is idle an `Arrival` event is pending at the next request's time, and a pull
        with an idle line holds the requests of one instant, `now`."""
        t = self._t
        i = self._ci
        j = bisect_right(t, now, i)
        batch = self._reqs[i:j]
        since = sum(t[i:j])  # their arrival times, summed
        self.next_id += j - i
        self._ci = j
        while j == len(t) and self._load_chunk():  # the chunk ran out: the next may hold arrivals up to now too
            t = self._t
            j = self._ci = bisect_right(t, now)
            batch += self._reqs[:j]
            since += sum(t[:j])
            self.next_id += j
        self._next_t = nxt = t[j] if j < len(t) else math.inf
        if batch:
            self._arrive(batch, now, since)
        return nxt

    def _arrive(self, batch: list[Request], now: float, since: float) -> None:
        k = len(batch)
        T = self.totals
        T.in_system_area += self.in_system * (now - self._area_t)  # self._area(now)
        self._area_t = now
        T.in_system_area += k * now - since  # they have been in the system since they arrived
        self.in_system += k
        T.arrived += k
        lines = self.lines
        idle = before = None  # usually none: the lines are busy (a loop, not comprehensions: no call)
        for x in lines:
            if not x.busy and not x.failed:
                if idle is None:
                    idle, before = [], []
                idle.append(x)
                before.append(len(x.queue))
        if not self._bulk and batch[0].t_arrival != batch[-1].t_arrival:
            for _, same in groupby(batch, key=_ARRIVED):
                self.sched.enqueue(list(same), lines)
        else:
            self.sched.enqueue(batch, lines)
        if idle:
            for line, n in zip(idle, before):
                if len(line.queue) > n:
                    if self.agg:
                        self._start_step(line)
                    else:
                        self._try_prefill(line)
            if any(not x.busy for x in idle):
                self._arm()

    def _arm(self) -> None:
        """A line is idle: wake up when the next request arrives, which it may take (`_pull` starts it)."""
        nxt = self._next_t
        if nxt != self._wake_at and nxt < math.inf:
            self._wake_at = nxt
            self.env.schedule(nxt, _ARRIVAL)

    def _area(self, now: float) -> None:
        self.totals.in_system_area += self.in_system * (now - self._area_t)
        self._area_t = now

    # ------------------------------------------------------------------ prefill
    def decode_can_take(self, new: int) -> bool:
        """Decode-aware admission by request slots: can decode absorb `new` more requests finishing prefill?"""
        free, outstanding = 0, self.in_prefill + new
        for d in self.decoders:
            free += d.ranks * d.cap - d.n_active
            outstanding += len(d.ready)
        if outstanding <= free:
            return True
        frees = self.done_rate * self.full_forward_s * (1.0 + self.spec.sim.handoff_margin)
        return outstanding <= free + frees

    def decode_kv_room(self, fraction: float = 1.0) -> float:
        """Decode-aware admission by KV memory: KV tokens decode can still take within `fraction` of its capacity,
        less what handed-over and in-prefill requests will hold, plus (1 + sim.handoff_margin) x the KV freed
        during one forward."""
        ds = self.decoders
        free = sum(fraction * d.ranks * d.kv_cap - d.kv_sum - d.waiting_kv for d in ds)
        free -= sum(i.in_forward_kv for i in self.instances)
        return free + self.done_kv_rate * self.full_forward_s * (1.0 + self.spec.sim.handoff_margin)

    def _try_prefill(self, inst: PrefillInstance) -> None:
        if inst.busy or inst.failed:
            return
        if not inst.queue:
            self._arm()
            return
        fwd = self.sched.next_forward(inst, self.inst_budget)
        if fwd is None:
            self.totals.prefill_stalls += 1
            self._stalled = True
            self._arm()
            return
        tokens = fwd.tokens
        self.totals.computed_tokens += tokens
        tpd = tokens / inst.dies
        step = self.ptable.step_us(tpd if tpd >= 1 else 1, fwd.weighted / tokens)
        if inst.fetch is not None and fwd.fetched:
            per_token = self.block_bytes / self.block_tokens
            step += inst.fetch.us(fwd.fetched * per_token, fwd.ssd * per_token)
        env = self.env
        now = env.now
        done = tuple(fwd.done)
        inst.busy = True
        inst.busy_since = now
        inst.running = done  # the requests the forward completes (() when idle)
        inst.forwards += 1
        self.in_prefill += len(done)
        env.schedule(now + step / 1e6, PrefillDone(inst.index, done, inst.epoch))

    def _end_forward(self, inst: PrefillInstance, now: float) -> None:
        """inst's forward ends (done, or cut by a failure): the instance is idle and its prompts leave prefill."""
        inst.busy = False
        inst.busy_acc += now - inst.busy_since
        self.in_prefill -= len(inst.running)
        inst.running = ()

    def _on_prefill_done(self, ev: PrefillDone) -> None:
        now = self.env.now
        inst = self.instances[ev.instance]
        if ev.epoch != inst.epoch:
            return  # a failure cut this forward: its requests were re-queued then
        self._end_forward(inst, now)
        lanes = inst.lanes
        nl = len(lanes)
        ds = self.decoders
        one = self._one_decoder
        T = self.totals
        transfer, first = self._kv_s, self._first  # transfer[prompt]: kv_transfer_us(prompt) / 1e6, memoised
        first_at, first_ttft, lo, hi = self._first_at.append, self._first_ttft.append, self.warmup, self.duration
        push = heapq.heappush
        prompts = hits = 0
        self.sched.prefilled(ev.done, inst)
        for k, r in enumerate(ev.done):
            prompt = r.prompt
            prompts += prompt
            hits += r.hit
            if r.output <= 1:  # the prefill's token is the whole answer
                r.t_first = r.t_done = now
                first(r)
                self._complete((r,), now)
                continue
            lane = k % nl
            start = lanes[lane]
            t = (start if start > now else now) + transfer[prompt]
            lanes[lane] = t
            r.t_first = t
            arrived = r.t_arrival
            if lo <= arrived <= hi:  # _first(r)
                first_at(arrived)
                first_ttft(t - arrived)
            d = one or min(ds, key=_LOAD)  # global scheduler: least loaded
            d.waiting += 1  # d.wait(r)
            d.waiting_kv += r.kv_need
            push(d.ready, (t, r.id, r))
            if t < d.wake_at and not d.busy:
                d.wake_at = t
                self.env.schedule(t, DecodeWake(d.index))
        T.prompt_tokens += prompts
        T.hit_tokens += hits
        self._try_prefill(inst)
        if self._stalled:
            self._retry_stalled()

    def _retry_stalled(self) -> None:
        if self._stalled:
            self._stalled = False
            for other in self.instances:
                if not other.busy and other.queue:
                    self._try_prefill(other)

    # ------------------------------------------------------------------ decode
    def _on_wake(self, ev: DecodeWake) -> None:
        d = self.decoders[ev.instance]
        if self.env.now >= d.wake_at:
            d.wake_at = math.inf
        if not d.busy:
            self._start_step(d)

    def _slot(self, d: DecodeInstance, r: Request) -> bool:
        """Give r a slot on d (the batching policy picks the die); False when every die with a free slot lacks KV
        room (the caller checked that a slot is free)."""
        rank, added = self.sched.place(r, d)
        if rank < 0:
            self._blocked(d, r)
            return False
        d.take(r, rank, added)
        T = self.totals
        T.kv_tokens += added
        if T.kv_tokens > T.kv_tokens_peak:
            T.kv_tokens_peak = T.kv_tokens
        return True

    def _blocked(self, d: DecodeInstance, r: Request) -> None:
        """No die of d with a free slot has KV room for r: it waits (an admission deferred), unless d is empty."""
        if d.held == 0:  # an empty instance cannot take it: it would wait forever
            raise ConfigError(
                f"a request of {r.prompt:,} prompt + {r.output:,} output tokens needs more KV than a decode die "
                f"holds ({d.kv_cap:,} tokens): it can never be admitted.", key="workload.max_len",
                fix="lower workload.max_len (or the prompt/output lengths), or give decode dies more KV room "
                    "(a smaller decode.batch_per_device frees activation memory, more decode.devices spread weights)")
        self.totals.kv_blocked += 1

    def _release(self, d: DecodeInstance, r: Request) -> int:
        """r gives its slot and its KV back (the batching policy says how much KV that frees)."""
        freed = self.sched.release(r, d)
        d.leave(r, freed)
        self.totals.kv_tokens -= freed
        return freed

    def _decode(self, d: DecodeInstance, r: Request) -> None:
        """r starts decoding on its rank at d's current step."""
        step = d.step
        r.admit_step = step
        end = step + self._span[r.output]  # the step it ends in (its bucket)
        b = d.buckets.get(end)
        if b is None:
            d.buckets[end] = [r]
        else:
            b.append(r)
        d.n_active += 1
        d.sum_prompt += r.prompt
        d.sum_admit += step

    def _admit(self, d: DecodeInstance, now: float) -> None:
        """Requests whose KV has landed take a slot and start decoding, in order of landing, while a slot is free
        and the batching policy finds a die with KV room (the steps of `_slot`, `DecodeInstance.take` and
        `_decode`, written out: this runs once per request). Within the round the KV totals only grow, so their
        peaks are taken once at its end; the ranks' counts, levels and KV, which placement reads, move per request."""
        ready = d.ready
        if not ready or ready[0][0] > now:
            return
        slots = d.ranks * d.cap
        pop, place, step, buckets, span = heapq.heappop, self.sched.place, d.step, d.buckets, self._span
        rank_up, rank_kv, kv_cap, least = d.rank_up, d.rank_kv, d.kv_cap, self._least_busy
        held, die_peak = d.held, d.kv_die_peak
        admitted = prompts = kv_added = kv_left = 0
        while held < slots:
            r = ready[0][2]
            if least:  # place(r, d)'s usual answer, read here: the least busy rank, if r's KV fits there
                rank = d.least_busy()
                added = r.kv_need
                if rank_kv[rank] + added > kv_cap:
                    rank, added = place(r, d)
            else:
                rank, added = place(r, d)
            if rank < 0:
                d.held = held
                self._blocked(d, r)
                break
            pop(ready)
            kv_left += r.kv_need
            held += 1
            rank_up(rank)  # d.take(r, rank, added), its totals taken once per round
            kv = rank_kv[rank] + added
            rank_kv[rank] = kv
            if kv > die_peak:
                die_peak = kv
            kv_added += added
            r.rank = rank
            r.admit_step = step
            end = step + span[r.output]  # the step it ends in (its bucket)
            b = buckets.get(end)
            if b is None:
                buckets[end] = [r]
            else:
                b.append(r)
            admitted += 1
            prompts += r.prompt
            if not ready or ready[0][0] > now:
                break
        d.held = held
        d.kv_die_peak = die_peak
        d.waiting -= admitted
        d.waiting_kv -= kv_left
        kv = d.kv_sum = d.kv_sum + kv_added
        if kv > d.kv_sum_peak:
            d.kv_sum_peak = kv
        T = self.totals
        kv = T.kv_tokens = T.kv_tokens + kv_added
        if kv > T.kv_tokens_peak:
            T.kv_tokens_peak = kv
        d.n_active += admitted
        d.sum_prompt += prompts
        d.sum_admit += admitted * step

    def _agg_plan_step(self, d: DecodeInstance) -> int:
        """Aggregated serving: give waiting prompts a slot (FCFS; the batching policy picks the group), then spend
        each group's step budget left after its decode tokens on its prefilling prompts in FCFS order. Returns the
        prefill tokens of the step; the prompts it completes go to d.step_done."""
        q = d.queue
        slots = d.ranks * d.cap
        while q and d.held < slots and self._slot(d, q[0]):
            r = q.popleft()
            r.todo, r.hit = r.prompt, 0
            d.prefilling.append(r)
            self.in_prefill += 1
        left = self.group_budget - d.rank_dec * self.verify
        tokens = 0
        for r in d.prefilling:
            room = left[r.rank]
            if room <= 0:
                continue
            take = min(r.todo, int(room))
            r.todo -= take
            left[r.rank] -= take
            tokens += take
            if r.todo == 0:
                d.step_done.append(r)
        return tokens

    def _agg_join(self, d: DecodeInstance, now: float) -> None:
        """Prompts whose last chunk ran in the finished step: first token now, then decode on the same rank."""
        done = d.step_done
        if not done:
            return
        d.step_done = []
        d.prefilling = deque(r for r in d.prefilling if r.todo > 0)  # each group finishes its own prompts
        self.in_prefill -= len(done)
        for r in done:
            self.totals.prompt_tokens += r.prompt
            r.t_first = now
            self._first(r)
            if r.output <= 1:
                self._release(d, r)
                r.t_done = now
                self._complete((r,), now)
                continue
            d.rank_dec[r.rank] += 1
            self._decode(d, r)

    def _start_step(self, d: DecodeInstance) -> None:
        now = self.env.now
        if self.agg:
            chunk = self._agg_plan_step(d)
            idle = d.n_active == 0 and chunk == 0
        else:
            self._admit(d, now)
            chunk = 0
            idle = d.n_active == 0
        if idle:
            if d.busy:
                d.busy = False
                d.busy_acc += now - d.since
            if self.agg:
                self._arm()  # a line with nothing to do
            if d.ready and d.ready[0][0] < d.wake_at:
                d.wake_at = d.ready[0][0]
                self.env.schedule(d.wake_at, DecodeWake(d.index))
            return
        if not d.busy:
            d.busy = True
            d.since = now
        kv = ((d.sum_prompt + self.tps * (d.n_active * d.step - d.sum_admit)) / d.n_active
              if d.n_active else float(self.spec.workload.prompt_len))
        if self.agg:
            d.step_chunk = chunk
            self.totals.computed_tokens += chunk
            dt = self.dtable.step_us(max(int(d.rank_dec.max()), 1), kv, chunk / d.ranks / self.tp) / 1e6
        else:
            dt = self.dtable.step_us(d.busiest, kv) / 1e6
        d.batch_sum += d.n_active
        self.env.schedule(now + dt, DecodeStepDone(d.index, d.step))

    def _on_decode_done(self, ev: DecodeStepDone) -> None:
        now = self.env.now
        d = self.decoders[ev.instance]
        k = ev.step
        T = self.totals
        T.decode_steps += 1
        d.steps += 1
        emitted = d.n_active * self.tps
        finished = d.buckets.pop(k, None)
        if finished:
            freed = prompts = admits = 0
            release, rank_down, rank_kv, over = self.sched.release, d.rank_down, d.rank_kv, self._over
            need = self._releases_need
            for r in finished:
                emitted -= over[r.output]  # its steps: k - r.admit_step + 1 = span + 1
                f = r.kv_need if need else release(r, d)
                rank = r.rank  # d.leave(r, f), its totals taken once per step
                rank_down(rank)
                rank_kv[rank] -= f
                freed += f
                prompts += r.prompt
                admits += r.admit_step
                r.t_done = now
            d.held -= len(finished)
            d.kv_sum -= freed
            if self.agg:
                for r in finished:
                    d.rank_dec[r.rank] -= 1
            T.kv_tokens -= freed
            d.n_active -= len(finished)
            d.sum_prompt -= prompts
            d.sum_admit -= admits
            self._complete(finished, now)
            decay = math.exp(-(now - self._rate_t) / COMPLETION_RATE_TAU_S)
            self._rate_t = now
            self.done_rate = self.done_rate * decay + len(finished) / COMPLETION_RATE_TAU_S
            self.done_kv_rate = self.done_kv_rate * decay + freed / COMPLETION_RATE_TAU_S
        T.output_tokens += emitted
        d.out_tokens += emitted
        d.step = k + 1
        if self.agg:
            self._agg_join(d, now)
        self._start_step(d)
        if finished:
            self._retry_stalled()

    # ------------------------------------------------------------------ completion and metrics
    def _first(self, r: Request) -> None:
        """r's first token time is known: keep its TTFT for the steady-state check if it arrived in the window."""
        if self.warmup <= r.t_arrival <= self.duration:
            self._first_at.append(r.t_arrival)
            self._first_ttft.append(r.t_first - r.t_arrival)

    def _complete(self, done, now: float) -> None:
        """The requests `done` completed now: they leave the system; the latencies of those that arrived in the
        measurement window are recorded."""
        self._area(now)
        self.in_system -= len(done)
        T = self.totals
        T.completed += len(done)
        T.last_done = now
        self._done += done  # their latencies are computed together, as columns, at the next sample (`_record`)

    def _record(self) -> None:
        """The latencies of the requests completed since the last call, computed on their columns (in completion
        order): every TTFT to the sample window's median, those of requests that arrived in the measurement
        window to `rec` (TPOT for those with more than one output token)."""
        done = self._done
        if not done:
            return
        self._done = []
        n = len(done)
        arrived = np.fromiter(map(_ARRIVED, done), float, n)
        first = np.fromiter(map(_FIRST, done), float, n)
        end = np.fromiter(map(_DONE, done), float, n)
        ttft = first - arrived
        if self.sink is not None:  # the samples' TTFT median
            self._win_ttft += ttft.tolist()
        inside = (arrived >= self.warmup) & (arrived <= self.duration)
        rec = self.rec
        if inside.all():
            rec.ttft.append(ttft)
            rec.e2e.append(end - arrived)
        else:
            rec.ttft.append(ttft[inside])
            rec.e2e.append((end - arrived)[inside])
        out = np.fromiter(map(_OUTPUT, done), np.int64, n)
        more = inside & (out > 1)
        rec.tpot.append((end - first)[more] / (out[more] - 1))

    def census(self) -> dict[str, int]:
        """Where every request that arrived is now; the parts add up to `arrived`."""
        ds = self.decoders
        queued = sum(len(i.queue) for i in self.instances) + sum(len(d.queue) for d in ds)
        return {"arrived": self.totals.arrived, "completed": self.totals.completed, "queued_prefill": queued,
                "in_prefill": self.in_prefill, "waiting_decode": sum(len(d.ready) for d in ds),
                "decoding": sum(d.n_active for d in ds)}

    def _on_sample(self, ev) -> None:
        now = self.env.now
        ds = self.decoders
        waiting = (sum(len(i.queue) for i in self.instances) + sum(len(d.queue) + len(d.ready) for d in ds))
        self._series.append((now, waiting, sum(d.n_active for d in ds), self.totals.output_tokens))
        self.samples_taken += 1
        if self.sink is not None:
            rows = self._sample_rows(now)
            if rows:
                self.sink(rows)
        elif len(self._done) >= RECORD_BATCH:  # no one reads the samples' rows: latencies are recorded in batches
            self._record()
        if self.progress is not None:
            self.progress(min(now, self.duration), self.duration)
        busy = self.in_system > 0 or self.env.pending > 1 or self._next_t < math.inf
        if now + self.interval <= self.duration or (self.drain and busy):
            self.env.schedule(now + self.interval, _SAMPLE)

    def _sample_rows(self, now: float) -> list[tuple[float, str, float]]:
        L, T = self._last, self.totals
        dt = now - L["t"]
        if dt <= 0:
            return []
        S = self._snapshot(now)
        pdev = sum(i.devices for i in self.instances) or self.decode_devices  # agg: the one pool
        steps = S["steps"] - L["steps"]
        prompt = S["prompt"] - L["prompt"]
        ds = self.decoders
        rows = [
            (now, "arrivals_per_s", (T.arrived - L["arr"]) / dt),
            (now, "completions_per_s", (S["done"] - L["done"]) / dt),
            (now, "prefill.tokens_per_s_per_device", prompt / dt / pdev),
            (now, "prefill.computed_tokens_per_s_per_device", (S["computed"] - L["computed"]) / dt / pdev),
            (now, "decode.tokens_per_s_per_device", (S["out"] - L["out"]) / dt / self.decode_devices),
            (now, "prefill.utilisation", (S["pbusy"] - L["pbusy"]) / dt / len(self.instances or ds)),
            (now, "decode.utilisation", (S["dbusy"] - L["dbusy"]) / dt / len(ds)),
            (now, "decode.batch_occupancy", ((S["batch"] - L["batch"]) / steps / (self.ranks * self.batch_cap)) if steps else 0.0),
            (now, "queue.prefill", float(sum(len(i.queue) for i in self.instances) + sum(len(d.queue) for d in ds))),
            (now, "queue.decode_wait", float(sum(len(d.ready) for d in ds))),
            (now, "requests.in_system", float(self.in_system)),
            (now, "cache.hit_ratio", (S["hit"] - L["hit"]) / prompt if prompt else 0.0),
            (now, "decode.kv_tokens", float(T.kv_tokens)),
        ]
        self._record()
        if self._win_ttft:
            rows.append((now, "ttft_ms.p50", 1e3 * statistics.median(self._win_ttft)))
            self._win_ttft = []
        self._last = S | {"arr": T.arrived}
        return rows

    # ------------------------------------------------------------------ run
    def run(self) -> SimResult:
        env = self.env
        # arrivals join the lines before any event at or after their time, except, for a batching policy that routes
        # them by the lines' queues alone (bulk_arrivals), the decode pool's events in disaggregated serving: these
        # neither change a prefill line nor read one, save to retry an idle one, and while a line is idle the
        # arrivals are taken in at their own time anyway (the wake-up)
        blind = (DecodeStepDone, DecodeWake) if self._bulk and not self.agg else ()
        env.merge(self._pull, self._next_t, blind=blind)
        self._arm()  # every line is idle
        env.schedule(min(self.interval, self.duration), _SAMPLE)
        env.schedule(self.warmup, _MARK)
        env.schedule(self.duration, _STOP)
        for ev in self._failure_events():
            env.schedule(ev[0], ev[1])
        env.run()
        self._mark_end = self._snapshot(env.now)
        if self.drain:
            env.run()
            if self.offline:  # a batch job is measured to its last completion (everything is idle by then)
                self._mark_end = self._snapshot(self.totals.last_done)
        now = env.now
        self._area(now)
        self._record()
        return self._result(now)

    def _snapshot(self, now: float) -> dict[str, float]:
        T = self.totals
        ds = self.decoders
        dbusy = sum(d.busy_total(now) for d in ds)
        return {"t": now, "out": T.output_tokens, "prompt": T.prompt_tokens, "computed": T.computed_tokens,
                "hit": T.hit_tokens, "pbusy": sum(i.busy_total(now) for i in self.instances) if self.instances else dbusy,
                "dbusy": dbusy, "steps": T.decode_steps, "batch": sum(d.batch_sum for d in ds), "done": T.completed,
                "dout": [d.out_tokens for d in ds], "dsteps": [d.steps for d in ds],
                "dbatch": [d.batch_sum for d in ds], "dbusys": [d.busy_total(now) for d in ds]}

    # ------------------------------------------------------------------ failures in time
    def _failure_events(self) -> list[tuple[float, GroupDown | PrefillDown]]:
        """failures.events as (time, event): a decode (agg) die takes its attention group down, a prefill die its
        whole prefill instance."""
        f = self.spec.failures
        if not f.events:
            return []
        roles = {d.die: d for d in self.plan.dies}
        out = []
        for e in f.events:
            r = roles.get(e.die)
            if r is None:
                raise ConfigError(f"failures.events: die {e.die!r} is not a die the plan uses.", key="failures.events",
                                  fix="name a die from `cmtwin plan --format json` (plan.dies)")
            out.append((e.t_s, PrefillDown(r.instance, e.die) if r.role == "prefill"
                        else GroupDown(r.instance, r.rank // self.tp, e.die)))
        return out

    def _on_prefill_down(self, ev: PrefillDown) -> None:
        """The instance stops: the prompts of the forward it was running and those queued on it go back to the
        other instances' queues (recomputed from scratch); it takes nothing until it recovers."""
        now = self.env.now
        inst = self.instances[ev.instance]
        inst.failed = True
        inst.epoch += 1
        cut = list(inst.running)  # the forward it was running (none when idle)
        if inst.busy:
            self._end_forward(inst, now)
        queued = list(inst.queue)
        inst.queue.clear()
        inst.queued_tokens = 0
        requeued = cut + queued
        for r in requeued:
            r.todo, r.hit = -1, 0
        self._failed(now, ev.die, requeued, PrefillUp(ev.instance))

    def _on_prefill_up(self, ev: PrefillUp) -> None:
        inst = self.instances[ev.instance]
        inst.failed = False
        self._recovered()
        self._try_prefill(inst)

    def _failed(self, now: float, die: str, requeued: list[Request], recovery) -> None:
        """What every failure does after taking its requests back: count them, mark the event in the samples (the
        plot and the TUI show it), queue them again where arrivals go (a failed line takes none), start the idle
        lines, and schedule the recovery."""
        self.failures_seen.append((now, die, len(requeued)))
        if self.sink is not None:
            self.sink([(now, "sim.failure", float(len(requeued)))])
        if requeued:
            lines = self.lines
            self.sched.enqueue(requeued, lines)
            for line in lines:
                if line.queue and not line.busy:
                    (self._start_step if self.agg else self._try_prefill)(line)
        self.env.schedule(now + self.spec.failures.recovery_s, recovery)

    def _recovered(self) -> None:
        if self.sink is not None:
            self.sink([(self.env.now, "sim.recovery", 1.0)])

    def _on_group_down(self, ev: GroupDown) -> None:
        """The group stops: its requests give back their slot and KV and go back to the queue as prompts of what
        they have so far (prompt + generated tokens, recomputed), with the rest of their output to produce; no new
        request lands on it until it recovers."""
        now = self.env.now
        d = self.decoders[ev.instance]
        g = ev.rank
        victims = [r for b in d.buckets.values() for r in b if r.rank == g]
        if victims:
            gone = {id(r) for r in victims}
            for k in list(d.buckets):
                d.buckets[k] = [r for r in d.buckets[k] if id(r) not in gone]
        prefilling = [r for r in d.prefilling if r.rank == g]
        if prefilling:
            d.prefilling = deque(r for r in d.prefilling if r.rank != g)
            self.in_prefill -= len(prefilling)
        for r in victims:
            generated = max(0, int((d.step - r.admit_step) * self.tps))
            self._release(d, r)
            if self.agg:
                d.rank_dec[g] -= 1
            d.n_active -= 1
            d.sum_prompt -= r.prompt
            d.sum_admit -= r.admit_step
            r.prompt += generated
            r.output = max(1, r.output - generated)
        for r in prefilling:
            self._release(d, r)
        requeued = victims + prefilling
        for r in requeued:
            r.todo, r.hit, r.rank, r.admit_step = -1, 0, -1, -1
        d.rank_kv[g] = FAILED_KV  # no batching policy places a request where the KV check cannot pass
        self._failed(now, ev.die, requeued, GroupUp(ev.instance, g))

    def _on_group_up(self, ev: GroupUp) -> None:
        d = self.decoders[ev.instance]
        d.rank_kv[ev.rank] = 0
        self._recovered()
        if not d.busy:
            self._start_step(d)

    def _on_mark(self, ev) -> None:
        self._mark_start = self._snapshot(self.env.now)

    def _result(self, end: float) -> SimResult:
        a, b = self._mark_start or self._snapshot(0.0), self._mark_end
        span = max(1e-9, b["t"] - a["t"])
        ds = self.decoders
        ddev = self.decode_devices
        pdev = sum(i.devices for i in self.instances)
        pool_dev = pdev or ddev  # agg: prefill runs on the decode pool
        slots_per_inst = self.ranks * self.batch_cap
        steps = b["steps"] - a["steps"]
        prompt = b["prompt"] - a["prompt"]
        hit = b["hit"] - a["hit"]
        lat = self.rec.joined()
        ttft_s, tpot_s, e2e_s = lat.ttft, lat.tpot, lat.e2e
        slo = self.spec.slo
        T = self.totals

        def pct(xs):
            if not len(xs):
                return {"p50": None, "p90": None, "p99": None, "mean": None}
            arr = xs * 1e3
            p = np.percentile(arr, [50, 90, 99])
            return {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3), "p99": round(float(p[2]), 3),
                    "mean": round(float(arr.mean()), 3)}

        n = len(e2e_s)
        has_slo = slo.ttft_ms is not None or slo.tpot_ms is not None
        good = n if has_slo else None  # no target set: no goodput (not a misleading 100%)
        if n and has_slo:
            ok = np.ones(n, dtype=bool)
            if slo.ttft_ms is not None:
                ok &= ttft_s * 1e3 <= slo.ttft_ms
            if slo.tpot_ms is not None and len(tpot_s) == n:
                ok &= tpot_s * 1e3 <= slo.tpot_ms
            good = int(ok.sum())
        window = span if self.offline and self.drain else self.duration - self.warmup  # a batch job: its makespan
        census = self.census()
        load = self.rate / self.capacity if 0 < self.capacity < math.inf else None
        out_rate = (b["out"] - a["out"]) / span
        die_peak = max(d.kv_die_peak for d in ds)
        per_instance = {}
        for k, d in enumerate(ds):
            st = b["dsteps"][k] - a["dsteps"][k]
            per_instance[str(d.index)] = {
                "tokens_per_s_per_device": (b["dout"][k] - a["dout"][k]) / span / d.devices,
                "utilisation": (b["dbusys"][k] - a["dbusys"][k]) / span,
                "batch_occupancy": (b["dbatch"][k] - a["dbatch"][k]) / st / slots_per_inst if st else 0.0,
                "kv_peak_tokens_per_die": d.kv_die_peak,
                "kv_peak_tokens": d.kv_sum_peak,
            }
        return SimResult(
            duration_s=self.duration,
            end_s=end,
            rate_per_s=self.rate,
            capacity_per_s={"prefill": self.prefill_capacity, "decode": self.decode_capacity},
            prefill={
                "tokens_per_s_per_device": prompt / span / pool_dev,
                "computed_tokens_per_s_per_device": (b["computed"] - a["computed"]) / span / pool_dev,
                "prompt_tokens": prompt,  # of the prompts whose prefill finished in the window
                "computed_tokens": prompt - hit,  # ... of which computed (the rest reused)
                "token_saving_ratio": hit / prompt if prompt else 0.0,
                "utilisation": (b["pbusy"] - a["pbusy"]) / span / len(self.instances or ds),
                "devices": pdev,
            },
            decode={
                "tokens_per_s_per_device": out_rate / ddev,
                "tpot_ms": pct(tpot_s),
                "utilisation": (b["dbusy"] - a["dbusy"]) / span / len(ds),
                "batch_occupancy": ((b["batch"] - a["batch"]) / steps / slots_per_inst) if steps else 0.0,
                "tokens_per_step": self.tps,
                "kv_peak_fraction": die_peak / self.kv_cap if self.kv_cap else 0.0,
                "kv_peak_tokens_per_die": die_peak,
                "kv_peak_tokens": T.kv_tokens_peak,
                "kv_peak_bytes_per_die": die_peak * self.kv_bytes,
                "kv_peak_bytes": T.kv_tokens_peak * self.kv_bytes,
                "devices": ddev,
                "instances": len(ds),
                "per_instance": per_instance,
            },
            tokens_per_s_per_device=out_rate / (pdev + ddev),
            makespan_s=T.last_done if T.completed == T.arrived and T.arrived else None,
            ttft_ms=pct(ttft_s),
            tpot_ms=pct(tpot_s),
            e2e_ms=pct(e2e_s),
            goodput=None if good is None else (good / window if window > 0 else 0.0),
            goodput_fraction=None if good is None else (good / n if n else 0.0),
            cache_hit_ratio=hit / prompt if prompt else 0.0,
            requests={**census, "measured": n, "good": good, "kv_blocked": T.kv_blocked,
                      "prefill_stalls": T.prefill_stalls},
            little={"mean_in_system": T.in_system_area / end if end else 0.0, "area": T.in_system_area},
            events=self.env.events,
            latencies=lat,
            slo={"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
            warmup_s=self.warmup,
            load=load,
            steady_state=steady_state((self._first_at, self._first_ttft), self._series, (self.warmup, self.duration),
                                      rate=self.rate, load=load, decode_devices=ddev, offline=self.offline),
        )


@dataclass
class SimResult:
    """A simulation's summary; to_dict() uses the plan prediction's names where they mean the same."""

    duration_s: float
    end_s: float
    rate_per_s: float
    capacity_per_s: dict
    prefill: dict
    decode: dict
    tokens_per_s_per_device: float
    makespan_s: float | None
    ttft_ms: dict
    tpot_ms: dict
    e2e_ms: dict
    goodput: float | None  # None when no slo.* target is set
    goodput_fraction: float | None
    cache_hit_ratio: float
    requests: dict
    little: dict
    events: int
    latencies: Latencies
    slo: dict = field(default_factory=dict)  # the targets goodput is measured against (None: not set)
    warmup_s: float = 0.0
    load: float | None = None  # offered rate / the twin's capacity estimate
    steady_state: dict = field(default_factory=dict)  # cmtwin/sim/steady.py

    def to_dict(self) -> dict:
        def r(x):
            if isinstance(x, float):
                return round(x, 4) if math.isfinite(x) else None
            if isinstance(x, dict):
                return {k: r(v) for k, v in x.items()}
            return x

        return {
            "duration_s": self.duration_s, "warmup_s": r(self.warmup_s), "rate_per_s": r(self.rate_per_s),
            "load": r(self.load), "capacity_per_s": r(self.capacity_per_s),
            "prefill": r(self.prefill), "decode": r(self.decode),
            "tokens_per_s_per_device": r(self.tokens_per_s_per_device), "makespan_s": r(self.makespan_s),
            "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms,
            "slo": self.slo, "goodput": r(self.goodput), "goodput_fraction": r(self.goodput_fraction),
            "cache_hit_ratio": r(self.cache_hit_ratio), "requests": self.requests, "events": self.events,
            "steady_state": self.steady_state,
        }

    def metrics(self) -> dict[str, float]:
        """Flat scalars for the store: decode.tokens_per_s_per_device, ttft_ms.p99, goodput..."""
        out: dict[str, float] = {}

        def walk(prefix: str, v) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else k, x)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and math.isfinite(v):
                out[prefix] = float(v)

        walk("", self.to_dict())
        reached = self.steady_state.get("reached")
        if reached is not None:  # 1 = steady, 0 = not (bools are not walked); absent when not applicable
            out["steady_state.reached"] = 1.0 if reached else 0.0
        return out
