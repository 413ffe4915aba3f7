"""SLO search: the largest decode batch whose TPOT meets slo.tpot_ms, the largest prefill batch whose TTFT
meets slo.ttft_ms. Both are monotone in the batch, so a bisection over the feasible range suffices."""

from __future__ import annotations

from cmtwin.errors import PlanError

MAX_DECODE_BATCH_PER_DIE = 4096
"""Upper end of the TPOT search when the KV cache would hold more (short contexts on a large HBM): a bound on
the bisection's work, far above the 16-256 requests per die that serving systems run at (the KV of 4,096
requests alone is HBM-bandwidth bound far beyond any TPOT target)."""
PREFILL_SEARCH_HEADROOM = 4
"""The TTFT search tries up to this many times the configured prompts per forward (a larger forward only
lengthens TTFT, so the bound is never the answer unless the target is very loose)."""


def largest_true(ok, lo: int, hi: int) -> int | None:
    """Largest x in [lo, hi] with ok(x), assuming ok is monotone (True then False); None if ok(lo) fails."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def search_decode_batch(spec, plan, hw, fabric, tpot_ms: float) -> tuple[int, str]:
    """Requests per die: the largest batch meeting the TPOT target within the die's KV capacity."""
    from cmtwin.twin.step import decode_step

    pool = plan.pools_of("decode")[0]
    per_req = spec.workload.decode_kv_len + spec.mtp.draft_tokens
    cap = pool.memory.kv_token_capacity + int(pool.memory.kv_cache // pool.memory.kv_bytes_per_token)
    hi = max(1, min(MAX_DECODE_BATCH_PER_DIE, cap // max(1, per_req)))
    best = largest_true(lambda b: decode_step(spec, plan, hw, fabric, batch_per_die=b).tpot_ms <= tpot_ms, 1, hi)
    if best is None:
        t1 = decode_step(spec, plan, hw, fabric, batch_per_die=1).tpot_ms
        raise PlanError(f"slo.tpot_ms={tpot_ms:g} cannot be met: even one request per die gives TPOT {t1:.2f} ms.",
                        key="slo.tpot_ms", fix=f"set slo.tpot_ms to {t1:.2f} or more (the floor is one request per die; "
                            f"`cmtwin plan ... decode.batch_per_device={spec.hardware.dies}` shows what it is made of)")
    dies = spec.hardware.dies
    note = f"slo.tpot_ms={tpot_ms:g}: batch {best * dies} per device (searched 1..{hi * dies})"
    # the other microbatch count under the same target: the plan keeps the configured one, the note says what the
    # twin finds for the other where it serves more, by over 1 % (small batches: two microbatches read every
    # weight twice)
    other = 3 - spec.decode.microbatches
    alt = largest_true(lambda b: decode_step(spec, plan, hw, fabric, batch_per_die=b, microbatches=other).tpot_ms
                       <= tpot_ms, 1, hi)
    if alt is not None:
        mine = decode_step(spec, plan, hw, fabric, batch_per_die=best).tokens_per_s_per_device
        theirs = decode_step(spec, plan, hw, fabric, batch_per_die=alt, microbatches=other).tokens_per_s_per_device
        if theirs > mine * 1.01:
            note += (f"; with decode.microbatches={other}: batch {alt * dies} per device, {theirs:,.0f} tokens/s "
                     f"per device ({theirs / mine:.2f} x)")
    return best, note


def search_prefill_tokens(spec, plan, hw, fabric, ttft_ms: float) -> tuple[int, str]:
    """Tokens per die per forward (whole prompts): the largest meeting the TTFT target."""
    from cmtwin.twin.step import prefill_forward

    prompt = spec.workload.prompt_len
    pool = plan.pools_of("prefill")[0]
    hi = max(1, pool.tokens_per_die // prompt) * PREFILL_SEARCH_HEADROOM
    best = largest_true(lambda n: prefill_forward(spec, plan, hw, fabric, tokens_per_die=n * prompt).ttft_ms <= ttft_ms, 1, hi)
    if best is None:
        t1 = prefill_forward(spec, plan, hw, fabric, tokens_per_die=prompt).ttft_ms
        raise PlanError(f"slo.ttft_ms={ttft_ms:g} cannot be met: one {prompt}-token prompt per die takes {t1:.1f} ms.",
                        key="slo.ttft_ms", fix=f"relax slo.ttft_ms above {t1:.1f} or shorten workload.prompt_len")
    return best * prompt, f"slo.ttft_ms={ttft_ms:g}: {best * prompt * spec.hardware.dies} tokens per device per forward"
