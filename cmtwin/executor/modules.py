"""DeepSeek-V3/R1 layer pieces in PyTorch at (scaled) true shapes, with seeded random weights.

Every function is a plain kernel over tensors so the executor can time each one, run it on any rank, and
run the very same math as a single-device reference. Linear layers take fp32 master weights cast to the
compute dtype; dtype 'int8' is W8A8 (per-token activation scales, per-output-channel weight scales), 'fp8' the
same in float8 e4m3 through torch._scaled_mm (row-wise scales, bf16 out), bf16 elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmtwin.errors import CmtwinError
from cmtwin.model.arch import MLA, ModelSpec

ROUTED_SCALING = 2.5  # DeepSeek-V3 config.json routed_scaling_factor
ROPE_THETA = 10000.0


def torch():
    import torch as _t

    return _t


def _sc(x: int, scale: float, mult: int) -> int:
    return max(mult, int(round(x * scale / mult)) * mult)


def scaled_model(model: ModelSpec, scale: float) -> ModelSpec:
    """The model with hidden, intermediates, heads, head/latent dims and vocab shrunk by `scale` (divisibility
    kept: multiples of 8 for widths, of 2 for head dims); the expert counts and routing groups are kept."""
    att = model.attention
    if not isinstance(att, MLA):
        raise CmtwinError(f"the executor runs MLA models (DeepSeek-V3/R1); model {model.name} uses "
                          f"{att.kind}.", key="model", fix="choose model=deepseek_r1")
    if model.moe is None:
        raise CmtwinError(f"the executor runs MoE models; {model.name} has no moe block.", key="model")
    if scale == 1.0:
        return model
    a = att.model_copy(update=dict(heads=_sc(att.heads, scale, 1), q_lora_rank=_sc(att.q_lora_rank, scale, 8),
                                   kv_lora_rank=_sc(att.kv_lora_rank, scale, 8),
                                   qk_nope_head_dim=_sc(att.qk_nope_head_dim, scale, 2),
                                   qk_rope_head_dim=_sc(att.qk_rope_head_dim, scale, 2),
                                   v_head_dim=_sc(att.v_head_dim, scale, 2)))
    return model.model_copy(update=dict(
        hidden=_sc(model.hidden, scale, 8), vocab=_sc(model.vocab, scale, 8), attention=a,
        dense=model.dense.model_copy(update=dict(intermediate=_sc(model.dense.intermediate, scale, 8))),
        moe=model.moe.model_copy(update=dict(intermediate=_sc(model.moe.intermediate, scale, 8)))))


# ------------------------------------------------------------------------------------------------ weights
@dataclass
class LayerWeights:
    dense: bool
    attn_norm: object
    q_a: object
    q_a_norm: object
    q_b: object
    kv_a: object
    kv_a_norm: object
    kv_b: object
    o: object
    mlp_norm: object
    router: object = None  # [h, E] fp32
    bias: object = None  # [E]
    w_gu: object = None  # routed: expert id -> [h, 2i]
    w_d: object = None  # routed: expert id -> [i, h]
    s_gu: object = None  # shared [h, 2 i ns] / dense MLP gate_up
    s_d: object = None
    mtp: bool = False  # the MTP module's block: its input path (norms, eh_proj) runs first


@dataclass
class Weights:
    model: ModelSpec
    layers: list
    final_norm: object
    lm_head: object
    eh_proj: object  # MTP: [2h, h]
    mtp_norms: tuple = ()  # MTP: (hidden norm, embedding norm)


def attention_shapes(model: ModelSpec) -> dict[str, tuple[int, ...]]:
    """A layer's attention weights (and the MLP norm) in the order they are drawn: norms are 1-D."""
    att, h = model.attention, model.hidden
    qk = att.qk_nope_head_dim + att.qk_rope_head_dim
    return {"attn_norm": (h,), "q_a": (h, att.q_lora_rank), "q_a_norm": (att.q_lora_rank,),
            "q_b": (att.q_lora_rank, att.heads * qk), "kv_a": (h, att.kv_lora_rank + att.qk_rope_head_dim),
            "kv_a_norm": (att.kv_lora_rank,),
            "kv_b": (att.kv_lora_rank, att.heads * (att.qk_nope_head_dim + att.v_head_dim)),
            "o": (att.heads * att.v_head_dim, h), "mlp_norm": (h,)}


