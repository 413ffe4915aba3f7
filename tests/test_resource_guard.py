"""execute and calibrate: memory estimated from the shapes they allocate, refused at once when it does not fit,
progress, and which profile predicts the device."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from cmtwin.config.compose import load_spec  # noqa: E402
from cmtwin.planner.plan import compile_plan  # noqa: E402

TINY = ["executor.scale=0.01", "executor.layers=2", "executor.decode_tokens=2", "executor.kv_len=4",
        "executor.prefill_tokens=8", "executor.ranks=4"]


def _cli(*args, cwd, mem=None, timeout=120):
    env = {**os.environ, **({"CMTWIN_MEM_AVAILABLE": mem} if mem else {})}
    return subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def test_parse_size():
    from cmtwin.errors import CmtwinError
    from cmtwin.executor.budget import parse_size

    assert parse_size("1024") == 1024
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8 gb") == 8 << 30
    assert parse_size("1.5M") == 3 << 19
    with pytest.raises(CmtwinError):
        parse_size("lots")


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "fp8"])
def test_weight_bytes_are_the_bytes_make_weights_and_the_kernel_casts_allocate(dtype):
    from cmtwin.executor.modules import LINEAR, Kernels, make_weights, scaled_model, weight_bytes

    spec = load_spec(["+deployment=r1_ep320"])[0]
    m = scaled_model(spec.model, 0.01)
    W = make_weights(m, layers=3, dense_layers=1, seed=0, device="cpu", experts=range(5), mtp=True)
    K = Kernels(dtype, 1e-6)
    master = cast = 0
    named = [("final_norm", W.final_norm), ("lm_head", W.lm_head), ("eh_proj", W.eh_proj),
             *[("n", x) for x in W.mtp_norms]]
    for lw in W.layers:
        for k, v in vars(lw).items():
            if isinstance(v, dict):
                named += [(k, x) for x in v.values()]
            elif isinstance(v, torch.Tensor):
                named.append((k, v))
    for k, x in named:
        master += x.nbytes
        if k in LINEAR:
            got = K.w(x)
            if dtype != "fp32":
                cast += sum(t.nbytes for t in (got if isinstance(got, tuple) else (got,)))
    assert weight_bytes(m, layers=3, dense_layers=1, experts=5, mtp=True, dtype=dtype) == {
        "weights": master, "weight casts": cast}


def test_pool_shape_counts_exactly_the_weights_and_inputs_a_pool_run_holds():
    from cmtwin.executor.run import PoolRun, PoolShape

    spec = load_spec(["+deployment=r1_ep320", *TINY, "executor.ranks=12", "executor.mtp=true"])[0]
    plan = compile_plan(spec)
    for phase in ("decode", "prefill"):
        shape = PoolShape.of(spec, plan, phase)
        run = PoolRun(spec, plan, phase, device="cpu", hw_pred=None, hw_comm=spec.hardware, fabric=None)
        assert (run.nranks, run.T, tuple(sorted(run.router.holders))) == (shape.nranks, shape.tokens, shape.experts)
        tensors = [run.W.final_norm, run.W.lm_head, run.W.eh_proj, *run.W.mtp_norms, *run.x, *run.emb, run.fill]
        for lw in run.W.layers:
            for v in vars(lw).values():
                tensors += list(v.values()) if isinstance(v, dict) else [v] if isinstance(v, torch.Tensor) else []
        if phase == "decode":
            tensors += [x for layer in run.cache for pair in layer for x in pair]
        mem = shape.memory("fp32", spec.executor.kv_len)
        assert sum(t.nbytes for t in tensors) == mem["weights"] + mem["inputs"]


MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from cmtwin.config.compose import load_spec
    from cmtwin.planner.plan import compile_plan
    from cmtwin.executor import budget

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    verb, *over = sys.argv[1:]
    spec = load_spec(over, require_deployment=verb == "execute")[0]
    torch.randn(64, 64) @ torch.randn(64, 64)  # the math library's own buffers are not the run's
    if verb == "execute":
        from cmtwin.executor.api import execute
        plan = compile_plan(spec)
        est = sum(budget.execute_parts(spec, plan).values())
        base = status("VmRSS")
        execute(spec, plan=plan)
    else:
        from cmtwin.executor import calibrate as C
        est = sum(C.memory(spec, "cpu", quick=True).values())
        base = status("VmRSS")
        C.calibrate_local(spec, device="cpu", name="x", quick=True)
    print(json.dumps({"estimate": est, "measured": status("VmHWM") - base}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("args", [
    # activations dominate: the reference's MHA-form decode attention over a long cache
    ["execute", "+deployment=r1_h800_ep144", "executor.ranks=16", "executor.decode_tokens=64",
     "executor.kv_len=1024", "executor.layers=1", "executor.phase=decode", "executor.scale=0.02"],
    # weights dominate
    ["execute", "+deployment=r1_h800_ep144", "executor.ranks=8", "executor.scale=0.1", "executor.layers=1",
     "executor.decode_tokens=16"],
    ["calibrate", "executor.scale=0.05", "executor.kv_len=256"],
], ids=["execute-activations", "execute-weights", "calibrate"])
def test_estimate_is_within_1_5x_of_the_measured_peak_resident_growth(args, tmp_path):
    """A run of a few hundred MB in a fresh process: the estimate against the growth of its peak resident
    memory (VmHWM) over what it held before."""
    r = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, timeout=240,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["measured"] > 100 << 20, got  # the run's tensors, not the interpreter's noise, are measured
    assert 1 / 1.5 <= got["estimate"] / got["measured"] <= 1.5, got


def test_execute_refuses_at_once_what_does_not_fit_and_names_what_fits(tmp_path):
    from cmtwin.executor import budget

    r = _cli("execute", "+deployment=r1_ep320", "executor.scale=1.0", "--no-record", cwd=tmp_path, mem="40G")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    msg = " ".join(r.stderr.split())
    assert "would need about" in msg and "40.00 GiB is available (CMTWIN_MEM_AVAILABLE" in msg, msg
    assert re.search(r"weights [0-9.]+ GiB", msg)
    scale = float(re.search(r"executor\.scale=([0-9.]+) \(about", msg).group(1))
    assert 0 < scale < 1
    spec = load_spec(["+deployment=r1_ep320", f"executor.scale={scale}"])[0]
    need = sum(budget.execute_parts(spec, compile_plan(spec)).values())
    assert need <= budget.USABLE * (40 << 30)
    assert "executor.ranks=" in msg  # another way to fit


def test_calibrate_refuses_at_once_what_does_not_fit(tmp_path):
    r = _cli("calibrate", "executor.scale=1.0", cwd=tmp_path, mem="4G")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    msg = " ".join(r.stderr.split())
    assert "calibrate at executor.scale=1" in msg and "4.00 GiB is available" in msg
    assert re.search(r"run with executor\.scale=0\.[0-9]+ \(about", msg), msg
    assert not (tmp_path / "cmtwin_conf").exists()


def test_a_bare_calibrate_fits_this_kind_of_machine():
    """The defaults (what `cmtwin calibrate` runs with no arguments) plan well under 24 GB (a 2-core, 24 GB
    machine): the reporter's bare calibrate at scale 1.0 grew to 24 GB and was killed."""
    from cmtwin.executor import calibrate as C

    spec = load_spec([], require_deployment=False)[0]
    assert spec.executor.scale < 1 and spec.executor.threads == 1
    assert sum(C.memory(spec, "cpu").values()) < 2 << 30


