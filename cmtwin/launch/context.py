"""The part of a deployment no engine flag carries (the hardware and topology it was planned for, the workload,
MTP acceptance, placement, SLOs...), written as one comment line into every exported launch script so that
`cmtwin import launch` can rebuild the same deployment from the flags plus this line. A launch command without the
line (one a user wrote) is imported onto defaults chosen with --hardware / --topology / --workload.

The flag keys are exactly those the engines' flags set (FLAG_KEYS); a round trip export -> import therefore checks
the flags, not this line: it gives back the same plan hash only if the flags carried every layout key.
"""

from __future__ import annotations

import json
from typing import Any

MARK = "# cmtwin-context: "

# Top-level sections the flags set entirely, and the keys of mixed sections they set.
FLAG_SECTIONS = ("precision", "kv_cache_dtype", "serving", "prefill", "decode")
FLAG_KEYS = {"mtp": ("draft_tokens",)}
# Sections that are config groups (written as `defaults:` choices, not as values).
GROUP_SECTIONS = {"hardware": "hardware", "host": "hardware@host", "model": "model"}
DROPPED = ("store",)


def context_of(composed) -> dict[str, Any]:
    """The non-flag part of a composed config: group choices, and the values of the other sections that differ
    from what those choices compose to without a deployment."""
    from cmtwin.config.compose import compose

    ch = composed.choices
    groups = {"hardware": ch.get("hardware"), "hardware@host": ch.get("hardware@host"),
              "topology": ch.get("topology"), "workload": ch.get("workload")}
    base = compose([f"~{k}" if v is None else f"{k}={v}" for k, v in groups.items()]).config
    cfg = composed.config
    values = {}
    for k, v in cfg.items():
        if k in FLAG_SECTIONS or k in GROUP_SECTIONS or k in DROPPED:
            continue
        if k in FLAG_KEYS and isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if kk not in FLAG_KEYS[k]}
        d = _diff(v, base.get(k))
        if d is not _SAME:
            values[k] = d
    return {"groups": groups, "values": values}


_SAME = object()


def _diff(v, base):
    """The part of v that differs from base (dicts compared key by key; anything else whole)."""
    if isinstance(v, dict) and isinstance(base, dict):
        out = {k: d for k, x in v.items() if (d := _diff(x, base.get(k, _SAME))) is not _SAME}
        return out if out else _SAME
    return _SAME if v == base else v


def context_line(composed) -> str:
    return MARK + json.dumps(context_of(composed), sort_keys=True, separators=(",", ":"))


def find_context(text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return None
