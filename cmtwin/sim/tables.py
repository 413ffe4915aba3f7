"""Lookup tables of the twin's step times, built once at simulation start and interpolated.

The simulator never models an operator itself: every time it uses comes from `decode_step`,
`prefill_forward` or `comm.p2p`, sampled on a grid of batch sizes and context lengths. Attention and GEMM
costs are piecewise linear in those, so linear interpolation between grid points is close to the model.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from cmtwin.errors import ConfigError

STEP_MEMO = 1 << 16
"""Forward shapes (tokens per die, mean prompt) whose time the prefill table remembers: with lengths drawn from a
distribution the shapes rarely repeat, and the memo stops growing there."""


class Memo(dict):
    """A dict of fn(key) that computes what it lacks on first use."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __missing__(self, key):
        value = self[key] = self.fn(key)
        return value


def _grid(lo: int, hi: int, n: int) -> list[int]:
    """About n integers from lo to hi (both included), geometrically spaced, unique, sorted."""
    if hi <= lo:
        return [lo]
    pts = {lo, hi}
    for x in np.geomspace(lo, hi, n):
        pts.add(int(round(x)))
    return sorted(pts)


def _interp1(xs: list[int], x: float) -> tuple[int, float]:
    """Index i and weight w so that value = v[i] * (1 - w) + v[i + 1] * w (linear extrapolation outside)."""
    n = len(xs)
    if n == 1:
        return 0, 0.0
    i = bisect.bisect_right(xs, x) - 1
    if i < 0:
        i = 0
    elif i > n - 2:
        i = n - 2
    return i, (x - xs[i]) / (xs[i + 1] - xs[i])


class Table2D:
    """values[i][j] at (xs[i], ys[j]); bilinear interpolation, linear extrapolation at the edges."""

    def __init__(self, xs: list[int], ys: list[int], values: np.ndarray):
        self.xs, self.ys = xs, ys
        self.v = [list(map(float, row)) for row in values]

    def __call__(self, x: float, y: float) -> float:
        xs, ys = self.xs, self.ys
        n, m = len(xs), len(ys)
        if n > 1 and m > 1:  # the usual case
            i, wx = _interp1(xs, x)
            j, wy = _interp1(ys, y)
            lo, hi = self.v[i], self.v[i + 1]
            a = lo[j] * (1 - wy) + lo[j + 1] * wy
            b = hi[j] * (1 - wy) + hi[j + 1] * wy
            t = a * (1 - wx) + b * wx
            return t if t > 0.0 else 0.0  # max(0.0, t)
        v = self.v  # a table over one batch or one context: linear in the other, or constant
        if m == 1:
            if n == 1:
                return v[0][0]
            i, wx = _interp1(xs, x)
            return v[i][0] * (1 - wx) + v[i + 1][0] * wx
        j, wy = _interp1(ys, y)
        return v[0][j] * (1 - wy) + v[0][j + 1] * wy


def _decode_grid(spec, plan, hw, fabric, batches: list[int], kvs: list[int], microbatches: int | None,
                 chunk_tokens: float | None = None) -> tuple[np.ndarray, float]:
    """(decode step µs at every (requests per attention group, context) of the grid, tokens per step): the twin's
    vector step over the whole grid in one pass, element by element decode_step's floats."""
    from cmtwin.twin.step import decode_steps

    b, kv = np.meshgrid(np.asarray(batches, dtype=float), np.asarray(kvs, dtype=float), indexing="ij")
    r = decode_steps(spec, plan, hw, fabric, batch_per_die=b.ravel() / spec.decode.tp, kv_len=kv.ravel(),
                     microbatches=microbatches, chunk_tokens=chunk_tokens)
    return r.step_us.reshape(b.shape), r.tokens_per_step


