"""How routed tokens fall on experts and ranks.

Two mechanisms make a real MoE layer slower than a perfectly balanced one:
1. popularity skew: some experts are chosen more often than others (a per-expert relative load);
2. finite-batch noise: even with equal popularity, a batch of T tokens choosing k experts each is a
   multinomial draw, so the busiest rank receives more than the mean.
The layer waits for its busiest rank. `placement.balance=perfect` removes both (every rank gets the mean);
`default` keeps both. The popularity skew is a user input (`placement.expert_load_cv`, the coefficient of
variation of per-expert load measured on the user's traffic; 0 = equal popularity), because
shared/reference publishes no per-expert load statistics to default it from.
"""

from __future__ import annotations

import math
from functools import cache
from statistics import NormalDist


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


def busiest_rank_tokens(shares: list[float], total_copies: float, *, noise: bool) -> float:
    """Expected token-copies on the busiest rank when `total_copies` routed copies fall on ranks with
    probabilities `shares` (summing to 1). With noise, the multinomial spread of a finite batch is added
    (normal approximation of the maximum over ranks); without it, the largest mean."""
    if not shares or total_copies <= 0:
        return 0.0
    distinct = set(shares)  # ranks with equal shares have equal figures (most do: replicas even the load out)
    if not noise:
        return max(total_copies * s for s in distinct)
    z = expected_max_normal(len(shares))
    return max(total_copies * s + z * math.sqrt(max(total_copies * s * (1 - s), 0.0)) for s in distinct)


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
