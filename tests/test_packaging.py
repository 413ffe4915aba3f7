"""Packaging: the built wheel carries conf/, topologies/, policies/ and migrations/, and `cmtwin` works
from the installed wheel (in a fresh virtual environment, outside the checkout), reading its data there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ("conf", "topologies", "policies", "migrations")


def _env() -> dict[str, str]:
    drop = ("CMTWIN_DB_URL", "CMTWIN_FULL_ERROR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _tree_files(tree: str) -> set[str]:
    folder = ROOT / tree
    return {p.relative_to(ROOT).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    if importlib.util.find_spec("hatchling") is not None:  # no network needed
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)]
    else:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)]
    r = subprocess.run(cmd, cwd=out, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("cmtwin-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_carries_the_data_trees(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("cmtwin/_data/conf/config.yaml", "cmtwin/_data/topologies/cloudmatrix384.yaml",
                 "cmtwin/_data/migrations/env.py", "cmtwin/__init__.py", "cmtwin/cli/main.py", "cmtwin/paths.py"):
        assert must in names, must
    if _tree_files("policies"):
        assert any(n.startswith("cmtwin/_data/policies/") for n in names)
    # every file of the four trees travels, at the same relative path
    for tree in TREES:
        missing = {f for f in _tree_files(tree) if f"cmtwin/_data/{f}" not in names}
        assert not missing, f"not in the wheel: {sorted(missing)}"
    assert any(n.startswith("cmtwin/_data/migrations/versions/") and n.endswith(".py") for n in names)
    # the console script is declared
    ep = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "cmtwin = cmtwin.cli.main:main" in zipfile.ZipFile(wheel).read(ep).decode()
    # nothing from the tests or the checkout's run stores
    assert not any(n.startswith("tests/") or n.endswith(".db") for n in names)


def _see_our_dependencies(py: Path) -> None:
    """Let the new venv import this interpreter's dependencies (hydra, sqlalchemy, ...) without installing
    them again. `venv --system-site-packages` is not enough: run from inside a venv, it inherits the *base*
    interpreter's site-packages, not this venv's. A .pth line that names a folder only appends it to sys.path
    (its own .pth files, such as the editable install's finder for the checkout, are not processed), and it
    comes after the new venv's own site-packages, so the wheel's cmtwin wins."""
    import sysconfig

    theirs = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            env=_env(), capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    Path(theirs, "_outer_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))


@pytest.mark.slow
def test_installed_wheel_plans_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_env(), timeout=120)
    py, pip, script = (venv / "bin" / n for n in ("python", "pip", "cmtwin"))
    _see_our_dependencies(py)
    r = subprocess.run([str(pip), "install", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                       env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert script.exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    r = subprocess.run([str(script), "plan", "+deployment=r1_ep320", "--format", "json"], cwd=work, env=_env(),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    obj = json.loads(r.stdout)
    assert set(obj) == {"run_id", "plan_hash", "plan", "prediction"}
    assert obj["run_id"] == 1 and obj["plan"]["devices_used"] == 256
    assert (work / "cmtwin.db").exists()
    # the interpreter of the venv reads the wheel's copy of the data, not the checkout's
    code = ("import json, cmtwin, cmtwin.paths as p; "
            "print(json.dumps([cmtwin.__file__, str(p.data_root()), str(p.conf_dir()), str(p.migrations_dir())]))")
    r = subprocess.run([str(py), "-c", code], cwd=work, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pkg, data, conf, migrations = (Path(x).resolve() for x in json.loads(r.stdout))
    site = venv.resolve()
    for path in (pkg, data, conf, migrations):
        assert path.is_relative_to(site), f"{path} is not inside the venv"
        assert not path.is_relative_to(ROOT), f"{path} is in the checkout"
    assert "site-packages" in data.parts and data.name == "_data"
    assert (conf / "config.yaml").is_file() and (migrations / "env.py").is_file()
    # the store made by the installed wheel migrates with the wheel's Alembic tree
    r = subprocess.run([str(script), "db", "current"], cwd=work, env=_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