def mlp_shapes(model: ModelSpec, *, dense: bool) -> dict[str, tuple[int, ...]]:
    """A layer's MLP weights: the dense MLP's, or the MoE's router, bias, one routed expert (w_gu, w_d) and
    the shared experts (s_gu, s_d)."""
    h = model.hidden
    if dense:
        i = model.dense.intermediate
        return {"s_gu": (h, 2 * i), "s_d": (i, h)}
    e, i, ns = model.moe.routed_experts, model.moe.intermediate, max(1, model.moe.shared_experts)
    return {"router": (h, e), "bias": (e,), "w_gu": (h, 2 * i), "w_d": (i, h), "s_gu": (h, 2 * i * ns),
            "s_d": (i * ns, h)}


def head_shapes(model: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The final norm, the LM head, MTP's eh_proj and its two norms."""
    h = model.hidden
    return {"final_norm": (h,), "lm_head": (h, model.vocab), "eh_proj": (2 * h, h), "mtp_norm_h": (h,),
            "mtp_norm_e": (h,)}


LINEAR = frozenset({"q_a", "q_b", "kv_a", "kv_b", "o", "s_gu", "s_d", "w_gu", "w_d", "lm_head", "eh_proj"})
"""Weights used through Kernels.linear (cast once to the compute dtype and cached)."""


def make_weights(model: ModelSpec, *, layers: int, dense_layers: int, seed: int, device: str, load=None,
                 skew: float = 0.0, experts=None, mtp: bool = False) -> Weights:
    """Seeded random weights (fp32), generated on the device, of the shapes attention_shapes, mlp_shapes and
    head_shapes give (the memory estimate counts the same). `load` (per routed expert, mean 1) with
    `skew` > 0 biases the router towards the hot experts (bias = skew x log load), so routing follows the
    plan's skewed load. `experts`: the routed expert ids to materialise (default all; each expert has its
    own seed, so a subset gets the same weights as the full set)."""
    t = torch()
    g = t.Generator(device=device).manual_seed(seed)
    moe = model.moe

    def w(*shape, gen=None):
        return t.randn(*shape, generator=gen or g, device=device) / math.sqrt(shape[-2])

    def norm(n):
        return 1.0 + 0.1 * t.randn(n, generator=g, device=device)

    def draw(shape):
        return norm(*shape) if len(shape) == 1 else w(*shape)

    out = []
    for li in range(layers + (1 if mtp else 0)):
        dense = li < dense_layers and li < layers
        lw = LayerWeights(dense=dense, **{k: draw(s) for k, s in attention_shapes(model).items()})
        ms = mlp_shapes(model, dense=dense)
        if dense:
            lw.s_gu, lw.s_d = w(*ms["s_gu"]), w(*ms["s_d"])
        else:
            e = moe.routed_experts
            lw.router = w(*ms["router"])
            bias = 0.01 * t.randn(*ms["bias"], generator=g, device=device)
            if load is not None and skew > 0:
                bias = bias + skew * t.log(t.tensor(load, dtype=t.float32, device=device).clamp_min(1e-3))
            lw.bias = bias
            lw.w_gu, lw.w_d = {}, {}
            for ex in sorted(range(e) if experts is None else experts):
                ge = t.Generator(device=device).manual_seed(seed * 1_000_003 + li * 1009 + ex + 1)
                lw.w_gu[ex], lw.w_d[ex] = w(*ms["w_gu"], gen=ge), w(*ms["w_d"], gen=ge)
            lw.s_gu, lw.s_d = w(*ms["s_gu"]), w(*ms["s_d"])
        lw.mtp = li == layers
        out.append(lw)
    hs = head_shapes(model)
    return Weights(model, out, norm(*hs["final_norm"]), w(*hs["lm_head"]), w(*hs["eh_proj"]),
                   (norm(*hs["mtp_norm_h"]), norm(*hs["mtp_norm_e"])))


def weight_bytes(model: ModelSpec, *, layers: int, dense_layers: int, experts: int, mtp: bool, dtype: str) -> dict:
    """Bytes make_weights allocates (fp32 masters) and Kernels caches (the compute-dtype copies of the weights
    used through Kernels.linear: bf16 2 bytes, int8 and fp8 1 byte plus an fp32 scale per output channel; fp32 uses
    the master itself), for `experts` materialised routed experts per MoE layer."""
    import numpy as np

    def size(shape):
        return int(np.prod(shape))

    master = cache = 0

    def add(name, shape, count=1):
        nonlocal master, cache
        master += 4 * size(shape) * count
        if name in LINEAR and dtype == "bf16":
            cache += 2 * size(shape) * count
        elif name in LINEAR and dtype in ("int8", "fp8"):
            cache += (size(shape) + 4 * shape[-1]) * count

    for li in range(layers + (1 if mtp else 0)):
        dense = li < dense_layers and li < layers
        for k, s in attention_shapes(model).items():
            add(k, s)
        for k, s in mlp_shapes(model, dense=dense).items():
            add(k, s, experts if k in ("w_gu", "w_d") else 1)
    for k, s in head_shapes(model).items():
        add(k, s)
    return {"weights": master, "weight casts": cache}


def largest_weight_bytes(model: ModelSpec) -> int:
    """The largest single weight make_weights draws (fp32): drawing it holds the raw draw and the scaled
    weight at once."""
    import numpy as np

    shapes = [*attention_shapes(model).values(), *mlp_shapes(model, dense=True).values(),
              *mlp_shapes(model, dense=False).values(), *head_shapes(model).values()]
    return 4 * max(int(np.prod(s)) for s in shapes)


# ------------------------------------------------------------------------------------------------ kernels
FP8_MAX = 448.0  # largest finite float8 e4m3fn


def fp8_supported(device: str) -> str | None:
    """None when torch runs float8 scaled matmuls (torch._scaled_mm, row-wise scales, bf16 out) on `device`,
    else torch's reason: tried on a 16x16x16 product, as builds and devices differ (CUDA needs sm89+; torch
    2.13's CPU build has a kernel)."""
    t = torch()
    if not hasattr(t, "_scaled_mm") or not hasattr(t, "float8_e4m3fn"):
        return f"torch {t.__version__} has no torch._scaled_mm / float8_e4m3fn"
    try:
        a = t.ones(16, 16, device=device).to(t.float8_e4m3fn)
        b = t.ones(16, 16, device=device).to(t.float8_e4m3fn).t()
        t._scaled_mm(a, b, scale_a=t.ones(16, 1, device=device), scale_b=t.ones(1, 16, device=device),
                     out_dtype=t.bfloat16)
    except Exception as e:  # noqa: BLE001 - any refusal of the kernel is the answer
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


class Kernels:
    """The compute dtype's kernels (fp32, bf16, or W8A8 linear layers: int8 with fp32 elsewhere, fp8 e4m3 with
    bf16 elsewhere)."""

    def __init__(self, dtype: str, eps: float):
        t = torch()
        self.name = dtype
        self.dt = {"fp32": t.float32, "bf16": t.bfloat16, "int8": t.float32, "fp8": t.bfloat16}[dtype]
        self.int8 = dtype == "int8"
        self.fp8 = dtype == "fp8"
        self.quant = self.int8 or self.fp8  # W8A8: linear weights held quantised, with their scales
        self.eps = eps
        self._cache: dict[int, object] = {}

    def w(self, weight):
        """A weight in the compute dtype (cached), or (quantised values, per-channel scale) for W8A8 (fp8: the
        values [in, out] column-major, as torch._scaled_mm takes its second operand)."""
        key = id(weight)
        got = self._cache.get(key)
        if got is None:
            t = torch()
            if self.int8:
                s = weight.abs().amax(dim=-2, keepdim=True).clamp_min(1e-8) / 127.0
                got = ((weight / s).round().clamp(-127, 127).to(t.int8), s)
            elif self.fp8:
                s = weight.abs().amax(dim=-2, keepdim=True).clamp_min(1e-8) / FP8_MAX
                got = ((weight / s).t().contiguous().to(t.float8_e4m3fn).t(), s.float())
            else:
                got = weight.to(self.dt)
            self._cache[key] = (got, weight)  # keep the master alive so its id is not reused
            return got
        return got[0]

    def linear(self, x, weight):
        if self.fp8:
            return self._linear_fp8(x, weight)
        if not self.int8:
            return x @ self.w(weight)
        t = torch()
        wq, ws = self.w(weight)
        xs = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
        xq = (x / xs).round().clamp(-127, 127)
        if x.is_cuda and x.dim() == 2 and x.shape[0] > 16 and x.shape[1] % 8 == 0 and wq.shape[1] % 8 == 0:
            acc = t._int_mm(xq.to(t.int8), wq).float()
        else:  # exact: int8 x int8 products summed in fp32 stay integers below 2^24 for these widths
            acc = xq.float() @ wq.float()
        return (acc * xs * ws).to(x.dtype)

    def _linear_fp8(self, x, weight):
        """W8A8 in float8 e4m3: per-token activation scales, per-output-channel weight scales, one
        torch._scaled_mm (fp32 accumulation, bf16 out). On CUDA the kernel wants both widths multiples of 16;
        other widths (reduced shapes) take the same quantised operands through an fp32 matmul."""
        t = torch()
        wq, ws = self.w(weight)
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k).float()
        xs = x2.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / FP8_MAX
        xq = (x2 / xs).to(t.float8_e4m3fn)
        n = wq.shape[1]
        if not x.is_cuda or (k % 16 == 0 and n % 16 == 0):
            y = t._scaled_mm(xq, wq, scale_a=xs, scale_b=ws, out_dtype=t.bfloat16)
        else:
            y = ((xq.float() @ wq.float()) * xs * ws).to(t.bfloat16)
        return y.to(x.dtype).reshape(*lead, n)

    def rmsnorm(self, x, weight):
        t = torch()
        xf = x.float()
        y = xf * t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * weight.float()).to(x.dtype)

    def cast(self, x):
        return x.to(self.dt)


