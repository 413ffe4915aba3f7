"""Block builders shared by the decode step and the prefill forward (rule 9 of the twin: a mechanism is
written once).

A block returns the phases of ONE microbatch as (schedule stream, us) pairs, in order, and records its
operators in the step's ledger; cmtwin.twin.schedule turns the phases of all layers and microbatches into the
step's time. Where a block's work runs follows from the StepContext, not from the phase:
- attention operators on the attention side, MLP/MoE operators on the FFN side: the same cores, or, where the
  profile splits the cores between the two microbatch streams (the 910C's decode), disjoint core sets (their
  share of the cube and vector cores and of the memory bandwidth);
- collectives on the communication stream, except under split cores, where the attention's collectives stay
  on the attention cores;
- where the profile says communication runs on the vector cores (the 910C's prefill), the vector operators
  (norms, activations, top-k) wait for the other microbatch's communication (VECTOR phases).

Layouts: attention TP in its Megatron form (`tp_mode=allreduce`: every rank of a TP group runs the group's
tokens on heads/tp, then an all-reduce; the dense MLP split likewise) or the staged SP-TP-SP form (prefill);
MoE over EP ranks with dispatch/combine, MoE-TP slicing every expert's intermediate (pure MoE-TP, ep = 1,
ends with an all-reduce instead of a combine).

The counts a block is given (tokens, requests, context) may be numpy arrays, one element per batch of a vector
step (cmtwin.twin.step.decode_steps): every time is then an array, element by element the time of that batch. The
ledger (the per-operator breakdown) is filled only when the step is asked for it, for one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cmtwin.model.arch import MLA
from cmtwin.model.operators import (
    Op,
    attention_ops,
    dense_mlp_ops,
    kv_bytes_per_token,
    lm_head_ops,
    mtp_extra_ops,
    router_ops,
)
from cmtwin.twin import comm
from cmtwin.twin import schedule as sched
from cmtwin.twin.breakdown import Ledger
from cmtwin.twin.cost import VECTOR_CLASSES, OpTime, op_time
from cmtwin.twin.load import distinct_nodes_per_token, expert_ranks_ops, moe_load, routed_experts_read
from cmtwin.vec import any_of, every, is_array, item, numpy, vmax, vround, where

Side = Literal["attention", "ffn"]
Phases = list[tuple[str, float]]

# Operators of the staged SP-TP-SP MLA: the down projections on each die's own tokens (sequence parallel), the
# up projections and the attention core on the TP group's tokens for heads/tp (tensor parallel).
_SP_OPS = {"attn_norm", "q_a_proj", "kv_a_proj"}
_TP_OPS = {"q_b_proj", "kv_b_proj", "mha_attention", "gqa_attention", "qkv_proj"}
# Attention-core operators of the absorbed form (per decode token, over its request's KV).
_ABSORBED_CORE = {"mla_attention", "gqa_attention", "q_absorb", "v_absorb"}
# What a prefill chunk adds to an aggregated decode step's attention (MHA form over its prompt).
_CHUNK_OPS = {"kv_b_proj", "mha_attention", "gqa_attention"}


@dataclass(frozen=True)
class Shares:
    """Each side's fraction of the cube and vector cores (1.0 when the sides share all cores)."""

    attn_cube: float = 1.0
    attn_vec: float = 1.0
    ffn_cube: float = 1.0
    ffn_vec: float = 1.0


