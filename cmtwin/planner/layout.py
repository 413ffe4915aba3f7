"""A phase instance's parallel layout: how its ranks split attention, experts and layers.

ranks = tp x attention_dp x pp (attention) = moe_tp x ep x pp (MoE). TP groups are consecutive ranks, so
they stay inside the fastest domain (a node's dies: NVLink on GPUs, one node's UB switches on CM384) whenever
tp divides the dies per node; pipeline stages are the outermost split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmtwin.model.arch import MLA, ModelSpec


@dataclass(frozen=True)
class Layout:
    ranks: int
    tp: int
    tp_mode: str  # allreduce | sp_tp_sp
    moe_tp: int
    ep: int
    pp: int

    @property
    def attention_dp(self) -> int:
        return self.ranks // (self.tp * self.pp)

    @property
    def stage_ranks(self) -> int:
        return self.ranks // self.pp

    def stage_layers(self, model: ModelSpec) -> int:
        """Transformer layers on the busiest pipeline stage."""
        return math.ceil(model.layers / self.pp)

    def kv_replication(self, model: ModelSpec) -> float:
        """How many requests' worth of KV one die holds per request of its own share, under TP attention:
        MLA's latent cache is not split by heads, so every TP rank keeps the whole group's latent (x tp);
        GQA splits its KV heads (x tp / min(tp, kv_heads))."""
        if self.tp == 1:
            return 1.0
        att = model.attention
        if isinstance(att, MLA):
            return float(self.tp)
        return self.tp / min(self.tp, att.kv_heads)

    def to_dict(self) -> dict:
        return {"ranks": self.ranks, "tp": self.tp, "tp_mode": self.tp_mode, "attention_dp": self.attention_dp,
                "moe_tp": self.moe_tp, "ep": self.ep, "pp": self.pp}


def layout_of(phase_spec, devices: int, dies_per_device: int) -> Layout:
    return Layout(ranks=devices * dies_per_device, tp=phase_spec.tp, tp_mode=phase_spec.tp_mode,
                  moe_tp=phase_spec.moe_tp, ep=phase_spec.ep, pp=phase_spec.pp)
