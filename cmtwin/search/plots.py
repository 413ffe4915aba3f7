"""The search's picture, readable at tens of thousands of candidates: per panel (tokens/s per device against TPOT,
then TTFT) the candidate cloud as a hexbin density (log count), the Pareto frontier on top (its points by serving
mode, and the best tokens/s reachable at each latency as a step line), the simulated candidates starred at their
simulated medians, and `#index` labels on the candidates the printed tables list, which are the same indexes the
store keeps (samples named search.*, t = index). Legend and colour bar sit outside the data (matplotlib Agg, lazy
import)."""

from __future__ import annotations

from pathlib import Path

MODE_STYLE = {"disagg": ("o", "tab:orange"), "agg": ("^", "tab:purple")}
"""Marker and colour of a frontier point by serving mode."""


def _nice_log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks within [lo, hi] (1-2-3-5 when that gives fewer than three), for plain labels on a log axis."""
    import math

    for mantissas in ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in mantissas if lo <= m * 10**e <= hi]
        if len(ticks) >= 3:
            return ticks
    return ticks


def _plain(v: float, _pos=None) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:g}"


def _place_labels(ax, points: list[tuple[float, float, str]], fontsize: float,
                  markers: list[tuple[float, float, float]] = ()) -> None:
    """Label each (x, y, text) beside its point, moving labels up or down (right of the point, then left) until they
    overlap no label placed before and no marker (x, y, radius in points) and stay inside the axes; a thin leader line
    joins a moved label to its point."""
    fig = ax.figure
    to_pt = 72.0 / fig.dpi
    h = fontsize * 1.25
    placed: list[tuple[float, float, float, float]] = []  # boxes in points: x0, y0, x1, y1
    for x, y, r in markers:
        mx, my = (v * to_pt for v in ax.transData.transform((x, y)))
        placed.append((mx - r, my - r, mx + r, my + r))

    inside = [v * to_pt for v in ax.get_window_extent().extents]

    def free(box) -> bool:
        if box[0] < inside[0] or box[1] < inside[1] or box[2] > inside[2] or box[3] > inside[3]:
            return False
        return all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in placed)

    order = sorted(points, key=lambda p: -ax.transData.transform((p[0], p[1]))[1])
    for x, y, text in order:
        px, py = (v * to_pt for v in ax.transData.transform((x, y)))
        w = 0.62 * fontsize * len(text)
        choice = None
        for k in range(60):
            dy = (k + 1) // 2 * h * (1 if k % 2 else -1) if k else 0.0
            for dx in (7.0, -7.0 - w):
                box = (px + dx, py + dy - h / 2, px + dx + w, py + dy + h / 2)
                if free(box):
                    choice = (dx, dy, box)
                    break
            if choice:
                break
        if choice is None:
            choice = (7.0, 0.0, (px + 7, py - h / 2, px + 7 + w, py + h / 2))
        dx, dy, box = choice
        placed.append(box)
        ax.annotate(text, (x, y), xytext=(dx if dx > 0 else dx + w, dy), textcoords="offset points",
                    fontsize=fontsize, va="center", ha="left" if dx > 0 else "right",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.35"} if abs(dy) > 0.1 else None,
                    bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75})


def _staircase(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The best y reachable at latency x or lower, as (x, y) corners of a step line."""
    best = -1.0
    sx, sy = [], []
    for x, y in sorted(zip(xs, ys), key=lambda p: (p[0], -p[1])):
        if y > best:
            best = y
            sx.append(x)
            sy.append(y)
    return sx, sy