@dataclass
class StepContext:
    """Everything a block needs: the spec's model and precision, the hardware, the fabric, the dies of the
    instance, the layout, how the work is spread over the streams, and the ledger it records into (None: the
    step's figures only)."""

    spec: object
    hw: object
    fabric: object
    phase: str  # decode | prefill
    ledger: Ledger | None
    pool: object  # the plan's pool (layout, placement)
    die_ids: tuple[str, ...]  # the instance's dies, in rank order
    microbatches: int  # or an array: each batch's own count in a vector step
    overlap: bool  # microbatches run on two streams (else everything in sequence); of a vector: some batch's do
    split: bool  # the two sides run on disjoint core sets (then each keeps its collectives); of a vector: some
    vector_contend: bool  # vector operators wait for the other microbatch's communication
    shares: Shares
    labels: dict[str, str]  # ledger stream name per role: attention, ffn, comm_attention, comm_ffn

    @property
    def model(self):
        return self.spec.model

    @property
    def prec(self):
        return self.spec.prec

    @property
    def layout(self):
        return self.pool.layout

    @property
    def tp(self) -> int:
        return self.pool.layout.tp

    @property
    def megatron(self) -> bool:
        """Attention TP in the all-reduce form: a TP group's ranks all hold the group's tokens."""
        return self.tp > 1 and self.pool.layout.tp_mode == "allreduce"

    @property
    def act_bytes(self) -> int:
        """Bytes per value of the residual stream moved between ranks."""
        return self.spec.prec.hidden_state_bytes

    def label(self, role: str, tag: str | None) -> str:
        return tag or self.labels[role]

    def add(self, stream: str, operator: str, us, bound: str, calls: int = 1) -> None:
        """Record one row in the ledger, when the step keeps one (then for one batch: `us` is one number)."""
        if self.ledger is not None:
            self.ledger.add(stream, operator, item(us), bound, calls)


def step_context(spec, plan, hw, fabric, *, phase: str, microbatches, die_ids, ledger: bool = True) -> StepContext:
    """The context of one phase's step. Two microbatches overlap where the profile says how
    (`microbatching`): in decode with `split_cores` the attention and MoE sides get the profile's core shares;
    otherwise computation is one stream and communication the other (on the 910C's prefill the communication
    runs on the vector cores, `prefill_comm_on_vector_cores`). microbatches: a count, or (a vector decode step) an
    array of each batch's count: the shares are then per batch, and each batch's time is taken from its own
    schedule (`scheduled`). ledger: keep the per-operator breakdown."""
    mb = hw.microbatching
    two = microbatches >= 2
    overlap = mb is not None and any_of(two)
    split = overlap and phase == "decode" and mb.mode == "split_cores" and bool(mb.attention and mb.moe)
    shares = Shares()
    if split:
        c, v = hw.die.cube_cores.value, hw.die.vector_cores.value
        shares = Shares(*(where(two, share, 1.0) for share in (
            mb.attention.cube_cores / c, mb.attention.vector_cores / v, mb.moe.cube_cores / c, mb.moe.vector_cores / v)))
    if overlap and phase == "prefill" and mb.prefill_comm_cores:  # the comm kernel holds some SMs throughout
        keep = 1 - mb.prefill_comm_cores.value / hw.die.cube_cores.value
        shares = Shares(keep, keep, keep, keep)
    contend = overlap and phase == "prefill" and mb.prefill_comm_on_vector_cores
    if not overlap:
        labels = dict.fromkeys(("attention", "ffn", "comm_attention", "comm_ffn"), "serial")
    elif phase == "decode":
        comm_a, comm_f = ("attention", "moe") if split else ("comm", "comm")
        labels = {"attention": "attention", "ffn": "moe", "comm_attention": comm_a, "comm_ffn": comm_f}
    else:
        labels = {"attention": "compute", "ffn": "compute", "comm_attention": "comm", "comm_ffn": "comm"}
    return StepContext(spec, hw, fabric, phase, Ledger(phase) if ledger else None, plan.pools_of(phase)[0],
                       tuple(die_ids), microbatches, overlap, split, contend, shares, labels)


# --- operators and collectives as phases ------------------------------------------------------------------

def _core_shares(ctx: StepContext, side: Side) -> tuple[float, float]:
    """(cube, vector) core share of one side."""
    sh = ctx.shares
    return (sh.attn_cube, sh.attn_vec) if side == "attention" else (sh.ffn_cube, sh.ffn_vec)


