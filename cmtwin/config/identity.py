"""The plan's identity: a canonical hash of the validated spec (store settings excluded)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

_EXCLUDED = ("store", "deployment")  # where results go, and the name and description a plan goes by
_MEASUREMENT_ONLY = ("timing", "replays", "graph_warmup", "expert_tokens")
"""executor.* keys that choose how operators are timed (sync or CUDA graphs) and how the measured experts are
loaded (the plan's tokens per expert or the rows routed in a subset of ranks), not what the plan runs: a plan
keeps its hash across them and across the versions before they existed."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def spec_hash(spec) -> str:
    """sha256 over the spec's JSON form, minus where results are stored, where a search runs (search.backend, search.workers), how the executor times operators (executor.timing, replays,
    graph_warmup) and
    the deployment's name and description, with each quantity in one spelling: the decode batch as requests per
    attention group (however given: per device, per group or as a concurrency), the KV cache's dtype as in effect,
    and the aggregated step budget as tokens per attention group (whichever engine scopes it). So the same plan has
    the same hash however it was written, e.g. after `cmtwin export launch` and `cmtwin import launch`. 16 hex digits
    are shown."""
    data = spec.model_dump(mode="json", exclude=set(_EXCLUDED))
    if not spec.prefill.instances:  # an absent pool's layout keys are no part of the plan
        data["prefill"] = {"instances": 0}
    if not spec.decode.devices:
        data["decode"] = {"devices": 0}
    else:
        data["decode"]["batch_per_group"] = spec.decode_batch_per_group
        data["decode"]["batch_per_device"] = None
    data["serving"]["concurrency"] = None
    data["kv_cache_dtype"] = spec.prec.kv_cache
    agg = spec.serving.mode == "agg" and spec.decode.devices
    if agg:
        from cmtwin.config.budget import token_budget

        data["serving"]["max_batched_tokens"] = token_budget(spec).per_group
    else:
        data["serving"]["max_batched_tokens"] = None
    data["serving"]["engine"] = None
    for key in ("backend", "workers"):  # where and on how many processes a search runs, not what it finds
        data["search"].pop(key, None)
    for key in _MEASUREMENT_ONLY:  # how the executor times a run, not what runs
        data["executor"].pop(key, None)
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]
