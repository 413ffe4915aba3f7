"""BatchLLM as the simulator's batching policy (issue 7 item 3): prefix groups from the batch's prefix tree, group
scheduling with the prefix computed once and held once per decode die, decode/prompt-ratio order, memory-centric
token batching; compared with FCFS + LRU on an offline prefix-heavy batch."""

from __future__ import annotations

from collections import deque

import pytest

from cmtwin.config.compose import load_spec
from cmtwin.errors import CmtwinError, ConfigError
from cmtwin.planner.plan import compile_plan
from cmtwin.policy.batching import BatchLLMParams, BatchLLMScheduler, prefix_groups
from cmtwin.sim.serving import Request, Simulator

OFFLINE = ["+deployment=r1_ep320", "workload=offline_prefix", "workload.requests=600", "workload.output_len=32",
           "sim.duration_s=5", "sim.warmup_s=0", "sim.drain=true"]


def _run(policy: str, *overrides, **kw):
    spec, _ = load_spec([*OFFLINE, f"+policies/batching={policy}", *overrides])
    sim = Simulator(spec, compile_plan(spec), **kw)
    return sim, sim.run()


def test_prefix_tree_flattens_to_the_groups_that_save_most():
    # prefix 0: five requests share 1,000 tokens and two of them only 200 of it -> two groups (4 x 1,000 + 1 x 200
    # saved) beat one group at 200 tokens (6 x 200)
    g = prefix_groups([0] * 7, [1000] * 5 + [200] * 2)
    assert sorted((n, sorted(i)) for n, i in g) == [(200, [5, 6]), (1000, [0, 1, 2, 3, 4])]
    # ... but ten requests at 900 and two at 1,000: one group at 900 (11 x 900) beats 9 x 900 + 1 x 1,000
    g = prefix_groups([0] * 12, [1000] * 2 + [900] * 10)
    assert [(n, len(i)) for n, i in g] == [(900, 12)]
    # different prefix ids share nothing; no prefix, or one shorter than min_shared, is a group of one
    g = prefix_groups([0, 1, -1, 1, 2], [500, 500, 0, 500, 10], min_shared=64)
    assert sorted((n, sorted(i)) for n, i in g) == [(0, [2]), (0, [4]), (500, [0]), (500, [1, 3])]


def test_batchllm_computes_fewer_prefill_tokens_and_holds_less_kv_than_fcfs_lru():
    """The acceptance comparison, on a small offline batch: BatchLLM computes each group's prefix once (FCFS + LRU
    recomputes it for every prompt of the first forwards, before any block is cached) and holds it once per decode
    die (FCFS + LRU: once per request)."""
    fsim, fcfs = _run("fcfs_lru")
    bsim, bllm = _run("batchllm")
    for r in (fcfs, bllm):
        assert r.requests["completed"] == r.requests["arrived"] == 600 and r.makespan_s is not None
        assert r.prefill["prompt_tokens"] == 600 * 2048
    assert bllm.prefill["computed_tokens"] < 0.5 * fcfs.prefill["computed_tokens"]
    assert bllm.prefill["token_saving_ratio"] > 0.7 > fcfs.prefill["token_saving_ratio"]
    assert bllm.decode["kv_peak_tokens"] < fcfs.decode["kv_peak_tokens"]
    # per die: FCFS + LRU holds two whole requests (600 over 320 dies); BatchLLM one prefix and two suffixes
    own = 2048 - 1638 + 32 + 1  # prompt beyond the 80% prefix, output, one MTP draft
    assert fcfs.decode["kv_peak_tokens_per_die"] == 2 * (2048 + 32 + 1)
    assert bllm.decode["kv_peak_tokens_per_die"] == 1638 + 2 * own
    assert bllm.makespan_s < fcfs.makespan_s and bllm.tokens_per_s_per_device > fcfs.tokens_per_s_per_device
    # every group's prefix KV was freed at its end
    assert not bsim.sched.copies and all(sum(d.rank_kv) == 0 for d in bsim.decoders)


def test_without_shared_prefixes_both_policies_compute_and_hold_the_same():
    _, fcfs = _run("fcfs_lru", "workload.prefix_share=0")
    _, bllm = _run("batchllm", "workload.prefix_share=0")
    assert bllm.prefill["computed_tokens"] == fcfs.prefill["computed_tokens"] == 600 * 2048
    assert bllm.decode["kv_peak_tokens"] == fcfs.decode["kv_peak_tokens"]
    assert bllm.prefill["token_saving_ratio"] == fcfs.prefill["token_saving_ratio"] == 0.0


def test_the_twin_estimates_the_simulated_saving():
    """cmtwin plan's batching figures (expected Zipf group sizes, the scheduler's split rule) against the simulated
    batch (sampled groups): the same saving within 1%."""
    from cmtwin.twin.predict import predict

    spec, _ = load_spec([*OFFLINE, "+policies/batching=batchllm"])
    fig = predict(spec, compile_plan(spec)).policies["batching"]["table"][0]
    _, res = _run("batchllm")
    assert fig["token_saving_ratio"] == pytest.approx(res.prefill["token_saving_ratio"], abs=0.01)
    assert fig["prompt_tokens_served_per_s_per_device"] > fig["prefill_tokens_per_s_per_device"]
    assert fig["decode_kv_tokens_per_die_shared"] < fig["decode_kv_tokens_per_die"]
    spec, _ = load_spec([*OFFLINE, "+policies/batching=fcfs_lru"])
    assert predict(spec, compile_plan(spec)).policies["batching"]["table"][0]["token_saving_ratio"] == 0


