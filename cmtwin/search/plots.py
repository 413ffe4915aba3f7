"""The search's picture: every candidate, the Pareto frontier highlighted (matplotlib Agg, lazy import)."""

from __future__ import annotations

from pathlib import Path


def frontier_plot(result, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.candidates
    f = result.frontier
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, label in ((axes[0], "tpot_ms", "TPOT (ms)"), (axes[1], "ttft_ms", "TTFT (ms, full prefill batch)")):
        ax.scatter([getattr(x, key) for x in c], [x.tokens_per_s_per_device for x in c], s=3, alpha=0.25,
                   color="grey", label=f"{len(c):,} candidates", rasterized=True)
        ax.scatter([getattr(c[i], key) for i in f], [c[i].tokens_per_s_per_device for i in f], s=14, color="tab:red",
                   label=f"Pareto frontier ({len(f)})")
        for s in result.simulated:
            sim = s.get("simulation")
            if sim and sim[key]["p50"] is not None:
                ax.scatter([sim[key]["p50"]], [sim["tokens_per_s_per_device"]], marker="*", s=120,
                           color="tab:blue", label="simulated (p50)" if s is result.simulated[0] else None)
        ax.set_xlabel(label)
        ax.set_ylabel("output tokens/s per device")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
