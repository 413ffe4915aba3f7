"""The policy-effect protocol (a leaf the twin defines and policies implement): one mechanism through which
selected policies change the twin's decode step.

Every policy of the speculation, layer_skip, model_routing and token_transform families has
`step_effect(spec) -> StepEffect`. `combined_effect(spec)` folds the selected ones (families in a fixed
order) into one StepEffect; `cmtwin/twin/step.py` applies it in one place. The identity effect leaves the
step exactly as without policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

STEP_FAMILIES = ("speculation", "layer_skip", "model_routing", "token_transform")


@dataclass(frozen=True)
class StepEffect:
    """How policies change one decode step (all defaults = no change)."""

    layer_fraction: float = 1.0
    """Fraction of the main model's layers the batch runs per step (the lowest are skipped first)."""
    ffn_scale: float = 1.0
    """Multiplier on the tokens that go through each run layer's FFN / MoE (route mix of skip/small/big)."""
    draft_tokens: int | None = None
    """MTP drafts per step (None: the spec's mtp.draft_tokens)."""
    verify_tokens: float | None = None
    """Tokens per request the main model verifies per step (None: 1 + drafts)."""
    tokens_per_step: float | None = None
    """Expected accepted tokens per request and step (None: the spec's MTP formula)."""
    kv_len_scale: float = 1.0
    """Multiplier on the context length (tokenizer compression shortens it)."""
    text_per_token: float = 1.0
    """Text tokens (of the reference tokenizer) carried by one model token; scales reported throughput."""
    kv_bytes_scale: float = 1.0
    """Multiplier on KV bytes per token (layers whose KV a token does not write)."""
    extra_ops: tuple = field(default_factory=tuple)
    """(stream, Op, calls) rows added to the step (draft heads, routers, image decoders)."""

    def then(self, other: StepEffect) -> StepEffect:
        return StepEffect(
            layer_fraction=self.layer_fraction * other.layer_fraction,
            ffn_scale=self.ffn_scale * other.ffn_scale,
            draft_tokens=other.draft_tokens if other.draft_tokens is not None else self.draft_tokens,
            verify_tokens=other.verify_tokens if other.verify_tokens is not None else self.verify_tokens,
            tokens_per_step=other.tokens_per_step if other.tokens_per_step is not None else self.tokens_per_step,
            kv_len_scale=self.kv_len_scale * other.kv_len_scale,
            text_per_token=self.text_per_token * other.text_per_token,
            kv_bytes_scale=self.kv_bytes_scale * other.kv_bytes_scale,
            extra_ops=self.extra_ops + other.extra_ops,
        )

    @property
    def is_identity(self) -> bool:
        return self == StepEffect()


IDENTITY = StepEffect()


def combined_effect(spec, plan=None, hw=None, fabric=None) -> StepEffect:
    """The folded StepEffect of the spec's selected step-changing policies (plan/hw/fabric let a policy size
    itself for the hardware, e.g. PPD's tree)."""
    eff = IDENTITY
    for family in STEP_FAMILIES:
        pol = spec.policies.build(family) if hasattr(spec.policies, family) else None
        if pol is not None:
            eff = eff.then(pol.step_effect(spec, plan=plan, hw=hw, fabric=fabric))
    return eff


__all__ = ["IDENTITY", "STEP_FAMILIES", "StepEffect", "combined_effect", "replace"]
