"""The decode step of one DP-attention / EP-expert rank (rule 5 of the twin).

Per step every die runs `batch x (1 + drafts)` tokens through the main model (the last accepted token and
the MTP drafts, verified together), then the MTP module drafts the next tokens. A MoE layer is the
attention path (MLA absorbed: the KV read once per request, queries per verified token) and the MoE path
(gate, dispatch, experts on the busiest rank, combine). With two microbatches a layer of one microbatch is a
chain of phases on two streams, scheduled by cmtwin.twin.overlap (the same schedule as prefill's):
- split_cores (Ascend): the attention path on one core set, the whole MoE path (dispatch and combine
  included) on the other: per layer about 2 x max(path A, path B), plus the pipeline's fill and drain and
  the bubbles where the dense layers (MLP-bound) hand over to the MoE layers (attention-bound);
- overlap_comm (GPU): computation on all cores, the collectives on the other stream: attention, dispatch,
  experts, combine alternate, so a collective hides only behind what the other microbatch can compute then.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmtwin.model.operators import (
    attention_ops,
    dense_mlp_ops,
    expert_ops,
    lm_head_ops,
    mtp_extra_ops,
    router_ops,
)
from cmtwin.twin import comm
from cmtwin.twin import overlap as sched
from cmtwin.twin.breakdown import Ledger
from cmtwin.twin.cost import op_time
from cmtwin.twin.routing import busiest_rank_tokens, distinct_ranks_per_token


@dataclass(frozen=True)
class Shares:
    attn_cube: float
    attn_vec: float
    moe_cube: float
    moe_vec: float
    split: bool  # the two paths run concurrently on disjoint cores


def stream_shares(hw, microbatches: int) -> Shares:
    mb = hw.microbatching
    if microbatches < 2 or mb is None or mb.mode != "split_cores" or not (mb.attention and mb.moe):
        return Shares(1.0, 1.0, 1.0, 1.0, False)
    c, v = hw.die.cube_cores.value, hw.die.vector_cores.value
    return Shares(mb.attention.cube_cores / c, mb.attention.vector_cores / v, mb.moe.cube_cores / c,
                  mb.moe.vector_cores / v, True)


@dataclass(frozen=True)
class MoELoad:
    """Token copies per microbatch on the critical ranks of an EP group."""

    send_copies: float  # copies one rank sends (tokens x distinct destination ranks)
    routed_tokens_busiest: float  # copies landing on the busiest routed rank
    routed_slots: int
    shared_tokens: float  # tokens through the shared expert on its busiest holder
    recv_busiest: float  # copies the busiest rank receives (dispatch) / sends back (combine)


def moe_load(spec, placement, *, tokens_per_rank: float, noise: bool) -> MoELoad:
    """Where the routed and shared load of one microbatch lands, for an EP group of `placement.ep` ranks."""
    moe = spec.model.moe
    ep = placement.ep
    routed_ranks = placement.routed_ranks
    total = tokens_per_rank * ep  # tokens in the EP group (every rank is also a DP/SP rank)
    copies = total * moe.experts_per_token
    if spec.placement.balance == "perfect":  # the ideal EPLB: every routed rank gets the same share
        shares = [1.0 / routed_ranks] * routed_ranks
    else:
        loads = placement.rank_loads()[:routed_ranks]
        total_load = sum(loads) or 1.0
        shares = [x / total_load for x in loads]
    busiest = busiest_rank_tokens(shares, copies, noise=noise)
    distinct = distinct_ranks_per_token(moe.experts_per_token, moe.routed_experts + spec_redundant(placement),
                                        routed_ranks) if routed_ranks > 1 else 1.0
    if placement.dedicated_shared_ranks:
        shared_tokens = busiest_rank_tokens([1 / placement.dedicated_shared_ranks] * placement.dedicated_shared_ranks,
                                            total * moe.shared_experts, noise=noise)
        send = tokens_per_rank * (distinct + moe.shared_experts)
        recv = max(busiest, shared_tokens)
    else:
        shared_tokens = tokens_per_rank * moe.shared_experts  # colocated: own tokens, no dispatch
        send = tokens_per_rank * distinct
        recv = busiest
    return MoELoad(send, busiest, placement.routed_slots_per_rank, shared_tokens, recv)


def spec_redundant(placement) -> int:
    return sum(placement.replicas) - len(placement.replicas)


def moe_compute_ops(spec, load: MoELoad, placement, *, share: float = 1.0):
    """Expert operators of the critical rank: the busier of a routed rank and a dedicated shared rank
    (share: the rank's MoE-TP slice of each expert)."""
    p = spec.prec
    per_slot = load.routed_tokens_busiest / max(1, load.routed_slots)
    routed = expert_ops(spec.model, p, tokens_per_expert=[per_slot] * max(1, load.routed_slots), share=share)
    if placement.dedicated_shared_ranks:
        shared = expert_ops(spec.model, p, tokens_per_expert=[load.shared_tokens], name="shared_expert", share=share)
        return routed, shared  # two rank kinds; the caller takes the slower
    if spec.model.moe.shared_experts:
        routed = routed + expert_ops(spec.model, p, tokens_per_expert=[load.shared_tokens], name="shared_expert",
                                     share=share)
    return routed, None


def _ops_time(ops, hw, cube, vec, ledger: Ledger | None, stream: str, calls: int) -> float:
    total = 0.0
    for op in ops:
        t = op_time(op, hw, cube_share=cube, vector_share=vec)
        total += t.us
        if ledger is not None:
            ledger.add(stream, op.name, t.us * calls, t.bound, calls)
    return total


@dataclass(frozen=True)
class DecodeResult:
    step_us: float
    chunk_tokens: int  # agg: prefill tokens per die mixed into each step (0 when disaggregated)
    tpot_ms: float
    tokens_per_step: float
    tokens_per_s_per_device: float
    batch_per_device: int
    kv_len: int
    ledger: Ledger
    streams: dict[str, float]  # per-step busy time per stream
    draft_tokens: int = 0  # MTP drafts per step actually run (the spec's, or a speculation policy's)
    verify_tokens: float = 1.0  # tokens per request the main model verifies per step


def decode_step(spec, plan, hw, fabric, *, batch_per_die: int | None = None, kv_len: int | None = None,
                microbatches: int | None = None, chunk_tokens: int | None = None, effect=None) -> DecodeResult:
    """One decode step of the plan's decode ranks. batch_per_die, kv_len (mean context of the batch) and
    microbatches default to the spec's; the simulator and the SLO search pass their own.

    Layouts: with attention TP (tp > 1) a TP group of tp dies serves b x tp requests, each die on heads/tp
    (MLA reads the whole latent on every TP rank) followed by an all-reduce; the MoE then takes each die's
    1/tp share of the group's tokens. MoE-TP (moe_tp > 1) splits every expert's intermediate moe_tp ways
    (dispatch reaches every shard); pure MoE-TP (ep = 1) ends with an all-reduce instead of a combine.
    Pipeline stages (pp > 1) leave the per-layer cost unchanged and add a send/recv per stage boundary.
    Aggregated serving (serving.mode=agg) mixes `chunk_tokens` prefill tokens per die into every step: they
    share the projections and the MoE with the decode tokens and add MHA-form attention over their prompt.

    Policies (speculation, layer_skip, model_routing, token_transform) act through one StepEffect
    (cmtwin/policy/effects.py; `effect` overrides the spec's): drafts and verify width, tokens per step, layers
    run (lowest skipped), FFN token share, context length, extra operator rows. The identity changes nothing.
    """
    from cmtwin.policy.effects import combined_effect

    eff = effect if effect is not None else combined_effect(spec, plan, hw, fabric)
    pool = plan.pools_of("decode")[0]
    lay = pool.layout
    tp, moe_tp = lay.tp, lay.moe_tp
    b = batch_per_die if batch_per_die is not None else pool.batch_per_die
    k = spec.mtp.draft_tokens if eff.draft_tokens is None else eff.draft_tokens
    m = max(1, min(microbatches or spec.decode.microbatches, b))
    verify = 1 + k if eff.verify_tokens is None else eff.verify_tokens
    if chunk_tokens is None and spec.serving.mode == "agg":
        from cmtwin.planner.layout import agg_chunk_per_die

        chunk_tokens = agg_chunk_per_die(spec, b)
    chunk_mb = (chunk_tokens or 0) / m
    tokens_mb = b * verify / m
    kv_len = kv_len if kv_len is not None else spec.workload.decode_kv_len
    if eff.kv_len_scale != 1.0:
        kv_len = max(1, round(kv_len * eff.kv_len_scale))
    model, prec = spec.model, spec.prec
    sh = stream_shares(hw, m)
    overlap = m >= 2 and hw.microbatching is not None
    noise = spec.placement.balance == "default"
    ledger = Ledger("decode")
    die_ids = plan.die_ids("decode")
    stage_ids = die_ids[:lay.stage_ranks]
    tp_ids = die_ids[:tp]
    moe_tp_ids = die_ids[:moe_tp]
    act_bytes = 2.0 * model.hidden  # bf16 hidden state per token

    a_name = "attention" if overlap else "serial"
    b_name = "moe" if overlap else "serial"

    def comm_stream(tag, default):
        return tag or (default if sh.split or not overlap else "comm")

    def attention_block(tokens: float, requests: float, chunk: float) -> list:
        """Attention operators for a TP group's decode tokens plus (agg) prefill chunk tokens."""
        t = max(1, round(tokens))
        ops = attention_ops(model, prec, tokens=t, requests=requests, kv_len=kv_len, form="absorbed",
                            head_share=1 / tp)
        if chunk <= 0:
            return ops
        c = max(1, round(chunk))
        both = attention_ops(model, prec, tokens=t + c, requests=requests, kv_len=kv_len, form="absorbed",
                             head_share=1 / tp)
        core = {"mla_attention", "gqa_attention", "q_absorb", "v_absorb"}
        prefill = attention_ops(model, prec, tokens=c, requests=max(1.0, c / spec.workload.prompt_len),
                                kv_len=spec.workload.prompt_len, form="mha", head_share=1 / tp)
        return ([o for o in both if o.name not in core] + [o for o in ops if o.name in core]
                + [o for o in prefill if o.name in ("kv_b_proj", "mha_attention", "gqa_attention")])

    A, B = sched.COMPUTE, sched.COMM  # the two streams: attention | MoE cores, or compute | collectives
    M = B if sh.split else A  # where the MoE/MLP computation runs

    def layer(tokens: float, requests: float, moe: bool, calls: int, tag: str | None = None,
              chunk: float = 0.0) -> list[tuple[str, float]]:
        """One layer of one microbatch as schedule phases; records `calls` layers (each run by every microbatch)
        under the attention/MoE streams, or all under `tag` (the MTP module)."""
        a_name_, b_name_ = (tag, tag) if tag else (a_name, b_name)
        n = calls * m
        tokens = tokens + chunk  # every rank's share of the MoE/MLP work includes its prefill chunk
        group_tokens = tokens * tp
        ffn_tokens = tokens * eff.ffn_scale if not tag else tokens  # policy route mix (main model only)
        t = max(1, round(ffn_tokens * tp))
        a_ops = attention_block((tokens - chunk) * tp, requests * tp, chunk * tp)
        phases = [(A, _ops_time(a_ops, hw, sh.attn_cube, sh.attn_vec, ledger, a_name_, n))]

        def collective(c, default: str) -> None:
            ledger.add(comm_stream(tag, default), c.name, c.us * n, "comm", n)
            phases.append((A if default == a_name and sh.split else B, c.us))

        if tp > 1:
            collective(comm.all_reduce(hw, fabric, tp_ids, nbytes=group_tokens * act_bytes, name="tp_all_reduce"),
                       a_name)
        if moe and model.moe:
            load = moe_load(spec, pool.placement, tokens_per_rank=ffn_tokens, noise=noise)
            r_ops = router_ops(model, prec, tokens=max(1, round(tokens)))
            phases.append((M, _ops_time(r_ops, hw, sh.moe_cube, sh.moe_vec, ledger, b_name_, n)))
            routed, shared = moe_compute_ops(spec, load, pool.placement, share=1 / moe_tp)
            tr = _ops_time(routed, hw, sh.moe_cube, sh.moe_vec, None, b_name, 0)
            ts = _ops_time(shared, hw, sh.moe_cube, sh.moe_vec, None, b_name, 0) if shared else 0.0
            experts = _ops_time(routed if tr >= ts else shared, hw, sh.moe_cube, sh.moe_vec, ledger, b_name_, n)
            dispatch, combine = (comm.dispatch_combine(hw, fabric, stage_ids, kind=kind,
                                                       send_copies=load.send_copies * moe_tp,
                                                       recv_copies=load.recv_busiest,
                                                       msg_bytes=prec.message_bytes(kind, model.hidden))
                                 if lay.ep > 1 else None for kind in ("dispatch", "combine"))
            if dispatch:
                collective(dispatch, b_name)
            phases.append((M, experts))
            if combine:
                collective(combine, b_name)
            if moe_tp > 1 and lay.ep == 1:
                collective(comm.all_reduce(hw, fabric, moe_tp_ids, nbytes=ffn_tokens * act_bytes,
                                           name="moe_tp_all_reduce"), b_name)
        else:
            b_ops = dense_mlp_ops(model, prec, tokens=t, share=1 / tp)
            phases.append((M, _ops_time(b_ops, hw, sh.moe_cube, sh.moe_vec, ledger, b_name_, n)))
            if tp > 1:
                collective(comm.all_reduce(hw, fabric, tp_ids, nbytes=group_tokens * act_bytes, name="tp_all_reduce"),
                           b_name)
        if not overlap:
            return [(A, sum(us for _, us in phases))]
        return phases

    dense_layers = model.dense.layers
    moe_layers = model.moe_layers
    if eff.layer_fraction != 1.0:  # layer skipping: the lowest layers (dense first) are not run
        skipped = (dense_layers + moe_layers) - max(1, round((dense_layers + moe_layers) * eff.layer_fraction))
        moe_layers -= max(0, skipped - dense_layers)
        dense_layers = max(0, dense_layers - skipped)
    requests_mb = b / m
    groups = []
    if dense_layers:
        groups.append((dense_layers, layer(tokens_mb, requests_mb, False, dense_layers, chunk=chunk_mb)))
    if moe_layers:
        groups.append((moe_layers, layer(tokens_mb, requests_mb, True, moe_layers, chunk=chunk_mb)))
    # The microbatches' layers on the two streams, fill and drain included; what the first stream (attention,
    # or computation) waits for is the other stream's work left exposed.
    step = sched.layers_time(groups, m)
    if overlap:
        busy = sum(n * m * sum(us for st, us in ph if st == A) for n, ph in groups)
        ledger.add("overlap", "exposed_moe" if sh.split else "exposed_comm", step - busy, "comm", 1)
    # Pipeline stages: the hidden states of the step's tokens cross pp - 1 stage boundaries.
    if lay.pp > 1:
        c = comm.p2p(hw, fabric, die_ids[0], die_ids[lay.stage_ranks], nbytes=b * verify * tp * act_bytes,
                     plane=comm.planes(fabric).inter, name="pp_send_recv")
        step += (lay.pp - 1) * c.us
        ledger.add("pipeline", c.name, (lay.pp - 1) * c.us, "comm", lay.pp - 1)
    # LM head for every verified position (vocab split over the TP group).
    head_tokens = b * verify * tp
    head = _ops_time(lm_head_ops(model, prec, tokens=head_tokens, vocab_share=1 / tp), hw, 1.0, 1.0, ledger, "head", 1)
    step += head
    # MTP drafting: k sequential passes of the MTP module (its own MoE layer) over the batch, each with a head.
    for _ in range(k if model.mtp_layers else 0):
        step += _ops_time(mtp_extra_ops(model, prec, tokens=b * tp), hw, 1.0, 1.0, ledger, "mtp", 1)
        step += sched.layers_time([(1, layer(b / m, requests_mb, model.is_moe, 1, tag="mtp"))], m)
        step += _ops_time(lm_head_ops(model, prec, tokens=b * tp, vocab_share=1 / tp), hw, 1.0, 1.0, ledger, "mtp", 1)
    for stream, op, calls in eff.extra_ops:  # policy operators (draft heads, routers, decoders)
        step += calls * _ops_time([op], hw, 1.0, 1.0, None, stream, 0)
        ledger.add(stream, op.name, calls * op_time(op, hw).us, op_time(op, hw).bound, calls)
    tps = spec.mtp.tokens_per_step if k else 1.0
    if eff.tokens_per_step is not None:
        tps = eff.tokens_per_step
    tps *= eff.text_per_token
    dpd = spec.hardware.dies
    streams = ledger.streams()
    return DecodeResult(
        step_us=step,
        chunk_tokens=int(chunk_tokens or 0),
        tpot_ms=step / tps / 1e3,
        tokens_per_step=tps,
        tokens_per_s_per_device=dpd * b * tps / (step / 1e6),
        batch_per_device=b * dpd,
        kv_len=kv_len,
        ledger=ledger,
        streams=streams,
        draft_tokens=k,
        verify_tokens=verify,
    )
