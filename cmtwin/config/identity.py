"""The plan's identity: a canonical hash of the validated spec (store settings excluded)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

_EXCLUDED = ("store",)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def spec_hash(spec) -> str:
    """sha256 over the spec's JSON form, minus where results are stored; 16 hex digits are shown."""
    data = spec.model_dump(mode="json", exclude=set(_EXCLUDED))
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]
