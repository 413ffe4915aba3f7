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


def die_memory(spec: Spec, *, phase: str, experts_on_die: int, tp: int, ep: int, tokens_per_die: int,
               kv_tokens: float, buffer_tokens: int) -> MemoryBreakdown:
    """The memory of one die of a phase.

    experts_on_die: expert FFNs held per MoE layer (routed slots + shared); tp: attention head-parallel
    degree (heads split tp-ways for the per-head up-projections); tokens_per_die: tokens in one forward;
    kv_tokens: KV-cache tokens the configured batch needs; buffer_tokens: dispatch/combine buffer depth.
    """
    m, p = spec.model, spec.prec
    w = weight_params(m)
    gb = BYTES[p.gemm]
    mtp = m.mtp_layers if spec.mtp.draft_tokens else 0
    att_layers = m.layers + mtp
    att = m.attention
    if isinstance(att, MLA) and tp > 1:
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        per_head = att.q_lora_rank * qk + att.kv_lora_rank * (att.qk_nope_head_dim + att.v_head_dim)
        per_layer = w.attention - att.heads * per_head + att.heads * per_head / tp
    else:
        per_layer = w.attention / tp
    weights_attention = att_layers * per_layer * gb
    weights_dense = m.dense.layers * w.dense_mlp * gb
    moe_layers = m.moe_layers + (mtp if m.is_moe else 0)
    weights_experts = moe_layers * experts_on_die * w.expert * gb
    weights_embedding = (w.embedding + w.lm_head) * BYTES[p.embedding]
    weights_other = (moe_layers * w.router * 2 + (att_layers + 1) * w.norms * 2 + mtp * w.mtp_extra * gb)
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
    acts += [o.act_bytes for o in dense_mlp_ops(m, p, tokens=t)]
    if m.is_moe:
        recv = t * (m.moe.experts_per_token + m.moe.shared_experts) / max(1, ep) * max(1, experts_on_die)
        acts += [o.act_bytes for o in expert_ops(m, p, tokens_per_expert=[recv])]
    logits = t * m.vocab * 4.0 if phase == "decode" else 0.0
    activations = 2.0 * max(acts) + logits
    kvb = kv_bytes_per_token(m, p, layers=m.layers + mtp)
    return MemoryBreakdown(
        weights_attention=float(weights_attention),
        weights_dense_mlp=float(weights_dense),
        weights_experts=float(weights_experts),
        weights_embedding=float(weights_embedding),
        weights_other=float(weights_other),
        dispatch_buffers=float(dispatch),
        combine_buffers=float(combine),
        activations=float(activations),
        reserve=spec.memory.reserve_gb_per_die * GIB,
        kv_cache=float(kv_tokens * kvb),
        capacity=spec.hardware.memory_bytes,
        kv_bytes_per_token=kvb,
    )
