"""The serving path of a disaggregated deployment, at iteration granularity.

Entities: requests; a global scheduler with one queue per prefill instance; prefill instances running
chunked-prefill forwards up to their token budget (prefill.tokens_per_device x devices); the RDMA links
that carry each finished prompt's KV to decode; the decode instance, whose DP ranks step in lockstep
(one event per step) with continuous batching bounded by the batch and the KV capacity of every die, and
MTP's expected tokens per step; the EMS caching pool (prefix-hash blocks, LRU DRAM + SSD, served over UB
or VPC). All times come from the twin (cmtwin/sim/tables.py). With serving.mode=agg there is no prefill pool:
the decode instance prefills prompts chunk by chunk (FCFS, up to the chunk budget per die per step) inside its
decode steps, and a prompt decodes on the rank that prefilled it (no KV transfer).

Timing conventions: TTFT = arrival -> the prompt's prefill forward ends and its KV lands on its decode rank
(the twin's ttft = forward + KV transfer); TPOT = (completion - first token) / (output tokens - 1),
including any wait for a decode slot; end-to-end = arrival -> last token.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cmtwin.errors import ConfigError
from cmtwin.sim.cache import EMSCache
from cmtwin.sim.engine import (
    Arrival,
    DecodeStepDone,
    DecodeWake,
    Environment,
    MeasureStart,
    PrefillDone,
    SampleTick,
    Stop,
)
from cmtwin.sim.tables import AggDecodeTable, DecodeTable, FetchCost, PrefillTable
from cmtwin.sim.traffic import Chunk, Stream, load_trace

_ARRIVAL = Arrival()
_WAKE = DecodeWake()
_SAMPLE = SampleTick()
_STOP = Stop()
_MARK = MeasureStart()


class Request:
    """One request's state and timestamps (seconds of simulated time)."""

    __slots__ = ("id", "t_arrival", "prompt", "output", "prefix", "prefix_len", "todo", "hit", "t_first",
                 "t_done", "rank", "kv_need", "admit_step", "end_step")

    def __init__(self, rid: int, t: float, prompt: int, output: int, prefix: int, prefix_len: int):
        self.id = rid
        self.t_arrival = t
        self.prompt = prompt
        self.output = output
        self.prefix = prefix
        self.prefix_len = prefix_len
        self.todo = -1  # prompt tokens still to compute (-1: not yet looked up in the cache)
        self.hit = 0
        self.t_first = -1.0
        self.t_done = -1.0
        self.rank = -1
        self.kv_need = 0
        self.admit_step = -1
        self.end_step = -1


class PrefillInstance:
    __slots__ = ("index", "dies", "devices", "queue", "queued_tokens", "busy", "busy_since", "busy_acc",
                 "lanes", "in_forward", "forwards", "fetch")

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
        self.in_forward = 0
        self.forwards = 0
        self.fetch = fetch

    def busy_total(self, now: float) -> float:
        return self.busy_acc + (now - self.busy_since if self.busy else 0.0)


@dataclass
class Totals:
    """Cumulative counters (simulated)."""

    arrived: int = 0
    completed: int = 0
    prompt_tokens: int = 0  # prompt tokens of requests whose prefill finished
    computed_tokens: int = 0  # prompt tokens actually computed by prefill (the rest came from the cache)
    hit_tokens: int = 0
    ssd_hit_tokens: int = 0
    output_tokens: float = 0.0
    kv_blocked: int = 0  # admissions deferred because no rank had KV room
    prefill_stalls: int = 0  # forwards deferred by decode-aware admission
    in_system_area: float = 0.0  # integral of requests in the system over time
    decode_steps: int = 0
    kv_peak_fraction: float = 0.0


@dataclass
class Recorded:
    """Per-request latencies of requests that arrived inside the measurement window and completed."""

    ttft: list = field(default_factory=list)
    tpot: list = field(default_factory=list)
    e2e: list = field(default_factory=list)


