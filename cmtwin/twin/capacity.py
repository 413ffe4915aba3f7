"""A pool's sustainable request rate: one model, used by the plan search (cmtwin.search) to size candidates and
by the simulator (cmtwin.sim) to turn `workload.load` into an arrival rate."""

from __future__ import annotations

import math


def decode_requests_per_s(*, slots: float, step_s: float, tokens_per_step: float, output_len: int) -> float:
    """Requests/s a decode pool of `slots` concurrent requests sustains: each request holds its slot for the whole
    steps its output needs beyond the first token (the prefill makes that one), tokens_per_step at a time."""
    steps = math.ceil((output_len - 1) / tokens_per_step) if output_len > 1 else 0
    return slots / (steps * step_s) if steps else math.inf


def prefill_requests_per_s(*, tokens_per_s: float, prompt_len: int) -> float:
    """Requests/s a prefill pool computing tokens_per_s prompt tokens sustains."""
    return tokens_per_s / prompt_len
