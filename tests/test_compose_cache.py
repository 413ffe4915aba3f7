"""The composed config is cached on disk (cmtwin/config/compose.py): the same overrides and files compose once;
an edited file, other overrides or no cache folder compose afresh; errors are never cached."""

from __future__ import annotations

import pytest

from cmtwin.config import compose as compose_mod
from cmtwin.config.compose import compose
from cmtwin.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMTWIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    calls = []
    real = compose_mod._hydra_compose
    monkeypatch.setattr(compose_mod, "_hydra_compose", lambda o: calls.append(o) or real(o))
    return calls


def test_the_same_overrides_compose_once(cache):
    a = compose(["+deployment=r1_ep320", "decode.microbatches=1"])
    b = compose(["+deployment=r1_ep320", "decode.microbatches=1"])
    assert len(cache) == 1 and a == b and b.config["decode"]["microbatches"] == 1
    c = compose(["+deployment=r1_ep320"])
    assert len(cache) == 2 and c.config["decode"]["microbatches"] == 2


def test_an_edited_user_file_is_read_again(cache, tmp_path):
    folder = tmp_path / "cmtwin_conf" / "deployment"
    folder.mkdir(parents=True)
    mine = folder / "mine.yaml"
    mine.write_text("# @package _global_\ndefaults:\n  - r1_ep320\ndeployment:\n  name: mine\ndecode:\n  batch_per_device: 32\n")
    assert compose(["+deployment=mine"]).config["decode"]["batch_per_device"] == 32
    mine.write_text(mine.read_text().replace("batch_per_device: 32", "batch_per_device: 48"))
    assert compose(["+deployment=mine"]).config["decode"]["batch_per_device"] == 48
    assert len(cache) == 2


def test_errors_are_not_cached(cache):
    for _ in range(2):
        with pytest.raises(ConfigError, match="decode.frog"):
            compose(["+deployment=r1_ep320", "decode.frog=1"])
    assert sum("decode.frog=1" in o for o in cache) == 2


def test_an_empty_cache_dir_turns_it_off(cache, monkeypatch):
    monkeypatch.setenv("CMTWIN_CACHE_DIR", "")
    compose(["+deployment=r1_ep320"])
    compose(["+deployment=r1_ep320"])
    assert len(cache) == 2
