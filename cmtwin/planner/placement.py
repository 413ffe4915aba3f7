"""Expert placement: which routed experts (and replicas) and shared experts each EP rank holds.

Slots: a phase with `ep` ranks, `dedicated_shared_ranks` of them holding only a shared-expert replica, gives
every other rank (routed + redundant) / (ep - dedicated) routed slots. Redundant replicas go to the experts
with the highest load per replica (greedy, as in DeepSeek's EPLB), then slots are dealt to ranks in
load order, snake-wise, never two copies of one expert on a rank.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property, lru_cache

from cmtwin.errors import PlanError
from cmtwin.model.arch import ModelSpec


@dataclass(frozen=True)
class ExpertPlacement:
    """The expert layout of one EP group (every MoE layer uses the same layout)."""

    ep: int
    routed_slots_per_rank: int  # on ranks that hold routed experts
    shared_on_every_rank: bool  # the shared expert colocated on every routed rank
    dedicated_shared_ranks: int
    ranks: tuple[tuple[int, ...], ...]  # per EP rank: routed expert ids (empty on a dedicated shared rank)
    replicas: tuple[int, ...]  # per routed expert: how many copies exist
    load: tuple[float, ...]  # per routed expert: relative load (mean 1.0)
    failed: tuple[int, ...] = ()  # EP ranks down (failures.policy=degrade): they hold nothing any more

    def without(self, ep_ranks) -> ExpertPlacement:
        """The layout after these EP ranks failed, re-placed by EPLB's rule on the surviving routed ranks: their
        slots hold every expert again, the redundant replicas shrinking to what is left (so a failed rank's expert
        moves to a slot a replica held); when fewer slots than experts survive, the least-loaded experts are lost
        (their load 0). A failed dedicated shared-expert rank only stops serving."""
        dead = set(ep_ranks) | set(self.failed)
        alive = [r for r in range(self.routed_ranks) if r not in dead]
        slots = len(alive) * self.routed_slots_per_rank
        order = sorted(range(len(self.load)), key=lambda e: (-self.load[e], e))
        kept = sorted(order[:slots])
        lists, reps = _deal([self.load[e] for e in kept], len(alive), self.routed_slots_per_rank,
                            max(0, slots - len(kept))) if alive else ([], [])
        ranks: list[tuple[int, ...]] = [()] * self.ep
        for i, r in enumerate(alive):
            ranks[r] = tuple(sorted(kept[j] for j in lists[i]))
        replicas = [1] * len(self.load)
        load = [0.0] * len(self.load)
        for j, e in enumerate(kept):
            replicas[e], load[e] = reps[j], self.load[e]
        return ExpertPlacement(self.ep, self.routed_slots_per_rank, self.shared_on_every_rank,
                               self.dedicated_shared_ranks, tuple(ranks), tuple(replicas), tuple(load),
                               tuple(sorted(dead)))

    def lost_experts(self) -> tuple[int, ...]:
        """Routed experts with no replica left (after `without`)."""
        return tuple(e for e, x in enumerate(self.load) if x == 0.0) if self.failed else ()

    @property
    def routed_ranks(self) -> int:
        return self.ep - self.dedicated_shared_ranks

    def experts_on_rank(self, rank: int) -> int:
        """Experts a rank holds (routed slots plus a colocated or dedicated shared expert)."""
        shared = 1 if (self.shared_on_every_rank or not self.ranks[rank]) else 0
        return len(self.ranks[rank]) + shared

    def rank_loads(self) -> list[float]:
        """Routed load per rank in units of 'one expert's mean load', replicas splitting their expert's load."""
        return list(self._rank_loads)

    @cached_property
    def _rank_loads(self) -> tuple[float, ...]:  # the twin asks once per layer kind and step: computed once
        return tuple(sum(self.load[e] / self.replicas[e] for e in experts) for experts in self.ranks)

    def summary(self) -> dict:
        loads = [x for x in self.rank_loads() if x > 0] or [0.0]
        mean = sum(loads) / len(loads)
        return {
            "ep": self.ep,
            "routed_ranks": self.routed_ranks,
            "dedicated_shared_ranks": self.dedicated_shared_ranks,
            "routed_slots_per_rank": self.routed_slots_per_rank,
            "experts_per_rank": self.experts_on_rank(0),
            "shared_expert": "colocated" if self.shared_on_every_rank else (
                "dedicated" if self.dedicated_shared_ranks else "none"),
            "routed_slots": sum(len(r) for r in self.ranks),
            "replicated_experts": sum(1 for r in self.replicas if r > 1),
            "max_over_mean_rank_load": round(max(loads) / mean, 4) if mean else 1.0,
        }


def _deal(load, n_ranks: int, per_rank: int, redundant: int) -> tuple[list[list[int]], list[int]]:
    """EPLB's rule over `n_ranks` ranks of `per_rank` slots: redundant replicas greedily to the experts with the
    highest load per replica (at most one copy per rank), then copies in descending load per copy, each dealt to the
    least-loaded rank with a free slot that does not hold the expert yet. Returns (experts per rank, replicas)."""
    n = len(load)
    replicas = [1] * n
    heap = [(-load[e], e) for e in range(n)]
    heapq.heapify(heap)
    for _ in range(redundant):
        _, e = heapq.heappop(heap)
        replicas[e] += 1
        if replicas[e] < n_ranks:
            heapq.heappush(heap, (-load[e] / replicas[e], e))
    copies = sorted(((load[e] / replicas[e], e) for e in range(n) for _ in range(replicas[e])), reverse=True)
    ranks: list[list[int]] = [[] for _ in range(n_ranks)]
    rank_heap = [(0.0, r) for r in range(n_ranks)]
    heapq.heapify(rank_heap)
    for w, e in copies:
        skipped = []
        while True:
            cur, r = heapq.heappop(rank_heap)
            if len(ranks[r]) < per_rank and e not in ranks[r]:
                break
            skipped.append((cur, r))
        ranks[r].append(e)
        if len(ranks[r]) < per_rank:
            heapq.heappush(rank_heap, (cur + w, r))
        for item in skipped:
            heapq.heappush(rank_heap, item)
    return ranks, replicas


def expert_load(model: ModelSpec, balance: str, cv: float = 0.0) -> tuple[float, ...]:
    """Relative load per routed expert (mean 1). 'perfect': uniform; 'default': the popularity profile."""
    from cmtwin.twin.load import expert_load_profile

    n = model.moe.routed_experts if model.moe else 0
    return expert_load_profile(n, 0.0 if balance == "perfect" else cv)


@lru_cache(maxsize=1024)  # a search compiles thousands of plans over a few expert layouts; the result is frozen
def place_experts(model: ModelSpec, *, phase: str, ep: int, redundant: int, dedicated_shared: int,
                  balance: str, load_cv: float = 0.0) -> ExpertPlacement:
    """Lay out routed experts, their redundant replicas and the shared experts over `ep` ranks."""
    moe = model.moe
    if moe is None:
        return ExpertPlacement(ep, 0, False, 0, tuple(() for _ in range(ep)), (), ())
    routed = moe.routed_experts
    shared = moe.shared_experts
    if dedicated_shared and shared == 0:
        raise PlanError(f"{phase}.dedicated_shared_ranks ({dedicated_shared}) > 0 but {model.name} has no shared "
                        "expert.", key=f"{phase}.dedicated_shared_ranks", fix=f"set {phase}.dedicated_shared_ranks=0")
    routed_ranks = ep - dedicated_shared
    slots = routed + redundant
    if routed_ranks <= 0 or slots % routed_ranks:
        if dedicated_shared:
            arith = (f"{phase}.ep ({ep}) - dedicated_shared_ranks ({dedicated_shared}) = {routed_ranks} routed ranks "
                     f"cannot hold routed ({routed}) + redundant ({redundant}) = {slots} expert slots evenly")
            fix = (f"use ep = routed + redundant + dedicated shared, e.g. {phase}.ep={routed + redundant + dedicated_shared}"
                   f" with one expert per rank")
        else:
            arith = (f"routed ({routed}) + redundant ({redundant}) = {slots} expert slots do not divide over "
                     f"{phase}.ep ({ep}) ranks")
            fix = f"choose {phase}.redundant_experts so that {routed} + redundant is a multiple of {ep}"
        raise PlanError(f"EP cannot hold the experts: {arith}.", key=f"{phase}.ep", fix=fix)
    per_rank = slots // routed_ranks
    if redundant > routed * (routed_ranks - 1):
        raise PlanError(f"{phase}.redundant_experts ({redundant}) is more than the ranks can hold without two "
                        f"copies of an expert on one rank.", key=f"{phase}.redundant_experts")
    load = expert_load(model, balance, load_cv)
    ranks, replicas = _deal(load, routed_ranks, per_rank, redundant)
    layout = tuple(tuple(sorted(r)) for r in ranks) + tuple(() for _ in range(dedicated_shared))
    return ExpertPlacement(
        ep=ep,
        routed_slots_per_rank=per_rank,
        shared_on_every_rank=shared > 0 and dedicated_shared == 0,
        dedicated_shared_ranks=dedicated_shared,
        ranks=layout,
        replicas=tuple(replicas),
        load=load,
    )
