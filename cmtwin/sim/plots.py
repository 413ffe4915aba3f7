"""PNG plots of a simulation: throughput over time, latency CDFs (matplotlib, Agg backend, lazy import)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_plot(samples: list[tuple[float, str, float]], path: Path, title: str) -> Path:
    """Input and output tokens/s per device, utilisation and queue length over simulated time."""
    plt = _plt()
    series: dict[str, tuple[list, list]] = {}
    for t, name, v in samples:
        xs, ys = series.setdefault(name, ([], []))
        xs.append(t)
        ys.append(v)
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for name, label in (("prefill.tokens_per_s_per_device", "prefill: prompt tokens/s per device"),
                        ("decode.tokens_per_s_per_device", "decode: output tokens/s per device")):
        if name in series:
            axes[0].plot(*series[name], label=label)
    axes[0].set_ylabel("tokens/s/device")
    axes[0].legend(loc="best", fontsize=8)
    for name in ("prefill.utilisation", "decode.utilisation", "decode.batch_occupancy", "cache.hit_ratio"):
        if name in series:
            axes[1].plot(*series[name], label=name)
    axes[1].set_ylabel("fraction")
    axes[1].set_ylim(-0.02, 1.05)
    axes[1].legend(loc="best", fontsize=8)
    for name in ("queue.prefill", "queue.decode_wait", "requests.in_system"):
        if name in series:
            axes[2].plot(*series[name], label=name)
    axes[2].set_ylabel("requests")
    axes[2].set_xlabel("simulated time (s)")
    axes[2].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def latency_cdf_plot(latencies, path: Path, title: str, slo=None) -> Path:
    """Empirical CDFs of TTFT, TPOT and end-to-end latency (ms), with the SLO targets when set."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (name, xs, target) in zip(axes, (("TTFT", latencies.ttft, getattr(slo, "ttft_ms", None)),
                                             ("TPOT", latencies.tpot, getattr(slo, "tpot_ms", None)),
                                             ("end-to-end", latencies.e2e, None))):
        if xs:
            arr = np.sort(np.asarray(xs) * 1e3)
            ax.plot(arr, np.arange(1, len(arr) + 1) / len(arr))
        if target:
            ax.axvline(target, color="red", linestyle="--", label=f"SLO {target:g} ms")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
