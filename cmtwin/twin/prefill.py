"""The prefill forward of one instance's die (twin issue, item 4).

MLA runs in the staged SP-TP-SP form: each die projects its own tokens down (q_a, kv_a: sequence
parallel), the latents are all-gathered across the TP group, each die expands them for its heads and runs
MHA-form attention for all of the group's tokens (tensor parallel over heads), an all-to-all returns the
head outputs to their tokens' dies, and o_proj runs sequence parallel. The MoE uses EP over the instance.
With two microbatches, the cube cores compute one microbatch while the vector cores and DMA engines move
the other's data (all-gather, all-to-all, dispatch, combine): each layer is a chain of compute and comm
phases per microbatch, scheduled on the two streams by cmtwin.twin.overlap (a comm phase hides only behind
what the other microbatch can compute meanwhile; the exposed rest is the breakdown's `exposed_comm`); with
one microbatch, compute and comm add up. Where the profile says prefill communication runs on the vector cores
(`microbatching.prefill_comm_on_vector_cores`, the 910C), the vector operators (norms, activations, top-k) are
VECTOR phases: they wait for the other microbatch's communication rather than overlap it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmtwin.model.arch import MLA
from cmtwin.model.operators import Op, attention_ops, dense_mlp_ops, lm_head_ops, mtp_extra_ops, router_ops
from cmtwin.model.precision import BYTES
from cmtwin.twin import comm
from cmtwin.twin import overlap as overlap_mod
from cmtwin.twin.breakdown import Ledger
from cmtwin.twin.cost import VECTOR_CLASSES, op_time
from cmtwin.twin.decode import moe_compute_ops, moe_load


@dataclass(frozen=True)
class PrefillResult:
    step_us: float  # one forward of tokens_per_die tokens
    tokens_per_die: int
    tokens_per_s_per_device: float
    kv_transfer_us: float
    ttft_ms: float
    ledger: Ledger
    streams: dict[str, float]


_SP_OPS = {"attn_norm", "q_a_proj", "kv_a_proj"}
_TP_OPS = {"q_b_proj", "kv_b_proj", "mha_attention", "gqa_attention", "qkv_proj"}


def _time(ops: list[Op], hw, ledger: Ledger, stream: str, calls: int) -> float:
    return sum(us for _, us in _phases(ops, hw, ledger, stream, calls, vector=False))


def _phases(ops: list[Op], hw, ledger: Ledger, stream: str, calls: int, *, vector: bool) -> list[tuple[str, float]]:
    """The operators as schedule phases, in order: COMPUTE, or VECTOR for a vector operator when `vector`
    (it then contends with the communication for the vector cores); each recorded in the ledger."""
    out = []
    for op in ops:
        t = op_time(op, hw)
        ledger.add(stream, op.name, t.us * calls, t.bound, calls)
        out.append((overlap_mod.VECTOR if vector and op.cls in VECTOR_CLASSES else overlap_mod.COMPUTE, t.us))
    return out


def kv_transfer(spec, hw, fabric, src: str, dst: str, prompt_len: int):
    """One prompt's KV cache (every layer, plus the MTP module's when drafting) from prefill die `src` to decode
    die `dst` over the scale-out plane (RDMA on CM384, IB on GPUs)."""
    from cmtwin.model.operators import kv_bytes_per_token

    model = spec.model
    mtp = model.mtp_layers if spec.mtp.draft_tokens else 0
    nbytes = prompt_len * kv_bytes_per_token(model, spec.prec, layers=model.layers + mtp)
    return comm.p2p(hw, fabric, src, dst, nbytes=nbytes, plane=comm.planes(fabric).scale_out, name="kv_transfer")


def prefill_forward(spec, plan, hw, fabric, *, tokens_per_die: int | None = None,
                    prompt_len: int | None = None, microbatches: int | None = None) -> PrefillResult:
    """One prefill forward of tokens_per_die tokens made of prompts of prompt_len (defaults: the spec's)."""
    pool = plan.pools_of("prefill")[0]
    tpd = tokens_per_die if tokens_per_die is not None else pool.tokens_per_die
    model, prec = spec.model, spec.prec
    m = max(1, microbatches or spec.prefill.microbatches)
    overlap = m >= 2
    ledger = Ledger("prefill")
    inst_dies = plan.die_ids("prefill", pool.instance)
    lay = pool.layout
    tp = pool.tp
    tp_group = tuple(inst_dies[:tp])
    prompt = prompt_len or spec.workload.prompt_len
    t_mb = max(1, round(tpd / m))
    prompts_mb = max(1.0, t_mb / prompt)
    cname = "compute" if overlap else "serial"
    kname = "comm" if overlap else "serial"

    K = overlap_mod.COMM
    mbs = hw.microbatching
    contend = overlap and mbs is not None and mbs.prefill_comm_on_vector_cores

    def timed(ops: list[Op], stream: str, calls: int) -> list[tuple[str, float]]:
        return _phases(ops, hw, ledger, stream, calls, vector=contend)

    def attention(calls: int, tag: str | None) -> list[tuple[str, float]]:
        """The phases (stream, us) of one attention block of one microbatch, in order."""
        cs, ks = (tag, tag) if tag else (cname, kname)
        if tp > 1 and lay.tp_mode == "allreduce":
            # Megatron TP: every rank runs the group's tokens on heads/tp, then an all-reduce.
            ops = attention_ops(model, prec, tokens=t_mb * tp, requests=prompts_mb * tp, kv_len=prompt, form="mha",
                                head_share=1 / tp)
            compute = timed(ops, cs, calls)
            c = comm.all_reduce(hw, fabric, tp_group, nbytes=t_mb * tp * model.hidden * 2.0, name="tp_all_reduce")
            ledger.add(ks, c.name, c.us * calls, "comm", calls)
            return [*compute, (K, c.us)]
        ops_sp = attention_ops(model, prec, tokens=t_mb, requests=prompts_mb, kv_len=prompt, form="mha")
        ops_tp = attention_ops(model, prec, tokens=t_mb * tp, requests=prompts_mb * tp, kv_len=prompt, form="mha",
                               head_share=1 / tp)
        down = timed([o for o in ops_sp if o.name in _SP_OPS], cs, calls)
        heads = timed([o for o in ops_tp if o.name in _TP_OPS], cs, calls)
        out = timed([o for o in ops_sp if o.name == "o_proj"], cs, calls)
        if tp == 1:
            return down + heads + out
        att = model.attention
        lat = (att.q_lora_rank + att.kv_values_per_token) if isinstance(att, MLA) else model.hidden
        ag = comm.all_gather(hw, fabric, tp_group, bytes_per_rank=t_mb * lat * 2.0, name="sp_all_gather")
        heads_v = att.heads * (att.v_head_dim if isinstance(att, MLA) else att.head_dim)
        a2a = comm.all_to_all(hw, fabric, tp_group, bytes_per_rank=t_mb * heads_v * 2.0, name="tp_all_to_all")
        for c in (ag, a2a):
            ledger.add(ks, c.name, c.us * calls, "comm", calls)
        return [*down, (K, ag.us), *heads, (K, a2a.us), *out]

    def moe_block(calls: int, tag: str | None) -> list[tuple[str, float]]:
        cs, ks = (tag, tag) if tag else (cname, kname)
        gate = timed(router_ops(model, prec, tokens=t_mb), cs, calls)
        load = moe_load(spec, pool.placement, tokens_per_rank=t_mb, noise=spec.placement.balance == "default")
        routed, shared = moe_compute_ops(spec, load, pool.placement, share=1 / lay.moe_tp)
        crit = routed
        if shared is not None:
            tr = sum(op_time(o, hw).us for o in routed)
            ts = sum(op_time(o, hw).us for o in shared)
            crit = routed if tr >= ts else shared
        experts = timed(crit, cs, calls)
        die_ids = tuple(inst_dies[:lay.stage_ranks])
        moved = {}
        for kind in ("dispatch", "combine") if lay.ep > 1 else ():
            c = comm.dispatch_combine(hw, fabric, die_ids, kind=kind, send_copies=load.send_copies * lay.moe_tp,
                                      recv_copies=load.recv_busiest, msg_bytes=prec.message_bytes(kind, model.hidden))
            moved[kind] = c.us
            ledger.add(ks, kind, c.us * calls, "comm", calls)
        phases = [*gate, (K, moved.get("dispatch", 0.0)), *experts, (K, moved.get("combine", 0.0))]
        if lay.moe_tp > 1 and lay.ep == 1:
            c = comm.all_reduce(hw, fabric, tuple(inst_dies[:lay.moe_tp]), nbytes=t_mb * model.hidden * 2.0,
                                name="moe_tp_all_reduce")
            phases.append((K, c.us))
            ledger.add(ks, c.name, c.us * calls, "comm", calls)
        return phases

    def dense_block(calls: int, tag: str | None) -> list[tuple[str, float]]:
        """A dense MLP: split over the TP group with an all-reduce under allreduce TP, replicated otherwise."""
        cs, ks = (tag, tag) if tag else (cname, kname)
        if tp > 1 and lay.tp_mode == "allreduce":
            compute = timed(dense_mlp_ops(model, prec, tokens=t_mb * tp, share=1 / tp), cs, calls)
            c = comm.all_reduce(hw, fabric, tp_group, nbytes=t_mb * tp * model.hidden * 2.0, name="tp_all_reduce")
            ledger.add(ks, c.name, c.us * calls, "comm", calls)
            return [*compute, (K, c.us)]
        return timed(dense_mlp_ops(model, prec, tokens=t_mb), cs, calls)

    def serial(phases: list[tuple[str, float]]) -> float:
        return sum(us for _, us in phases)

    groups = []
    if model.dense.layers:
        n = model.dense.layers
        groups.append((n, attention(n * m, None) + dense_block(n * m, None)))
    if model.moe_layers:
        n = model.moe_layers
        groups.append((n, attention(n * m, None) + moe_block(n * m, None)))
    if overlap:
        # The two streams' schedule; what the compute stream waits for is the communication left exposed.
        step = overlap_mod.layers_time(groups, m)
        busy = sum(n * m * sum(us for st, us in ph if st != K) for n, ph in groups)
        ledger.add("overlap", "exposed_comm", step - busy, "comm", 1)
    else:
        step = sum(n * m * serial(ph) for n, ph in groups)
    if spec.mtp.draft_tokens and model.mtp_layers:
        step += m * _time(mtp_extra_ops(model, prec, tokens=t_mb), hw, ledger, "mtp", m)
        ph = attention(m, "mtp") + (moe_block(m, "mtp") if model.is_moe else dense_block(m, "mtp"))
        step += m * serial(ph)
    prompts = max(1, round(tpd / prompt))
    step += _time(lm_head_ops(model, prec, tokens=prompts), hw, ledger, "head", 1)
    latency = step
    if lay.pp > 1:
        # Stage boundaries: hidden states cross pp - 1 links; with m microbatches the pipeline idles
        # (pp - 1) / m of a forward filling and draining (the bubble) in throughput terms.
        c = comm.p2p(hw, fabric, inst_dies[0], inst_dies[lay.stage_ranks], nbytes=tpd * model.hidden * 2.0,
                     plane=comm.planes(fabric).inter, name="pp_send_recv")
        ledger.add("pipeline", c.name, (lay.pp - 1) * c.us, "comm", lay.pp - 1)
        latency = step + (lay.pp - 1) * c.us
        bubble = step * (lay.pp - 1) / m
        ledger.add("pipeline", "pp_bubble", bubble, "compute", 1)
        step += bubble
    # KV of one prompt to its decode rank over the scale-out plane (RDMA on CM384, IB on GPUs).
    kv_us = 0.0
    decode_dies = plan.die_ids("decode")
    if decode_dies:
        kv_us = kv_transfer(spec, hw, fabric, inst_dies[0], decode_dies[-1], prompt).us
        ledger.add("kv_transfer", "kv_transfer", kv_us, "comm", 1)
    streams = ledger.streams()
    dpd = spec.hardware.dies
    return PrefillResult(
        step_us=step,
        tokens_per_die=tpd,
        tokens_per_s_per_device=dpd * tpd / (step / 1e6),
        kv_transfer_us=kv_us,
        ttft_ms=(latency + kv_us) / 1e3,
        ledger=ledger,
        streams=streams,
    )
