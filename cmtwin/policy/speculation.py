"""Speculative decoding as one family: MTP drafts and parallel prompt decoding (PPD).

- `mtp`: k sequential passes of the model's MTP module draft k tokens; the main model verifies k + 1 tokens per
  request; at per-draft acceptance a a step yields (1 - a^(k+1)) / (1 - a) tokens (mirrors the mtp.* keys).
- `ppd` (Chen et al., 2024, "Hardware-aware parallel prompt decoding"): m trained prompt tokens appended to the
  input draft m future tokens in the SAME forward pass that verifies the previous draft tree, so there is no
  separate draft pass. The candidates form a dynamic sparse tree: nodes are added greedily by path probability
  (depth d, rank i: top-1 acceptance acc[d] times rank_decay^i, times the parent's) up to N nodes. A step
  verifies 1 + N + m tokens per request and yields 1 + sum(path probabilities) tokens. With tree_tokens=0 the
  tree is sized for the hardware: the twin evaluates each candidate N and keeps the one with the most
  tokens/s per device (small trees on compute-rich, large on memory-bound decode).
Acceptance figures are paper estimates; they are user inputs with documented ranges.
"""

from __future__ import annotations

import heapq
from typing import Annotated, Protocol

from pydantic import Field

from cmtwin.config.base import Frozen
from cmtwin.config.schema import mtp_tokens_per_step
from cmtwin.twin.effects import StepEffect
from cmtwin.policy.registry import Policy, registry

REG = registry("speculation")


class Speculation(Protocol):
    """A family member: draft width, verify width and expected tokens per step."""

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect: ...


class MTPParams(Frozen):
    """MTP drafting (DeepSeek-V3's multi-token prediction module)."""

    draft_tokens: int = Field(default=1, ge=1, le=4)
    """Draft tokens per step (1-4; each is one sequential pass of the MTP module)."""
    acceptance: float = Field(default=0.7, ge=0, le=1)
    """Per-draft acceptance probability (user input; DeepSeek reports 0.85-0.9 for the 1st draft, 0.7 is conservative)."""


@REG.register("mtp")
class MTP(Policy):
    """MTP drafts verified by the main model; the MTP module's passes are charged on stream 'mtp'."""

    Params = MTPParams

    params: MTPParams

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        k, a = self.params.draft_tokens, self.params.acceptance
        return StepEffect(draft_tokens=k, verify_tokens=1 + k, tokens_per_step=mtp_tokens_per_step(k, a))


class PPDParams(Frozen):
    """Parallel prompt decoding with a dynamic sparse tree."""

    prompt_tokens: int = Field(default=3, ge=1, le=8)
    """Prompt tokens m appended per step = maximum draft depth (the paper uses 1-3)."""
    acceptance: tuple[Annotated[float, Field(ge=0, le=1)], ...] = Field(default=(0.6, 0.45, 0.35), min_length=1)
    """Top-1 acceptance of the prompt-token draft at depth 1..m (user input, 0.2-0.8; the paper's Vicuna
    figures fall with depth); missing depths repeat the last value."""
    rank_decay: float = Field(default=0.35, gt=0, lt=1)
    """The i-th ranked candidate at a depth is right with top-1 x rank_decay^i (0.1-0.6)."""
    tree_tokens: int = Field(default=0, ge=0, le=256)
    """Tree nodes N verified per step; 0 = sized for the hardware from candidate_sizes."""
    candidate_sizes: tuple[Annotated[int, Field(ge=1, le=256)], ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
    """Tree sizes the hardware sizing considers."""


def sparse_tree(n: int, acceptance: tuple[float, ...], depth: int, decay: float) -> list[tuple[tuple[int, ...], float]]:
    """The n most probable nodes (path of candidate ranks, path probability), grown greedily from the root."""
    def p(d: int, i: int) -> float:
        return acceptance[min(d, len(acceptance) - 1)] * decay ** i

    heap = [(-p(0, 0), (0,), 1.0)]
    nodes: list[tuple[tuple[int, ...], float]] = []
    while heap and len(nodes) < n:
        negp, path, parent = heapq.heappop(heap)
        prob = -negp
        nodes.append((path, prob))
        # sibling (next rank at the same depth) and first child (rank 0 one level deeper)
        heapq.heappush(heap, (-parent * p(len(path) - 1, path[-1] + 1), path[:-1] + (path[-1] + 1,), parent))
        if len(path) < depth:
            heapq.heappush(heap, (-prob * p(len(path), 0), path + (0,), prob))
    return nodes


@REG.register("ppd")
class PPD(Policy):
    """Parallel prompt decoding: drafts from prompt tokens in the verify pass, a dynamic sparse tree."""

    Params = PPDParams

    params: PPDParams

    def expected_tokens(self, n: int) -> float:
        pp = self.params
        return 1.0 + sum(prob for _, prob in sparse_tree(n, pp.acceptance, pp.prompt_tokens, pp.rank_decay))

    def effect_for(self, n: int) -> StepEffect:
        return StepEffect(draft_tokens=0, verify_tokens=1 + n + self.params.prompt_tokens,
                          tokens_per_step=self.expected_tokens(n))

    def table(self, spec, plan, hw, fabric) -> list[dict]:
        """Per candidate tree size: verify width, tokens/step, step time, tokens/s/device, memory overhead."""
        from cmtwin.model.operators import kv_bytes_per_token
        from cmtwin.twin.step import decode_step

        kvb = kv_bytes_per_token(spec.model, spec.prec)
        pool = plan.pools_of("decode")[0]
        rows = []
        sizes = (self.params.tree_tokens,) if self.params.tree_tokens else self.params.candidate_sizes
        for n in sizes:
            eff = self.effect_for(n)
            r = decode_step(spec, plan, hw, fabric, effect=eff)
            rows.append({
                "tree_tokens": n, "verify_tokens": eff.verify_tokens, "tokens_per_step": round(eff.tokens_per_step, 4),
                "step_ms": round(r.step_us / 1e3, 3), "tpot_ms": round(r.tpot_ms, 3),
                "tokens_per_s_per_device": round(r.tokens_per_s_per_device, 1),
                # transient KV of the verified tree per die + the prompt-token embeddings
                "memory_overhead_mib": round((pool.batch_per_die * (eff.verify_tokens - 1) * kvb
                                              + self.params.prompt_tokens * spec.model.hidden * 2) / 2**20, 2),
            })
        best = max(rows, key=lambda x: x["tokens_per_s_per_device"])
        for x in rows:
            x["selected"] = x is best
        return rows

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        if self.params.tree_tokens or plan is None or not plan.pools_of("decode"):
            return self.effect_for(self.params.tree_tokens or 16)
        best = next(r for r in self.table(spec, plan, hw, fabric) if r["selected"])
        return self.effect_for(best["tree_tokens"])
