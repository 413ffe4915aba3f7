"""Exact tree verification for speculative decoding (PPD-style draft trees), on a tiny random model.

`TinyLM` is a small causal transformer (float64, torch) whose forward takes an explicit attention mask and
position ids, so one pass can verify a whole draft tree: every tree node attends to the prefix and its own
ancestors, at position len(prefix) + depth. `tree_greedy_decode` drafts a sparse tree (the shape from
cmtwin.policy.speculation.sparse_tree, candidates from a noisy copy of the model standing in for PPD's prompt
tokens), verifies it in one pass, accepts the longest path whose every token equals the model's greedy choice,
and appends the model's next token after it. Its output must equal plain greedy decoding token for token.
torch is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass


def _torch():
    import torch

    return torch


class TinyLM:
    """Embedding, `layers` pre-norm single-head attention + MLP blocks, tied LM head; float64."""

    def __init__(self, vocab: int = 32, dim: int = 16, layers: int = 2, seed: int = 0, max_pos: int = 256):
        torch = _torch()
        g = torch.Generator().manual_seed(seed)

        def w(*shape, scale=1.0):
            return torch.randn(*shape, generator=g, dtype=torch.float64) * scale / shape[0] ** 0.5

        self.vocab, self.dim, self.layers = vocab, dim, layers
        self.emb = w(vocab, dim, scale=float(vocab) ** 0.5)
        self.pos = w(max_pos, dim, scale=float(max_pos) ** 0.5 * 0.3)
        self.blocks = [dict(q=w(dim, dim), k=w(dim, dim), v=w(dim, dim), o=w(dim, dim), up=w(dim, 4 * dim),
                            down=w(4 * dim, dim)) for _ in range(layers)]

    def perturbed(self, noise: float, seed: int) -> TinyLM:
        """A copy with Gaussian noise on every weight (a cheap, imperfect drafter)."""
        torch = _torch()
        g = torch.Generator().manual_seed(seed)
        other = TinyLM.__new__(TinyLM)
        other.vocab, other.dim, other.layers = self.vocab, self.dim, self.layers
        other.emb = self.emb + noise * torch.randn(self.emb.shape, generator=g, dtype=torch.float64)
        other.pos = self.pos
        other.blocks = [{k: v + noise * torch.randn(v.shape, generator=g, dtype=torch.float64) / v.shape[0] ** 0.5
                         for k, v in b.items()} for b in self.blocks]
        return other

    def forward(self, tokens, positions, allowed):
        """Logits [T, vocab] for tokens [T] at positions [T]; allowed[i, j]: token i may attend to token j."""
        torch = _torch()
        x = self.emb[tokens] + self.pos[positions]
        neg = torch.full(allowed.shape, float("-inf"), dtype=torch.float64)
        bias = torch.where(allowed, torch.zeros_like(neg), neg)
        for b in self.blocks:
            h = torch.nn.functional.layer_norm(x, (self.dim,))
            q, k, v = h @ b["q"], h @ b["k"], h @ b["v"]
            att = torch.softmax(q @ k.T / self.dim ** 0.5 + bias, dim=-1)
            x = x + (att @ v) @ b["o"]
            h = torch.nn.functional.layer_norm(x, (self.dim,))
            x = x + torch.nn.functional.gelu(h @ b["up"]) @ b["down"]
        return torch.nn.functional.layer_norm(x, (self.dim,)) @ self.emb.T

    def causal_logits(self, seq: list[int]):
        torch = _torch()
        n = len(seq)
        return self.forward(torch.tensor(seq), torch.arange(n), torch.ones(n, n, dtype=torch.bool).tril())


def greedy_decode(model: TinyLM, prompt: list[int], new_tokens: int) -> tuple[list[int], int]:
    """Plain greedy decoding: one forward per token. Returns (generated tokens, forward passes)."""
    seq = list(prompt)
    for _ in range(new_tokens):
        seq.append(int(model.causal_logits(seq)[-1].argmax()))
    return seq[len(prompt):], new_tokens


@dataclass(frozen=True)
class TreeNode:
    token: int
    parent: int  # index in the node list; -1: the root (the last committed token)
    depth: int  # 1 for children of the root


def draft_tree(drafter: TinyLM, seq: list[int], shape: list[tuple[int, ...]]) -> list[TreeNode]:
    """Tokens for a tree shape (paths of candidate ranks): rank r at a node is the drafter's r-th choice
    after the prefix and the node's ancestors. Parents precede children in the returned list."""
    index: dict[tuple[int, ...], int] = {}
    nodes: list[TreeNode] = []
    for path in sorted(shape, key=len):
        parent = index.get(path[:-1], -1) if len(path) > 1 else -1
        if len(path) > 1 and path[:-1] not in index:
            continue  # its parent is not in the tree
        ctx = list(seq)
        p = parent
        anc = []
        while p >= 0:
            anc.append(nodes[p].token)
            p = nodes[p].parent
        ctx += anc[::-1]
        order = drafter.causal_logits(ctx)[-1].argsort(descending=True)
        index[path] = len(nodes)
        nodes.append(TreeNode(int(order[path[-1]]), parent, len(path)))
    return nodes


def verify_tree(model: TinyLM, seq: list[int], nodes: list[TreeNode]) -> list[int]:
    """One forward over prefix + tree with a tree mask; returns the accepted tokens plus the model's next one."""
    torch = _torch()
    n, t = len(seq), len(nodes)
    tokens = torch.tensor(seq + [nd.token for nd in nodes])
    positions = torch.tensor(list(range(n)) + [n - 1 + nd.depth for nd in nodes])
    allowed = torch.zeros(n + t, n + t, dtype=torch.bool)
    allowed[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()  # the prefix: causal
    allowed[n:, :n] = True  # every tree node sees the whole prefix
    for i, nd in enumerate(nodes):
        j = i
        while j >= 0:
            allowed[n + i, n + j] = True
            j = nodes[j].parent
    logits = model.forward(tokens, positions, allowed)
    greedy = logits.argmax(dim=-1)
    # walk: from the root (row n - 1), take the child whose token equals the greedy choice
    out, row, cur = [], n - 1, -1
    while True:
        want = int(greedy[row])
        child = next((i for i, nd in enumerate(nodes) if nd.parent == cur and nd.token == want), None)
        out.append(want)
        if child is None:
            return out
        row, cur = n + child, child


def tree_greedy_decode(model: TinyLM, drafter: TinyLM, prompt: list[int], new_tokens: int,
                       shape: list[tuple[int, ...]]) -> tuple[list[int], int]:
    """Greedy decoding with draft-tree verification. Returns (generated tokens, verify passes)."""
    seq = list(prompt)
    passes = 0
    while len(seq) - len(prompt) < new_tokens:
        nodes = draft_tree(drafter, seq, shape)
        seq += verify_tree(model, seq, nodes)
        passes += 1
    return seq[len(prompt):len(prompt) + new_tokens], passes
