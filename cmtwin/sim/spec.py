"""Settings of `cmtwin simulate` and `cmtwin search` (validated parts of the Spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cmtwin.config.base import Frozen


class SimSpec(Frozen):
    """Discrete-event simulation settings."""

    duration_s: float = Field(default=60.0, gt=0)
    """Simulated seconds of traffic."""
    seed: int = Field(default=0, ge=0)
    """Random seed of arrivals and lengths."""
    warmup_s: float | None = Field(default=None, ge=0)
    """Requests arriving before this simulated time are left out of the metrics (default: 10% of duration_s)."""
    drain: bool = False
    """After duration_s, stop arrivals and run until every request has completed."""
    sample_interval_s: float = Field(default=1.0, gt=0)
    """Simulated seconds between time-series samples (written to the store while the run progresses)."""
    ems_plane: Literal["ub", "vpc"] = "ub"
    """Plane that serves cached KV blocks from the EMS pool to prefill dies: ub (CPU DRAM over the Unified Bus) or
    vpc (from the owning node's CPU over the VPC plane, then UB inside the node)."""
    ssd_read_gbps: float = Field(default=50.0, gt=0)
    """Read bandwidth of a node's SSD tier, Gbit/s (assumption: a few NVMe drives, ~6 GB/s per node)."""
    handoff_margin: float = Field(default=0.25, ge=0, le=10)
    """Decode-aware prefill admission: a prefill forward starts only while the requests already handed to decode or
    in prefill fit in the free decode slots plus (1 + margin) x the slots decode frees during one forward."""
    prefill_policy: Literal["shortest_queue", "round_robin"] = "shortest_queue"
    """Global scheduler: send each request to the prefill instance with the fewest queued tokens, or round robin."""


class SearchSpec(Frozen):
    """Plan-search settings."""

    devices: int | None = Field(default=None, ge=1)
    """Device budget to split among prefill and decode (default: the topology's devices)."""
    workers: int = Field(default=0, ge=0)
    """Local worker processes (0 = one per core)."""
    simulate_top: int = Field(default=3, ge=0)
    """Simulate the best few candidates of the frontier (0 = analytic only)."""
    sim_duration_s: float = Field(default=20.0, gt=0)
    """Simulated seconds for each simulated candidate."""
    decode_batches: list[int] = Field(default_factory=lambda: [16, 32, 48, 64, 96, 128, 192, 256])
    """Decode batch per device to try."""
    decode_devices: list[int] | None = None
    """Decode pool sizes to try, devices (default: every size the budget and the EP degrees allow, in steps)."""
    prefill_devices_per_instance: list[int] = Field(default_factory=lambda: [8, 16, 32])
    """Prefill instance sizes to try, devices."""
    prefill_tokens_per_device: list[int] = Field(default_factory=lambda: [8192, 16384])
    """Prefill tokens per device per forward to try."""
    microbatches: list[int] = Field(default_factory=lambda: [1, 2])
    """Decode microbatching to try."""
    mtp_draft_tokens: list[int] = Field(default_factory=lambda: [0, 1, 2])
    """MTP drafts per step to try (only on models with MTP layers)."""
    precisions: list[str] = Field(default_factory=lambda: ["int8", "bf16"])
    """Precisions to try (those the hardware supports)."""
