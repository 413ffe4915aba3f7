"""BatchLLM (issue 7 item 3): the exact prefix-shared attention kernel."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_prefix_shared_attention_matches_per_request(dtype, tol):
    from cmtwin.executor.prefix_attention import per_request_attention, prefix_shared_attention

    g = torch.Generator().manual_seed(7)
    heads, dim, plen = 4, 32, 37
    lens = [1, 5, 16, 9]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    kp, vp = rnd(heads, plen, dim), rnd(heads, plen, dim)
    qs = [rnd(heads, n, dim) for n in lens]
    ks = [rnd(heads, n, dim) for n in lens]
    vs = [rnd(heads, n, dim) for n in lens]
    got = prefix_shared_attention(qs, kp, vp, ks, vs)
    ref = per_request_attention(qs, kp, vp, ks, vs)
    for a, b, n in zip(got, ref, lens):
        assert a.shape == (heads, n, dim)
        assert torch.allclose(a, b, atol=tol, rtol=tol)
    # and the reference itself is plain softmax attention (SDPA with the same causal offset)
    q, k, v = qs[2], torch.cat([kp, ks[2]], 1), torch.cat([vp, vs[2]], 1)
    mask = torch.ones(lens[2], plen + lens[2], dtype=torch.bool).tril(diagonal=plen)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]
    assert torch.allclose(ref[2], sdpa, atol=tol, rtol=tol)
