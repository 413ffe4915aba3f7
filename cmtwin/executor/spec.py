"""Settings of `cmtwin execute` and `cmtwin calibrate` (validated part of the Spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cmtwin.config.base import Frozen


class ExecutorSpec(Frozen):
    """Real-kernel execution settings."""

    layers: int = Field(default=2, ge=1)
    """Transformer layers to run."""
    scale: float = Field(default=1.0, gt=0, le=1)
    """Shape scale factor (1.0 = true shapes) so a CPU run finishes in seconds."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: auto picks CUDA when present."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype of the real kernels."""
    seed: int = Field(default=0, ge=0)
    """Seed of the random weights and inputs."""
