"""Token-count transforms in workloads: TokenAdapt supertokens and FlexTok image tokens.

- `tokenadapt`: a supertoken tokenizer carries `compression` reference-tokenizer tokens per model token
  (user input, 1.0-1.6; TokenAdapt reports 10-30 % fewer tokens per text). The context is 1/compression as
  long (KV read per step, KV memory) and each decoded token carries `compression` text tokens, so the reported
  tokens per step and per second are in reference-tokenizer (text) tokens.
- `flextok`: FlexTok (2025) encodes an image as 1-256 tokens; `images_per_request` images of
  `tokens_per_image` tokens join each request's context, and generated images cost the image decoder
  (a rectified-flow decoder: `decoder_gflops_per_image`, user input) amortised over the tokens per image,
  charged per step as 'flextok_decoder'.
"""

from __future__ import annotations

from pydantic import Field

from cmtwin.config.base import Frozen
from cmtwin.twin.effects import StepEffect
from cmtwin.policy.registry import Policy, registry

REG = registry("token_transform")


class TokenAdaptParams(Frozen):
    """Supertoken compression."""

    compression: float = Field(default=1.2, ge=1.0, le=3.0)
    """Reference tokens per model token (user input, 1.0-1.6 typical)."""


@REG.register("tokenadapt")
class TokenAdapt(Policy):
    """Fewer tokens per text: shorter context, more text per decoded token."""

    Params = TokenAdaptParams

    params: TokenAdaptParams

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        r = self.params.compression
        return StepEffect(kv_len_scale=1.0 / r, text_per_token=r)


class FlexTokParams(Frozen):
    """Images as 1-256 FlexTok tokens."""

    tokens_per_image: int = Field(default=64, ge=1, le=256)
    """Tokens per image (FlexTok: 1-256, coarse to fine)."""
    images_per_request: float = Field(default=1.0, ge=0, le=64)
    """Images in each request's context."""
    generated_image_share: float = Field(default=0.0, ge=0, le=1)
    """Share of decoded tokens that are image tokens (these need the image decoder)."""
    decoder_gflops_per_image: float = Field(default=2000.0, ge=0, le=1e6)
    """Image-decoder work per image (user input; FlexTok's flow decoder with ~25 steps: 1-5 TFLOP)."""


@REG.register("flextok")
class FlexTok(Policy):
    """Image tokens lengthen the context; generated images add the decoder's work per step."""

    Params = FlexTokParams

    params: FlexTokParams

    def step_effect(self, spec, *, plan=None, hw=None, fabric=None) -> StepEffect:
        from cmtwin.model.operators import Op

        pp = self.params
        kv = spec.workload.decode_kv_len
        scale = (kv + pp.images_per_request * pp.tokens_per_image) / kv
        extra = ()
        if pp.generated_image_share and plan is not None and plan.pools_of("decode"):
            b = plan.pools_of("decode")[0].batch_per_die
            images_per_step = b * pp.generated_image_share / pp.tokens_per_image
            flops = images_per_step * pp.decoder_gflops_per_image * 1e9
            extra = (("flextok", Op("flextok_decoder", "gemm", flops, 0.0, 0.0, 0.0, "bf16", max(1, round(b))), 1),)
        return StepEffect(kv_len_scale=scale, extra_ops=extra)
