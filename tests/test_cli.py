"""The `cmtwin` command: the installed script end to end (plan, then query), the JSON contract of
`plan --format json`, config and export verbs, and the error contract (exit 2, one paragraph, no traceback,
nothing written to the run store)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import yaml

from cmtwin.cli.main import main
from cmtwin.config.compose import groups, options, policy_families
from cmtwin.topology import get_fabric
from cmtwin.topology.schema import load_topology
from cmtwin.paths import topologies_dir

D = "+deployment=r1_ep320"
TABLES = ("runs", "plans", "predictions", "metrics")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CMTWIN_DB_URL", "CMTWIN_FULL_ERROR")}
    env.update(COLUMNS="200", **extra)
    return env


def _script() -> str:
    path = shutil.which("cmtwin")
    assert path, "the `cmtwin` console script is not on PATH: run pip install -e '.[dev]'"
    return path


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([_script(), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=120)


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {t: 0 for t in TABLES}
    with sqlite3.connect(db) as con:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split("[│┃]", line)[1:-1]]


def _tables(out: str) -> list[list[dict[str, str]]]:
    """The rich tables printed in `out`, each as a list of rows keyed by the column headers."""
    tables, header, rows = [], None, []
    for line in out.splitlines():
        if line.startswith("┃"):
            header = _cells(line)
        elif line.startswith("│") and header:
            rows.append(dict(zip(header, _cells(line))))
        elif line.startswith("└") and header:
            tables.append(rows)
            header, rows = None, []
    return tables


def _table(out: str, *columns: str) -> dict[str, dict[str, str]]:
    """The one table having these columns, its rows keyed by their first cell."""
    found = [t for t in _tables(out) if t and set(columns) <= set(t[0])]
    assert len(found) == 1, f"no single table with columns {columns}"
    return {next(iter(row.values())): row for row in found[0]}


def _one_paragraph_error(err: str) -> str:
    text = err.strip()
    assert text.startswith("error: "), err
    assert "Traceback" not in err
    assert "\n\n" not in text, "more than one paragraph"
    assert len(text.splitlines()) == 1, "the message is one paragraph on one line (the terminal wraps it)"
    return text


# ------------------------------------------------------------------------------------------ the installed script


def test_installed_script_plans_r1_ep320_then_query_counts_the_run(tmp_path):
    plan = _run(["plan", D], tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "Traceback" not in plan.stderr
    out = plan.stdout
    assert "r1_ep320" in out and "devices used 256 of 384" in out
    # pools: 6 prefill instances x 16 NPUs (32 dies, EP32, 10 experts per die); one decode of 160 NPUs = 320 dies
    pools = _table(out, "pool", "inst", "devices", "dies", "EP", "exp/die")
    assert {k: pools["prefill"][k] for k in ("inst", "devices", "dies", "EP", "exp/die")} == {
        "inst": "6", "devices": "16", "dies": "32", "EP": "32", "exp/die": "10"}
    assert {k: pools["decode"][k] for k in ("inst", "devices", "dies", "EP", "exp/die")} == {
        "inst": "1", "devices": "160", "dies": "320", "EP": "320", "exp/die": "1"}
    assert pools["caching"]["devices"] == "192 CPU"
    assert "caching pool (EMS): 192 host CPUs on 48 nodes" in out
    # experts: EP320 = 288 routed ranks (256 routed + 32 redundant slots) + 32 shared-expert ranks
    experts = _table(out, "pool", "routed ranks", "shared expert", "slots", "replicas")
    assert {k: experts["decode"][k] for k in ("EP", "routed ranks", "shared expert", "slots", "replicas")} == {
        "EP": "320", "routed ranks": "288", "shared expert": "32 ranks", "slots": "288", "replicas": "32"}
    assert {k: experts["prefill"][k] for k in ("EP", "routed ranks", "shared expert", "slots", "replicas")} == {
        "EP": "32", "routed ranks": "32", "shared expert": "colocated", "slots": "288", "replicas": "32"}
    # memory per die: a breakdown, decode dies within 64 GB
    assert "Memory per die (GiB of 64)" in out
    memory = _table(out, "part", "decode/routed")
    decode_cols = [c for c in memory["used"] if c.startswith("decode/")]
    assert set(decode_cols) == {"decode/routed", "decode/shared"}
    for part in ("weights: experts", "KV cache (batch)", "dispatch buffers", "reserve"):
        assert float(memory[part]["decode/routed"]) > 0, part
    assert all(0 < float(memory["used"][c]) <= 64 for c in decode_cols)
    assert "TPOT" in out and "TTFT" in out and "bottleneck:" in out
    assert "recorded as run 1" in out
    assert (tmp_path / "cmtwin.db").exists()
    # the run is in the history
    q = _run(["query", "select count(*) as n from runs", "--format", "json"], tmp_path)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [{"n": 1}]
    table = _run(["query", "select count(*) from runs"], tmp_path)
    assert table.returncode == 0 and "1 row(s)" in table.stdout
    q = _run(["query", "select verb, deployment, status from runs", "--format", "json"], tmp_path)
    assert json.loads(q.stdout) == [{"verb": "plan", "deployment": "r1_ep320", "status": "ok"}]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plan"], "no deployment selected"),
        (["plan", "+deployment=r1_ep32"], "Did you mean r1_ep320?"),
        (["plan", D, "decode.batchsize=8"], "decode.batchsize"),
        (["plan", D, "topology.file=./neg_bw.yaml"], "bandwidth_gbps"),
        (["plan", D, "decode.batch_per_device=4000"], "HBM overflow"),
    ],
    ids=["no-deployment", "misspelled", "unknown-key", "negative-bandwidth", "hbm-overflow"],
)
def test_installed_script_bad_input_exits_2_with_one_paragraph(args, needle, tmp_path):
    _negative_bandwidth_file(tmp_path)
    r = _run(args, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in _one_paragraph_error(r.stderr)
    assert r.stdout == ""
    assert not (tmp_path / "cmtwin.db").exists(), "a failed plan must not touch the run store"


def test_plan_imports_neither_torch_nor_textual(tmp_path):
    code = ("import sys; from cmtwin.cli.main import main; "
            "rc = main(['plan', '+deployment=r1_ep320', '--no-record', '--format', 'json']); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'textual')); "
            "print(rc, heavy, file=sys.stderr); assert rc == 0 and not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().endswith("0 []")


def test_a_warm_plan_imports_no_numpy_yaml_networkx_or_hydra(tmp_path):
    """Every run after the first reads the composed config, the parsed topology and the fabric from the cache and
    steps single shapes: numpy (the twin's vector steps), PyYAML, networkx and Hydra are not imported at all, and
    the run is recorded through sqlite3 alone (issue 21's start-up: each is tens of milliseconds)."""
    code = ("import sys; from cmtwin.cli.main import main; rc = main(['plan', '+deployment=r1_ep320']); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'yaml', 'networkx', 'hydra', "
            "'omegaconf', 'sqlalchemy', 'alembic', 'torch', 'textual'}); "
            "print(rc, heavy, file=sys.stderr); assert rc == 0")
    env = _env(CMTWIN_CACHE_DIR=str(tmp_path / "cache"))
    for _ in range(2):  # the first run fills the caches and creates the store
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
    assert r.stderr.strip().endswith("0 []"), r.stderr


# ------------------------------------------------------------------------------------------ plan --format json


def _plan_json(capsys, *args: str) -> dict:
    assert main(["plan", D, "--format", "json", *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # one JSON document, nothing else on stdout


def test_plan_json_is_one_object_with_the_contract(workdir, capsys):
    obj = _plan_json(capsys)
    assert set(obj) == {"run_id", "plan_hash", "plan", "prediction"}
    assert isinstance(obj["run_id"], int) and obj["run_id"] >= 1
    assert obj["plan_hash"] == obj["plan"]["plan_hash"]
    pred = obj["prediction"]
    pre, dec = pred["prefill"], pred["decode"]
    assert {"tokens_per_s_per_device", "step_ms", "ttft_ms"} <= set(pre)
    assert {"tokens_per_s_per_device", "tpot_ms", "batch_per_device", "step_ms", "tokens_per_step"} <= set(dec)
    for v in (*(pre[k] for k in ("tokens_per_s_per_device", "step_ms", "ttft_ms")),
              *(dec[k] for k in ("tokens_per_s_per_device", "tpot_ms", "step_ms", "tokens_per_step"))):
        assert isinstance(v, (int, float)) and v > 0
    assert dec["batch_per_device"] == 96
    # the figures agree with each other: TPOT = step / tokens per step; throughput = batch x tokens / step
    assert dec["tokens_per_step"] == pytest.approx(1 + 0.7, rel=1e-3)  # one MTP draft accepted at 0.7
    assert dec["tpot_ms"] == pytest.approx(dec["step_ms"] / dec["tokens_per_step"], rel=0.01)
    assert dec["tokens_per_s_per_device"] == pytest.approx(
        dec["batch_per_device"] * dec["tokens_per_step"] / dec["step_ms"] * 1000, rel=0.01)
    assert pre["ttft_ms"] >= pre["step_ms"]
    rows = pred["breakdown"]
    assert rows
    for row in rows:
        assert {"phase", "stream", "operator", "time_us", "bound"} <= set(row)
        assert row["phase"] in ("prefill", "decode")
        assert row["bound"] in ("compute", "memory", "comm")
        assert isinstance(row["time_us"], (int, float)) and row["time_us"] >= 0
        assert row["operator"] and row["stream"]
    assert {r["phase"] for r in rows} == {"prefill", "decode"}
    assert {r["bound"] for r in rows} >= {"compute", "comm"}
    assert {"dispatch", "combine"} <= {r["operator"] for r in rows if r["phase"] == "decode"}
    assert isinstance(pred["bottleneck"], str) and "prefill" in pred["bottleneck"] and "decode" in pred["bottleneck"]
    plan = obj["plan"]
    assert plan["deployment"] == "r1_ep320" and plan["devices_used"] == 256
    dec_pool = plan["pools"][-1]
    assert (dec_pool["role"], dec_pool["devices"], dec_pool["dies"], dec_pool["ep"]) == ("decode", 160, 320, 320)
    assert dec_pool["experts"]["routed_slots"] + dec_pool["experts"]["dedicated_shared_ranks"] == 256 + 32 + 32
    assert all(m["used_gib"] <= 64 for m in dec_pool["memory_per_die"].values())
    assert plan["caching"]["cpus"] == 192


def test_plan_out_writes_the_same_object_and_records_the_run(workdir, capsys):
    obj = _plan_json(capsys, "--out", "plan.json")
    assert json.loads((workdir / "plan.json").read_text()) == obj
    assert _counts(workdir / "cmtwin.db") == {"runs": 1, "plans": 1, "predictions": 1,
                                              "metrics": _counts(workdir / "cmtwin.db")["metrics"]}
    assert _counts(workdir / "cmtwin.db")["metrics"] > 0
    with sqlite3.connect(workdir / "cmtwin.db") as con:
        run = con.execute("select id, verb, deployment, plan_hash, status from runs").fetchone()
    assert run == (obj["run_id"], "plan", "r1_ep320", obj["plan_hash"], "ok")
    # the table form records too, and says so
    assert main(["plan", D, "mtp.draft_tokens=0"]) == 0
    assert "recorded as run 2" in capsys.readouterr().out
    assert main(["query", "select count(*) as n from runs", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 2}]


def test_plan_no_record_leaves_the_store_alone(workdir, capsys):
    obj = _plan_json(capsys, "--no-record")
    assert obj["run_id"] is None
    assert not (workdir / "cmtwin.db").exists()


def test_overrides_change_the_plan_and_its_hash(workdir, capsys):
    a = _plan_json(capsys, "--no-record")
    b = _plan_json(capsys, "--no-record", "decode.microbatches=1", "mtp.draft_tokens=0")
    assert a["plan_hash"] != b["plan_hash"]
    assert b["prediction"]["decode"]["tokens_per_step"] == 1
    assert b["prediction"]["decode"]["step_ms"] != a["prediction"]["decode"]["step_ms"]


# ------------------------------------------------------------------------------------------ errors


def _negative_bandwidth_file(folder: Path) -> Path:
    raw = yaml.safe_load((topologies_dir() / "cloudmatrix384.yaml").read_text())
    raw["connections"][0]["bandwidth_gbps"] = -224
    path = folder / "neg_bw.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory) -> Path:
    """A run store holding one recorded plan."""
    from cmtwin.store import close_all_stores

    folder = tmp_path_factory.mktemp("seed")
    old = Path.cwd()
    os.chdir(folder)
    try:
        assert main(["plan", D, "--format", "json"]) == 0
    finally:
        os.chdir(old)
        close_all_stores()
    return folder / "cmtwin.db"


ERRORS = [
    ("no-deployment", ["plan"], ["no deployment selected", "r1_ep320", "r1_h100_ep72", "r1_h800_ep144"]),
    ("misspelled-deployment", ["plan", "+deployment=r1_ep32"],
     ["Did you mean r1_ep320?", "r1_h100_ep72", "r1_h800_ep144"]),
    ("unknown-key", ["plan", D, "decode.batchsize=8"], ["'decode.batchsize'"]),
    ("unknown-added-key", ["plan", D, "+decode.batchsize=8"], ["unknown key 'decode.batchsize'"]),
    ("negative-bandwidth", ["plan", D, "topology.file=./neg_bw.yaml"],
     ["neg_bw.yaml", "connections[0].bandwidth_gbps", "-224"]),
    ("hbm-overflow", ["plan", D, "decode.batch_per_device=4000"],
     ["HBM overflow on a decode die", "Breakdown (GiB)", "KV cache (batch)", "weights: experts",
      "decode.batch_per_device"]),
    ("hbm-overflow-bf16", ["plan", D, "precision=bf16"], ["HBM overflow on a prefill die", "Breakdown (GiB)"]),
    ("fp8-on-ascend", ["plan", D, "precision=fp8"], ["precision=fp8", "ascend_910c"]),
    ("ep-does-not-divide", ["plan", D, "decode.ep=100"], ["decode.ep (100)", "= 320"]),
    ("topology-outside", ["plan", D, "topology.file=/etc/hosts.yaml"], ["outside the allowed folders"]),
    ("unreachable-slo", ["plan", D, "slo.tpot_ms=1"], ["slo.tpot_ms"]),
    ("unwritable-out", ["plan", D, "--out", "no/such/dir/plan.json"], ["--out", "no/such/dir/plan.json"]),
    ("config-validate", ["config", "validate", "--plan", D, "decode.batch_per_device=4000"], ["HBM overflow"]),
    ("export-misspelled", ["export", "topology", "topology=cloudmatrix385"], ["Did you mean cloudmatrix384?"]),
    ("bad-db-url", ["plan", D, "--db", "sqlite:///:memory:"], ["SQLite file"]),
]


@pytest.mark.parametrize(("args", "needles"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(args, needles, workdir, seeded_db, capsys):
    shutil.copy(seeded_db, workdir / "cmtwin.db")
    _negative_bandwidth_file(workdir)
    before = _counts(workdir / "cmtwin.db")
    assert before["runs"] == 1
    assert main(args) == 2
    cap = capsys.readouterr()
    msg = _one_paragraph_error(cap.err)
    for n in needles:
        assert n in msg, msg
    if args[0] == "plan" and "--out" not in args:
        assert cap.out == ""
        assert _counts(workdir / "cmtwin.db") == before, "a failed plan left rows behind"


def test_full_error_env_shows_the_traceback(workdir, monkeypatch):
    from cmtwin.errors import ConfigError

    monkeypatch.setenv("CMTWIN_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        main(["plan"])


def test_an_internal_error_exits_1_without_a_traceback(workdir, monkeypatch, capsys):
    import cmtwin.planner.plan as planner

    def boom(spec):
        raise RuntimeError("simulated planner bug")

    monkeypatch.setattr(planner, "compile_plan", boom)
    assert main(["plan", D]) == 1
    err = _one_paragraph_error(capsys.readouterr().err)
    assert "internal error" in err and "simulated planner bug" in err and "CMTWIN_FULL_ERROR=1" in err
    assert not (workdir / "cmtwin.db").exists()


def test_unknown_verb_and_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["nosuchverb"])
    assert info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("cmtwin ")


def test_each_verb_builds_its_own_parser(capsys):
    """A command line naming a verb imports that verb's module alone (VERBS), so the table must say which module
    registers each verb: every module registered on its own adds exactly the verbs VERBS gives it, and `cmtwin
    --help` (every module) lists them all."""
    import argparse
    import importlib

    from cmtwin.cli.main import VERBS, _verb_modules, build_parser

    for name in _verb_modules():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub)
        assert {v: name.rsplit(".", 1)[1] for v in sub.choices} == {
            v: m for v, m in VERBS.items() if f"cmtwin.cli.{m}" == name}, name
    whole = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(whole.choices) == set(VERBS)
    alone = next(a for a in build_parser("runs")._actions if isinstance(a, argparse._SubParsersAction))
    assert set(alone.choices) == {"query", "runs", "db"}
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and all(v in out for v in VERBS), out
    with pytest.raises(SystemExit) as info:
        main(["plan", "--help"])
    assert info.value.code == 0 and "usage: cmtwin plan" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ config verbs


def test_config_show(workdir, capsys):
    assert main(["config", "show", D]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first.startswith("# choices:") and "hardware=ascend_910c" in first and "deployment=r1_ep320" in first
    cfg = yaml.safe_load(rest)
    assert cfg["deployment"]["name"] == "r1_ep320"
    assert (cfg["decode"]["ep"], cfg["decode"]["devices"], cfg["precision"]) == (320, 160, "int8")
    assert main(["config", "show", D, "decode.batch_per_device=64"]) == 0
    assert yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])["decode"]["batch_per_device"] == 64
    assert main(["config", "show", "--resolved", D]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["hardware"]["name"] == "ascend_910c" and resolved["decode"]["ep"] == 320
    assert resolved["mtp"]["draft_tokens"] == 1


def test_config_validate(workdir, capsys):
    obj = _plan_json(capsys, "--no-record")
    assert main(["config", "validate", D]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid: r1_ep320") and obj["plan_hash"] in out
    assert main(["config", "validate", "--plan", D]) == 0
    assert "plan compiles (256 of 384 devices)" in capsys.readouterr().out
    assert main(["config", "validate", D, "decode.ep=7"]) == 2
    assert "decode.ep (7)" in _one_paragraph_error(capsys.readouterr().err)


def test_config_schema(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Spec" and schema["type"] == "object"
    assert {"hardware", "topology", "model", "deployment", "prefill", "decode", "workload", "store"} <= set(
        schema["properties"])
    assert {"hardware", "decode"} <= set(schema["required"])
    decode = schema["$defs"]["DecodeSpec"]
    assert decode["additionalProperties"] is False
    assert decode["properties"]["ep"]["minimum"] == 1 and decode["properties"]["ep"]["description"]


def test_config_groups(capsys):
    assert main(["config", "groups"]) == 0
    table, _, footer = capsys.readouterr().out.strip().partition("\n\n")
    listed = dict(line.split(": ", 1) for line in table.splitlines())
    assert sorted(listed) == sorted(groups() + policy_families())  # the policy families too
    assert "policies/batching" in listed
    for g, opts in listed.items():
        assert opts.split(", ") == options(g)
    assert "r1_ep320" in listed["deployment"]
    assert "+policies/batching=batchllm" in footer and "+deployment=" in footer  # not in the defaults: a plus


# ------------------------------------------------------------------------------------------ export


def test_export_topology_json_and_graphml(workdir, capsys):
    graph = get_fabric("cloudmatrix384").graph
    assert main(["export", "topology", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["nodes"]) == graph.number_of_nodes() == 1410
    assert len(data["edges"]) == graph.number_of_edges()
    assert main(["export", "topology", "--format", "graphml", "--out", "cm384.graphml"]) == 0
    assert "wrote cm384.graphml" in capsys.readouterr().err
    read = nx.read_graphml(workdir / "cm384.graphml")
    assert read.number_of_nodes() == graph.number_of_nodes()
    assert read.number_of_edges() == graph.number_of_edges()
    some = next(iter(graph.nodes))
    assert some in read.nodes
    planes = {d["plane"] for _, _, d in read.edges(data=True)}
    assert {"ub", "d2d"} <= planes
    # a deployment selects its topology (with its params): the H100 cluster of r1_h100_ep72 has 13 x 8 GPUs
    assert main(["export", "topology", "+deployment=r1_h100_ep72", "--format", "json"]) == 0
    gpu = json.loads(capsys.readouterr().out)
    dies = [n for n in gpu["nodes"] if n.get("kind") == "die"]
    assert len(dies) == 13 * 8 and {n["model"] for n in dies} == {"h100"}


def test_topology_file_from_the_working_directory(workdir, capsys):
    # a user's topology file next to them is accepted (a copy of the shipped one plans like it)
    raw = yaml.safe_load((topologies_dir() / "cloudmatrix384.yaml").read_text())
    (workdir / "my_cm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_topology("./my_cm.yaml").nodes == load_topology("cloudmatrix384").nodes
    obj = _plan_json(capsys, "--no-record", "topology.file=./my_cm.yaml")
    assert obj["plan"]["devices_used"] == 256


def test_validate_writes_the_report_and_speaks_json_even_for_an_infeasible_slo(workdir, capsys):
    code = main(["validate", "--format", "json", "--out", str(workdir)])  # --out names a directory
    rows = json.loads(capsys.readouterr().out)
    assert code == (3 if any(r["within_bound"] is False for r in rows) else 0)  # 3: some row outside its bound
    for r in rows:  # strict JSON: an infeasible point is null with a flag, never NaN
        assert (r["twin"] is None) == r["infeasible"] and (r["error"] is None) == r["infeasible"]
        if r["infeasible"]:
            assert r["within_bound"] is False
    report = (workdir / "validation.md").read_text()
    assert report.count("## ascend_910c dispatch and combine") == 1  # one table per operator table
    assert "| EP256 combine, 128 tokens/rank |" in report and (workdir / "calibration.md").exists()
