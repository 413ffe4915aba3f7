"""The plan search.

Decode and prefill are evaluated apart, then combined: a decode configuration's TPOT and tokens/s per
device depend only on its own pool (devices, EP, batch, microbatches, MTP, precision), a prefill
configuration's TTFT and tokens/s per device only on its instance (devices, tokens per forward, MTP,
precision). Every structural combination (decode devices x EP x precision x MTP; prefill instance size x
precision x MTP) is compiled once by the planner, which checks placement and memory; the batch and the
microbatching are then varied on the same compiled plan through `decode_step(batch_per_die=,
microbatches=)`, with batches that cannot hold their KV pruned before any twin call. A candidate plan is a
decode configuration plus a prefill configuration (same precision and MTP) with as many prefill instances as
the remaining budget allows; its system figures follow from the two pools' rates:

    requests/s = min(prefill instances x prefill tokens/s per instance / prompt_len,
                     decode devices x decode tokens/s per device / output_len)
    tokens_per_s_per_device = requests/s x output_len / devices used

The frontier maximises tokens/s per device and minimises TPOT and TTFT; the best few frontier points are
then compiled exactly and simulated (cmtwin/sim) at 90% of their capacity.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from cmtwin.errors import CmtwinError, ConfigError

PRECISION_CODES = ("int8", "fp8", "bf16")
"""`precision` of a stored search point is an index into this tuple."""


@dataclass(frozen=True)
class DecodeEval:
    devices: int
    ep: int
    moe_tp: int
    redundant: int
    dedicated: int
    batch_per_device: int
    microbatches: int
    mtp: int
    precision: str
    tpot_ms: float
    tokens_per_s_per_device: float


@dataclass(frozen=True)
class PrefillEval:
    devices_per_instance: int
    ep: int
    tp: int
    redundant: int
    tokens_per_device: int
    mtp: int
    precision: str
    ttft_ms: float
    tokens_per_s_per_device: float


@dataclass(frozen=True)
class Candidate:
    """A whole deployment: one decode instance + `prefill_instances` prefill instances."""

    decode: DecodeEval
    prefill: PrefillEval
    prefill_instances: int
    devices: int
    requests_per_s: float
    tokens_per_s_per_device: float
    tpot_ms: float
    ttft_ms: float
    bottleneck: str

    def sections(self) -> dict:
        """The spec sections this candidate sets (for _variant and overrides)."""
        d, p = self.decode, self.prefill
        return {
            "precision": d.precision,
            "mtp": {"draft_tokens": d.mtp},
            "decode": {"devices": d.devices, "instances": 1, "ep": d.ep, "moe_tp": d.moe_tp, "tp": 1, "pp": 1,
                       "redundant_experts": d.redundant, "dedicated_shared_ranks": d.dedicated,
                       "batch_per_device": d.batch_per_device, "microbatches": d.microbatches},
            "prefill": {"instances": self.prefill_instances, "devices_per_instance": p.devices_per_instance,
                        "ep": p.ep, "tp": p.tp, "moe_tp": 1, "pp": 1, "redundant_experts": p.redundant,
                        "dedicated_shared_ranks": 0, "tokens_per_device": p.tokens_per_device},
        }

    def overrides(self) -> list[str]:
        """The Hydra overrides that turn the searched deployment into this candidate."""
        out = []
        for k, v in self.sections().items():
            if isinstance(v, dict):
                out += [f"{k}.{kk}={vv}" for kk, vv in v.items()]
            else:
                out.append(f"{k}={v}")
        return out

    def to_dict(self) -> dict:
        return {"decode": asdict(self.decode), "prefill": asdict(self.prefill),
                "prefill_instances": self.prefill_instances, "devices": self.devices,
                "requests_per_s": round(self.requests_per_s, 3),
                "tokens_per_s_per_device": round(self.tokens_per_s_per_device, 2),
                "tpot_ms": round(self.tpot_ms, 3), "ttft_ms": round(self.ttft_ms, 2), "bottleneck": self.bottleneck,
                "overrides": self.overrides()}


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
    simulated: list[dict] = field(default_factory=list)
    wall_s: dict = field(default_factory=dict)


# ------------------------------------------------------------------ expert layout rules
def expert_layout(experts: int, shared: int, ep: int) -> tuple[int, int] | None:
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


# ------------------------------------------------------------------ workers
_SPEC = None


def _init(spec) -> None:
    global _SPEC
    _SPEC = spec


def _variant(spec, **parts):
    """The spec with some sections updated (nested dicts merge), validated again with all its cross-checks.
    Raises CmtwinError (ConfigError) when the combination is invalid."""
    from pydantic import ValidationError

    d = spec.model_dump()
    for k, v in parts.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    try:
        return type(spec).model_validate(d)
    except ValidationError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


def _decode_group(args) -> tuple[list[DecodeEval], int, int, int]:
    """All decode evaluations of one decode pool size: (evals, compiled, pruned, twin calls)."""
    devices, = args
    from cmtwin.planner.plan import compile_plan, fabric_for
    from cmtwin.twin.decode import decode_step

    spec = _SPEC
    s = spec.search
    hw = spec.hardware
    fabric = fabric_for(spec)
    dies = hw.dies
    ranks = devices * dies
    moe = spec.model.moe
    eps = sorted({e for e in (ranks, ranks // 2) if e >= 1 and ranks % e == 0}) if moe else [1]
    out: list[DecodeEval] = []
    compiled = pruned = calls = 0
    batches = sorted(b for b in s.decode_batches if b % dies == 0)
    for prec in _precisions(spec):
        for k in _mtps(spec):
            for ep in eps:
                layout = expert_layout(moe.routed_experts, moe.shared_experts, ep) if moe else (0, 0)
                if layout is None:
                    continue
                red, ded = layout
                b0 = batches[0]
                try:
                    v = _variant(spec, precision=prec, mtp={"draft_tokens": k}, prefill={"instances": 0},
                                 decode={"devices": devices, "instances": 1, "ep": ep, "moe_tp": ranks // ep,
                                         "tp": 1, "pp": 1, "redundant_experts": red, "dedicated_shared_ranks": ded,
                                         "batch_per_device": b0}, slo={"tpot_ms": None, "ttft_ms": None})
                    plan = compile_plan(v)
                except CmtwinError:
                    pruned += len(batches) * len(s.microbatches)
                    continue
                compiled += 1
                mem = plan.pools_of("decode")[0].memory
                cap = mem.kv_token_capacity + int(mem.kv_cache // mem.kv_bytes_per_token)
                per_req = v.workload.decode_kv_len + k
                fits = [b for b in batches if (b // dies) * per_req <= cap]  # KV estimate at the smallest batch
                pruned += (len(batches) - len(fits)) * len(s.microbatches)
                # Memory grows with the batch (KV, buffers, activations): compile the largest exactly, step down
                # until one passes the planner's HBM check; every smaller batch then fits too.
                while fits and fits[-1] != b0:
                    try:
                        compile_plan(_variant(v, decode={"batch_per_device": fits[-1]}))
                        compiled += 1
                        break
                    except CmtwinError:
                        fits.pop()
                        pruned += len(s.microbatches)
                for b in fits:
                    bd = b // dies
                    for m in s.microbatches:
                        r = decode_step(v, plan, hw, fabric, batch_per_die=bd, microbatches=m)
                        calls += 1
                        out.append(DecodeEval(devices, ep, ranks // ep, red, ded, b, m, k, prec, r.tpot_ms,
                                              r.tokens_per_s_per_device))
    return out, compiled, pruned, calls


def _prefill_group(args) -> tuple[list[PrefillEval], int, int, int]:
    size, = args
    from cmtwin.planner.plan import compile_plan, fabric_for
    from cmtwin.twin import comm
    from cmtwin.twin.prefill import prefill_forward

    spec = _SPEC
    hw = spec.hardware
    fabric = fabric_for(spec)
    dies = hw.dies
    ranks = size * dies
    moe = spec.model.moe
    ep = ranks if moe else 1
    tp = max(t for t in (1, 2, 4, 8, 16) if ranks % t == 0 and t <= ranks)
    red = expert_layout(moe.routed_experts, moe.shared_experts, ep)[0] if moe and ep < moe.routed_experts else 0
    out: list[PrefillEval] = []
    compiled = pruned = calls = 0
    far = fabric.dies()[-1].id
    for prec in _precisions(spec):
        for k in _mtps(spec):
            for tokens in spec.search.prefill_tokens_per_device:
                try:
                    v = _variant(spec, precision=prec, mtp={"draft_tokens": k}, decode={"devices": 0},
                                 prefill={"instances": 1, "devices_per_instance": size, "ep": ep, "tp": tp,
                                          "moe_tp": 1, "pp": 1, "redundant_experts": red,
                                          "dedicated_shared_ranks": 0, "tokens_per_device": tokens},
                                 slo={"tpot_ms": None, "ttft_ms": None})
                    plan = compile_plan(v)
                except CmtwinError:
                    pruned += 1
                    continue
                compiled += 1
                pool = plan.pools_of("prefill")[0]
                r = prefill_forward(v, plan, hw, fabric)
                calls += 1
                # KV of one prompt to a decode die elsewhere over the scale-out plane (decode is not in this plan)
                first = next(d.die for d in plan.dies if d.role == "prefill")
                kv = comm.p2p(hw, fabric, first, far, nbytes=v.workload.prompt_len * pool.memory.kv_bytes_per_token,
                              plane=comm.planes(fabric).scale_out).us
                out.append(PrefillEval(size, ep, tp, red, tokens, k, prec, (r.step_us + kv) / 1e3,
                                       r.tokens_per_s_per_device))
    return out, compiled, pruned, calls


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
    first). Sorted sweep: a point is kept unless an already kept point is <= it in every coordinate."""
    first: dict[tuple, int] = {}
    for i, p in enumerate(points):
        first.setdefault(tuple(p), i)
    kept: list[tuple] = []
    out: list[int] = []
    for p in sorted(first):
        if not any(all(q[j] <= p[j] for j in range(len(p))) for q in kept):
            kept.append(p)
            out.append(first[p])
    return out


