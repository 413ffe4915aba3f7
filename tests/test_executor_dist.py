"""Multi-process execution (gloo, 2 and 4 processes) gives the in-process result."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from cmtwin.config.compose import load_spec  # noqa: E402
from cmtwin.executor.api import execute  # noqa: E402

BASE = ["+deployment=r1_ep320", "executor.scale=0.01", "executor.decode_tokens=2", "executor.kv_len=4",
        "executor.prefill_tokens=8", "executor.ranks=12", "executor.phase=decode", "executor.layers=2"]


@pytest.fixture(scope="module")
def in_process():
    return execute(load_spec(BASE)[0])


@pytest.mark.parametrize("processes", [2, 4])
def test_gloo_processes_equal_in_process(in_process, processes):
    res = execute(load_spec([*BASE, f"executor.processes={processes}"])[0])
    a, b = in_process.phases[0], res.phases[0]
    rel = ((a.out - b.out).norm(dim=-1) / a.out.norm(dim=-1)).max().item()
    assert rel <= 1e-6
    assert ((a.logits - b.logits).norm(dim=-1) / a.logits.norm(dim=-1)).max().item() <= 1e-6
    assert res.max_rel_err <= 1e-5
    assert sorted((e[0], e[1], e[5]) for e in a.events) == sorted((e[0], e[1], e[5]) for e in b.events)
