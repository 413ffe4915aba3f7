"""A run killed mid-way keeps every committed sample and is marked `interrupted` at the next open; SIGINT
ends it as `cancelled` with its data flushed. Exercised on a worker that writes samples the way the long
verbs do (batches through add_samples inside run_lifecycle)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cmtwin.store import open_store
from cmtwin.store.engine import close_all_stores
from cmtwin.store.repo import get_run, get_samples, list_runs

WORKER = r"""
import sys, time
from cmtwin.store import open_store
from cmtwin.store.repo import add_samples, run_lifecycle, start_run
store = open_store(sys.argv[1])
run = start_run(store, verb="simulate", deployment="r1_ep320", plan_hash="h", overrides=[], config={})
print(run, flush=True)
with run_lifecycle(store, run):
    for batch in range(10_000):
        add_samples(store, run, [(batch + i / 100, "throughput", 1.0) for i in range(100)])
        print("batch", batch, flush=True)
        time.sleep(0.02)
"""


def _start(url):
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url], stdout=subprocess.PIPE, text=True)
    run_id = int(proc.stdout.readline())
    seen = 0
    while seen < 5:  # let it commit a few batches
        if proc.stdout.readline().startswith("batch"):
            seen += 1
    return proc, run_id


def test_sigkill_keeps_committed_samples_and_marks_interrupted(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    proc, run_id = _start(url)
    proc.kill()
    proc.wait(timeout=10)
    close_all_stores()
    store = open_store(url)  # the next open notices the dead pid
    run = get_run(store, run_id)
    assert run.status == "interrupted"
    samples = get_samples(store, run_id)
    assert len(samples) >= 500 and len(samples) % 100 == 0  # whole batches only: nothing half-written


def test_sigint_ends_the_run_as_cancelled(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    proc, run_id = _start(url)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    close_all_stores()
    store = open_store(url)
    run = get_run(store, run_id)
    assert run.status == "cancelled" and "SIGINT" in (run.message or "")
    assert len(get_samples(store, run_id)) >= 500
    assert [r.status for r in list_runs(store)] == ["cancelled"]


# --- the real long verb ------------------------------------------------------------------------------------
def _simulate_until_samples(tmp_path, min_samples=20):
    """Start a long `cmtwin simulate`, return (process, url, run_id) once it has committed samples."""
    import shutil
    import sqlite3

    url = f"sqlite:///{tmp_path / 'cmtwin.db'}"
    env = {**os.environ, "CMTWIN_DB_URL": url}
    proc = subprocess.Popen([shutil.which("cmtwin"), "simulate", "+deployment=r1_ep320", "sim.duration_s=36000"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            with sqlite3.connect(tmp_path / "cmtwin.db") as con:
                row = con.execute("select run_id, count(*) from samples group by run_id").fetchone()
        except sqlite3.Error:
            continue
        if row and row[1] >= min_samples:
            return proc, url, row[0]
    proc.kill()
    raise AssertionError("simulate wrote no samples within 90 s")


def test_sigkill_in_the_middle_of_simulate(tmp_path):
    proc, url, run_id = _simulate_until_samples(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    close_all_stores()
    store = open_store(url)
    assert get_run(store, run_id).status == "interrupted"
    assert len(get_samples(store, run_id)) >= 20


def test_sigint_cancels_simulate_cleanly(tmp_path):
    proc, url, run_id = _simulate_until_samples(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    close_all_stores()
    store = open_store(url)
    run = get_run(store, run_id)
    assert run.status == "cancelled"
    assert len(get_samples(store, run_id)) >= 20