def _combine(spec, budget: int, decode: list[DecodeEval], prefill: list[PrefillEval]) -> list[Candidate]:
    w = spec.workload
    by_key: dict[tuple[str, int], list[PrefillEval]] = {}
    for p in prefill:
        by_key.setdefault((p.precision, p.mtp), []).append(p)
    out = []
    for d in decode:
        for p in by_key.get((d.precision, d.mtp), ()):
            inst = (budget - d.devices) // p.devices_per_instance
            if inst < 1:
                continue
            devices = d.devices + inst * p.devices_per_instance
            pre = inst * p.devices_per_instance * p.tokens_per_s_per_device / w.prompt_len
            dec = d.devices * d.tokens_per_s_per_device / w.output_len
            rate = min(pre, dec)
            out.append(Candidate(d, p, inst, devices, rate, rate * w.output_len / devices, d.tpot_ms, p.ttft_ms,
                                 "prefill" if pre < dec else "decode"))
    slo = spec.slo
    if slo.tpot_ms is not None:
        out = [c for c in out if c.tpot_ms <= slo.tpot_ms]
    if slo.ttft_ms is not None:
        out = [c for c in out if c.ttft_ms <= slo.ttft_ms]
    return out


def _frontier(cands: list[Candidate]) -> list[int]:
    """Pareto frontier: max tokens/s per device, min TPOT, min TTFT."""
    return pareto([(-round(c.tokens_per_s_per_device, 6), round(c.tpot_ms, 6), round(c.ttft_ms, 6)) for c in cands])


