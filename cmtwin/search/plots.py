"""The search's picture: every candidate coloured by its serving mode and decode attention layout, the Pareto
frontier ringed, the simulated points starred (matplotlib Agg, lazy import)."""

from __future__ import annotations

from pathlib import Path


def family(c) -> str:
    """A candidate's layout family for the legend: serving mode and decode attention TP, e.g. 'agg TP8', 'disagg DP'."""
    return f"{c.mode} {'DP' if c.decode.tp == 1 else f'TP{c.decode.tp}'}"


def frontier_plot(result, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.candidates
    f = result.frontier
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(c):
        groups.setdefault((x.mode, x.decode.tp, family(x)), []).append(i)
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in ((axes[0], "tpot_ms", "TPOT (ms)"), (axes[1], "ttft_ms", "TTFT (ms)")):
        for k, ((_, _, name), idx) in enumerate(sorted(groups.items())):
            ax.scatter([getattr(c[i], key) for i in idx], [c[i].tokens_per_s_per_device for i in idx], s=3, alpha=0.3,
                       color=colors(k % 10), label=f"{name} ({len(idx):,})", rasterized=True)
        ax.scatter([getattr(c[i], key) for i in f], [c[i].tokens_per_s_per_device for i in f], s=22,
                   facecolors="none", edgecolors="black", linewidths=0.8, label=f"Pareto frontier ({len(f)})")
        for s in result.simulated:
            sim = s.get("simulation")
            if sim and sim[key]["p50"] is not None:
                ax.scatter([sim[key]["p50"]], [sim["tokens_per_s_per_device"]], marker="*", s=120,
                           color="tab:red", label="simulated (p50)" if s is result.simulated[0] else None)
        ax.set_xlabel(label)
        ax.set_ylabel("output tokens/s per device")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, markerscale=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
