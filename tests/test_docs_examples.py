"""docs/your-cluster.md builds a worked example in ./cmtwin_conf/ (a hardware profile, a topology file and its
option, a deployment). These tests take the files from the page itself, every fenced block whose first line
reads ```<lang> title="<path>", write them into an empty directory and run `cmtwin` on them in-process, so
the page cannot drift from what cmtwin accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cmtwin.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "your-cluster.md"
FENCE = re.compile(r'^```[\w-]* title="([^"]+)"[ \t]*\n(.*?)^```[ \t]*$', re.M | re.S)
DEPLOYMENT = "+deployment=qwen3_lab"


def doc_files(text: str) -> dict[str, str]:
    """{relative path: content} of the page's titled code blocks; a path given twice is an error."""
    files: dict[str, str] = {}
    for m in FENCE.finditer(text):
        path, body = m.group(1), m.group(2)
        assert path not in files, f"{DOC.name}: {path} is given twice"
        files[path] = body
    return files


FILES = doc_files(DOC.read_text(encoding="utf-8"))


def test_the_page_gives_the_four_files_under_cmtwin_conf():
    assert sorted(FILES) == [
        "cmtwin_conf/deployment/qwen3_lab.yaml",
        "cmtwin_conf/hardware/lab_h100.yaml",
        "cmtwin_conf/topologies/lab_pod.yaml",
        "cmtwin_conf/topology/lab_pod.yaml",
    ]
    assert FILES["cmtwin_conf/deployment/qwen3_lab.yaml"].startswith("# @package _global_\n")


@pytest.fixture
def cluster(workdir):
    """An empty working directory holding the page's files."""
    for rel, body in FILES.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    return workdir


def test_the_example_validates_and_plans_as_the_page_shows(cluster, capsys):
    assert main(["config", "validate", "--plan", DEPLOYMENT]) == 0
    assert "plan compiles (16 of 16 devices)" in capsys.readouterr().out

    assert main(["plan", DEPLOYMENT, "--format", "json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    plan, prediction = obj["plan"], obj["prediction"]
    assert (plan["deployment"], plan["hardware"], plan["topology"], plan["model"]) == (
        "qwen3_lab", "lab_h100", "lab_pod", "qwen3_235b_a22b")
    assert (plan["devices_total"], plan["devices_used"], plan["precision"]) == (16, 16, "fp8")
    pools = {p["role"]: p for p in plan["pools"]}
    assert pools["prefill"]["nodes"] == [0] and pools["decode"]["nodes"] == [1]
    assert pools["prefill"]["ep"] == pools["decode"]["ep"] == 8
    assert pools["decode"]["experts"]["experts_per_rank"] == 16
    assert prediction["prefill"]["tokens_per_s_per_device"] > 0
    assert prediction["decode"]["tokens_per_s_per_device"] > 0 and prediction["bottleneck"]
    assert obj["run_id"] == 1 and (cluster / "cmtwin.db").is_file()


def test_a_constant_without_a_source_is_refused_as_the_page_says(cluster, capsys):
    profile = cluster / "cmtwin_conf/hardware/lab_h100.yaml"
    text = profile.read_text(encoding="utf-8")
    line = '  memory_gib: {value: 80, source: "NVIDIA H100 datasheet, SXM5: 80 GB HBM3"}\n'
    assert line in text
    profile.write_text(text.replace(line, "  memory_gib: {value: 80}\n"), encoding="utf-8")
    assert main(["config", "validate", DEPLOYMENT]) == 2
    assert "'hardware.die.memory_gib.source' is missing" in capsys.readouterr().err
