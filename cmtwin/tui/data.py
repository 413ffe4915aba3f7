"""What the TUI reads and how it shapes it, without Textual: a read-only store, a `RunSource` over the
repository functions, and pure functions turning runs, plans and samples into rows the widgets show.

Nothing here writes to the database: the store is opened on a read-only connection (SQLite `mode=ro` plus
`query_only`, PostgreSQL `default_transaction_read_only`), and queries typed by the user go through
`cmtwin.store.query.run_readonly_query`, the guard behind `cmtwin query`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cmtwin.errors import StoreError
from cmtwin.store.engine import (
    HEAD_REVISION,
    Store,
    current_revision,
    display_url,
    missing_store_error,
    normalize_url,
    resolve_url,
    sqlite_path,
)
from cmtwin.store.query import QueryResult
from cmtwin.executor.trace import TimelineEvent
from cmtwin.store.repo import RunDetail, RunSummary, SamplePoint

# --------------------------------------------------------------------------------------------- the store


def open_readonly_store(url: str | None = None) -> Store:
    """Open the run store at `url` (resolved like every verb's --db) on a read-only connection.

    Unlike `open_store`, this never creates, upgrades or stamps a database and never marks stale runs
    interrupted: the TUI is a pure reader. A missing file, an empty database or one at another schema
    revision is a StoreError naming the command that fixes it.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.orm import sessionmaker
    from sqlalchemy.pool import NullPool

    parsed = normalize_url(resolve_url(url))
    state, revision = current_revision(url)
    where = display_url(parsed)
    if state == "missing":
        raise missing_store_error(sqlite_path(parsed))
    if state in ("empty", "unmanaged"):
        raise StoreError(
            f"{where} holds no cmtwin run store yet; record a run first, e.g. `cmtwin plan +deployment=r1_ep320`"
        )
    if state != "head":
        raise StoreError(
            f"the run store at {where} is at schema revision {revision or 'base'}, this cmtwin reads "
            f"{HEAD_REVISION}; run `cmtwin db upgrade --db {where}` first"
        )
    if parsed.get_backend_name() == "sqlite":
        uri = f"file:{quote(str(sqlite_path(parsed)))}?mode=ro"
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
            poolclass=NullPool,
        )

        def _on_connect(dbapi: sqlite3.Connection, _record: Any) -> None:
            dbapi.execute("PRAGMA busy_timeout=5000")
            dbapi.execute("PRAGMA query_only=ON")

        event.listen(engine, "connect", _on_connect)
    else:
        # Every transaction read-only, keeping any options the URL sets (e.g. a search_path).
        options = " ".join(filter(None, (parsed.query.get("options"), "-c default_transaction_read_only=on")))
        engine = create_engine(parsed.update_query_dict({"options": options}), pool_pre_ping=True)
    sessions = sessionmaker(engine, expire_on_commit=False)
    return Store(url=parsed.render_as_string(hide_password=False), engine=engine, sessions=sessions, _writer=sessions)


@dataclass
class RunSource:
    """The repository functions the TUI reads through, bound to one store (tests may pass fakes).

    Every callable blocks; the app calls them from worker threads only.
    """

    label: str
    list_runs: Callable[[], list[RunSummary]]
    get_run: Callable[[int], RunDetail]
    get_samples: Callable[[int, int], list[SamplePoint]]
    get_timeline: Callable[[int], list[TimelineEvent]]
    query: Callable[[str], QueryResult]
    close: Callable[[], None] = field(default=lambda: None)


def store_source(url: str | None = None, *, limit: int = 500) -> RunSource:
    """A RunSource over `cmtwin.store.repo` on a read-only store at `url`; StoreError if it cannot open."""
    from cmtwin.store import repo
    from cmtwin.store.query import run_readonly_query

    store = open_readonly_store(url)
    parsed = normalize_url(resolve_url(url))
    label = sqlite_path(parsed).name if parsed.get_backend_name() == "sqlite" else display_url(parsed)
    query_url = parsed.render_as_string(hide_password=False)
    return RunSource(
        label=label,
        list_runs=lambda: repo.list_runs(store, limit=limit),
        get_run=lambda run_id: repo.get_run(store, run_id),
        get_samples=lambda run_id, since_id: repo.get_samples(store, run_id, since_id),
        get_timeline=lambda run_id: repo.get_timeline(store, run_id),
        query=lambda sql: run_readonly_query(query_url, sql, allow_superuser=False),  # as `cmtwin query` does
        close=store.engine.dispose,
    )


