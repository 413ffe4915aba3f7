"""Settings of `cmtwin execute` and `cmtwin calibrate` (validated part of the Spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cmtwin.config.base import Frozen


class ExecutorSpec(Frozen):
    """Real-kernel execution settings."""

    layers: int = Field(default=2, ge=1)
    """Transformer layers to run (MoE layers of an MoE model; see dense_layers)."""
    mtp: bool = False
    """Also run the model's MTP module after the layers (its norms and eh_proj over the hidden state and a
    random next-token embedding, then one MoE layer); the logits are then the MTP module's."""
    dense_layers: int = Field(default=0, ge=0)
    """How many of the executed layers are dense-MLP layers (run first, as in the model); the rest are MoE."""
    scale: float = Field(default=0.02, gt=0, le=1)
    """Shape scale factor (1.0 = true shapes): hidden, intermediates, heads, head and latent dims and the
    vocabulary shrink by it (rounded to keep divisibility); the routed-expert count and the plan's placement
    are kept, so every rank of the plan is executed. The default 0.02 runs every rank of a 320-die pool on a
    2-core, 24 GB machine in under a minute, and is the scale a bare `cmtwin calibrate` calibrates at, so the
    two agree; true shapes (1.0) need a GPU and a subset of ranks (execute and calibrate refuse at once what
    will not fit in the available memory, naming the largest scale that does)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: auto picks CUDA when present."""
    dtype: Literal["fp32", "bf16", "int8", "fp8"] = "fp32"
    """Compute dtype of the real kernels (int8: W8A8 linear layers, per-token activation and per-channel
    weight scales, fp32 elsewhere, torch._int_mm on CUDA; fp8: the same in float8 e4m3 through
    torch._scaled_mm, bf16 elsewhere, refused at once where torch has no such kernel for the device)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the random weights and inputs."""
    phase: Literal["decode", "prefill", "both"] = "both"
    """What to run: a decode step on the decode pool, a prefill chunk on prefill instance 0, or both."""
    decode_tokens: int | None = Field(default=None, ge=1)
    """Decode tokens per rank (null: the plan's tokens per die)."""
    expert_tokens: Literal["plan", "routed"] = "plan"
    """Rows each routed expert of an executed rank computes. 'plan': pre-dispatched at the plan's tokens per
    expert, the busiest rank's routed copies over its slots from the twin's load model
    (cmtwin.twin.load.moe_load at the executed tokens per rank, over the whole pool), so the executor measures
    the expert GEMMs the twin predicts, also when only a few ranks are executed: the rows routed to the expert
    come first (they are combined and checked), pre-drawn rows fill it up to the plan's count (an expert that
    was routed more keeps all its rows). 'routed': only the rows the router sent."""
    kv_len: int = Field(default=128, ge=1)
    """Context length of every decode request (its random latent KV cache)."""
    prefill_tokens: int = Field(default=32, ge=1)
    """Prefill chunk per rank (one prompt per rank, causal attention within it)."""
    ranks: int | None = Field(default=None, ge=1)
    """Execute only the first N ranks of each pool (null: all); routing is then restricted to the experts
    those ranks hold, and the shared expert runs locally when no dedicated shared rank is among them."""
    skew: float = Field(default=1.0, ge=0)
    """Router bias = skew x log(the plan's expert load), so routing follows the plan's (skewed) load;
    0 gives balanced random routing."""
    passes: int = Field(default=5, ge=1, le=50)
    """Timed passes (after one warm-up), the phases' passes interleaved; each operator's measured time is its
    fastest over the passes, so load from elsewhere on the machine (which only adds time) stays out of the
    timeline, as in calibrate. The numerics are those of the last pass."""
    threads: int | None = Field(default=1, ge=1)
    """CPU threads torch runs each operator on (torch.set_num_threads); null: torch's default, one per core.
    One by default: at reduced shapes an operator takes microseconds, which a second thread barely shortens,
    while on a machine shared with other work every operator waits for a descheduled thread (on a loaded
    2-vCPU VM a bare calibrate took 226 s with two threads and 15 s with one; a 64x144x288 matmul 2.8 ms
    mean with two, 61 us with one). With processes=N each worker takes this many (null: cores / N)."""
    processes: int = Field(default=1, ge=1)
    """Worker processes (torch.distributed, gloo on CPU / NCCL on GPU); ranks are dealt round-robin."""
    profile: str | None = None
    """Hardware profile (conf/hardware or ./cmtwin_conf/hardware) whose cost model predicts the measured
    compute; null: a profile named local_<device> when it exists, else the deployment's hardware."""
    reference: bool = True
    """Check the distributed result against a single-device reference forward."""
    timing: Literal["auto", "sync", "graph"] = "auto"
    """How execute and calibrate time an operator (cmtwin/executor/timing.py): 'sync' runs it eagerly
    between two perf_counter reads (with a device synchronise on either side on a GPU); 'graph' captures it in
    a CUDA graph and takes the median of its replays timed by device events (CUDA only), and execute also
    times each rank's segments between token exchanges as graphs; 'auto' is graph on CUDA, sync on a CPU. A
    capture that fails falls back to sync, and the output says why."""
    replays: int = Field(default=20, ge=1, le=1000)
    """Timed replays of each CUDA graph (timing=graph); the operator's time is their median."""
    graph_warmup: int = Field(default=3, ge=1, le=100)
    """Replays of each CUDA graph before the timed ones (the first computes the operator's outputs)."""
