"""Precision presets: one `precision` key expands to a dtype per operator class.

CloudMatrix-Infer (paper v2 §4.5) runs W8A8 INT8 GEMMs with INT8 token dispatch and BF16 combine, MLA and
KV cache; DeepSeek's H800 serving (ISCA'25, arXiv 2505.09343) runs FP8 GEMMs and dispatch with BF16 MLA and combine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PrecisionName = Literal["int8", "fp8", "bf16", "fp4", "mxfp4"]

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1,
         # NVFP4: 4-bit E2M1 values with one FP8 (E4M3) scale per 16 values = 4.5 bits per value (NVIDIA,
         # "Introducing NVFP4 for Efficient and Accurate Low-Precision Inference", developer blog, 2025)
         "fp4": 0.5625,
         # MXFP4 (OCP microscaling): 4-bit E2M1 values with one E8M0 scale per 32 values = 4.25 bits per value
         "mxfp4": 0.53125}


@dataclass(frozen=True)
class Precision:
    """The dtype of each operator class under one preset."""

    name: str
    gemm: str  # linear layers: weights and activations (W8A8 / FP8 / BF16)
    attention: str  # the attention core (scores, softmax, PV)
    kv_cache: str
    dispatch: str  # tokens sent to experts
    combine: str  # expert outputs sent back
    embedding: str  # embedding table and LM head weights
    router: str = "bf16"  # the router's logits GEMM (BF16 in serving; the executor routes in FP32)
    # The residual stream between layers and ranks (TP all-reduce, MoE-TP all-reduce, SP all-gather/all-to-all,
    # pipeline sends): BF16 in every preset (paper v2 §4.5 keeps combine and MLA in BF16; DeepSeek's FP8
    # serving quantises only GEMM inputs and dispatch, DeepEP README).
    hidden_state: str = "bf16"
    # The experts' weights when only they are quantized (weight-only: dequantized and computed in `gemm`), e.g.
    # gpt-oss's MXFP4 experts beside BF16 attention; None: as `gemm`.
    expert_weights: str | None = None

    @property
    def expert_weight_bytes(self) -> float:
        return BYTES[self.expert_weights or self.gemm]

    @property
    def hidden_state_bytes(self) -> int:
        """Bytes of one value of the residual stream."""
        return BYTES[self.hidden_state]

    def message_bytes(self, kind: Literal["dispatch", "combine"], hidden: int) -> int:
        """Bytes per token of one dispatch or combine message, scales included.

        INT8: hidden int8 values plus an aligned 512-byte slot for the per-token scale (7.5 KB at hidden 7168,
        paper v2 §4.2.2). FP8: hidden bytes plus one fp32 scale per 128-value block (DeepEP). BF16: 2 x hidden.
        """
        dtype = self.dispatch if kind == "dispatch" else self.combine
        base = hidden * BYTES[dtype]
        if dtype == "int8":
            return base + 512
        if dtype == "fp8":
            return base + 4 * ((hidden + 127) // 128)
        return base


PRECISIONS: dict[str, Precision] = {
    "int8": Precision("int8", gemm="int8", attention="bf16", kv_cache="bf16", dispatch="int8",
                      combine="bf16", embedding="bf16"),
    "fp8": Precision("fp8", gemm="fp8", attention="bf16", kv_cache="bf16", dispatch="fp8",
                     combine="bf16", embedding="bf16"),
    "bf16": Precision("bf16", gemm="bf16", attention="bf16", kv_cache="bf16", dispatch="bf16",
                      combine="bf16", embedding="bf16"),
    # NVFP4 GEMMs (weights and activations) on Blackwell, FP8 dispatch, BF16 MLA and combine: the LMSYS GB200 NVL72
    # setting "NVFP4 MoE" (lmsys.org/blog/2025-09-25-gb200-part-2) applied to every linear layer
    "fp4": Precision("fp4", gemm="fp4", attention="bf16", kv_cache="bf16", dispatch="fp8",
                     combine="bf16", embedding="bf16"),
    # BF16 everywhere but the experts' weights, stored in MXFP4 and computed in BF16: how gpt-oss ships
    # (openai/gpt-oss model card: MXFP4 MoE weights) and runs on Hopper
    "mxfp4": Precision("mxfp4", gemm="bf16", attention="bf16", kv_cache="bf16", dispatch="bf16",
                       combine="bf16", embedding="bf16", expert_weights="mxfp4"),
}
