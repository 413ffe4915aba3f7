"""The workload: request shapes (and, for the simulator, how requests arrive).

The twin reads the mean shape (`prompt_len`, `output_len`, `decode_kv_len`). The simulator (`cmtwin
simulate`) also reads the arrival process, the length distributions around those means, prefix sharing,
or a trace file that replays recorded requests (format: docs/simulate.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cmtwin.config.base import Frozen


class WorkloadSpec(Frozen):
    """Request shape and arrivals."""

    name: str = "custom"
    """Workload name."""
    prompt_len: int = Field(ge=1)
    """Prompt tokens per request (the mean under a length distribution)."""
    output_len: int = Field(ge=1)
    """Output tokens per request (the mean under a length distribution)."""
    kv_len: int | None = Field(default=None, ge=1)
    """KV length a decode step attends to (default: prompt + output / 2)."""
    prefix_share: float = Field(default=0.0, ge=0, le=1)
    """Fraction of prompt tokens shared with earlier requests (prefix reuse)."""

    arrival: Literal["poisson", "gamma", "trace", "offline"] = "poisson"
    """Arrival process of `cmtwin simulate`: poisson, gamma (bursty; see burstiness_cv), trace (replay `trace`) or
    offline (a batch job: `requests` requests all available at t = 0)."""
    rate_per_s: float | None = Field(default=None, gt=0)
    """Mean arrival rate, requests/s (default: `load` x the deployment's capacity estimated by the twin)."""
    load: float = Field(default=0.8, gt=0, le=10)
    """Offered load as a fraction of the twin's capacity estimate, used when rate_per_s is null (1 = full load;
    the default 0.8 settles, so percentiles do not grow with the simulated duration)."""
    burstiness_cv: float = Field(default=2.0, gt=0, le=20)
    """Coefficient of variation of inter-arrival times under arrival=gamma (1 = Poisson; larger = burstier)."""
    length_dist: Literal["fixed", "lognormal"] = "fixed"
    """Prompt and output lengths: fixed at their means, or lognormal around them (prompt_cv, output_cv)."""
    prompt_cv: float = Field(default=0.5, ge=0, le=5)
    """Coefficient of variation of prompt lengths under length_dist=lognormal."""
    output_cv: float = Field(default=0.5, ge=0, le=5)
    """Coefficient of variation of output lengths under length_dist=lognormal."""
    max_len: int = Field(default=131072, ge=1)
    """Upper clip of sampled prompt and output lengths, tokens."""
    prefix_groups: int = Field(default=32, ge=1)
    """Distinct shared prefixes (system prompts, documents) that requests draw from, by Zipf popularity."""
    prefix_zipf: float = Field(default=1.0, ge=0, le=4)
    """Zipf exponent of prefix popularity (0 = uniform)."""
    requests: int = Field(default=1000, ge=1)
    """arrival=offline: how many requests the batch job holds (all arrive at t = 0)."""
    trace: str | None = None
    """Trace file (CSV or JSONL) replayed under arrival=trace: a path, or a name under conf/workload/ such as
    traces/synthetic_small.csv. Columns: timestamp_s, prompt_len, output_len[, prefix_id, prefix_len]."""

    @property
    def decode_kv_len(self) -> int:
        return self.kv_len if self.kv_len is not None else self.prompt_len + self.output_len // 2

    @model_validator(mode="after")
    def _trace_needs_file(self) -> WorkloadSpec:
        if self.arrival == "trace" and not self.trace:
            raise ValueError("workload.arrival is 'trace' but workload.trace names no file (set workload.trace=PATH)")
        if self.prompt_len > self.max_len or self.output_len > self.max_len:
            raise ValueError(f"workload.max_len ({self.max_len}) is below the mean prompt_len ({self.prompt_len}) "
                             f"or output_len ({self.output_len}); raise workload.max_len")
        return self
