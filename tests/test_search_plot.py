"""`cmtwin search`'s record and picture: the run's recorded duration covers the whole search, and the frontier plot
is readable at tens of thousands of candidates with ids that the printed tables carry too."""

from __future__ import annotations

import io
import json
import time

from test_search import SMALL

QUICK = SMALL + ["search.simulate_top=0", "search.workers=1"]


def test_search_run_records_its_true_wall_time(workdir, monkeypatch, capsys):
    """The run row is created after the candidates are evaluated; its duration must still cover them (it read
    5.6 s for a 55 s search)."""
    import cmtwin.search.run as search_run
    from cmtwin.cli.main import main
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run, list_runs

    real = search_run.search

    def slow_search(*a, **kw):
        time.sleep(2.0)  # stands for a long candidate evaluation
        return real(*a, **kw)

    monkeypatch.setattr(search_run, "search", slow_search)
    assert main(["search", *QUICK, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    store = open_store("sqlite:///cmtwin.db")
    (summary,) = list_runs(store)
    run = get_run(store, out["run_id"])
    assert summary.duration_s >= 2.0 and run.duration_s >= 2.0
    # the recorded duration and the command's own wall clock agree
    assert abs(run.duration_s - run.metrics["wall_s"]) < 1.0
    assert abs(run.duration_s - out["wall_s"]["total"]) < 1.0


def _fake_result(n: int = 30_000, seed: int = 3):
    """n candidates shaped like a big search (tokens/s falling with latency, a few modes), a frontier, three
    simulated points."""
    from types import SimpleNamespace

    import numpy as np

    from cmtwin.search.run import pareto

    rng = np.random.default_rng(seed)
    tpot = np.exp(rng.uniform(np.log(12), np.log(250), n))
    ttft = np.exp(rng.uniform(np.log(400), np.log(12000), n))
    tok = 1300 * rng.beta(2, 3, n) * np.minimum(1.0, (tpot / 90) ** 0.5) * np.minimum(1.0, (ttft / 900) ** 0.3)
    modes = rng.choice(["disagg", "agg"], n, p=[0.9, 0.1])
    cands = [SimpleNamespace(mode=m, tokens_per_s_per_device=float(t), tpot_ms=float(a), ttft_ms=float(b))
             for m, t, a, b in zip(modes, tok, tpot, ttft)]
    front = sorted(pareto([(-c.tokens_per_s_per_device, c.tpot_ms, c.ttft_ms) for c in cands]),
                   key=lambda i: -cands[i].tokens_per_s_per_device)
    sims = [{"index": i, "simulation": {"tokens_per_s_per_device": cands[i].tokens_per_s_per_device * 0.85,
                                        "tpot_ms": {"p50": cands[i].tpot_ms * 0.8},
                                        "ttft_ms": {"p50": cands[i].ttft_ms * 0.6}}} for i in front[:3]]
    return SimpleNamespace(candidates=cands, frontier=front, simulated=sims)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_frontier_plot_is_readable_at_30000_points():
    """A density for the cloud (not 30,000 markers), the frontier on top, plain non-colliding log ticks, the legend
    outside the data, and exactly the requested #index labels, none on top of another."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.text import Text

    from cmtwin.search.plots import frontier_figure

    res = _fake_result()
    top = res.frontier[:10]
    fig = frontier_figure(res, "fake: 30,000 plans", labelled=top)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_xlabel()]
        assert len(axes) == 2
        for ax in axes:
            hexes = [col for col in ax.collections if isinstance(col, PolyCollection)]
            assert len(hexes) == 1 and len(hexes[0].get_offsets()) < 4000  # cells, not one marker per candidate
            markers = sum(len(col.get_offsets()) for col in ax.collections if col not in hexes)
            assert len(res.frontier) <= markers < len(res.frontier) + 10  # the frontier and the simulated stars
            ticks = [t for t in ax.get_xticklabels() if t.get_text()]
            assert len(ticks) >= 3 and all("$" not in t.get_text() for t in ticks)  # plain numbers, no 2x10^1
            boxes = [t.get_window_extent(renderer) for t in ticks]
            assert not any(_overlap(a, b) for k, a in enumerate(boxes) for b in boxes[k + 1:])
            labels = [t for t in ax.texts if t.get_text().startswith("#")]
            want = {f"#{i}" for i in top} | {f"#{s['index']} sim" for s in res.simulated}
            assert {t.get_text() for t in labels} == want
            lb = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its leader line
            assert not any(_overlap(a, b) for k, a in enumerate(lb) for b in lb[k + 1:])
            inside = ax.get_window_extent(renderer)
            assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1 for b in lb)
        (legend,) = fig.legends
        assert not any(_overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)) for ax in axes)
    finally:
        plt.close(fig)


def test_search_table_prints_the_ids_the_plot_labels(workdir, monkeypatch, capsys):
    """The printed frontier table's # column carries every id the plot labels; JSON frontier rows carry theirs."""
    import cmtwin.search.plots as plots
    from cmtwin.cli.main import main

    seen: list[str] = []
    real = plots.frontier_figure

    def spy(*a, **kw):
        fig = real(*a, **kw)
        seen.extend(t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("#"))
        return fig

    monkeypatch.setattr(plots, "frontier_figure", spy)
    assert main(["search", *SMALL, "search.simulate_top=1", "search.workers=1", "--top", "5"]) == 0
    text = capsys.readouterr().out
    printed = {int(cells[0]) for line in text.splitlines()  # a table row: the id, then its figures
               if len(cells := line.split()) >= 10 and cells[0].isdigit()}
    labelled = {int(t.split()[0][1:]) for t in seen}
    assert len(labelled) == 5 and labelled <= printed
    assert any(t.endswith(" sim") for t in seen) and any(line.startswith("simulated #") for line in text.splitlines())
    seen.clear()
    assert main(["search", *QUICK, "--top", "3", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {f"#{row['index']}" for row in out["frontier"][:3]} == set(seen)


def test_search_tables_fit_the_terminal(workdir, capsys):
    """On 80 columns the frontier's figures take one line per candidate and the layouts follow as a list; on a wide
    terminal the layout is the table's last column."""
    from rich.console import Console

    from cmtwin.cli.main import main
    from cmtwin.cli.search_cmd import _table

    assert main(["search", *QUICK, "--top", "3", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["frontier"][:3]
    for width in (80, 250):
        con = Console(width=width, record=True, file=io.StringIO())
        con.print(_table("frontier", rows, con.width))
        lines = con.export_text().splitlines()
        assert max(map(len, (line.rstrip() for line in lines))) <= width
        figures = [line for line in lines if line.split() and line.split()[0] == str(rows[0]["index"])]
        assert len(figures) == 1  # its figures on one line, not folded
        inline = rows[0]["layout"] in figures[0]
        assert inline == (width == 250)
        assert inline or any(line.split()[:1] == [f"#{rows[0]['index']}"] for line in lines)