def op_times(ctx: StepContext, ops: list[Op], side: Side) -> list[OpTime]:
    """The operators' times on one side's cores."""
    cube, vec = _core_shares(ctx, side)
    return [op_time(op, ctx.hw, cube_share=cube, vector_share=vec) for op in ops]


def timed(ctx: StepContext, times: list[OpTime], side: Side, calls: int, tag: str | None = None) -> Phases:
    """Timed operators of one side, in order, as phases, each recorded `calls` times."""
    stream = sched.COMM if ctx.split and side == "ffn" else sched.COMPUTE
    name = ctx.label(side, tag)
    out = []
    for t in times:
        if ctx.ledger is not None:
            ctx.add(name, t.name, t.us * calls, t.bound, calls)
        out.append((sched.VECTOR if ctx.vector_contend and t.cls in VECTOR_CLASSES else stream, t.us))
    return out


def compute(ctx: StepContext, ops: list[Op], side: Side, calls: int, tag: str | None = None) -> Phases:
    """Operators on one side's cores, in order, each recorded `calls` times."""
    return timed(ctx, op_times(ctx, ops, side), side, calls, tag)


def collective(ctx: StepContext, c, side: Side, calls: int, tag: str | None = None) -> Phases:
    """A collective after one side's work: on the communication stream, or in line on the compute stream (that
    side's cores when split; in prefill, the collectives the profile runs inside their stage)."""
    inline = ctx.overlap and ctx.phase == "prefill" and c.name in ctx.hw.microbatching.prefill_inline_comm
    ctx.add("compute" if inline else ctx.label(f"comm_{side}", tag), c.name, c.us * calls, "comm", calls)
    return [(sched.COMPUTE if inline or (ctx.split and side == "attention") else sched.COMM, c.us)]


# --- blocks --------------------------------------------------------------------------------------------------

def attention(ctx: StepContext, *, tokens: float, requests: float, kv_len: int, calls: int, form: str,
              chunk: float = 0.0, tag: str | None = None) -> Phases:
    """One attention block of one microbatch: `tokens` query tokens of `requests` requests per die over
    contexts of kv_len, in the absorbed MLA form (decode) or the MHA form (prefill), plus (aggregated serving)
    `chunk` prefill tokens per die. Megatron TP runs the group's tokens on heads/tp, then an all-reduce; the
    staged SP-TP-SP form gathers the latents, runs the heads, and returns their outputs by an all-to-all."""
    if ctx.tp > 1 and not ctx.megatron:
        return _staged_attention(ctx, tokens=tokens, requests=requests, kv_len=kv_len, calls=calls, tag=tag)
    g = ctx.tp  # Megatron: every rank of the group holds the group's tokens
    ops = attention_ops(ctx.model, ctx.prec, tokens=vmax(1, vround(tokens * g)), requests=requests * g,
                        kv_len=kv_len, form=form, head_share=1 / g)
    if every(chunk > 0):
        ops = _with_prefill_chunk(ctx, ops, tokens=tokens * g, requests=requests * g, kv_len=kv_len,
                                  chunk=chunk * g)
    phases = compute(ctx, ops, "attention", calls, tag)
    if g > 1:
        c = comm.all_reduce(ctx.hw, ctx.fabric, ctx.die_ids[:g], nbytes=(tokens + chunk) * g * ctx.model.hidden
                            * ctx.act_bytes, name="tp_all_reduce")
        phases += collective(ctx, c, "attention", calls, tag)
    return phases


