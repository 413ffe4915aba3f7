"""The operator catalogue: FLOPs, weight bytes, activation bytes and KV bytes of every operator of a layer.

Everything the planner (memory) and the twin (time) know about a model comes from here, by dtype, so the
two never disagree. Shapes follow the reference implementations: MLA in absorbed form for decode
(queries attend over the shared 576-wide latent) and MHA form for prefill (per-head K/V via kv_b_proj).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, reduce

from cmtwin.model.arch import GQA, MLA, ModelSpec
from cmtwin.model.precision import BYTES, Precision
from cmtwin.vec import vmax, vround


@dataclass(frozen=True)
class Op:
    """One operator at one shape. Times come from the twin; this only counts work and bytes. The counts may be
    numpy arrays, one shape per element (the twin steps a vector of batch sizes in one pass)."""

    name: str
    cls: str  # gemm | grouped_gemm | attention_decode | attention_prefill | norm | elementwise | router
    flops: float
    weight_bytes: float
    act_bytes: float
    kv_bytes: float = 0.0
    dtype: str = "bf16"
    tokens: int = 1  # the M dimension (rows) the efficiency curves are indexed by
    kv_len: float = 0.0  # attention: the context each query attends to (an efficiency curve may be indexed by it)

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.act_bytes + self.kv_bytes


def gemm(name: str, tokens: int, k: int, n: int, dtype: str, *, out_dtype: str = "bf16", cls: str = "gemm",
         groups: int = 1) -> Op:
    """y[T, n] = x[T, k] @ W[k, n] (groups independent weights for a grouped GEMM, tokens per group)."""
    wb = BYTES[dtype]
    return Op(
        name=name,
        cls=cls,
        flops=2.0 * groups * tokens * k * n,
        weight_bytes=float(groups * k * n * wb),
        act_bytes=1.0 * groups * tokens * (k * wb + n * BYTES[out_dtype]),
        dtype=dtype,
        tokens=vmax(1, tokens),
    )


# ----------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class WeightParams:
    """Parameter counts of the model's parts (one layer where it says so)."""

    attention: int  # per layer, all heads
    dense_mlp: int  # per dense layer
    expert: int  # per routed expert per MoE layer
    shared_expert: int  # all shared experts of one MoE layer
    router: int  # per MoE layer
    norms: int  # per layer
    embedding: int
    lm_head: int
    mtp_extra: int  # per MTP module, besides its transformer block (eh_proj + norms)


def attention_params(att: MLA | GQA, hidden: int) -> int:
    if isinstance(att, MLA):
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        return (
            hidden * att.q_lora_rank  # q_a_proj
            + att.q_lora_rank * att.heads * qk  # q_b_proj
            + hidden * att.kv_values_per_token  # kv_a_proj_with_mqa
            + att.kv_lora_rank * att.heads * (att.qk_nope_head_dim + att.v_head_dim)  # kv_b_proj
            + att.heads * att.v_head_dim * hidden  # o_proj
            + att.q_lora_rank + att.kv_lora_rank  # the two latent norms
        )
    return hidden * att.heads * att.head_dim + 2 * hidden * att.kv_heads * att.head_dim + att.heads * att.head_dim * hidden


def weight_params(model: ModelSpec) -> WeightParams:
    h = model.hidden
    moe = model.moe
    return WeightParams(
        attention=attention_params(model.attention, h),
        dense_mlp=3 * h * model.dense.intermediate,
        expert=3 * h * moe.intermediate if moe else 0,
        shared_expert=3 * h * moe.intermediate * moe.shared_experts if moe else 0,
        router=h * moe.routed_experts if moe else 0,
        norms=2 * h,
        embedding=model.vocab * h,
        lm_head=model.vocab * h,
        mtp_extra=2 * h * h + 2 * h,
    )


def total_params(model: ModelSpec, *, with_mtp: bool = True) -> int:
    """All parameters (DeepSeek-V3: 671B + the 14B MTP module)."""
    w = weight_params(model)
    per_moe_layer = w.attention + w.norms + w.router + w.shared_expert + (model.moe.routed_experts * w.expert if model.moe else 0)
    per_dense_layer = w.attention + w.norms + w.dense_mlp
    n = model.dense.layers * per_dense_layer + model.moe_layers * per_moe_layer + w.embedding + w.lm_head
    if with_mtp and model.mtp_layers:
        block = per_moe_layer if model.moe else per_dense_layer
        n += model.mtp_layers * (block + w.mtp_extra)
    return n


