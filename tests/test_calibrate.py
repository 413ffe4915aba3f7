"""cmtwin calibrate: a local profile the twin can select, and the import of kernel_probe measurements."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from cmtwin.twin.hardware import HardwareProfile  # noqa: E402

H100 = Path(__file__).resolve().parents[2] / "shared" / "reference" / "h100_kernels_graph.json"
if not H100.is_file():
    H100 = Path("/work/shared/reference/h100_kernels_graph.json")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cmtwin.cli.main", *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


@pytest.mark.skipif(not H100.is_file(), reason="shared/reference not present")
def test_import_h100_leave_one_out_median_within_15_percent():
    from cmtwin.executor.api import load_profile
    from cmtwin.executor.calibrate import fit_imported, leave_one_out, probe_rows

    pairs = probe_rows(H100)
    base = load_profile("h100_sxm")
    hw = fit_imported(pairs, base, "test", "h100_probe")
    HardwareProfile.model_validate(hw.model_dump())
    errs = [abs(p - m) / m for _, m, p in leave_one_out(pairs, base)]
    assert statistics.median(errs) <= 0.15


@pytest.mark.skipif(not H100.is_file(), reason="shared/reference not present")
def test_cli_import_writes_selectable_profile(tmp_path):
    r = _cli("calibrate", "--import", str(H100), "--name", "h100_probe", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["loso_median_abs_err"] <= 0.15
    import yaml

    data = yaml.safe_load((tmp_path / "cmtwin_conf" / "hardware" / "h100_probe.yaml").read_text())
    HardwareProfile.model_validate(data)


def test_cli_local_calibration_profile_validates_and_predicts(tmp_path):
    r = _cli("calibrate", "--quick", "executor.scale=0.01", "executor.kv_len=8", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)  # stdout is the JSON object alone; the estimate went to stderr
    assert got["in_sample_max_abs_err"] >= got["in_sample_median_abs_err"]
    assert got["estimate"]["peak_bytes"] > 0 and got["estimate"]["seconds"] > 0
    assert "calibrate needs about" in r.stderr and "should take about" in r.stderr
    import yaml

    f = tmp_path / "cmtwin_conf" / "hardware" / "local_cpu.yaml"
    hw = HardwareProfile.model_validate(yaml.safe_load(f.read_text()))
    assert hw.kind == "cpu" and "calibrate" in hw.launch_overhead_us.source
    assert {"gemm", "grouped_gemm", "attention_decode", "attention_prefill"} <= set(hw.efficiency)
    att = hw.efficiency["op:mla_attention"].compute  # measured over context lengths too: the axis chosen says so
    assert att.x in ("tokens", "kv_len", "bytes") and "leave-one-out median |error| tokens" in att.source
    # execute picks local_cpu for its predictions
    r = _cli("execute", "+deployment=r1_h800_ep144", "executor.scale=0.01", "executor.decode_tokens=2",
             "executor.kv_len=8", "executor.prefill_tokens=8", "executor.ranks=4", "--no-record", "--format", "json",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["profile"] == "local_cpu" and out["numerics"].startswith("ok")
    note = out["prediction_profile"]  # a calibrated device: no warning
    assert note["chosen_by"] == "calibrated" and note["describes_device"] and note["warning"] is None


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "fp8"])
def test_catalogue_dtypes_are_the_executed_dtypes(dtype):
    """The operators the executor times are costed in the dtypes it runs them in: its router is FP32 in every
    mode, and under fp32 every matmul-class operator is FP32 (a BF16 roofline on a CPU without fast BF16 made
    the router's prediction 60x too slow)."""
    from cmtwin.config.compose import load_spec
    from cmtwin.executor.modules import scaled_model
    from cmtwin.executor.predict import catalogue_ops
    from cmtwin.executor.run import precision_of

    spec, _ = load_spec(["+deployment=r1_ep320"])
    model = scaled_model(spec.model, 0.02)
    prec = precision_of(dtype)
    for phase in ("decode", "prefill"):
        ops = catalogue_ops(model, prec, phase=phase, tokens=16, kv_len=8, dense=False, loads=[4] * 9,
                            shared_tokens=16)
        assert next(o for o in ops if o.name == "router").dtype == "fp32"
        if dtype == "fp32":
            heavy = [o for o in ops if o.cls in ("gemm", "grouped_gemm") or o.cls.startswith("attention")]
            assert heavy and {o.dtype for o in heavy} == {"fp32"}, [(o.name, o.dtype) for o in heavy]


def test_bad_import_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = _cli("calibrate", "--import", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_local_fit_reproduces_each_operator_at_the_measured_shapes_and_classes_fall_back():
    """fit_local: per operator name, eff = roofline / (measured - overhead), so op_time gives back each single
    measurement; an operator the grid never saw falls back to its class's curve."""
    from cmtwin.executor.api import load_profile
    from cmtwin.executor.calibrate import fit_local
    from cmtwin.model.operators import Op
    from cmtwin.twin.cost import op_time

    base = load_profile("h100_sxm")
    pairs = [(Op("q_a_proj", "gemm", 2 * t * 7168 * 1536, 2 * 7168 * 1536, 0.0, tokens=t), us)
             for t, us in ((1, 20.0), (64, 30.0), (512, 90.0))]
    pairs += [(Op("lm_head", "gemm", 2 * t * 7168 * 129280, 2 * 7168 * 129280, 0.0, tokens=t), us)
              for t, us in ((1, 900.0), (64, 1000.0), (512, 2500.0))]
    # faster than the base profile's roofline (a bf16 peak the device beats, a copy slower than cached reads):
    # the peaks are lifted instead of the efficiency being capped at 1, so these are reproduced too
    pairs += [(Op("router", "gemm", 2 * t * 7168 * 256, 2 * 7168 * 256, 0.0, tokens=t), us)
              for t, us in ((64, 0.05), (512, 0.2))]
    pairs += [(Op("topk", "elementwise", 0.0, 0.0, 4.0 * t * 1e6, tokens=t), 1.0) for t in (64, 512)]
    hw = fit_local(pairs, base, "test", "local_test")
    HardwareProfile.model_validate(hw.model_dump())
    assert hw.die.peak_tflops["bf16"].value > base.die.peak_tflops["bf16"].value
    assert "raised" in hw.die.memory_bandwidth_GB_per_s.source
    for op, us in pairs:
        assert op_time(op, hw).us == pytest.approx(us, rel=1e-6)
    # two GEMMs of one class differ by 30x at one token count: a class-only curve could not give both
    assert {"op:q_a_proj", "op:lm_head", "gemm"} <= set(hw.efficiency)
    other = Op("o_proj", "gemm", 2 * 64 * 16384 * 7168, 2 * 16384 * 7168, 0.0, tokens=64)
    from cmtwin.twin.cost import efficiency

    assert efficiency(hw, "gemm", "o_proj") is hw.efficiency["gemm"]
    assert op_time(other, hw).us > 0


def _attention_pairs(eff):
    """(mla_attention op, measured us) over a grid like calibrate's (batches at one kv_len, then a kv_len sweep at
    two batches), the measurement being roofline / eff(op) on the h100_sxm profile's peaks."""
    from cmtwin.config.compose import load_spec
    from cmtwin.executor.api import load_profile
    from cmtwin.executor.calibrate import _roofline_only
    from cmtwin.executor.modules import scaled_model
    from cmtwin.executor.run import precision_of
    from cmtwin.model.operators import attention_ops
    from cmtwin.twin.cost import op_time

    base = _roofline_only(load_profile("h100_sxm"))  # no launch overhead: the efficiency alone shapes the time
    zero = base
    model = scaled_model(load_spec(["+deployment=r1_ep320"])[0].model, 0.02)
    shapes = [(T, 129) for T in (1, 2, 4, 8, 16, 32, 64)] + [(T, kv + 1) for T in (4, 32) for kv in (16, 64, 256, 1024)]
    pairs = []
    for i, (T, kv) in enumerate(shapes):
        noise = 1 + 0.05 * (i * 7 % 3 - 1)  # +-5%, deterministic: a curve with a point per row fits it in-sample
        op = next(o for o in attention_ops(model, precision_of("bf16"), tokens=T, requests=T, kv_len=kv,
                                           form="absorbed") if o.name == "mla_attention")
        ot = op_time(op, zero)
        pairs.append((op, noise * max(ot.compute_us, ot.memory_us) / eff(op)))
    return pairs, base


@pytest.mark.parametrize("axis", ["kv_len", "tokens"])
def test_decode_attention_curve_takes_the_axis_its_measurements_support(axis):
    """calibrate measures decode attention by batch and by context length (its 'kv' grid points); the fit
    writes attention_decode's efficiency over the coordinate whose curve predicts the held-out measurements
    best (a curve with a point per measurement, e.g. over bytes, would fit itself exactly in-sample): here an
    efficiency that depends on kv_len alone, or on the batch alone; other classes stay over tokens."""
    from cmtwin.executor.calibrate import fit_local
    from cmtwin.twin.cost import op_time

    if axis == "kv_len":
        pairs, base = _attention_pairs(lambda op: 0.05 if op.kv_len < 100 else 0.4 if op.kv_len < 1000 else 0.8)
    else:
        pairs, base = _attention_pairs(lambda op: 0.05 if op.tokens < 8 else 0.6)
    hw = fit_local(pairs, base, "test", "t")
    for key in ("op:mla_attention", "attention_decode"):
        curve = hw.efficiency[key].compute
        assert curve.x == axis, curve.source
        assert "leave-one-out" in curve.source
    for op, us in pairs:  # the chosen curve reproduces every measurement within its noise
        assert op_time(op, hw).us == pytest.approx(us, rel=0.12)


def test_calibrate_grid_sweeps_decode_attention_over_context_lengths():
    from cmtwin.config.compose import load_spec
    from cmtwin.executor import calibrate as C

    spec = load_spec(["+deployment=r1_ep320", "executor.kv_len=300"])[0]
    kv = [(T, L) for phase, T, L, _ in C.grid_points(spec, "cpu") if phase == "kv"]
    assert kv == [(T, L) for T in C.KV_BATCHES for L in sorted((*C.KV_GRID, 300))]
    quick = [p for p in C.grid_points(spec, "cpu", quick=True) if p[0] == "kv"]
    assert 1 < len(quick) < len(kv)
    # every kv point's operator is the executed mla_attention at that context (the new token included)
    ops = C.grid_ops(__import__("cmtwin.executor.modules", fromlist=["x"]).scaled_model(spec.model, 0.02),
                     __import__("cmtwin.executor.run", fromlist=["x"]).precision_of("fp32"), "kv", 4, 1024, 1024)
    assert [(o.name, o.tokens, o.kv_len) for o in ops] == [("mla_attention", 4, 1025)]


def test_a_slow_measured_peak_is_kept_not_refused(monkeypatch):
    """A CPU without native bf16 emulates it: a loaded 2-core VM measured 0.00063 TFLOPS, which the profile's range
    refused once (calibrate ended in an internal error). Such a peak is kept with its significant digits."""
    from cmtwin.executor import calibrate

    pk = {"peak_tflops": {"fp32": 0.0421337, "bf16": 0.000631234}, "bandwidth_GB_per_s": 3.2, "launch_us": 9.5,
          "n": 256}
    monkeypatch.setattr(calibrate, "measure_peaks", lambda *a, **k: pk)
    hw, _ = calibrate.peaks_profile("cpu", "local_cpu", quick=True)
    assert hw.die.peak_tflops["bf16"].value == 0.0006312 and hw.die.peak_tflops["fp32"].value == 0.04213
    HardwareProfile.model_validate(hw.model_dump())
