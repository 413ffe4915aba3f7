"""Aggregated serving as engines run it: one token budget per engine step, shared by the running decodes and
the prefill chunks of waiting prompts (chunked prefill mixed into decode steps, as vLLM V1's scheduler does and
SGLang with --enable-mixed-chunk).

Per attention group (a DP rank, or a TP group of `tp` dies) the engine's scheduler fills each step with the
decode tokens first (requests x verify width) and spends what is left of the budget, A = B - decode tokens, on
prompts in arrival order. So a prompt of P tokens is prefilled in n = ceil(P / A) chunks, and each of those steps
carries a full chunk (a prompt shorter than A is one chunk of its own length); a prompt arriving while another is
being chunked waits for the budget.

- The budget B per attention group (cmtwin.config.budget): `serving.max_batched_tokens` (the engine's flag),
  else the engine's default for the device, scoped as that engine scopes it.
- The mean step carries the steady-state prefill need (every request brings P prompt tokens per output_len
  tokens it decodes; cmtwin.twin.step.agg_chunk_per_die), at most A; the decode figures come from that step.
- TTFT = the wait for the budget + n steps carrying the prompt's chunks. The budget is a single server whose work per
  prompt is deterministic, S = P / A full-chunk steps (a short prompt shares its step with others, a long one
  holds n steps), fed at the prompt rate: the Pollaczek-Khinchine mean wait of an M/D/1 queue,
  W = rho S / (2 (1 - rho)), rho = lambda S. The group is a closed loop of its g requests, so
  lambda = g / (TTFT + decode time) and the wait is at most (g - 1) S (every other request's prompt ahead); the
  fixed point is found by bisection. Its request rate sets the output throughput (lambda x output_len): when the
  budget left after the decodes cannot carry the prompts, requests wait for prefill instead of decoding. The
  decode step is still priced with all g requests decoding (an upper bound on the step). An assumption, stated: arrivals are
  taken as Poisson within the loop; `cmtwin simulate` replays the same budget request by request.

What is not modelled: SGLang's default scheduler (no --enable-mixed-chunk) runs prefill batches apart from decode
batches instead of mixing them; the twin prices both engines' steps as mixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmtwin.config.budget import Budget, token_budget
from cmtwin.errors import PlanError

@dataclass(frozen=True)
class AggPrefill:
    budget: Budget
    chunk_tokens: int  # a prompt's chunk per attention group: the budget left after the decode tokens, or the
    # whole prompt when shorter
    chunks_per_prompt: int
    chunk_step_us: float  # a step carrying a full chunk
    wait_ms: float  # mean wait for the budget
    ttft_ms: float
    budget_utilisation: float  # rho: share of steps the prompts' chunks hold the budget
    tokens_per_s_per_device: float  # output tokens of the closed loop: lambda x output_len, per device


def agg_prefill(spec, plan, hw, fabric, *, batch_per_die: float, decode_step_us: float, tokens_per_step: float,
                verify_tokens: float, microbatches: int | None = None) -> AggPrefill:
    """TTFT of aggregated serving at `batch_per_die` (see the module docstring)."""
    from cmtwin.twin.step import decode_step

    tp = spec.decode.tp
    g = batch_per_die * tp
    budget = token_budget(spec)
    avail = budget.per_group - math.ceil(g * verify_tokens)
    if avail < 1:
        key = "serving.max_batched_tokens"
        need = math.ceil(g * verify_tokens)
        flag = need + 1 if budget.per_group == budget.flag else (need + 1) * spec.decode_groups
        raise PlanError(
            f"aggregated serving: the step budget of {budget.per_group} tokens per attention group ({budget.label}) "
            f"is taken by the decodes ({g:g} requests x {verify_tokens:g} tokens), leaving none for prefill.",
            key=key, fix=f"set {key} to {flag:,} or more (the engine flag's value), or lower the batch")
    w = spec.workload
    n = math.ceil(w.prompt_len / avail)
    own = min(w.prompt_len, avail)  # a prompt's chunk: the whole budget, or the whole prompt when it is shorter

    def step_with(chunk: float) -> float:
        return decode_step(spec, plan, hw, fabric, batch_per_die=batch_per_die, chunk_tokens=chunk / tp,
                           microbatches=microbatches).step_us

    full = step_with(own)
    hold = w.prompt_len / avail * (full if own == avail else step_with(avail))  # its share of full-budget steps
    decode_us = max(0, w.output_len - 1) / tokens_per_step * decode_step_us

    def wait(lam: float) -> float:
        rho = lam * hold
        q = math.inf if rho >= 1 else rho * hold / (2 * (1 - rho))
        return min(q, max(0.0, g - 1) * hold)

    # closed loop: lambda = g / (wait + n full steps + decode); lambda x (wait + ...) rises with lambda
    lo, hi = 0.0, g / (n * full + decode_us)
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid * (wait(mid) + n * full + decode_us) < g:
            lo = mid
        else:
            hi = mid
    q = wait(lo)
    return AggPrefill(budget=budget, chunk_tokens=own, chunks_per_prompt=n, chunk_step_us=full,
                      wait_ms=q / 1e3, ttft_ms=(q + n * full) / 1e3, budget_utilisation=min(1.0, lo * hold),
                      tokens_per_s_per_device=lo * 1e6 * w.output_len / tp * spec.hardware.dies)
