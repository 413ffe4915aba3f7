"""`cmtwin compare`: deployments side by side, per device, per supernode and per kW."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cmtwin.cli.compare_cmd import systems_of
from cmtwin.cli.main import main


def _compare(capsys, *args: str) -> dict:
    assert main(["compare", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cloudmatrix_vs_nvl72_at_50ms_per_device_supernode_and_kw(workdir, capsys):
    out = _compare(capsys, "+deployment=r1_ep320", "+deployment=r1_gb200_nvl72", "slo.tpot_ms=50")
    assert out["common_overrides"] == ["slo.tpot_ms=50"]
    cm, nvl = out["systems"]
    assert (cm["deployment"], nvl["deployment"]) == ("r1_ep320", "r1_gb200_nvl72")
    assert (cm["devices_in_supernode"], nvl["devices_in_supernode"]) == (384, 72)
    for s in (cm, nvl):
        d = s["decode"]
        assert d["tpot_ms"] <= 50  # the SLO picked each one's batch
        assert d["tokens_per_s_pool"] == pytest.approx(d["tokens_per_s_per_device"] * d["devices"])
        assert s["prefill"]["ttft_ms"] > 0 and "stream" in s["decode"]["bottleneck"]
    assert cm["decode"]["devices"] == 160 and nvl["decode"]["devices"] == 48
    # per kW: the GB200's published 1,200 W; the 910C has no published board power, so none is made up
    assert nvl["power_w_per_device"] == 1200 and "1,200 W" in nvl["power_source"]
    assert nvl["decode"]["tokens_per_s_per_kw"] == pytest.approx(nvl["decode"]["tokens_per_s_per_device"] / 1.2)
    assert cm["power_w_per_device"] is None and cm["decode"]["tokens_per_s_per_kw"] is None
    # each system is a recorded plan run, so `cmtwin runs diff` can take them apart later
    with sqlite3.connect(workdir / "cmtwin.db") as con:
        runs = con.execute("select id, verb, deployment from runs order by id").fetchall()
    assert runs == [(cm["run_id"], "plan", "r1_ep320"), (nvl["run_id"], "plan", "r1_gb200_nvl72")]


def test_a_system_given_as_a_list_of_overrides(workdir, capsys):
    out = _compare(capsys, "+deployment=r1_gb200_nvl72", "--system", "+deployment=r1_gb200_nvl72 precision=fp4",
                   "--no-record")
    fp8, fp4 = out["systems"]
    assert (fp8["precision"], fp4["precision"]) == ("fp8", "fp4")
    assert fp4["system"] == "r1_gb200_nvl72 precision=fp4"
    assert fp4["decode"]["tokens_per_s_per_device"] > fp8["decode"]["tokens_per_s_per_device"]
    assert not (workdir / "cmtwin.db").exists()


def test_common_overrides_follow_each_system():
    assert systems_of(["+deployment=a", "slo.tpot_ms=50", "+deployment=b"], ["+deployment=c x=1"]) == [
        ["+deployment=a", "slo.tpot_ms=50"], ["+deployment=b", "slo.tpot_ms=50"],
        ["+deployment=c", "x=1", "slo.tpot_ms=50"]]


@pytest.mark.parametrize("args", [["+deployment=r1_ep320"],
                                  ["+deployment=r1_ep320", "+deployment=r1_gb200_nvl72", "decode.tp=frog"]])
def test_bad_input_is_exit_2_and_records_nothing(workdir, capsys, args):
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("two or more" in err or "decode.tp" in err)
    assert not (workdir / "cmtwin.db").exists()
