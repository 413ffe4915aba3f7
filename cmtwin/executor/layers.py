"""One layer's blocks on one rank (timed per operator), and the same math as a single-device reference.

Operator names match the catalogue (cmtwin/model/operators.py) so every measured time meets its prediction.
"""

from __future__ import annotations

from contextlib import contextmanager

from cmtwin.executor.modules import ROUTED_SCALING, group_topk, rope, silu_mul, torch
from cmtwin.executor.timing import SyncClock


class Timer:
    """Collects (op, seconds) in order, and (segment, seconds) where the clock times segments; a disabled
    timer only runs the code. Each operator is timed by a clock (cmtwin.executor.timing): by default a SyncClock
    (perf_counter around it, with a device synchronise on either side when cuda), the executor's method on a CPU;
    a GraphClock on CUDA captures each operator (or segment) in a CUDA graph and times it over replays."""

    def __init__(self, enabled: bool = True, cuda: bool = False, clock=None):
        self.enabled = enabled
        if clock is None and enabled:
            clock = SyncClock(torch().cuda if cuda else None)
        self.clock = clock
        self.events: list[tuple[str, float]] = []
        self.segments: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, op: str):
        if not self.enabled:
            yield
            return
        with self.clock.op(op) as box:
            yield
        if box.seconds is not None:
            self.events.append((op, box.seconds))

    @contextmanager
    def segment(self, name: str):
        """A rank's compute between two exchanges of tokens; timed as one graph by a clock in segment mode."""
        if not self.enabled:
            yield
            return
        with self.clock.segment(name) as box:
            yield
        if box.seconds is not None:
            self.segments.append((name, box.seconds))


NULL = Timer(enabled=False)


def _split_kv_b(K, lw, att):
    # the compute-dtype copy Kernels caches (as a server holds its weights), not a cast in every step
    w = (K.cast(lw.kv_b) if K.quant else K.w(lw.kv_b)).view(att.kv_lora_rank, att.heads, att.qk_nope_head_dim + att.v_head_dim)
    return w[..., : att.qk_nope_head_dim], w[..., att.qk_nope_head_dim:]


def _projections(K, lw, x, pos, att, tm):
    T = x.shape[0]
    qk = att.qk_nope_head_dim + att.qk_rope_head_dim
    with tm("attn_norm"):
        hn = K.rmsnorm(x, lw.attn_norm)
    with tm("q_a_proj"):
        qa = K.rmsnorm(K.linear(hn, lw.q_a), lw.q_a_norm)
    with tm("kv_a_proj"):
        kv = K.linear(hn, lw.kv_a)
        c = K.rmsnorm(kv[:, : att.kv_lora_rank], lw.kv_a_norm)
        kpe = rope(kv[:, att.kv_lora_rank:], pos)
    with tm("q_b_proj"):
        q = K.linear(qa, lw.q_b).view(T, att.heads, qk)
        qn, qpe = q[..., : att.qk_nope_head_dim], rope(q[..., att.qk_nope_head_dim:], pos)
    return qn, qpe, c, kpe


def mla_core(ql, qpe, ckv, kp, scale: float):
    """Absorbed MLA decode attention over the latent cache (the catalogue's mla_attention): latent queries
    ql[T, H, c] and rope queries qpe[T, H, r] against each request's cache ckv[T, L, c] and kp[T, L, r]."""
    t = torch()
    s = (t.einsum("thc,tlc->thl", ql, ckv) + t.einsum("thr,tlr->thl", qpe, kp)) * scale
    p = t.softmax(s.float(), -1).to(ckv.dtype)
    return t.einsum("thl,tlc->thc", p, ckv)


