"""Batching and scheduling policies of the serving simulator: FCFS with the LRU prefix cache, and BatchLLM.

A batching policy hands `cmtwin simulate` a `Scheduler` (`policy.scheduler(sim)`), the one hook through which
the simulator (cmtwin/sim/serving.py) asks every scheduling question:

- `enqueue(batch, lines)`: requests that arrived -> the waiting lines (prefill instances, or aggregated
  instances) and their order there; each instant's arrivals come as one batch, or, for a scheduler whose
  `bulk_arrivals` is true, the arrivals of several instants may come together, in arrival order;
- `next_forward(line, budget)`: the tokens of the next prefill forward of an idle prefill instance (None: wait
  for decode room), with the prompt tokens each request reuses instead of computing;
- `prefilled(done, line)`: a forward ended, completing the prompts `done` (the LRU policy stores their prefix blocks
  in the EMS pool);
- `place(r, d)` / `release(r, d)`: the decode die (rank) of decode instance `d` a request occupies and the KV
  tokens it adds there, and the KV freed when it ends.

`fcfs_lru` (the default) is first come, first served: each request goes to the prefill instance with the
fewest queued tokens, reuses the leading cached blocks of its prefix from the EMS pool (LRU, cmtwin/sim/cache.py)
and holds its whole prompt's KV on the decode die with the fewest requests; a forward waits while decode lacks
request slots.

`batchllm` (Zheng et al., 2024, "BatchLLM: optimizing large batched LLM inference with global prefix sharing
and throughput-oriented token batching") schedules an offline batch:
1. global prefix identification: a prefix tree over the batch's prompts (root -> prefix id -> one node per
   distinct prefix length, a chain since the prefixes of one id are nested), flattened to single-level groups
   by the split that saves the most prefill tokens (`prefix_groups`);
2. group scheduling: a group's requests are prefilled together on one prefill instance, the first computing
   the shared prefix once, the others only their suffixes (a group larger than an instance's fair share is
   split over instances, each part computing the prefix once); on decode the group's requests go to the dies
   already holding its prefix, which is held once per die and freed when the group's last request there ends;
3. ordering: groups, and requests within them, by decode/prompt length ratio, largest first, so long decodes
   start early and overlap the later prefill;
4. memory-centric token batching: a forward is filled up to the token budget while the decode KV memory
   (shared prefixes counted once) can take what it will hand over, instead of by free request slots.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from pydantic import Field

from cmtwin.config.base import Frozen
from cmtwin.errors import ConfigError
from cmtwin.policy.registry import Policy, registry

REG = registry("batching")


@dataclass(slots=True)
class Forward:
    """One prefill forward's content."""

    done: list = field(default_factory=list)  # requests whose prompt it completes
    tokens: int = 0  # prompt tokens it computes
    weighted: int = 0  # sum of computed tokens x their prompt's length (for the mean prompt length)
    fetched: int = 0  # prompt tokens of newly started prompts read from the EMS pool (DRAM or SSD) instead of computed
    ssd: int = 0  # of those, from the SSD tier


class Scheduler(Protocol):
    """The simulator's scheduling hook (one object per simulation)."""

    bulk_arrivals: bool
    """True: `enqueue` treats requests one by one, in order, reading nothing but them and the lines' `load`, so the
    simulator may hand over the arrivals of several instants together and take arrivals in only before events
    that can change a line (not before the decode pool's steps in disaggregated serving). False: each instant's
    arrivals come as one batch (BatchLLM plans over it), taken in before any later event (BatchLLM's KV estimate
    reads the batch's requests still in decode)."""

    # optional promises a scheduler may make, so that the simulator reads an answer instead of asking for it once
    # per request: `releases_kv_need` (release(r, d) is r.kv_need and changes nothing), `places_least_busy`
    # (place(r, d) is (d.least_busy(), r.kv_need) whenever r's KV fits on that rank)

    def enqueue(self, batch: list, lines: list) -> None:
        """Put requests that arrived (in arrival order) on the lines (`line.push(r)`), in the order they will be
        served."""
        ...

    def next_forward(self, line, budget: int) -> Forward | None:
        """The next forward of an idle prefill instance with a non-empty queue; None = wait for decode room."""
        ...

    def prefilled(self, done, line) -> None:
        """A forward on `line` completed the prompts of `done` (requests, in the forward's order)."""
        ...

    def place(self, r, d) -> tuple[int, int]:
        """(rank, KV tokens added there) for r on decode instance d, or (-1, 0) when no die has KV room."""
        ...

    def release(self, r, d) -> int:
        """KV tokens freed on r's die of decode instance d when r ends."""
        ...