def frontier_plot(result, path: Path, title: str, labelled: list[int] | None = None) -> Path:
    """Write the picture (frontier_figure) to path as PNG."""
    import matplotlib.pyplot as plt

    fig = frontier_figure(result, title, labelled)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_figure(result, title: str, labelled: list[int] | None = None):
    """The figure. labelled: candidate indexes to label `#index` (the rows of the printed tables; the simulated
    candidates are labelled too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    c = result.candidates
    f = result.frontier
    sims = {s["index"]: s["simulation"] for s in result.simulated if s.get("simulation")}
    labels = list(dict.fromkeys([*(labelled or []), *sims]))
    tok = [x.tokens_per_s_per_device for x in c]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2), dpi=100)
    fig.subplots_adjust(left=0.06, right=0.9, top=0.9, bottom=0.2, wspace=0.16)
    cax = fig.add_axes((0.915, 0.2, 0.012, 0.7))
    hb = None
    for ax, key, label in ((axes[0], "tpot_ms", "TPOT (ms)"), (axes[1], "ttft_ms", "TTFT (ms)")):
        lat = [getattr(x, key) for x in c]
        sim_lat = [s[key]["p50"] for s in sims.values() if s[key]["p50"]]
        lo, hi = min(lat + sim_lat), max(lat + sim_lat)
        hb = ax.hexbin(lat, tok, xscale="log", gridsize=(70, 32), bins="log", mincnt=1, cmap="Blues",
                       linewidths=0.1)
        sx, sy = _staircase(lat, tok)
        ax.step(sx + [hi * 1.3], sy + [sy[-1]], where="post", color="tab:red", linewidth=1.2, zorder=3)
        for mode, (marker, colour) in MODE_STYLE.items():
            idx = [i for i in f if c[i].mode == mode]
            ax.scatter([getattr(c[i], key) for i in idx], [tok[i] for i in idx], marker=marker, s=22, color=colour,
                       edgecolors="black", linewidths=0.5, zorder=4)
        for i, s in sims.items():
            if s[key]["p50"] is None:
                continue
            ax.plot([getattr(c[i], key), s[key]["p50"]], [tok[i], s["tokens_per_s_per_device"]], color="tab:red",
                    linestyle=":", linewidth=0.8, zorder=4)
            ax.scatter([s[key]["p50"]], [s["tokens_per_s_per_device"]], marker="*", s=140, color="tab:red",
                       edgecolors="black", linewidths=0.5, zorder=5)
        ax.set_xlim(lo / 1.25, hi * 1.25)
        ax.set_ylim(0, max(tok + [s["tokens_per_s_per_device"] for s in sims.values()]) * 1.08)
        ax.xaxis.set_major_locator(FixedLocator(_nice_log_ticks(lo / 1.25, hi * 1.25)))
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.set_xlabel(f"{label}, log scale")
        ax.set_ylabel("output tokens/s per device")
        ax.grid(alpha=0.3, which="major")
        ax.set_title(f"tokens/s per device vs {label.split()[0]}", fontsize=10)
        marks = [(getattr(c[i], key), tok[i], 3.5) for i in f]
        marks += [(s[key]["p50"], s["tokens_per_s_per_device"], 6.0) for s in sims.values() if s[key]["p50"]]
        texts = [(getattr(c[i], key), tok[i], f"#{i}") for i in labels]
        texts += [(s[key]["p50"], s["tokens_per_s_per_device"], f"#{i} sim") for i, s in sims.items() if s[key]["p50"]]
        _place_labels(ax, texts, fontsize=7, markers=marks)
    cb = fig.colorbar(hb, cax=cax)
    cb.set_label("candidates per cell (log)")
    handles = [
        Line2D([], [], marker="h", linestyle="none", markersize=10, color="#6fa8dc",
               label=f"all {len(c):,} candidates (density)"),
        Line2D([], [], color="tab:red", linewidth=1.2, label="best tokens/s at this latency or lower"),
        *(Line2D([], [], marker=m, linestyle="none", markersize=6, color=col, markeredgecolor="black",
                 label=f"Pareto frontier (tokens/s, TPOT, TTFT), {mode}: {n}")
          for mode, (m, col) in MODE_STYLE.items() if (n := sum(1 for i in f if c[i].mode == mode))),
        Line2D([], [], marker="*", linestyle="none", markersize=12, color="tab:red", markeredgecolor="black",
               label="#index sim: simulated (p50), dotted from its twin figure"),
        Line2D([], [], linestyle="none", label="#index: the tables' # column (store: samples search.*, t = index)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.01))
    fig.suptitle(title)
    return fig
