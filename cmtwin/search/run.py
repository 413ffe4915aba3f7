"""The plan search.

Decode and prefill are evaluated apart, then combined: a decode configuration's TPOT and tokens/s per
device depend only on its own instance (devices, layout, batch, microbatches, MTP, precision, serving mode),
a prefill configuration's TTFT and tokens/s per device only on its instance (devices, layout, tokens per
forward, MTP, precision). The layout of an instance is its attention TP degree, its MoE split (moe_tp x ep) and
its pipeline stages (pp); every structural combination is validated by the Spec's own cross-checks
(`layout_errors`) and compiled once by the planner (placement, memory), so an invalid or infeasible one is
pruned by the same code `cmtwin plan` runs. The batch and the microbatching then vary on the same compiled plan:
every batch that can hold its KV, at every microbatch count, in one `decode_steps(batch_per_die=[...],
microbatches=[...])` call (one numpy pass of the twin's decode step over the vector). A disaggregated candidate is `decode_instances` decode instances plus as many prefill instances (same
precision and MTP) as the rest of the budget holds; an aggregated one is as many replicas of one pool (prefill
chunks mixed into its decode steps) as the budget holds. Their system figures follow from the pools' rates:

    requests/s = min(prefill instances x prefill tokens/s per instance / prompt_len,
                     decode instances x decode devices x decode tokens/s per device / output_len)    (disagg)
    requests/s = replicas x devices x tokens/s per device / output_len                               (agg)
    tokens_per_s_per_device = requests/s x output_len / devices used

The frontier maximises tokens/s per device and minimises TPOT and TTFT; the best few frontier points are
then compiled exactly and simulated (cmtwin/sim) at 90% of their capacity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import product

from cmtwin.errors import CmtwinError, ConfigError
from cmtwin.twin.capacity import decode_requests_per_s, prefill_requests_per_s

PRECISION_CODES = ("int8", "fp8", "bf16", "fp4")
"""`precision` of a stored search point is an index into this tuple."""
MODE_CODES = ("disagg", "agg")
"""`mode` of a stored search point is an index into this tuple."""


@dataclass(frozen=True)
class DecodeEval:
    """One decode (agg: aggregated) instance at one batch: its layout and the twin's figures."""

    mode: str  # disagg | agg
    devices: int
    tp: int
    moe_tp: int
    ep: int
    pp: int
    redundant: int
    dedicated: int
    batch_per_group: int  # requests per attention group (DP rank or TP group)
    microbatches: int
    mtp: int
    precision: str
    tpot_ms: float
    tokens_per_s_per_device: float
    tokens_per_step: float  # accepted tokens per request and step (MTP)
    ttft_ms: float | None = None  # agg: chunked prefill of a prompt between decode steps
    chunk_tokens: float = 0.0  # agg: prefill tokens per die in the mean step
    dies_per_device: int = 1
    tpot_failed_ms: float | None = None  # search.require_failures: TPOT with one group down (inf: cannot absorb)

    @property
    def groups(self) -> int:
        """Attention groups of one instance."""
        return self.devices * self.dies_per_device // (self.tp * self.pp)

    @property
    def batch_per_device(self) -> float:
        return self.batch_per_group * self.groups / self.devices


@dataclass(frozen=True)
class PrefillEval:
    devices_per_instance: int
    tp: int
    moe_tp: int
    ep: int
    pp: int
    redundant: int
    tokens_per_device: int
    mtp: int
    precision: str
    ttft_ms: float
    tokens_per_s_per_device: float


def layout_label(ranks: int, tp: int, moe_tp: int, ep: int, pp: int) -> str:
    """An instance's layout in the usual notation, e.g. 'TP8 EP8', 'DP8 EP8', 'DP20 TP16 EP320', 'DP4 TP2 EP4
    MoE-TP2 PP2' (degrees of 1 left out)."""
    from cmtwin.planner.layout import Layout

    lay = Layout(ranks=ranks, tp=tp, tp_mode="allreduce", moe_tp=moe_tp, ep=ep, pp=pp)
    parts = [(f"DP{lay.attention_dp}", lay.attention_dp), (f"TP{tp}", tp), (f"EP{ep}", ep),
             (f"MoE-TP{moe_tp}", moe_tp), (f"PP{pp}", pp)]
    return " ".join(p for p, n in parts if n > 1) or "1 rank"


