"""`cmtwin execute` as a library call: run the plan's phases, check numerics, build the timeline."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmtwin.errors import CmtwinError

PRE_DISPATCH = ("dispatch",)


def load_profile(name: str):
    """A hardware profile by name from ./cmtwin_conf/hardware or conf/hardware, validated."""
    import yaml
    from pydantic import ValidationError

    from cmtwin.config.compose import USER_CONF, options
    from cmtwin.paths import conf_dir
    from cmtwin.twin.hardware import HardwareProfile

    for folder in (Path(USER_CONF) / "hardware", conf_dir() / "hardware"):
        f = folder / f"{name}.yaml"
        if f.is_file():
            try:
                return HardwareProfile.model_validate(yaml.safe_load(f.read_text()))
            except (ValidationError, yaml.YAMLError) as exc:
                raise CmtwinError(f"hardware profile {f}: {' '.join(str(exc).split())[:400]}",
                                  key="executor.profile") from None
    raise CmtwinError(f"executor.profile={name}: no such hardware profile.", key="executor.profile",
                      fix=f"choose one of {', '.join(options('hardware'))} or run `cmtwin calibrate`")


def prediction_profile(spec, device: str):
    return prediction_choice(spec, device)[0]


def prediction_choice(spec, device: str):
    """(profile, why) of the profile whose cost model predicts the measured compute: executor.profile when
    set ('executor.profile'), else the calibrated local_<device> when `cmtwin calibrate` has written one
    ('calibrated'), else the deployment's hardware ('deployment': not a description of this device)."""
    from cmtwin.config.compose import options

    name = spec.executor.profile
    if name is None:
        local = f"local_{device}"
        if local in options("hardware"):
            return load_profile(local), "calibrated"
        return spec.hardware, "deployment"
    return load_profile(name), "executor.profile"


def profile_note(hw, why: str, device: str) -> dict:
    """What the predictions stand for: the profile, how it was chosen, whether it describes this device, and
    the warning and fix when it does not (the measured and predicted times are then of different hardware)."""
    calibrated = why == "calibrated" or (why == "executor.profile" and hw.name.startswith("local_"))
    out = {"name": hw.name, "kind": hw.kind, "chosen_by": why, "describes_device": calibrated, "warning": None}
    if why == "deployment":
        out["warning"] = (f"this {device} has no calibrated profile (no ./cmtwin_conf/hardware/local_{device}.yaml), "
                          f"so its measured times are predicted with {hw.name}, the deployment's {hw.kind.upper()} "
                          f"profile: predicted vs measured compares two different devices. Fix: run `cmtwin calibrate` "
                          f"(same executor.scale and executor.dtype) in this directory, then execute again; it then "
                          f"predicts with local_{device} (or choose it with executor.profile=local_{device}).")
    elif not calibrated:
        out["warning"] = (f"executor.profile={hw.name} is a {hw.kind.upper()} profile, not a calibration of this "
                          f"{device}: predicted vs measured compares two devices. Fix: `cmtwin calibrate`, then "
                          f"executor.profile=local_{device}.")
    return out


@dataclass
class ExecuteResult:
    device: str
    profile: str
    phases: list
    timeline: list = field(default_factory=list)  # TimelineEvent tuples
    wall_s: float = 0.0
    profile_note: dict = field(default_factory=dict)  # profile_note(): which profile predicts, and whether it fits
    timing: dict = field(default_factory=dict)  # how the compute was timed (cmtwin.executor.timing, describe())
    costing: dict = field(default_factory=dict, repr=False)  # phase -> compare.Costing (re-predicting elsewhere)

    @property
    def max_rel_err(self) -> float | None:
        errs = [p.max_rel_err for p in self.phases if p.max_rel_err is not None]
        return max(errs) if errs else None

    def per_op(self) -> list[dict]:
        """Per phase and operator: measured and predicted microseconds, mean per rank per layer executed."""
        rows: dict = {}
        for p in self.phases:
            for r, op, kind, meas, pred, layer in p.events:
                key = (p.phase, op, kind)
                d = rows.setdefault(key, {"phase": p.phase, "op": op, "kind": kind, "measured_us": 0.0,
                                          "predicted_us": 0.0, "n": 0, "ranks": p.ranks})
                d["measured_us"] += meas
                d["predicted_us"] += pred or 0.0
                d["n"] += 1
        return list(rows.values())

    def per_layer(self) -> dict:
        """Per phase: compute time of one layer on one rank (mean over ranks and executed layers), measured
        and predicted, and the relative error of the prediction."""
        out = {}
        for p in self.phases:
            layers = {e[5] for e in p.events if e[2] == "compute"}
            mlayers = [l for l in layers if l < max(layers)] or list(layers)  # without the LM head
            meas = sum(e[3] for e in p.events if e[2] == "compute" and e[5] in mlayers)
            pred = sum(e[4] or 0.0 for e in p.events if e[2] == "compute" and e[5] in mlayers)
            k = p.ranks * len(mlayers)
            out[p.phase] = {"measured_us": meas / k, "predicted_us": pred / k,
                            "rel_err": (pred - meas) / meas if meas else None}
            graph = layer_graph_us(p.segments, mlayers)
            if graph is not None:  # the same layers captured as graphed segments (CUDA): the serving-like figure
                out[p.phase].update(graph_us=graph, graph_rel_err=(pred / k - graph) / graph if graph else None)
        return out


