"""`cmtwin validate`: prints to stdout and writes only where --out says (never into ./docs by itself), exits 3
when a row is outside its bound, and shows each row's unit and bound with a legend."""

from __future__ import annotations

import json

import pytest

import cmtwin.validation.checks as validate
from cmtwin.cli.main import main
from cmtwin.validation.checks import EXIT_OUTSIDE_BOUNDS, Check


@pytest.fixture(scope="module")
def checks():
    return validate.all_checks()


@pytest.fixture
def docs_with_sentinel(workdir):
    """A user's own docs/ folder with files validate must not touch."""
    docs = workdir / "docs"
    docs.mkdir()
    (docs / "keep.txt").write_text("mine\n")
    (docs / "calibration.md").write_text("my own calibration notes\n")
    return docs


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_default_prints_to_stdout_and_leaves_docs_alone(docs_with_sentinel, checks, capsys):
    before = _snapshot(docs_with_sentinel)
    code = main(["validate"])
    out = capsys.readouterr().out
    assert _snapshot(docs_with_sentinel) == before  # nothing added, nothing overwritten
    assert sorted(p.name for p in docs_with_sentinel.parent.iterdir()) == ["docs"]  # nor beside it
    assert code == (3 if any(c.ok is False for c in checks) else 0)
    # units and bounds are shown, and a legend says what they mean
    for col in ("unit", "bound", "ok"):
        assert col in out
    for unit in {c.unit for c in checks}:
        assert unit and unit in out  # headlines too (ms, tokens/s per device)
    for c in checks:
        if c.tolerance is not None:
            assert c.bound() in out  # e.g. ±5 %
    assert "bound: the largest |error|" in out and "ok: yes" in out
    assert f"{EXIT_OUTSIDE_BOUNDS} when any row reads no" in out


def test_out_dir_writes_both_reports_and_json_keeps_the_exit_code(docs_with_sentinel, checks, capsys):
    before = _snapshot(docs_with_sentinel)
    target = docs_with_sentinel.parent / "report" / "nested"
    code = main(["validate", "--format", "json", "--out", str(target)])
    rows = json.loads(capsys.readouterr().out)
    assert _snapshot(docs_with_sentinel) == before
    assert sorted(p.name for p in target.iterdir()) == ["calibration.md", "validation.md"]
    assert code == (EXIT_OUTSIDE_BOUNDS if any(r["within_bound"] is False for r in rows) else 0)
    assert code == (EXIT_OUTSIDE_BOUNDS if any(c.ok is False for c in checks) else 0)
    for r in rows:
        assert r["unit"], r  # every row has a unit, headlines included
        assert (r["bound"] is None) == (r["within_bound"] is None) or r["infeasible"]
    report = (target / "validation.md").read_text(encoding="utf-8")
    assert "| case | unit | published | twin | error | bound | ok |" in report
    assert "±5 %" in report and "## How to read these tables" in report
    assert f"{EXIT_OUTSIDE_BOUNDS} when any row reads no" in report
    assert "`cmtwin validate --out docs`" in report
    assert "# Calibrated constants" in (target / "calibration.md").read_text(encoding="utf-8")


def test_out_that_is_a_file_is_refused_with_exit_2(workdir, capsys):
    (workdir / "report.md").write_text("x")
    assert main(["validate", "--out", "report.md"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err
    assert (workdir / "report.md").read_text() == "x"


def _fake(rows):
    return lambda: [Check("g", f"row{i}", 100.0, pred, "ms", "src", tol) for i, (pred, tol) in enumerate(rows)]


@pytest.mark.parametrize("rows, code", [
    ([(104.0, 0.05), (130.0, None)], 0),  # within its bound; an unbounded row is not judged
    ([(104.0, 0.05), (106.0, 0.05)], EXIT_OUTSIDE_BOUNDS),  # one row 6 % off a ±5 % bound
    ([(104.0, 0.05), (float("nan"), 0.10)], EXIT_OUTSIDE_BOUNDS),  # infeasible counts as outside
    ([(float("nan"), None)], EXIT_OUTSIDE_BOUNDS),  # even where the row has no bound
])
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_exit_code_says_whether_every_row_is_within_its_bound(rows, code, fmt, workdir, monkeypatch, capsys):
    monkeypatch.setattr(validate, "all_checks", _fake(rows))
    assert main(["validate", "--format", fmt]) == code
    out = capsys.readouterr().out
    if fmt == "table":
        assert "±5 %" in out and "ms" in out
    else:
        assert [r["within_bound"] for r in json.loads(out)] == [c.ok for c in _fake(rows)()]
    assert not (workdir / "docs").exists() and not list(workdir.iterdir())
