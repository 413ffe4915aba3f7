"""Issue 20, the config/input part: finite numbers only, bounds that stop unbounded work before it starts,
YAML without alias bombs or runaway nesting, messages that name the file, the key and the value (truncated),
and no environment interpolation in config files. Every case exits 2 with one paragraph and leaves the run
store as it was; each would hang, crash (exit 1) or mislead without its check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bad_input import expect_bad_input
from cmtwin.cli.main import main

D = "+deployment=r1_ep320"


def _check(argv, fragments, workdir, capsys, seconds: float = 60):
    """Exit 2 with the fragments, the store untouched, within `seconds` (the unbounded work these cases stop)."""
    return expect_bad_input(argv, fragments, workdir, capsys, seconds=seconds)


# --- 1. finite numbers only, at the schema ----------------------------------------------------------------
NON_FINITE = [
    ("slo.tpot_ms", "inf"),
    ("slo.ttft_ms", "-inf"),
    ("workload.rate_per_s", "nan"),
    ("sim.duration_s", "inf"),
    ("sim.sample_interval_s", "nan"),
    ("mtp.acceptance", "nan"),
    ("placement.expert_load_cv", "nan"),
    ("caching.ssd_tb_per_node", "inf"),
    ("memory.reserve_gb_per_die", "inf"),
    ("hardware.die.memory_gib.value", "inf"),
    ("hardware.die.peak_tflops.int8.value", "nan"),
    ("search.sim_duration_s", "inf"),
]


@pytest.mark.parametrize("key,value", NON_FINITE, ids=[f"{k}={v}" for k, v in NON_FINITE])
def test_non_finite_number_refused(key, value, workdir, capsys):
    _check(["plan", D, f"{key}={value}"], [key, value, "finite number"], workdir, capsys)


# --- 2. bounds on simulated work, checked before the run row exists -----------------------------------------
SIM_BOUNDS = [
    ("duration-1e30", ["sim.duration_s=1e30"], ["sim.duration_s", "1e+30", "100,000", "lower sim.duration_s"]),
    ("rate-1e30", ["workload.rate_per_s=1e30"], ["workload.rate_per_s", "1e+30", "x sim.duration_s (300 s)",
                                                 "10,000,000", "Fix:"]),
    ("tiny-sample-interval", ["sim.sample_interval_s=1e-6"], ["sim.sample_interval_s", "3e+08",
                                                               "raise sim.sample_interval_s"]),
    ("long-duration-at-load", ["sim.duration_s=100000"], ["sim.duration_s (100,000 s)", "workload.load 0.8",
                                                          "expected requests", "Fix:"]),
    ("huge-offline-batch", ["workload.arrival=offline", "+workload.requests=1000000000"],
     ["workload.requests", "1e+09", "10,000,000"]),
]


@pytest.mark.parametrize("overrides,fragments", [c[1:] for c in SIM_BOUNDS], ids=[c[0] for c in SIM_BOUNDS])
def test_simulated_work_bounded(overrides, fragments, workdir, capsys):
    assert main(["plan", D, "--format", "json"]) == 0  # a store with one run: the refusal must add none
    _check(["simulate", D, "--no-plots", *overrides], fragments, workdir, capsys)
    with sqlite3.connect(workdir / "cmtwin.db") as con:
        assert con.execute("select count(*) from runs where status = 'running'").fetchone()[0] == 0


def test_simulated_work_limits_pass_the_defaults():
    from cmtwin.config.compose import load_spec
    from cmtwin.sim.spec import MAX_SIM_REQUESTS, MAX_SIM_SAMPLES, check_simulated_work

    spec, _ = load_spec([D])
    check_simulated_work(spec, rate_per_s=200.0, duration_s=spec.sim.duration_s)  # the default run: 60,000
    check_simulated_work(spec, rate_per_s=MAX_SIM_REQUESTS / MAX_SIM_SAMPLES, duration_s=MAX_SIM_SAMPLES)


# --- 3. YAML: alias bombs, runaway nesting, huge numbers (topology files and ./cmtwin_conf) ----------------
from cmtwin.paths import conf_dir, topologies_dir  # noqa: E402

BASE_TOPOLOGY = (topologies_dir() / "single_host.yaml").read_text()


def _alias_bomb(prefix: str = "a") -> str:
    """About 500 bytes that expand to 9^10 (3.5 billion) strings."""
    lines = [f'{prefix}0: &{prefix}0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"{prefix}{i}: &{prefix}{i} [" + ", ".join([f"*{prefix}{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


TOPOLOGY_YAML_CASES = [
    # the bomb under an unknown key: the error path used to repr() the expanded value
    ("alias-bomb-unknown-key", BASE_TOPOLOGY + _alias_bomb("x_"), ["bad.yaml", "alias", "Fix:"]),
    # the bomb as a value the schema reads
    ("alias-bomb-as-value", _alias_bomb() + BASE_TOPOLOGY.replace("nodes: 1\n", "nodes: *a9\n"),
     ["bad.yaml", "alias bomb"]),
    ("nested-50000", "name: deep\nnodes: " + "[" * 50_000 + "]" * 50_000 + "\n", ["bad.yaml", "nodes[0]", "64 deep"]),
    ("number-100000-digits", BASE_TOPOLOGY.replace("nodes: 1\n", "nodes: " + "9" * 100_000 + "\n"),
     ["bad.yaml", "nodes", "100,000 characters", "Fix:"]),
]


@pytest.mark.parametrize("text,fragments", [c[1:] for c in TOPOLOGY_YAML_CASES], ids=[c[0] for c in TOPOLOGY_YAML_CASES])
def test_topology_yaml_limits(text, fragments, workdir, capsys):
    (workdir / "bad.yaml").write_text(text)
    _check(["plan", D, "topology.file=./bad.yaml"], fragments, workdir, capsys, seconds=30)


def _user_deployment(workdir: Path, name: str = "mine", text: str | None = None) -> Path:
    """./cmtwin_conf/deployment/<name>.yaml: a copy of r1_ep320 (or `text`)."""
    folder = workdir / "cmtwin_conf" / "deployment"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    if text is None:
        text = (conf_dir() / "deployment" / "r1_ep320.yaml").read_text().replace("name: r1_ep320", f"name: {name}")
    path.write_text(text)
    return path


USER_CONF_CASES = [
    ("conf-alias-bomb", "bomb", "# @package _global_\n" + _alias_bomb("x_"), ["bomb.yaml", "alias", "Fix:"]),
    ("conf-nested-50000", "deep", "# @package _global_\ndecode:\n  ep: " + "[" * 50_000 + "]" * 50_000 + "\n",
     ["deep.yaml", "decode.ep", "64 deep"]),
    ("conf-number-100000-digits", "dig", "# @package _global_\ndecode:\n  ep: " + "9" * 100_000 + "\n",
     ["dig.yaml", "decode.ep", "100,000 characters", "Fix:"]),
    ("conf-oversized", "big", "# @package _global_\n" + "#" * (2 << 20) + "\n", ["big.yaml", "1 MiB"]),
]


@pytest.mark.parametrize("name,text,fragments", [c[1:] for c in USER_CONF_CASES], ids=[c[0] for c in USER_CONF_CASES])
def test_user_config_yaml_limits(name, text, fragments, workdir, capsys):
    _user_deployment(workdir)
    _user_deployment(workdir, name, text)
    _check(["plan", "+deployment=mine", "--no-record"], fragments, workdir, capsys, seconds=30)
    _check(["plan", f"+deployment={name}", "--no-record"], fragments, workdir, capsys, seconds=30)


def test_user_config_within_limits_still_plans(workdir, capsys):
    # anchors and a few aliases are fine; so is a copy of a shipped deployment
    text = (conf_dir() / "deployment" / "r1_ep320.yaml").read_text().replace("name: r1_ep320", "name: mine")
    _user_deployment(workdir, "mine", text + "\nslo: &slo {tpot_ms: 50}\n")
    assert main(["plan", "+deployment=mine", "--no-record", "--format", "json"]) == 0


# --- 4. messages that name the file, the key and the value --------------------------------------------------
def test_binary_file_in_user_conf_named(workdir, capsys):
    _user_deployment(workdir)
    (workdir / "cmtwin_conf" / "deployment" / "bin.yaml").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    _check(["plan", "+deployment=mine", "--no-record"], ["cmtwin_conf/deployment/bin.yaml", "UTF-8", "byte offset",
                                                         "Fix:"], workdir, capsys)


def test_too_small_topology_named_after_the_file_given(workdir, capsys):
    text = (topologies_dir() / "cloudmatrix384.yaml").read_text().replace("\nnodes: 48\n", "\nnodes: 4\n")
    (workdir / "small.yaml").write_text(text)
    message = _check(["plan", D, "topology.file=./small.yaml"], ["./small.yaml has 32", "Fix:"], workdir, capsys)
    assert "cloudmatrix384" not in message


def test_hundred_thousand_digit_override(workdir, capsys):
    _check(["plan", D, "decode.ep=" + "9" * 100_000], ["decode.ep", "100,000 characters", "Fix:"], workdir, capsys)
    text = _check(["plan", D, "workload.rate_per_s=1" + "0" * 5000 + ".5"], ["workload.rate_per_s"], workdir, capsys)
    assert "set_int_max_str_digits" not in text


# --- 5. no environment interpolation in config files ------------------------------------------------------
def test_env_interpolation_in_a_config_file_refused(workdir, capsys, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-secret")
    assert main(["plan", D, "--format", "json"]) == 0  # a store with one run
    path = _user_deployment(workdir)
    text = path.read_text()
    path.write_text(text.replace("deployment:\n", 'deployment:\n  description: "${oc.env:SECRET_TOKEN}"\n', 1)
                    if "description:" not in text else
                    __import__("re").sub(r"description:.*", 'description: "${oc.env:SECRET_TOKEN}"', text, count=1))
    message = _check(["plan", "+deployment=mine"], ["mine.yaml", "deployment.description", "oc.env", "Fix:"],
                     workdir, capsys)
    assert "hunter2" not in message
    with sqlite3.connect(workdir / "cmtwin.db") as con:
        assert not con.execute("select count(*) from runs where config like '%hunter2%'").fetchone()[0]


def test_env_interpolation_reaching_the_composed_config_refused():
    # the backstop after Hydra (config files outside ./cmtwin_conf): any composed value that reads the environment
    from cmtwin.config.compose import _env_interpolations

    cfg = {"deployment": {"description": "${oc.env:SECRET_TOKEN}"}, "x": [1, "${oc.decode:${oc.env:A}}"],
           "y": "${decode.ep}", "z": "evaluation ${x}"}
    assert _env_interpolations(cfg) == ["deployment.description", "x[1]"]


def test_search_sim_duration_bounded(workdir, capsys):
    _check(["search", D, "search.sim_duration_s=1e30"], ["search.sim_duration_s", "1e+30", "100,000"], workdir, capsys)


OVERRIDE_CASES = [
    ("override-nested-4000", "decode.ep=" + "[" * 4000 + "]" * 4000, ["decode.ep", "nested 4,000 deep"]),
    ("override-nested-100", "decode.ep=" + "[" * 100 + "]" * 100, ["decode.ep", "nested 100 deep"]),
    ("override-100000-chars", "deployment.description=" + "x" * 100_000, ["deployment.description", "10,000"]),
    ("override-100000-char-key", "a" * 100_000 + "=1", ["aaaa", "10,000"]),
    ("override-100000-chars-no-equals", "a" * 100_000, ["aaaa", "10,000"]),
]


@pytest.mark.parametrize("override,fragments", [c[1:] for c in OVERRIDE_CASES], ids=[c[0] for c in OVERRIDE_CASES])
def test_override_size_limits(override, fragments, workdir, capsys):
    _check(["plan", D, "--no-record", override], fragments, workdir, capsys, seconds=30)


def test_simulated_work_checks_a_longer_duration_than_the_spec():
    # search stretches a candidate's duration to a few request lives: the function checks what is simulated
    from cmtwin.config.compose import load_spec
    from cmtwin.errors import ConfigError
    from cmtwin.sim.spec import check_simulated_work

    spec, _ = load_spec([D])
    with pytest.raises(ConfigError, match=r"1e\+07 time-series samples"):
        check_simulated_work(spec, rate_per_s=0.01, duration_s=1e7)


def test_ssd_tier_bounded(workdir, capsys):
    # 1e300 TB per node overflowed the simulator's block count (exit 1)
    _check(["plan", D, "--no-record", "caching.ssd_tb_per_node=1e300"],
           ["caching.ssd_tb_per_node", "1e+300", "Fix: give 'caching.ssd_tb_per_node' a value <= 10000"], workdir, capsys)


@pytest.mark.parametrize("override,needle", [
    ("hardware.die.memory_gib.value=1e300", "die.memory_gib.value = 1e+300"),
    ("hardware.die.memory_bandwidth_GB_per_s.value=1e-300", "die.memory_bandwidth_GB_per_s.value"),
    ("hardware.die.peak_tflops.bf16.value=1e-300", "die.peak_tflops.bf16.value"),
    ("hardware.microbatching.attention.cube_cores=0", "a stream's cores (0 cube"),
    ("hardware.die.cube_cores.value=0", "a stream's cores (16 cube"),
])
def test_hardware_values_that_would_divide_by_zero_or_overflow_are_bad_input(override, needle):
    from cmtwin.config.compose import load_spec
    from cmtwin.errors import CmtwinError

    with pytest.raises(CmtwinError) as info:
        load_spec(["+deployment=r1_ep320", override])
    assert needle in str(info.value) and info.value.exit_code == 2