def layer_graph_us(segments, layers) -> float | None:
    """A layer's compute on one rank from graphed segments (rank, segment, us, layer): the mean over ranks and
    the given layers of the sum of that rank's segments in the layer; None when nothing was graphed."""
    per: dict = {}
    for r, _, us, layer in segments:
        if layer in layers:
            per[(r, layer)] = per.get((r, layer), 0.0) + us
    return sum(per.values()) / len(per) if per else None


def schedule(phase_offset_rank: int, phase: str, events: list, nranks: int) -> list:
    """Start times: each rank runs its operators back to back; dispatch and combine are collectives that
    start when the last rank is ready and end with the slowest rank's (twin-modelled) time."""
    from cmtwin.executor.trace import TimelineEvent

    clock = [0.0] * nranks
    out = []
    by_layer: dict[int, list] = {}
    for ev in events:
        by_layer.setdefault(ev[5], []).append(ev)
    for layer in sorted(by_layer):
        evs = by_layer[layer]
        comm = {k: [e for e in evs if e[1] == k] for k in ("dispatch", "combine")}
        stages = [[], [], []]  # before dispatch, experts, after combine (none)
        for e in evs:
            if e[2] == "comm":
                continue
            stage = 1 if ("expert" in e[1]) else 0
            stages[stage].append(e)
        for stage, kind in ((0, "dispatch"), (1, "combine")):
            for r, op, k, meas, pred, _ in stages[stage]:
                out.append(TimelineEvent(phase_offset_rank + r, f"{phase}.{op}", clock[r], meas, "compute", pred))
                clock[r] += meas
            if comm[kind]:
                start = max(clock)
                for r, op, k, meas, pred, _ in comm[kind]:
                    out.append(TimelineEvent(phase_offset_rank + r, f"{phase}.{op}", start, meas, "comm", pred))
                end = start + max(e[3] for e in comm[kind])
                clock = [end] * nranks
    return out


def execute(spec, *, plan=None, progress=None, clock=None) -> ExecuteResult:
    """Run the configured phases of the plan; numerics checked against the reference when enabled.
    progress(stage, done, total), if given, is called as the stages advance ('building the ranks',
    'warm-up', 'timed passes', 'reference'; a step is a layer or the LM head of one phase's pass).
    clock: how operators are timed (default cmtwin.executor.timing.clock_for: CUDA graphs on CUDA, a
    synchronised perf_counter on a CPU)."""
    from cmtwin.executor import timing
    from cmtwin.executor.compare import costing_of
    from cmtwin.executor.run import TOL, PoolRun, phases_of, pick_device, set_threads
    from cmtwin.planner.plan import compile_plan
    from cmtwin.topology.fabric import fabric_for

    ex = spec.executor
    plan = plan or compile_plan(spec)
    device = pick_device(ex.device, ex.dtype)
    set_threads(ex, device)
    hw_pred, why = prediction_choice(spec, device)
    clock = clock if clock is not None else timing.clock_for(ex, device)
    fabric = fabric_for(spec)
    t0 = time.perf_counter()
    phases = phases_of(spec, plan)
    bar = _Stages(progress)
    runs = {}
    for i, ph in enumerate(phases):
        bar("building the ranks", i, len(phases))
        with _memory_is_a_limit(ex, ph, device):
            runs[ph] = PoolRun(spec, plan, ph, device=device, hw_pred=hw_pred, hw_comm=spec.hardware, fabric=fabric)
    bar("building the ranks", len(phases), len(phases))
    with _memory_is_a_limit(ex, " and ".join(phases), device):
        measured, clock = timing.with_fallback(clock, lambda c: _run_phases(spec, plan, runs, bar, c))
    how = clock.describe() if ex.processes == 1 else {"method": "sync", "fallback": None,
                                                      "note": "executor.processes > 1 times each operator synchronised"}
    results, timeline, offset = [], [], 0
    steps = sum(_steps(run) for run in runs.values())
    done = 0
    for ph, run in runs.items():
        res = measured[ph]
        if ex.reference:
            bar("reference", done, steps)
            with _memory_is_a_limit(ex, ph, device):
                run.reference(res)
            done += _steps(run)
            bar("reference", done, steps)
            if res.max_rel_err > TOL[ex.dtype]:
                res.verdict = "FAILED"
        timeline += schedule(offset, ph, res.events, res.ranks)
        offset += res.ranks
        results.append(res)
    return ExecuteResult(device, hw_pred.name, results, timeline, time.perf_counter() - t0,
                         profile_note(hw_pred, why, device), how,
                         {ph: costing_of(run) for ph, run in runs.items()})


