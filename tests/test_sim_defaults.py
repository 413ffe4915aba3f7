"""`cmtwin simulate` at its defaults: a load below capacity that settles, goodput only against SLO targets that are
set, a steady-state verdict (cmtwin/sim/steady.py), the twin's figures as reference lines, the run's true wall
time."""

from __future__ import annotations

import json
import time

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.sim.serving import Simulator
from cmtwin.sim.steady import steady_state


def _run(*overrides: str):
    spec, _ = load_spec(["+deployment=r1_ep320", *overrides])
    return Simulator(spec, compile_plan(spec)).run()


@pytest.mark.parametrize("workload", ["chat_1k", "chat_4k", "long_128k", "bursty_chat"])
def test_default_workloads_offer_a_load_below_capacity(workload):
    spec, _ = load_spec(["+deployment=r1_ep320", f"workload={workload}"])
    assert spec.workload.load == 0.8 and spec.workload.rate_per_s is None
    assert spec.sim.duration_s == 300.0


def test_default_ttft_settles_and_the_verdict_says_so():
    """At the default load the TTFT median of a run three times longer is within 20% (the issue's acceptance, at
    600 and 3600 s, is in docs/simulate.md), and both runs are called steady."""
    short, long = _run("sim.duration_s=150"), _run("sim.duration_s=450")
    assert short.load == pytest.approx(0.8)
    a, b = short.ttft_ms["p50"], long.ttft_ms["p50"]
    assert abs(b / a - 1.0) < 0.2, (a, b)
    for res in (short, long):
        st = res.steady_state
        assert st["reached"] is True, st["verdict"]
        assert st["verdict"].startswith("reached")
        assert res.metrics()["steady_state.reached"] == 1.0
        # the window's halves agree with each other and with the whole window's figures
        h = st["ttft_p50_ms"]
        assert h["first_half"] == pytest.approx(res.ttft_ms["p50"], rel=0.2)
        assert h["second_half"] == pytest.approx(res.ttft_ms["p50"], rel=0.2)


def test_overload_is_not_called_steady():
    """Above capacity the waiting queue grows without bound: the verdict says so and tells the user what to lower."""
    res = _run("workload.load=1.1", "sim.duration_s=90")
    st = res.steady_state
    assert st["reached"] is False
    assert st["waiting"]["second_half"] > st["waiting"]["first_half"] and st["waiting"]["slope_per_s"] > 0
    assert "waiting requests grew" in st["verdict"] and "workload.load" in st["verdict"]
    assert res.metrics()["steady_state.reached"] == 0.0


def test_too_short_a_run_is_filling_not_steady():
    """60 s of chat_4k: the decode pool fills for about one request's life (~30 s), so decode throughput still rises
    through the window."""
    st = _run("sim.duration_s=60").steady_state
    assert st["reached"] is False
    d = st["decode_tokens_per_s_per_device"]
    assert d["second_half"] > 1.1 * d["first_half"]
    assert "sim.duration_s" in st["verdict"]


def _columns(pairs):
    return [a for a, _ in pairs], [x for _, x in pairs]


def test_steady_state_rules_on_synthetic_series():
    rng = [0.37 * k % 1.0 for k in range(400)]  # deterministic scatter in [0, 1)
    pairs = [(10 + k * 0.2, 0.3 + 0.05 * rng[k]) for k in range(400)]  # 80 s of arrivals, TTFT ~0.3 s
    firsts = _columns(pairs)
    flat = [(float(t), 20 + int(5 * rng[t]), 500, 1000.0 * t) for t in range(1, 91)]
    kw = dict(rate=5.0, load=0.8, decode_devices=1, offline=False)
    assert steady_state(firsts, flat, (10.0, 90.0), **kw)["reached"] is True
    growing = [(t, q + 3 * t, d, o) for t, q, d, o in flat]
    out = steady_state(firsts, growing, (10.0, 90.0), **kw)
    assert out["reached"] is False and "grew" in out["verdict"]
    slower = _columns([(a, x if a < 50 else 2 * x) for a, x in pairs])
    assert "TTFT p50 moved" in steady_state(slower, flat, (10.0, 90.0), **kw)["verdict"]
    assert steady_state(firsts, flat, (10.0, 90.0), **{**kw, "load": 1.0})["reached"] is False
    assert steady_state(firsts, flat, (10.0, 90.0), **{**kw, "offline": True})["reached"] is None
    short = steady_state(_columns(pairs[:10]), flat[:3], (10.0, 13.0), **kw)
    assert short["reached"] is None and short["verdict"].startswith("too short")


def test_goodput_only_against_targets_that_are_set():
    none = _run("sim.duration_s=60")
    assert none.goodput is None and none.goodput_fraction is None
    assert "goodput" not in none.metrics() and none.to_dict()["slo"] == {"ttft_ms": None, "tpot_ms": None}
    # TTFT p50 is ~290 ms at the default load: a 300 ms target is met by some requests, not all
    some = _run("sim.duration_s=60", "slo.ttft_ms=300")
    assert 0.2 < some.goodput_fraction < 0.95
    assert some.to_dict()["slo"] == {"ttft_ms": 300.0, "tpot_ms": None}
    assert some.goodput == pytest.approx(some.requests["good"] / (60 - 6))


def test_cli_prints_the_verdict_and_the_missing_slo_and_plots_the_twin(workdir, monkeypatch, capsys):
    """Human output names the missing SLO and the verdict; the throughput plot gets the twin's lines; the run's
    recorded duration covers the work done before its row exists (compile, predict, tables)."""
    import cmtwin.sim.plots as plots
    import cmtwin.twin.predict as twin_predict
    from cmtwin.cli.main import main
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run

    real_predict = twin_predict.predict

    def slow_predict(*a, **kw):
        time.sleep(1.5)  # stands for slow compilation before the run row is created
        return real_predict(*a, **kw)

    seen = {}
    real_plot = plots.throughput_plot

    def spy(samples, path, title, **kw):
        seen.update(kw)
        return real_plot(samples, path, title, **kw)

    monkeypatch.setattr(twin_predict, "predict", slow_predict)
    monkeypatch.setattr(plots, "throughput_plot", spy)
    assert main(["simulate", "+deployment=r1_ep320", "sim.duration_s=150", "sim.warmup_s=40", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    run = get_run(open_store("sqlite:///cmtwin.db"), out["run_id"])
    assert run.duration_s >= 1.5 and abs(run.duration_s - run.metrics["wall_s"]) < 1.0
    assert run.metrics["steady_state.reached"] == 1.0 and "goodput" not in run.metrics
    sim, pred = out["simulation"], out["prediction"]
    assert sim["steady_state"]["reached"] is True and sim["load"] == pytest.approx(0.8)
    (twin, _), (offered, _) = seen["refs"]["decode.tokens_per_s_per_device"]
    assert twin == pred["decode"]["tokens_per_s_per_device"]
    assert offered == pytest.approx(sim["rate_per_s"] * 1024 / 160)  # chat_4k's output over the 160 decode devices
    assert offered == pytest.approx(sim["decode"]["tokens_per_s_per_device"], rel=0.05)  # what steady state gives
    assert seen["window"] == (40.0, 150.0) and seen["verdict"].startswith("reached")
    monkeypatch.setattr(twin_predict, "predict", real_predict)
    assert main(["simulate", "+deployment=r1_ep320", "sim.duration_s=60", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "no SLO set" in text and "steady state NOT reached" in text
