"""`cmtwin execute --compare`: the twin's predicted layer and operator times beside the measured ones, for
several hardware profiles (the deployment's shipped profile, this device's calibrated one), with the error
of each.

The comparison works on a *measurement*: plain JSON holding, per phase, the measured compute events (rank,
operator, microseconds, layer), the graphed segments where the run was timed with CUDA graphs, and the
catalogue operators of every executed (rank, layer) at the executed shapes. A live run is turned into one
(``measurement_of``); benchmarks/gpu_check.py stores one in benchmarks/data/<gpu>_check.json, so a machine
without a GPU re-predicts a GPU's measurement with the twin as it is now (``replay``) -- the same code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cmtwin.model.operators import Op

WITHIN = 0.20  # the claim docs/executor.md makes for a calibrated profile: a layer within 20% of the measurement


@dataclass(frozen=True)
class Costing:
    """What re-predicting a phase's executed operators needs, without the run's tensors."""

    phase: str
    model: object  # the scaled ModelSpec
    prec: object  # cmtwin.model.precision.Precision the executor runs in
    kv_len: int
    tokens: int  # per rank
    dense: tuple  # per executed layer
    mtp: tuple  # per executed layer
    keys: dict  # (rank, layer) -> (layer, loads, shared tokens, head): PoolRun._flush's key


def costing_of(run) -> Costing:
    return Costing(run.phase, run.model, run.prec, run.ex.kv_len, run.T, tuple(lw.dense for lw in run.W.layers),
                   tuple(lw.mtp for lw in run.W.layers), dict(run.layer_keys))


def groups_of(c: Costing) -> list[dict]:
    """The catalogue operators of every executed (rank, layer), one entry per distinct layer: {'members':
    [[rank, layer], ...], 'head': bool, 'ops': [Op fields]} (JSON-ready)."""
    from cmtwin.executor.predict import catalogue_ops

    by_key: dict = {}
    for (r, layer), key in sorted(c.keys.items()):
        by_key.setdefault(key, []).append([r, layer])
    out = []
    for (layer, loads, st, head), members in by_key.items():
        dense = (not head) and c.dense[layer]
        mtp = (not head) and c.mtp[layer]
        ops = catalogue_ops(c.model, c.prec, phase=c.phase, tokens=c.tokens, kv_len=c.kv_len, dense=dense,
                            loads=loads, shared_tokens=st, head=head, mtp=mtp)
        out.append({"members": members, "head": bool(head), "ops": [_plain(dataclasses.asdict(o)) for o in ops]})
    return out


def _plain(d: dict) -> dict:
    """Op fields as JSON's own types (a numpy scalar, which some operator counts are, is not JSON)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in d.items()}


def measurement_of(result) -> dict:
    """An ExecuteResult as a measurement (JSON-ready): device, timing method and per phase the compute
    events, graphed segments and the executed operators."""
    phases = []
    for p in result.phases:
        c = result.costing.get(p.phase)
        phases.append({
            "phase": p.phase, "ranks": p.ranks, "tokens_per_rank": c.tokens if c else None,
            "events": [[r, op, us, layer] for r, op, kind, us, _, layer in p.events if kind == "compute"],
            "segments": [[r, seg, us, layer] for r, seg, us, layer in p.segments],
            "groups": groups_of(c) if c else []})
    return {"device": result.device, "timing": result.timing, "phases": phases}


def _ops(group: dict) -> list[Op]:
    return [o if isinstance(o, Op) else Op(**o) for o in group["ops"]]


def predict(measurement: dict, hw) -> dict:
    """Per phase, per (rank, layer): the twin's predicted microseconds by operator name on profile hw."""
    from cmtwin.twin.cost import op_time

    out: dict = {}
    for p in measurement["phases"]:
        per: dict = {}
        for g in p["groups"]:
            pred: dict = {}
            for o in _ops(g):  # an operator per routed expert: the rank's total under the executor's name
                pred[o.name] = pred.get(o.name, 0.0) + op_time(o, hw).us
            for r, layer in g["members"]:
                per[(r, layer)] = (pred, g["head"])
        out[p["phase"]] = per
    return out


def _rel(pred: float, meas: float | None) -> float | None:
    return (pred - meas) / meas if meas else None


def compare(measurement: dict, profiles) -> dict:
    """The comparison of a measurement with each (role, HardwareProfile) in `profiles`: per profile, per phase
    the layer (compute of one rank's layer, mean over ranks and layers, the LM head apart) measured -- as the
    sum of its operators and, where graphed, as graphed segments -- and predicted, with the relative error
    (predicted - measured) / measured; per operator the same."""
    from cmtwin.executor.api import layer_graph_us

    out = {"device": measurement.get("device"), "timing": measurement.get("timing"), "within": WITHIN,
           "profiles": []}
    for role, hw in profiles:
        preds = predict(measurement, hw)
        layers: dict = {}
        ops: list = []
        for p in measurement["phases"]:
            ph, per = p["phase"], preds[p["phase"]]
            meas_l, pred_l, seen = 0.0, 0.0, set()
            rows: dict = {}
            for r, op, us, layer in p["events"]:
                pred, head = per.get((r, layer), ({}, False))
                pu = pred.get(op, 0.0)
                d = rows.setdefault(op, [0.0, 0.0, 0])
                d[0] += us
                d[1] += pu
                d[2] += 1
                if not head:
                    meas_l += us
                    pred_l += pu
                    seen.add((r, layer))
            n = len(seen) or 1
            body = sorted({layer for r, layer in seen})
            entry = {"measured_us": meas_l / n, "predicted_us": pred_l / n, "rel_err": _rel(pred_l / n, meas_l / n),
                     "instances": len(seen)}
            graph = layer_graph_us([tuple(s) for s in p.get("segments") or ()], body)
            if graph is not None:
                entry.update(graph_us=graph, graph_rel_err=_rel(pred_l / n, graph))
            layers[ph] = entry
            for op, (m, pr, k) in rows.items():
                ops.append({"phase": ph, "op": op, "measured_us": m / k, "predicted_us": pr / k,
                            "rel_err": _rel(pr / k, m / k)})
        out["profiles"].append({"role": role, "name": hw.name, "kind": hw.kind, "per_layer": layers, "ops": ops})
    return out


