"""Model architectures (conf/model/*.yaml): the shapes every operator, weight and KV byte derives from."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from cmtwin.config.base import Frozen


class MLA(Frozen):
    """Multi-head latent attention (DeepSeek-V2/V3): a compressed KV latent plus a decoupled RoPE key."""

    kind: Literal["mla"] = "mla"
    """Attention family."""
    heads: int = Field(ge=1)
    """Query heads."""
    q_lora_rank: int = Field(ge=1)
    """Rank of the query down-projection."""
    kv_lora_rank: int = Field(ge=1)
    """Rank of the KV latent (what the cache stores, besides the RoPE key)."""
    qk_nope_head_dim: int = Field(ge=1)
    """Per-head query/key width without position encoding."""
    qk_rope_head_dim: int = Field(ge=1)
    """Per-head (query) and shared (key) RoPE width."""
    v_head_dim: int = Field(ge=1)
    """Per-head value width."""

    @property
    def kv_values_per_token(self) -> int:
        """Values cached per token per layer: the latent plus the shared RoPE key (576 for V3)."""
        return self.kv_lora_rank + self.qk_rope_head_dim


class GQA(Frozen):
    """Grouped-query attention (Llama, Qwen): per-head keys and values for kv_heads groups."""

    kind: Literal["gqa"] = "gqa"
    """Attention family."""
    heads: int = Field(ge=1)
    """Query heads."""
    kv_heads: int = Field(ge=1)
    """Key/value heads (query heads share them in groups)."""
    head_dim: int = Field(ge=1)
    """Per-head width."""
    sliding_window: int | None = Field(default=None, ge=1)
    """Tokens a sliding-window layer attends to (and keeps in its KV cache); null: every layer attends to all."""
    sliding_layers: int = Field(default=0, ge=0)
    """How many of the layers use the sliding window (gpt-oss: every other one)."""

    @model_validator(mode="after")
    def _groups(self) -> GQA:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        return self

    @property
    def kv_values_per_token(self) -> int:
        """Values cached per token per layer: K and V for every KV head."""
        return 2 * self.kv_heads * self.head_dim


Attention = Annotated[Union[MLA, GQA], Field(discriminator="kind")]


class Dense(Frozen):
    """The dense (non-MoE) feed-forward layers."""

    layers: int = Field(ge=0)
    """How many of the first layers use a dense SwiGLU MLP."""
    intermediate: int = Field(ge=1)
    """Dense MLP intermediate width."""


class MoE(Frozen):
    """Mixture-of-experts feed-forward layers (every layer after the dense ones)."""

    routed_experts: int = Field(ge=1)
    """Routed experts per MoE layer."""
    shared_experts: int = Field(ge=0)
    """Shared experts every token passes through."""
    experts_per_token: int = Field(ge=1)
    """Routed experts chosen per token (top-k)."""
    intermediate: int = Field(ge=1)
    """Expert SwiGLU intermediate width."""
    groups: int = Field(default=1, ge=1)
    """Expert groups for group-limited routing (1 = none)."""
    topk_groups: int = Field(default=1, ge=1)
    """Groups a token may route into."""

    @model_validator(mode="after")
    def _routing(self) -> MoE:
        if self.experts_per_token > self.routed_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) > routed_experts ({self.routed_experts})"
            )
        if self.routed_experts % self.groups:
            raise ValueError(f"routed_experts ({self.routed_experts}) must divide into groups ({self.groups})")
        if self.topk_groups > self.groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) > groups ({self.groups})")
        if self.topk_groups * (self.routed_experts // self.groups) < self.experts_per_token:
            raise ValueError(
                f"topk_groups ({self.topk_groups}) x experts per group ({self.routed_experts // self.groups}) "
                f"< experts_per_token ({self.experts_per_token}): a token cannot find its experts"
            )
        return self


class ModelSpec(Frozen):
    """A decoder-only transformer, dense or MoE."""

    name: str = Field(min_length=1)
    """Model name (the config file's stem)."""
    source: str = Field(min_length=3)
    """Where the architecture figures come from."""
    hf_id: str | None = None
    """The Hugging Face repository engines load it from (`cmtwin export launch` writes it as the model path)."""
    hidden: int = Field(ge=1)
    """Hidden size."""
    layers: int = Field(ge=1)
    """Transformer layers (not counting MTP layers)."""
    vocab: int = Field(ge=1)
    """Vocabulary size."""
    norm_eps: float = Field(gt=0)
    """RMSNorm epsilon."""
    attention: Attention
    """The attention block."""
    dense: Dense
    """Dense MLP layers (the first `dense.layers`)."""
    moe: MoE | None = None
    """MoE layers (all layers after the dense ones); null for a dense model."""
    mtp_layers: int = Field(default=0, ge=0)
    """Multi-token-prediction modules (DeepSeek-V3: 1), usable as speculative drafters."""

    @model_validator(mode="after")
    def _layers(self) -> ModelSpec:
        if self.dense.layers > self.layers:
            raise ValueError(f"dense.layers ({self.dense.layers}) > layers ({self.layers})")
        att = self.attention
        if getattr(att, "sliding_layers", 0) > self.layers or bool(getattr(att, "sliding_window", None)) != bool(
                getattr(att, "sliding_layers", 0)):
            raise ValueError("attention.sliding_window and attention.sliding_layers go together, and sliding_layers "
                             f"({getattr(att, 'sliding_layers', 0)}) may not exceed layers ({self.layers})")
        if self.moe is None and self.dense.layers != self.layers:
            raise ValueError(
                f"a model without moe must have every layer dense: dense.layers ({self.dense.layers}) "
                f"!= layers ({self.layers})"
            )
        return self

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense.layers if self.moe else 0

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def attention_context(self, kv_len: float, *, prefill: bool) -> float:
        """The context of an average layer's attention, sliding-window layers included: linear operators (FLOPs,
        KV reads) of one layer at this context sum to the model's. Decode: a sliding layer reads min(kv, window)
        tokens; causal prefill: a query of a sliding layer attends to at most `window`, so its half of the
        causal square becomes min(kv, 2 x window) in the same units."""
        window = getattr(self.attention, "sliding_window", None)
        if not window:
            return kv_len
        from cmtwin.vec import vmin  # numbers or a vector step's arrays (numpy only when the twin runs)

        s = self.attention.sliding_layers
        capped = vmin(kv_len, 2 * window if prefill else window)
        return ((self.layers - s) * kv_len + s * capped) / self.layers
