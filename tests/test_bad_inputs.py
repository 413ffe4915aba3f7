"""The bad-input corpus: every malformed input exits 2 with one paragraph naming the key, no traceback, and
leaves the run store exactly as it was. The count of cases is reported in docs/reliability.md."""

from __future__ import annotations

import sqlite3

import pytest

from bad_input import expect_bad_input
from cmtwin.cli.main import main
from cmtwin.paths import topologies_dir

D = "+deployment=r1_ep320"

# (id, argv, a fragment the message must contain)
CONFIG_CASES = [
    ("no-deployment", ["plan"], "r1_ep320"),
    ("misspelled-deployment", ["plan", "+deployment=r1_ep32"], "Did you mean r1_ep320"),
    ("unknown-key", ["plan", D, "foo=1"], "'foo'"),
    ("unknown-nested-key", ["plan", D, "decode.bogus=1"], "decode.bogus"),
    ("wrong-type", ["plan", D, "decode.batch_per_device=abc"], "decode.batch_per_device"),
    ("negative-ep", ["plan", D, "decode.ep=-1"], "decode.ep"),
    ("zero-batch", ["plan", D, "decode.batch_per_device=0"], "decode.batch_per_device"),
    ("unknown-hardware", ["plan", D, "hardware=h900"], "hardware"),
    ("unknown-model", ["plan", D, "model=gpt5"], "model"),
    ("unknown-group", ["plan", D, "+nogroup=x"], "nogroup"),
    ("ep-does-not-divide", ["plan", D, "decode.ep=7"], "decode.ep (7)"),
    ("prefill-ep-too-large", ["plan", D, "prefill.ep=64"], "prefill.ep (64)"),
    ("prefill-tp-does-not-divide", ["plan", D, "prefill.tp=5"], "prefill.tp (5)"),
    ("odd-batch-per-npu", ["plan", D, "decode.batch_per_device=95"], "decode.batch_per_device (95)"),
    ("unsupported-precision", ["plan", D, "precision=fp8"], "fp8"),
    ("unknown-precision", ["plan", D, "precision=fp2"], "precision"),
    ("mtp-without-mtp-layers", ["plan", D, "model=llama3_70b"], "mtp.draft_tokens"),
    ("experts-do-not-fit", ["plan", D, "decode.redundant_experts=31"], "EP cannot hold the experts"),
    ("prefill-experts-do-not-fit", ["plan", D, "prefill.redundant_experts=5"], "prefill.ep"),
    ("hbm-overflow", ["plan", D, "decode.batch_per_device=4000"], "HBM overflow"),
    ("more-devices-than-topology", ["plan", D, "decode.devices=320", "decode.ep=640"], "more devices than the topology has"),
    ("bad-override-syntax", ["plan", D, "decode.ep"], "decode.ep"),
    ("code-in-config", ["plan", D, "+x._target_=os.system"], "_target_"),
    ("env-interpolation", ["plan", D, "decode.ep=${oc.env:HOME}"], "interpolation"),
    ("unreachable-slo", ["plan", D, "slo.tpot_ms=1"], "slo.tpot_ms"),
    ("acceptance-above-one", ["plan", D, "mtp.acceptance=1.5"], "mtp.acceptance"),
    ("block-too-small", ["plan", D, "caching.block_tokens=64"], "caching.block_tokens"),
    ("negative-slo", ["plan", D, "slo.tpot_ms=-5"], "slo.tpot_ms"),
    ("zero-prompt", ["plan", D, "workload.prompt_len=0"], "workload.prompt_len"),
    ("append-existing-key", ["plan", D, "+decode.ep=3"], "decode.ep"),
    ("delete-required-section", ["plan", D, "~decode"], "decode"),
    ("unknown-balance", ["plan", D, "placement.balance=great"], "placement.balance"),
    ("unknown-serving-mode", ["plan", D, "serving.mode=both"], "serving.mode"),
    ("three-microbatches", ["plan", D, "decode.microbatches=3"], "decode.microbatches"),
    ("negative-node-param", ["plan", "+deployment=r1_h100_ep72", "topology.params.nodes=-2"], "nodes"),
    ("unknown-topology-param", ["plan", D, "+topology.params.racks=3"], "racks"),
    ("missing-topology-file", ["plan", D, "topology.file=nowhere"], "nowhere"),
    ("topology-path-escapes", ["plan", D, "topology.file=/etc/passwd"], "outside the allowed folders"),
]

BASE_TOPOLOGY = (topologies_dir() / "single_host.yaml").read_text()
TOPOLOGY_CASES = [
    ("negative-bandwidth", BASE_TOPOLOGY.replace("bandwidth_gbps: 504", "bandwidth_gbps: -504"), "bandwidth_gbps"),
    ("zero-nodes", BASE_TOPOLOGY.replace("nodes: 1\n", "nodes: 0\n"), "nodes"),
    ("unknown-topology-key", BASE_TOPOLOGY + "colour: blue\n", "colour"),
    ("wrong-type-topology", BASE_TOPOLOGY.replace("latency_us: 1.0", "latency_us: fast"), "latency_us"),
    ("yaml-syntax", BASE_TOPOLOGY.replace("connections:", "connections: [", 1), "line"),
    ("dangling-link", BASE_TOPOLOGY + "links:\n  - {a: n00.dev0, b: n99.dev7, plane: host, bandwidth_gbps: 8, "
                                      "latency_us: 1, source: what-if}\n", "n99.dev7"),
    ("self-loop", BASE_TOPOLOGY + "links:\n  - {a: n00.dev0, b: n00.dev0, plane: host, bandwidth_gbps: 8, "
                                  "latency_us: 1, source: what-if}\n", "n00.dev0"),
    ("missing-source", BASE_TOPOLOGY.replace(
        '      bandwidth_gbps: "PCIe 5.0 specification: 32 GT/s x 16 lanes x 128/130 encoding = 504 Gbps (63 GB/s) one way"\n',
        ""), "source"),
]

