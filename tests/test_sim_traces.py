"""Trace replay (cmtwin/sim/traffic.py): finite numbers only, no booleans for numbers, a trace must reach into the
simulated window, and reading is streamed and stops at the window (issue 20)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cmtwin.cli.main import main
from cmtwin.config.compose import load_spec
from cmtwin.planner.plan import compile_plan
from cmtwin.sim.serving import Simulator
from cmtwin.sim.traffic import MAX_LINE_BYTES, TraceError, TraceSource, load_trace

HEADER = "timestamp_s,prompt_len,output_len\n"


def _csv(path, rows):
    path.write_text(HEADER + "".join(f"{t},{p},{o}\n" for t, p, o in rows))
    return path


def _err(path) -> TraceError:
    with pytest.raises(TraceError) as e:
        load_trace(str(path))
    return e.value


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e400", "-1e400", "Infinity"])
@pytest.mark.parametrize("col, pos", [("timestamp_s", 1), ("prompt_len", 2), ("output_len", 3)])
def test_csv_non_finite_values_name_file_line_column_value_and_fix(workdir, value, col, pos):
    cells = ["0.5", "10", "5"]
    cells[pos - 1] = value
    p = workdir / "t.csv"
    p.write_text(HEADER + "0,10,5\n" + ",".join(cells) + "\n")
    e = _err(p)
    msg = str(e)
    assert "t.csv" in msg and "line 3" in msg and f"column {pos} ({col})" in msg and repr(value) in msg, msg
    assert "finite" in msg and e.fix and e.key == "workload.trace"


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400", "1" + "0" * 400])
def test_jsonl_non_finite_values(workdir, value):
    p = workdir / "t.jsonl"
    p.write_text('{"timestamp_s": 0, "prompt_len": 10, "output_len": 5}\n'
                 f'{{"timestamp_s": 1, "prompt_len": {value}, "output_len": 5}}\n')
    msg = str(_err(p))
    assert "t.jsonl" in msg and "line 2" in msg and "'prompt_len'" in msg and "finite" in msg, msg
    assert len(msg) < 600, "the value is quoted cut short, never whole"


@pytest.mark.parametrize("col", ["timestamp_s", "prompt_len", "output_len", "prefix_len"])
@pytest.mark.parametrize("value", ["true", "false"])
def test_jsonl_booleans_are_not_numbers(workdir, col, value):
    row = {"timestamp_s": "0", "prompt_len": "10", "output_len": "5", "prefix_id": '"a"', "prefix_len": "1"}
    row[col] = value
    p = workdir / "t.jsonl"
    p.write_text("{" + ", ".join(f'"{k}": {v}' for k, v in row.items()) + "}\n")
    e = _err(p)
    assert "line 1" in str(e) and col in str(e) and "boolean" in str(e) and e.fix, str(e)


def test_huge_digit_string_is_cut_in_the_message(workdir):
    p = workdir / "t.csv"
    p.write_text(HEADER + "0," + "9" * 100_000 + ",5\n")
    msg = str(_err(p))
    assert "line 2" in msg and "prompt_len" in msg and len(msg) < 600


def test_overlong_line_and_bad_bytes_name_their_line(workdir):
    p = workdir / "t.csv"
    p.write_text(HEADER + "0,10,5\n" + "1" * (MAX_LINE_BYTES + 10) + "\n")
    assert "line 3" in str(_err(p)) and "longer than" in str(_err(p))
    p.write_bytes((HEADER + "0,10,5\n0.1,10,5\n").encode() + b"0.2,1\xff0,5\n")
    msg = str(_err(p))
    assert "line 4" in msg and "utf-8" in msg.lower()


def test_valid_values_still_read(workdir):
    p = workdir / "t.jsonl"
    p.write_text('\ufeff{"timestamp_s": 0, "prompt_len": 10.0, "output_len": 3, "prefix_id": 7, "prefix_len": 8}\n\n'
                 '{"timestamp_s": 0.5, "prompt_len": "12", "output_len": 1}\n')
    tr = load_trace(str(p))
    assert list(tr.prompt) == [10, 12] and list(tr.prefix) == [0, -1] and list(tr.prefix_len) == [8, 0]


# ------------------------------------------------------------------------------------------ streaming


def _long_trace(path, n=20_000, rate=100.0):
    t = 0.001 + np.arange(n) / rate  # off the window's edge
    return _csv(path, [(f"{x:.4f}", 100, 10) for x in t])


def test_reading_is_lazy_and_stops_at_the_window(workdir):
    p = _long_trace(workdir / "long.csv")  # 200 s of requests at 100/s
    src = TraceSource(str(p), chunk=100)
    it = src.chunks(until_s=5.0)
    first = next(it)
    assert len(first) == 100 and src.rows_read <= 101, "a chunk is parsed only when asked for"
    rest = list(it)
    got = len(first) + sum(len(c) for c in rest)
    assert got == 500  # t = 0.001 .. 4.991
    assert src.rows_read == got + 1, "nothing after the first request past the window is read"
    win = TraceSource(str(p)).window(5.0)
    assert win.requests == 500 and win.beyond and win.rate_per_s == pytest.approx(500 / 5.0)


def test_rows_after_the_window_are_not_read(workdir):
    p = workdir / "t.csv"
    p.write_text(HEADER + "0,10,5\n1,10,5\n50,10,5\nnot,a,row\n\xff\n")
    src = TraceSource(str(p))
    assert sum(len(c) for c in src.chunks(until_s=10)) == 2 and src.rows_read == 3


@pytest.fixture(scope="module")
def small_plan():
    spec, _ = load_spec(["+deployment=r1_ep320", "sim.duration_s=4", "sim.warmup_s=1"])
    return spec, compile_plan(spec)


def test_simulator_streams_the_trace_up_to_the_window(workdir, small_plan):
    spec, plan = small_plan
    p = _long_trace(workdir / "long.csv", n=20_000, rate=50.0)  # 400 s; 4 s are simulated
    src = TraceSource(str(p), chunk=64)
    res = Simulator(spec, plan, trace=src).run()
    in_window = 200  # t = 0.001 .. 3.981 at 50/s
    assert res.requests["arrived"] == in_window
    assert src.rows_read == 2 * (in_window + 1), "two passes (check, replay), each stopping at the window"
    assert res.rate_per_s == pytest.approx(in_window / 4.0)


def test_trace_all_after_the_window_exits_2(workdir, small_plan, capsys):
    spec, plan = small_plan
    p = _csv(workdir / "late.csv", [(100, 10, 5), (101, 10, 5)])
    with pytest.raises(TraceError) as e:
        Simulator(spec, plan, trace=TraceSource(str(p)))
    assert "late.csv" in str(e.value) and "sim.duration_s = 4" in str(e.value) and e.value.key == "sim.duration_s"
    assert "first arrives at 100 s" in str(e.value)
    assert "raise sim.duration_s" in e.value.fix
    rc = main(["simulate", "+deployment=r1_ep320", "workload=trace_small", "workload.trace=late.csv",
               "sim.duration_s=4", "sim.warmup_s=1", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and "late.csv" in err and "Traceback" not in err
    if (workdir / "cmtwin.db").exists():
        from cmtwin.store.engine import open_store
        from cmtwin.store.repo import list_runs

        assert list_runs(open_store("sqlite:///cmtwin.db")) == [], "nothing recorded"


def test_trace_ending_before_the_warmup_warns(workdir, small_plan, caplog):
    spec, plan = small_plan
    p = _csv(workdir / "early.csv", [(0, 10, 5), (0.5, 10, 5)])
    with caplog.at_level(logging.WARNING, logger="cmtwin.sim"):
        Simulator(spec, plan, trace=TraceSource(str(p)))
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "cmtwin.sim"]
    assert "early.csv" in msg and "warm-up" in msg and "sim.warmup_s" in msg


@pytest.mark.parametrize("body", ['{"timestamp_s": 0, "prompt_len": true, "output_len": 5}\n',
                                  '{"timestamp_s": 0, "prompt_len": 10, "output_len": 1e400}\n'])
def test_cli_bad_jsonl_values_exit_2(workdir, capsys, body):
    (workdir / "t.jsonl").write_text(body)
    rc = main(["simulate", "+deployment=r1_ep320", "workload=trace_small", "workload.trace=t.jsonl",
               "sim.duration_s=4", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and "t.jsonl" in err and "line 1" in err and "Traceback" not in err
