"""Messages a new user meets first (issue 26, item 6): a group given without its `+` says to add the plus and
why, an unknown key gets its close matches (difflib) with the value and the fix, `config groups` lists the
policy families, and output is UTF-8. Every bad input exits 2 with one paragraph and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cmtwin.cli.main import main
from cmtwin.config.compose import close_keys, default_groups, options, policy_families
from cmtwin.paths import policies_dir

D = "+deployment=r1_ep320"


def _error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit 2 with a one-paragraph message and no traceback."""
    code = main(list(argv))
    cap = capsys.readouterr()
    assert code == 2, (code, cap.out, cap.err)
    assert "Traceback" not in cap.err and cap.err.startswith("error: ")
    assert cap.err.strip().count("\n") == 0, cap.err  # one paragraph
    return cap.err


# ------------------------------------------------------------------------------ a group without its '+'


def test_deployment_without_plus_says_to_write_the_plus_and_why(workdir, capsys):
    err = _error(capsys, "plan", "deployment=r1_ep320")
    assert "write +deployment=r1_ep320" in err and "Fix: +deployment=r1_ep320" not in err  # fix named once
    assert "defaults" in err and "plus" in err  # why: not in the primary defaults, so Hydra can only add it
    assert "select an option with deployment=" not in err  # not what the user typed back at them
    assert "deployment" not in default_groups()


def test_misspelled_deployment_without_plus_gets_the_close_match_with_plus(workdir, capsys):
    err = _error(capsys, "plan", "deployment=r1_ep32")
    assert "+deployment=r1_ep320" in err and "r1_h800_ep144" in err  # the fix and the options


def test_policy_family_without_plus(workdir, capsys):
    err = _error(capsys, "plan", D, "policies/batching=batchllm")
    assert "+policies/batching=batchllm" in err and "policy" in err


def test_misspelled_policy_preset_names_the_presets_and_the_plus(workdir, capsys):
    err = _error(capsys, "plan", D, "+policies/batching=batchlm")
    assert "Did you mean batchllm?" in err and "+policies/batching=batchllm" in err
    assert "fcfs_lru" in err


# ------------------------------------------------------------------------------ unknown keys: close matches


def test_unknown_key_suggests_the_close_match_with_the_value(workdir, capsys):
    err = _error(capsys, "plan", D, "decode.batch_size=64")
    assert "'decode.batch_size'" in err and "'decode.batch_size=64'" in err  # the key and the override
    assert "Did you mean decode.batch_per_device" in err and "decode.batch_per_device=64" in err  # the fix
    assert "+decode.batch_size" not in err  # the schema has no such key: adding it is no fix


@pytest.mark.parametrize("override, fix", [
    ("prefil.ep=32", "prefill.ep=32"),  # a misspelled section
    ("slo.tpot=15", "slo.tpot_ms=15"),
    ("serving.concurency=64", "serving.concurrency=64"),
])
def test_other_misspellings_find_their_key(override, fix, workdir, capsys):
    assert f"Did you mean {fix.split('=')[0]}" in _error(capsys, "plan", D, override)


def test_no_close_match_lists_the_section_keys(workdir, capsys):
    err = _error(capsys, "plan", D, "decode.zzz=1")
    assert "Keys under 'decode':" in err and "batch_per_device" in err and "Did you mean" not in err


def test_a_key_the_schema_accepts_but_the_options_do_not_set_keeps_the_plus_hint(workdir, capsys):
    err = _error(capsys, "plan", D, "topology.params.nodes=22")
    assert "+topology.params.nodes=22" in err


def test_an_added_unknown_key_gets_the_close_match_from_the_schema(workdir, capsys):
    err = _error(capsys, "plan", D, "+decode.batch_size=64")
    assert "unknown key 'decode.batch_size'" in err and "did you mean decode.batch_per_device" in err


def test_close_keys_ranks_the_shared_word_first():
    keys = ["decode", "decode.microbatches", "decode.batch_per_device", "decode.tp_mode", "prefill.batch"]
    assert close_keys("decode.batch_size", keys)[0] == "decode.batch_per_device"
    assert close_keys("decode.zzz", keys) == []
    assert close_keys("decod.microbatch", keys) == ["decode.microbatches"]


# ------------------------------------------------------------------------------ config groups


def test_config_groups_lists_the_policy_families(workdir, capsys):
    assert main(["config", "groups"]) == 0
    out = capsys.readouterr().out
    families = sorted(d.name for d in policies_dir().iterdir() if d.is_dir() and any(d.glob("*.yaml")))
    assert families and policy_families() == [f"policies/{f}" for f in families]
    for f in families:
        presets = sorted(p.stem for p in (policies_dir() / f).glob("*.yaml"))
        assert f"policies/{f}: {', '.join(presets)}\n" in out
        assert f"+policies/{f}={presets[0]}" in out  # how to select one: with a plus
    assert options("policies/batching") == ["batchllm", "fcfs_lru"]
    assert "hardware: " in out and "+hardware=" not in out  # a default group is changed without a plus


# ------------------------------------------------------------------------------ UTF-8


def test_config_show_prints_the_section_sign_not_an_escape(workdir, capsys):
    assert main(["config", "show", D]) == 0
    out = capsys.readouterr().out
    assert "§" in out and "\\xA7" not in out


def test_output_is_utf8_even_when_the_console_says_ascii(workdir):
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    env.pop("CMTWIN_FULL_ERROR", None)
    res = subprocess.run([sys.executable, "-m", "cmtwin.cli.main", "config", "show", D],
                         capture_output=True, env=env, cwd=workdir, timeout=120)
    assert res.returncode == 0, res.stderr.decode("utf-8", "replace")
    out = res.stdout.decode("utf-8")  # raises if it is not UTF-8
    assert "§" in out and "\\xA7" not in out
    res = subprocess.run([sys.executable, "-m", "cmtwin.cli.main", "plan", "deployment=r1_ep320"],
                         capture_output=True, env=env, cwd=workdir, timeout=120)
    assert res.returncode == 2 and b"Traceback" not in res.stderr and b"+deployment=r1_ep320" in res.stderr
