"""The decode step and the prefill forward: short compositions of the same block builders
(cmtwin.twin.blocks) over one StepContext, scheduled by the same two-stream schedule (cmtwin.twin.schedule).

Decode (rule 5): every die runs `batch x (1 + drafts)` tokens through the main model (the last accepted token
and the MTP drafts, verified together) in the absorbed MLA form, then the LM head, then the MTP module drafts
the next tokens. Aggregated serving mixes a prefill chunk into every step. Policies (speculation, layer_skip,
model_routing, token_transform) act through one StepEffect (`effect` overrides the spec's): drafts and verify
width, tokens per step, layers run, FFN token share, context length, extra operators.

Prefill: one forward of tokens_per_die tokens made of prompts of prompt_len, in the MHA form (staged
SP-TP-SP where the layout says), the MTP module's pass, the head on each prompt's last position, the pipeline
bubble, and the prompt's KV transfer to its decode rank.
"""

from __future__ import annotations

from cmtwin.twin.blocks import (
    head,
    kv_transfer,
    layer,
    layers,
    layers_run,
    mtp_pass,
    pipeline,
    policy_operators,
    step_context,
)
from cmtwin.twin.results import DecodeResult, DecodeSteps, PrefillResult
from cmtwin.vec import Ragged, ndim, numpy, vmax, vmin, vround


def agg_chunk_per_die(spec, batch_per_die):
    """Aggregated serving: prefill tokens a die mixes into the mean decode step, the steady-state need (every
    request brings prompt_len prefill tokens per output_len tokens it decodes), at most what the step budget leaves
    after the decode tokens (cmtwin.twin.agg). batch_per_die: a number or an array."""
    from cmtwin.config.budget import token_budget

    tps = spec.mtp.tokens_per_step if spec.mtp.draft_tokens else 1.0
    w = spec.workload
    tp = spec.decode.tp
    need = batch_per_die * tps * w.prompt_len / w.output_len
    room = (token_budget(spec).per_group - batch_per_die * tp * (1 + spec.mtp.draft_tokens)) / tp
    return vmax(0.0, vmin(need, room))


def decode_steps(spec, plan, hw, fabric, *, batch_per_die, kv_len=None, microbatches=None, chunk_tokens=None,
                 effect=None) -> DecodeSteps:
    """Decode steps of the plan's decode ranks at a vector of batches, in one pass of the same model as decode_step:
    batch_per_die (requests per die: a TP group's requests / tp, so fractional below one per die) a sequence;
    kv_len (mean context of the batch), microbatches and chunk_tokens (agg: prefill tokens per die in the step)
    numbers or sequences of the same length, defaulting to the spec's (microbatches capped by each batch's whole
    requests per group). Every figure is an array, element by element decode_step's at that batch; no breakdown is
    kept (the search needs the figures only)."""
    np = numpy()
    eff, k, verify, kv, tps = _setup(spec, plan, hw, fabric, effect, kv_len)
    b = np.asarray(batch_per_die, dtype=float).reshape(-1)
    kv = np.broadcast_to(kv, b.shape)
    chunk = np.broadcast_to(_chunk(spec, b, chunk_tokens), b.shape).astype(float)
    mbs = np.broadcast_to(np.asarray(0 if microbatches is None else microbatches), b.shape).tolist()
    m = np.array([_microbatches(spec, mi, bi) for mi, bi in zip(mbs, b.tolist())])
    step = np.empty(b.shape)
    for with_chunk in (False, True):  # a step carrying a prefill chunk runs other blocks: stepped apart
        idx = np.flatnonzero((chunk > 0) == with_chunk)
        if not idx.size:
            continue
        try:
            step[idx] = _step_us(spec, plan, hw, fabric, eff, b[idx], kv[idx], chunk[idx], m[idx], k, verify, False)[0]
        except Ragged:  # a branch of the model splits these batches: one at a time
            for i in idx:
                step[i] = _step_us(spec, plan, hw, fabric, eff, b[i].item(), kv[i].item(), chunk[i].item(),
                                   m[i].item(), k, verify, False)[0]
    return DecodeSteps(step_us=step, chunk_tokens=chunk, tpot_ms=step / tps / 1e3, tokens_per_step=tps,
                       tokens_per_s_per_device=_tokens_per_s_per_device(spec, plan, b, tps, step),
                       batch_per_device=b * spec.hardware.dies, kv_len=np.array(kv), draft_tokens=k,
                       verify_tokens=verify)


def decode_step(spec, plan, hw, fabric, *, batch_per_die: float | None = None, kv_len: int | None = None,
                microbatches: int | None = None, chunk_tokens: float | None = None, effect=None) -> DecodeResult:
    """One decode step of the plan's decode ranks, with its breakdown (the model of decode_steps, at one batch).
    batch_per_die, kv_len and microbatches default to the spec's; the simulator and the SLO search pass their own.
    chunk_tokens: agg prefill tokens per die in the step."""
    eff, k, verify, kv, tps = _setup(spec, plan, hw, fabric, effect, kv_len)
    b = batch_per_die if batch_per_die is not None else plan.pools_of("decode")[0].batch_per_die
    chunk = _chunk(spec, b, chunk_tokens)
    step, ledger = _step_us(spec, plan, hw, fabric, eff, b, kv, chunk, _microbatches(spec, microbatches, b), k,
                            verify, True)
    return DecodeResult(step_us=step, chunk_tokens=chunk, tpot_ms=step / tps / 1e3, tokens_per_step=tps,
                        tokens_per_s_per_device=_tokens_per_s_per_device(spec, plan, b, tps, step),
                        batch_per_device=b * spec.hardware.dies, kv_len=kv, ledger=ledger, streams=ledger.streams(),
                        draft_tokens=k, verify_tokens=verify)


