"""Settings of `cmtwin simulate` and `cmtwin search` (validated parts of the Spec)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from cmtwin.config.base import Frozen

MAX_SIM_REQUESTS = 10_000_000
"""Most requests one simulation may generate (rate x duration, or workload.requests offline): about 200x the
default run (r1_ep320: 153 requests/s x 300 s = 46,000). Measured on r1_ep320: 460,000 requests take 10 s and
235 MB, about 0.2 KB per request kept for the metrics, so the limit is a few minutes and about 2 GB."""

EVENTS_PER_REQUEST = 4
"""Simulator events a request implies, about: its arrival, its prefill forward's end, its admission to decode and
its share of the decode steps (the estimate shown next to the request count; the requests are what is limited)."""

MAX_SIM_SAMPLES = 100_000
"""Most time-series samples one simulation may take (duration / sim.sample_interval_s); each writes 13 rows to
the run store, so the limit is 1.3 million rows (the default run takes 300)."""


class SimSpec(Frozen):
    """Discrete-event simulation settings."""

    duration_s: float = Field(default=300.0, gt=0)
    """Simulated seconds of traffic (the default leaves a steady window after the warm-up on the shipped deployments,
    whose requests live about 20-50 s)."""
    seed: int = Field(default=0, ge=0)
    """Random seed of arrivals and lengths."""
    warmup_s: float | None = Field(default=None, ge=0)
    """Requests arriving before this simulated time are left out of the metrics (default: 10% of duration_s; 0 for an
    offline batch). It should cover the decode pool's filling, about one request's life (about 20-50 s on the shipped
    deployments); the steady-state verdict says when it did not."""
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


_Count = Annotated[int, Field(ge=1)]
"""A positive count (devices, batch, degree) in a search list."""


class SearchSpec(Frozen):
    """Plan-search settings: the budget, the space (one list per dimension) and how much to simulate."""

    devices: int | None = Field(default=None, ge=1)
    """Device budget to split among prefill and decode (default: the topology's devices)."""
    workers: int = Field(default=0, ge=0)
    """Local worker processes (0 = one per core)."""
    simulate_top: int = Field(default=3, ge=0)
    """Simulate the best few candidates of the frontier (0 = analytic only)."""
    require_failures: int = Field(default=0, ge=0, le=1)
    """1: keep only plans that meet the SLO with one attention group's die down, its requests spread over the
    other groups of the instance (which must also hold their KV); 0: no such requirement."""
    sim_duration_s: float = Field(default=20.0, gt=0)
    """Simulated seconds for each simulated candidate."""
    modes: list[Literal["disagg", "agg"]] = Field(default_factory=lambda: ["disagg", "agg"], min_length=1)
    """Serving modes to try: disagg (a decode pool plus prefill instances) and agg (replicas of one pool serving
    both phases, as many as the budget holds)."""
    decode_batches: list[_Count] = Field(
        default_factory=lambda: [16, 32, 48, 64, 96, 128, 192, 256], min_length=1)
    """Decode batch per device to try (each layout tries its share per attention group: per die x tp)."""
    group_batches: list[_Count] = Field(default_factory=lambda: [1, 2, 4, 8])
    """Requests per TP group tried on every layout with TP attention besides decode_batches: the low-latency points
    (TP8 at 4 requests, TP16 at 2). A DP rank's batches are decode_batches' (list small ones there)."""
    decode_devices: list[_Count] | None = Field(default=None, min_length=1)
    """Devices per decode (or agg) instance to try (default: whole nodes; disagg up to the budget less the smallest
    prefill instance, agg for every replica count the largest instance that many fit in the budget)."""
    decode_instances: list[_Count] = Field(default_factory=lambda: [1, 2], min_length=1)
    """Decode instances (replicas of the decode layout) to try in disagg mode; agg replicas fill the budget."""
    decode_tp: list[_Count] | None = Field(default=None, min_length=1)
    """Attention TP degrees of a decode (agg) instance to try (default: every power of two dividing the dies of a
    node, so TP groups stay in the fastest domain, plus the deployment's decode.tp)."""
    prefill_tp: list[_Count] | None = Field(default=None, min_length=1)
    """Attention TP degrees of a prefill instance to try (default as decode_tp, plus the deployment's prefill.tp);
    prefill.tp_mode stays the deployment's."""
    moe_tp: list[_Count] = Field(default_factory=lambda: [1, 2], min_length=1)
    """Expert TP degrees to try in both phases; ep = ranks / (moe_tp x pp)."""
    pp: list[_Count] | None = Field(default=None, min_length=1)
    """Pipeline stages to try in both phases (default: 1, the deployment's, and 2 for an instance whose stages are
    whole scale-up domains: NVLink nodes on GPU clusters; not on CM384, whose UB joins every die)."""
    prefill_devices_per_instance: list[_Count] = Field(default_factory=lambda: [8, 16, 32], min_length=1)
    """Prefill instance sizes to try, devices."""
    prefill_tokens_per_device: list[_Count] = Field(default_factory=lambda: [8192, 16384], min_length=1)
    """Prefill tokens per device per forward to try."""
    microbatches: list[Annotated[int, Field(ge=1, le=2)]] = Field(default_factory=lambda: [1, 2], min_length=1)
    """Decode microbatching to try."""
    mtp_draft_tokens: list[Annotated[int, Field(ge=0, le=4)]] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """MTP drafts per step to try (only on models with MTP layers)."""
    precisions: list[str] = Field(default_factory=lambda: ["int8", "bf16"], min_length=1)
    """Precisions to try (those the hardware supports)."""


def _g(x: float) -> str:
    """A number for a message: six significant digits, thousands separated (46,000; 153.302; 1e+30)."""
    return f"{x:,.6g}"


def _down(x: float) -> str:
    """An upper bound for a fix, rounded down to three significant digits."""
    if x <= 0 or not math.isfinite(x):
        return _g(x)
    q = 10.0 ** (math.floor(math.log10(x)) - 2)
    return _g(math.floor(x / q + 1e-9) * q)


def _up(x: float) -> str:
    """A lower bound for a fix, rounded up to three significant digits."""
    if x <= 0 or not math.isfinite(x):
        return _g(x)
    q = 10.0 ** (math.floor(math.log10(x)) - 2)
    return _g(math.ceil(x / q - 1e-9) * q)


def check_simulated_work(spec, *, rate_per_s: float, duration_s: float, capacity_per_s: float | None = None) -> None:
    """Refuse (ConfigError, exit 2) a simulation whose expected size is beyond the stated limits, before the run
    row exists: requests = rate x duration (offline: workload.requests) against MAX_SIM_REQUESTS, and samples =
    duration / sim.sample_interval_s against MAX_SIM_SAMPLES. The message shows the arithmetic and the largest
    values that fit. A trace's requests are already read (the trace reader bounds them)."""
    from cmtwin.errors import ConfigError

    w, sim = spec.workload, spec.sim
    interval = sim.sample_interval_s
    samples = duration_s / interval
    if not math.isfinite(samples) or samples > MAX_SIM_SAMPLES:
        raise ConfigError(
            f"sim.duration_s ({_g(duration_s)} s) / sim.sample_interval_s ({_g(interval)} s) = {_g(samples)} "
            f"time-series samples, above the limit of {MAX_SIM_SAMPLES:,} per simulation (each writes 13 rows to the "
            f"run store).", key="sim.duration_s",
            fix=f"lower sim.duration_s to at most {_down(MAX_SIM_SAMPLES * interval)} or raise "
                f"sim.sample_interval_s to at least {_up(duration_s / MAX_SIM_SAMPLES)}")
    if w.arrival == "trace":
        return
    if w.arrival == "offline":
        if w.requests > MAX_SIM_REQUESTS:
            raise ConfigError(
                f"workload.requests = {_g(w.requests)} offline requests (about {_g(w.requests * EVENTS_PER_REQUEST)} "
                f"simulator events), above the limit of {MAX_SIM_REQUESTS:,} requests per simulation.",
                key="workload.requests",
                fix=f"simulate at most {MAX_SIM_REQUESTS:,} requests (workload.requests={MAX_SIM_REQUESTS}); the "
                    "metrics of a batch job of that size already settle")
        return
    requests = rate_per_s * duration_s
    if math.isfinite(requests) and requests <= MAX_SIM_REQUESTS:
        return
    if w.rate_per_s is not None:
        source, key = f"workload.rate_per_s ({_g(rate_per_s)} requests/s)", "workload.rate_per_s"
    else:
        cap = f" x the twin's capacity ({_g(capacity_per_s)} requests/s)" if capacity_per_s else ""
        source, key = f"the rate {_g(rate_per_s)} requests/s (workload.load {w.load:g}{cap})", "sim.duration_s"
    fit_duration = MAX_SIM_REQUESTS / rate_per_s
    fit_rate = MAX_SIM_REQUESTS / duration_s
    raise ConfigError(
        f"{source} x sim.duration_s ({_g(duration_s)} s) = {_g(requests)} expected requests (about "
        f"{_g(requests * EVENTS_PER_REQUEST)} simulator events), above the limit of {MAX_SIM_REQUESTS:,} requests "
        f"per simulation.", key=key,
        fix=f"lower sim.duration_s to at most {_down(fit_duration)} or the rate to at most {_down(fit_rate)} "
            "requests/s (workload.rate_per_s=...)")
