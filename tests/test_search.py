"""The plan search: frontier correctness, candidates that compile and predict as the search says,
serial == parallel, the CLI and the store (layouts: tests/test_search_layouts.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.errors import StoreError
from cmtwin.search.run import expert_layout, pareto, search

SMALL = ["+deployment=r1_ep320", "search.devices=96", "search.decode_batches=[32,96]",
         "search.prefill_devices_per_instance=[16]", "search.prefill_tokens_per_device=[16384]",
         "search.mtp_draft_tokens=[0,1]", "search.precisions=[int8]", "search.decode_devices=[48,64,80]"]


def _dominates(a, b):
    return all(x <= y for x, y in zip(a, b)) and a != b


def test_pareto_matches_brute_force():
    rng = random.Random(1)
    for _ in range(20):
        pts = [tuple(rng.randint(0, 6) for _ in range(3)) for _ in range(40)]
        front = pareto(pts)
        expect = {p for p in pts if not any(_dominates(q, p) for q in pts)}
        assert {pts[i] for i in front} == expect
        assert len(front) == len(expect)  # one index per distinct point


def test_expert_layout_rules():
    assert expert_layout(256, 1, 320) == (32, 32)  # the published EP320 layout
    assert expert_layout(256, 1, 32) == (32, 0)  # EP32 prefill: 8 routed + 1 redundant per die
    red, ded = expert_layout(256, 1, 96)
    assert (256 + red) % 96 == 0 and ded == 0


@pytest.fixture(scope="module")
def small():
    spec, _ = load_spec(SMALL + ["search.simulate_top=1", "search.sim_duration_s=20"])
    return spec, search(spec, workers=1)


def test_search_frontier_is_not_dominated(small):
    spec, res = small
    assert len(res.candidates) >= 20 and res.frontier
    pts = [(-c.tokens_per_s_per_device, c.tpot_ms, c.ttft_ms) for c in res.candidates]
    for i in res.frontier:
        assert not any(_dominates(q, pts[i]) for q in pts)
    assert all(c.devices <= 96 for c in res.candidates)


def test_frontier_candidates_compile_and_predict_as_searched(small):
    """A frontier point's overrides compile with the full planner checks, and `cmtwin plan`'s prediction is
    the search's figure (the search reuses compiled plans but never approximates the twin)."""
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    spec, res = small
    best_agg = max((i for i, c in enumerate(res.candidates) if c.mode == "agg"),
                   key=lambda i: res.candidates[i].tokens_per_s_per_device)
    for i in res.frontier[:3] + [best_agg]:
        c = res.candidates[i]
        s2, _ = load_spec(["+deployment=r1_ep320", *c.overrides()])
        pred = predict(s2, compile_plan(s2))
        assert pred.decode.tpot_ms == pytest.approx(c.tpot_ms, rel=1e-3)
        assert pred.decode.tokens_per_s_per_device == pytest.approx(c.decode.tokens_per_s_per_device, rel=1e-3)
        if c.prefill is None:  # aggregated: the chunked prefill between decode steps
            assert pred.prefill.ttft_ms == pytest.approx(c.ttft_ms, rel=1e-3)
        else:
            assert pred.prefill.tokens_per_s_per_device == pytest.approx(c.prefill.tokens_per_s_per_device, rel=1e-3)
    sim = res.simulated[0]
    assert "simulation" in sim, sim
    assert sim["simulation"]["tpot_ms"]["p50"] is not None


def test_sampled_candidates_pass_the_full_planner(small):
    """Pruning is exact: candidates anywhere in the space (not only the frontier) compile with every check."""
    from cmtwin.planner.plan import compile_plan

    spec, res = small
    rng = random.Random(3)
    picks = rng.sample(range(len(res.candidates)), 8)
    biggest = max(range(len(res.candidates)), key=lambda i: res.candidates[i].decode.batch_per_device)
    for i in picks + [biggest]:
        s2, _ = load_spec(["+deployment=r1_ep320", *res.candidates[i].overrides()])
        compile_plan(s2)


