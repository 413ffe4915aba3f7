"""Multi-process execution with torch.distributed (gloo on CPU, NCCL on GPU).

Every process builds the same seeded weights and inputs, computes the ranks dealt to it (rank r on process
r mod N), and exchanges the routed tokens and the experts' partial outputs with collectives (each slot of
an exchanged tensor is written by exactly one process, so the sums are exact copies). Process 0 collects
the timeline events and the result, and hands them back to the parent through a file.
"""

from __future__ import annotations

import os
import socket
import tempfile

from cmtwin.errors import CmtwinError
from cmtwin.executor.modules import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(pid: int, world: int, port: int, spec, plan, phase: str, out_path: str, threads: int) -> None:
    import torch.distributed as dist

    from cmtwin.executor.run import PoolRun, pick_device
    from cmtwin.topology.fabric import fabric_for

    t = torch()
    t.set_num_threads(threads)
    device = pick_device(spec.executor.device, spec.executor.dtype)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        t.cuda.set_device(pid % t.cuda.device_count())
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=pid, world_size=world)
    try:
        from cmtwin.executor.api import prediction_profile

        run = PoolRun(spec, plan, phase, device=device, hw_pred=prediction_profile(spec, device),
                      hw_comm=spec.hardware, fabric=fabric_for(spec))
        run.owned = [r for r in range(run.nranks) if r % world == pid]

        def allreduce(x):
            dist.all_reduce(x)

        run.allreduce = allreduce
        res = run.run()
        events = [None] * world
        dist.all_gather_object(events, res.events)
        if pid == 0:
            res.events = [e for evs in events for e in evs]
            t.save({"out": res.out.cpu(), "logits": res.logits.cpu(), "events": res.events, "wall_s": res.wall_s,
                    "routing": [[(hn.cpu(), idx.cpu()) for hn, idx in layer] for layer in run.routing]}, out_path)
    finally:
        dist.destroy_process_group()


def run_processes(spec, plan, phase: str, processes: int, *, timeout_s: float = 600.0):
    """Run one phase over `processes` worker processes; returns (PhaseResult, routing) from process 0."""
    import torch.multiprocessing as mp

    from cmtwin.executor.run import PhaseResult

    t = torch()
    threads = spec.executor.threads or max(1, t.get_num_threads() // processes)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        import time

        try:
            ctx = mp.spawn(_worker, args=(processes, _free_port(), spec, plan, phase, out, threads),
                           nprocs=processes, join=False)
            deadline = time.monotonic() + timeout_s
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    raise CmtwinError(f"executor.processes={processes}: the workers did not finish within "
                                      f"{timeout_s:.0f} s.", key="executor.processes")
        except CmtwinError:
            raise
        except Exception as exc:  # a worker failed: report it as a run failure, not a traceback
            raise CmtwinError(f"executor.processes={processes}: a worker process failed: "
                              f"{' '.join(str(exc).split())[-600:]}", key="executor.processes") from None
        d = t.load(out, weights_only=False)
    res = PhaseResult(phase, 0, 0, d["out"], d["logits"], d["events"], wall_s=d["wall_s"])
    return res, d["routing"]
