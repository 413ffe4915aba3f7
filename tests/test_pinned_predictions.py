"""Pinned predictions: every shipped deployment's prediction and the `cmtwin validate` table, stored as JSON
under tests/snapshots/ (one file per conf/deployment/*.yaml, plus validate.json).

A prediction is taken from the objects `cmtwin plan --format json` prints (cmtwin.twin.predict.predict on the
compiled plan), in-process: the prefill and decode figures as printed (step, TPOT, TTFT, tokens/s per device,
batch, ...), the busy time per stream of each phase, and the largest breakdown rows of each phase with their
unrounded times. Figures are compared with a relative tolerance of 1e-9 (float noise from a reordered sum
passes; any modelling change does not). A deliberate change to the twin rewrites the files with

    python -m pytest tests/test_pinned_predictions.py --update-snapshots

which shows what moved (as warnings) instead of failing; review the JSON diff before committing it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from cmtwin.paths import conf_dir

SNAPSHOTS = Path(__file__).parent / "snapshots"
REL_TOL = 1e-9  # relative: float noise only
TOP_ROWS = 8  # breakdown rows pinned per phase (by time), besides every stream's busy time
UPDATE_HINT = "python -m pytest tests/test_pinned_predictions.py --update-snapshots"


def shipped_deployments() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "deployment").glob("*.yaml"))


# --- what is pinned -------------------------------------------------------------------------------------------

def prediction_snapshot(deployment: str) -> dict[str, Any]:
    """The figures `cmtwin plan +deployment=<deployment> --format json` prints, with the breakdown's largest rows
    per phase unrounded and each stream's busy time."""
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan
    from cmtwin.twin.predict import predict

    spec, _ = load_spec([f"+deployment={deployment}"])
    pred = predict(spec, compile_plan(spec))
    phases = list(dict.fromkeys(r.phase for r in pred.breakdown))
    busy: dict[str, dict[str, float]] = {}
    top: dict[str, list[dict[str, Any]]] = {}
    for phase in phases:
        rows = [r for r in pred.breakdown if r.phase == phase]
        streams: dict[str, float] = {}
        for r in rows:
            streams[r.stream] = streams.get(r.stream, 0.0) + r.time_us
        busy[phase] = streams
        rows.sort(key=lambda r: (-r.time_us, r.stream, r.operator))
        top[phase] = [{"stream": r.stream, "operator": r.operator, "time_us": r.time_us, "bound": r.bound,
                       "calls": r.calls} for r in rows[:TOP_ROWS]]
    return {
        "deployment": deployment,
        "prefill": pred.prefill.to_dict() if pred.prefill else None,
        "decode": pred.decode.to_dict() if pred.decode else None,
        "bottleneck": pred.bottleneck,
        "notes": list(pred.notes),
        "stream_busy_us": busy,
        "breakdown_top": top,
    }


def validate_snapshot() -> dict[str, Any]:
    """The `cmtwin validate` table: every check's group, case, published figure, the twin's and the error (not the
    unit and bound columns: labels, not predictions)."""
    from cmtwin.validation.checks import all_checks

    return {"checks": [{
        "group": c.group, "case": c.name, "published": c.published,
        "predicted": c.predicted if c.feasible else None, "feasible": c.feasible, "error": c.error,
    } for c in all_checks()]}


# --- comparison -----------------------------------------------------------------------------------------------

def _ident(item: Any, index: int) -> str:
    """A list item's name in a diff: a breakdown row by stream/operator, a check by group | case."""
    if isinstance(item, dict) and "stream" in item and "operator" in item:
        return f"{item['stream']}/{item['operator']}"
    if isinstance(item, dict) and "group" in item and "case" in item:
        return f"{item['group']} | {item['case']}"
    return str(index)


def flatten(node: Any, key: str = "") -> dict[str, Any]:
    """Leaf values by path (`decode.step_ms`, `breakdown_top.prefill[compute/mha_attention].time_us`)."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(flatten(v, f"{key}.{k}" if key else str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.update(flatten(v, f"{key}[{_ident(v, i)}]"))
    else:
        out[key] = node
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def diff(old: dict, new: dict, rel_tol: float = REL_TOL) -> list[str]:
    """One line per figure that moved beyond rel_tol: `key: old -> new (relative change)`; appeared and gone too."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in [*a, *(k for k in b if k not in a)]:
        if key not in b:
            lines.append(f"{key}: {a[key]!r} -> (gone)")
        elif key not in a:
            lines.append(f"{key}: (new) -> {b[key]!r}")
        elif _is_number(a[key]) and _is_number(b[key]):
            o, n = a[key], b[key]
            if not math.isclose(o, n, rel_tol=rel_tol, abs_tol=0.0):
                rel = f"{(n - o) / abs(o):+.3g} relative" if o else "from zero"
                lines.append(f"{key}: {o!r} -> {n!r} ({rel})")
        elif a[key] != b[key]:
            lines.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return lines