def _setup(spec, plan, hw, fabric, effect, kv_len):
    """(the policies' StepEffect, MTP drafts, tokens verified per request, context, tokens per step)."""
    from cmtwin.twin.effects import combined_effect

    eff = effect if effect is not None else combined_effect(spec, plan, hw, fabric)
    k = spec.mtp.draft_tokens if eff.draft_tokens is None else eff.draft_tokens
    verify = 1 + k if eff.verify_tokens is None else eff.verify_tokens
    kv = kv_len if kv_len is not None else spec.workload.decode_kv_len
    if eff.kv_len_scale != 1.0:
        kv = vmax(1, vround(numpy().asarray(kv) * eff.kv_len_scale if ndim(kv) else kv * eff.kv_len_scale))
    tps = (eff.tokens_per_step if eff.tokens_per_step is not None
           else spec.mtp.tokens_per_step if k else 1.0) * eff.text_per_token
    return eff, k, verify, kv, tps


def _chunk(spec, b, chunk_tokens):
    """Prefill tokens per die mixed into the step: as given, else (agg) the steady-state chunk, else none."""
    if chunk_tokens is not None:
        return chunk_tokens
    return agg_chunk_per_die(spec, b) if spec.serving.mode == "agg" else 0.0


def _microbatches(spec, microbatches: int | None, b: float) -> int:
    """Microbatches of a step at b requests per die: at most the whole requests of an attention group."""
    return max(1, min(microbatches or spec.decode.microbatches, round(b * spec.decode.tp)))


def _tokens_per_s_per_device(spec, plan, b, tps: float, step_us):
    alive = plan.pools_of("decode")[0].alive  # failures.policy=degrade: only the serving groups make tokens
    return alive * spec.hardware.dies * b * tps / (step_us / 1e6)


def _step_us(spec, plan, hw, fabric, eff, b, kv, chunk, m, k: int, verify: float, ledger: bool):
    """(the step's time at b requests per die of context kv with chunk prefill tokens per die, in m microbatches,
    and its ledger when kept): numbers, or arrays of one element per batch."""
    model = spec.model
    ctx = step_context(spec, plan, hw, fabric, phase="decode", microbatches=m, die_ids=plan.die_ids("decode"),
                       ledger=ledger)
    tp = ctx.tp
    mb = dict(tokens=b * verify / m, requests=b / m, kv_len=kv, form="absorbed", chunk=chunk / m,
              ffn_scale=eff.ffn_scale)
    dense, moe_layers = layers_run(model, eff.layer_fraction)
    step = layers(ctx, [(n, layer(ctx, moe_layer=is_moe, calls=n, **mb))
                        for n, is_moe in ((dense, False), (moe_layers, True)) if n])
    step += pipeline(ctx, nbytes=b * verify * tp * model.hidden * ctx.act_bytes)[0]
    step += head(ctx, tokens=b * verify * tp, vocab_share=1 / tp)  # every verified position; vocab split over TP
    for _ in range(k if model.mtp_layers else 0):  # k sequential drafting passes, each with its head
        step += mtp_pass(ctx, tokens=b / m, requests=b / m, kv_len=kv, form="absorbed", input_tokens=b * tp,
                         head_tokens=b * tp, vocab_share=1 / tp)
    step += policy_operators(ctx, eff.extra_ops)
    return step, ctx.ledger


def prefill_forward(spec, plan, hw, fabric, *, tokens_per_die: int | None = None,
                    prompt_len: int | None = None, microbatches: int | None = None) -> PrefillResult:
    """One prefill forward of tokens_per_die tokens made of prompts of prompt_len (defaults: the spec's)."""
    pool = plan.pools_of("prefill")[0]
    model = spec.model
    tpd = tokens_per_die if tokens_per_die is not None else pool.tokens_per_die
    m = max(1, microbatches or spec.prefill.microbatches)
    prompt = prompt_len or spec.workload.prompt_len
    dies = plan.die_ids("prefill", pool.instance)
    ctx = step_context(spec, plan, hw, fabric, phase="prefill", microbatches=m, die_ids=dies)
    t_mb = max(1, round(tpd / m))
    mb = dict(tokens=t_mb, requests=max(1.0, t_mb / prompt), kv_len=prompt, form="mha")
    step = layers(ctx, [(n, layer(ctx, moe_layer=is_moe, calls=n, **mb))
                        for n, is_moe in ((model.dense.layers, False), (model.moe_layers, True)) if n])
    if spec.mtp.draft_tokens and model.mtp_layers:  # the MTP module's KV and first draft
        step += mtp_pass(ctx, **mb, input_tokens=t_mb * m, head_tokens=0, vocab_share=1.0)
    step += head(ctx, tokens=max(1, round(tpd / prompt)), vocab_share=1.0)  # each prompt's last position
    sends, bubble = pipeline(ctx, nbytes=tpd * model.hidden * ctx.act_bytes, forward_us=step)
    latency, step = step + sends, step + bubble
    decode_dies = plan.die_ids("decode")
    kv_us = kv_transfer(spec, hw, fabric, dies[0], decode_dies[-1], prompt).us if decode_dies else 0.0
    if decode_dies:
        ctx.add("kv_transfer", "kv_transfer", kv_us, "comm", 1)
    pools = plan.pools_of("prefill")
    alive = sum(p.alive for p in pools) / len(pools)  # failures.policy=degrade: instances with groups down
    return PrefillResult(step_us=step, tokens_per_die=tpd,
                         tokens_per_s_per_device=alive * spec.hardware.dies * tpd / (step / 1e6),
                         kv_transfer_us=kv_us, ttft_ms=(latency + kv_us) / 1e3, ledger=ctx.ledger,
                         streams=ctx.ledger.streams())