class BatchingPolicy(Protocol):
    """A member of the batching family (registered in REG, selected with +policies/batching=<preset>)."""

    def scheduler(self, sim) -> Scheduler:
        """The hook for one simulation (may refuse the simulation's settings with a ConfigError)."""
        ...

    def table(self, spec, plan, hw, fabric) -> list[dict]:
        """The twin's figures for `cmtwin plan`'s policy section (one row)."""
        ...


def take_tokens(line, budget: int, reuse: Callable | None, fits: Callable | None = None) -> Forward:
    """Fill a forward from the head of `line.queue` up to `budget` tokens (the last prompt may be split across
    forwards). `reuse(r)` -> (reused, fetched, ssd) is asked once per prompt, when its prefill starts (None: nothing
    is reused, every prompt is computed whole); `fits(r)`, asked before a prompt is completed, stops the forward
    where decode could not take it."""
    q = line.queue
    done: list = []
    left = budget
    tokens = weighted = fetched = ssd = reused = 0  # summed here, set on the Forward once (one forward per event)
    while q and left > 0:
        r = q[0]
        todo = r.todo
        if todo < 0:
            if reuse is None:
                todo = r.prompt  # (r.hit is 0)
            else:
                hit, f, s = reuse(r)
                r.hit = hit
                todo = r.prompt - hit
                fetched += f
                ssd += s
        take = todo if todo <= left else left
        if take == todo and fits is not None and not fits(r):
            r.todo = todo
            break
        tokens += take
        weighted += take * r.prompt
        left -= take
        r.todo = todo = todo - take
        if todo:
            break
        q.popleft()
        reused += r.hit
        done.append(r)
    line.queued_tokens -= tokens + reused  # a queued prompt counts whole: its computed and its reused tokens
    return Forward(done, tokens, weighted, fetched, ssd)


class _Base:
    """What both schedulers share: the simulator they serve and the KV a request holds of its own."""

    bulk_arrivals = False

    def __init__(self, sim):
        self.sim = sim
        self.drafts = sim.drafts

    def own_kv(self, r) -> int:
        """KV tokens of r no other request shares: its prompt beyond a shared prefix, its output and drafts."""
        return r.prompt - r.shared + r.output + self.drafts

    def prefilled(self, done, line) -> None:
        pass