def check_snapshot(request, name: str, new: dict) -> None:
    """Compare `new` with tests/snapshots/<name>.json; with --update-snapshots rewrite it and warn what moved."""
    path = SNAPSHOTS / f"{name}.json"
    text = json.dumps(new, indent=2, allow_nan=False) + "\n"
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    if request.config.getoption("--update-snapshots"):
        if old is None or path.read_text(encoding="utf-8") != text:
            SNAPSHOTS.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            moved = diff(old, new) if old is not None else ["(new snapshot)"]
            if moved:
                warnings.warn(f"{path.name} rewritten:\n  " + "\n  ".join(moved), stacklevel=1)
        return
    if old is None:
        pytest.fail(f"no snapshot {path.relative_to(SNAPSHOTS.parent.parent)}; create it with `{UPDATE_HINT}`",
                    pytrace=False)
    moved = diff(old, new)
    if moved:
        pytest.fail(f"{path.name}: {len(moved)} pinned figure(s) moved (old -> new):\n  " + "\n  ".join(moved)
                    + f"\nIf the twin changed on purpose, rewrite the snapshots with `{UPDATE_HINT}` and commit "
                      "the JSON diff with the reason.", pytrace=False)


# --- the tests ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("deployment", shipped_deployments())
def test_shipped_deployment_prediction_is_pinned(request, deployment):
    check_snapshot(request, deployment, prediction_snapshot(deployment))


def test_validate_table_is_pinned(request):
    snap = validate_snapshot()
    cases = [(c["group"], c["case"]) for c in snap["checks"]]
    assert len(cases) == len(set(cases)), "validate cases must be unique to be compared by name"
    check_snapshot(request, "validate", snap)


def test_every_shipped_deployment_has_a_snapshot_and_no_other(request):
    expected = {*shipped_deployments(), "validate"}
    present = {p.stem for p in SNAPSHOTS.glob("*.json")}
    if request.config.getoption("--update-snapshots"):
        for stale in present - expected:
            (SNAPSHOTS / f"{stale}.json").unlink()
            warnings.warn(f"{stale}.json removed: no such deployment", stacklevel=1)
        return
    assert expected <= present, f"missing snapshots {sorted(expected - present)}: run `{UPDATE_HINT}`"
    assert present <= expected, (f"snapshots of deployments that no longer ship: {sorted(present - expected)}; "
                                 f"`{UPDATE_HINT}` removes them")


def test_a_moved_figure_fails_with_its_old_and_new_value():
    """The comparison itself can fail: a change of 1e-6 relative is reported with both values, a row leaving the
    top of the breakdown is reported, float noise (1e-13) is not."""
    old = {"decode": {"step_ms": 79.885, "batch_per_device": 96, "serving_mode": "agg"},
           "breakdown_top": {"decode": [{"stream": "moe", "operator": "dispatch", "time_us": 1234.5}]},
           "checks": [{"group": "headline", "case": "decode", "predicted": 1900.0}]}
    new = json.loads(json.dumps(old))
    assert diff(old, new) == []
    new["decode"]["step_ms"] *= 1 + 1e-13
    assert diff(old, new) == []
    new["decode"]["step_ms"] = 79.885 * (1 + 1e-6)
    new["decode"]["serving_mode"] = "disagg"
    new["breakdown_top"]["decode"][0]["operator"] = "combine"
    new["checks"][0]["predicted"] = 1710.0
    lines = diff(old, new)
    assert any(line.startswith("decode.step_ms: 79.885 -> 79.88507") and "+1e-06 relative" in line for line in lines)
    assert "decode.serving_mode: 'agg' -> 'disagg'" in lines
    assert "breakdown_top.decode[moe/dispatch].time_us: 1234.5 -> (gone)" in lines
    assert "breakdown_top.decode[moe/combine].time_us: (new) -> 1234.5" in lines
    assert "checks[headline | decode].predicted: 1900.0 -> 1710.0 (-0.1 relative)" in lines
    assert "decode.batch_per_device" not in "\n".join(lines)
