"""The twin's figures as typed objects: one decode step, one prefill forward (their JSON is built in
cmtwin.twin.predict)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from cmtwin.twin.breakdown import Ledger

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DecodeResult:
    """One decode step of the plan's decode ranks."""

    step_us: float
    chunk_tokens: float  # agg: prefill tokens per die mixed into the step (0 when disaggregated)
    tpot_ms: float
    tokens_per_step: float
    tokens_per_s_per_device: float
    batch_per_device: float  # requests per device (fractional when a TP group serves fewer than one per die)
    kv_len: int
    ledger: Ledger
    streams: dict[str, float]  # per-step busy time per stream
    draft_tokens: int = 0  # MTP drafts per step actually run (the spec's, or a speculation policy's)
    verify_tokens: float = 1.0  # tokens per request the main model verifies per step


@dataclass(frozen=True)
class DecodeSteps:
    """Decode steps of the plan's decode ranks at a vector of batches: arrays, one element per batch."""

    step_us: np.ndarray
    chunk_tokens: np.ndarray  # agg: prefill tokens per die mixed into the step (0 when disaggregated)
    tpot_ms: np.ndarray
    tokens_per_step: float
    tokens_per_s_per_device: np.ndarray
    batch_per_device: np.ndarray
    kv_len: np.ndarray
    draft_tokens: int
    verify_tokens: float


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


def _present(obj) -> dict:
    """The figures as their JSON object: fields in order, the optional ones (None) left out."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass(frozen=True)
class PrefillFigures:
    """A prediction's prefill figures per device (rounded as printed). Aggregated serving reports the prefill
    chunks its decode steps carry."""

    tokens_per_s_per_device: float
    step_ms: float
    ttft_ms: float
    tokens_per_device: int
    kv_transfer_ms: float
    microbatches: int
    chunk_tokens_per_die: float | None = None  # agg: prefill tokens per die in the mean decode step
    chunks_per_prompt: int | None = None  # agg: decode steps a prompt's prefill spans
    step_budget_tokens: int | None = None  # agg: the engine's token budget per step of an attention group
    chunk_tokens_per_group: int | None = None  # agg: a full chunk, the budget left after the decode tokens
    budget_wait_ms: float | None = None  # agg: mean wait of a prompt for the budget (in TTFT)
    budget_utilisation: float | None = None  # agg: share of steps carrying a prompt's chunks

    def to_dict(self) -> dict:
        return _present(self)


@dataclass(frozen=True)
class DecodeFigures:
    """A prediction's decode figures per device (rounded as printed)."""

    tokens_per_s_per_device: float
    tpot_ms: float
    batch_per_device: float
    batch_per_group: int  # requests per attention group (a DP rank, or a TP group)
    step_ms: float
    tokens_per_step: float
    kv_len: int
    microbatches: int
    mtp_draft_tokens: int
    verify_tokens_per_request: float | None = None  # a speculation policy's tree (PPD), when not 1 + drafts
    serving_mode: str | None = None  # "agg" when the pool also prefills
    experts_read_per_rank: float | None = None  # MoE: routed experts that receive a token, per microbatch
    expert_slots_per_rank: int | None = None  # MoE: routed expert slots on that rank

    def to_dict(self) -> dict:
        return _present(self)