def rope(x, pos):
    """Rotary embedding (rotate-half form) of x[..., T, (heads,) d] at integer positions pos[T]."""
    t = torch()
    d = x.shape[-1]
    inv = 1.0 / (ROPE_THETA ** (t.arange(0, d, 2, device=x.device, dtype=t.float32) / d))
    ang = pos.to(t.float32)[:, None] * inv[None, :]
    cos, sin = t.cat([ang.cos(), ang.cos()], -1), t.cat([ang.sin(), ang.sin()], -1)
    if x.dim() == 3:  # [T, H, d]
        cos, sin = cos[:, None, :], sin[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rot = t.cat([-x2, x1], -1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


def silu_mul(gu):
    t = torch()
    g, u = gu.chunk(2, dim=-1)
    return t.nn.functional.silu(g) * u


def group_topk(scores_biased, *, k: int, groups: int, topk_groups: int):
    """DeepSeek-V3 group-limited top-k on biased scores [T, E]: keep the topk_groups groups with the highest
    sum of their two best experts, then the k best experts inside them. Returns indices [T, k]."""
    t = torch()
    T, E = scores_biased.shape
    if groups > 1:
        gs = scores_biased.view(T, groups, E // groups)
        gscore = gs.topk(min(2, E // groups), dim=-1).values.sum(-1)
        keep = gscore.topk(topk_groups, dim=-1).indices
        mask = t.zeros(T, groups, dtype=t.bool, device=scores_biased.device).scatter_(1, keep, True)
        scores_biased = gs.masked_fill(~mask[..., None], float("-inf")).view(T, E)
    return scores_biased.topk(k, dim=-1).indices
