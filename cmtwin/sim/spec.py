"""Settings of `cmtwin simulate` and `cmtwin search` (validated parts of the Spec)."""

from __future__ import annotations

from pydantic import Field

from cmtwin.config.base import Frozen


class SimSpec(Frozen):
    """Discrete-event simulation settings."""

    duration_s: float = Field(default=60.0, gt=0)
    """Simulated seconds of traffic."""
    seed: int = Field(default=0, ge=0)
    """Random seed of arrivals and lengths."""


class SearchSpec(Frozen):
    """Plan-search settings."""

    devices: int | None = Field(default=None, ge=1)
    """Device budget to split among prefill and decode (default: the topology's devices)."""
