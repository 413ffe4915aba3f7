"""Layer skipping / adaptive compute: SkipDecode (Del Corro et al., 2023).

SkipDecode gives every sequence POSITION a layer budget that does not increase with the position, and the
skipped layers are the LOWEST ones: a token at position t runs layers [L - budget(t), L). Because budgets
never increase, every layer a later token runs was also run by every earlier token, so its KV exists (the
invariant `cmtwin/executor/skipdecode.py` checks). All requests of a batch at similar positions share a
budget, so batched decode stays dense: the step runs budget(t) layers for the whole batch.

Budget: linear decay from max_layers_fraction at position 0 to min_layers_fraction at position `decay_tokens`
(then flat). Twin effect at the workload's mean decode context: fewer layers run per step (lowest first, in
the breakdown as fewer calls of each per-layer operator), and KV bytes per token scaled by the budget (a token
writes KV only for the layers it runs).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from cmtwin.config.base import Frozen
from cmtwin.twin.effects import StepEffect
from cmtwin.policy.registry import Policy, registry

REG = registry("layer_skip")


class SkipDecodeParams(Frozen):
    """A per-position, non-increasing layer budget."""

    max_layers_fraction: float = Field(default=1.0, gt=0, le=1)
    """Fraction of layers run at position 0 (prompt and first tokens)."""
    min_layers_fraction: float = Field(default=0.5, gt=0, le=1)
    """Fraction run at and beyond decay_tokens (user input; the paper reports 2-5x speed-ups with small quality
    loss at 0.2-0.5 of the layers on OPT; quality is model- and task-dependent)."""
    decay_tokens: int = Field(default=4096, ge=1)
    """Positions over which the budget falls linearly."""

    @model_validator(mode="after")
    def _non_increasing(self):
        if self.min_layers_fraction > self.max_layers_fraction:
            raise ValueError(f"min_layers_fraction ({self.min_layers_fraction}) > max_layers_fraction "
                             f"({self.max_layers_fraction}): the budget must not increase with the position")
        return self


@REG.register("skipdecode")
class SkipDecode(Policy):
    """Per-position non-increasing budget; lowest layers skipped."""

    Params = SkipDecodeParams

    params: SkipDecodeParams

    def fraction(self, position: float) -> float:
        pp = self.params
        x = min(1.0, max(0.0, position / pp.decay_tokens))
        return pp.max_layers_fraction + (pp.min_layers_fraction - pp.max_layers_fraction) * x

    def budget(self, position: int, layers: int) -> int:
        """Layers run at a position (at least 1)."""
        return max(1, round(layers * self.fraction(position)))

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        f = self.fraction(spec.workload.decode_kv_len)
        return StepEffect(layer_fraction=f, kv_bytes_scale=f)
