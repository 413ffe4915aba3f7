"""Issue 20, the config/input part: finite numbers only, bounds that stop unbounded work before it starts,
YAML without alias bombs or runaway nesting, messages that name the file, the key and the value (truncated),
and no environment interpolation in config files. Every case exits 2 with one paragraph and leaves the run
store as it was; each would hang, crash (exit 1) or mislead without its check."""

from __future__ import annotations

import sqlite3
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


def _check(argv, fragments, workdir, capsys):
    before = _runs(workdir)
    capsys.readouterr()
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