def _with_prefill_chunk(ctx: StepContext, ops: list[Op], *, tokens: float, requests: float, kv_len: int,
                        chunk: float) -> list[Op]:
    """An aggregated step's attention: the projections over decode and chunk tokens together, the absorbed
    core over the decode tokens' KV, and the chunk's MHA-form attention over its prompt."""
    model, prec, prompt = ctx.model, ctx.prec, ctx.spec.workload.prompt_len
    c = vmax(1, vround(chunk))
    both = attention_ops(model, prec, tokens=vmax(1, vround(tokens)) + c, requests=requests, kv_len=kv_len,
                         form="absorbed", head_share=1 / ctx.tp)
    prefill = attention_ops(model, prec, tokens=c, requests=vmax(1.0, c / prompt), kv_len=prompt, form="mha",
                            head_share=1 / ctx.tp)
    return ([o for o in both if o.name not in _ABSORBED_CORE] + [o for o in ops if o.name in _ABSORBED_CORE]
            + [o for o in prefill if o.name in _CHUNK_OPS])


def _staged_attention(ctx: StepContext, *, tokens: float, requests: float, kv_len: int, calls: int,
                      tag: str | None) -> Phases:
    """SP-TP-SP: down projections on the die's own tokens, all-gather of the latents over the TP group, up
    projections and attention for the group's tokens on heads/tp, all-to-all of the head outputs, o_proj."""
    model, prec, tp = ctx.model, ctx.prec, ctx.tp
    t = vmax(1, vround(tokens))
    own = attention_ops(model, prec, tokens=t, requests=requests, kv_len=kv_len, form="mha")
    group = attention_ops(model, prec, tokens=t * tp, requests=requests * tp, kv_len=kv_len, form="mha",
                          head_share=1 / tp)
    att = model.attention
    latent = (att.q_lora_rank + att.kv_values_per_token) if isinstance(att, MLA) else model.hidden
    head_values = att.heads * (att.v_head_dim if isinstance(att, MLA) else att.head_dim)
    tp_ids = ctx.die_ids[:tp]
    ag = comm.all_gather(ctx.hw, ctx.fabric, tp_ids, bytes_per_rank=t * latent * ctx.act_bytes, name="sp_all_gather")
    a2a = comm.all_to_all(ctx.hw, ctx.fabric, tp_ids, bytes_per_rank=t * head_values * ctx.act_bytes,
                          name="tp_all_to_all")
    down = compute(ctx, [o for o in own if o.name in _SP_OPS], "attention", calls, tag)
    heads = compute(ctx, [o for o in group if o.name in _TP_OPS], "attention", calls, tag)
    out = compute(ctx, [o for o in own if o.name == "o_proj"], "attention", calls, tag)
    return down + collective(ctx, ag, "attention", calls, tag) + heads + collective(ctx, a2a, "attention", calls, tag) + out


def dense_mlp(ctx: StepContext, *, tokens: float, ffn_tokens: float, calls: int, tag: str | None = None) -> Phases:
    """A dense SwiGLU MLP: split over the TP group with an all-reduce under Megatron TP, else on the die's
    own tokens. ffn_tokens: the tokens that reach the MLP (a routing policy may send fewer)."""
    if not ctx.megatron:
        return compute(ctx, dense_mlp_ops(ctx.model, ctx.prec, tokens=vmax(1, vround(ffn_tokens))), "ffn",
                       calls, tag)
    g = ctx.tp
    ops = dense_mlp_ops(ctx.model, ctx.prec, tokens=vmax(1, vround(ffn_tokens * g)), share=1 / g)
    c = comm.all_reduce(ctx.hw, ctx.fabric, ctx.die_ids[:g], nbytes=tokens * g * ctx.model.hidden * ctx.act_bytes,
                        name="tp_all_reduce")
    return compute(ctx, ops, "ffn", calls, tag) + collective(ctx, c, "ffn", calls, tag)


