"""`cmtwin export launch` / `cmtwin import launch` (cmtwin/launch/): every generated flag is one the engine's own
argument definitions accept (its flag list, taken from its source at a stated commit: cmtwin/launch/flags/), export
then import gives back the same plan hash, and what an engine cannot express is refused with the nearest plan."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from cmtwin.cli.main import main
from cmtwin.config.compose import load_spec
from cmtwin.config.identity import spec_hash
from cmtwin.launch.bundle import read_launches
from cmtwin.launch.engine import flag_list, known_flags
from cmtwin.launch.export import export_launch
from cmtwin.launch.importer import detect, import_launch, write_deployment
from cmtwin.launch.view import Inexpressible

def _gpu_deployments() -> list[str]:
    """Shipped deployments on a GPU profile (read from their `override /hardware:` line)."""
    import re

    from cmtwin.config.compose import load_group_option
    from cmtwin.paths import conf_dir

    out = []
    for f in sorted((conf_dir() / "deployment").glob("*.yaml")):
        m = re.search(r"override /hardware: (\w+)", f.read_text())
        if m and load_group_option("hardware", m.group(1))["kind"] == "gpu":
            out.append(f.stem)
    return out


GPU = ["r1_h200_disagg", "r1_h200_tp8_agg", "r1_h100_tp16", *sorted(set(_gpu_deployments())
                                                                     - {"r1_h200_disagg", "r1_h200_tp8_agg",
                                                                        "r1_h100_tp16"})]
ENGINES = ["sglang", "vllm", "trtllm"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _export(deployment: str, engine: str, out, *extra: str):
    """The plan as given where the engine expresses it, else the nearest (the refusal is tested below)."""
    return export_launch([f"+deployment={deployment}", *extra], engine, out, nearest=True)


def _check_value(engine: str, flag: str, value: str | None, meta: dict) -> None:
    if meta.get("bool"):
        assert value is None, f"{engine}: {flag} is a switch but got {value!r}"
        return
    assert value is not None, f"{engine}: {flag} needs a value"
    if meta.get("choices"):
        assert value in [str(c) for c in meta["choices"]], f"{engine}: {flag} {value!r} not in {meta['choices']}"


def _check_argv(engine: str, argv: list[str], key: str = "flags") -> list[str]:
    """Every --flag of the command is the engine's, with a value where it takes one and within its choices."""
    known = known_flags(engine, key)
    seen = []
    i = next(k for k, t in enumerate(argv) if t.startswith("--"))
    while i < len(argv):
        flag = argv[i]
        assert flag in known, f"{engine}: {flag} is not among the engine's flags ({flag_list(engine)['commit'][:10]})"
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):  # its value(s): --worker-urls takes several
            j += 1
        _check_value(engine, flag, argv[i + 1] if j > i + 1 else None, known[flag])
        seen.append(flag)
        i = j
    return seen


def _check_json_options(engine: str, argv: list[str]) -> None:
    """vLLM's JSON-valued flags: their keys are the config classes' fields."""
    lists = flag_list("vllm")
    for flag, section in (("--speculative-config", "speculative_config"), ("--kv-transfer-config", "kv_transfer_config")):
        if flag in argv:
            cfg = json.loads(argv[argv.index(flag) + 1])
            assert set(cfg) <= set(lists[section]["fields"]), (flag, cfg)
            if section == "speculative_config":
                assert cfg["method"] in lists[section]["methods"]
            elif engine == "vllm":
                assert cfg["kv_connector"] in lists[section]["connectors"]
            else:
                assert cfg["kv_connector"] in flag_list("vllm-ascend")["kv_connectors"]
    for flag, section in (("--eplb-config", "eplb_config"), ("--compilation-config", "compilation_config")):
        if flag in argv:
            assert set(json.loads(argv[argv.index(flag) + 1])) <= set(lists[section]["fields"]), flag
    if "--additional-config" in argv:
        cfg = json.loads(argv[argv.index("--additional-config") + 1])
        allowed = flag_list("vllm-ascend")["additional_config"]
        for k, v in cfg.items():
            assert k in allowed, k
            if isinstance(v, dict):
                assert set(v) <= set(allowed[k]["fields"]), (k, v)
                for field, choices in (allowed[k].get("choices") or {}).items():
                    assert field not in v or v[field] in choices, (k, field)


