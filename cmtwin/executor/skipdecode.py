"""SkipDecode on a tiny random model with a per-layer KV cache: the KV invariant, checked while decoding.

A token at position t runs layers [L - budget[t], L) (the LOWEST layers are skipped; the embedding feeds the
first layer it runs) and writes KV only for those layers. At every layer it runs, attention reads the KV of
all earlier positions at that layer. With a non-increasing budget every earlier token ran that layer too, so
the KV is there; an increasing budget makes a later token run a lower layer that an earlier token skipped,
and `SkipDecodeRunner` raises KVInvariantError naming the layer and the missing positions.
torch is imported lazily.
"""

from __future__ import annotations


class KVInvariantError(RuntimeError):
    """A token runs a layer for which an earlier token wrote no KV."""


def invariant_violations(budgets: list[int], layers: int) -> list[tuple[int, int, list[int]]]:
    """(position, layer, earlier positions without KV there) for every violation of a budget sequence."""
    out = []
    for t, b in enumerate(budgets):
        for layer in range(layers - b, layers):
            missing = [s for s in range(t) if layer < layers - budgets[s]]
            if missing:
                out.append((t, layer, missing))
    return out


class SkipDecodeRunner:
    """Token-by-token decoding with a per-layer KV cache and per-position layer budgets."""

    def __init__(self, layers: int = 4, dim: int = 16, vocab: int = 32, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.L, self.dim = layers, dim

        def w(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64) / shape[0] ** 0.5

        self.emb = w(vocab, dim) * dim ** 0.5
        self.blocks = [dict(q=w(dim, dim), k=w(dim, dim), v=w(dim, dim), o=w(dim, dim), up=w(dim, 2 * dim),
                            down=w(2 * dim, dim)) for _ in range(layers)]
        self.kv: list[dict[int, tuple]] = [dict() for _ in range(layers)]  # layer -> position -> (k, v)

    def step(self, token: int, position: int, budget: int):
        """Run one token through layers [L - budget, L); returns its final hidden state."""
        import torch

        if not 1 <= budget <= self.L:
            raise ValueError(f"budget {budget} outside 1..{self.L}")
        x = self.emb[token]
        for layer in range(self.L - budget, self.L):
            b = self.blocks[layer]
            missing = [s for s in range(position) if s not in self.kv[layer]]
            if missing:
                raise KVInvariantError(f"position {position} runs layer {layer} but positions {missing} wrote no KV "
                                       f"there (the budget increased)")
            h = torch.nn.functional.layer_norm(x, (self.dim,))
            q, k, v = h @ b["q"], h @ b["k"], h @ b["v"]
            self.kv[layer][position] = (k, v)
            ks = torch.stack([self.kv[layer][s][0] for s in range(position + 1)])
            vs = torch.stack([self.kv[layer][s][1] for s in range(position + 1)])
            att = torch.softmax(ks @ q / self.dim ** 0.5, dim=0)
            x = x + (att @ vs) @ b["o"]
            h = torch.nn.functional.layer_norm(x, (self.dim,))
            x = x + torch.nn.functional.gelu(h @ b["up"]) @ b["down"]
        return x

    def run(self, tokens: list[int], budgets: list[int]):
        """Decode `tokens` one by one with `budgets` (one per position); returns the stacked hidden states."""
        import torch

        return torch.stack([self.step(tok, t, budgets[t]) for t, tok in enumerate(tokens)])

    def full_forward(self, tokens: list[int]):
        """Reference: all layers for all positions in one causal pass (no cache)."""
        import torch

        x = self.emb[torch.tensor(tokens)]
        n = len(tokens)
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        for b in self.blocks:
            h = torch.nn.functional.layer_norm(x, (self.dim,))
            q, k, v = h @ b["q"], h @ b["k"], h @ b["v"]
            s = (q @ k.T / self.dim ** 0.5).masked_fill(~mask, float("-inf"))
            x = x + (torch.softmax(s, dim=-1) @ v) @ b["o"]
            h = torch.nn.functional.layer_norm(x, (self.dim,))
            x = x + torch.nn.functional.gelu(h @ b["up"]) @ b["down"]
        return x