@dataclass(frozen=True)
class Candidate:
    """A whole deployment: `decode_instances` decode instances + `prefill_instances` prefill instances (disagg),
    or `decode_instances` replicas of one aggregated pool (agg; prefill is None)."""

    decode: DecodeEval
    prefill: PrefillEval | None
    decode_instances: int
    prefill_instances: int
    devices: int
    requests_per_s: float
    tokens_per_s_per_device: float
    tpot_ms: float
    ttft_ms: float
    bottleneck: str
    dies_per_device: int

    @property
    def mode(self) -> str:
        return self.decode.mode

    @property
    def concurrency(self) -> int:
        """Concurrent requests over all decode (agg) instances."""
        return self.decode.batch_per_group * self.decode.groups * self.decode_instances

    def layout(self) -> str:
        """e.g. 'agg 1x8 [TP8 EP8]' or 'disagg decode 1x8 [DP8 EP8] + prefill 1x8 [TP8 EP8]'."""
        d, p, dies = self.decode, self.prefill, self.dies_per_device
        out = f"{d.mode} {'' if p is None else 'decode '}{self.decode_instances}x{d.devices} " \
              f"[{layout_label(d.devices * dies, d.tp, d.moe_tp, d.ep, d.pp)}]"
        if p is not None:
            out += f" + prefill {self.prefill_instances}x{p.devices_per_instance} " \
                   f"[{layout_label(p.devices_per_instance * dies, p.tp, p.moe_tp, p.ep, p.pp)}]"
        return out

    def sections(self) -> dict:
        """The spec sections this candidate sets (for _variant and overrides)."""
        d, p = self.decode, self.prefill
        out = {
            "precision": d.precision,
            "mtp": {"draft_tokens": d.mtp},
            "serving": {"mode": d.mode, "concurrency": None},
            "decode": {"devices": d.devices, "instances": self.decode_instances, "ep": d.ep, "moe_tp": d.moe_tp,
                       "tp": d.tp, "pp": d.pp, "redundant_experts": d.redundant, "dedicated_shared_ranks": d.dedicated,
                       "batch_per_group": d.batch_per_group, "microbatches": d.microbatches},
            "prefill": {"instances": 0},
        }
        if p is not None:
            out["prefill"] = {"instances": self.prefill_instances, "devices_per_instance": p.devices_per_instance,
                              "ep": p.ep, "tp": p.tp, "moe_tp": p.moe_tp, "pp": p.pp, "redundant_experts": p.redundant,
                              "dedicated_shared_ranks": 0, "tokens_per_device": p.tokens_per_device}
        return out

    def overrides(self) -> list[str]:
        """The Hydra overrides that turn the searched deployment into this candidate."""
        out = []
        for k, v in self.sections().items():
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
                out.append(f"{k}.{kk}={_hydra(vv)}" if kk else f"{k}={_hydra(vv)}")
        return out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "layout": self.layout(),
                "decode": {**asdict(self.decode), "batch_per_device": round(self.decode.batch_per_device, 4)},
                "prefill": asdict(self.prefill) if self.prefill else None,
                "decode_instances": self.decode_instances, "prefill_instances": self.prefill_instances,
                "devices": self.devices, "concurrency": self.concurrency,
                "requests_per_s": round(self.requests_per_s, 3),
                "tokens_per_s_per_device": round(self.tokens_per_s_per_device, 2),
                "tpot_ms": round(self.tpot_ms, 3), "ttft_ms": round(self.ttft_ms, 2), "bottleneck": self.bottleneck,
                "overrides": self.overrides()}


def _hydra(v) -> str:
    return "null" if v is None else str(v)


@dataclass
class SearchResult:
    budget: int
    candidates: list[Candidate]
    frontier: list[int]  # indexes into candidates
    decode_evals: int
    prefill_evals: int
    compiled: int
    pruned: int
    twin_calls: int
    decode_dominated: int = 0  # decode evaluations left out of the combination (see undominated_decode)
    prefill_dominated: int = 0  # prefill evaluations left out of the combination (see undominated_prefill)
    prune_example: str = ""  # the first reason a configuration was pruned
    simulated: list[dict] = field(default_factory=list)
    wall_s: dict = field(default_factory=dict)

    def best_per_layout(self) -> list[int]:
        """Per serving mode and decode attention TP degree, the index of the candidate with the most tokens/s per
        device, best first: e.g. whether TP8 or DP8 decode attention wins, aggregated or not."""
        best: dict[tuple, int] = {}
        for i, c in enumerate(self.candidates):
            key = (c.mode, c.decode.tp)
            if key not in best or c.tokens_per_s_per_device > self.candidates[best[key]].tokens_per_s_per_device:
                best[key] = i
        return sorted(best.values(), key=lambda i: -self.candidates[i].tokens_per_s_per_device)


# ------------------------------------------------------------------ expert layout rules
def expert_layout(experts: int, shared: int, ep: int) -> tuple[int, int]:
    """(redundant experts, dedicated shared ranks) for an EP degree, by the published layouts' rule:
    below one expert per rank, pad the routed experts to a multiple of ep (plus one redundant per rank when
    that adds nothing); at or above it, one expert per rank, the surplus ranks split between shared-expert
    replicas and redundant routed experts (EP320 = 256 + 32 shared + 32 redundant)."""
    if ep < experts:
        red = (-experts) % ep
        if red == 0 and ep <= experts // 4:
            red = ep
        return red, 0
    surplus = ep - experts
    ded = surplus // 2 if shared else 0
    return surplus - ded, ded


# ------------------------------------------------------------------ the space
def tp_options(spec, phase: str) -> list[int]:
    """Attention TP degrees to try in a phase: search.<phase>_tp, or every power of two dividing the dies of a node
    (TP groups are consecutive dies, so they stay in the fastest domain) plus the deployment's own degree."""
    given = getattr(spec.search, f"{phase}_tp")
    if given:
        return sorted(set(given))
    from cmtwin.topology.fabric import fabric_for

    per_node = fabric_for(spec).devices_per_node * spec.hardware.dies
    return sorted({t for t in (2 ** i for i in range(per_node.bit_length())) if per_node % t == 0}
                  | {getattr(spec, phase).tp})