def attention_decode(K, lw, x, pos, cache_c, cache_pe, att, tm=NULL, *, absorbed=True):
    """MLA for decode tokens x[T, h] at positions pos, each its own request with a latent cache [T, L, .];
    absorbed form (the executor) or MHA form (the reference)."""
    t = torch()
    T = x.shape[0]
    scale = (att.qk_nope_head_dim + att.qk_rope_head_dim) ** -0.5
    qn, qpe, c, kpe = _projections(K, lw, x, pos, att, tm)
    wk, wv = _split_kv_b(K, lw, att)
    ckv = t.cat([cache_c, c[:, None]], 1)  # the new token's latent joins its cache (an in-place append on a server)
    kp = t.cat([cache_pe, kpe[:, None]], 1)
    if absorbed:
        with tm("q_absorb"):
            ql = t.einsum("thn,chn->thc", qn, wk)
        with tm("mla_attention"):
            ol = mla_core(ql, qpe, ckv, kp, scale)
        with tm("v_absorb"):
            o = t.einsum("thc,chv->thv", ol, wv)
    else:
        kn = t.einsum("tlc,chn->tlhn", ckv, wk)
        v = t.einsum("tlc,chv->tlhv", ckv, wv)
        s = (t.einsum("thn,tlhn->thl", qn, kn) + t.einsum("thr,tlr->thl", qpe, kp)) * scale
        p = t.softmax(s.float(), -1).to(ckv.dtype)
        o = t.einsum("thl,tlhv->thv", p, v)
    with tm("o_proj"):
        out = K.linear(o.reshape(T, att.heads * att.v_head_dim), lw.o)
    return x + out


def attention_prefill(K, lw, x, pos, att, tm=NULL, *, absorbed=False):
    """MLA for one prompt chunk x[T, h] (causal): MHA form (the executor) or absorbed form (the reference)."""
    t = torch()
    T = x.shape[0]
    qk = att.qk_nope_head_dim + att.qk_rope_head_dim
    scale = qk ** -0.5
    qn, qpe, c, kpe = _projections(K, lw, x, pos, att, tm)
    if not absorbed:
        with tm("kv_b_proj"):
            kvb = K.linear(c, lw.kv_b).view(T, att.heads, att.qk_nope_head_dim + att.v_head_dim)
            kn, v = kvb[..., : att.qk_nope_head_dim], kvb[..., att.qk_nope_head_dim:]
        with tm("mha_attention"):
            q = t.cat([qn, qpe], -1).transpose(0, 1)
            k = t.cat([kn, kpe[:, None, :].expand(T, att.heads, att.qk_rope_head_dim)], -1).transpose(0, 1)
            o = t.nn.functional.scaled_dot_product_attention(q[None], k[None], v.transpose(0, 1)[None],
                                                             is_causal=True, scale=scale)[0].transpose(0, 1)
    else:
        wk, wv = _split_kv_b(K, lw, att)
        ql = t.einsum("thn,chn->thc", qn, wk)
        s = (t.einsum("thc,lc->thl", ql, c) + t.einsum("thr,lr->thl", qpe, kpe)) * scale
        s = s.masked_fill(t.triu(t.ones(T, T, dtype=t.bool, device=x.device), 1)[:, None, :], float("-inf"))
        p = t.softmax(s.float(), -1).to(c.dtype)
        o = t.einsum("thc,chv->thv", t.einsum("thl,lc->thc", p, c), wv)
    with tm("o_proj"):
        out = K.linear(o.reshape(T, att.heads * att.v_head_dim), lw.o)
    return x + out


def dense_mlp(K, lw, x, tm=NULL):
    with tm("mlp_norm"):
        hn = K.rmsnorm(x, lw.mlp_norm)
    with tm("mlp_gate_up"):
        gu = K.linear(hn, lw.s_gu)
    with tm("mlp_act"):
        a = silu_mul(gu)
    with tm("mlp_down"):
        y = K.linear(a, lw.s_d)
    return x + y


