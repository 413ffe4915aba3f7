"""The workload: request shapes (and, for the simulator, how requests arrive)."""

from __future__ import annotations

from pydantic import Field

from cmtwin.config.base import Frozen


class WorkloadSpec(Frozen):
    """Request shape."""

    name: str = "custom"
    """Workload name."""
    prompt_len: int = Field(ge=1)
    """Prompt tokens per request."""
    output_len: int = Field(ge=1)
    """Output tokens per request."""
    kv_len: int | None = Field(default=None, ge=1)
    """KV length a decode step attends to (default: prompt + output / 2)."""
    prefix_share: float = Field(default=0.0, ge=0, le=1)
    """Fraction of prompt tokens shared with earlier requests (prefix reuse)."""

    @property
    def decode_kv_len(self) -> int:
        return self.kv_len if self.kv_len is not None else self.prompt_len + self.output_len // 2