def scale_up_devices(spec) -> int:
    """Devices joined by the fabric's fastest plane: the whole fabric where the nodes are joined by the plane their
    dies use inside a node (UB on CM384), else one node (NVLink on GPU clusters)."""
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin.comm import planes

    fabric = fabric_for(spec)
    pl = planes(fabric)
    return len(fabric.dies()) // spec.hardware.dies if pl.inter == pl.intra else fabric.devices_per_node


def pp_options(spec, phase: str, devices: int) -> list[int]:
    """Pipeline stages to try for an instance of `devices` devices: search.pp, or 1, the deployment's own, and 2
    where each stage is whole scale-up domains (stages then meet only over the slower plane)."""
    if spec.search.pp:
        return sorted(set(spec.search.pp))
    return sorted({1, getattr(spec, phase).pp} | ({2} if devices % (2 * scale_up_devices(spec)) == 0 else set()))


def phase_layouts(spec, phase: str, devices: int) -> list[dict]:
    """The layouts to try for an instance of a phase, as spec keys: tp x moe_tp x pp with ep = ranks / (moe_tp x
    pp) and the expert layout rule. Whether a layout adds up is left to the Spec's checks (layout_errors)."""
    moe = spec.model.moe
    ranks = devices * spec.hardware.dies
    out = []
    for pp, tp, moe_tp in product(pp_options(spec, phase, devices), tp_options(spec, phase),
                                  sorted(set(spec.search.moe_tp)) if moe else [1]):
        ep = max(1, ranks // (moe_tp * pp)) if moe else 1
        red, ded = expert_layout(moe.routed_experts, moe.shared_experts, ep) if moe else (0, 0)
        out.append({"tp": tp, "moe_tp": moe_tp, "ep": ep, "pp": pp, "redundant_experts": red,
                    "dedicated_shared_ranks": ded})
    return out


# ------------------------------------------------------------------ workers
_SPEC = None


def _init(spec) -> None:
    global _SPEC
    _SPEC = spec


def _variant(spec, **parts):
    """The spec with some sections updated (nested dicts merge), validated again with all its cross-checks.
    Raises CmtwinError (ConfigError) when the combination is invalid. The sections left as they are stay the
    spec's validated models (pydantic takes an instance of a field's own class as it is): a variant validates
    what changed and the spec's cross-checks, not the model and hardware profiles again."""
    from pydantic import BaseModel, ValidationError

    from cmtwin.config.compose import validation_error

    d = {k: getattr(spec, k) for k in type(spec).model_fields}
    for k, v in parts.items():
        old = d.get(k)
        if isinstance(v, dict) and isinstance(old, BaseModel):
            d[k] = {**old.model_dump(), **v}
        else:
            d[k] = {**old, **v} if isinstance(v, dict) and isinstance(old, dict) else v
    try:
        return type(spec).model_validate(d)
    except ValidationError as exc:
        raise validation_error(exc, "candidate") from None


@dataclass
class _Tally:
    compiled: int = 0
    pruned: int = 0
    calls: int = 0
    example: str = ""

    def prune(self, n: int, exc: Exception | None = None) -> None:
        self.pruned += n
        if exc is not None and not self.example:
            self.example = str(exc)

    def add(self, other: _Tally) -> None:
        self.compiled += other.compiled
        self.pruned += other.pruned
        self.calls += other.calls
        self.example = self.example or other.example


def _largest_passing(values: list[int], check, tally: _Tally, per: int):
    """Memory grows with the batch (prefill: the tokens per forward): `check` the largest of `values` (ascending)
    and step down until one passes; every smaller value then fits too. Returns the values that fit and what the check
    returned for the largest (([], None) when none passes; each failure prunes `per` evaluations)."""
    values = list(values)
    while values:
        try:
            return values, check(values[-1])
        except CmtwinError as exc:
            values.pop()
            tally.prune(per, exc)
    return [], None


def _decode_memory_at(v, plan):
    """A check for _largest_passing: the planner's own memory arithmetic for a decode batch per group on `plan`
    (compiled from v at another batch), without compiling again."""
    from cmtwin.planner.plan import decode_memory

    return lambda b: decode_memory(v.model_copy(update={"decode": v.decode.model_copy(
        update={"batch_per_group": b})}), plan)


def _compiled_at(v, section: str, key: str, tally: _Tally):
    """A check for _largest_passing: the plan compiled exactly with `section.key` set to the value."""
    from cmtwin.planner.plan import compile_plan

    def check(value):
        # only a count changes, on a spec that passed every cross-check (the grid keeps batches whole per die)
        plan = compile_plan(v.model_copy(update={section: getattr(v, section).model_copy(update={key: value})}))
        tally.compiled += 1
        return plan

    return check


def _decode_group(args) -> tuple[list[DecodeEval], _Tally]:
    """All decode evaluations of one instance size, in the given serving modes."""
    devices, modes = args
    from cmtwin.planner.plan import compile_plan
    from cmtwin.topology.fabric import fabric_for
    import numpy as np

    from cmtwin.twin.agg import agg_prefill, budget_error, budget_left
    from cmtwin.twin.step import decode_steps

    spec = _SPEC
    s = spec.search
    hw = spec.hardware
    fabric = fabric_for(spec)
    dies = hw.dies
    out: list[DecodeEval] = []
    tally = _Tally()
    mbs = sorted(set(s.microbatches))
    per_die = sorted({b // dies for b in s.decode_batches if b % dies == 0})
    layouts = phase_layouts(spec, "decode", devices)
    for prec, mode, lay in product(_precisions(spec), modes, layouts):
        # requests per attention group: the per-device grid's share of a group, and for a TP group the small
        # batches (a DP rank's small batches are the per-device grid's own)
        batches = sorted({b * lay["tp"] for b in per_die} | (set(s.group_batches) if lay["tp"] > 1 else set()))
        b0 = batches[0]
        bound = None  # the batches that fit with the fewest drafts; more drafts need more memory (weights, KV)
        for k in _mtps(spec):
            try:  # one compiled plan per layout and draft count: the batch changes nothing in it but the memory
                v = _variant(spec, precision=prec, mtp={"draft_tokens": k}, prefill={"instances": 0},
                             serving={"mode": mode, "concurrency": None},
                             decode={"devices": devices, "instances": 1, **lay, "batch_per_group": b0},
                             slo={"tpot_ms": None, "ttft_ms": None})
                plan = compile_plan(v)
                tally.compiled += 1
            except CmtwinError as exc:
                tally.prune(len(batches) * len(mbs), exc)
                continue
            first = bound is None
            if first:  # The KV cache is linear in the batch: the batches whose KV fits what the smallest leaves free.
                mem = plan.pools_of("decode")[0].memory
                bound = [b for b in batches if mem.kv_cache * b / b0 <= mem.capacity - mem.fixed]
            tally.prune((len(batches) - len(bound)) * len(mbs))
            fits, mem = _largest_passing(bound, _decode_memory_at(v, plan), tally, len(mbs))
            if first:
                bound = fits  # what fits with the fewest drafts bounds what fits with more
            if not fits:  # no batch of the grid fits for this layout and draft count
                continue
            groups = devices * dies // (lay["tp"] * lay["pp"])
            # every batch that fits, at every microbatch count, in one pass of the twin
            batch, mb = (np.array(x) for x in zip(*product(fits, mbs)))
            b_die = batch / lay["tp"]  # requests per die
            n = len(batch)
            r = decode_steps(v, plan, hw, fabric, batch_per_die=b_die, microbatches=mb)
            tally.calls += n
            failed = [None] * n
            if s.require_failures:  # one group down: its requests spread over the others, whose KV must fit
                b_f = [-(-b * groups // (groups - 1)) if groups > 1 else None for b in batch.tolist()]
                # mem is the largest fitting batch's (fits[-1]); the KV cache is linear in the batch
                up = [i for i, bf in enumerate(b_f)
                      if bf is not None and mem.kv_cache * bf / fits[-1] <= mem.capacity - mem.fixed]
                failed = [float("inf")] * n
                if up:
                    t = decode_steps(v, plan, hw, fabric, batch_per_die=np.array([b_f[i] for i in up]) / lay["tp"],
                                     microbatches=mb[up]).tpot_ms
                    for i, x in zip(up, t.tolist()):
                        failed[i] = x
            ttft, tps = [None] * n, r.tokens_per_s_per_device.tolist()
            kept = list(range(n))
            if mode == "agg":  # batches whose decodes fill the step budget are pruned
                left = budget_left(v, b_die, r.verify_tokens)
                kept = [i for i in kept if left[i] >= 1]
                for i in sorted(set(range(n)) - set(kept)):
                    tally.prune(1, budget_error(v, b_die[i].item(), r.verify_tokens))
                if kept:
                    a = agg_prefill(v, plan, hw, fabric, batch_per_die=b_die[kept], decode_step_us=r.step_us[kept],
                                    tokens_per_step=r.tokens_per_step, verify_tokens=r.verify_tokens,
                                    microbatches=mb[kept])
                    for i, t, x in zip(kept, a.ttft_ms.tolist(), a.tokens_per_s_per_device.tolist()):
                        ttft[i], tps[i] = t, x
            tpot, chunk = r.tpot_ms.tolist(), r.chunk_tokens.tolist()
            for i in kept:
                out.append(DecodeEval(mode=mode, devices=devices, tp=lay["tp"], moe_tp=lay["moe_tp"], ep=lay["ep"],
                                      pp=lay["pp"], redundant=lay["redundant_experts"],
                                      dedicated=lay["dedicated_shared_ranks"], batch_per_group=int(batch[i]),
                                      microbatches=int(mb[i]), mtp=k, precision=prec, tpot_ms=tpot[i],
                                      tokens_per_s_per_device=tps[i], tokens_per_step=r.tokens_per_step,
                                      ttft_ms=ttft[i], chunk_tokens=chunk[i], dies_per_device=dies,
                                      tpot_failed_ms=failed[i]))
    return out, tally


def _group(task):
    kind, args = task
    return (_decode_group if kind == "d" else _prefill_group)(args)


def _prefill_group(args) -> tuple[list[PrefillEval], _Tally]:
    """All prefill evaluations of one instance size."""
    size, = args
    from cmtwin.topology.fabric import fabric_for
    from cmtwin.twin.blocks import kv_transfer
    from cmtwin.twin.step import prefill_forward

    spec = _SPEC
    hw = spec.hardware
    fabric = fabric_for(spec)
    dies = hw.dies
    out: list[PrefillEval] = []
    tally = _Tally()
    far = fabric.dies()[-1].id  # the KV goes to a decode die elsewhere (decode is not in this plan)
    tokens = sorted(set(spec.search.prefill_tokens_per_device))
    layouts = phase_layouts(spec, "prefill", size)
    for prec, k, lay in product(_precisions(spec), _mtps(spec), layouts):
        try:
            v = _variant(spec, precision=prec, mtp={"draft_tokens": k}, serving={"mode": "disagg", "concurrency": None},
                         decode={"devices": 0}, prefill={"instances": 1, "devices_per_instance": size, **lay,
                                                          "tokens_per_device": tokens[0]},
                         slo={"tpot_ms": None, "ttft_ms": None})
        except CmtwinError as exc:
            tally.prune(len(tokens), exc)
            continue
        fits, plan = _largest_passing(tokens, _compiled_at(v, "prefill", "tokens_per_device", tally), tally, 1)
        if not fits:
            continue
        first = next(d.die for d in plan.dies if d.role == "prefill")
        kv_ms = kv_transfer(v, hw, fabric, first, far, v.workload.prompt_len).us / 1e3
        for t in fits:
            r = prefill_forward(v, plan, hw, fabric, tokens_per_die=t // dies)
            tally.calls += 1
            out.append(PrefillEval(devices_per_instance=size, tp=lay["tp"], moe_tp=lay["moe_tp"], ep=lay["ep"],
                                   pp=lay["pp"], redundant=lay["redundant_experts"], tokens_per_device=t, mtp=k,
                                   precision=prec, ttft_ms=r.ttft_ms + kv_ms,
                                   tokens_per_s_per_device=r.tokens_per_s_per_device))
    return out, tally


def _precisions(spec) -> list[str]:
    from cmtwin.model.precision import PRECISIONS

    out = []
    for p in spec.search.precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"search.precisions: unknown precision {p!r}; choose from {', '.join(PRECISIONS)}.",
                              key="search.precisions")
        pr = PRECISIONS[p]
        if all(spec.hardware.supports(d) for d in {pr.gemm, pr.attention}):
            out.append(p)
    if not out:
        raise ConfigError(f"search.precisions {spec.search.precisions}: none is supported by {spec.hardware.name}.",
                          key="search.precisions", fix="list int8 or bf16")
    return out


def _mtps(spec) -> list[int]:
    ks = sorted(set(spec.search.mtp_draft_tokens))
    return [k for k in ks if k == 0 or spec.model.mtp_layers] or [0]


# ------------------------------------------------------------------ frontier
def pareto(points: list[tuple[float, ...]]) -> list[int]:
    """Indexes of the points that no other point dominates (every coordinate minimised; of equal points, the
    first). Sorted sweep: a point is kept unless an already kept point is <= it in every coordinate. Every kept
    point is <= it in the first coordinate, so up to three coordinates the test is a lookup in the staircase of
    the kept points' other two (ordered by the second, the third strictly falling): O(n log n)."""
    from bisect import bisect_right

    first: dict[tuple, int] = {}
    for i, p in enumerate(points):
        first.setdefault(tuple(p), i)
    out: list[int] = []
    if any(len(p) > 3 for p in first):
        kept: list[tuple] = []
        for p in sorted(first):
            if not any(all(q[j] <= p[j] for j in range(len(p))) for q in kept):
                kept.append(p)
                out.append(first[p])
        return out
    ys: list[float] = []
    zs: list[float] = []
    for p in sorted(first):
        y, z = (tuple(p[1:]) + (0.0, 0.0))[:2]
        i = bisect_right(ys, y)
        if i and zs[i - 1] <= z:
            continue  # a kept point is <= p in every coordinate
        out.append(first[p])
        j = i
        while j < len(ys) and zs[j] >= z:  # steps p now covers
            j += 1
        ys[i:j], zs[i:j] = [y], [z]
    return out


def _undominated(evals: list, group: Callable, figures: Callable) -> list:
    """The evaluations no other of their group dominates in `figures` (all minimised), in their order."""
    groups: dict[tuple, list] = {}
    for e in evals:
        groups.setdefault(group(e), []).append(e)
    keep = set()
    for g in groups.values():
        keep |= {id(g[i]) for i in pareto([figures(e) for e in g])}
    return [e for e in evals if id(e) in keep]


def undominated_prefill(prefill: list[PrefillEval]) -> list[PrefillEval]:
    """The prefill evaluations worth combining. A candidate depends on its prefill instance only through the
    instance size (how many fit the budget), its tokens/s per device and its TTFT, so of the evaluations of one
    size, precision and MTP, one with no more tokens/s and no less TTFT than another gives only candidates that
    the other's dominate (same decode, same devices, no more requests/s, no less TTFT)."""
    return _undominated(prefill, lambda p: (p.precision, p.mtp, p.devices_per_instance),
                        lambda p: (-round(p.tokens_per_s_per_device, 6), round(p.ttft_ms, 6)))


def undominated_decode(decode: list[DecodeEval]) -> list[DecodeEval]:
    """The decode evaluations worth combining. A candidate depends on its decode instance only through the mode,
    the instance size, the precision and MTP (which prefill it pairs with), its tokens/s per device, its TPOT and
    (agg) its TTFT; of the evaluations sharing those keys and the attention TP degree, one that another beats or
    ties in every figure gives only dominated candidates. Keeping the TP degree in the key keeps the best
    candidate of every (mode, TP) exact, so the layouts can be compared (TP8 vs DP8)."""
    return _undominated(decode, lambda d: (d.mode, d.devices, d.precision, d.mtp, d.tp),
                        lambda d: (-round(d.tokens_per_s_per_device, 6), round(d.tpot_ms, 6),
                                   round(d.ttft_ms or 0.0, 6)))


def _combine(spec, budget: int, decode: list[DecodeEval], prefill: list[PrefillEval]) -> list[Candidate]:
    w = spec.workload
    dies = spec.hardware.dies
    by_key: dict[tuple[str, int], list[PrefillEval]] = {}
    for p in prefill:
        by_key.setdefault((p.precision, p.mtp), []).append(p)
    instances = sorted(set(spec.search.decode_instances))
    out = []
    for d in decode:
        dec = decode_requests_per_s(slots=d.devices * d.batch_per_device, step_s=d.tpot_ms * d.tokens_per_step / 1e3,
                                    tokens_per_step=d.tokens_per_step, output_len=w.output_len)  # one instance
        if d.mode == "agg":  # the closed loop's request rate (prompts may wait for the step budget)
            k = budget // d.devices
            dec = d.tokens_per_s_per_device * d.devices / w.output_len
            out.append(Candidate(d, None, k, 0, k * d.devices, k * dec, d.tokens_per_s_per_device, d.tpot_ms,
                                 d.ttft_ms, "agg", dies))
            continue
        for k, p in product(instances, by_key.get((d.precision, d.mtp), ())):
            inst = (budget - k * d.devices) // p.devices_per_instance
            if inst < 1:
                continue
            devices = k * d.devices + inst * p.devices_per_instance
            pre = prefill_requests_per_s(tokens_per_s=inst * p.devices_per_instance * p.tokens_per_s_per_device,
                                         prompt_len=w.prompt_len)
            rate = min(pre, k * dec)
            out.append(Candidate(d, p, k, inst, devices, rate, rate * w.output_len / devices, d.tpot_ms, p.ttft_ms,
                                 "prefill" if pre < k * dec else "decode", dies))
    slo = spec.slo
    if spec.search.require_failures:  # the SLO (or, without one, any TPOT at all) with one group down
        out = [c for c in out if c.decode.tpot_failed_ms is not None and c.decode.tpot_failed_ms < float("inf")
               and (slo.tpot_ms is None or c.decode.tpot_failed_ms <= slo.tpot_ms)]
    if slo.tpot_ms is not None:
        out = [c for c in out if c.tpot_ms <= slo.tpot_ms]
    if slo.ttft_ms is not None:
        out = [c for c in out if c.ttft_ms <= slo.ttft_ms]
    return out


def _frontier(cands: list[Candidate]) -> list[int]:
    """Pareto frontier: max tokens/s per device, min TPOT, min TTFT."""
    return pareto([(-round(c.tokens_per_s_per_device, 6), round(c.tpot_ms, 6), round(c.ttft_ms, 6)) for c in cands])


# ------------------------------------------------------------------ driver
def pool_sizes(spec, budget: int) -> dict[int, tuple[str, ...]]:
    """Devices per decode (agg) instance to evaluate, each with the serving modes it is tried in. Default: whole
    nodes; disagg up to the budget less the smallest prefill instance; agg, for every replica count, the largest
    instance that many replicas fit in the budget (an aggregated deployment has no second pool to give the rest
    to, so a smaller instance for the same replica count would leave devices idle)."""
    s = spec.search
    smallest = min(s.prefill_devices_per_instance)
    if s.decode_devices:
        disagg = {d for d in s.decode_devices if d + smallest <= budget}
        agg = {d for d in s.decode_devices if d <= budget}
    else:
        from cmtwin.topology.fabric import fabric_for

        step = fabric_for(spec).devices_per_node
        disagg = set(range(step, budget - smallest + 1, step))
        agg = {budget // k // step * step for k in range(1, budget // step + 1)}
    sizes: dict[int, tuple[str, ...]] = {}
    for d in sorted(disagg | agg):
        modes = tuple(m for m in s.modes if d in (disagg if m == "disagg" else agg))
        if modes:
            sizes[d] = modes
    return sizes


def search(spec, *, workers: int | None = None, progress: Callable[[str, int, int], None] | None = None,
           simulate: bool = True) -> SearchResult:
    from cmtwin.topology.fabric import fabric_for

    t0 = time.perf_counter()
    fabric = fabric_for(spec)
    total = len(fabric.dies()) // spec.hardware.dies
    budget = spec.search.devices or total
    if budget > total:
        raise ConfigError(f"search.devices ({budget}) exceeds the {total} devices of topology {spec.topology.name}.",
                          key="search.devices", fix=f"set search.devices <= {total} or a larger topology")
    dies = spec.hardware.dies
    if not [b for b in spec.search.decode_batches if b % dies == 0]:
        raise ConfigError(f"search.decode_batches {spec.search.decode_batches}: no batch splits evenly over the "
                          f"{dies} dies of a {spec.hardware.name}.", key="search.decode_batches",
                          fix=f"list multiples of {dies}")
    sizes = pool_sizes(spec, budget)
    psizes = sorted({p for p in spec.search.prefill_devices_per_instance if p < budget})
    if not any("disagg" in m for m in sizes.values()):
        psizes = []
    if not sizes:
        # the smallest budget with a pool: an instance the whole topology allows (whole nodes), and for disagg the
        # smallest prefill instance beside it
        fits = pool_sizes(spec, total) if budget < total else {}
        smallest = min(spec.search.prefill_devices_per_instance)
        need = min((d if "agg" in m else d + smallest for d, m in fits.items()), default=None)
        raise ConfigError(f"search.devices ({budget}) leaves no room for a pool in search.modes {spec.search.modes}: "
                          f"disagg needs a decode instance and a prefill instance (prefill sizes "
                          f"{spec.search.prefill_devices_per_instance}), agg an instance within the budget"
                          + (f"; the smallest budget with one is {need} devices" if need else "") + ".",
                          key="search.devices", fix="raise search.devices" + (f" to at least {need}" if need else "")
                          + ", or list search.decode_devices" + ("" if "agg" in spec.search.modes
                                                                  else ", or add agg to search.modes"))
    n, backend = _workers(spec, workers), _backend(spec)
    tasks = [("d", (d, m)) for d, m in sorted(sizes.items(), reverse=True)] + [("p", (p,)) for p in psizes]
    decode: list[DecodeEval] = []
    prefill: list[PrefillEval] = []
    tally = _Tally()
    for done, ((kind, _), (evals, t)) in enumerate(zip(tasks, _map(_group, tasks, n, _init, spec, backend)), 1):
        (decode if kind == "d" else prefill).extend(evals)
        tally.add(t)
        if progress:
            progress("twin", done, len(tasks))
    decode.sort(key=lambda e: (MODE_CODES.index(e.mode), e.devices, e.tp, e.moe_tp, e.pp, e.precision, e.mtp,
                               e.batch_per_group, e.microbatches))
    prefill.sort(key=lambda e: (e.devices_per_instance, e.tp, e.moe_tp, e.pp, e.precision, e.mtp, e.tokens_per_device))
    t1 = time.perf_counter()
    useful_p = undominated_prefill(prefill)
    useful_d = undominated_decode(decode)
    cands = _combine(spec, budget, useful_d, useful_p)
    front = _frontier(cands)
    front.sort(key=lambda i: -cands[i].tokens_per_s_per_device)
    t2 = time.perf_counter()
    res = SearchResult(budget, cands, front, len(decode), len(prefill), tally.compiled,
                       tally.pruned, tally.calls, decode_dominated=len(decode) - len(useful_d),
                       prefill_dominated=len(prefill) - len(useful_p),
                       prune_example=tally.example, wall_s={"twin": t1 - t0, "frontier": t2 - t1})
    if simulate:
        with simulate_frontier(spec, res, workers=n) as sims:
            sims.results(progress)
    return res


def _workers(spec, workers: int | None = None) -> int:
    """Processes of the search's pool: `workers` if given, else search.workers, else one per CPU."""
    return workers if workers is not None else (spec.search.workers or os.cpu_count() or 1)


def _simulate_one(v) -> dict:
    """Compile one candidate's spec with the planner's full checks and simulate it (runs in a worker)."""
    from cmtwin.planner.plan import compile_plan
    from cmtwin.sim.serving import Simulator

    from cmtwin.sim.spec import check_simulated_work

    try:
        plan = compile_plan(v)
        sim = Simulator(v, plan)
        check_simulated_work(v, rate_per_s=sim.rate, duration_s=sim.duration, capacity_per_s=sim.capacity)
        return {"plan_hash": plan.plan_hash, "simulation": sim.run().to_dict()}
    except CmtwinError as exc:
        return {"error": str(exc)}


def _one_share(c: Candidate) -> tuple[dict, int]:
    """(the spec sections to simulate, k): a deployment of k identical shares (k agg replicas; or k decode instances
    with P prefill instances, P a multiple of k) is simulated as one share -- one replica, or one decode instance
    with P / k prefill instances -- at 90 % of that share's capacity. The shares do not interact, so their
    per-device figures and latencies are the share's and the deployment's request rate is k times the simulated one
    (the entry's `simulated_share`); otherwise (k = 1, or P not a multiple of k) the whole deployment, k = 1."""
    sec = c.sections()
    k = c.decode_instances
    if k <= 1 or (c.prefill is not None and c.prefill_instances % k):
        return sec, 1
    sec["decode"] = {**sec["decode"], "instances": 1}
    if c.prefill is not None:
        sec["prefill"] = {**sec["prefill"], "instances": c.prefill_instances // k}
    return sec, k


def simulate_frontier(spec, res: SearchResult, workers: int | None = None) -> Simulations:
    """The search's best frontier points (search.simulate_top of them) compiled exactly and simulated at 90 % load
    (one share of identical ones, _one_share), started: in a pool of processes (or as Ray tasks) they run while the
    caller goes on (`cmtwin search` writes the candidates to the store meanwhile); `Simulations.results` waits for
    them and puts them in res.simulated, their wall time in res.wall_s["simulate"]. With one worker they run in this
    process, when their results are asked for."""
    cands = res.candidates
    picks = res.frontier[: spec.search.simulate_top] if cands else []
    entries, specs = [], []
    for i in picks:
        c = cands[i]
        entries.append({"index": i, "overrides": c.overrides()})
        sections, share = _one_share(c)
        if share > 1:
            entries[-1]["simulated_share"] = share
        try:
            # long enough for requests to finish: warm-up 1.5 and horizon 3 request lifetimes (twin estimate)
            life = c.ttft_ms / 1e3 + spec.workload.output_len * c.tpot_ms / 1e3
            dur = max(spec.search.sim_duration_s, 3.0 * life)
            specs.append(_variant(spec, **sections,
                                  workload={"load": 0.9, "rate_per_s": None, "arrival": "poisson"},
                                  sim={"duration_s": dur, "warmup_s": 1.5 * life if dur > 1.5 * life else None,
                                       "drain": True}))
        except CmtwinError as exc:
            entries[-1]["error"] = str(exc)
            specs.append(None)
    todo = [k for k, v in enumerate(specs) if v is not None]
    running = _map(_simulate_one, [specs[k] for k in todo], _workers(spec, workers), backend=_backend(spec))
    return Simulations(res, entries, todo, running)


class Simulations:
    """Simulations under way (simulate_frontier): `results()` waits for them and returns an entry per pick (index,
    overrides, simulated_share, and the simulation or the error); leaving the `with` block cancels those not
    started yet (an error or Ctrl-C in the caller meanwhile)."""

    def __init__(self, res: SearchResult, entries: list[dict], todo: list[int], running):
        self.res, self.entries, self.todo, self.running, self.t0 = res, entries, todo, running, time.perf_counter()

    def results(self, progress=None) -> list[dict]:
        for n, (k, out) in enumerate(zip(self.todo, self.running), 1):
            self.entries[k].update(out)
            if progress:
                progress("simulate", n, len(self.todo))
        self.res.simulated = self.entries
        self.res.wall_s["simulate"] = time.perf_counter() - self.t0
        return self.entries

    def __enter__(self) -> Simulations:
        return self

    def __exit__(self, *exc) -> None:
        self.running.close()


def _map(fn, items: list, workers: int, init: Callable | None = None, initarg=None, backend: str = "process"):
    """fn over items, in order: in this process, or in a pool of `workers` processes (forked where possible, so
    the workers start warm), or as Ray tasks (backend ray). The pool's and Ray's work starts at the call; the
    generator returned yields each result as soon as it and those before it are done, and closing it cancels the
    items not started (this process's map computes each item when it is asked for)."""
    if backend == "ray":
        return _ray_map(fn, items, init, initarg)
    if workers <= 1 or len(items) <= 1:
        return _here(fn, items, init, initarg)
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    kw = {"initializer": init, "initargs": (initarg,)} if init else {}
    ex = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx, **kw)
    return _pool_results(ex, [ex.submit(fn, x) for x in items])


def _here(fn, items: list, init: Callable | None, initarg):
    if init:
        init(initarg)
    yield from map(fn, items)


def _pool_results(ex: ProcessPoolExecutor, futures: list):
    try:
        for f in futures:
            yield f.result()
    finally:
        ex.shutdown(cancel_futures=True)


# ------------------------------------------------------------------ Ray (search.backend=ray)
def _backend(spec) -> str:
    """search.backend, checked: ray needs the ray extra (exit 2 naming the install command when it is missing)."""
    backend = spec.search.backend
    if backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("search.backend=ray: Ray is not installed in this environment.", key="search.backend",
                              fix='pip install -e ".[ray]" (from a checkout; pip install "cmtwin[ray]" otherwise), or '
                                  "set search.backend=process")
    return backend


def _ray_task(fn, item, init, initarg):
    """One item on a Ray worker: the worker's globals set as a pool worker's initializer sets them, then fn."""
    if init:
        init(initarg)
    return fn(item)


def _ray_map(fn, items: list, init: Callable | None, initarg):
    """fn over items as Ray tasks, all submitted at the call, results in order (a generator): on the Ray instance
    this process is connected to, else ray.init()'s own choice (RAY_ADDRESS, the latest `ray start` on this machine,
    or a new local instance). initarg (the spec) goes to Ray's object store once. A CmtwinError in a task is raised
    as itself."""
    import ray

    if not ray.is_initialized():
        ray.init()
    arg = ray.put(initarg) if init else None
    task = ray.remote(_ray_task)
    return _ray_results(ray, [task.remote(fn, x, init, arg) for x in items])


def _ray_results(ray, refs: list):
    done = 0
    try:
        for ref in refs:
            try:
                yield ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, CmtwinError):
                    raise exc.cause from None
                raise
            done += 1
    finally:
        for ref in refs[done:]:  # closed early (an error, Ctrl-C): the tasks not done are cancelled
            ray.cancel(ref)