class FcfsLruScheduler(_Base):
    """FCFS queues, LRU prefix blocks in EMS, whole-prompt KV per request on the least-busy decode die."""

    bulk_arrivals = True  # one request at a time, by the lines' queued tokens
    releases_kv_need = True  # release(r, d) is r.kv_need and changes nothing: the simulator may read it instead
    places_least_busy = True  # place(r, d) is (the least busy rank, r.kv_need) when r's KV fits there: ditto

    def __init__(self, sim):
        super().__init__(sim)
        self.cache = sim.cache
        self.block_tokens = sim.block_tokens
        self.round_robin = sim.spec.sim.prefill_policy == "round_robin"
        self.rr = 0
        # the lines are prefill instances (not aggregated ones): a line's load is its queued tokens (inf while it is
        # failed), so a push adds the prompt to it
        self.queued_load = not getattr(sim, "agg", False)

    def route(self, lines: list):
        """The least-loaded line (round robin with sim.prefill_policy=round_robin)."""
        if self.round_robin:
            self.rr += 1
            return lines[(self.rr - 1) % len(lines)]
        return min(lines, key=lambda x: x.load)

    def enqueue(self, batch, lines) -> None:
        """Each request to the least-loaded line (the first of equals), by the lines' loads kept in a list while the
        batch is routed (only these pushes change them meanwhile); round robin with sim.prefill_policy=round_robin."""
        drafts = self.drafts
        if self.round_robin or len(lines) == 1:
            for r in batch:
                r.kv_need = r.prompt + r.output + drafts  # own_kv(r): fcfs_lru shares no prefix on decode
                self.route(lines).push(r)
            return
        if self.queued_load:  # line.load and line.push(r) written out (a PrefillInstance's)
            inf = math.inf
            loads = [inf if line.failed else line.queued_tokens for line in lines]
            for r in batch:
                prompt = r.prompt
                r.kv_need = prompt + r.output + drafts
                least = min(loads)
                i = loads.index(least)
                line = lines[i]
                line.queue.append(r)
                line.queued_tokens += prompt
                loads[i] = least + prompt  # its queued tokens now (inf + prompt: still inf where failed)
            return
        loads = [line.load for line in lines]
        for r in batch:
            r.kv_need = r.prompt + r.output + drafts
            i = loads.index(min(loads))
            line = lines[i]
            line.push(r)
            loads[i] = line.load

    def reuse(self, r) -> tuple[int, int, int]:
        """The leading blocks of r's prefix found in the EMS pool (the last prompt token is always computed)."""
        bt = self.block_tokens
        if self.cache is None or r.prefix < 0 or r.prefix_len < bt:
            return 0, 0, 0
        hd, hs = self.cache.lookup(r.prefix, r.prefix_len // bt)
        hit = min((hd + hs) * bt, r.prompt - 1)
        ssd = min(hs * bt, hit)
        return hit, hit, ssd

    def next_forward(self, line, budget):
        # decode-aware admission by request slots: the forward waits, whole, while decode could not take the
        # requests it would finish (counted before the cache lookup: an upper bound); when decode could take the
        # whole queue (usually, below saturation) it can take them, uncounted (decode_can_take grows with fewer)
        can_take = self.sim.decode_can_take
        if not can_take(len(line.queue)):
            finishing, left = 0, budget
            for r in line.queue:
                need = r.todo if r.todo >= 0 else r.prompt
                if need > left:
                    break
                left -= need
                finishing += 1
                if left <= 0:
                    break
            if finishing and not can_take(finishing):
                return None
        return take_tokens(line, budget, self.reuse if self.cache is not None else None)

    def prefilled(self, done, line) -> None:
        if self.cache is None:
            return
        bt = self.block_tokens
        for r in done:
            if r.prefix >= 0 and r.prefix_len >= bt:
                nb = r.prefix_len // bt
                self.cache.insert(r.prefix, min(nb, r.hit // bt), nb)

    def place(self, r, d):
        need = r.kv_need  # own_kv(r), set by enqueue
        rank = d.least_busy()  # the caller checked a slot is free
        if d.rank_kv[rank] + need > d.kv_cap:
            counts, kvs = np.asarray(d.rank_count), np.asarray(d.rank_kv)
            ok = np.flatnonzero((counts < d.cap) & (kvs + need <= d.kv_cap))
            if len(ok) == 0:
                return -1, 0
            rank = int(ok[np.argmin(counts[ok])])
        return rank, need

    def release(self, r, d) -> int:
        return r.kv_need


# ---------------------------------------------------------------------------------------------- BatchLLM
def prefix_groups(prefix, prefix_len, min_shared: int = 1) -> list[tuple[int, list[int]]]:
    """Single-level prefix groups of a batch: [(shared tokens, request indices), ...].

    The prefix tree: request i's prompt starts with the first prefix_len[i] tokens of shared prefix prefix[i]
    (-1: none), so two requests share min(prefix_len) leading tokens when their prefix ids match and nothing
    otherwise; under one id the tree is a chain with a node at every distinct length. Flattening it to one
    level partitions the chain into runs of consecutive lengths; a run's requests share its shortest length,
    saving (members - 1) x that length of prefill. The partition saving the most is found by dynamic
    programming over the chain (O(distinct lengths^2) per prefix). Runs sharing fewer than `min_shared` tokens,
    and requests without a prefix, are left as groups of one (shared 0).
    """
    by_prefix: dict[int, dict[int, list[int]]] = {}
    singles: list[int] = []
    for i, (p, n) in enumerate(zip(prefix, prefix_len)):
        p, n = int(p), int(n)
        if p < 0 or n < min_shared:
            singles.append(i)
        else:
            by_prefix.setdefault(p, {}).setdefault(n, []).append(i)
    groups: list[tuple[int, list[int]]] = []
    for p in sorted(by_prefix):
        nodes = by_prefix[p]
        depth = sorted(nodes)
        m = len(depth)
        size = np.concatenate([[0], np.cumsum([len(nodes[d]) for d in depth])])
        best = [0] * (m + 1)
        cut = [0] * (m + 1)
        for b in range(1, m + 1):
            best[b], cut[b] = max((best[a] + (int(size[b] - size[a]) - 1) * depth[a], a) for a in range(b))
        b = m
        while b > 0:
            a = cut[b]
            groups.append((depth[a], [i for d in depth[a:b] for i in nodes[d]]))
            b = a
    groups.extend((0, [i]) for i in singles)
    return groups


class BatchLLMParams(Frozen):
    """BatchLLM's choices; the numbers are user inputs (the paper tunes them per model and GPU)."""

    min_shared_tokens: int = Field(default=64, ge=1, le=1_000_000)
    """Shortest common prefix worth a group, tokens (range 16-2048: below a few blocks the saving does not pay for
    the scheduling constraint; the paper groups any prefix its tree finds)."""
    order: Literal["ratio", "arrival"] = "ratio"
    """ratio: groups, and requests within a group, by decode/prompt length ratio, largest first (BatchLLM);
    arrival: keep the batch's order (to isolate the other mechanisms)."""
    split_groups: bool = True
    """Split a group whose prefill work exceeds a prefill instance's fair share over several instances (each part
    computes the prefix once), so one popular prefix does not leave the other instances idle."""
    decode_affinity: bool = True
    """Place a group's requests on the decode dies that already hold its prefix (up to the balanced batch per die),
    so the prefix KV is held once per die; false: the least-busy die, like fcfs_lru."""
    kv_budget_fraction: float = Field(default=0.95, ge=0.5, le=1.0)
    """Share of the decode pool's KV capacity the memory-centric token batching may plan to fill (0.5-1.0; the rest is
    headroom for prefix copies; engines typically run at 0.9-0.95 of their memory)."""


class BatchLLMScheduler(_Base):
    """Group scheduling of an offline batch with globally identified prefixes (see the module docstring)."""

    def __init__(self, sim, params: BatchLLMParams):
        super().__init__(sim)
        self.params = params
        self.group_len: list[int] = []  # shared tokens of each group
        self.firsts: set[int] = set()  # requests that compute their group part's prefix
        self.copies: dict[tuple[int, int], dict[int, int]] = {}  # (decode instance, group) -> {rank: members}
        self.outstanding = 0  # requests of the batch not yet through decode
        self.decode_ranks = sum(d.ranks for d in sim.decoders)

    def enqueue(self, batch, lines) -> None:
        p = self.params
        self.outstanding += len(batch)
        groups = prefix_groups([r.prefix for r in batch], [r.prefix_len for r in batch], p.min_shared_tokens)
        parts: list[tuple[int, list]] = []  # (prefill work, requests) placed as a unit
        base = len(self.group_len)
        for g, (shared, idx) in enumerate(groups):
            members = [batch[i] for i in idx]
            if p.order == "ratio":
                members.sort(key=lambda r: -r.output / r.prompt)
            for r in members:
                r.group = base + g if shared else -1
                r.shared = min(shared, r.prompt - 1) if shared else 0
                r.kv_need = self.kv_need(r, shared)
            self.group_len.append(shared)
            parts.append((shared + sum(r.prompt - r.shared for r in members), members))
        if p.split_groups and len(lines) > 1:
            fair = sum(w for w, _ in parts) / len(lines)
            split = []
            for w, members in parts:
                k = split_count(w, fair, len(members))
                for j in range(k):  # strided, so every part starts with some of the largest ratios
                    sub = members[j::k]
                    split.append((sub[0].shared + sum(r.prompt - r.shared for r in sub), sub))
            parts = split
        # longest-processing-time-first over the lines (their queued work counted), then each line's parts by ratio
        heap = [(line.queued_tokens, i) for i, line in enumerate(lines)]
        heapq.heapify(heap)
        assigned: list[list[tuple[int, list]]] = [[] for _ in lines]
        for w, members in sorted(parts, key=lambda x: -x[0]):
            load, i = heapq.heappop(heap)
            assigned[i].append((w, members))
            heapq.heappush(heap, (load + w, i))
        for line, mine in zip(lines, assigned):
            if p.order == "ratio":
                mine.sort(key=lambda x: -sum(r.output for r in x[1]) / sum(r.prompt for r in x[1]))
            for _, members in mine:
                if members[0].shared:
                    self.firsts.add(members[0].id)
                for r in members:
                    line.push(r)

    def target(self) -> int:
        """The balanced batch per decode die of the batch's outstanding requests."""
        return math.ceil(self.outstanding / self.decode_ranks)

    def kv_need(self, r, length: int) -> float:
        """The decode KV r is expected to hold: its own tokens plus its share of its group's prefix, held once per
        die by the group's requests there (the balanced batch per die, or as many as the die's KV allows)."""
        own = self.own_kv(r)
        if not length:
            return own
        per_die = max(1, min(self.target(), (self.sim.kv_cap - length) // own))
        return own + length / per_die

    def reuse(self, r) -> tuple[int, int, int]:
        """A group part's first request computes the shared prefix; the others attend to it (held in the prefill
        instance's HBM from the first to the last of the part; no EMS fetch)."""
        if r.id in self.firsts:
            self.firsts.discard(r.id)
            return 0, 0, 0
        return r.shared, 0, 0

    def next_forward(self, line, budget):
        # memory-centric: complete prompts while decode KV (shared prefixes counted once per die) can take them
        room = [self.sim.decode_kv_room(self.params.kv_budget_fraction)]

        def fits(r) -> bool:
            room[0] -= r.kv_need
            return room[0] >= 0

        fwd = take_tokens(line, budget, self.reuse, fits)
        return fwd if fwd.tokens else None

    def place(self, r, d):
        own = self.own_kv(r)
        counts, kvs = np.asarray(d.rank_count), np.asarray(d.rank_kv)
        length = self.group_len[r.group] if r.group >= 0 else 0
        held = self.copies.get((d.index, r.group)) if length else None
        extra = np.full(d.ranks, length, dtype=np.int64)
        if held:
            extra[list(held)] = 0
        ok = (counts < d.cap) & (kvs + own + extra <= d.kv_cap)
        if not ok.any():
            return -1, 0
        if self.params.decode_affinity and length:
            # below the balanced batch per die of the batch's outstanding requests, a die already holding the
            # prefix first, then the least busy die (so a group fills few dies, each holding its prefix once)
            target = self.target()
            big = 2 * (d.kv_cap + 1)
            key = (counts >= target) * (2 * big) + (extra > 0) * big + kvs
        else:
            key = counts
        rank = int(np.argmin(np.where(ok, key, np.iinfo(np.int64).max)))
        if length:
            self.copies.setdefault((d.index, r.group), {})
            held = self.copies[(d.index, r.group)]
            held[rank] = held.get(rank, 0) + 1
        return rank, own + int(extra[rank])

    def prefilled(self, done, line) -> None:
        for r in done:
            if r.output <= 1:  # answered by prefill: never reaches decode
                self.outstanding -= 1

    def release(self, r, d) -> int:
        self.outstanding -= 1
        freed = self.own_kv(r)
        if r.group >= 0 and self.group_len[r.group]:
            key = (d.index, r.group)
            held = self.copies[key]
            held[r.rank] -= 1
            if held[r.rank] == 0:  # the group's last request on this die: its prefix KV goes
                del held[r.rank]
                freed += self.group_len[r.group]
                if not held:
                    del self.copies[key]
        return freed


# ---------------------------------------------------------------------------------------------- registry
class _NoParams(Frozen):
    """fcfs_lru has no parameters (the prefill routing is sim.prefill_policy, the EMS pool caching.*)."""


@REG.register("fcfs_lru")
class FcfsLru(Policy):
    """First come, first served with the EMS LRU prefix cache (the simulator's default)."""

    Params = _NoParams

    params: _NoParams

    def scheduler(self, sim) -> FcfsLruScheduler:
        return FcfsLruScheduler(sim)

    def table(self, spec, plan, hw, fabric) -> list[dict]:
        """The twin's figures: no prefill saving is claimed (the EMS hit ratio depends on timing: simulate it)."""
        return [_figures(spec, plan, hw, fabric, policy=self.name, groups=None)]


@REG.register("batchllm")
class BatchLLM(Policy):
    """Global prefix sharing, group scheduling, decode/prompt-ratio order, memory-centric token batching."""

    Params = BatchLLMParams

    params: BatchLLMParams

    def scheduler(self, sim) -> BatchLLMScheduler:
        spec = sim.spec
        if spec.serving.mode == "agg":
            raise ConfigError("policies.batching=batchllm is simulated with disaggregated serving (serving.mode="
                              "disagg); this deployment aggregates prefill and decode.", key="serving.mode",
                              fix="use a disaggregated deployment such as +deployment=r1_ep320, or "
                                  "+policies/batching=fcfs_lru")
        if spec.workload.arrival in ("poisson", "gamma"):
            raise ConfigError(f"policies.batching=batchllm schedules an offline batch (requests known together), but "
                              f"workload.arrival={spec.workload.arrival} brings them one at a time.",
                              key="workload.arrival",
                              fix="set workload.arrival=offline (e.g. workload=offline_prefix), replay a trace whose "
                                  "requests share timestamps, or use +policies/batching=fcfs_lru")
        return BatchLLMScheduler(sim, self.params)

    def table(self, spec, plan, hw, fabric) -> list[dict]:
        return [_figures(spec, plan, hw, fabric, policy=self.name, groups=self.expected_groups(spec, plan))]

    def expected_groups(self, spec, plan) -> list[tuple[int, float, int]]:
        """(shared tokens, members, parts) per prefix of the workload's offline batch at the expected group sizes
        (workload.requests x Zipf share), split over the prefill instances by the scheduler's rule."""
        w = spec.workload
        shared = min(round(w.prefix_share * w.prompt_len), w.prompt_len - 1)
        if shared < self.params.min_shared_tokens:
            return []
        pw = np.arange(1, w.prefix_groups + 1, dtype=float) ** (-w.prefix_zipf)
        sizes = w.requests * pw / pw.sum()
        work = sizes * (w.prompt_len - shared) + shared
        lines = len(plan.pools_of("prefill"))
        fair = work.sum() / max(1, lines)
        split = self.params.split_groups and lines > 1
        return [(shared, float(n), split_count(wk, fair, math.ceil(n)) if split else 1) for n, wk in zip(sizes, work)]


def split_count(work: float, fair: float, members: int) -> int:
    """Parts a group of `work` prefill tokens is split into: enough that none exceeds an instance's fair share."""
    return max(1, min(members, math.ceil(work / fair))) if fair > 0 else 1


def _figures(spec, plan, hw, fabric, *, policy: str, groups: list[tuple[int, float, int]] | None) -> dict:
    """The twin's view of a batching policy on the workload's offline batch (workload.requests requests of the
    mean shape): prefill tokens computed and the saving ratio, prompt tokens served per prefill device and second
    (the forward's rate over the share computed), KV tokens per decode die at the batch's load (a group's
    prefix once per die under group-affine placement)."""
    from cmtwin.twin.step import prefill_forward

    w = spec.workload
    n = w.requests
    total = n * w.prompt_len
    saved = sum(shared * max(0.0, members - parts) for shared, members, parts in groups or ())
    ratio = saved / total if total else 0.0
    out = {"policy": policy, "requests": n, "prompt_tokens": total, "computed_tokens": round(total - saved),
           "token_saving_ratio": round(ratio, 4)}
    if plan.pools_of("prefill"):
        r = prefill_forward(spec, plan, hw, fabric)
        out["prefill_tokens_per_s_per_device"] = round(r.tokens_per_s_per_device, 1)
        out["prompt_tokens_served_per_s_per_device"] = round(r.tokens_per_s_per_device / (1 - ratio), 1)
    dpools = plan.pools_of("decode")
    if dpools:
        ranks = sum(d.dies for d in dpools)
        b = max(1, min(dpools[0].batch_per_die, math.ceil(n / ranks)))
        ctx = w.decode_kv_len + spec.mtp.draft_tokens
        out["decode_batch_per_die"] = b
        out["decode_kv_tokens_per_die"] = b * ctx
        if groups:
            # n requests fill n / b dies in group order; a die whose run crosses one of the (parts - 1) boundaries
            # between group parts holds two prefixes
            shared = groups[0][0]
            dies_used = max(1.0, n / b)
            copies = (dies_used + sum(p for _, _, p in groups) - 1) / dies_used
            out["decode_kv_tokens_per_die_shared"] = round(b * (ctx - shared) + copies * shared)
    return out


__all__ = ["REG", "BatchingPolicy", "BatchLLM", "BatchLLMParams", "BatchLLMScheduler", "FcfsLru", "FcfsLruScheduler", "Forward",
           "Scheduler", "prefix_groups", "split_count", "take_tokens"]