def _check_trtllm_extra(text: str) -> None:
    opts = flag_list("trtllm")["llm_api_options"]
    cfg = yaml.safe_load(text)
    for k, v in cfg.items():
        assert k in opts, k
        if isinstance(v, dict):
            assert set(v) <= set(opts[k]["fields"]), (k, v)
            for field, allowed in (opts[k].get("choices") or {}).items():
                if field in v:
                    assert v[field] in allowed, (k, field, v[field])
    if "speculative_config" in cfg:
        assert cfg["speculative_config"]["decoding_type"] == flag_list("trtllm")["mtp_decoding_type"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("deployment", GPU[:3])
def test_every_generated_flag_is_the_engines_own(workdir, deployment, engine):
    res = _export(deployment, engine, workdir / "out")
    assert res.bundle.launches
    for launch in res.bundle.launches:
        argv = list(launch.argv)
        eng = detect(argv, engine)
        if eng is None:  # `ray start` on the other nodes of a Ray cluster
            continue
        if engine == "trtllm":
            argv = argv[argv.index("trtllm-serve") + 1:]
        flags = _check_argv(engine, argv)
        assert len(flags) == len(set(flags)), f"a flag given twice: {flags}"
        if engine == "vllm":
            _check_json_options(engine, argv)
    for name, text in res.bundle.files.items():
        if name.startswith("extra-"):
            _check_trtllm_extra(text)
    if res.bundle.router and engine == "sglang":
        _check_argv("sglang", list(res.bundle.router), key="router_flags")
    if res.bundle.router and engine == "trtllm":
        _check_argv("trtllm", list(res.bundle.router[2:]), key="disaggregated_flags")
    readme = (workdir / "out" / "README.md").read_text()
    assert "What cmtwin predicts" in readme and flag_list(engine)["commit"][:10] in readme


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("deployment", GPU)
def test_export_then_import_gives_back_the_plan(workdir, deployment, engine):
    """Every shipped GPU deployment on every engine (its nearest plan where it cannot express it)."""
    """Import reads only the flags for the layout (the context line carries hardware, topology, workload):
    the same plan hash means the flags carried every layout key."""
    res = _export(deployment, engine, workdir / "out")
    imp = import_launch([str(workdir / "out")], name="roundtrip")
    write_deployment(imp)
    again, _ = load_spec(["+deployment=roundtrip"])
    assert spec_hash(again) == spec_hash(res.spec), (deployment, engine, res.nearest)
    assert imp.unknown == []


def test_a_search_frontier_point_exports_and_round_trips(workdir):
    from cmtwin.search.run import search

    spec, _ = load_spec(["+deployment=r1_h200_tp8_agg", "search.precisions=[fp8]", "search.mtp_draft_tokens=[0,1]",
                         "search.decode_batches=[32,128]", "search.simulate_top=0"])
    res = search(spec, workers=1)
    cand = res.candidates[res.frontier[0]]
    for engine in ENGINES:
        out = workdir / engine
        exp = export_launch(["+deployment=r1_h200_tp8_agg", *cand.overrides()], engine, out, nearest=True)
        for launch in exp.bundle.launches:
            if detect(list(launch.argv), engine):
                argv = list(launch.argv)
                _check_argv(engine, argv[argv.index("trtllm-serve") + 1:] if engine == "trtllm" else argv)
        imp = import_launch([str(out)], name=f"cand_{engine}")
        write_deployment(imp)
        assert spec_hash(load_spec([f"+deployment=cand_{engine}"])[0]) == spec_hash(exp.spec)


def test_r1_ep320_exports_for_vllm_ascend_with_the_prefill_refusal_stated(workdir):
    """CloudMatrix-Infer's decode (DP320 EP320 over 160 NPUs = 320 dies) is vLLM-Ascend's to run; its staged
    SP-TP-SP prefill MLA is not, so the export names the nearest plan and says so."""
    with pytest.raises(Inexpressible) as e:
        export_launch(["+deployment=r1_ep320"], "vllm-ascend", workdir / "x")
    assert "prefill.tp_mode=allreduce" in e.value.nearest
    res = export_launch(["+deployment=r1_ep320"], "vllm-ascend", workdir / "out", nearest=True)
    decode = [x for x in res.bundle.launches if x.role == "decode" and x.node == 0][0]
    argv = list(decode.argv)
    _check_argv("vllm-ascend", argv)
    _check_json_options("vllm-ascend", argv)
    assert argv[argv.index("--data-parallel-size") + 1] == "320" and "--enable-expert-parallel" in argv
    assert argv[argv.index("--quantization") + 1] == "ascend"  # W8A8
    assert argv[2] == "vllm-ascend/DeepSeek-R1-W8A8"
    # the nearest plan puts the shared expert on every rank, so 256 + 64 slots fill the 320 ranks evenly
    assert "decode.dedicated_shared_ranks=0" in res.nearest and "decode.redundant_experts=64" in res.nearest
    assert json.loads(argv[argv.index("--additional-config") + 1])["eplb_config"]["num_redundant_experts"] == 64
    readme = (workdir / "out" / "README.md").read_text()
    assert "Not the plan as given" in readme and "prefill.tp_mode=allreduce" in readme
    imp = import_launch([str(workdir / "out")], name="cm")
    write_deployment(imp)
    assert spec_hash(load_spec(["+deployment=cm"])[0]) == spec_hash(res.spec)


@pytest.mark.parametrize("engine,overrides,reason,nearest", [
    ("trtllm", ["+deployment=r1_h200_tp8_agg", "decode.tp=2"], "tensor-parallel over all", "decode.tp=1"),
    ("vllm", ["+deployment=r1_h200_tp8_agg", "decode.ep=4", "decode.moe_tp=2"], "either expert-parallel",
     "decode.moe_tp=1"),
    ("sglang", ["+deployment=r1_h200_disagg", "decode.dedicated_shared_ranks=1", "decode.redundant_experts=3"],
     "colocates the shared expert", "decode.dedicated_shared_ranks=0"),
])
def test_an_inexpressible_plan_is_refused_with_the_nearest(workdir, capsys, engine, overrides, reason, nearest):
    assert main(["export", "launch", *overrides, "--engine", engine, "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert reason in err and nearest in err and "--nearest" in err and "Traceback" not in err
    assert not (workdir / "x").exists()  # nothing half-written


def test_a_hand_written_command_imports_with_its_unknown_flags_listed(workdir, capsys):
    cmd = ("python -m sglang.launch_server --model-path deepseek-ai/DeepSeek-R1 --tp-size 8 --dp-size 8 "
           "--enable-dp-attention --ep-size 8 --max-running-requests 256 --kv-cache-dtype fp8_e4m3 "
           "--quantization fp8 --made-up-flag 3")
    assert main(["import", "launch", cmd, "--hardware", "h200_sxm", "--name", "mine"]) == 0
    out = capsys.readouterr()
    assert "--made-up-flag" in out.err and "cmtwin plan +deployment=mine" in out.err
    spec, _ = load_spec(["+deployment=mine"])
    d = spec.decode
    assert (d.devices, d.tp, d.ep, d.moe_tp, spec.decode_batch_per_group) == (8, 1, 8, 1, 32)
    assert spec.serving.mode == "agg" and spec.prec.kv_cache == "fp8" and spec.precision == "fp8"
    assert spec.topology.params["nodes"] == 1


@pytest.mark.parametrize("args,needle", [
    (["import", "launch", "not-a-file-or-command"], "neither a file"),
    (["import", "launch", "python -m sglang.launch_server --model-path deepseek-ai/DeepSeek-R1 --tp-size 8"],
     "--hardware"),
    (["import", "launch", "python -m sglang.launch_server --model-path some/unknown-model --tp-size 8",
      "--hardware", "h200_sxm"], "hf_id"),
    (["export", "launch", "+deployment=r1_h200_disagg", "--engine", "tgi"], "--engine"),
])
def test_bad_launch_input_exits_2_with_the_fix(workdir, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        code = main(args)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_scripts_read_back_as_written():
    text = ("#!/usr/bin/env bash\n# cmtwin-launch: role=decode instance=1 node=0\nexport X=1\n"
            "vllm serve m \\\n    --tensor-parallel-size 8 \\\n    --kv-transfer-config '{\"kv_role\": \"kv_consumer\"}'\n")
    [(fields, argv)] = read_launches(text)
    assert fields == {"role": "decode", "instance": "1", "node": "0"}
    assert argv == shlex.split("vllm serve m --tensor-parallel-size 8 --kv-transfer-config '{\"kv_role\": \"kv_consumer\"}'")
