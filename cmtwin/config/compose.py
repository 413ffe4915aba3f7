"""Compose conf/ with Hydra, then validate into a frozen Spec. The two steps stay apart.

Every failure becomes a ConfigError: one paragraph naming the key, the value and the fix (exit 2).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from cmtwin.errors import ConfigError
from cmtwin.paths import conf_dir, data_root


@dataclass(frozen=True)
class Composed:
    """A composed config: the plain dict, which option each group took, and the overrides given."""

    config: dict[str, Any]
    choices: dict[str, str | None]
    overrides: tuple[str, ...]


USER_CONF = "cmtwin_conf"  # extra options in the working directory (e.g. profiles from `cmtwin calibrate`)


def options(group: str) -> list[str]:
    """The options of a config group: the YAML files under conf/<group>/ and ./cmtwin_conf/<group>/."""
    from pathlib import Path

    found = set()
    for folder in (conf_dir() / group, Path(USER_CONF) / group):
        if folder.is_dir():
            found |= {p.stem for p in folder.glob("*.yaml")}
    return sorted(found)


def groups() -> list[str]:
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir())


def _did_you_mean(value: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(value, candidates, n=1)
    return f" Did you mean {close[0]}?" if close else ""


def _missing_option_error(message: str) -> ConfigError | None:
    """Turn Hydra's 'Could not find <group>/<option>' into a list of the valid options."""
    import re

    m = re.search(r"Could not (?:find|load) '([\w/@.]+)/([^']+)'", message)
    if not m:
        return None
    group, value = m.group(1).lstrip("/").split("@")[0], m.group(2)
    valid = options(group)
    if not valid:
        return ConfigError(
            f"unknown config group '{group}' (in '{group}/{value}'). Groups: {', '.join(groups())}.",
            key=group,
        )
    return ConfigError(
        f"{group}={value}: no such {group}.{_did_you_mean(value, valid)} Available {group} options: "
        f"{', '.join(valid)}.",
        key=group,
        fix=f"pick one of them, e.g. +{group}={valid[0]}" if group == "deployment" else f"pick one, e.g. {group}={valid[0]}",
    )


def _hydra_error(exc: Exception, overrides: tuple[str, ...]) -> ConfigError:
    text = " ".join(str(exc).split())
    missing = _missing_option_error(str(exc))
    if missing is not None:
        return missing
    import re

    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        top = key.split(".")[0]
        hint = ""
        if top in groups() and "." not in key:
            hint = f" '{top}' is a config group: select an option with {top}=NAME ({', '.join(options(top))})."
        elif "." in key:
            hint = (f" The selected options do not set '{key}'; add it with +{key}=VALUE if the schema has it "
                    "(e.g. a topology parameter).")
        return ConfigError(
            f"unknown config key '{key}' in override '{next((o for o in overrides if o.lstrip('+~').startswith(key)), key)}'."
            f"{hint} See the valid keys with `cmtwin config show` or `cmtwin config schema`.",
            key=key,
            fix="check the spelling against `cmtwin config show +deployment=...`",
        )
    if "Config group override must be a string or a list" in text:
        bad = next((o for o in overrides if o.endswith("=null")), "the override")
        group = bad.split("=")[0].lstrip("+")
        return ConfigError(f"'{bad}': a config group cannot be set to null; to drop an optional group use ~{group}.",
                           key=group, fix=f"use ~{group}")
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        return ConfigError(f"'+{m.group(1)}' adds a key that already exists; set it with {m.group(1)}=VALUE.",
                           key=m.group(1))
    if "mismatched input" in text or "no viable alternative" in text or "extraneous input" in text or "token recognition" in text:
        return ConfigError(f"cannot parse the overrides {list(overrides)}: {text}. Overrides look like "
                           "key=value, +group=option or ~key.", key="overrides")
    return ConfigError(f"config composition failed: {text}", key="overrides")


def compose(overrides: list[str] | tuple[str, ...] = ()) -> Composed:
    """Compose conf/config.yaml with Hydra overrides into a plain dict (no validation)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    overrides = tuple(overrides)
    for o in overrides:
        if not isinstance(o, str) or "=" not in o and not o.startswith("~"):
            raise ConfigError(f"override '{o}' is not of the form key=value, +group=option or ~key.", key=str(o))
        if "${" in o and ("oc.env" in o or "eval" in o):
            raise ConfigError(f"override '{o}': interpolations that read the environment or evaluate code are "
                              "not allowed in overrides.", key=o.split("=")[0])
    GlobalHydra.instance().clear()
    import warnings

    try:
        warnings.filterwarnings("ignore", message=".*is not available", category=UserWarning)
        # Search path: ./cmtwin_conf (the user's options) and the data root, whose policies/<family>/ folders
        # make `+policies/<family>=<preset>` work from the checkout and from an installed wheel alike.
        search = f"hydra.searchpath=[file://{USER_CONF},file://{data_root()}]"
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=[search, *overrides], return_hydra_config=True)
    except Exception as exc:  # Hydra raises several unrelated types; all are bad input here
        raise _hydra_error(exc, overrides) from None
    finally:
        GlobalHydra.instance().clear()
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:
        raise ConfigError(f"cannot resolve an interpolation in the config: {' '.join(str(exc).split())}",
                          key="interpolation") from None
    from cmtwin.config.gate import check_targets

    check_targets(plain)
    return Composed(config=plain, choices=choices, overrides=overrides)


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item) in ("mla", "gqa", "Sourced", "Curve") or str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def validation_error(exc: Any, what: str = "config") -> ConfigError:
    """A pydantic ValidationError as one paragraph: key, value, what is wrong."""
    parts = []
    first_key = None
    for err in exc.errors()[:6]:
        key = _loc(err.get("loc", ()))
        first_key = first_key or key or None
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if not key:
            parts.append(msg)
        elif err.get("type") == "extra_forbidden":
            parts.append(f"unknown key '{key}' (not part of the schema; see `cmtwin config schema`)")
        elif err.get("type") == "missing":
            parts.append(f"'{key}' is missing")
        else:
            val = err.get("input")
            if isinstance(val, (dict, list)):
                parts.append(f"'{key}': {msg}")
            else:
                parts.append(f"'{key}' = {repr(val)[:60]}: {msg}")
    more = len(exc.errors()) - 6
    tail = f" (and {more} more)" if more > 0 else ""
    return ConfigError(f"invalid {what}: " + "; ".join(parts) + tail + ".", key=first_key)


def load_spec(overrides: list[str] | tuple[str, ...] = (), *, require_deployment: bool = True):
    """Compose and validate. Returns (Spec, Composed)."""
    from pydantic import ValidationError

    from cmtwin.config.schema import Spec

    composed = compose(overrides)
    if require_deployment and not (composed.config.get("deployment") or {}).get("name"):
        valid = options("deployment")
        raise ConfigError(
            f"no deployment selected. Available deployments: {', '.join(valid)}.",
            key="deployment",
            fix=f"add one, e.g. `cmtwin plan +deployment={valid[0] if valid else 'NAME'}`",
        )
    config = dict(composed.config)
    env_url = os.environ.get("CMTWIN_DB_URL")
    if env_url and not any(o.lstrip("+").startswith("store.url=") for o in composed.overrides):
        config["store"] = {**config.get("store", {}), "url": env_url}
    try:
        spec = Spec.model_validate(config)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return spec, composed
