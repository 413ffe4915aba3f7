"""Rich renderables for the Run and Compare screens (plan, prediction, timeline, deltas).

Pure functions of stored data: no Textual, no database, no clock, so their output is stable in snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cmtwin.executor.trace import TimelineEvent
from cmtwin.store.repo import RunDetail
from cmtwin.tui.data import (
    TOKENS_METRICS,
    TPOT_METRICS,
    TTFT_METRICS,
    config_delta,
    fmt_duration,
    fmt_num,
    gantt_rows,
    key_metric,
    memory_rows,
    metric_delta,
    timeline_ops,
)

ROLE_STYLE = {
    "prefill": "bold cyan",
    "decode": "bold magenta",
    "idle": "grey42",
    "mixed": "bold yellow",
    "failed": "bold red",
}
"""Colour per die role (any other role is green; `failed`: a die the plan's failures.* took down)."""


def role_style(role: str) -> str:
    return ROLE_STYLE.get(role, "bold green")


def _table(title: str | None = None, **kwargs: Any) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", show_edge=False, pad_edge=False, **kwargs)


def bar(fraction: float, width: int, *, style: str = "green", second: float = 0.0, second_style: str = "blue") -> Text:
    """A horizontal bar: `fraction` of `width` in `style`, then `second` more in `second_style`, rest dim."""
    fraction = min(max(fraction, 0.0), 1.0)
    first = round(fraction * width)
    extra = min(round(min(max(second, 0.0), 1.0) * width), width - first)
    return Text.assemble(("█" * first, style), ("█" * extra, second_style), ("░" * (width - first - extra), "grey35"))


def _range(nodes: list[int]) -> str:
    if not nodes:
        return "-"
    return str(nodes[0]) if len(nodes) == 1 else f"{nodes[0]}-{nodes[-1]}"


def plan_renderable(plan: Mapping[str, Any] | None) -> RenderableType:
    """The Plan tab: identity, pools and parallelism, memory per die as bars, expert placement, caching."""
    if not plan:
        return Text("This run stored no plan.", style="italic")
    head = Text.assemble(
        ("plan ", "bold"), str(plan.get("plan_hash", "")), "  ",
        f"{plan.get('deployment')} · {plan.get('model')} on {plan.get('hardware')} / {plan.get('topology')}"
        f" · {plan.get('precision')} · devices {plan.get('devices_used')}/{plan.get('devices_total')}",
    )
    pools = _table("Pools and parallelism")
    for name in ("pool", "devices", "nodes", "EP", "TP", "DP", "batch/die"):
        pools.add_column(name, justify="left" if name in ("pool", "nodes") else "right")
    experts = _table("Expert placement (routed ranks, slots and experts per rank, load skew)")
    for name in ("pool", "ranks", "slots/rank", "exp/rank", "replicas", "shared", "max/mean"):
        experts.add_column(name, justify="left" if name in ("pool", "shared") else "right")
    for pool in plan.get("pools") or []:
        label = Text(f"{pool.get('role')} {pool.get('instance')}", style=role_style(str(pool.get("role"))))
        pools.add_row(
            label, fmt_num(pool.get("devices")), _range(list(pool.get("nodes") or [])), fmt_num(pool.get("ep")),
            fmt_num(pool.get("tp")), fmt_num(pool.get("dp")), fmt_num(pool.get("batch_per_die")),
        )
        ex = pool.get("experts") or {}
        experts.add_row(
            label.copy(), fmt_num(ex.get("routed_ranks")), fmt_num(ex.get("routed_slots_per_rank")),
            fmt_num(ex.get("experts_per_rank")), fmt_num(ex.get("replicated_experts")),
            str(ex.get("shared_expert", "")), fmt_num(ex.get("max_over_mean_rank_load")),
        )
    memory = _table("Memory per die (█ used, of which KV cache in blue; ░ free)")
    memory.add_column("die kind")
    memory.add_column("", no_wrap=True)
    memory.add_column("used/cap GiB", justify="right")
    memory.add_column("KV GiB", justify="right")
    for label, used, kv, capacity in memory_rows(plan):
        frac = used / capacity if capacity else 0.0
        kv_frac = kv / capacity if capacity else 0.0
        memory.add_row(
            Text(label, style=role_style(label.split()[0].rstrip("0123456789"))),
            bar(frac - kv_frac, 24, second=kv_frac),
            f"{used:.1f}/{capacity:.0f}",
            f"{kv:.2f}",
        )
    parts: list[RenderableType] = [head, Text(), pools, Text(), memory, Text(), experts]
    caching = plan.get("caching")
    if caching:
        parts += [Text(), Text.assemble(("EMS caching pool ", "bold"), ", ".join(
            f"{k} {fmt_num(v)}" for k, v in caching.items() if not isinstance(v, dict | list)))]
    return Group(*parts)


_PHASE_KEYS = {
    "prefill": ("tokens_per_s_per_device", "ttft_ms", "step_ms", "kv_transfer_ms", "microbatches"),
    "decode": ("tokens_per_s_per_device", "tpot_ms", "step_ms", "batch_per_device", "tokens_per_step"),
}


def _measured(detail: RunDetail, phase: str, key: str) -> float | None:
    """A measured value for a predicted figure: a 'measured.'-prefixed metric, or a metric of a non-plan run
    named like the prediction ('decode.tpot_ms') or its median ('decode.tpot_ms.p50', 'tpot_ms.p50')."""
    name = f"{phase}.{key}"
    if f"measured.{name}" in detail.metrics:
        return detail.metrics[f"measured.{name}"]
    if detail.verb == "plan":
        return None  # a plan's metrics are its prediction
    for candidate in (name, f"{name}.p50", f"{key}.p50"):
        if candidate in detail.metrics:
            return detail.metrics[candidate]
    return None


def prediction_renderable(detail: RunDetail, *, top: int = 8) -> RenderableType:
    """The Prediction tab: headline figures (with measured ones beside them where a run has them), the
    bottleneck and the largest operators of each phase with a bar of their share."""
    prediction = detail.prediction
    if not prediction:
        from cmtwin.executor.compare import summary_from_metrics

        summary = summary_from_metrics(detail.metrics)
        if summary is not None:  # `cmtwin execute --compare`: the twin's prediction against the executor
            return executor_compare_renderable(summary, top=top)
        return Text("This run stored no prediction.", style="italic")
    figures = _table("Predicted figures")
    figures.add_column("figure")
    figures.add_column("predicted", justify="right")
    has_measured = any(
        _measured(detail, phase, key) is not None for phase, keys in _PHASE_KEYS.items() for key in keys
    )
    if has_measured:
        figures.add_column("measured", justify="right")
        figures.add_column("meas/pred", justify="right")
    for phase, keys in _PHASE_KEYS.items():
        values = prediction.get(phase) or {}
        for key in keys:
            if key not in values:
                continue
            row = [f"{phase}.{key}", fmt_num(values[key])]
            if has_measured:
                m = _measured(detail, phase, key)
                row += [fmt_num(m), "" if m is None or not values[key] else f"{m / values[key]:.2f}x"]
            figures.add_row(*row)
    parts: list[RenderableType] = [figures, Text()]
    if prediction.get("bottleneck"):
        parts += [Text.assemble(("Bottleneck: ", "bold red"), str(prediction["bottleneck"])), Text()]
    breakdown = prediction.get("breakdown") or []
    for phase in ("prefill", "decode"):
        ops = [b for b in breakdown if b.get("phase") == phase]
        if not ops:
            continue
        total = sum(float(b.get("time_us", 0)) for b in ops) or 1.0
        table = _table(f"{phase}: largest operators (of {len(ops)})")
        for name, justify in (("operator", "left"), ("stream", "left"), ("ms", "right"), ("bound", "left"), ("share", "left")):
            table.add_column(name, justify=justify, no_wrap=True)
        for b in sorted(ops, key=lambda b: -float(b.get("time_us", 0)))[:top]:
            share = float(b.get("time_us", 0)) / total
            table.add_row(
                str(b.get("operator")), str(b.get("stream")), f"{float(b.get('time_us', 0)) / 1000:.1f}",
                str(b.get("bound", "")), Text.assemble(bar(share, 12), f" {share:4.0%}"),
            )
        parts += [table, Text()]
    for note in prediction.get("notes") or []:
        parts.append(Text(f"note: {note}", style="italic"))
    return Group(*parts)


def _pct(e: float | None) -> str:
    return "" if e is None else f"{e:+.1%}"


def executor_compare_renderable(summary: dict, *, top: int = 8) -> RenderableType:
    """An executed run's prediction tab (`cmtwin execute --compare`): per profile the layer measured and
    predicted with the error, then the operators that the calibrated (else the first) profile misses most."""
    timing = summary.get("timing") or {}
    how = "CUDA graphs" if timing.get("method") == "cuda-graph" else "synchronised per operator"
    layers = _table(f"Layer compute per rank: twin vs executor (measured with {how})")
    for name, justify in (("profile", "left"), ("phase", "left"), ("measured us", "right"),
                          ("predicted us", "right"), ("error", "right"), ("graphed us", "right"),
                          ("vs graphed", "right")):
        layers.add_column(name, justify=justify, no_wrap=True)
    within = float(summary.get("within") or 0.2)
    for p in summary["profiles"]:
        for phase, d in p["per_layer"].items():
            e = d.get("rel_err")
            style = "" if e is None else ("green" if abs(e) <= within else "red")
            layers.add_row(f"{p['name']} ({p['role']})", phase, fmt_num(d.get("measured_us")),
                           fmt_num(d.get("predicted_us")), Text(_pct(e), style=style),
                           fmt_num(d.get("graph_us")) if d.get("graph_us") is not None else "",
                           _pct(d.get("graph_rel_err")))
    parts: list[RenderableType] = [layers, Text()]
    profiles = summary["profiles"]
    focus = next((p for p in profiles if p["role"] == "calibrated"), profiles[0] if profiles else None)
    if focus is not None:
        ops = _table(f"Operators {focus['name']} misses most (of {len(focus['ops'])})")
        for name, justify in (("phase", "left"), ("operator", "left"), ("measured us", "right"),
                              ("predicted us", "right"), ("error", "right")):
            ops.add_column(name, justify=justify, no_wrap=True)
        ranked = sorted(focus["ops"], key=lambda r: -abs(r.get("rel_err") or 0.0))
        for r in ranked[:top]:
            ops.add_row(r["phase"], r["op"], fmt_num(r.get("measured_us")), fmt_num(r.get("predicted_us")),
                        _pct(r.get("rel_err")))
        parts.append(ops)
    return Group(*parts)


def timeline_renderable(events: list[TimelineEvent], *, width: int = 40, max_ranks: int = 32) -> RenderableType:
    """The Timeline tab: one Gantt row per rank (█ compute, ░ communication) and per-operator totals,
    measured against the twin's prediction."""
    if not events:
        return Text("No executor timeline for this run (only `cmtwin execute` records one).", style="italic")
    rows = gantt_rows(events, width)
    gantt = _table(f"Timeline per rank (█ compute ░ comm), {len(rows)} ranks")
    gantt.add_column("rank", justify="right", no_wrap=True, min_width=4)
    gantt.add_column("", no_wrap=True)
    gantt.add_column("busy ms", no_wrap=True)
    for rank, cells, summary in rows[:max_ranks]:
        gantt.add_row(str(rank), Text(cells, style="green"), summary)
    if len(rows) > max_ranks:
        gantt.add_row("…", f"{len(rows) - max_ranks} more ranks", "")
    ops = _table("Operators (all ranks)")
    for name, justify in (("op", "left"), ("kind", "left"), ("calls", "right"), ("measured ms", "right"),
                          ("predicted ms", "right"), ("meas/pred", "right")):
        ops.add_column(name, justify=justify)
    for op, kind, calls, measured, predicted in timeline_ops(events)[:20]:
        ratio = f"{measured / predicted:.2f}x" if predicted else ""
        ops.add_row(op, kind, str(calls), f"{measured / 1000:.3f}",
                    "" if predicted is None else f"{predicted / 1000:.3f}", ratio)
    return Group(gantt, Text(), ops)


def run_title(detail: RunDetail) -> Text:
    """One line naming the run: id, verb, deployment, status, start and duration."""
    return Text.assemble(
        (f"run {detail.id} ", "bold"), f"{detail.verb} {detail.deployment or ''}  ",
        (detail.status, "bold yellow" if detail.status == "running" else "bold green" if detail.status == "ok" else "bold red"),
        f"  {detail.started_at:%Y-%m-%d %H:%M:%S}Z {fmt_duration(detail.duration_s)}",
    )


def compare_renderable(a: RunDetail, b: RunDetail) -> RenderableType:
    """Two runs side by side: headline figures, the config delta and every metric with B/A."""
    head = _table("Runs")
    head.add_column("")
    head.add_column(f"A: run {a.id}", overflow="fold")
    head.add_column(f"B: run {b.id}", overflow="fold")
    for label, get in (
        ("verb", lambda r: r.verb),
        ("deployment", lambda r: r.deployment or ""),
        ("status", lambda r: r.status),
        ("plan", lambda r: (r.plan_hash or "")[:16]),
        ("tok/s/dev", lambda r: fmt_num(key_metric(r.metrics, TOKENS_METRICS))),
        ("TPOT ms", lambda r: fmt_num(key_metric(r.metrics, TPOT_METRICS))),
        ("TTFT ms", lambda r: fmt_num(key_metric(r.metrics, TTFT_METRICS))),
    ):
        head.add_row(label, get(a), get(b))
    delta = config_delta(a, b)
    config = _table(f"Config delta ({len(delta)} keys differ)")
    config.add_column("key", overflow="fold")
    config.add_column("A", overflow="fold")
    config.add_column("B", overflow="fold")
    for key, va, vb in delta:
        config.add_row(key, str(va), str(vb))
    metrics = _table("Metrics")
    metrics.add_column("metric", overflow="fold")
    for name in ("A", "B", "B/A"):
        metrics.add_column(name, justify="right")
    for name, va, vb, ratio in metric_delta(a, b):
        style = "" if ratio is None or abs(ratio - 1) < 1e-9 else "bold green" if ratio > 1 else "bold red"
        metrics.add_row(name, fmt_num(va), fmt_num(vb), Text("" if ratio is None else f"{ratio:.3f}x", style=style))
    parts: list[RenderableType] = [head, Text()]
    parts += [config] if delta else [Text("Same config.", style="italic")]
    return Group(*parts, Text(), metrics)