SQL_CASES = [
    ("drop-table", "drop table runs", "DROP"),
    ("stacked-delete", "select 1; delete from runs", "statement"),
    ("pragma-write", "PRAGMA writable_schema=1", "PRAGMA"),
    ("attach", "ATTACH DATABASE 'x.db' AS x", "ATTACH"),
    ("insert", "insert into runs (verb) values ('x')", "INSERT"),
    ("update-in-cte", "with x as (update runs set status='ok' returning id) select * from x", "UPDATE"),
    ("missing-table", "select * from no_such_table", "no_such_table"),
    ("syntax", "selec * from runs", "selec"),
]


def _check(argv, fragment, workdir, capsys):
    return expect_bad_input(argv, fragment, workdir, capsys)


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_or_override(argv, fragment, workdir, capsys):
    _check(argv, fragment, workdir, capsys)


@pytest.mark.parametrize("text,fragment", [c[1:] for c in TOPOLOGY_CASES], ids=[c[0] for c in TOPOLOGY_CASES])
def test_bad_topology_file(text, fragment, workdir, capsys):
    (workdir / "bad.yaml").write_text(text)
    _check(["plan", D, "topology.file=./bad.yaml"], fragment, workdir, capsys)


def test_non_utf8_topology_file(workdir, capsys):
    (workdir / "bad.yaml").write_bytes(BASE_TOPOLOGY.encode()[:200] + b"\xff\xfe" + BASE_TOPOLOGY.encode()[200:])
    _check(["plan", D, "topology.file=./bad.yaml"], "UTF-8", workdir, capsys)


def test_oversized_topology_file(workdir, capsys):
    (workdir / "bad.yaml").write_text(BASE_TOPOLOGY + "#" * (2 << 20) + "\n")
    _check(["plan", D, "topology.file=./bad.yaml"], "MiB", workdir, capsys)


TRACE_HEADER = "timestamp_s,prompt_len,output_len\n"
TRACE_CASES = [
    ("trace-missing-column", "trace.csv", b"timestamp_s,prompt_len\n0.1,100\n", "output_len"),
    ("trace-negative-length", "trace.csv", (TRACE_HEADER + "0.1,100,10\n0.2,-5,10\n").encode(), "line 3"),
    ("trace-unsorted", "trace.csv", (TRACE_HEADER + "0.3,100,10\n0.2,5,10\n").encode(), "line 3"),
    ("trace-fractional-length", "trace.csv", (TRACE_HEADER + "0.1,10.5,10\n").encode(), "prompt_len"),
    ("trace-non-utf8", "trace.csv", TRACE_HEADER.encode() + b"0.1,1\xff0,10\n", "utf-8"),
    ("trace-jsonl-missing-key", "trace.jsonl", b'{"timestamp_s": 0.1, "prompt_len": 10}\n', "output_len"),
    ("trace-missing-file", None, b"", "no such file"),
]


@pytest.mark.parametrize("name,content,fragment", [c[1:] for c in TRACE_CASES], ids=[c[0] for c in TRACE_CASES])
def test_bad_trace_file(name, content, fragment, workdir, capsys):
    if name is not None:
        (workdir / name).write_bytes(content)
    _check(["simulate", D, "workload=trace_small", f"workload.trace={name or 'nope.csv'}"], fragment, workdir, capsys)


@pytest.fixture
def populated(workdir):
    assert main(["plan", D, "--format", "json"]) == 0
    return workdir


@pytest.mark.parametrize("sql,fragment", [c[1:] for c in SQL_CASES], ids=[c[0] for c in SQL_CASES])
def test_bad_sql(sql, fragment, populated, capsys):
    db = populated / "cmtwin.db"
    before = db.read_bytes()
    _check(["query", sql], fragment, populated, capsys)
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 1
    assert not (populated / "x.db").exists()


def test_unknown_run(populated, capsys):
    _check(["runs", "show", "999"], "999", populated, capsys)


def test_corpus_size():
    n = len(CONFIG_CASES) + len(TOPOLOGY_CASES) + 2 + len(TRACE_CASES) + len(SQL_CASES) + 1
    assert n >= 40, n


# --- fuzzing: random overrides give a plan or a clean error, never a crash --------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = ["decode.ep", "decode.batch_per_device", "decode.devices", "decode.microbatches", "prefill.ep",
        "prefill.tp", "prefill.instances", "prefill.tokens_per_device", "mtp.draft_tokens", "mtp.acceptance",
        "precision", "placement.balance", "placement.expert_load_cv", "workload.prompt_len", "workload.kv_len",
        "slo.tpot_ms", "caching.block_tokens", "memory.reserve_gb_per_die", "hardware", "model", "topology",
        "decode.redundant_experts", "topology.params.nodes", "nonexistent.key"]
VALUES = st.one_of(
    st.integers(min_value=-10, max_value=5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["int8", "fp8", "bf16", "perfect", "null", "[]", "{}", "h100_sxm", "llama3_70b", "''", "x y"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)


@settings(max_examples=int(__import__("os").environ.get("CMTWIN_FUZZ_EXAMPLES", "30")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_fuzzed_overrides_never_crash(workdir, capsys, pairs):
    argv = ["plan", D, "--no-record", "--format", "json"] + [f"{k}={v}" for k, v in pairs]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc in (0, 2), f"{argv}: exit {rc}: {err}"
    assert "Traceback" not in err
    if rc == 2:
        assert err.startswith("error:")