def moe(ctx: StepContext, *, tokens: float, ffn_tokens: float, calls: int, tag: str | None = None) -> Phases:
    """A MoE layer of one microbatch: the router, the experts of the critical rank (the busier of a routed rank
    and a dedicated shared-expert rank), and the communication the layout needs (rule 7: it follows where the
    tokens already are). Tokens spread over the ranks (DP attention): dispatch to the experts' ranks, combine
    back. Tokens replicated over the whole MoE group (Megatron TP attention spanning it): every rank runs its
    local experts on the tokens routed to them, then an all-reduce sums the partial outputs. Pure MoE-TP
    (ep = 1) likewise ends with an all-reduce. The load is where the placement puts the microbatch's routed
    copies (cmtwin.twin.load)."""
    lay, spec = ctx.layout, ctx.spec
    load = moe_load(spec, ctx.pool.placement, tokens_per_rank=ffn_tokens, noise=spec.placement.balance == "default")
    if ctx.ledger is not None and not ctx.ledger.experts[1]:  # the main model's layers come first (the MTP
        read, slots = routed_experts_read(load)  # module's run fewer tokens)
        ctx.ledger.experts = (item(read), slots)
    gate = compute(ctx, router_ops(ctx.model, ctx.prec, tokens=vmax(1, vround(tokens))), "ffn", calls, tag)
    experts = _critical_experts(ctx, load, calls, tag)
    stage = ctx.die_ids[:lay.stage_ranks]
    replicated = ctx.megatron and ctx.tp >= lay.stage_ranks  # every rank of the MoE group holds every token
    if replicated or (lay.moe_tp > 1 and lay.ep == 1):
        group = stage if replicated else ctx.die_ids[:lay.moe_tp]
        held = ffn_tokens * (ctx.tp if replicated else 1)  # tokens whose partial outputs each rank holds
        c = comm.all_reduce(ctx.hw, ctx.fabric, group, nbytes=held * ctx.model.hidden * ctx.act_bytes,
                            name="moe_all_reduce" if replicated else "moe_tp_all_reduce")
        return gate + experts + collective(ctx, c, "ffn", calls, tag)
    if lay.ep == 1:
        return gate + experts
    moved = {kind: _dispatch_combine(ctx, stage, kind, load, ffn_tokens) for kind in ("dispatch", "combine")}
    return (gate + collective(ctx, moved["dispatch"], "ffn", calls, tag) + experts
            + collective(ctx, moved["combine"], "ffn", calls, tag))


def _critical_experts(ctx: StepContext, load, calls: int, tag: str | None) -> Phases:
    """The experts of the critical rank: a routed rank's, or, with dedicated shared-expert ranks, those of whichever
    rank kind (routed, shared) is slower, batch by batch."""
    kinds = [op_times(ctx, ops, "ffn") for ops in expert_ranks_ops(ctx.spec, load, ctx.pool.placement,
                                                                    ctx.layout.moe_tp)]
    if len(kinds) == 1:
        return timed(ctx, kinds[0], "ffn", calls, tag)
    routed, shared = kinds
    slower = sum(t.us for t in routed) >= sum(t.us for t in shared)
    if ctx.ledger is not None or len(routed) != len(shared):
        return timed(ctx, routed if every(slower) else shared, "ffn", calls, tag)
    return [(st, where(slower, r, s)) for (st, r), (_, s) in zip(timed(ctx, routed, "ffn", calls, tag),
                                                                 timed(ctx, shared, "ffn", calls, tag))]


def _dispatch_combine(ctx: StepContext, stage, kind: str, load, ffn_tokens: float):
    """Prefill on a profile with a node-forwarding kernel (DeepEP's normal kernels): one copy per remote node,
    forwarded inside the node; otherwise (decode's low-latency kernels, the 910C's) one copy per destination rank."""
    msg = ctx.prec.message_bytes(kind, ctx.model.hidden)
    lay = ctx.layout
    if ctx.phase == "prefill" and comm.has_node_forwarding(ctx.hw, kind):
        nodes = comm.group_shape(ctx.fabric, stage).nodes
        remote = distinct_nodes_per_token(ctx.model.moe, nodes) * (1 - 1 / nodes)
        return comm.dispatch_combine_forwarded(ctx.hw, ctx.fabric, stage, kind=kind, tokens=ffn_tokens * lay.moe_tp,
                                               remote_nodes=remote, recv_copies=load.recv_busiest, msg_bytes=msg)
    return comm.dispatch_combine(ctx.hw, ctx.fabric, stage, kind=kind, send_copies=load.send_copies * lay.moe_tp,
                                 recv_copies=load.recv_busiest, msg_bytes=msg)


