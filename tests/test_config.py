"""Config groups: every option of every group composes and validates with a deployment it belongs with;
bad input becomes a ConfigError naming the key, the value and the fix (never another exception)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cmtwin.config.compose import compose, groups, load_spec, options
from cmtwin.config.identity import spec_hash
from cmtwin.config.schema import Spec
from cmtwin.errors import CmtwinError, ConfigError
from cmtwin.paths import conf_dir
from cmtwin.planner.plan import compile_plan
from cmtwin.topology.fabric import fabric_for
from cmtwin.twin.hardware import HardwareProfile

OPTION_FILES = sorted(conf_dir().glob("*/*.yaml"))

# Where each shipped option belongs: the overrides that select it with a deployment it is meant for, and
# whether that combination must also compile into a plan. Options not listed here (added later) fall back
# to `_fallback` and must at least validate.
HOME: dict[tuple[str, str], tuple[list[str], bool]] = {
    ("deployment", "r1_ep320"): (["+deployment=r1_ep320"], True),
    ("deployment", "r1_h100_ep72"): (["+deployment=r1_h100_ep72"], True),
    ("deployment", "r1_h800_ep144"): (["+deployment=r1_h800_ep144"], True),
    ("hardware", "ascend_910c"): (["+deployment=r1_ep320", "hardware=ascend_910c"], True),
    ("hardware", "h100_sxm"): (["+deployment=r1_h100_ep72", "hardware=h100_sxm"], True),
    ("hardware", "h800_sxm"): (["+deployment=r1_h800_ep144", "hardware=h800_sxm"], True),
    ("hardware", "h200_sxm"): (["+deployment=r1_h100_ep72", "hardware=h200_sxm", "topology=h200_cluster"], True),
    # a host CPU: it validates in the host slot (its DRAM backs the caching pool of r1_ep320)
    ("hardware", "kunpeng_920"): (["+deployment=r1_ep320", "hardware@host=kunpeng_920"], True),
    ("topology", "cloudmatrix384"): (["+deployment=r1_ep320", "topology=cloudmatrix384"], True),
    ("topology", "h100_cluster"): (["+deployment=r1_h100_ep72", "topology=h100_cluster"], True),
    ("topology", "h800_cluster"): (["+deployment=r1_h800_ep144", "topology=h800_cluster"], True),
    ("topology", "h200_cluster"): (["+deployment=r1_h100_ep72", "hardware=h200_sxm", "topology=h200_cluster"], True),
    ("topology", "single_host"): (
        ["hardware=h100_sxm", "topology=single_host", "+topology.params.devices=8", "model=qwen3_235b_a22b",
         "precision=fp8", "decode.devices=8", "decode.ep=8", "decode.batch_per_device=8"], True),
    ("model", "deepseek_r1"): (["+deployment=r1_ep320", "model=deepseek_r1"], True),
    ("model", "qwen3_235b_a22b"): (
        ["+deployment=r1_h100_ep72", "model=qwen3_235b_a22b", "mtp.draft_tokens=0", "decode.redundant_experts=16"],
        True),
    ("model", "llama3_70b"): (
        ["+deployment=r1_h100_ep72", "model=llama3_70b", "mtp.draft_tokens=0", "prefill.tokens_per_device=8192",
         "decode.batch_per_device=4"], True),
    # the newer models: each with the deployment written for it (conf/deployment/, docs/models.md)
    ("model", "kimi_k2"): (["+deployment=kimi_k2_h200"], True),
    ("model", "gpt_oss_120b"): (["+deployment=gpt_oss_120b_h100"], True),
    ("model", "minimax_m2"): (["+deployment=minimax_m2_h100"], True),
    ("model", "qwen3_32b"): (["+deployment=qwen3_32b_h100"], True),
    ("model", "llama31_8b"): (["+deployment=llama31_8b_h100"], True),
    ("model", "llama31_70b"): (["+deployment=llama31_70b_h100"], True),
    ("hardware", "gb200"): (["+deployment=r1_gb200_nvl72"], True),
    ("topology", "gb200_nvl72"): (["+deployment=r1_gb200_nvl72"], True),
    ("workload", "chat_1k"): (["+deployment=r1_ep320", "workload=chat_1k"], True),
    ("workload", "chat_4k"): (["+deployment=r1_ep320", "workload=chat_4k"], True),
    ("workload", "long_128k"): (["+deployment=r1_ep320", "workload=long_128k", "decode.batch_per_device=2"], True),
    ("store", "sqlite"): (["+deployment=r1_ep320", "store=sqlite"], False),
    ("store", "postgres"): (["+deployment=r1_ep320", "store=postgres"], False),
    ("executor", "default"): (["+deployment=r1_ep320", "executor=default"], False),
}


def _fallback(group: str, option: str) -> list[str]:
    if group == "deployment":
        return [f"+deployment={option}"]
    if group == "hardware":
        kind = compose([f"hardware={option}"]).config["hardware"]["kind"]
        if kind == "cpu":
            return ["+deployment=r1_ep320", f"hardware@host={option}"]
        return ["+deployment=r1_h100_ep72" if kind == "gpu" else "+deployment=r1_ep320", f"hardware={option}"]
    return ["+deployment=r1_ep320", f"{group}={option}"]


def _home(group: str, option: str) -> tuple[list[str], bool]:
    return HOME.get((group, option)) or (_fallback(group, option), group == "deployment")


# ------------------------------------------------------------------------------------------ groups and options


def test_groups_and_options_are_the_files_under_conf():
    dirs = sorted(p.name for p in conf_dir().iterdir() if p.is_dir())
    assert groups() == dirs
    assert {"hardware", "topology", "model", "deployment", "workload", "store"} <= set(dirs)
    for g in dirs:
        assert options(g) == sorted(p.stem for p in (conf_dir() / g).glob("*.yaml")), g
    assert {"r1_ep320", "r1_h100_ep72", "r1_h800_ep144"} <= set(options("deployment"))


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_option_composes_and_validates(path: Path, workdir):
    group, option = path.parent.name, path.stem
    overrides, must_compile = _home(group, option)
    spec, composed = load_spec(overrides, require_deployment=group == "deployment")
    assert isinstance(spec, Spec)
    raw = yaml.safe_load(path.read_text()) or {}
    if group == "deployment":
        assert composed.choices.get("deployment") == option
        assert spec.deployment.name == option == raw["deployment"]["name"]
        assert spec.deployment.description
    elif group == "hardware" and spec.hardware.name != option:
        # not the accelerator: it must be the host
        assert composed.choices["hardware@host"] == option
        assert spec.host is not None and spec.host.name == option == raw["name"]
    else:
        assert composed.choices[group] == option
        section = getattr(spec, group)
        if "name" in raw:
            assert section.name == option == raw["name"], "an option's name must be its file's stem"
        else:  # store, executor: the validated section holds what the file says
            dumped = section.model_dump(mode="json")
            assert {k: dumped[k] for k in raw} == raw
    if group == "topology":
        fabric = fabric_for(spec)
        assert len(fabric.dies()) >= 1
    if must_compile:
        plan = compile_plan(spec)
        assert plan.devices_used > 0
        assert all(m.used <= m.capacity for p in plan.pools for m in p.memory_by_kind.values())


@pytest.mark.parametrize("path", sorted((conf_dir() / "hardware").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_hardware_profile_validates_on_its_own(path: Path):
    prof = HardwareProfile.model_validate(yaml.safe_load(path.read_text()))
    assert prof.name == path.stem
    assert prof.dies >= 1 and prof.memory_bytes > 0
    assert prof.die.peak_tflops and all(v.value > 0 for v in prof.die.peak_tflops.values())
    assert prof.die.memory_bandwidth_GB_per_s.value > 0


def test_kunpeng_is_the_default_host_and_the_caching_pool_needs_it(workdir):
    spec, composed = load_spec(["+deployment=r1_ep320"])
    assert composed.choices["hardware@host"] == "kunpeng_920"
    assert spec.host is not None and spec.host.kind == "cpu"
    assert compile_plan(spec).caching is not None
    with pytest.raises(ConfigError, match=r"caching\.enabled is true but no host CPU"):
        load_spec(["+deployment=r1_ep320", "~hardware@host"])
    # GPU deployments drop the host on purpose
    spec, _ = load_spec(["+deployment=r1_h100_ep72"])
    assert spec.host is None and compile_plan(spec).caching is None


# ------------------------------------------------------------------------------------------ invalid by design


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["+deployment=r1_ep320", "precision=fp8"], ["precision=fp8", "ascend_910c", "int8"]),
        (["+deployment=r1_ep320", "hardware=kunpeng_920"], ["kunpeng_920", "fp32"]),
        (["+deployment=r1_ep320", "model=llama3_70b"], ["mtp.draft_tokens (1)", "llama3_70b"]),
        (["+deployment=r1_ep320", "decode.ep=100"], ["decode.ep (100)", "(160)", "= 320"]),
        (["+deployment=r1_ep320", "prefill.ep=64"], ["prefill.ep (64)", "= 32"]),
        (["+deployment=r1_ep320", "decode.batch_per_device=95"], ["decode.batch_per_device (95)", "2 dies"]),
        (["+deployment=r1_ep320", "decode.batch_per_device=abc"], ["'decode.batch_per_device'", "'abc'"]),
        (["+deployment=r1_ep320", "decode.ep=0"], ["'decode.ep' = 0", "greater than or equal to 1"]),
        (["+deployment=r1_ep320", "precision=fp2"], ["'precision' = 'fp2'"]),
        (["+deployment=r1_ep320", "precision=fp4"], ["precision=fp4 needs fp4", "ascend_910c", "precision=int8 or bf16"]),
        (["+deployment=r1_h200_disagg", "precision=fp4"], ["precision=fp4 needs fp4", "h200_sxm"]),
        (["+deployment=r1_ep320", "caching.block_tokens=100"], ["caching.block_tokens"]),
        (["+deployment=r1_ep320", "~decode.ep"], ["'decode.ep' is missing"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("+") else None,
)
def test_invalid_combinations_are_config_errors(overrides, needles, workdir):
    with pytest.raises(ConfigError) as info:
        load_spec(overrides)
    msg = str(info.value)
    for n in needles:
        assert n in msg, msg
    assert "\n" not in msg and "Traceback" not in msg


def test_missing_and_misspelled_deployment(workdir):
    with pytest.raises(ConfigError) as info:
        load_spec([])
    msg = str(info.value)
    assert info.value.key == "deployment"
    assert "no deployment selected" in msg
    assert all(o in msg for o in options("deployment"))
    assert "+deployment=" in msg
    with pytest.raises(ConfigError) as info:
        load_spec(["+deployment=r1_ep32"])
    msg = str(info.value)
    assert "Did you mean r1_ep320?" in msg
    assert all(o in msg for o in options("deployment"))
    with pytest.raises(ConfigError, match=r"Did you mean ascend_910c\?"):
        load_spec(["+deployment=r1_ep320", "hardware=ascend910c"])


def test_unknown_keys_are_named(workdir):
    with pytest.raises(ConfigError) as info:
        load_spec(["+deployment=r1_ep320", "decode.batchsize=8"])
    assert "'decode.batchsize'" in str(info.value) and info.value.key == "decode.batchsize"
    with pytest.raises(ConfigError) as info:  # added with '+': Hydra takes it, the schema refuses it
        load_spec(["+deployment=r1_ep320", "+decode.batchsize=8"])
    assert "unknown key 'decode.batchsize'" in str(info.value)
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_spec(["+deployment=r1_ep320", "+bogus=1"])


@pytest.mark.parametrize("bad", ["decode.ep", "decode.ep=${oc.env:HOME}", "decode.ep=[", 3])
def test_malformed_overrides_are_config_errors(bad, workdir):
    with pytest.raises(ConfigError):
        load_spec(["+deployment=r1_ep320", bad])


# ------------------------------------------------------------------------------------------ the spec


def test_spec_is_frozen_and_forbids_extra_keys(workdir):
    spec, composed = load_spec(["+deployment=r1_ep320"])
    with pytest.raises(ValidationError):
        spec.decode.ep = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        Spec.model_validate({**composed.config, "bogus": 1})
    assert Spec.model_validate(composed.config) == spec


def test_every_field_of_the_spec_has_a_docstring():
    from cmtwin.config.fielddocs import field_docs, models_under

    models = models_under(Spec)
    missing = [f"{m.__name__}.{name}" for m in models for name in m.model_fields
               if not field_docs(m).get(name, "").strip()]
    assert len(models) > 10
    assert missing == []


def test_deployments_are_global_overlays_outside_the_primary_defaults():
    primary = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    assert not any("deployment" in str(d) for d in primary["defaults"])
    for path in sorted((conf_dir() / "deployment").glob("*.yaml")):
        assert path.read_text().lstrip().splitlines()[0].startswith("# @package _global_"), path.name


def test_spec_hash_is_canonical(workdir):
    base, _ = load_spec(["+deployment=r1_ep320"])
    same, _ = load_spec(["+deployment=r1_ep320", "decode.batch_per_device=96"])  # the deployment's own value
    a, _ = load_spec(["+deployment=r1_ep320", "decode.batch_per_device=64", "mtp.draft_tokens=0"])
    b, _ = load_spec(["mtp.draft_tokens=0", "decode.batch_per_device=64", "+deployment=r1_ep320"])
    elsewhere, _ = load_spec(["+deployment=r1_ep320", "store.url=sqlite:///elsewhere.db"])
    # how many processes a search runs on is no part of the plans it finds (the frontier's simulated plans had
    # one hash with search.workers=1 and another with 2)
    pool, _ = load_spec(["+deployment=r1_ep320", "search.workers=3"])
    assert spec_hash(base) == spec_hash(same) == spec_hash(elsewhere) == spec_hash(pool)
    assert spec_hash(a) == spec_hash(b) != spec_hash(base)
    assert len(spec_hash(base)) == 16


def test_db_url_from_the_environment_unless_overridden(workdir, monkeypatch):
    monkeypatch.setenv("CMTWIN_DB_URL", "sqlite:///from_env.db")
    spec, _ = load_spec(["+deployment=r1_ep320"])
    assert spec.store.url == "sqlite:///from_env.db"
    spec, _ = load_spec(["+deployment=r1_ep320", "store.url=sqlite:///explicit.db"])
    assert spec.store.url == "sqlite:///explicit.db"


def test_user_conf_in_the_working_directory_adds_options(workdir):
    mine = workdir / "cmtwin_conf" / "deployment" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    text = (conf_dir() / "deployment" / "r1_ep320.yaml").read_text()
    mine.write_text(text.replace("name: r1_ep320", "name: mine")
                    .replace("batch_per_device: 96", "batch_per_device: 48"))
    assert "mine" in options("deployment")
    spec, composed = load_spec(["+deployment=mine"])
    assert spec.deployment.name == "mine" and spec.decode.batch_per_device == 48
    assert composed.choices["deployment"] == "mine"
    with pytest.raises(CmtwinError, match="Did you mean mine"):
        load_spec(["+deployment=mien"])