def test_parallel_equals_serial(small):
    spec, res = small
    par = search(spec, workers=2, simulate=False)
    assert [c.to_dict() for c in par.candidates] == [c.to_dict() for c in res.candidates]
    assert par.frontier == res.frontier


def test_slo_filters_candidates():
    spec, _ = load_spec(SMALL + ["slo.tpot_ms=40"])
    res = search(spec, workers=1, simulate=False)
    assert res.candidates and all(c.tpot_ms <= 40 for c in res.candidates)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_search_stores_every_point(workdir):
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run, get_samples

    p = _cli("search", *SMALL, "search.simulate_top=0", "search.workers=1", "--format", "json", cwd=workdir)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    store = open_store("sqlite:///cmtwin.db")
    run = get_run(store, out["run_id"])
    assert run.status == "ok" and run.verb == "search"
    samples = get_samples(store, out["run_id"])
    per = {}
    for s in samples:
        per.setdefault(s.name, []).append(s.value)
    assert len(per["search.tokens_per_s_per_device"]) == out["candidates"]
    assert sum(per["search.pareto"]) == len(out["frontier"])
    for name in ("search.mode", "search.concurrency", "search.decode.tp", "search.decode.moe_tp", "search.decode.ep",
                 "search.decode.pp", "search.decode.instances", "search.prefill.tp", "search.prefill.ep"):
        assert len(per[name]) == out["candidates"], name
    assert set(per["search.mode"]) == {0.0, 1.0}  # MODE_CODES: disagg, agg
    row = out["frontier"][0]
    assert row["layout"].startswith(row["mode"]) and {"tp", "moe_tp", "ep", "pp"} <= set(row["decode"])
    assert row["decode_instances"] >= 1 and row["concurrency"] > 0
    assert {(r["mode"], r["decode"]["tp"]) for r in out["best_per_layout"]} >= {("agg", 1), ("disagg", 1)}
    assert (workdir / out["plot"]).is_file()
    assert run.metrics["search.candidates"] == out["candidates"]
    assert run.output_dir == str(Path("runs") / str(out["run_id"])) and (workdir / run.output_dir).is_dir()


def test_cli_search_simulates_while_it_stores(workdir):
    """The command's frontier simulations run in the pool while it writes the candidates (simulate_frontier); the
    run's stored prediction then holds them (short outputs keep the simulated request lifetimes short)."""
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run

    p = _cli("search", *SMALL, "search.simulate_top=2", "search.sim_duration_s=5", "workload.output_len=32",
             "search.workers=2", "--format", "json", cwd=workdir)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    run = get_run(open_store("sqlite:///cmtwin.db"), out["run_id"])
    assert run.status == "ok"
    assert [s["index"] for s in out["simulated"]] == [r["index"] for r in out["frontier"][:2]]
    assert all(s["simulation"]["requests"]["completed"] > 0 for s in out["simulated"])
    assert out["simulated"] == run.prediction["simulated"] and run.prediction["frontier"] == out["frontier"]
    assert "simulate" in out["wall_s"] and run.metrics["search.wall_s.simulate"] > 0


def test_set_prediction_replaces_it(workdir):
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run, set_prediction, start_run

    store = open_store("sqlite:///cmtwin.db")
    rid = start_run(store, verb="search", deployment=None, plan_hash=None, overrides=[], config=None)
    assert get_run(store, rid).prediction is None
    set_prediction(store, rid, {"a": 1})
    set_prediction(store, rid, {"b": 2})
    assert get_run(store, rid).prediction == {"b": 2}
    with pytest.raises(StoreError):
        set_prediction(store, rid + 1, {"a": 1})


def test_cli_search_budget_over_topology_exits_2(workdir):
    p = _cli("search", "+deployment=r1_ep320", "search.devices=1000", cwd=workdir)
    assert p.returncode == 2 and "search.devices" in p.stderr and "Traceback" not in p.stderr