def layer(ctx: StepContext, *, moe_layer: bool, tokens: float, requests: float, kv_len: int, calls: int, form: str,
          chunk: float = 0.0, ffn_scale: float = 1.0, tag: str | None = None) -> Phases:
    """Attention then the MLP or MoE of one layer of one microbatch (`tokens` per die of `requests` requests,
    plus `chunk` prefill tokens in an aggregated step), recorded `calls` times per microbatch. ffn_scale: the
    share of the tokens that reach the MLP/MoE (a routing policy may send fewer)."""
    n = calls * ctx.microbatches
    ffn = moe if moe_layer and ctx.model.moe else dense_mlp
    return (attention(ctx, tokens=tokens, requests=requests, kv_len=kv_len, calls=n, form=form, chunk=chunk, tag=tag)
            + ffn(ctx, tokens=tokens + chunk, ffn_tokens=(tokens + chunk) * ffn_scale, calls=n, tag=tag))


def layers(ctx: StepContext, groups: list[tuple[int, Phases]]) -> float:
    """The layer groups' time over the step's microbatches: on two streams, with the exposed wait in the
    breakdown, or in sequence."""
    m = ctx.microbatches
    if not ctx.overlap:
        return sum(n * m * sum(us for _, us in ph) for n, ph in groups)
    step = scheduled(ctx, lambda k: sched.layers_time(groups, k), lambda: sum(n * m * sum(us for _, us in ph)
                                                                             for n, ph in groups))
    if ctx.ledger is not None:
        busy = sum(n * m * sum(us for st, us in ph if st != sched.COMM) for n, ph in groups)
        ctx.add("overlap", "exposed_moe" if ctx.split else "exposed_comm", step - busy, "comm", 1)
    return step


def scheduled(ctx: StepContext, schedule, in_sequence):
    """A step's time where its microbatches overlap: schedule(m) on the two streams; of a vector step whose batches
    have different counts, each batch's from its own count's schedule, in_sequence() for those of one microbatch."""
    m = ctx.microbatches
    if not is_array(m):
        return schedule(m)
    counts = sorted(set(m.tolist()))
    if counts[0] >= 2 and len(counts) == 1:
        return schedule(counts[0])
    out = in_sequence()
    for k in counts:
        if k >= 2:
            out = numpy().where(m == k, schedule(k), out)
    return out


def head(ctx: StepContext, *, tokens: int, vocab_share: float, stream: str = "head") -> float:
    """The final norm and LM head over `tokens` positions (vocab_share: this rank's slice of the vocabulary)."""
    return sum(us for _, us in _record(ctx, lm_head_ops(ctx.model, ctx.prec, tokens=tokens, vocab_share=vocab_share),
                                       stream))


def mtp_pass(ctx: StepContext, *, tokens: float, requests: float, kv_len: int, form: str, input_tokens: int,
             head_tokens: int, vocab_share: float) -> float:
    """One pass of the MTP module: its input path (norms, eh_proj) over `input_tokens`, its transformer layer
    (a MoE layer when the model is MoE) through the same schedule as the main layers, and its head over
    `head_tokens` positions (0: no logits needed in this pass)."""
    t = sum(us for _, us in _record(ctx, mtp_extra_ops(ctx.model, ctx.prec, tokens=input_tokens), "mtp"))
    ph = layer(ctx, moe_layer=ctx.model.is_moe, tokens=tokens, requests=requests, kv_len=kv_len, calls=1, form=form,
               tag="mtp")
    m = ctx.microbatches
    t += scheduled(ctx, lambda k: sched.layers_time([(1, ph)], k), lambda: m * sum(us for _, us in ph)) \
        if ctx.overlap else m * sum(us for _, us in ph)
    if every(head_tokens > 0):
        t += head(ctx, tokens=head_tokens, vocab_share=vocab_share, stream="mtp")
    return t