# ------------------------------------------------------------------ driver
def decode_sizes(spec, budget: int) -> list[int]:
    s = spec.search
    if s.decode_devices:
        return sorted({d for d in s.decode_devices if 1 <= d < budget})
    from cmtwin.planner.plan import fabric_for

    step = fabric_for(spec).devices_per_node  # whole nodes
    smallest = min(s.prefill_devices_per_instance)
    return [d for d in range(step, budget - smallest + 1, step)]


def search(spec, *, workers: int | None = None, progress: Callable[[str, int, int], None] | None = None,
           simulate: bool = True) -> SearchResult:
    import time

    from cmtwin.planner.plan import fabric_for

    t0 = time.perf_counter()
    fabric = fabric_for(spec)
    total = len(fabric.dies()) // spec.hardware.dies
    budget = spec.search.devices or total
    if budget > total:
        raise ConfigError(f"search.devices ({budget}) exceeds the {total} devices of topology {spec.topology.name}.",
                          key="search.devices", fix=f"set search.devices <= {total} or a larger topology")
    sizes = decode_sizes(spec, budget)
    psizes = sorted({p for p in spec.search.prefill_devices_per_instance if p < budget})
    if not sizes or not psizes:
        raise ConfigError(f"search.devices ({budget}) leaves no room for a decode pool and a prefill instance "
                          f"(prefill sizes {spec.search.prefill_devices_per_instance}).", key="search.devices")
    n = workers if workers is not None else (spec.search.workers or os.cpu_count() or 1)
    tasks = [("d", (d,)) for d in sorted(sizes, reverse=True)] + [("p", (p,)) for p in psizes]
    decode: list[DecodeEval] = []
    prefill: list[PrefillEval] = []
    compiled = pruned = calls = 0
    done = 0

    def absorb(kind, res):
        nonlocal compiled, pruned, calls, done
        evals, c, p, k = res
        (decode if kind == "d" else prefill).extend(evals)
        compiled += c
        pruned += p
        calls += k
        done += 1
        if progress:
            progress("twin", done, len(tasks))

    if n <= 1:
        _init(spec)
        for kind, a in tasks:
            absorb(kind, (_decode_group if kind == "d" else _prefill_group)(a))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init, initargs=(spec,)) as ex:
            futs = [(kind, ex.submit(_decode_group if kind == "d" else _prefill_group, a)) for kind, a in tasks]
            for kind, f in futs:
                absorb(kind, f.result())
    decode.sort(key=lambda e: (e.devices, e.ep, e.precision, e.mtp, e.batch_per_device, e.microbatches))
    prefill.sort(key=lambda e: (e.devices_per_instance, e.precision, e.mtp, e.tokens_per_device))
    t1 = time.perf_counter()
    cands = _combine(spec, budget, decode, prefill)
    front = _frontier(cands)
    front.sort(key=lambda i: -cands[i].tokens_per_s_per_device)
    t2 = time.perf_counter()
    res = SearchResult(budget, cands, front, len(decode), len(prefill), compiled, pruned, calls,
                       wall_s={"twin": t1 - t0, "frontier": t2 - t1})
    if simulate and spec.search.simulate_top and cands:
        res.simulated = simulate_best(spec, cands, front[: spec.search.simulate_top], progress=progress)
    res.wall_s["simulate"] = time.perf_counter() - t2
    return res


