"""Execute a compiled plan's ranks with real kernels; communication time from the twin's topology model.

Decision (docs/executor.md): every rank of a pool is executed, in one process (or dealt over N worker
processes) at a reduced shape scale; the plan's placement (expert ids per EP rank, replicas, dedicated
shared ranks) is used verbatim, routing follows the plan's load (router bias), and tokens move for real
between the ranks' buffers. A decode step runs on the decode pool, a prefill chunk on prefill instance 0.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from cmtwin.errors import CmtwinError
from cmtwin.executor import layers as L
from cmtwin.executor.modules import Kernels, make_weights, scaled_model, torch
from cmtwin.model.precision import PRECISIONS, Precision

# int8 / fp8: a rounding flip at a quantisation boundary; fp8 e4m3 keeps 3 mantissa bits, and each path quantises
# kv_b differently (the W8A8 linear in one attention form, its bf16 copy in the other): 0.05-0.15 measured at
# scale 0.01 over three seeds (prefill the larger), where a misrouted or lost row gives O(1)
TOL = {"fp32": 1e-5, "bf16": 2e-2, "int8": 5e-2, "fp8": 2e-1}
TIE_TOL = {"fp32": 1e-4, "bf16": 2e-2, "int8": 2e-2, "fp8": 2e-2}


def precision_of(dtype: str) -> Precision:
    """The dtypes the executor runs under executor.dtype. Its router is FP32 in every mode (FP32 weights,
    logits of the normed hidden state cast up) so the routing matches the reference exactly."""
    if dtype == "fp32":
        return Precision("fp32", gemm="fp32", attention="fp32", kv_cache="fp32", dispatch="fp32", combine="fp32",
                         embedding="fp32", router="fp32")
    return dataclasses.replace(PRECISIONS[dtype], router="fp32")


def set_threads(ex, device: str) -> None:
    """executor.threads: torch's intra-op threads for this process (null leaves torch's default)."""
    if ex.threads is not None and device == "cpu":
        torch().set_num_threads(ex.threads)


def pick_device(want: str, dtype: str | None = None) -> str:
    """The device executor.device names; with `dtype`, refuses a compute dtype the device cannot run (fp8:
    torch._scaled_mm) before anything is allocated."""
    t = torch()
    if want == "cuda" and not t.cuda.is_available():
        raise CmtwinError("executor.device=cuda but torch sees no CUDA device.", key="executor.device",
                          fix="use executor.device=auto or cpu")
    device = "cuda" if want == "cuda" or (want == "auto" and t.cuda.is_available()) else "cpu"
    if dtype == "fp8":
        from cmtwin.executor.modules import fp8_supported

        why = fp8_supported(device)
        if why is not None:
            where = t.cuda.get_device_name() if device == "cuda" else f"this {device}"
            raise CmtwinError(f"executor.dtype=fp8 needs float8 scaled matmuls (torch._scaled_mm), which torch "
                              f"{t.__version__} does not run on {where}: {why}.", key="executor.dtype",
                              fix="use executor.dtype=bf16 or int8, or run on a GPU with fp8 (sm89+: L40S, H100, "
                                  "H200) under a torch build that has torch._scaled_mm")
    return device


def near_tie(biased, theirs, *, groups: int, topk_groups: int, slack: float) -> bool:
    """Whether the distributed run's expert choice `theirs` is as good as the reference's own choice up to
    `slack` under the reference's biased scores [E], at both levels of group-limited routing: its groups score
    within slack of the reference's topk_groups-th best group, and inside its groups its experts score within
    slack of the k-th best there. (A flipped group near-tie legitimately changes several experts at once; the
    reference's threshold is that of the groups it kept, not of the groups its chosen experts happen to be in.)"""
    t = torch()
    E, k = biased.numel(), theirs.numel()

    pool = biased
    if groups > 1:
        per = E // groups
        gscore = biased.view(groups, per).topk(min(2, per), dim=-1).values.sum(-1)
        kth_g = gscore.topk(topk_groups).values.min()
        g_theirs = (theirs // per).unique()
        if bool((gscore[g_theirs] < kth_g - slack).any()):
            return False
        keep = t.zeros(groups, dtype=t.bool, device=biased.device)
        keep[g_theirs] = True
        pool = biased.view(groups, per).masked_fill(~keep[:, None], float("-inf")).view(E)
    kth = pool.topk(k).values.min()
    return bool((biased[theirs] >= kth - slack).all())


def _disputed(ref, dist, ours, theirs) -> str:
    ids = sorted(set(ours.tolist()) ^ set(theirs.tolist()))
    return ", ".join(f"{e}: {float(ref[e]):.4f}/{float(dist[e]):.4f}" for e in ids)


@dataclass
class PhaseResult:
    phase: str
    ranks: int
    tokens: int
    out: object  # [tokens, h] hidden after the last layer (rank order)
    logits: object
    events: list = field(default_factory=list)  # (rank, op, kind, measured_us, predicted_us, layer)
    segments: list = field(default_factory=list)  # (rank, segment, measured_us, layer): graphed segments (CUDA)
    max_rel_err: float | None = None
    ties: int = 0
    wall_s: float = 0.0
    expert_rows: int = 0  # executor.expert_tokens=plan: the plan's tokens per routed expert every rank computed


# --------------------------------------------------------------------------------------------- routing
class Router:
    """Which rank computes each (token, expert) and each token's shared expert, from the plan's placement."""

    def __init__(self, placement, nranks: int):
        self.n = nranks
        holders: dict[int, list[int]] = {}
        for r, experts in enumerate(placement.ranks[:nranks]):
            for e in experts:
                holders.setdefault(e, []).append(r)
        self.holders = {e: sorted(v) for e, v in holders.items()}
        ded = [r for r in range(nranks) if not placement.ranks[r]]
        self.shared_ranks = ded
        self.colocated = placement.shared_on_every_rank or not ded

    def allowed(self, experts: int, device):
        t = torch()
        m = t.zeros(experts, dtype=t.bool, device=device)
        m[list(self.holders)] = True
        return m

    def tables(self, experts: int, device):
        """(holder table [E, max replicas], replica count [E]); replica of token g is g mod count."""
        t = torch()
        width = max((len(v) for v in self.holders.values()), default=1)
        tab = t.zeros(experts, width, dtype=t.long)
        nrep = t.ones(experts, dtype=t.long)
        for e, h in self.holders.items():
            tab[e, : len(h)] = t.tensor(h)
            nrep[e] = len(h)
        return tab.to(device), nrep.to(device)

    def shared_tensor(self, n: int, device):
        """Per source rank, the rank computing its tokens' shared expert."""
        t = torch()
        out = []
        for src in range(n):
            if self.colocated or src in self.shared_ranks:
                out.append(src)
            else:
                out.append(self.shared_ranks[src % len(self.shared_ranks)])
        return t.tensor(out, dtype=t.long, device=device)


# --------------------------------------------------------------------------------------------- the run
def phases_of(spec, plan) -> list[str]:
    """The phases an execute runs: executor.phase, or both (prefill only when the plan has a prefill pool)."""
    ph = spec.executor.phase
    return [p for p in (["decode", "prefill"] if ph == "both" else [ph])
            if not (p == "prefill" and ph == "both" and not plan.pools_of("prefill"))]


def planned_expert_rows(spec, pool, tokens_per_rank: int) -> int:
    """The plan's tokens per routed expert on the busiest rank: the twin's load model (cmtwin.twin.load.moe_load,
    noise as the twin runs it) for `tokens_per_rank` tokens on every rank of the pool, its busiest rank's
    routed copies spread over that rank's slots, as the twin costs that rank's experts (expert_ranks_ops)."""
    from cmtwin.twin.load import moe_load

    if spec.model.moe.routed_experts <= 0:
        return 0
    load = moe_load(spec, pool.placement, tokens_per_rank=tokens_per_rank,
                    noise=spec.placement.balance == "default")
    return max(1, round(float(load.routed_tokens_busiest) / max(1, load.routed_slots)))


@dataclass(frozen=True)
class PoolShape:
    """What one pool's execution holds, known before anything is allocated: PoolRun builds exactly these
    ranks, tokens, layers and experts, and memory() counts the bytes of the tensors it allocates."""

    phase: str
    model: object  # the scaled ModelSpec
    nranks: int
    tokens: int  # per rank
    layers: int  # executor.layers (MTP's block not included)
    dense_layers: int
    mtp: bool
    experts: tuple  # routed expert ids materialised (held by the executed ranks)
    pool_dies: int
    expert_rows: int = 0  # executor.expert_tokens=plan: rows per routed expert slot (planned_expert_rows); 0: routed
    slots: int = 0  # routed expert slots of the executed ranks

    @classmethod
    def of(cls, spec, plan, phase: str, *, scale: float | None = None) -> "PoolShape":
        ex = spec.executor
        pools = plan.pools_of("decode" if phase == "decode" else "prefill")
        if not pools:
            raise CmtwinError(f"the plan has no {phase} pool to execute.", key="executor.phase",
                              fix="choose executor.phase=decode or prefill")
        pool = pools[0]
        nranks = min(pool.dies, ex.ranks or pool.dies)
        router = Router(pool.placement, nranks)
        T = (ex.decode_tokens or pool.tokens_per_die) if phase == "decode" else ex.prefill_tokens
        rows = planned_expert_rows(spec, pool, T) if ex.expert_tokens == "plan" else 0
        slots = sum(len(pool.placement.ranks[d]) for d in range(nranks)) if rows else 0
        return cls(phase, scaled_model(spec.model, ex.scale if scale is None else scale), nranks, T, ex.layers,
                   ex.dense_layers, ex.mtp and spec.model.mtp_layers > 0, tuple(sorted(router.holders)), pool.dies,
                   rows, slots)

    def memory(self, dtype: str, kv_len: int) -> dict[str, int]:
        """Bytes of what this pool's execution allocates, from the shapes it allocates them with:
        resident ('weights', 'weight casts', 'inputs'), kept after a pass ('routing kept', 'result kept') and
        the largest transient of a pass ('pass peak') and of the reference ('reference peak'). Transients
        count the tensors alive at the busiest moments of PoolRun.run (the MoE exchange, the LM head) and of
        PoolRun.reference (MHA-form decode attention, routing, the logits check)."""
        from cmtwin.executor.layers import transient_bytes
        from cmtwin.executor.modules import largest_weight_bytes, weight_bytes

        m, a, moe = self.model, self.model.attention, self.model.moe
        es = 2 if dtype in ("bf16", "fp8") else 4  # compute dtype's element size (int8 runs W8A8 over fp32, fp8 over bf16)
        n, T, h, V, E, k = self.nranks, self.tokens, m.hidden, m.vocab, moe.routed_experts, moe.experts_per_token
        N, H, c, r = n * T, a.heads, a.kv_lora_rank, a.qk_rope_head_dim
        qk, nope, vd = a.qk_nope_head_dim + a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim
        nl = self.layers + (1 if self.mtp else 0)
        moe_layers = nl - min(self.dense_layers, self.layers)
        out = weight_bytes(m, layers=self.layers, dense_layers=self.dense_layers, experts=len(self.experts),
                           mtp=self.mtp, dtype=dtype)
        decode = self.phase == "decode"
        L = kv_len + 1  # the cache and the new token
        P = self.expert_rows  # planned rows per expert: their pre-drawn fill rows are an input
        out["inputs"] = 2 * N * h * es + (nl * N * kv_len * (c + r) * es if decode else 0) + P * h * es  # x, emb,
        # latent cache, fill rows
        out["routing kept"] = moe_layers * N * (h * es + 8 * k)  # per MoE layer: normed hidden, expert ids
        out["result kept"] = N * (h * es + 4 * V)  # the last pass's hidden state and fp32 logits
        held = max(1, len(self.experts))  # expert rows spread over the experts held (replicas alike)
        rows = max(-(-N * k // held), P)
        attn = max(transient_bytes(m, es, phase=self.phase, tokens=T, kv_len=kv_len, dense=li < self.dense_layers,
                                   expert_rows=[rows] if li >= self.dense_layers else ()) for li in range(2))
        routed = N * (h * es + 12 * k + 4 * E)  # per rank: normed hidden, ids (int64), weights, biased scores
        exchange = (N * (h * es + 12 * k)  # concatenated hidden, ids, weights
                    + 8 * N * (3 + 5 * k) + N * n  # token/source/shared-rank, destination/key/order/rows; one-hot
                    + max(N * k, self.slots * P) * h * es + 2 * N * h * es)  # routed rows received (filled up
        # to the plan's count: most experts receive fewer than the busiest rank's share), shared rows, output
        head = N * (4 * V + (2 * V if es == 2 else 0)) + 4 * N * V + N * h * es  # per-rank logits, concatenated
        out["pass peak"] = max(N * h * es + max(attn, routed + exchange, head), largest_weight_bytes(m))
        proj = N * (h + a.q_lora_rank + c + r + 2 * H * qk) * es  # normed hidden, q latent, kv latent, q
        if decode:  # MHA form over every token: latents gathered, K and V expanded per head (and einsum's
            # contiguous copy of one of them), scores, softmax
            ref_attn = (proj + N * kv_len * (c + r) * es + N * L * (c + r) * es + N * L * H * (nope + vd) * es
                        + N * L * H * max(nope, vd) * es + 3 * N * H * L * es + 4 * N * H * L)
        else:  # absorbed form per prompt: latent queries, scores, mask, softmax
            ref_attn = proj + T * H * (c + 2 * T * es + 4 * T) + T * T
        ref_route = N * h * es + 4 * 4 * N * E  # normed hidden; logits, scores, biased, group-masked scores
        ref_head = 4 * N * V + (2 * N * V if es == 2 else 0) + 4 * N * V  # logits; their difference
        out["reference peak"] = 2 * N * h * es + max(ref_attn, ref_route, ref_head)
        return out


class PoolRun:
    """One pool's ranks executing a decode step or a prefill chunk."""

    def __init__(self, spec, plan, phase: str, *, device: str, hw_pred, hw_comm, fabric):
        ex = spec.executor
        shape = PoolShape.of(spec, plan, phase)
        self.shape = shape
        self.pool = plan.pools_of("decode" if phase == "decode" else "prefill")[0]
        self.phase = phase
        self.ex = ex
        self.device = device
        self.model = shape.model
        self.nranks = shape.nranks
        self.dies = [d for d in plan.dies if d.role == self.pool.role and d.instance == self.pool.instance]
        self.dies.sort(key=lambda d: d.ep_rank)
        self.die_ids = tuple(d.die for d in self.dies[: self.nranks])
        self.router = Router(self.pool.placement, self.nranks)
        self.K = Kernels(ex.dtype, spec.model.norm_eps)
        self.prec = precision_of(ex.dtype)
        self.hw_pred, self.hw_comm, self.fabric = hw_pred, hw_comm, fabric
        self.comm_prec = spec.prec
        self.W = make_weights(self.model, layers=ex.layers, dense_layers=ex.dense_layers, seed=ex.seed,
                              device=device, load=self.pool.placement.load, skew=ex.skew,
                              experts=list(shape.experts), mtp=shape.mtp)
        self.T = shape.tokens
        self.expert_rows = shape.expert_rows
        self.owned = list(range(self.nranks))  # ranks this process computes (all, in one process)
        self.allreduce = None  # across processes: sum a tensor in place (each slot written by one process)
        self._predicted: dict = {}  # the twin's predictions of a layer's operators, the same every pass
        self.layer_keys: dict = {}  # (rank, layer) -> the key of _predicted: what re-predicting with another profile needs
        self.clock = None  # cmtwin.executor.timing clock of the timed passes (None: sync, as layers.Timer does)
        self._inputs()

    def _inputs(self):
        t = torch()
        g = t.Generator(device=self.device).manual_seed(self.ex.seed + 1 + (0 if self.phase == "decode" else 7))
        m, a, T = self.model, self.model.attention, self.T
        n = self.nranks
        dt = self.K.dt
        self.x = [t.randn(T, m.hidden, generator=g, device=self.device).to(dt) for _ in range(n)]
        self.emb = [t.randn(T, m.hidden, generator=g, device=self.device).to(dt) for _ in range(n)]
        if self.phase == "decode":
            kv = self.ex.kv_len
            self.pos = t.full((T,), kv, dtype=t.long, device=self.device)
            self.cache = [[(t.randn(T, kv, a.kv_lora_rank, generator=g, device=self.device).to(dt),
                            t.randn(T, kv, a.qk_rope_head_dim, generator=g, device=self.device).to(dt))
                           for _ in range(n)] for _ in range(len(self.W.layers))]
        else:
            self.pos = t.arange(T, device=self.device)
        # expert_tokens=plan: the rows that fill each routed expert up to the plan's count, drawn before any pass
        P = self.expert_rows
        self.fill = t.randn(P, m.hidden, generator=g, device=self.device).to(dt) if P else None

    # ------------------------------------------------------------------ distributed (ranks as buffers)
    def run(self, timed: bool = True, tick=None) -> PhaseResult:
        """One pass over the executed layers and the LM head; tick() after each (progress)."""
        cuda = self.device == "cuda"
        tms = [L.Timer(timed, cuda, clock=self.clock) for _ in range(self.nranks)]
        events: list = []
        self._segments: list = []
        moe = self.model.moe
        att = self.model.attention
        allowed = self.router.allowed(moe.routed_experts, self.device) if self.nranks < self.pool.dies else None
        xs = list(self.x)
        self.routing: list = []  # per MoE layer: per rank (normed hidden, expert ids)
        t0 = time.perf_counter()
        for li, lw in enumerate(self.W.layers):
            if lw.mtp:
                for r in self.owned:
                    with tms[r].segment("mtp_input"):
                        xs[r] = L.mtp_input(self.K, self.W, xs[r], self.emb[r], tms[r])
            for r in self.owned:
                with tms[r].segment("attention"):
                    if self.phase == "decode":
                        c, pe = self.cache[li][r]
                        xs[r] = L.attention_decode(self.K, lw, xs[r], self.pos, c, pe, att, tms[r])
                    else:
                        xs[r] = L.attention_prefill(self.K, lw, xs[r], self.pos, att, tms[r])
            if lw.dense:
                for r in self.owned:
                    with tms[r].segment("mlp"):
                        xs[r] = L.dense_mlp(self.K, lw, xs[r], tms[r])
                self._flush(tms, events, li, {})
                if tick:
                    tick()
                continue
            routed = [None] * self.nranks
            for r in self.owned:
                with tms[r].segment("router"):
                    routed[r] = L.route(self.K, lw, xs[r], moe, tms[r], allowed)
            routed = self._routed(routed)
            self.routing.append([(ri[0], ri[1]) for ri in routed])
            loads, shared_tokens = self._moe(lw, li, routed, xs, tms, events)
            self._flush(tms, events, li, loads, shared_tokens=shared_tokens)
            if tick:
                tick()
        logits = [None] * self.nranks
        for r in self.owned:
            with tms[r].segment("head"):
                logits[r] = L.lm_head(self.K, self.W, xs[r], tms[r])
        self._flush(tms, events, len(self.W.layers), {}, head=True)
        if tick:
            tick()
        wall = time.perf_counter() - t0
        out, lg = self._gather(xs), self._gather(logits)
        return PhaseResult(self.phase, self.nranks, self.nranks * self.T, out, lg, events, self._segments,
                           wall_s=wall, expert_rows=self.expert_rows)

    def _gather(self, per_rank):
        """The ranks' tensors in rank order; across processes every slot is filled by its owner (a sum of
        the owner's values and zeros, which is exact)."""
        t = torch()
        if self.allreduce is None:
            return t.cat(per_rank)
        like = next(x for x in per_rank if x is not None)
        full = t.zeros(self.nranks * self.T, *like.shape[1:], dtype=like.dtype, device=like.device)
        for r in self.owned:
            full[r * self.T:(r + 1) * self.T] = per_rank[r]
        self.allreduce(full)
        return full

    def _routed(self, routed):
        """Every process learns every rank's routed tokens (normed hidden, expert ids, weights)."""
        if self.allreduce is None:
            return routed
        hn = self._gather([r[0] if r else None for r in routed]).split(self.T)
        idx = self._gather([r[1] if r else None for r in routed]).split(self.T)
        w = self._gather([r[2] if r else None for r in routed]).split(self.T)
        return [(hn[r], idx[r], w[r], None) for r in range(self.nranks)]

    def _moe(self, lw, li, routed, xs, tms, events):
        """Dispatch every (token, expert) row to the rank holding (a replica of) its expert and every token to
        its shared-expert rank, compute there, combine back weighted by the router."""
        t = torch()
        n, T, E = self.nranks, self.T, self.model.moe.routed_experts
        dev = self.device
        hn = t.cat([ri[0] for ri in routed])
        idx = t.cat([ri[1] for ri in routed])
        w = t.cat([ri[2] for ri in routed])
        N, k = idx.shape
        gid = t.arange(N, device=dev)
        src = gid // T
        tab, nrep = self.router.tables(E, dev)
        dest = tab[idx, gid[:, None] % nrep[idx]]  # [N, k]
        sdest = self.router.shared_tensor(n, dev)[src]  # [N]
        onehot = t.zeros(N, n, dtype=t.bool, device=dev)
        onehot.scatter_(1, dest, True)
        onehot[gid, sdest] = True
        onehot[gid, src] = False
        send = t.zeros(n, dtype=t.long, device=dev).index_add_(0, src, onehot.sum(1)).tolist()
        recv = onehot.sum(0).tolist()
        key = (dest * E + idx).flatten()
        order = t.argsort(key, stable=True)
        counts = t.bincount(key, minlength=n * E).tolist()
        rows_g = order // k  # token of each sorted row
        rows_k = order % k
        # real movement: each destination gets its own buffer of the rows it receives
        bufs, spans, off = {}, {}, 0
        for kk, c in enumerate(counts):
            if c:
                sel = rows_g[off:off + c]
                bufs[divmod(kk, E)] = hn.index_select(0, sel).clone()
                spans[divmod(kk, E)] = (sel, rows_k[off:off + c])
                off += c
        if self.fill is not None:  # pre-dispatched up to the plan's tokens per expert; routed rows first
            P = self.expert_rows
            for d in self.owned:
                for e in self.pool.placement.ranks[d]:
                    have = bufs.get((d, e))
                    c = 0 if have is None else int(have.shape[0])
                    if c < P:
                        bufs[(d, e)] = self.fill[:P].clone() if have is None else t.cat([have, self.fill[:P - c]])
        sbuf = {}
        for d in range(n):
            sel = (sdest == d).nonzero().flatten()
            if len(sel):
                sbuf[d] = (sel, hn.index_select(0, sel).clone())
        self._comm(events, li, "dispatch", send, recv)
        out = t.zeros(N, self.model.hidden, dtype=hn.dtype, device=dev)
        loads = {}
        for d in self.owned:
            mine = list(self.pool.placement.ranks[d])
            groups = [(e, bufs[(d, e)]) for e in mine if (d, e) in bufs]
            with tms[d].segment("experts"):  # the rank's routed and shared experts over the rows it received
                ys = L.experts(self.K, lw, groups, tms[d]) if groups else []
                shared = L.shared_expert(self.K, lw, sbuf[d][1], tms[d]) if d in sbuf else None
            loads[d] = [int(bufs[(d, e)].shape[0]) if (d, e) in bufs else 0 for e in mine]
            for (e, _), y in zip(groups, ys):
                if (d, e) not in spans:  # fill rows only
                    continue
                sel, kk = spans[(d, e)]
                out.index_add_(0, sel, (w[sel, kk][:, None] * y[: len(sel)].float()).to(out.dtype))
            if shared is not None:
                out.index_add_(0, sbuf[d][0], shared)
        if self.allreduce is not None:  # combine across processes: each token's partial outputs are summed
            self.allreduce(out)
        self._comm(events, li, "combine", recv, send)
        for r, o in enumerate(out.split(T)):
            if r in self.owned:
                xs[r] = xs[r] + o
        return loads, {d: int(sbuf[d][0].numel()) if d in sbuf else 0 for d in range(n)}

    # ------------------------------------------------------------------ timeline bookkeeping
    def _flush(self, tms, events, layer, loads, shared_tokens=None, head=False):
        from cmtwin.executor.predict import predicted_ops

        for r, tm in enumerate(tms):
            for seg, sec in tm.segments:
                self._segments.append((r, seg, sec * 1e6, layer))
            tm.segments.clear()
            if not tm.events:
                continue
            st = (shared_tokens or {}).get(r, 0)
            key = (layer, tuple(loads.get(r) or ()), st, head)
            self.layer_keys[(r, layer)] = key
            pred = self._predicted.get(key)
            if pred is None:  # a rank's load repeats over the passes: cost each distinct layer once
                pred = self._predicted[key] = predicted_ops(self, tokens=self.T, layer=layer, loads=loads.get(r),
                                                            shared_tokens=st, head=head)
            for op, sec in tm.events:
                events.append((r, op, "compute", sec * 1e6, pred.get(op), layer))
            tm.events.clear()

    def _comm(self, events, layer, kind, send, recv):
        from cmtwin.twin import comm

        if self.nranks < 2:
            return
        msg = self.comm_prec.message_bytes(kind, self.model.hidden)
        for r in self.owned:
            c = comm.dispatch_combine(self.hw_comm, self.fabric, self.die_ids, kind=kind, send_copies=send[r],
                                      recv_copies=recv[r], msg_bytes=msg)
            events.append((r, kind, "comm", c.us, c.us, layer))

    # ------------------------------------------------------------------ single-device reference
    def reference(self, dist: PhaseResult):
        """All tokens on one device: MHA-form decode / absorbed-form prefill attention, every expert over all
        its tokens, the shared expert over all tokens. Expert choices are its own; where they differ from the
        distributed run's only by a near-tie of biased scores (round-off), the distributed choice is adopted
        and counted."""
        t = torch()
        moe, att = self.model.moe, self.model.attention
        K = self.K
        tol = TIE_TOL[self.ex.dtype]
        allowed = self.router.allowed(moe.routed_experts, self.device) if self.nranks < self.pool.dies else None
        x = t.cat(self.x)
        ties = 0
        mi = 0
        for li, lw in enumerate(self.W.layers):
            if lw.mtp:
                x = L.mtp_input(K, self.W, x, t.cat(self.emb))
            if self.phase == "decode":
                c = t.cat([cp[0] for cp in self.cache[li]])
                pe = t.cat([cp[1] for cp in self.cache[li]])
                x = L.attention_decode(K, lw, x, self.pos.repeat(self.nranks), c, pe, att, absorbed=False)
            else:  # one prompt per rank: the chunks stay separate sequences
                x = t.cat([L.attention_prefill(K, lw, xr, self.pos, att, absorbed=True)
                           for xr in x.split(self.T)])
            if lw.dense:
                x = L.dense_mlp(K, lw, x)
                continue
            hn, idx, w, biased = L.route(K, lw, x, moe, allowed=allowed)
            dhn = t.cat([r[0] for r in self.routing[mi]])
            didx = t.cat([r[1] for r in self.routing[mi]])
            mi += 1
            diff = (idx.sort(-1).values != didx.sort(-1).values).any(-1)
            if diff.any():
                s = t.sigmoid(hn.float() @ lw.router)
                dbiased = t.sigmoid(dhn.float() @ lw.router) + lw.bias
                for j in diff.nonzero().flatten().tolist():
                    # each score moved by at most delta between the runs, a group score (two experts) by 2 delta:
                    # a choice within 4 delta of the reference's is explained by the round-off itself
                    moved = (biased[j] - dbiased[j]).abs()
                    delta = float(moved[moved.isfinite()].max())
                    if not near_tie(biased[j], didx[j], groups=moe.groups, topk_groups=moe.topk_groups,
                                     slack=max(tol, 4 * delta)):
                        raise CmtwinError(f"numerics: the distributed run routed token {j} to experts "
                                          f"{didx[j].tolist()}, the reference to {idx[j].tolist()}; the scores "
                                          f"differ by more than the runs' round-off (max score change "
                                          f"{delta:.2e}), so this is no near-tie. Scores (reference/distributed) "
                                          f"of the experts in dispute: {_disputed(biased[j], dbiased[j], idx[j], didx[j])}.")
                    idx[j] = didx[j]
                    wj = s[j].gather(0, didx[j])
                    w[j] = wj / wj.sum() * L.ROUTED_SCALING
                    ties += 1
            y = t.zeros_like(x)
            for e in sorted(lw.w_gu):
                sel = (idx == e).nonzero()
                if len(sel) == 0:
                    continue
                tok, slot = sel[:, 0], sel[:, 1]
                ye = L.experts(K, lw, [(e, hn[tok])])[0]
                y.index_add_(0, tok, (w[tok, slot][:, None] * ye.float()).to(y.dtype))
            y = y + L.shared_expert(K, lw, hn)
            x = x + y
        logits = L.lm_head(K, self.W, x)
        a, b = dist.out.float(), x.float()
        rel = ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)).max().item()
        la, lb = dist.logits.float(), logits.float()
        rel = max(rel, ((la - lb).norm(dim=-1) / lb.norm(dim=-1).clamp_min(1e-30)).max().item())
        dist.max_rel_err = rel
        dist.ties = ties
        return rel