def test_execute_progress_reaches_every_stage():
    from cmtwin.executor.api import execute

    seen: dict = {}
    spec = load_spec(["+deployment=r1_ep320", *TINY])[0]
    execute(spec, progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)))
    assert list(seen) == ["building the ranks", "warm-up", "timed passes", "reference"]
    assert all(done == total > 0 for done, total in seen.values()), seen
    assert seen["timed passes"][1] == spec.executor.passes * seen["warm-up"][1]


def test_cli_execute_says_the_device_is_uncalibrated_and_keeps_json_stdout_clean(tmp_path):
    r = _cli("execute", "+deployment=r1_ep320", *TINY, "--no-record", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # nothing but the JSON object on stdout
    note = out["prediction_profile"]
    assert note["name"] == "ascend_910c" and note["chosen_by"] == "deployment" and not note["describes_device"]
    assert "cmtwin calibrate" in note["warning"] and "executor.profile=local_cpu" in note["warning"]
    est = out["estimate"]
    assert est["peak_bytes"] == sum(est["parts_bytes"].values()) and est["seconds"] > 0
    assert "execute needs about" in r.stderr and "should take about" in r.stderr and "warning:" in r.stderr
    r = _cli("execute", "+deployment=r1_ep320", *TINY, "--no-record", cwd=tmp_path)
    text = " ".join(r.stdout.split())  # rich wraps the lines at the console's width
    assert r.returncode == 0, r.stderr[-2000:]
    assert "NOT this device" in text and "warning: this cpu has no calibrated profile" in text, text


def test_cuda_graph_timing_counts_its_private_pool_and_refuses_before_start(monkeypatch):
    """On CUDA with graph timing, the graphs' private pool is counted (a pass's transient again plus the
    allocator's 2 + 20 MiB segments), so a run that fits synchronised can be refused graphed, at once; a CPU
    run and executor.timing=sync count nothing for it."""
    from cmtwin.errors import CmtwinError
    from cmtwin.executor import budget

    spec = load_spec(["+deployment=r1_h800_ep144", "executor.scale=0.05", "executor.ranks=4"])[0]
    plan = compile_plan(spec)
    cpu, cuda = budget.execute_parts(spec, plan, "cpu"), budget.execute_parts(spec, plan, "cuda")
    sync = budget.execute_parts(spec.model_copy(update={"executor": spec.executor.model_copy(
        update={"timing": "sync"})}), plan, "cuda")
    assert cpu["CUDA graph pool"] == sync["CUDA graph pool"] == 0
    assert cuda["CUDA graph pool"] == cuda["pass transient"] + (22 << 20)
    between = (sum(sync.values()) + sum(cuda.values())) // 2
    monkeypatch.setenv(budget.ENV, str(int(between / budget.USABLE)))
    budget.check_execute(spec, plan, "cpu")  # fits without graphs
    with pytest.raises(CmtwinError, match="CUDA graph pool"):
        budget.check_execute(spec, plan, "cuda")