def simulate_best(spec, cands: list[Candidate], picks: list[int], progress=None) -> list[dict]:
    """Compile the picked candidates exactly (the planner's full checks) and simulate each at 90% load."""
    from cmtwin.planner.plan import compile_plan
    from cmtwin.sim.serving import Simulator

    out = []
    for k, i in enumerate(picks):
        c = cands[i]
        entry = {"index": i, "overrides": c.overrides()}
        try:
            # long enough for requests to finish: warm-up 1.5 and horizon 3 request lifetimes (twin estimate)
            life = c.ttft_ms / 1e3 + spec.workload.output_len * c.tpot_ms / 1e3
            dur = max(spec.search.sim_duration_s, 3.0 * life)
            v = _variant(spec, **c.sections(), workload={"load": 0.9, "rate_per_s": None, "arrival": "poisson"},
                         sim={"duration_s": dur, "warmup_s": 1.5 * life if dur > 1.5 * life else None, "drain": True})
        except CmtwinError as exc:
            out.append({**entry, "error": str(exc)})
            continue
        try:
            plan = compile_plan(v)
            r = Simulator(v, plan).run()
            entry.update(plan_hash=plan.plan_hash, simulation=r.to_dict())
        except CmtwinError as exc:
            entry.update(error=str(exc))
        out.append(entry)
        if progress:
            progress("simulate", k + 1, len(picks))
    return out
