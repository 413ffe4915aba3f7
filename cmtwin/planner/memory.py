"""Per-die memory budgets: weights by dtype, KV cache, dispatch/combine buffers, activations, reserve.

All sizes in bytes; the plan shows GiB. The KV capacity is what is left after everything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmtwin.config.schema import Spec
from cmtwin.model.arch import MLA
from cmtwin.model.operators import (
    attention_ops,
    dense_mlp_ops,
    expert_ops,
    kv_bytes_per_token,
    weight_params,
)
from cmtwin.model.precision import BYTES
from cmtwin.planner.layout import Layout

GIB = 2**30


@dataclass(frozen=True)
class MemoryBreakdown:
    """One die's memory, bytes."""

    weights_attention: float
    weights_dense_mlp: float
    weights_experts: float
    weights_embedding: float
    weights_other: float
    dispatch_buffers: float
    combine_buffers: float
    activations: float
    reserve: float
    kv_cache: float  # needed by the configured batch
    capacity: float
    kv_bytes_per_token: int

    @property
    def weights(self) -> float:
        return (self.weights_attention + self.weights_dense_mlp + self.weights_experts + self.weights_embedding
                + self.weights_other)

    @property
    def fixed(self) -> float:
        """Everything but the KV cache."""
        return self.weights + self.dispatch_buffers + self.combine_buffers + self.activations + self.reserve

    @property
    def used(self) -> float:
        return self.fixed + self.kv_cache

    @property
    def kv_token_capacity(self) -> int:
        """Tokens of KV cache that fit in what is left after the fixed parts."""
        return max(0, int((self.capacity - self.fixed) // self.kv_bytes_per_token))

    def rows(self) -> list[tuple[str, float]]:
        """(part, GiB) rows for tables."""
        parts = [
            ("weights: attention", self.weights_attention),
            ("weights: dense MLP", self.weights_dense_mlp),
            ("weights: experts", self.weights_experts),
            ("weights: embed + head", self.weights_embedding),
            ("weights: router, norms, MTP", self.weights_other),
            ("dispatch buffers", self.dispatch_buffers),
            ("combine buffers", self.combine_buffers),
            ("activations", self.activations),
            ("reserve", self.reserve),
            ("KV cache (batch)", self.kv_cache),
        ]
        return [(k, v / GIB) for k, v in parts]

    def to_dict(self) -> dict:
        d = {k: (round(v / GIB, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d.update(weights=round(self.weights / GIB, 4), used=round(self.used / GIB, 4),
                 free=round((self.capacity - self.used) / GIB, 4), kv_token_capacity=self.kv_token_capacity)
        return {f"{k}_gib" if k not in ("kv_bytes_per_token", "kv_token_capacity") else k: v for k, v in d.items()}


def die_memory(spec: Spec, *, phase: str, layout: Layout, experts_on_die: int, tokens_per_die: int,
               kv_tokens: float, buffer_tokens: int) -> MemoryBreakdown:
    """The memory of one die of a phase instance with the given parallel layout (the busiest pipeline stage).

    experts_on_die: expert FFNs held per MoE layer (routed slots + shared), each 1/moe_tp of an expert;
    tokens_per_die: tokens in one forward; kv_tokens: KV-cache tokens the die holds (TP replication included);
    buffer_tokens: dispatch/combine buffer depth.
    """
    m, p = spec.model, spec.prec
    w = weight_params(m)
    gb = BYTES[p.gemm]
    tp, pp = layout.tp, layout.pp
    mtp = m.mtp_layers if spec.mtp.draft_tokens else 0
    att = m.attention
    # Attention weights per layer on one rank.
    if tp == 1:
        per_layer = float(w.attention)
    elif isinstance(att, MLA):
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        up = att.heads * (att.q_lora_rank * qk + att.kv_lora_rank * (att.qk_nope_head_dim + att.v_head_dim))
        o = att.heads * att.v_head_dim * m.hidden
        down = w.attention - up - o
        per_layer = down + up / tp + (o / tp if layout.tp_mode == "allreduce" else o)
    else:
        q_o = 2 * m.hidden * att.heads * att.head_dim
        kv = 2 * m.hidden * att.kv_heads * att.head_dim
        per_layer = q_o / tp + kv * max(1.0 / tp, 1.0 / att.kv_heads)
    split_mlp = tp if layout.tp_mode == "allreduce" else 1
    # The busiest pipeline stage: the first holds the embedding and the dense layers, the last the LM head
    # and the MTP module; with pp = 1 one stage holds everything.
    stage = layout.stage_layers(m)
    first_dense = min(m.dense.layers, stage)
    stages = [(first_dense, stage - first_dense, True, pp == 1, 0 if pp > 1 else mtp)]
    if pp > 1:
        last = m.layers - (pp - 1) * stage if m.layers - (pp - 1) * stage > 0 else stage
        stages.append((0, last, False, True, mtp))
    best = None
    for dense_l, moe_l, has_embed, has_head, mtp_l in stages:
        if not m.is_moe:
            dense_l, moe_l = dense_l + moe_l, 0
        layers = dense_l + moe_l + mtp_l
        wa = layers * per_layer * gb
        wd = dense_l * w.dense_mlp / split_mlp * gb
        moe_layers = moe_l + (mtp_l if m.is_moe else 0)
        we = moe_layers * experts_on_die * w.expert / layout.moe_tp * p.expert_weight_bytes
        vocab_split = tp if layout.tp_mode == "allreduce" else 1
        wemb = ((w.embedding if has_embed else 0) + (w.lm_head if has_head else 0)) / vocab_split * BYTES[p.embedding]
        wo = moe_layers * w.router * 2 + (layers + 1) * w.norms * 2 + mtp_l * w.mtp_extra * gb
        total = wa + wd + we + wemb + wo
        if best is None or total > best[0]:
            best = (total, wa, wd, we, wemb, wo, layers)
    _, wa, wd, we, wemb, wo, stage_layers = best
    ep = layout.ep
    if m.is_moe and ep > 1:
        if phase == "decode":
            # low-latency kernels: a slot per peer rank and token, double-buffered (paper v2 §4.2.2)
            dispatch = 2.0 * ep * buffer_tokens * p.message_bytes("dispatch", m.hidden)
            combine = 2.0 * ep * buffer_tokens * p.message_bytes("combine", m.hidden)
        else:
            # normal kernels: sized by the tokens this die receives (top-k copies plus the shared expert)
            copies = buffer_tokens * (m.moe.experts_per_token + (1 if m.moe.shared_experts else 0))
            dispatch = copies * p.message_bytes("dispatch", m.hidden)
            combine = copies * p.message_bytes("combine", m.hidden)
    else:
        dispatch = combine = 0.0
    t = spec.memory.activation_tokens or tokens_per_die
    acts = [o.act_bytes for o in attention_ops(m, p, tokens=t, requests=1, kv_len=1,
                                               form="absorbed" if phase == "decode" else "mha",
                                               head_share=1 / tp)]
    acts += [o.act_bytes for o in dense_mlp_ops(m, p, tokens=t, share=1 / split_mlp)]
    if m.is_moe:
        # token copies this die's experts receive: the group's t x ep tokens x top-k, in the share of the routed
        # experts it holds (experts_on_die / routed), plus its own tokens through a shared expert
        moe = m.moe
        routed_here = max(0, experts_on_die - (moe.shared_experts if experts_on_die > moe.shared_experts else 0))
        recv = t * (moe.experts_per_token * max(1, ep) * max(1, routed_here) / moe.routed_experts
                    + moe.shared_experts)
        acts += [o.act_bytes for o in expert_ops(m, p, tokens_per_expert=[recv])]
    logits = t * m.vocab * 4.0 if phase == "decode" else 0.0
    activations = 2.0 * max(acts) + logits
    context = spec.workload.decode_kv_len if phase == "decode" else spec.workload.prompt_len
    kvb = kv_bytes_per_token(m, p, layers=min(stage_layers, m.layers + mtp), context=context)
    if phase == "decode":  # policies that write KV for fewer layers per token (SkipDecode), via the one StepEffect
        from cmtwin.twin.effects import combined_effect

        scale = combined_effect(spec).kv_bytes_scale
        if scale != 1.0:
            kvb = max(1, round(kvb * scale))
    return MemoryBreakdown(
        weights_attention=float(wa),
        weights_dense_mlp=float(wd),
        weights_experts=float(we),
        weights_embedding=float(wemb),
        weights_other=float(wo),
        dispatch_buffers=float(dispatch),
        combine_buffers=float(combine),
        activations=float(activations),
        reserve=spec.memory.reserve_gb_per_die * GIB,
        kv_cache=float(kv_tokens * kvb),
        capacity=spec.hardware.memory_bytes,
        kv_bytes_per_token=kvb,
    )
