"""Expert load: how routed tokens fall on experts and ranks, and the critical rank of a MoE layer.

Three mechanisms make a real MoE layer slower than a perfectly balanced one:
1. popularity skew: some experts are chosen more often than others (a per-expert relative load); EPLB's
   replicas and placement (cmtwin/planner/placement.py) even it out across ranks as far as the slots allow;
2. popularity fluctuation: the placement is made from long-run statistics, but each iteration's batch has its own
   hot experts, so every slot's load varies around its expected value (`placement.load_fluctuation_cv`, per slot);
3. finite-batch noise: a batch of T tokens choosing k experts each is a multinomial draw.
The layer waits for its busiest rank. `placement.balance=perfect` removes all three (every rank gets the mean);
`default` keeps them. The skew is a user input (`placement.expert_load_cv`, 0 = equal popularity): EPLB removes
most of it, and its residual at a rank of one slot depends on the traffic. The fluctuation defaults to the
measured residual of offline EPLB on DeepSeek-R1 (TensorRT-LLM's expert-load statistics,
shared/reference/expert_load_and_kernels.md section 2): at EP32 with 9 slots per rank the ranks' load has
std/mean 52.0/1,024 = 0.0508, of which the multinomial part is sqrt(1,024 x 31/32)/1,024 = 0.0304, leaving
0.0407 from the slots' fluctuation, 0.0407 x sqrt(9) = 0.122 per slot; the EP36 row (8 slots, std 53.9) gives
0.0426 x sqrt(8) = 0.120 independently. Extrapolating to other EP degrees and to prefill is an assumption: the
same per-slot fluctuation, summed over a rank's slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, reduce
from statistics import NormalDist

from cmtwin.model.operators import expert_ops
from cmtwin.vec import ndim, numpy, vmax, vsqrt, where


@cache
def expert_load_profile(n: int, cv: float = 0.0) -> tuple[float, ...]:
    """Relative load per expert (mean 1): lognormal popularity with coefficient of variation cv.

    Deterministic: the lognormal's quantiles at (i + 0.5) / n, dealt to experts in a fixed scrambled order
    so hot experts are not neighbours.
    """
    if n <= 0:
        return ()
    if cv <= 0:
        return tuple(1.0 for _ in range(n))
    sigma = math.sqrt(math.log1p(cv * cv))
    nd = NormalDist()
    raw = [math.exp(sigma * nd.inv_cdf((i + 0.5) / n)) for i in range(n)]
    mean = sum(raw) / n
    vals = [x / mean for x in raw]
    step = next(s for s in range(n // 2 + 1, n) if math.gcd(s, n) == 1) if n > 2 else 1
    order = [(i * step) % n for i in range(n)]
    out = [0.0] * n
    for q, e in zip(sorted(vals, reverse=True), order):
        out[e] = q
    return tuple(out)


def expected_max_normal(n: int) -> float:
    """E[max of n standard normals] (Blom's approximation); 0 for n <= 1."""
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


def busiest_rank_tokens(shares: list[float], total_copies: float, *, noise: bool, slots: int = 1,
                        fluctuation: float = 0.0) -> float:
    """Expected token-copies on the busiest rank when `total_copies` routed copies fall on ranks with
    probabilities `shares` (summing to 1). With noise, the spread of one iteration is added (normal approximation
    of the maximum over ranks): the multinomial draw of a finite batch and, with `fluctuation`, each of the rank's
    `slots` slots' load varying by that coefficient of variation, independently (a rank's sum varies by
    fluctuation / sqrt(slots)). Without noise, the largest mean. total_copies may be an array (one per batch)."""
    if not shares:
        return 0.0
    distinct = set(shares)  # ranks with equal shares have equal figures (most do: replicas even the load out)
    if not noise:
        most = reduce(vmax, [total_copies * s for s in distinct])
    else:
        z = expected_max_normal(len(shares))
        f2 = fluctuation * fluctuation / max(slots, 1)

        def busiest(mean, s: float):
            return mean + z * vsqrt(vmax(mean * (1 - s), 0.0) + f2 * mean * mean)

        most = reduce(vmax, [busiest(total_copies * s, s) for s in distinct])
    return where(total_copies <= 0, 0.0, most)


def distinct_ranks_per_token(k: int, experts: int, ranks: int) -> float:
    """Expected number of distinct EP ranks a token's k routed experts land on (uniform choice of k of
    `experts` experts spread evenly over `ranks`); dispatch sends one copy per distinct rank."""
    if ranks <= 1:
        return 1.0
    per = experts / ranks
    # P(a given rank holds none of the k experts) = C(E - per, k) / C(E, k)
    miss = 1.0
    for i in range(k):
        miss *= max(experts - per - i, 0.0) / (experts - i)
    return ranks * (1.0 - miss)


def distinct_nodes_per_token(moe, nodes: int) -> float:
    """Expected number of distinct nodes a token's routed experts land on, over an EP group spread evenly on
    `nodes` nodes. With group-limited routing (DeepSeek-V3: the top `topk_groups` of `groups` expert groups) and
    the groups packed onto nodes (EPLB's hierarchical policy, when the nodes divide the groups), a token reaches
    the nodes of its chosen groups: each node holds groups/nodes of them and is missed with probability
    C(groups - groups/nodes, topk_groups) / C(groups, topk_groups) (every chosen group assumed hit). Otherwise
    the k experts are taken as spread uniformly."""
    if nodes <= 1:
        return 1.0
    if moe.groups > 1 and moe.groups % nodes == 0:
        per = moe.groups // nodes
        miss = math.comb(moe.groups - per, moe.topk_groups) / math.comb(moe.groups, moe.topk_groups)
        return nodes * (1.0 - miss)
    return distinct_ranks_per_token(moe.experts_per_token, moe.routed_experts, nodes)


@dataclass(frozen=True)
class MoELoad:
    """Token copies per microbatch on the critical ranks of an EP group."""

    send_copies: float  # copies one rank sends (tokens x distinct destination ranks)
    routed_tokens_busiest: float  # copies landing on the busiest routed rank
    routed_slots: int
    group_tokens: float  # tokens in the EP group this microbatch (each chooses top-k experts)
    shared_tokens: float  # tokens through the shared expert on its busiest holder
    recv_busiest: float  # copies the busiest rank receives (dispatch) / sends back (combine)


def moe_load(spec, placement, *, tokens_per_rank: float, noise: bool) -> MoELoad:
    """Where the routed and shared load of one microbatch lands, for an EP group of `placement.ep` ranks."""
    moe = spec.model.moe
    ep = placement.ep
    routed_ranks = placement.routed_ranks
    total = tokens_per_rank * ep  # tokens in the EP group (every rank is also a DP/SP rank)
    copies = total * moe.experts_per_token
    if spec.placement.balance == "perfect" and not placement.failed:  # the ideal EPLB: equal shares
        shares = [1.0 / routed_ranks] * routed_ranks
    else:
        loads = placement.rank_loads()[:routed_ranks]
        total_load = sum(loads) or 1.0
        shares = [x / total_load for x in loads]
    fluct = spec.placement.load_fluctuation_cv
    busiest = busiest_rank_tokens(shares, copies, noise=noise, slots=placement.routed_slots_per_rank,
                                  fluctuation=fluct)
    redundant = sum(placement.replicas) - len(placement.replicas)
    distinct = distinct_ranks_per_token(moe.experts_per_token, moe.routed_experts + redundant,
                                        routed_ranks) if routed_ranks > 1 else 1.0
    if placement.dedicated_shared_ranks:
        shared_tokens = busiest_rank_tokens([1 / placement.dedicated_shared_ranks] * placement.dedicated_shared_ranks,
                                            total * moe.shared_experts, noise=noise)
        send = tokens_per_rank * (distinct + moe.shared_experts)
        recv = vmax(busiest, shared_tokens)
    else:
        shared_tokens = tokens_per_rank * moe.shared_experts  # colocated: own tokens, no dispatch
        send = tokens_per_rank * distinct
        recv = busiest
    return MoELoad(send, busiest, placement.routed_slots_per_rank, total, shared_tokens, recv)


def routed_experts_read(load: MoELoad) -> tuple[float, int]:
    """(experts that receive a token, expert slots) on the busiest routed rank of one microbatch."""
    slots = max(1, load.routed_slots)
    return experts_hit(slots, load.routed_tokens_busiest / slots, load.group_tokens), slots


def expert_ranks_ops(spec, load: MoELoad, placement, moe_tp: int) -> list[list]:
    """Expert operators of the ranks of a MoE layer whose slower one is critical: a routed rank's experts (with the
    colocated shared expert), or, with dedicated shared-expert ranks, a routed rank's and a shared rank's. Each
    rank holds 1/moe_tp of every expert's intermediate (MoE-TP)."""
    p, share = spec.prec, 1 / moe_tp
    read, slots = routed_experts_read(load)
    routed = expert_ops(spec.model, p, tokens_per_expert=[load.routed_tokens_busiest / slots] * slots, share=share,
                        experts_read=read)
    shared = (expert_ops(spec.model, p, tokens_per_expert=[load.shared_tokens], name="shared_expert", share=share)
              if spec.model.moe.shared_experts else [])
    return [routed, shared] if placement.dedicated_shared_ranks else [routed + shared]


def experts_hit(slots: int, copies_per_slot: float, group_tokens: float) -> float:
    """Expected number of a rank's expert slots that receive at least one token (only their weights are read,
    rule 7): each of the group's tokens lands on a slot with probability copies_per_slot / group_tokens, so a
    slot stays idle with probability (1 - that)^group_tokens. At a few requests per TP group most experts are
    idle (8 tokens x top-8 of 256: about 22 % hit); in prefill every slot is hit. Arrays (one figure per batch) are
    taken element by element, in Python's float power (numpy's differs in the last bit for some)."""
    if ndim(copies_per_slot) or ndim(group_tokens):
        np = numpy()
        c, g = np.broadcast_arrays(copies_per_slot, group_tokens)
        return np.array([experts_hit(slots, x, y) for x, y in zip(c.tolist(), g.tolist())])
    if group_tokens <= 0 or copies_per_slot <= 0:
        return 0.0
    q = min(1.0, copies_per_slot / group_tokens)
    return slots * (1.0 - (1.0 - q) ** group_tokens)
