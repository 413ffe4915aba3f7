"""The twin's figures as typed objects: one decode step, one prefill forward (their JSON is built in
cmtwin.twin.predict)."""

from __future__ import annotations

from dataclasses import dataclass

from cmtwin.twin.breakdown import Ledger


@dataclass(frozen=True)
class DecodeResult:
    """One decode step of the plan's decode ranks."""

    step_us: float
    chunk_tokens: int  # agg: prefill tokens per die mixed into each step (0 when disaggregated)
    tpot_ms: float
    tokens_per_step: float
    tokens_per_s_per_device: float
    batch_per_device: int
    kv_len: int
    ledger: Ledger
    streams: dict[str, float]  # per-step busy time per stream
    draft_tokens: int = 0  # MTP drafts per step actually run (the spec's, or a speculation policy's)
    verify_tokens: float = 1.0  # tokens per request the main model verifies per step


@dataclass(frozen=True)
class PrefillResult:
    """One prefill forward of one instance's die."""

    step_us: float  # one forward of tokens_per_die tokens (pipeline bubble included)
    tokens_per_die: int
    tokens_per_s_per_device: float
    kv_transfer_us: float
    ttft_ms: float
    ledger: Ledger
    streams: dict[str, float]
