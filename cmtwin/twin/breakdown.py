"""Per-operator breakdown rows and the accumulator the phase models fill."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One operator's time per step (or per forward), summed over the layers it runs in."""

    phase: str
    stream: str
    operator: str
    time_us: float
    bound: str  # compute | memory | comm
    calls: int

    def to_dict(self) -> dict:
        return {"phase": self.phase, "stream": self.stream, "operator": self.operator,
                "time_us": round(self.time_us, 3), "bound": self.bound, "calls": self.calls}


class Ledger:
    """Accumulates operator times by (stream, operator) for one phase."""

    def __init__(self, phase: str):
        self.phase = phase
        self._rows: OrderedDict[tuple[str, str], list] = OrderedDict()
        self.experts = (0.0, 0)  # (experts read, expert slots) on the critical rank of a MoE layer (rule 7)

    def add(self, stream: str, operator: str, us: float, bound: str, calls: int = 1) -> None:
        key = (stream, operator)
        if key in self._rows:
            r = self._rows[key]
            r[0] += us
            r[2] += calls
            if us > 0 and r[1] != bound:
                r[1] = bound if us > r[0] / 2 else r[1]
        else:
            self._rows[key] = [us, bound, calls]

    def streams(self) -> dict[str, float]:
        """Busy time per stream, in the order the streams first appear."""
        out: dict[str, float] = {}
        for (s, _), v in self._rows.items():
            out[s] = out.get(s, 0.0) + v[0]
        return out

    def rows(self) -> list[Row]:
        return [Row(self.phase, s, o, v[0], v[1], v[2]) for (s, o), v in self._rows.items()]
