"""Microbatch overlap of computation and communication as a two-stream schedule.

A layer of one microbatch is a chain of phases that alternate between the compute stream (cube cores / SMs)
and the communication stream (vector cores and DMA engines, or the copy engines): for DeepSeek-R1 prefill
on CloudMatrix384, down projections -> all-gather -> attention -> all-to-all -> o_proj and gate -> dispatch
-> experts -> combine. With m microbatches, a phase starts when its own previous phase has finished and its
stream is free; each stream takes its phases in order (layer, phase, microbatch): the dual-microbatch
"ping-pong" of DeepSeek's and CloudMatrix-Infer's prefill. A communication phase therefore hides only behind
the compute phases of the *other* microbatches that can run at that moment, not behind the whole layer's
computation, and a layer takes at least max(compute, comm) and at most their sum.

A VECTOR phase is computation that needs the cores the communication runs on (on the 910C the vector cores:
norms, activations, top-k, while dispatch and combine run on the vector cores and DMA engines): it waits for
both streams and holds both, so it neither overlaps the other microbatch's communication nor its cube work.

A phase's time may be an array (one per batch of a vector step): the schedule is then run for every element at
once; which phases exist and merge must be the same for all of them (cmtwin.vec.Ragged otherwise).
"""

from __future__ import annotations

from functools import reduce

from cmtwin.vec import every, is_array, numpy

COMPUTE, COMM, VECTOR = "compute", "comm", "vector"


def merged(phases: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Adjacent phases on the same stream fused into one; zero-length phases dropped."""
    out: list[tuple[str, float]] = []
    for stream, us in phases:
        if every(us <= 0):
            continue
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + us)
        else:
            out.append((stream, us))
    return out


def makespan(chain: list[list[tuple[str, float]]], microbatches: int) -> float:
    """Time to run `chain` (a list of layers, each a list of (stream, us) phases of ONE microbatch) for
    `microbatches` microbatches on the two streams."""
    most = numpy().maximum if any(is_array(us) for layer in chain for _, us in layer) else max
    free = {COMPUTE: 0.0, COMM: 0.0}
    ready = [0.0] * microbatches  # when each microbatch's previous phase finished
    for layer in chain:
        for stream, us in layer:
            for mb in range(microbatches):
                if stream == VECTOR:  # waits for and holds both streams
                    ready[mb] = free[COMPUTE] = free[COMM] = most(most(ready[mb], free[COMPUTE]), free[COMM]) + us
                else:
                    ready[mb] = free[stream] = most(ready[mb], free[stream]) + us
    return reduce(most, ready)


def layers_time(groups: list[tuple[int, list[tuple[str, float]]]], microbatches: int) -> float:
    """Time of consecutive layer groups [(count, phases of one microbatch)], e.g. the dense layers then the MoE
    layers, every layer scheduled. (Charging a group's later layers the period of its first few is not exact: the
    schedule can take longer than any fixed number of layers to settle, e.g. a dense layer of pure communication
    before MoE layers with three microbatches (tests/test_twin_overlap.py); scheduling every layer costs the search
    about 4 % of its twin stage.)"""
    if microbatches == 1:  # one chain: everything in sequence
        return sum(count * sum(us for _, us in phases) for count, phases in groups)
    return makespan([ph for count, phases in groups for ph in [merged(phases)] * count], microbatches)