def test_frontier_simulations_run_one_of_identical_shares():
    """The frontier's simulations are sized to the question: k agg replicas, or k decode instances with a multiple of k
    prefill instances, are simulated as one share (one replica; one decode instance with P / k prefill instances),
    the entry saying so (`simulated_share`); with P not a multiple of k the whole deployment is simulated."""
    from cmtwin.search.run import Candidate, DecodeEval, PrefillEval, _one_share

    dec = DecodeEval(mode="disagg", devices=8, tp=1, moe_tp=1, ep=8, pp=1, redundant=0, dedicated=0,
                     batch_per_group=32, microbatches=1, mtp=0, precision="fp8", tpot_ms=40.0,
                     tokens_per_s_per_device=1000.0, tokens_per_step=1.0)
    pre = PrefillEval(devices_per_instance=8, tp=1, moe_tp=1, ep=8, pp=1, redundant=0, tokens_per_device=8192,
                      mtp=0, precision="fp8", ttft_ms=500.0, tokens_per_s_per_device=5000.0)

    def cand(d, p, k, n):
        return Candidate(d, p, k, n, 8 * (k + n), 1.0, 1.0, 40.0, 500.0, "decode", 1)

    sec, k = _one_share(cand(dec, pre, 2, 6))
    assert k == 2 and sec["decode"]["instances"] == 1 and sec["prefill"]["instances"] == 3
    sec, k = _one_share(cand(dec, pre, 2, 5))  # 5 prefill instances do not split into 2 equal shares
    assert k == 1 and sec["decode"]["instances"] == 2 and sec["prefill"]["instances"] == 5
    agg = DecodeEval(**{**dec.__dict__, "mode": "agg"})
    sec, k = _one_share(cand(agg, None, 4, 0))
    assert k == 4 and sec["decode"]["instances"] == 1 and sec["prefill"] == {"instances": 0}
    assert _one_share(cand(dec, pre, 1, 3)) == (cand(dec, pre, 1, 3).sections(), 1)


def test_variant_is_the_whole_spec_validated_again():
    """_variant keeps the unchanged sections' validated models: the same spec (and plan hash) as dumping the whole
    spec, merging the parts and validating it all again, and the same refusal of an invalid combination."""
    from cmtwin.config.identity import spec_hash
    from cmtwin.errors import ConfigError
    from cmtwin.search.run import _variant

    def whole(spec, **parts):
        d = spec.model_dump()
        for k, v in parts.items():
            d[k] = {**d[k], **v} if isinstance(v, dict) else v
        return type(spec).model_validate(d)

    for dep in ("r1_ep320", "r1_h200_disagg"):
        spec, _ = load_spec([f"+deployment={dep}"])
        for parts in (dict(precision="int8", mtp={"draft_tokens": 1}, prefill={"instances": 0},
                           serving={"mode": "agg", "concurrency": None}),
                      dict(slo={"tpot_ms": None, "ttft_ms": None}, workload={"load": 0.9, "rate_per_s": None})):
            a, b = whole(spec, **parts), _variant(spec, **parts)
            assert a == b and a.model_dump() == b.model_dump() and spec_hash(a) == spec_hash(b)
        with pytest.raises(ConfigError, match="decode.ep"):
            _variant(spec, decode={"ep": spec.decode.ep + 1})


@pytest.mark.parametrize(("modes", "need", "agg_hint"), [("[disagg,agg]", 8, False), ("[disagg]", 16, True)])
def test_a_budget_too_small_for_any_pool_names_the_smallest_that_has_one(modes, need, agg_hint):
    """A node of 8 NPUs is the smallest instance; disagg needs the smallest prefill instance (8) beside it. The budget
    named is one the search then runs with (checked for the agg case)."""
    from cmtwin.errors import ConfigError

    spec, _ = load_spec(["+deployment=r1_ep320", "search.devices=3", f"search.modes={modes}"])
    with pytest.raises(ConfigError) as err:
        search(spec, workers=1, simulate=False)
    assert f"raise search.devices to at least {need}" in str(err.value)
    assert ("add agg to search.modes" in str(err.value)) == agg_hint
    if not agg_hint:
        spec, _ = load_spec(["+deployment=r1_ep320", f"search.devices={need}", f"search.modes={modes}"])
        assert search(spec, workers=1, simulate=False).candidates