# ------------------------------------------------------------------------------------------- formatting


def fmt_num(value: float | None, digits: int = 4) -> str:
    """A number in at most ~`digits` significant digits ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return "nan"
    if float(value).is_integer() and abs(value) < 1e12:
        return str(int(value))
    if 10 ** digits <= abs(value) < 1e12:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    """'' (unfinished), '850 ms', '12.3 s', '4m05s', '2h03m'."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


STATUS_MARK = {"running": "●", "ok": "✓", "failed": "✗", "interrupted": "!", "cancelled": "-"}
"""The one-character status indicator beside each run's status."""

TOKENS_METRICS = ("decode.tokens_per_s_per_device", "tokens_per_s_per_device", "throughput_tokens_per_s")
TPOT_METRICS = ("decode.tpot_ms", "decode.tpot_ms.p50", "tpot_ms", "tpot_ms.p50", "tpot_ms_p50")
TTFT_METRICS = ("prefill.ttft_ms", "ttft_ms.p50", "ttft_ms", "ttft_ms_p50")
"""Where the key figures live: `cmtwin plan` stores the twin's (decode.tpot_ms), `cmtwin simulate` percentiles
(tpot_ms.p50); the first name found wins."""


def key_metric(metrics: Mapping[str, float], names: Iterable[str]) -> float | None:
    """The first of `names` present in `metrics`, exactly or as a dotted suffix (e.g. 'sim.tpot_ms')."""
    for name in names:
        if name in metrics:
            return metrics[name]
    for name in names:
        for key in sorted(metrics):
            if key.endswith("." + name):
                return metrics[key]
    return None


RUN_COLUMNS = ("id", "verb", "deployment", "status", "tok/s/dev", "TPOT ms", "duration", "started", "plan")
"""The runs table's columns, in order (the least needed last, cut first on a narrow terminal)."""


def run_row(run: RunSummary) -> tuple[Any, ...]:
    """The runs table's cells for one run: plain values (sortable), formatted by the table."""
    return (
        run.id,
        run.verb,
        run.deployment or "",
        run.status,
        key_metric(run.metrics, TOKENS_METRICS),
        key_metric(run.metrics, TPOT_METRICS),
        run.duration_s,
        run.started_at.strftime("%m-%d %H:%M"),
        (run.plan_hash or "")[:8],
    )


def run_matches(run: RunSummary, needle: str) -> bool:
    """Whether a run matches the filter text: every word found in its id, verb, deployment, hash, status or sweep
    (`status:running`, `verb:plan`, `sweep:<id>` restrict one field: `sweep:` lists one `-m` sweep's runs)."""
    fields = {
        "id": str(run.id),
        "verb": run.verb,
        "deployment": run.deployment or "",
        "plan": run.plan_hash or "",
        "status": run.status,
        "sweep": run.sweep or "",
    }
    for word in needle.lower().split():
        key, sep, value = word.partition(":")
        if sep and key in fields:
            if value not in fields[key].lower():
                return False
        elif not any(word in v.lower() for v in fields.values()):
            return False
    return True


# ------------------------------------------------------------------------------------------------ plans

# The topology's die-id scheme (cmtwin/topology/graph.py): n<node>.<id_prefix><device>[.d<die>]; an id_prefix is
# lowercase letters, digits and _, never ending in a digit, so the device number reads back unambiguously.
_DIE_ID = re.compile(r"^n(?P<node>\d+)\.(?P<kind>[a-z][a-z0-9_]*?)(?P<device>\d+)(?:\.d(?P<die>\d+))?$")


