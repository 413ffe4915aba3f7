"""Ray, through its own API and Hydra's plugin (the `ray` extra, not in dev: these tests skip without it): the search's
candidate batches as Ray tasks (`search.backend=ray`) give the process pool's candidates and frontier, and a sweep through
the Ray launcher (`hydra/launcher=ray`) records one run per point in one sweep. One local Ray instance (2 CPUs) per
test process. Without Ray, search.backend=ray exits 2 with the install command; an unknown backend exits 2 too. The
SLURM path's launcher (submitit, the `slurm` extra) runs locally as `submitit_local`."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from cmtwin.cli.main import main
from cmtwin.config.compose import load_spec
from cmtwin.search.run import search
from cmtwin.store.engine import open_store
from cmtwin.store.repo import get_run, list_runs

SMALL = ["+deployment=r1_ep320", "search.devices=96", "search.decode_batches=[32,96]",
         "search.prefill_devices_per_instance=[16]", "search.prefill_tokens_per_device=[16384]",
         "search.mtp_draft_tokens=[0,1]", "search.precisions=[int8]", "search.decode_devices=[48,64,80]"]
"""tests/test_search.py's reduced space: 295 candidates, a second of twin work."""


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A new local Ray instance of 2 CPUs (never a cluster RAY_ADDRESS names), started in a folder of its own: its
    workers run there, so a job's relative paths (runs/) stay out of the checkout."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    home = tmp_path_factory.mktemp("ray")
    cwd = os.getcwd()
    os.chdir(home)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.chdir(cwd)
    yield home
    ray.shutdown()


def _runs(db: str):
    runs = list_runs(open_store(db, create=False), limit=100)
    sweeps = {r.sweep for r in runs}
    assert len(sweeps) == 1 and None not in sweeps, sweeps
    return runs


def test_ray_backend_gives_the_process_pool_frontier(local_ray, workdir, capsys):
    spec, _ = load_spec([*SMALL, "search.simulate_top=1"])
    pool = search(spec, workers=2)
    on_ray, _ = load_spec([*SMALL, "search.simulate_top=1", "search.backend=ray"])
    res = search(on_ray)
    assert [c.to_dict() for c in res.candidates] == [c.to_dict() for c in pool.candidates]
    assert res.frontier == pool.frontier and len(res.frontier) > 10
    assert res.simulated == pool.simulated and "simulation" in res.simulated[0]
    # the command: the same frontier on stdout (JSON only; Ray's messages go to stderr), the run in the store
    capsys.readouterr()
    assert main(["search", *SMALL, "search.simulate_top=0", "search.backend=ray", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(f["index"], f["overrides"], f["tokens_per_s_per_device"]) for f in out["frontier"]] == \
        [(i, pool.candidates[i].overrides(), round(pool.candidates[i].tokens_per_s_per_device, 2))
         for i in pool.frontier]
    assert get_run(open_store("sqlite:///cmtwin.db", create=False), out["run_id"]).status == "ok"


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="hydra-ray-launcher (the ray extra) is not installed")
def test_simulate_sweep_through_the_ray_launcher(local_ray, workdir):
    """The issue's example through Hydra's Ray launcher, on the module's Ray instance (started before the sweep, so
    its workers never saw the sweep's variable: the job carries the id)."""
    db = f"sqlite:///{workdir / 'sweep.db'}"
    assert main(["simulate", "-m", "+deployment=r1_ep320", "workload.load=0.5,0.7,0.9", "sim.duration_s=10",
                 "hydra/launcher=ray", "--out-dir", str(workdir / "runs"), "--db", db]) == 0
    runs = _runs(db)
    assert sorted(r.verb for r in runs) == ["simulate"] * 3 and all(r.status == "ok" for r in runs)
    loads = sorted(o for r in runs for o in get_run(open_store(db, create=False), r.id).overrides if "load" in o)
    assert loads == ["workload.load=0.5", "workload.load=0.7", "workload.load=0.9"]


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher (the slurm extra) is not installed")
def test_plan_sweep_through_submitit_local(workdir):
    """The SLURM path's launcher, run locally: submitit's local executor, one process per job."""
    db = f"sqlite:///{workdir / 'sweep.db'}"
    assert main(["plan", "-m", "+deployment=r1_h200_tp8_agg", "decode.tp=1,8", "hydra/launcher=submitit_local",
                 "--db", db]) == 0
    runs = _runs(db)
    assert len(runs) == 2 and all(r.status == "ok" and r.verb == "plan" for r in runs)


def test_ray_backend_without_ray_exits_2_with_the_install_command(workdir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: find_spec gives None, import fails
    assert main(["search", *SMALL, "search.backend=ray"]) == 2
    err = capsys.readouterr().err
    assert "search.backend=ray" in err and 'pip install -e ".[ray]"' in err and "Traceback" not in err


def test_an_unknown_backend_exits_2_naming_the_choices(workdir, capsys):
    assert main(["search", *SMALL, "search.backend=dask"]) == 2
    err = capsys.readouterr().err
    assert "search.backend" in err and "dask" in err and "'process' or 'ray'" in err