def profiles_for(spec, device: str, chosen=None) -> list[tuple[str, object]]:
    """The profiles a comparison shows: the deployment's shipped profile; this device's calibrated profile
    (./cmtwin_conf/hardware/local_<device>.yaml, written by `cmtwin calibrate`) when there is one; and
    executor.profile ('chosen') when it is neither. Each once."""
    from cmtwin.config.compose import options
    from cmtwin.executor.api import load_profile

    out = [("shipped", spec.hardware)]
    local = f"local_{device}"
    if local in options("hardware"):
        out.append(("calibrated", load_profile(local)))
    if spec.executor.profile and spec.executor.profile not in {hw.name for _, hw in out}:
        out.append(("chosen", chosen if chosen is not None else load_profile(spec.executor.profile)))
    return out


def replay(check: dict, *, shipped=None) -> dict:
    """The comparison of a stored GPU check (benchmarks/gpu_check.py's JSON) recomputed here: its measurement
    against the shipped profile it names, loaded as the twin has it now (or `shipped`, a HardwareProfile), and
    against the profile calibrated on that GPU, stored in the file."""
    from cmtwin.executor.api import load_profile
    from cmtwin.twin.hardware import HardwareProfile

    profiles = [("shipped", shipped if shipped is not None else load_profile(check["shipped_profile"]))]
    if check.get("calibrated_profile"):
        profiles.append(("calibrated", HardwareProfile.model_validate(check["calibrated_profile"])))
    return compare(check["measurement"], profiles)


LAYER_FIELDS = ("measured_us", "predicted_us", "rel_err", "graph_us", "graph_rel_err")
OP_FIELDS = ("measured_us", "predicted_us")


def metrics_of(summary: dict) -> dict[str, float]:
    """A comparison as scalar metrics for the run's metrics table (no new table: the TUI's prediction tab
    reads them back with summary_from_metrics): compare.<role>.<profile>.<phase>.layer.<field> and
    compare.<role>.<profile>.<phase>.op.<op>.<field>, plus compare.timing.graphed (1 for CUDA graphs),
    .replays and .spread_median."""
    out: dict[str, float] = {}
    for p in summary["profiles"]:
        head = f"compare.{p['role']}.{p['name'].replace('.', '_')}"
        for ph, d in p["per_layer"].items():
            for k in LAYER_FIELDS:
                if d.get(k) is not None:
                    out[f"{head}.{ph}.layer.{k}"] = float(d[k])
        for r in p["ops"]:
            for k in OP_FIELDS:
                out[f"{head}.{r['phase']}.op.{r['op']}.{k}"] = float(r[k])
    tm = summary.get("timing") or {}
    out["compare.timing.graphed"] = 1.0 if tm.get("method") == "cuda-graph" else 0.0
    for k in ("replays", "spread_median"):
        if tm.get(k) is not None:
            out[f"compare.timing.{k}"] = float(tm[k])
    return out


def summary_from_metrics(metrics: dict[str, float]) -> dict | None:
    """The comparison metrics_of stored, read back (the profiles' kinds are not stored); None without one."""
    profiles: dict = {}
    for name, v in metrics.items():
        parts = name.split(".")
        if len(parts) < 6 or parts[0] != "compare" or parts[1] == "timing":
            continue
        role, prof, ph, what = parts[1], parts[2], parts[3], parts[4]
        p = profiles.setdefault((role, prof), {"role": role, "name": prof, "kind": None, "per_layer": {}, "_ops": {}})
        if what == "layer" and len(parts) == 6:
            p["per_layer"].setdefault(ph, {})[parts[5]] = v
        elif what == "op" and len(parts) == 7:
            p["_ops"].setdefault((ph, parts[5]), {"phase": ph, "op": parts[5]})[parts[6]] = v
    if not profiles:
        return None
    out = []
    for p in profiles.values():
        ops = []
        for r in p.pop("_ops").values():
            m, pr = r.get("measured_us"), r.get("predicted_us")
            ops.append({**r, "rel_err": _rel(pr, m) if m is not None and pr is not None else None})
        out.append({**p, "ops": ops})
    order = {"shipped": 0, "calibrated": 1}
    out.sort(key=lambda p: (order.get(p["role"], 2), p["name"]))
    graphed = metrics.get("compare.timing.graphed")
    timing = None if graphed is None else {"method": "cuda-graph" if graphed else "sync",
                                           "replays": metrics.get("compare.timing.replays"),
                                           "spread_median": metrics.get("compare.timing.spread_median")}
    return {"device": None, "timing": timing, "within": WITHIN, "profiles": out}
