"""PNG plots of a simulation: throughput over time, latency CDFs (matplotlib, Agg backend, lazy import)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_plot(samples: list[tuple[float, str, float]], path: Path, title: str, *, refs: dict | None = None,
                    window: tuple[float, float] | None = None, verdict: str | None = None) -> Path:
    """Input and output tokens/s per device, utilisation and queue length over simulated time.

    refs: {series name: [(value, label), ...]} drawn as dashed horizontal lines in that series' colour (the twin's
    steady-state figures); window: (warm-up end, horizon), the warm-up shaded and the window's halves split by a
    dotted line (the halves the steady-state verdict compares); verdict: printed under the title."""
    plt = _plt()
    series: dict[str, tuple[list, list]] = {}
    for t, name, v in samples:
        xs, ys = series.setdefault(name, ([], []))
        xs.append(t)
        ys.append(v)
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    colours = {"prefill.tokens_per_s_per_device": "tab:blue", "decode.tokens_per_s_per_device": "tab:orange"}
    for name, label in (("prefill.tokens_per_s_per_device", "prefill: prompt tokens/s per device"),
                        ("decode.tokens_per_s_per_device", "decode: output tokens/s per device")):
        if name in series:
            axes[0].plot(*series[name], label=label, color=colours[name], linewidth=1)
        for k, (value, ref_label) in enumerate((refs or {}).get(name, [])):
            axes[0].axhline(value, color=colours[name], linestyle="--" if k == 0 else ":", linewidth=1.3,
                            label=ref_label)
    axes[0].set_ylabel("tokens/s/device")
    axes[0].set_ylim(bottom=0)
    for name in ("prefill.utilisation", "decode.utilisation", "decode.batch_occupancy", "cache.hit_ratio"):
        if name in series:
            axes[1].plot(*series[name], label=name, linewidth=1)
    axes[1].set_ylabel("fraction")
    axes[1].set_ylim(-0.02, 1.05)
    for name in ("queue.prefill", "queue.decode_wait", "requests.in_system"):
        if name in series:
            axes[2].plot(*series[name], label=name, linewidth=1)
    axes[2].set_ylabel("requests")
    axes[2].set_xlabel("simulated time (s)")
    if window is not None and window[0] > 0:
        for ax in axes:
            ax.axvspan(0, window[0], color="0.85", alpha=0.5, linewidth=0,
                       label="warm-up (not measured)" if ax is axes[2] else None)
            ax.axvline(0.5 * (window[0] + window[1]), color="0.4", linestyle=":", linewidth=0.8,
                       label="halves compared for steady state" if ax is axes[2] else None)
    for name, colour, label in (("sim.failure", "tab:red", "failure (failures.events)"),
                                ("sim.recovery", "tab:green", "recovered (failures.recovery_s)")):
        for k, t in enumerate(series.get(name, ([], []))[0]):
            for ax in axes:
                ax.axvline(t, color=colour, linestyle="-.", linewidth=1.2,
                           label=label if ax is axes[0] and k == 0 else None)
    for ax in axes:  # legends beside the data, not over it
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    if verdict:
        import textwrap

        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(f"steady state {verdict}", 150)), fontsize=8,
                 color="tab:green" if verdict.startswith("reached") else "tab:red", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if verdict else 0, 1, 1))
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
        if len(xs):
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
