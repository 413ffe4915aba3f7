"""Issue 20, the config/input part: finite numbers only, bounds that stop unbounded work before it starts,
YAML without alias bombs or runaway nesting, messages that name the file, the key and the value (truncated),
and no environment interpolation in config files. Every case exits 2 with one paragraph and leaves the run
store as it was; each would hang, crash (exit 1) or mislead without its check."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest

from cmtwin.cli.main import main

D = "+deployment=r1_ep320"


def _runs(path: Path) -> int | None:
    db = path / "cmtwin.db"
    if not db.exists():
        return None
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


@contextmanager
def _deadline(seconds: float):
    """Fail (instead of hanging) when the command runs past `seconds`: the unbounded work these cases stop."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check(argv, fragments, workdir, capsys, seconds: float = 60):
    before = _runs(workdir)
    capsys.readouterr()
    with _deadline(seconds):
        rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"{argv} exited {rc}: {err or out}"
    assert "Traceback" not in err and "Traceback" not in out
    text = " ".join(err.split())
    assert text.startswith("error:"), err
    assert "\n\n" not in err.strip(), "one paragraph"
    for fragment in [fragments] if isinstance(fragments, str) else fragments:
        assert fragment.lower() in text.lower(), f"message lacks {fragment!r}: {text}"
    assert len(text) < 3000, f"message too long ({len(text)} characters)"
    assert _runs(workdir) == before, "the store changed"
    return text


# --- 1. finite numbers only, at the schema ----------------------------------------------------------------
NON_FINITE = [
    ("slo.tpot_ms", "inf"),
    ("slo.ttft_ms", "-inf"),
    ("workload.rate_per_s", "nan"),
    ("sim.duration_s", "inf"),
    ("sim.sample_interval_s", "nan"),
    ("mtp.acceptance", "nan"),
    ("placement.expert_load_cv", "nan"),
    ("caching.ssd_tb_per_node", "inf"),
    ("memory.reserve_gb_per_die", "inf"),
    ("hardware.die.memory_gib.value", "inf"),
    ("hardware.die.peak_tflops.int8.value", "nan"),
    ("search.sim_duration_s", "inf"),
]


@pytest.mark.parametrize("key,value", NON_FINITE, ids=[f"{k}={v}" for k, v in NON_FINITE])
def test_non_finite_number_refused(key, value, workdir, capsys):
    _check(["plan", D, f"{key}={value}"], [key, value, "finite number"], workdir, capsys)


# --- 2. bounds on simulated work, checked before the run row exists -----------------------------------------
SIM_BOUNDS = [
    ("duration-1e30", ["sim.duration_s=1e30"], ["sim.duration_s", "1e+30", "100,000", "Fix:"]),
    ("rate-1e30", ["workload.rate_per_s=1e30"], ["workload.rate_per_s", "1e+30", "x sim.duration_s (300 s)",
                                                 "5,000,000", "Fix:"]),
    ("tiny-sample-interval", ["sim.sample_interval_s=1e-6"], ["sim.sample_interval_s", "3e+08", "Fix:"]),
    ("long-duration-at-load", ["sim.duration_s=100000"], ["sim.duration_s (100,000 s)", "workload.load 0.8",
                                                          "expected requests", "Fix:"]),
    ("huge-offline-batch", ["workload.arrival=offline", "+workload.requests=1000000000"],
     ["workload.requests", "1e+09", "5,000,000"]),
]


@pytest.mark.parametrize("overrides,fragments", [c[1:] for c in SIM_BOUNDS], ids=[c[0] for c in SIM_BOUNDS])
def test_simulated_work_bounded(overrides, fragments, workdir, capsys):
    assert main(["plan", D, "--format", "json"]) == 0  # a store with one run: the refusal must add none
    _check(["simulate", D, "--no-plots", *overrides], fragments, workdir, capsys)
    with sqlite3.connect(workdir / "cmtwin.db") as con:
        assert con.execute("select count(*) from runs where status = 'running'").fetchone()[0] == 0


def test_simulated_work_limits_pass_the_defaults():
    from cmtwin.config.compose import load_spec
    from cmtwin.sim.spec import MAX_SIM_REQUESTS, MAX_SIM_SAMPLES, check_simulated_work

    spec, _ = load_spec([D])
    check_simulated_work(spec, rate_per_s=200.0, duration_s=spec.sim.duration_s)  # the default run: 60,000
    check_simulated_work(spec, rate_per_s=MAX_SIM_REQUESTS / MAX_SIM_SAMPLES, duration_s=MAX_SIM_SAMPLES)