class DecodeTable:
    """Decode step time (µs) over requests per attention group (a DP rank, or a TP group: requests per die x tp)
    x mean context length."""

    def __init__(self, spec, plan, hw, fabric, *, max_batch: int, max_kv: int, microbatches: int | None = None,
                 kv_points: int = 10):
        self.batches = list(range(1, max_batch + 1)) if max_batch <= 64 else _grid(1, max_batch, 48)
        self.kvs = _grid(64, max(128, max_kv), kv_points)
        vals, self.tokens_per_step = _decode_grid(spec, plan, hw, fabric, self.batches, self.kvs, microbatches)
        self.table = Table2D(self.batches, self.kvs, vals)
        self.calls = vals.size
        self.step_us = self.table  # step_us(batch, kv) -> µs: the table itself, no call in between (once per step)


class AggDecodeTable:
    """Aggregated serving: decode step time (µs) over requests per attention group x mean context x prefill chunk
    tokens per die mixed into the step (the twin's decode_step(..., chunk_tokens=)); linear in the chunk between grid
    points, chunk 0 being a pure decode step."""

    def __init__(self, spec, plan, hw, fabric, *, max_batch: int, max_kv: int, max_chunk: int,
                 microbatches: int | None = None, kv_points: int = 8, chunk_points: int = 6):
        self.batches = list(range(1, max_batch + 1)) if max_batch <= 64 else _grid(1, max_batch, 48)
        self.kvs = _grid(64, max(128, max_kv), kv_points)
        self.chunks = [0, *_grid(1, max(1, max_chunk), chunk_points)]
        self.tables = []
        self.calls = 0
        for ch in self.chunks:
            vals, self.tokens_per_step = _decode_grid(spec, plan, hw, fabric, self.batches, self.kvs, microbatches,
                                                      chunk_tokens=ch)
            self.tables.append(Table2D(self.batches, self.kvs, vals))
            self.calls += vals.size

    def step_us(self, batch: float, kv: float, chunk: float = 0.0) -> float:
        i, w = _interp1(self.chunks, chunk)
        if len(self.chunks) == 1:
            return self.tables[0](batch, kv)
        a = self.tables[i](batch, kv)
        return max(0.0, a * (1 - w) + self.tables[i + 1](batch, kv) * w) if w else a


class PrefillTable:
    """Prefill forward time (µs) over tokens per die x prompt length, and KV transfer time per prompt."""

    def __init__(self, spec, plan, hw, fabric, *, max_tokens_per_die: int, max_prompt: int,
                 microbatches: int | None = None, points: int = 12):
        from cmtwin.twin.step import prefill_forward

        self.tokens = _grid(1, max(2, max_tokens_per_die), points)
        self.prompts = _grid(16, max(32, max_prompt), 8)
        vals = np.empty((len(self.tokens), len(self.prompts)))
        kv = []
        for c, p in enumerate(self.prompts):
            for a, t in enumerate(self.tokens):
                r = prefill_forward(spec, plan, hw, fabric, tokens_per_die=t, prompt_len=p, microbatches=microbatches)
                vals[a, c] = r.step_us
            kv.append(r.kv_transfer_us)
        self.table = Table2D(self.tokens, self.prompts, vals)
        self.kv = Table2D(self.prompts, [0], np.array(kv)[:, None])
        self.kv_us = Memo(lambda prompt: self.kv(prompt, 0))  # kv_us[prompt] = kv_transfer_us(prompt): a workload
        # has few distinct prompt lengths, each met many times (the simulator indexes it: no call per request)
        self._step_us: dict[tuple[float, float], float] = {}  # memo: forwards of the same shape recur (whole prompts)
        self.calls = vals.size

    def step_us(self, tokens_per_die: float, prompt: float) -> float:
        key = (tokens_per_die, prompt)
        us = self._step_us.get(key)
        if us is None:
            us = self.table(tokens_per_die, prompt)
            if len(self._step_us) < STEP_MEMO:
                self._step_us[key] = us
        return us

    def kv_transfer_us(self, prompt: int) -> float:
        return self.kv_us[prompt]