class _Line:
    def __init__(self):
        self.queue, self.queued_tokens = deque(), 0

    def push(self, r):
        self.queue.append(r)
        self.queued_tokens += r.prompt


class _Sim:
    """What the scheduler reads of a simulator."""

    def __init__(self):
        self.drafts, self.kv_cap = 0, 10**6
        self.decoders = [type("D", (), {"ranks": 8})()]


def test_groups_are_ordered_by_decode_prompt_ratio_and_split_over_instances():
    # prefix 0: 12 requests (too much for one of 3 instances), prefix 1: 4; outputs vary the ratio
    reqs = [Request(i, 0.0, 1000, 10 + 10 * i, 0 if i < 12 else 1, 800) for i in range(16)]
    sched = BatchLLMScheduler(_Sim(), BatchLLMParams())
    lines = [_Line() for _ in range(3)]
    sched.enqueue(reqs, lines)
    parts_of_0 = [ln for ln in lines if any(r.prefix == 0 for r in ln.queue)]
    assert len(parts_of_0) >= 2  # split: each part computes the prefix once
    for ln in lines:
        q = list(ln.queue)
        for p in (0, 1):  # within a part, the largest decode/prompt ratio first
            ratios = [r.output / r.prompt for r in q if r.prefix == p]
            assert ratios == sorted(ratios, reverse=True)
        firsts = [r for r in q if r.id in sched.firsts]
        assert len(firsts) == len({r.prefix for r in q})  # one prefix computation per part
    # reuse: the first of a part computes its whole prompt, the others only their suffix
    q = list(lines[0].queue)
    assert sched.reuse(q[0]) == (0, 0, 0) and sched.reuse(q[1]) == (800, 0, 0)
    assert sum(len(ln.queue) for ln in lines) == 16


def test_memory_centric_batching_bounds_forwards_by_decode_kv():
    """With decode KV short (4,000 tokens per die: two whole 2k prompts do not fit, one prefix and four suffixes
    do), BatchLLM holds prefill back by KV rather than by request slots, so fewer requests wait for decode room,
    and shares prefixes so more of them decode at once; FCFS + LRU hands over whatever the slots allow."""
    _, fcfs = _run("fcfs_lru", "workload.requests=2000", "sim.sample_interval_s=0.1", kv_capacity_per_die=4000)
    _, bllm = _run("batchllm", "workload.requests=2000", "sim.sample_interval_s=0.1", kv_capacity_per_die=4000)
    assert fcfs.requests["prefill_stalls"] == 0 < bllm.requests["prefill_stalls"]
    assert bllm.requests["kv_blocked"] < fcfs.requests["kv_blocked"]
    assert bllm.decode["kv_peak_fraction"] <= 1.0 and fcfs.decode["kv_peak_fraction"] <= 1.0
    assert bllm.makespan_s < fcfs.makespan_s


def test_batchllm_refuses_online_arrivals_and_aggregated_serving():
    spec, _ = load_spec(["+deployment=r1_ep320", "workload=chat_4k", "+policies/batching=batchllm"])
    with pytest.raises(ConfigError) as e:
        Simulator(spec, compile_plan(spec))
    assert e.value.key == "workload.arrival" and "offline" in str(e.value)
    spec, _ = load_spec(["+deployment=r1_h200_tp8_agg", "workload=offline_prefix", "+policies/batching=batchllm"])
    with pytest.raises(ConfigError) as e:
        Simulator(spec, compile_plan(spec))
    assert e.value.key == "serving.mode"
    with pytest.raises(CmtwinError, match="kv_budget_fraction"):
        load_spec([*OFFLINE, "+policies/batching=batchllm", "policies.batching.kv_budget_fraction=0.1"])
    with pytest.raises(CmtwinError, match="Valid: batchllm, fcfs_lru"):
        load_spec([*OFFLINE, "+policies/batching=batchllm", "policies.batching.name=lifo"])


def test_cli_reports_the_comparison_figures_and_the_plan_section(workdir):
    import json
    import os
    import subprocess
    import sys

    def cli(*args):
        env = {**os.environ, "COLUMNS": "200"}  # table rows unwrapped
        return subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], cwd=workdir, capture_output=True,
                              text=True, env=env)

    p = cli("simulate", *OFFLINE, "+policies/batching=batchllm", "--no-plots")
    assert p.returncode == 0, p.stderr
    for row in ("batching batchllm", "makespan", "prefill tokens computed / prompt", "token saving ratio",
                "peak KV per decode die", "peak KV, decode pool"):
        assert row in p.stdout, row
    assert "an offline batch: its rates are over" not in p.stdout  # drained: measured to its makespan
    undrained = [a for a in OFFLINE if a not in ("sim.drain=true", "sim.duration_s=5")] + ["sim.duration_s=60"]
    p = cli("simulate", *undrained, "+policies/batching=batchllm", "--no-plots")
    assert p.returncode == 0, p.stderr
    assert "an offline batch: its rates are over the 60 s window" in " ".join(p.stdout.split())
    p = cli("simulate", *OFFLINE, "+policies/batching=batchllm", "--no-plots", "--format", "json")
    sim = json.loads(p.stdout)["simulation"]
    assert sim["prefill"]["token_saving_ratio"] > 0.7 and sim["makespan_s"] > 0
    assert sim["decode"]["kv_peak_tokens"] > 0 and sim["decode"]["kv_peak_bytes_per_die"] > 0
    p = cli("plan", *OFFLINE, "+policies/batching=batchllm")
    assert p.returncode == 0, p.stderr
    assert "policy batching=batchllm" in p.stdout and "token_saving_ratio" in p.stdout