def _steps(run) -> int:
    """Progress steps of one pass of a phase: its layers and the LM head."""
    return len(run.W.layers) + 1


class _Stages:
    """progress(stage, done, total) or nothing."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(stage, done, total)


def _run_phases(spec, plan, runs: dict, bar=None, clock=None) -> dict:
    """Each phase's result. In one process: a warm-up of every phase (first-call costs out of the timeline,
    as calibrate leaves them out), then `executor.passes` rounds of one timed pass per phase, so the phases'
    passes interleave and spread over the same seconds, as calibrate's round-robin over its grid does: a slow
    spell of a shared machine then lands on one pass of each phase, not on every pass of one. Each operator
    keeps its fastest time over the passes; only the last pass keeps its tensors (the numerics are checked on
    it), the earlier ones only their events.

    With a graph clock (CUDA) everything runs on the clock's stream, warm-up included; the timed passes
    capture each operator in its own graph (its time: the median of its replays), and one more round in
    segment mode captures each rank's segments (attention, router, experts, LM head) as graphs: the layer as
    a serving engine runs it. That last round's tensors are the ones the numerics are checked on."""
    ex = spec.executor
    bar = bar or _Stages(None)
    if ex.processes > 1:
        from cmtwin.executor.dist import run_processes

        out = {}
        for i, (ph, run) in enumerate(runs.items()):
            bar("timed passes", i, len(runs))
            res, run.routing = run_processes(spec, plan, ph, ex.processes)
            res.ranks, res.tokens, res.expert_rows = run.nranks, run.nranks * run.T, run.expert_rows
            res.out, res.logits = res.out.to(run.device), res.logits.to(run.device)
            out[ph] = res
        bar("timed passes", len(runs), len(runs))
        return out
    from cmtwin.executor.timing import SyncClock

    clock = clock if clock is not None else SyncClock()
    graphed = clock.method != "sync"
    for run in runs.values():
        run.clock = clock
    with clock.session():
        return _interleaved(ex, runs, bar, clock, graphed)


def _interleaved(ex, runs: dict, bar, clock, graphed: bool) -> dict:
    steps = sum(_steps(run) for run in runs.values())
    rounds = ex.passes + (1 if graphed else 0)
    done = [0]

    def ticker(stage, total):
        def tick():
            done[0] += 1
            bar(stage, done[0], total)
        return tick

    bar("warm-up", 0, steps)
    for run in runs.values():
        run.run(timed=False, tick=ticker("warm-up", steps))
    done[0] = 0
    bar("timed passes", 0, steps * rounds)
    events: dict = {ph: [] for ph in runs}
    last: dict = {}
    for i in range(rounds):
        clock.mode = "segment" if graphed and i == ex.passes else "op"
        for ph, run in runs.items():
            last.pop(ph, None)  # the previous pass's tensors go before this pass allocates its own
            res = run.run(tick=ticker("timed passes", steps * rounds))
            if clock.mode == "op":
                events[ph].append(res.events)
            last[ph] = res
    clock.mode = "op"
    out = {}
    for ph, res in last.items():
        res.events = fastest_events(events[ph])
        out[ph] = res
    return out


def fastest_events(passes: list[list]) -> list:
    """Events (rank, op, kind, measured us, predicted us, layer) of identical passes, each measured time the
    fastest over the passes: the operator's own time, without the load that other work on the machine adds
    (the same reduction as calibrate's, cmtwin.executor.calibrate.undisturbed)."""
    return [(*ev[:3], min(p[i][3] for p in passes), *ev[4:]) for i, ev in enumerate(passes[0])]


@contextlib.contextmanager
def _memory_is_a_limit(ex, phase: str, device: str):
    """Running out of device memory is a limit of the requested run, not a bug: say which knobs shrink it."""
    from cmtwin.executor.modules import torch

    t = torch()
    try:
        yield
    except (MemoryError, t.OutOfMemoryError) as exc:
        raise CmtwinError(
            f"executor: the {device} ran out of memory in the {phase} phase with executor.ranks="
            f"{ex.ranks if ex.ranks is not None else 'all'}, executor.layers={ex.layers}, executor.scale={ex.scale:g} "
            f"({str(exc).splitlines()[0][:160]}).", key="executor.ranks",
            fix="run fewer ranks (executor.ranks=4), fewer layers or a smaller executor.scale") from None