class Simulator:
    """A discrete-event serving simulation of a compiled disaggregated plan.

    sink(rows) receives time-series samples [(t, name, value), ...] as they are taken; progress(now, end)
    is called at every sample.
    """

    def __init__(self, spec, plan, *, fabric=None, rate_per_s: float | None = None, duration_s: float | None = None,
                 seed: int | None = None, drain: bool | None = None, trace: Chunk | None = None,
                 sink: Callable[[list], None] | None = None, progress: Callable[[float, float], None] | None = None,
                 kv_capacity_per_die: int | None = None, tables: tuple | None = None):
        from cmtwin.planner.plan import fabric_for

        self.spec, self.plan = spec, plan
        sim, w = spec.sim, spec.workload
        self.duration = float(duration_s if duration_s is not None else sim.duration_s)
        self.warmup = sim.warmup_s if sim.warmup_s is not None else 0.1 * self.duration
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
        if len(decode_pools) > 1:
            raise ConfigError(
                f"cmtwin simulate models one decode instance; this deployment has decode.instances="
                f"{len(decode_pools)}.", key="decode.instances", fix="set decode.instances=1")
        hw = spec.hardware
        self.fabric = fabric = fabric or fabric_for(spec)
        if trace is None and w.arrival == "trace":
            trace = load_trace(w.trace, max_len=w.max_len)
        self.trace = trace
        # --- the decode instance
        dpool = decode_pools[0]
        self.dpool = dpool
        self.ranks = dpool.dies
        self.batch_cap = dpool.batch_per_die
        cap = dpool.memory.kv_token_capacity
        self.kv_cap = int(kv_capacity_per_die if kv_capacity_per_die is not None else cap)
        self.drafts = spec.mtp.draft_tokens
        max_prompt = int(trace.prompt.max()) if trace is not None else (w.prompt_len if w.length_dist == "fixed" or w.prompt_cv == 0 else w.max_len)
        # --- cost tables (the twin, sampled once)
        max_kv = max(self.kv_cap // max(1, self.batch_cap) * 2, w.decode_kv_len * 2)
        if self.agg:
            from cmtwin.planner.layout import agg_chunk_per_die

            self.chunk = agg_chunk_per_die(spec, self.batch_cap)  # prefill tokens per die per step (budget)
            if tables is None:
                tables = (AggDecodeTable(spec, plan, hw, fabric, max_batch=self.batch_cap, max_kv=max_kv,
                                         max_chunk=self.chunk), None)
            self.dtable, self.ptable = tables
            self.tps = self.dtable.tokens_per_step
            self.cache = None
            self.block_tokens = 0
            self.block_bytes = 0.0
            self.instances = []
            self.inst_budget = self.chunk * self.ranks
            steps_per_req = math.ceil(max(0, w.output_len - 1) / self.tps) if w.output_len > 1 else 0
            dstep = self.dtable.step_us(self.batch_cap, w.prompt_len + w.output_len / 2, self.chunk) / 1e6
            self.full_forward_s = dstep
            self.decode_capacity = (self.ranks * self.batch_cap / (steps_per_req * dstep)) if steps_per_req else float("inf")
            self.prefill_capacity = self.inst_budget / dstep / w.prompt_len
            self.capacity = min(self.decode_capacity, self.prefill_capacity)
            if trace is not None:
                self.rate = len(trace) / max(1e-9, float(trace.t[-1])) if len(trace) > 1 else 1.0
            else:
                self.rate = rate_per_s or w.rate_per_s or w.load * self.capacity
            self._reset()
            return
        tpd = prefill_pools[0].tokens_per_die
        if tables is None:
            dt = DecodeTable(spec, plan, hw, fabric, max_batch=self.batch_cap, max_kv=max(self.kv_cap // max(1, self.batch_cap) * 2, w.decode_kv_len * 2))
            pt = PrefillTable(spec, plan, hw, fabric, max_tokens_per_die=tpd, max_prompt=max_prompt)
            tables = (dt, pt)
        self.dtable, self.ptable = tables
        self.tps = self.dtable.tokens_per_step
        # --- EMS
        self.cache = None
        self.block_tokens = 0
        self.block_bytes = 0.0
        caching = plan.caching
        if caching is not None:
            ssd_blocks = int(caching.ssd_tb * 1e12 // caching.block_bytes) if caching.ssd_tb else 0
            self.cache = EMSCache(caching.blocks, ssd_blocks, caching.block_tokens)
            self.block_tokens = caching.block_tokens
            self.block_bytes = caching.block_bytes
        # --- prefill instances
        self.instances: list[PrefillInstance] = []
        for pool in prefill_pools:
            dies = [r.die for r in plan.dies if r.role == "prefill" and r.instance == pool.instance]
            fetch = None
            if caching is not None:
                fetch = FetchCost(hw, fabric, dies=dies, plane=sim.ems_plane, ssd_gbps=sim.ssd_read_gbps,
                                  nodes_total=caching.nodes)
            self.instances.append(PrefillInstance(pool.instance, pool.dies, pool.devices, fetch))
        self.inst_budget = tpd * prefill_pools[0].dies  # tokens per forward per instance
        self.full_forward_s = self.ptable.step_us(tpd, w.prompt_len) / 1e6
        # --- capacity and offered load
        steps_per_req = math.ceil(max(0, w.output_len - 1) / self.tps) if w.output_len > 1 else 0
        kv_mean = w.prompt_len + w.output_len / 2
        dstep = self.dtable.step_us(self.batch_cap, kv_mean) / 1e6
        self.decode_capacity = (self.ranks * self.batch_cap / (steps_per_req * dstep)) if steps_per_req else float("inf")
        self.prefill_capacity = len(self.instances) * self.inst_budget / self.full_forward_s / w.prompt_len
        self.capacity = min(self.decode_capacity, self.prefill_capacity)
        if trace is not None:
            self.rate = len(trace) / max(1e-9, float(trace.t[-1])) if len(trace) > 1 else 1.0
        else:
            self.rate = rate_per_s or w.rate_per_s or w.load * self.capacity
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.env = env = Environment()
        env.on(Arrival, self._on_arrival)
        env.on(PrefillDone, self._on_prefill_done)
        env.on(DecodeStepDone, self._on_decode_done)
        env.on(DecodeWake, self._on_wake)
        env.on(SampleTick, self._on_sample)
        env.on(Stop, lambda ev: env.stop())
        env.on(MeasureStart, self._on_mark)
        self.totals = Totals()
        self.rec = Recorded()
        self.next_id = 0
        self.stream = iter(Stream(self.spec.workload, rate_per_s=self.rate, until_s=self.duration, seed=self.seed,
                                  trace=self.trace))
        self._chunk: Chunk | None = None
        self._ci = 0
        self.in_system = 0
        self._area_t = 0.0
        # decode
        self.rank_count = np.zeros(self.ranks, dtype=np.int64)
        self.rank_kv = np.zeros(self.ranks, dtype=np.int64)
        self.n_active = 0
        self.sum_prompt = 0
        self.sum_admit = 0
        self.step = 0
        self.buckets: dict[int, list[Request]] = {}
        self.ready: list[tuple[float, int, Request]] = []
        self.decode_busy = False
        self.decode_busy_acc = 0.0
        self.decode_since = 0.0
        self.wake_at = math.inf
        self.in_prefill = 0  # requests in running forwards that will finish their prompt
        self.rr = 0
        self.done_rate = 0.0  # EWMA of completions per second (tau 5 s)
        self._rate_t = 0.0
        self.batch_sum = 0.0  # sum over steps of active requests (for occupancy)
        # sampling window
        self._last = {"t": 0.0, "arr": 0, "done": 0, "out": 0.0, "prompt": 0, "computed": 0, "hit": 0,
                      "pbusy": 0.0, "dbusy": 0.0, "steps": 0, "batch": 0.0}
        self._win_ttft: list[float] = []
        self.samples_taken = 0
        self._stalled = False  # a prefill instance waits for decode room (decode-aware admission)
        self._pending_arrival: Request | None = None
        self._fetch_bytes = 0.0
        self._fetch_ssd = 0.0
        self._mark_start: dict | None = None
        # aggregated serving: FCFS prompts waiting for a slot, prompts being prefilled (slot and KV held),
        # the prefill tokens of the running step and the prompts it finishes
        self.agg_queue: deque[Request] = deque()
        self.prefilling: deque[Request] = deque()
        self.rank_dec = np.zeros(self.ranks, dtype=np.int64)  # decoding requests per rank (slots minus prefill)
        self._step_chunk = 0
        self._step_done: list[Request] = []

    # ------------------------------------------------------------------ arrivals
    def _next_request(self) -> Request | None:
        while self._chunk is None or self._ci >= len(self._chunk):
            try:
                self._chunk = next(self.stream)
            except StopIteration:
                return None
            self._ci = 0
        c, i = self._chunk, self._ci
        self._ci += 1
        r = Request(self.next_id, float(c.t[i]), int(c.prompt[i]), int(c.output[i]), int(c.prefix[i]),
                    int(c.prefix_len[i]))
        self.next_id += 1
        return r

    def _schedule_next_arrival(self) -> None:
        r = self._next_request()
        self._pending_arrival = r
        if r is not None:
            self.env.schedule(r.t_arrival, _ARRIVAL)

    def _area(self, now: float) -> None:
        self.totals.in_system_area += self.in_system * (now - self._area_t)
        self._area_t = now

    def _on_arrival(self, ev) -> None:
        r = self._pending_arrival
        now = self.env.now
        self._area(now)
        self.in_system += 1
        self.totals.arrived += 1
        if self.agg:
            self.agg_queue.append(r)
            if not self.decode_busy:
                self._start_step()
            self._schedule_next_arrival()
            return
        insts = self.instances
        if self.spec.sim.prefill_policy == "round_robin":
            inst = insts[self.rr % len(insts)]
            self.rr += 1
        else:
            inst = min(insts, key=lambda x: x.queued_tokens)
        inst.queue.append(r)
        inst.queued_tokens += r.prompt
        if not inst.busy:
            self._try_prefill(inst)
        self._schedule_next_arrival()

    # ------------------------------------------------------------------ prefill
    def _decode_can_take(self, new: int) -> bool:
        free = self.ranks * self.batch_cap - self.n_active
        outstanding = len(self.ready) + self.in_prefill + new
        if outstanding <= free:
            return True
        frees = self.done_rate * self.full_forward_s * (1.0 + self.spec.sim.handoff_margin)
        return outstanding <= free + frees

    def _lookup(self, r: Request) -> None:
        hit = ssd = 0
        if self.cache is not None and r.prefix >= 0 and r.prefix_len >= self.block_tokens:
            nb = r.prefix_len // self.block_tokens
            hd, hs = self.cache.lookup(r.prefix, nb)
            hit = (hd + hs) * self.block_tokens
            ssd = hs * self.block_tokens
            hit = min(hit, r.prompt - 1)  # the last prompt token is always computed (it yields the logits)
            ssd = min(ssd, hit)
        r.hit = hit
        r.todo = r.prompt - hit
        self.totals.hit_tokens += hit
        self.totals.ssd_hit_tokens += ssd
        self._fetch_bytes += hit * self.block_bytes / max(1, self.block_tokens)
        self._fetch_ssd += ssd * self.block_bytes / max(1, self.block_tokens)

    def _try_prefill(self, inst: PrefillInstance) -> None:
        if inst.busy or not inst.queue:
            return
        budget = self.inst_budget
        q = inst.queue
        # how many requests would this forward finish? (decode-aware admission)
        finishing = 0
        left = budget
        for r in q:
            need = r.todo if r.todo >= 0 else r.prompt  # before lookup: an upper bound
            if need > left:
                break
            left -= need
            finishing += 1
            if left <= 0:
                break
        if finishing and not self._decode_can_take(finishing):
            self.totals.prefill_stalls += 1
            self._stalled = True
            return
        self._fetch_bytes = 0.0
        self._fetch_ssd = 0.0
        left = budget
        tokens = 0
        weighted = 0
        done: list[Request] = []
        while q and left > 0:
            r = q[0]
            if r.todo < 0:
                self._lookup(r)
            take = r.todo if r.todo <= left else left
            tokens += take
            weighted += take * r.prompt
            left -= take
            r.todo -= take
            inst.queued_tokens -= take
            if r.todo == 0:
                q.popleft()
                inst.queued_tokens -= r.hit
                done.append(r)
            else:
                break
        if tokens == 0:
            return
        tpd = tokens / inst.dies
        step = self.ptable.step_us(tpd if tpd >= 1 else 1, weighted / tokens)
        if inst.fetch is not None and self._fetch_bytes:
            step += inst.fetch.us(self._fetch_bytes, self._fetch_ssd)
        self.totals.computed_tokens += tokens
        now = self.env.now
        inst.busy = True
        inst.busy_since = now
        inst.in_forward = len(done)
        inst.forwards += 1
        self.in_prefill += len(done)
        self.env.schedule(now + step / 1e6, PrefillDone(inst.index, tuple(done)))

    def _on_prefill_done(self, ev: PrefillDone) -> None:
        now = self.env.now
        inst = self.instances[ev.instance]
        inst.busy = False
        inst.busy_acc += now - inst.busy_since
        self.in_prefill -= inst.in_forward
        inst.in_forward = 0
        lanes = inst.lanes
        nl = len(lanes)
        cache = self.cache
        bt = self.block_tokens
        earliest = math.inf
        for k, r in enumerate(ev.done):
            self.totals.prompt_tokens += r.prompt
            if cache is not None and r.prefix >= 0 and r.prefix_len >= bt:
                nb = r.prefix_len // bt
                cache.insert(r.prefix, min(nb, r.hit // bt), nb)
            if r.output <= 1:  # the prefill's token is the whole answer
                r.t_first = r.t_done = now
                self._complete(r, now)
                continue
            lane = k % nl
            start = lanes[lane] if lanes[lane] > now else now
            t = start + self.ptable.kv_transfer_us(r.prompt) / 1e6
            lanes[lane] = t
            r.t_first = t
            heapq.heappush(self.ready, (t, r.id, r))
            if t < earliest:
                earliest = t
        if earliest < math.inf and not self.decode_busy and earliest < self.wake_at:
            self.wake_at = earliest
            self.env.schedule(earliest, _WAKE)
        self._try_prefill(inst)
        self._retry_stalled()

    def _retry_stalled(self) -> None:
        if self._stalled:
            self._stalled = False
            for other in self.instances:
                if not other.busy and other.queue:
                    self._try_prefill(other)

    # ------------------------------------------------------------------ decode
    def _on_wake(self, ev) -> None:
        if self.env.now >= self.wake_at:
            self.wake_at = math.inf
        if not self.decode_busy:
            self._start_step()

    def _admit(self, now: float) -> None:
        ready = self.ready
        if not ready or ready[0][0] > now:
            return
        cap = self.batch_cap
        kv_cap = self.kv_cap
        counts, kvs = self.rank_count, self.rank_kv
        tps = self.tps
        while ready and ready[0][0] <= now:
            if self.n_active >= self.ranks * cap:
                return
            r = ready[0][2]
            need = r.prompt + r.output + self.drafts
            rank = int(np.argmin(counts))
            if counts[rank] >= cap:
                return
            if kvs[rank] + need > kv_cap:
                ok = np.flatnonzero((counts < cap) & (kvs + need <= kv_cap))
                if len(ok) == 0:
                    self.totals.kv_blocked += 1
                    return
                rank = int(ok[np.argmin(counts[ok])])
            heapq.heappop(ready)
            counts[rank] += 1
            kvs[rank] += need
            frac = kvs[rank] / kv_cap if kv_cap else 0.0
            if frac > self.totals.kv_peak_fraction:
                self.totals.kv_peak_fraction = frac
            r.rank = rank
            r.kv_need = need
            r.admit_step = self.step
            n = math.ceil((r.output - 1) / tps)
            r.end_step = self.step + n - 1
            b = self.buckets.get(r.end_step)
            if b is None:
                self.buckets[r.end_step] = [r]
            else:
                b.append(r)
            self.n_active += 1
            self.sum_prompt += r.prompt
            self.sum_admit += self.step

    def _agg_plan_step(self) -> int:
        """Aggregated serving: give waiting prompts a slot (rank with the fewest requests and KV room, FCFS),
        then spend the step's prefill budget (chunk per die x ranks) on the prefilling prompts in FCFS order.
        Returns the prefill tokens of the step; the prompts it completes go to _step_done."""
        cap, kv_cap = self.batch_cap, self.kv_cap
        counts, kvs = self.rank_count, self.rank_kv
        q = self.agg_queue
        while q:
            r = q[0]
            need = r.prompt + r.output + self.drafts
            ok = np.flatnonzero((counts < cap) & (kvs + need <= kv_cap))
            if len(ok) == 0:
                if (counts < cap).any():
                    self.totals.kv_blocked += 1
                break
            rank = int(ok[np.argmin(counts[ok])])
            q.popleft()
            counts[rank] += 1
            kvs[rank] += need
            frac = kvs[rank] / kv_cap if kv_cap else 0.0
            if frac > self.totals.kv_peak_fraction:
                self.totals.kv_peak_fraction = frac
            r.rank, r.kv_need, r.todo, r.hit = rank, need, r.prompt, 0
            self.prefilling.append(r)
        left = self.inst_budget
        tokens = 0
        done = self._step_done
        for r in self.prefilling:
            if left <= 0:
                break
            take = min(r.todo, left)
            r.todo -= take
            left -= take
            tokens += take
            if r.todo == 0:
                done.append(r)
        self.in_prefill = len(self.prefilling)
        return tokens

    def _agg_join(self, now: float) -> None:
        """Prompts whose last chunk ran in the finished step: first token now, then decode on the same rank."""
        done = self._step_done
        if not done:
            return
        self._step_done = []
        pf = self.prefilling
        for _ in range(len(done)):
            pf.popleft()  # FCFS: the finished prompts are the oldest ones
        self.in_prefill = len(pf)
        tps = self.tps
        for r in done:
            self.totals.prompt_tokens += r.prompt
            r.t_first = now
            if r.output <= 1:
                self.rank_count[r.rank] -= 1
                self.rank_kv[r.rank] -= r.kv_need
                r.t_done = now
                self._complete(r, now)
                continue
            self.rank_dec[r.rank] += 1
            r.admit_step = self.step
            r.end_step = self.step + math.ceil((r.output - 1) / tps) - 1
            self.buckets.setdefault(r.end_step, []).append(r)
            self.n_active += 1
            self.sum_prompt += r.prompt
            self.sum_admit += self.step

    def _start_step(self) -> None:
        now = self.env.now
        if self.agg:
            chunk = self._agg_plan_step()
            if self.n_active == 0 and chunk == 0:
                if self.decode_busy:
                    self.decode_busy = False
                    self.decode_busy_acc += now - self.decode_since
                return
            if not self.decode_busy:
                self.decode_busy = True
                self.decode_since = now
            self._step_chunk = chunk
            self.totals.computed_tokens += chunk
            b = int(self.rank_dec.max())
            kv = ((self.sum_prompt + self.tps * (self.n_active * self.step - self.sum_admit)) / self.n_active
                  if self.n_active else float(self.spec.workload.prompt_len))
            dt = self.dtable.step_us(max(b, 1), kv, chunk / self.ranks) / 1e6
            self.batch_sum += self.n_active
            self.env.schedule(now + dt, DecodeStepDone(self.step))
            return
        self._admit(now)
        if self.n_active == 0:
            if self.decode_busy:
                self.decode_busy = False
                self.decode_busy_acc += now - self.decode_since
            if self.ready:
                t = self.ready[0][0]
                if t < self.wake_at:
                    self.wake_at = t
                    self.env.schedule(t, _WAKE)
            return
        if not self.decode_busy:
            self.decode_busy = True
            self.decode_since = now
        b = int(self.rank_count.max())
        kv = (self.sum_prompt + self.tps * (self.n_active * self.step - self.sum_admit)) / self.n_active
        dt = self.dtable.step_us(b, kv) / 1e6
        self.batch_sum += self.n_active
        self.env.schedule(now + dt, DecodeStepDone(self.step))

    def _on_decode_done(self, ev: DecodeStepDone) -> None:
        now = self.env.now
        k = ev.step
        self.totals.decode_steps += 1
        emitted = self.n_active * self.tps
        finished = self.buckets.pop(k, None)
        if finished:
            self._area(now)
            counts, kvs = self.rank_count, self.rank_kv
            for r in finished:
                emitted -= (k - r.admit_step + 1) * self.tps - (r.output - 1)
                counts[r.rank] -= 1
                kvs[r.rank] -= r.kv_need
                if self.agg:
                    self.rank_dec[r.rank] -= 1
                self.n_active -= 1
                self.sum_prompt -= r.prompt
                self.sum_admit -= r.admit_step
                r.t_done = now
                self._complete(r, now, area=False)
            dtr = now - self._rate_t
            self._rate_t = now
            decay = math.exp(-dtr / 5.0)
            self.done_rate = self.done_rate * decay + len(finished) / 5.0
        self.totals.output_tokens += emitted
        self.step = k + 1
        if self.agg:
            self._agg_join(now)
        self._start_step()
        if finished:
            self._retry_stalled()

    def decode_busy_total(self, now: float) -> float:
        return self.decode_busy_acc + (now - self.decode_since if self.decode_busy else 0.0)

    # ------------------------------------------------------------------ completion and metrics
    def _complete(self, r: Request, now: float, area: bool = True) -> None:
        if area:
            self._area(now)
        self.in_system -= 1
        self.totals.completed += 1
        ttft = r.t_first - r.t_arrival
        self._win_ttft.append(ttft)
        if self.warmup <= r.t_arrival <= self.duration:
            rec = self.rec
            rec.ttft.append(ttft)
            rec.e2e.append(r.t_done - r.t_arrival)
            if r.output > 1:
                rec.tpot.append((r.t_done - r.t_first) / (r.output - 1))

    def census(self) -> dict[str, int]:
        """Where every request that arrived is now; the parts add up to `arrived`."""
        queued = sum(len(i.queue) for i in self.instances) + len(self.agg_queue)
        return {"arrived": self.totals.arrived, "completed": self.totals.completed, "queued_prefill": queued,
                "in_prefill": self.in_prefill, "waiting_decode": len(self.ready), "decoding": self.n_active}

    def _on_sample(self, ev) -> None:
        now = self.env.now
        rows = self._sample_rows(now)
        self.samples_taken += 1
        if self.sink is not None and rows:
            self.sink(rows)
        if self.progress is not None:
            self.progress(min(now, self.duration), self.duration)
        busy = self.in_system > 0 or self.env.pending > 1
        if now + self.interval <= self.duration or (self.drain and busy):
            self.env.schedule(now + self.interval, _SAMPLE)

    def _sample_rows(self, now: float) -> list[tuple[float, str, float]]:
        L, T = self._last, self.totals
        dt = now - L["t"]
        if dt <= 0:
            return []
        pdev = sum(i.devices for i in self.instances) or self.dpool.devices  # agg: the one pool
        ddev = self.dpool.devices
        pbusy = sum(i.busy_total(now) for i in self.instances) if self.instances else self.decode_busy_total(now)
        dbusy = self.decode_busy_total(now)
        steps = T.decode_steps - L["steps"]
        prompt = T.prompt_tokens - L["prompt"]
        hit = T.hit_tokens - L["hit"]
        rows = [
            (now, "arrivals_per_s", (T.arrived - L["arr"]) / dt),
            (now, "completions_per_s", (T.completed - L["done"]) / dt),
            (now, "prefill.tokens_per_s_per_device", prompt / dt / pdev),
            (now, "prefill.computed_tokens_per_s_per_device", (T.computed_tokens - L["computed"]) / dt / pdev),
            (now, "decode.tokens_per_s_per_device", (T.output_tokens - L["out"]) / dt / ddev),
            (now, "prefill.utilisation", (pbusy - L["pbusy"]) / dt / max(1, len(self.instances))),
            (now, "decode.utilisation", (dbusy - L["dbusy"]) / dt),
            (now, "decode.batch_occupancy", ((self.batch_sum - L["batch"]) / steps / (self.ranks * self.batch_cap)) if steps else 0.0),
            (now, "queue.prefill", float(sum(len(i.queue) for i in self.instances) + len(self.agg_queue))),
            (now, "queue.decode_wait", float(len(self.ready))),
            (now, "requests.in_system", float(self.in_system)),
            (now, "cache.hit_ratio", hit / prompt if prompt else 0.0),
        ]
        if self._win_ttft:
            rows.append((now, "ttft_ms.p50", 1e3 * float(np.median(self._win_ttft))))
            self._win_ttft = []
        self._last = {"t": now, "arr": T.arrived, "done": T.completed, "out": T.output_tokens,
                      "prompt": T.prompt_tokens, "computed": T.computed_tokens, "hit": T.hit_tokens,
                      "pbusy": pbusy, "dbusy": dbusy, "steps": T.decode_steps, "batch": self.batch_sum}
        return rows

    # ------------------------------------------------------------------ run
    def run(self) -> SimResult:
        env = self.env
        self._schedule_next_arrival()
        env.schedule(min(self.interval, self.duration), _SAMPLE)
        env.schedule(self.warmup, _MARK)
        env.schedule(self.duration, _STOP)
        env.run()
        self._mark_end = self._snapshot(env.now)
        if self.drain:
            env.run()
        now = env.now
        self._area(now)
        return self._result(now)

    def _snapshot(self, now: float) -> dict[str, float]:
        T = self.totals
        return {"t": now, "out": T.output_tokens, "prompt": T.prompt_tokens, "computed": T.computed_tokens,
                "hit": T.hit_tokens,
                "pbusy": (sum(i.busy_total(now) for i in self.instances) if self.instances
                          else self.decode_busy_total(now)),
                "dbusy": self.decode_busy_total(now), "steps": T.decode_steps, "batch": self.batch_sum,
                "done": T.completed}

    def _on_mark(self, ev) -> None:
        self._mark_start = self._snapshot(self.env.now)

    def _result(self, end: float) -> SimResult:
        a, b = self._mark_start or self._snapshot(0.0), self._mark_end
        span = max(1e-9, b["t"] - a["t"])
        ddev = self.dpool.devices
        pdev = sum(i.devices for i in self.instances)
        pool_dev = pdev or ddev  # agg: prefill runs on the decode pool
        steps = b["steps"] - a["steps"]
        prompt = b["prompt"] - a["prompt"]
        rec = self.rec
        slo = self.spec.slo

        def pct(xs):
            if not xs:
                return {"p50": None, "p90": None, "p99": None, "mean": None}
            arr = np.asarray(xs) * 1e3
            p = np.percentile(arr, [50, 90, 99])
            return {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3), "p99": round(float(p[2]), 3),
                    "mean": round(float(arr.mean()), 3)}

        n = len(rec.e2e)
        good = n
        if n and (slo.ttft_ms is not None or slo.tpot_ms is not None):
            ttft = np.asarray(rec.ttft) * 1e3
            ok = np.ones(n, dtype=bool)
            if slo.ttft_ms is not None:
                ok &= ttft <= slo.ttft_ms
            if slo.tpot_ms is not None and len(rec.tpot) == n:
                ok &= np.asarray(rec.tpot) * 1e3 <= slo.tpot_ms
            good = int(ok.sum())
        window = self.duration - self.warmup
        census = self.census()
        out_rate = (b["out"] - a["out"]) / span
        return SimResult(
            duration_s=self.duration,
            end_s=end,
            rate_per_s=self.rate,
            capacity_per_s={"prefill": self.prefill_capacity, "decode": self.decode_capacity},
            prefill={
                "tokens_per_s_per_device": prompt / span / pool_dev,
                "computed_tokens_per_s_per_device": (b["computed"] - a["computed"]) / span / pool_dev,
                "utilisation": (b["pbusy"] - a["pbusy"]) / span / max(1, len(self.instances)),
                "devices": pdev,
            },
            decode={
                "tokens_per_s_per_device": out_rate / ddev,
                "tpot_ms": pct(rec.tpot),
                "utilisation": (b["dbusy"] - a["dbusy"]) / span,
                "batch_occupancy": ((b["batch"] - a["batch"]) / steps / (self.ranks * self.batch_cap)) if steps else 0.0,
                "tokens_per_step": self.tps,
                "kv_peak_fraction": self.totals.kv_peak_fraction,
                "devices": ddev,
            },
            tokens_per_s_per_device=out_rate / (pdev + ddev),
            ttft_ms=pct(rec.ttft),
            tpot_ms=pct(rec.tpot),
            e2e_ms=pct(rec.e2e),
            goodput=good / window if window > 0 else 0.0,
            goodput_fraction=good / n if n else 0.0,
            cache_hit_ratio=(b["hit"] - a["hit"]) / prompt if prompt else 0.0,
            requests={**census, "measured": n, "good": good, "kv_blocked": self.totals.kv_blocked,
                      "prefill_stalls": self.totals.prefill_stalls},
            little={"mean_in_system": self.totals.in_system_area / end if end else 0.0,
                    "area": self.totals.in_system_area},
            events=self.env.events,
            latencies=rec,
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
    ttft_ms: dict
    tpot_ms: dict
    e2e_ms: dict
    goodput: float
    goodput_fraction: float
    cache_hit_ratio: float
    requests: dict
    little: dict
    events: int
    latencies: Recorded

    def to_dict(self) -> dict:
        def r(x):
            if isinstance(x, float):
                return round(x, 4) if math.isfinite(x) else None
            if isinstance(x, dict):
                return {k: r(v) for k, v in x.items()}
            return x

        return {
            "duration_s": self.duration_s, "rate_per_s": r(self.rate_per_s), "capacity_per_s": r(self.capacity_per_s),
            "prefill": r(self.prefill), "decode": r(self.decode),
            "tokens_per_s_per_device": r(self.tokens_per_s_per_device),
            "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms,
            "goodput": r(self.goodput), "goodput_fraction": r(self.goodput_fraction),
            "cache_hit_ratio": r(self.cache_hit_ratio), "requests": self.requests, "events": self.events,
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
        return out