@dataclass(frozen=True)
class DieCell:
    """One die of the plan placed on the map, with what the Supernode tab shows about it."""

    die: str
    role: str
    instance: int | None
    rank: int | None
    ep_rank: int | None
    experts: tuple[int, ...]
    shared: bool
    memory: Mapping[str, Any] | None


@dataclass(frozen=True)
class DeviceCell:
    """One device (NPU or GPU) of the map: its node, index, dies (empty when unused) and role."""

    node: int
    device: int
    dies: tuple[DieCell, ...]

    @property
    def role(self) -> str:
        roles = {d.role for d in self.dies}
        if "failed" in roles:  # a device with a failed die is out as a whole
            return "failed"
        return "idle" if not roles else roles.pop() if len(roles) == 1 else "mixed"

    @property
    def memory_fraction(self) -> float | None:
        """Used over capacity of its fullest die (None when unknown)."""
        fractions = [
            float(d.memory["used_gib"]) / float(d.memory["capacity_gib"])
            for d in self.dies
            if d.memory and d.memory.get("capacity_gib")
        ]
        return max(fractions) if fractions else None


@dataclass(frozen=True)
class SupernodeMap:
    """The plan's devices on a nodes x devices-per-node grid."""

    kind: str  # the device id stem the topology declares (its id_prefix: 'npu', 'gpu', ...)
    nodes: int
    per_node: int
    cells: tuple[tuple[DeviceCell, ...], ...]  # cells[node][device]
    note: str = ""  # where the placement came from, when not from this plan's own dies

    def cell(self, node: int, device: int) -> DeviceCell:
        return self.cells[node][device]

    def role_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.cells:
            for c in row:
                counts[c.role] = counts.get(c.role, 0) + 1
        return counts


