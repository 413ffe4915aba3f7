"""Blockwise attention with log-sum-exp merges: the kernels behind sequence-parallel prefill (Ring-Attention,
TokenRing) and prefix-shared attention, checked against one full attention.

All ranks of an SP group are simulated in one process: rank i holds the zigzag chunks i and 2N-1-i of the
sequence (so causal work is balanced). In Ring-Attention, K/V blocks move: at step s rank i attends its
queries to the keys of rank (i - s) mod N. In TokenRing, query blocks move: at step s rank (i + s) mod N
attends rank i's queries to its own keys and sends (block_out, block_lse) back to rank i. Either way every
rank merges N partial results; the merge is exact up to floating-point round-off.
"""

from __future__ import annotations


def _torch():
    import torch

    return torch


def block_attention(q, k, v, q_pos, k_pos, *, causal: bool, scale: float):
    """Attention of q against one key block: (out, lse) with lse = log sum exp of the scaled scores;
    fully masked rows give out 0 and lse -inf."""
    torch = _torch()
    s = torch.einsum("hqd,hkd->hqk", q, k) * scale
    if causal:
        s = s.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    out = torch.einsum("hqk,hkd->hqd", p, v)
    return out, lse


def merge(out1, lse1, out2, lse2):
    """Combine two partial attentions over disjoint key sets (exact log-sum-exp merge)."""
    torch = _torch()
    lse = torch.logaddexp(lse1, lse2)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    w1 = torch.exp(lse1 - safe).nan_to_num(0.0)[..., None]
    w2 = torch.exp(lse2 - safe).nan_to_num(0.0)[..., None]
    return w1 * out1 + w2 * out2, lse


def zigzag_positions(seq: int, ranks: int):
    """Global token positions held by each rank in the zigzag layout (chunks i and 2N-1-i)."""
    torch = _torch()
    if seq % (2 * ranks):
        raise ValueError(f"sequence length {seq} must divide into 2 x {ranks} chunks")
    c = seq // (2 * ranks)
    return [torch.cat([torch.arange(i * c, (i + 1) * c), torch.arange((2 * ranks - 1 - i) * c, (2 * ranks - i) * c)])
            for i in range(ranks)]


def sp_attention(q, k, v, *, ranks: int, causal: bool, schedule: str = "ring"):
    """Sequence-parallel attention of q, k, v ([heads, seq, dim]) over `ranks` simulated ranks; returns the
    output in sequence order, assembled from the ranks' merged results."""
    torch = _torch()
    heads, seq, d = q.shape
    scale = d ** -0.5
    pos = zigzag_positions(seq, ranks)
    qs = [q[:, p] for p in pos]
    ks = [k[:, p] for p in pos]
    vs = [v[:, p] for p in pos]
    outs, lses = [None] * ranks, [None] * ranks
    for step in range(ranks):
        for i in range(ranks):
            if schedule == "ring":  # K/V of rank (i - step) arrived at rank i
                j = (i - step) % ranks
            elif schedule == "tokenring":  # rank i's queries visit rank (i + step), which returns the block
                j = (i + step) % ranks
            else:
                raise ValueError(f"unknown schedule {schedule!r}")
            o, l = block_attention(qs[i], ks[j], vs[j], pos[i], pos[j], causal=causal, scale=scale)
            if outs[i] is None:
                outs[i], lses[i] = o, l
            else:
                outs[i], lses[i] = merge(outs[i], lses[i], o, l)
    result = torch.empty_like(q)
    for i, p in enumerate(pos):
        result[:, p] = outs[i]
    return result


def full_attention(q, k, v, *, causal: bool):
    """The reference: one softmax attention over the whole sequence."""
    torch = _torch()
    return torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=causal)[0]
