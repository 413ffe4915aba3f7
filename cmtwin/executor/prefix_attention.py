"""Prefix-shared attention (BatchLLM's kernel): the requests of a prefix group share one prefix KV; the
queries of all their suffix tokens attend the prefix once, as one batch (every suffix token sees the whole
prefix, no mask), then each request's queries attend its own suffix causally, and the two partial results
are combined by the exact log-sum-exp merge of cmtwin/executor/blockwise.py. The result equals per-request
attention over prefix + suffix up to floating-point round-off (tests/test_policy_batching.py).
"""

from __future__ import annotations

from cmtwin.executor.blockwise import block_attention, merge


def prefix_shared_attention(q_suffixes, k_prefix, v_prefix, k_suffixes, v_suffixes, *, scale: float | None = None):
    """q_suffixes[i], k_suffixes[i], v_suffixes[i]: request i's suffix tokens ([heads, len_i, dim]); k_prefix,
    v_prefix: the shared prefix ([heads, P, dim]). Returns each request's attention output ([heads, len_i, dim]),
    its suffix positions being P .. P + len_i - 1 (causal inside the suffix, the whole prefix visible)."""
    import torch

    dim = k_prefix.shape[-1]
    scale = dim ** -0.5 if scale is None else scale
    plen = k_prefix.shape[1]
    lens = [q.shape[1] for q in q_suffixes]
    # 1) the prefix once: all suffix queries of the group in one batch against the shared prefix KV
    q_all = torch.cat(list(q_suffixes), dim=1)
    zeros = torch.zeros(q_all.shape[1], dtype=torch.long)
    out_p, lse_p = block_attention(q_all, k_prefix, v_prefix, zeros, torch.zeros(plen, dtype=torch.long),
                                   causal=False, scale=scale)
    outs = []
    start = 0
    for q, k, v, n in zip(q_suffixes, k_suffixes, v_suffixes, lens):
        # 2) each request's suffix, causal, then 3) the exact merge with its rows of the prefix result
        pos = torch.arange(plen, plen + n)
        out_s, lse_s = block_attention(q, k, v, pos, pos, causal=True, scale=scale)
        out, _ = merge(out_p[:, start:start + n], lse_p[:, start:start + n], out_s, lse_s)
        outs.append(out)
        start += n
    return outs


def per_request_attention(q_suffixes, k_prefix, v_prefix, k_suffixes, v_suffixes, *, scale: float | None = None):
    """The reference: each request alone over its prefix + suffix (the prefix's KV copied per request)."""
    import torch

    dim = k_prefix.shape[-1]
    scale = dim ** -0.5 if scale is None else scale
    plen = k_prefix.shape[1]
    outs = []
    for q, k, v in zip(q_suffixes, k_suffixes, v_suffixes):
        n = q.shape[1]
        kk, vv = torch.cat([k_prefix, k], dim=1), torch.cat([v_prefix, v], dim=1)
        s = torch.einsum("hqd,hkd->hqk", q, kk) * scale
        qpos = torch.arange(plen, plen + n)
        kpos = torch.arange(plen + n)
        s = s.masked_fill(kpos[None, None, :] > qpos[None, :, None], float("-inf"))
        outs.append(torch.einsum("hqk,hkd->hqd", torch.softmax(s, dim=-1), vv))
    return outs