def _die_memory(plan: Mapping[str, Any], die: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for pool in plan.get("pools") or []:
        if pool.get("role") == die.get("role") and pool.get("instance") == die.get("instance"):
            memory = pool.get("memory_per_die") or {}
            kind = "shared" if die.get("shared") and not die.get("experts") and "shared" in memory else "routed"
            return memory.get(kind) or next(iter(memory.values()), None)
    return None


def _declared_layout(plan: Mapping[str, Any]) -> tuple[int, str | None]:
    """(devices per node, device id prefix) as the plan's topology declares them (`node.devices.count` and
    `.id_prefix`, carried by the plan); (0, None) for a run recorded before plans carried them."""
    per_node = plan.get("devices_per_node")
    prefix = plan.get("device_id_prefix")
    return (int(per_node) if isinstance(per_node, int) and per_node > 0 else 0,
            prefix if isinstance(prefix, str) and prefix else None)


def _pool_devices_per_node(plan: Mapping[str, Any]) -> int:
    """The most devices any pool holds per node it spans: a lower bound on a node's devices, for runs recorded
    before plans declared `devices_per_node`."""
    best = 0
    for pool in plan.get("pools") or []:
        nodes = len(pool.get("nodes") or ())
        if nodes:
            best = max(best, -(-int(pool.get("devices") or 0) // nodes))
    return best


def supernode_map(plan: Mapping[str, Any]) -> SupernodeMap:
    """Place every die of `plan` (ids in the topology's scheme, like n03.npu5.d1 or n03.gpu5) on the nodes x
    devices grid.

    The grid spans all `devices_total` devices of the topology (48 x 8 on CloudMatrix384), so unused devices
    show as idle. Its width is the devices per node the plan's topology declares; a run recorded before plans
    carried that shows the widest node its dies (or pools) occupy.
    """
    placed: dict[tuple[int, int], list[DieCell]] = {}
    declared, prefix = _declared_layout(plan)
    kind, per_node, max_node = prefix or _fallback_prefix(plan), 0, -1
    dies = plan.get("dies") or []
    note = ""
    if not dies and plan.get("pools"):
        dies = _dies_from_pools(plan, declared or _pool_devices_per_node(plan), kind)
        note = "roles from the pools (this run stored no per-die placement)"
    failed = set(plan.get("failed_dies") or ())
    unplaced = [{"die": d, "role": "failed"} for d in sorted(failed - {str(x.get("die")) for x in dies})]
    for die in [*dies, *unplaced]:
        m = _DIE_ID.match(str(die.get("die", "")))
        if not m:
            continue
        node, device = int(m["node"]), int(m["device"])
        kind = m["kind"]
        per_node, max_node = max(per_node, device + 1), max(max_node, node)
        placed.setdefault((node, device), []).append(
            DieCell(
                die=str(die["die"]),
                role="failed" if die["die"] in failed else str(die.get("role", "?")),
                instance=die.get("instance"),
                rank=die.get("rank"),
                ep_rank=die.get("ep_rank"),
                experts=tuple(die.get("experts") or ()),
                shared=bool(die.get("shared")),
                memory=_die_memory(plan, die),
            )
        )
    if placed:
        per_node = max(per_node, declared or _pool_devices_per_node(plan))
    total = int(plan.get("devices_total") or 0)
    nodes = max(max_node + 1, -(-total // per_node) if per_node else 0)
    cells = tuple(
        tuple(DeviceCell(n, d, tuple(placed.get((n, d), ()))) for d in range(per_node)) for n in range(nodes)
    )
    return SupernodeMap(kind=kind, nodes=nodes, per_node=per_node, cells=cells, note=note)


def _fallback_prefix(plan: Mapping[str, Any]) -> str:
    """The device id stem for a run recorded before plans carried `device_id_prefix`: the shipped topologies'
    (npu for packages of several dies, gpu for one)."""
    return "npu" if int(plan.get("dies_per_device") or 1) > 1 else "gpu"


def _dies_from_pools(plan: Mapping[str, Any], per_node: int, prefix: str) -> list[dict[str, Any]]:
    """Dies of a plan that kept only its pools (role, node list, device count): each pool's devices fill its
    nodes in order, `per_node` to a node, with ids in the topology's scheme (n<node>.<prefix><device>[.d<die>]).
    Ranks and experts are unknown (None / empty)."""
    per_device = int(plan.get("dies_per_device") or 1)
    total = int(plan.get("devices_total") or 0)
    width = max(2, len(str(max(0, -(-total // per_node) - 1)))) if per_node else 2  # graph.node_label's padding
    dies: list[dict[str, Any]] = []
    for pool in plan.get("pools") or []:
        left = int(pool.get("devices") or 0)
        for node in pool.get("nodes") or []:
            for device in range(min(per_node, left)):
                for k in range(per_device):
                    suffix = f".d{k}" if per_device > 1 else ""
                    dies.append({"die": f"n{int(node):0{width}d}.{prefix}{device}{suffix}", "role": pool.get("role"),
                                 "instance": pool.get("instance"), "rank": None, "ep_rank": None, "experts": [],
                                 "shared": False})
            left -= min(per_node, left)
    return dies


def describe_device(cell: DeviceCell, kind: str = "npu") -> list[str]:
    """Lines about one device: its dies with role, ranks, experts and memory."""
    name = f"node {cell.node:02d} {kind}{cell.device}"
    if not cell.dies:
        return [f"{name}: idle (no role in this plan)"]
    lines = [f"{name}: {cell.role}"]
    for d in cell.dies:
        where = f"{d.role} {d.instance}" if d.instance is not None else d.role
        mem = ""
        if d.memory and d.memory.get("capacity_gib"):
            mem = f"  mem {float(d.memory['used_gib']):.1f}/{float(d.memory['capacity_gib']):.0f} GiB"
        ranks = "" if d.rank is None else f"  rank {d.rank}  ep {d.ep_rank}"
        lines.append(f" {d.die}  {where}{ranks}{mem}")
        if d.rank is not None:
            experts = ",".join(str(e) for e in d.experts[:16]) + ("…" if len(d.experts) > 16 else "")
            lines.append(f"   experts [{experts or '-'}]{' + shared expert' if d.shared else ''}")
    return lines


def memory_rows(plan: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    """(label, used GiB, KV cache GiB, capacity GiB) per die kind of each pool role; identical instances
    (all prefill instances, usually) share one row."""
    rows: dict[str, tuple[str, float, float, float]] = {}
    for pool in plan.get("pools") or []:
        for kind, mem in (pool.get("memory_per_die") or {}).items():
            label = f"{pool.get('role')} {kind}"
            values = (float(mem.get("used_gib", 0)), float(mem.get("kv_cache_gib", 0)), float(mem.get("capacity_gib", 0)))
            if label in rows and rows[label][1:] != values:
                label = f"{pool.get('role')}{pool.get('instance')} {kind}"
            rows.setdefault(label, (label, *values))
    return list(rows.values())


# ---------------------------------------------------------------------------------------------- compare


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {'a.b.c': leaf}; lists are leaves."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


_MISSING = "(absent)"


def config_delta(a: RunDetail, b: RunDetail) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every identity or config key that differs."""
    left, right = (
        {"verb": r.verb, "deployment": r.deployment, "plan_hash": r.plan_hash, "overrides": " ".join(r.overrides),
         **flatten(r.config or {}, "config")}
        for r in (a, b)
    )
    return [
        (key, left.get(key, _MISSING), right.get(key, _MISSING))
        for key in sorted(left.keys() | right.keys())
        if left.get(key, _MISSING) != right.get(key, _MISSING)
    ]


def metric_delta(a: RunDetail, b: RunDetail) -> list[tuple[str, float | None, float | None, float | None]]:
    """(name, a, b, b/a) for every metric of either run; equal ones included (the ratio tells)."""
    out = []
    for name in sorted(a.metrics.keys() | b.metrics.keys()):
        va, vb = a.metrics.get(name), b.metrics.get(name)
        ratio = vb / va if va not in (None, 0) and vb is not None else None
        out.append((name, va, vb, ratio))
    return out


# ---------------------------------------------------------------------------------------------- samples


def sample_group(name: str) -> str:
    """The group a sample series is shown in: its dotted prefix, else its first word
    ('ttft_ms_p50' -> 'ttft', 'sim.queue_prefill' -> 'sim')."""
    if "." in name:
        return name.split(".", 1)[0]
    return name.split("_", 1)[0]


def gantt_rows(events: list[TimelineEvent], width: int) -> list[tuple[int, str, str]]:
    """Per rank: (rank, bar, summary) with compute as '█', communication as '░', idle as ' '."""
    if not events:
        return []
    t0 = min(e.start_us for e in events)
    t1 = max(e.start_us + e.dur_us for e in events)
    span = max(t1 - t0, 1e-9)
    by_rank: dict[int, list[TimelineEvent]] = {}
    for e in events:
        by_rank.setdefault(e.rank, []).append(e)
    rows = []
    for rank in sorted(by_rank):
        cells = [" "] * width
        busy = {"compute": 0.0, "comm": 0.0}
        for e in by_rank[rank]:
            busy[e.kind] = busy.get(e.kind, 0.0) + e.dur_us
            a = int((e.start_us - t0) / span * width)
            b = max(a + 1, int((e.start_us + e.dur_us - t0) / span * width))
            mark = "█" if e.kind == "compute" else "░"
            for i in range(a, min(b, width)):
                if cells[i] != "█":
                    cells[i] = mark
        summary = f"cmp {busy['compute'] / 1000:.2f} comm {busy['comm'] / 1000:.2f}"
        rows.append((rank, "".join(cells), summary))
    return rows


def timeline_ops(events: list[TimelineEvent]) -> list[tuple[str, str, int, float, float | None]]:
    """Per operator (op, kind, calls, measured total µs, predicted total µs or None), slowest first."""
    agg: dict[tuple[str, str], list[float]] = {}
    for e in events:
        row = agg.setdefault((e.op, e.kind), [0, 0.0, 0.0, 0])
        row[0] += 1
        row[1] += e.dur_us
        if e.predicted_us is not None:
            row[2] += e.predicted_us
            row[3] += 1
    out = [(op, kind, int(r[0]), r[1], r[2] if r[3] else None) for (op, kind), r in agg.items()]
    return sorted(out, key=lambda r: -r[3])