def kv_bytes_per_token(model: ModelSpec, precision: Precision, *, layers: int | None = None,
                       context: float | None = None) -> int:
    """KV-cache bytes one token occupies over `layers` layers (default: all; V3 in BF16: 70,272). With
    sliding-window layers and a `context` (the mean context of a request), their share counts only the window's
    tokens per request: window / context of a token each (None: every token kept, the bound)."""
    n = model.layers if layers is None else layers
    full = n * model.attention.kv_values_per_token * BYTES[precision.kv_cache]
    window = getattr(model.attention, "sliding_window", None)
    if not window or context is None or context <= window:
        return round(full)
    sliding = model.attention.sliding_layers / model.layers
    return max(1, round(full * (1 - sliding * (1 - window / context))))


# ------------------------------------------------------------------------------------------- operators
def attention_ops(model: ModelSpec, p: Precision, *, tokens: int, requests: int, kv_len: float,
                  form: str = "absorbed", head_share: float = 1.0, causal_prefill: bool = True) -> list[Op]:
    """Operators of one attention block for `tokens` query tokens of `requests` requests.

    kv_len: context each query attends to (decode: the cache length; prefill: the prompt length).
    form: "absorbed" (MLA decode: weight absorption, queries over the latent) or "mha" (prefill: per-head K/V).
    head_share: fraction of the heads on this rank (tensor-parallel attention), for the per-head operators.
    """
    try:
        return list(_attention_ops_memo(model, p, tokens, requests, kv_len, form, head_share, causal_prefill))
    except TypeError:  # counts given as arrays (a vector step): built once per step, not memoised
        return _attention_ops(model, p, tokens, requests, kv_len, form, head_share, causal_prefill)


def _attention_ops(model: ModelSpec, p: Precision, tokens, requests, kv_len, form: str, head_share: float,
                   causal_prefill: bool) -> list[Op]:
    att = model.attention
    h = model.hidden
    g = p.gemm
    ops: list[Op] = [Op("attn_norm", "norm", 4.0 * tokens * h, 2.0 * h, 2.0 * 2 * tokens * h, tokens=tokens)]
    kvb = BYTES[p.kv_cache]
    if isinstance(att, MLA):
        heads = max(1, round(att.heads * head_share))
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        lat = att.kv_values_per_token
        ops += [
            gemm("q_a_proj", tokens, h, att.q_lora_rank, g),
            gemm("kv_a_proj", tokens, h, lat, g),
            gemm("q_b_proj", tokens, att.q_lora_rank, heads * qk, g),
        ]
        if form == "absorbed":
            # q_nope -> latent through W_UK per head; attention over the latent; latent -> v through W_UV.
            ops.append(gemm("q_absorb", tokens, att.qk_nope_head_dim, att.kv_lora_rank, p.attention, groups=heads,
                            cls="grouped_gemm"))
            flops = 2.0 * tokens * heads * kv_len * (lat + att.kv_lora_rank)
            kv_read = requests * kv_len * lat * kvb
            act = tokens * heads * (lat + att.kv_lora_rank) * 2.0
            ops.append(Op("mla_attention", "attention_decode", flops, 0.0, act, kv_read, p.attention, tokens, kv_len))
            ops.append(gemm("v_absorb", tokens, att.kv_lora_rank, att.v_head_dim, p.attention, groups=heads,
                            cls="grouped_gemm"))
        else:
            # kv_b_proj expands the latent of every context token into per-head K (nope) and V.
            ops.append(gemm("kv_b_proj", tokens, att.kv_lora_rank, heads * (att.qk_nope_head_dim + att.v_head_dim), g))
            pairs = tokens * kv_len * (0.5 if causal_prefill else 1.0)
            flops = 2.0 * heads * pairs * (qk + att.v_head_dim)
            act = 2.0 * tokens * heads * (2 * qk + 2 * att.v_head_dim)
            ops.append(Op("mha_attention", "attention_prefill", flops, 0.0, act, 0.0, p.attention, tokens, kv_len))
        ops.append(gemm("o_proj", tokens, heads * att.v_head_dim, h, g))
    else:
        kv_len = model.attention_context(kv_len, prefill=form != "absorbed")  # sliding-window layers (gpt-oss)
        heads = max(1, round(att.heads * head_share))
        kvh = max(1, round(att.kv_heads * head_share))
        d = att.head_dim
        ops += [gemm("qkv_proj", tokens, h, (heads + 2 * kvh) * d, g)]
        if form == "absorbed":
            flops = 2.0 * tokens * heads * kv_len * 2 * d
            kv_read = requests * kv_len * 2 * kvh * d * kvb
            ops.append(Op("gqa_attention", "attention_decode", flops, 0.0, 2.0 * tokens * heads * d * 2, kv_read,
                          p.attention, tokens, kv_len))
        else:
            pairs = tokens * kv_len * (0.5 if causal_prefill else 1.0)
            ops.append(Op("gqa_attention", "attention_prefill", 2.0 * heads * pairs * 2 * d, 0.0,
                          2.0 * tokens * (heads + 2 * kvh) * d * 2, 0.0, p.attention, tokens, kv_len))
        ops.append(gemm("o_proj", tokens, heads * d, h, g))
    return ops