class FetchCost:
    """Time (µs) to bring `nbytes` of cached KV from the EMS pool into one prefill instance's dies.

    `plane` is `sim.ems_plane`. "ub": every die reads its share from a remote CPU's DRAM over the fabric's
    inter-node plane (comm.p2p; UB on CloudMatrix384); "vpc": the owning node's CPU sends over the front-end
    plane (`roles.frontend`, the VPC network) to the instance's node CPU (one card per node), which hands it to
    the dies over the scale-up plane. The planes are the topology's declared roles, never names. SSD-tier
    blocks are first read at the nodes' SSD bandwidth.
    """

    def __init__(self, hw, fabric, *, dies: list[str], plane: str, ssd_gbps: float, nodes_total: int):
        from cmtwin.twin import comm

        roles = fabric.roles
        cpus = list(fabric.cpus())
        die0 = dies[0]
        node0 = fabric.domain_of(die0)
        remote = next((c for c in reversed(cpus) if c.node != node0), cpus[-1])
        local0 = next(c for c in cpus if c.node == node0)
        big = float(1 << 30)

        def line(src, dst, pl):
            a = comm.p2p(hw, fabric, src, dst, nbytes=1.0, plane=pl).us
            b = comm.p2p(hw, fabric, src, dst, nbytes=big + 1.0, plane=pl).us
            slope = (b - a) / big
            return a - slope, slope

        self.dies = len(dies)
        self.nodes = max(1, len({fabric.domain_of(d) for d in dies}))
        # the near leg (CPU DRAM -> the dies): a remote CPU's pool across nodes, or the local CPU within the node,
        # over the inter-node plane where the CPUs are on it (UB on CM384), else over the scale-up plane (the Grace
        # CPUs of an NVL72 rack, on NVLink by C2C)
        near = roles.inter_node if _on_plane(fabric, remote.id, roles.inter_node) else roles.scale_up
        self.ub_lat, self.ub_slope = line(remote.id, die0, near)
        self.plane = plane
        if plane == "vpc":
            front = roles.frontend
            if front is None:
                raise ConfigError(
                    f"sim.ems_plane = 'vpc' but topology {fabric.name} declares no front-end plane "
                    "(`roles.frontend`) for its CPUs.",
                    key="sim.ems_plane",
                    fix="use sim.ems_plane=ub, or declare `roles.frontend: <plane>` in the topology file",
                )
            # the front-end card hangs off one CPU per node (the topology says which): the ones wired to it
            remote0 = next(c for c in cpus if c.node == remote.node and _on_plane(fabric, c.id, front))
            local0 = next(c for c in cpus if c.node == node0 and _on_plane(fabric, c.id, front))
            self.vpc_lat, self.vpc_slope = line(remote0.id, local0.id, front)
            self.ub_lat, self.ub_slope = line(local0.id, die0, roles.scale_up)
        self.ssd_bytes_per_us = ssd_gbps / 8 * 1e9 / 1e6 * max(1, nodes_total)

    def us(self, nbytes: float, ssd_bytes: float = 0.0) -> float:
        if nbytes <= 0:
            return 0.0
        t = self.ub_lat + nbytes / self.dies * self.ub_slope
        if self.plane == "vpc":
            t += self.vpc_lat + nbytes / self.nodes * self.vpc_slope
        if ssd_bytes > 0:
            t += ssd_bytes / self.ssd_bytes_per_us
        return t


def _on_plane(fabric, cpu_id: str, plane: str) -> bool:
    try:
        return fabric.injection_gbps(cpu_id, plane) > 0
    except Exception:  # noqa: BLE001 - the fabric raises its own error type for an endpoint off the plane
        return False


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["AggDecodeTable", "DecodeTable", "PrefillTable", "FetchCost", "Table2D", "ceil_div", "math"]
