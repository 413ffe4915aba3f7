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
from cmtwin.twin.effects import StepEffect
from cmtwin.policy.registry import Policy, registry

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
class DuoLLM(Policy):
    """Duo-LLM route mix as an FFN work multiplier plus a router per layer."""

    Params = DuoParams

    params: DuoParams

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


class R2RParams(Frozen):
    """A small and a large model; a router escalates a fraction of tokens to the large one."""

    large_fraction: float = Field(default=0.1, gt=0, le=1)
    """Share of generated tokens the router sends to the large model (user input; R2R reports ~5-15 %)."""
    small_layer_fraction: float = Field(default=0.25, gt=0, le=1)
    """The small model as a scaled-down copy of the deployment's model: its share of the layers (0.05-0.5)."""
    small_ffn_fraction: float = Field(default=0.25, gt=0, le=1)
    """... and of each layer's FFN/MoE work (0.05-1); its weights scale by layers x this (attention by layers)."""


@REG.register("r2r")
class R2R(Policy):
    """R2R (roads to rome): the small model decodes every token; for a `large_fraction` of them the large model
    runs and first prefills every token since its last call (1 / large_fraction tokens per call on average).
    Per step of b requests: a small-model decode step over b, plus a large-model pass over b x f requests with
    1 / f tokens each (the same token count as b, but a KV read per request only for the escalated ones).
    Both models stay resident on the decode dies. The decode headline stays the large model's own step; the
    R2R figures are in this policy's table and the breakdown rows `r2r_small` and `r2r_large`."""

    Params = R2RParams

    params: R2RParams

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        return StepEffect()

    def breakdown_rows(self, table: list[dict]) -> list:
        """The two models' passes per step, in the decode breakdown."""
        from cmtwin.twin.breakdown import Row

        return [row for t in table for row in (
            Row("decode", "r2r_small", "small_model_step", t["small_step_ms"] * 1e3, "compute", 1),
            Row("decode", "r2r_large", "large_model_pass", t["large_step_ms"] * 1e3, "compute", 1))]

    def table(self, spec, plan, hw, fabric) -> list[dict]:
        from cmtwin.twin.step import decode_step

        pp = self.params
        pool = plan.pools_of("decode")[0]
        b = pool.batch_per_die
        f = pp.large_fraction
        base = decode_step(spec, plan, hw, fabric)
        small = decode_step(spec, plan, hw, fabric, effect=StepEffect(
            layer_fraction=pp.small_layer_fraction, ffn_scale=pp.small_ffn_fraction, draft_tokens=0,
            verify_tokens=1, tokens_per_step=1.0))
        large_reqs = max(1, round(b * f))
        large = decode_step(spec, plan, hw, fabric, batch_per_die=large_reqs, effect=StepEffect(
            draft_tokens=0, verify_tokens=max(1, round(1 / f)), tokens_per_step=1.0))
        step_us = small.step_us + large.step_us
        mem = pool.to_dict()["memory_per_die"]
        mem = next(iter(mem.values())) if isinstance(mem, dict) and "weights_gib" not in mem else mem
        w = mem.get("weights_gib", 0.0)
        small_w = (mem.get("weights_attention_gib", 0.0) * pp.small_layer_fraction
                   + (w - mem.get("weights_attention_gib", 0.0)) * pp.small_layer_fraction * pp.small_ffn_fraction)
        dpd = spec.hardware.dies
        return [{
            "large_fraction": f, "small_step_ms": round(small.step_us / 1e3, 3),
            "large_step_ms": round(large.step_us / 1e3, 3), "large_requests_per_die": large_reqs,
            "large_tokens_per_call": max(1, round(1 / f)), "step_ms": round(step_us / 1e3, 3),
            "tpot_ms": round(step_us / 1e3, 3), "tokens_per_s_per_device": round(dpd * b / (step_us / 1e6), 1),
            "large_only_tokens_per_s_per_device": round(base.tokens_per_s_per_device, 1),
            "small_weights_gib_per_die": round(small_w, 3), "large_weights_gib_per_die": round(w, 3),
            "selected": True,
        }]