@lru_cache(maxsize=4096)
def _attention_ops_memo(*args) -> tuple[Op, ...]:
    # memoised for one shape: the simulator's tables and the SLO search build the same blocks many times
    return tuple(_attention_ops(*args))


def dense_mlp_ops(model: ModelSpec, p: Precision, *, tokens: int, share: float = 1.0) -> list[Op]:
    """A dense SwiGLU MLP (share < 1: this rank's tensor-parallel slice of the intermediate)."""
    h, i = model.hidden, max(1, round(model.dense.intermediate * share))
    return [
        Op("mlp_norm", "norm", 4.0 * tokens * h, 2.0 * h, 4.0 * tokens * h, tokens=tokens),
        gemm("mlp_gate_up", tokens, h, 2 * i, p.gemm),
        Op("mlp_act", "elementwise", 4.0 * tokens * i, 0.0, 2.0 * 3 * tokens * i, tokens=tokens),
        gemm("mlp_down", tokens, i, h, p.gemm),
    ]


def router_ops(model: ModelSpec, p: Precision, *, tokens: int) -> list[Op]:
    """Norm before the MoE block, and the router: logits, sigmoid/softmax, group-limited top-k."""
    h = model.hidden
    e = model.moe.routed_experts if model.moe else 0
    return [
        Op("moe_norm", "norm", 4.0 * tokens * h, 2.0 * h, 4.0 * tokens * h, tokens=tokens),
        gemm("router", tokens, h, e, p.router, out_dtype="fp32", cls="gemm"),
        Op("topk", "elementwise", 10.0 * tokens * e, 4.0 * e, 4.0 * tokens * e, tokens=tokens),
    ]


def expert_ops(model: ModelSpec, p: Precision, *, tokens_per_expert: list[float] | tuple[float, ...],
               name: str = "routed_experts", share: float = 1.0, experts_read: float | None = None) -> list[Op]:
    """SwiGLU experts on one rank as two grouped GEMMs (gate_up, down); tokens_per_expert: load per expert;
    share < 1: this rank's tensor-parallel slice of each expert's intermediate (MoE-TP); experts_read: how many
    experts' weights are read (those that receive a token; default: all of them)."""
    moe = model.moe
    assert moe is not None
    h, i = model.hidden, max(1, round(moe.intermediate * share))
    g = len(tokens_per_expert) if experts_read is None else experts_read
    t = sum(tokens_per_expert)
    wb, ab = p.expert_weight_bytes, BYTES[p.gemm]  # weights (maybe weight-only quantized), activations
    busiest = reduce(vmax, tokens_per_expert) if tokens_per_expert else 0
    up = Op(f"{name}_gate_up", "grouped_gemm", 2.0 * t * h * 2 * i, g * h * 2 * i * wb * 1.0,
            t * (h * ab + 2 * i * 2.0), 0.0, p.gemm, vmax(1, vround(busiest)))
    act = Op(f"{name}_act", "elementwise", 4.0 * t * i, 0.0, 2.0 * 3 * t * i, tokens=vmax(1, vround(t)))
    down = Op(f"{name}_down", "grouped_gemm", 2.0 * t * i * h, g * i * h * wb * 1.0, t * (i * ab + h * 2.0), 0.0,
              p.gemm, vmax(1, vround(busiest)))
    return [up, act, down]


def lm_head_ops(model: ModelSpec, p: Precision, *, tokens: int, vocab_share: float = 1.0) -> list[Op]:
    h = model.hidden
    return [
        Op("final_norm", "norm", 4.0 * tokens * h, 2.0 * h, 4.0 * tokens * h, tokens=tokens),
        gemm("lm_head", tokens, h, max(1, round(model.vocab * vocab_share)), p.embedding),
    ]


def mtp_extra_ops(model: ModelSpec, p: Precision, *, tokens: int) -> list[Op]:
    """The MTP module's own input path: two norms and eh_proj (2h -> h), before its transformer block."""
    h = model.hidden
    return [
        Op("mtp_norms", "norm", 8.0 * tokens * h, 4.0 * h, 8.0 * tokens * h, tokens=tokens),
        gemm("mtp_eh_proj", tokens, 2 * h, h, p.gemm),
    ]
