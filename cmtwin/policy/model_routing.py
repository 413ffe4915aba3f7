"""Routing between models or model parts: Duo-LLM (per-layer skip / small FFN / big FFN).

Duo-LLM (2024) gives every layer a big FFN and a small one; a router sends each token, per layer, to skip the
FFN, the small FFN or the big FFN; attention always runs. The twin takes the route distribution (a user
input: the oracle routes in the paper use the big FFN for a minority of token-layers) and scales the tokens
each run layer's FFN/MoE processes by p_small x small_ratio + p_big (the small FFN as a fraction of the big
one's work), and adds the per-layer router (hidden x 3 GEMV) to the breakdown as 'duo_router'.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from cmtwin.config.base import Frozen
from cmtwin.policy.effects import StepEffect
from cmtwin.policy.registry import registry

REG = registry("model_routing")


class DuoParams(Frozen):
    """Route distribution over {skip, small, big} per token and layer."""

    p_skip: float = Field(default=0.2, ge=0, le=1)
    """Share of token-layers that skip the FFN (user input, 0-0.5)."""
    p_small: float = Field(default=0.4, ge=0, le=1)
    """Share through the small FFN (user input, 0-1)."""
    p_big: float = Field(default=0.4, ge=0, le=1)
    """Share through the big FFN; the three shares sum to 1."""
    small_ratio: float = Field(default=0.25, gt=0, le=1)
    """Small FFN's work as a fraction of the big FFN's (its intermediate width ratio, 0.125-0.5)."""

    @model_validator(mode="after")
    def _sum(self):
        s = self.p_skip + self.p_small + self.p_big
        if abs(s - 1.0) > 1e-6:
            raise ValueError(f"p_skip + p_small + p_big = {self.p_skip} + {self.p_small} + {self.p_big} = {s:.4f} != 1")
        return self


@REG.register("duo")
class DuoLLM:
    """Duo-LLM route mix as an FFN work multiplier plus a router per layer."""

    Params = DuoParams

    def __init__(self, params: DuoParams):
        self.params = params

    @property
    def ffn_scale(self) -> float:
        return self.params.p_small * self.params.small_ratio + self.params.p_big

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        from cmtwin.model.operators import gemm

        extra = ()
        if plan is not None and plan.pools_of("decode"):
            pool = plan.pools_of("decode")[0]
            verify = 1 + spec.mtp.draft_tokens
            t = max(1, pool.batch_per_die * verify)
            extra = (("duo", gemm("duo_router", t, spec.model.hidden, 3, "bf16"),
                      spec.model.layers),)
        return StepEffect(ffn_scale=self.ffn_scale, extra_ops=extra)