def route(K, lw, x, moe, tm=NULL, allowed=None):
    """Norm and router: (normed hidden, expert ids [T, k], combine weights [T, k] fp32, biased scores)."""
    t = torch()
    with tm("moe_norm"):
        hn = K.rmsnorm(x, lw.mlp_norm)
    with tm("router"):
        logits = hn.float() @ lw.router
    with tm("topk"):
        s = t.sigmoid(logits)
        biased = s + lw.bias
        if allowed is not None:
            biased = biased.masked_fill(~allowed, float("-inf"))
        idx = group_topk(biased, k=moe.experts_per_token, groups=moe.groups, topk_groups=moe.topk_groups)
        w = s.gather(1, idx)
        w = w / w.sum(-1, keepdim=True) * ROUTED_SCALING
    return hn, idx, w, biased


def experts(K, lw, groups, tm=NULL, name="routed_experts"):
    """Grouped SwiGLU over this rank's experts: groups = [(expert id, rows [n, h])]; returns outputs."""
    with tm(f"{name}_gate_up"):
        gu = [K.linear(rows, lw.w_gu[e]) for e, rows in groups]
    with tm(f"{name}_act"):
        a = [silu_mul(g) for g in gu]
    with tm(f"{name}_down"):
        return [K.linear(ai, lw.w_d[e]) for (e, _), ai in zip(groups, a)]


def shared_expert(K, lw, rows, tm=NULL, name="shared_expert"):
    with tm(f"{name}_gate_up"):
        gu = K.linear(rows, lw.s_gu)
    with tm(f"{name}_act"):
        a = silu_mul(gu)
    with tm(f"{name}_down"):
        return K.linear(a, lw.s_d)


def lm_head(K, w, x, tm=NULL):
    with tm("final_norm"):
        hn = K.rmsnorm(x, w.final_norm)
    with tm("lm_head"):
        return K.linear(hn, w.lm_head).float()


def mtp_input(K, w, x, emb, tm=NULL):
    """The MTP module's input path: eh_proj over [norm(hidden); norm(next-token embedding)]."""
    t = torch()
    with tm("mtp_norms"):
        a = t.cat([K.rmsnorm(x, w.mtp_norms[0]), K.rmsnorm(emb, w.mtp_norms[1])], -1)
    with tm("mtp_eh_proj"):
        return K.linear(a, w.eh_proj)


def transient_bytes(model, es: int, *, phase: str, tokens: int, kv_len: int, expert_rows=(),
                    dense: bool = False) -> int:
    """The most bytes one rank's layer allocates at once in the functions above (outputs and temporaries),
    from the shapes they compute with, for compute-dtype element size `es`: the attention projections and
    decode attention (the cache with the new latent, the score einsums, their sum, the fp32 softmax) or
    prefill MHA (kv_b output, q and k with rope, SDPA's output and fp32 scores); the dense MLP or the shared
    expert (gate_up, activation, down); the routed experts (each expert's gate_up, activation and down outputs
    are kept until the last expert's down); the router's fp32 scores; the LM head's logits (fp32)."""
    a, h, T = model.attention, model.hidden, tokens
    H, c, r, vd = a.heads, a.kv_lora_rank, a.qk_rope_head_dim, a.v_head_dim
    qk = a.qk_nope_head_dim + r
    proj = T * (h + a.q_lora_rank + c + r + 2 * H * qk) * es
    if phase == "decode":
        L = kv_len + 1
        attn = proj + T * (L * (c + r) * es + 3 * H * L * es + 4 * H * L)
    else:
        attn = proj + T * H * (a.qk_nope_head_dim + 2 * vd + 2 * qk) * es + 4 * H * T * T
    mi = model.dense.intermediate if dense else model.moe.intermediate * max(1, model.moe.shared_experts)
    mlp = T * (3 * mi + h) * es
    experts = sum(expert_rows) * (3 * model.moe.intermediate + h) * es
    router = 4 * T * model.moe.routed_experts * 4
    head = T * model.vocab * (4 + (es if es != 4 else 0))
    return max(attn, mlp, experts, router, head)