def kv_transfer(spec, hw, fabric, src: str, dst: str, prompt_len: int):
    """One prompt's KV cache (every layer, plus the MTP module's when drafting) from prefill die `src` to decode
    die `dst` over the scale-out plane (RDMA on CM384, IB on GPUs)."""
    model = spec.model
    mtp = model.mtp_layers if spec.mtp.draft_tokens else 0
    nbytes = prompt_len * kv_bytes_per_token(model, spec.prec, layers=model.layers + mtp)
    return comm.p2p(hw, fabric, src, dst, nbytes=nbytes, plane=comm.planes(fabric).scale_out, name="kv_transfer")


def pipeline_send(ctx: StepContext, *, nbytes: float):
    """The hidden states crossing one pipeline-stage boundary (the inter-node plane)."""
    return comm.p2p(ctx.hw, ctx.fabric, ctx.die_ids[0], ctx.die_ids[ctx.layout.stage_ranks], nbytes=nbytes,
                    plane=comm.planes(ctx.fabric).inter, name="pp_send_recv")


def _record(ctx: StepContext, ops: list[Op], stream: str) -> Phases:
    """Operators on all cores, outside the two-stream schedule (head, MTP input path), recorded once."""
    out = []
    for op in ops:
        t = op_time(op, ctx.hw)
        if ctx.ledger is not None:
            ctx.add(stream, op.name, t.us, t.bound, 1)
        out.append((sched.COMPUTE, t.us))
    return out


def pipeline(ctx: StepContext, *, nbytes: float, forward_us: float = 0.0) -> tuple[float, float]:
    """Pipeline stages (pp > 1): (the sends of `nbytes` hidden states across the pp - 1 stage boundaries, the
    fill-and-drain bubble of a forward of forward_us run as the step's microbatches: (pp - 1) / m of it).
    A prefill forward fills and drains the pipeline; decode keeps it full with the continuous batch
    (forward_us=0: no bubble)."""
    pp = ctx.layout.pp
    if pp <= 1:
        return 0.0, 0.0
    c = pipeline_send(ctx, nbytes=nbytes)
    ctx.add("pipeline", c.name, (pp - 1) * c.us, "comm", pp - 1)
    bubble = forward_us * (pp - 1) / ctx.microbatches
    if forward_us:  # prefill's forward (one number)
        ctx.add("pipeline", "pp_bubble", bubble, "compute", 1)
    return (pp - 1) * c.us, bubble


def policy_operators(ctx: StepContext, extra_ops) -> float:
    """Operators a policy adds to the step [(stream, op, calls)] (draft heads, routers, decoders), on all cores."""
    total = 0.0
    for stream, op, calls in extra_ops:
        t = op_time(op, ctx.hw)
        if ctx.ledger is not None:
            ctx.add(stream, op.name, calls * t.us, t.bound, calls)
        total += calls * t.us
    return total


def layers_run(model, fraction: float) -> tuple[int, int]:
    """(dense, MoE) layers run when a layer-skipping policy runs `fraction` of them (the lowest, dense first,
    are skipped)."""
    dense, moe_layers = model.dense.layers, model.moe_layers
    if fraction != 1.0:
        skipped = (dense + moe_layers) - max(1, round((dense + moe_layers) * fraction))
        moe_layers -= max(0, skipped - dense)
        dense = max(0, dense - skipped)
    return dense, moe_layers
