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

import numpy as np

from cmtwin.config.budget import Budget, token_budget
from cmtwin.errors import PlanError
from cmtwin.vec import vceil, vmax, vmin, where

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


def budget_left(spec, batch_per_die, verify_tokens: float):
    """Tokens per attention group the step budget leaves for prefill after the decode tokens (a number, or an
    array of them for an array of batches)."""
    return token_budget(spec).per_group - vceil(batch_per_die * spec.decode.tp * verify_tokens)


def budget_error(spec, batch_per_die: float, verify_tokens: float) -> PlanError:
    """The error of a batch whose decodes fill the step budget (budget_left < 1)."""
    budget = token_budget(spec)
    g = batch_per_die * spec.decode.tp
    key = "serving.max_batched_tokens"
    need = math.ceil(g * verify_tokens)
    flag = need + 1 if budget.per_group == budget.flag else (need + 1) * spec.decode_groups
    return PlanError(
        f"aggregated serving: the step budget of {budget.per_group} tokens per attention group ({budget.label}) "
        f"is taken by the decodes ({g:g} requests x {verify_tokens:g} tokens), leaving none for prefill.",
        key=key, fix=f"set {key} to {flag:,} or more (the engine flag's value), or lower the batch")


def agg_prefill(spec, plan, hw, fabric, *, batch_per_die, decode_step_us, tokens_per_step: float,
                verify_tokens: float, microbatches: int | None = None) -> AggPrefill:
    """TTFT of aggregated serving at `batch_per_die` (see the module docstring). batch_per_die and decode_step_us
    may be arrays (one element per batch, every figure then an array); PlanError when a batch leaves no budget."""
    from cmtwin.twin.step import decode_step, decode_steps

    tp = spec.decode.tp
    g = batch_per_die * tp
    budget = token_budget(spec)
    avail = budget_left(spec, batch_per_die, verify_tokens)
    if np.any(avail < 1):
        raise budget_error(spec, np.asarray(batch_per_die).reshape(-1)[np.argmax(np.asarray(avail).reshape(-1) < 1)]
                           .item(), verify_tokens)
    w = spec.workload
    n = vceil(w.prompt_len / avail)
    own = vmin(w.prompt_len, avail)  # a prompt's chunk: the whole budget, or the whole prompt when it is shorter

    def step_with(chunk):
        if isinstance(batch_per_die, np.ndarray):
            return decode_steps(spec, plan, hw, fabric, batch_per_die=batch_per_die, chunk_tokens=chunk / tp,
                                microbatches=microbatches).step_us
        return decode_step(spec, plan, hw, fabric, batch_per_die=batch_per_die, chunk_tokens=chunk / tp,
                           microbatches=microbatches).step_us

    full = step_with(own)
    short = own != avail  # the prompt is shorter than the budget: a full-budget step is another step
    hold = w.prompt_len / avail * (where(short, step_with(avail), full) if np.any(short) else full)
    decode_us = max(0, w.output_len - 1) / tokens_per_step * decode_step_us

    def wait(lam):
        rho = lam * hold
        q = where(rho >= 1, math.inf, rho * hold / (2 * where(rho >= 1, 1.0, 1 - rho)))
        return vmin(q, vmax(0.0, g - 1) * hold)

    # closed loop: lambda = g / (wait + n full steps + decode); lambda x (wait + ...) rises with lambda
    lo, hi = 0.0 * g, g / (n * full + decode_us)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = mid * (wait(mid) + n * full + decode_us) < g
        lo, hi = where(below, mid, lo), where(below, hi, mid)
    q = wait(lo)
    return AggPrefill(budget=budget, chunk_tokens=own, chunks_per_prompt=n, chunk_step_us=full,
                      wait_ms=q / 1e3, ttft_ms=(q + n * full) / 1e3, budget_utilisation=vmin(1.0, lo * hold),
                      tokens_per_s_per_device=lo * 1e6 * w.output_len / tp * spec.hardware.dies)
