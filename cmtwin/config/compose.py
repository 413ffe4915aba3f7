"""Compose conf/ with Hydra, then validate into a frozen Spec. The two steps stay apart.

Every failure becomes a ConfigError: one paragraph naming the key, the value and the fix (exit 2).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
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
    """The options of a config group: the YAML files under conf/<group>/ and ./cmtwin_conf/<group>/ (for a
    policy family `policies/<family>`: the presets under policies/<family>/ and ./cmtwin_conf/policies/<family>/)."""
    from cmtwin.paths import policies_dir

    homes = [conf_dir() / group, Path(USER_CONF) / group]
    if group.startswith("policies/"):
        homes.append(policies_dir() / group.removeprefix("policies/"))
    found = set()
    for folder in homes:
        if folder.is_dir():
            found |= {p.stem for p in folder.glob("*.yaml")}
    return sorted(found)


def load_group_option(group: str, name: str) -> dict:
    """One option of a config group as a plain dict (./cmtwin_conf/<group>/ first, as Hydra's search path has it)."""
    import yaml

    from cmtwin.config.yamlsafe import read_text, safe_loader

    for folder in (Path(USER_CONF) / group, conf_dir() / group):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return yaml.load(read_text(path), Loader=safe_loader()) or {}  # noqa: S506 - a safe loader
    raise ConfigError(f"{group} option {name!r} does not exist (options: {', '.join(options(group))}).", key=group,
                      fix=f"pick one of `cmtwin config options {group}`")


def groups() -> list[str]:
    """The config groups: the folders under conf/."""
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir())


def policy_families() -> list[str]:
    """The policy families as groups on Hydra's search path: `policies/<family>` for each folder of presets
    under policies/ (and ./cmtwin_conf/policies/). None is selected by default: add one with
    +policies/<family>=<preset>."""
    from pathlib import Path

    from cmtwin.paths import policies_dir

    found = set()
    for root in (policies_dir(), Path(USER_CONF) / "policies"):
        if root.is_dir():
            found |= {d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    return [f"policies/{f}" for f in sorted(found)]


def default_groups() -> list[str]:
    """The groups the primary config (conf/config.yaml) selects in its defaults list; any other group (the
    deployment, the policy families) is not there and is added with a plus: +group=option."""
    import yaml

    from cmtwin.config.yamlsafe import safe_loader

    picked = []
    for item in (yaml.load((conf_dir() / "config.yaml").read_text(), Loader=safe_loader()) or {}).get("defaults", []):  # noqa: S506
        if isinstance(item, dict):
            picked += [str(k).split("@")[0].lstrip("/") for k in item]
    return sorted(set(picked))


def selector(group: str, option: str) -> str:
    """How to select an option on the command line: group=option, or +group=option where the primary
    config does not select the group by default."""
    return f"{'' if group in default_groups() else '+'}{group}={option}"


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
            f"unknown config group '{group}' (in '{group}/{value}'). Groups: {', '.join(groups())}; policy "
            f"families (added with +policies/<family>=<preset>): {', '.join(policy_families())}.",
            key=group,
        )
    close = difflib.get_close_matches(value, valid, n=1)
    return ConfigError(
        f"{group}={value}: no such {group}.{_did_you_mean(value, valid)} Available {group} options: "
        f"{', '.join(valid)}.",
        key=group,
        fix=f"pick one of them, e.g. {selector(group, close[0] if close else valid[0])}",
    )


# ------------------------------------------------------------------------------ unknown keys: close matches


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested dict, sections included."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.append(key)
            out += _flat_keys(v, key)
    return out


def _known_keys(overrides: tuple[str, ...]) -> list[str]:
    """The keys of the config as composed with the overrides' group selections (best effort: the primary
    config alone when those do not compose either)."""
    def is_selection(o: str) -> bool:
        key = o.lstrip("+~").split("=", 1)[0]
        return "." not in key and (o[:1] in ("+", "~") or key in groups())

    selections = tuple(o for o in overrides if is_selection(o))
    for attempt in (selections, ()):
        try:
            cfg = _hydra_compose(attempt)
        except Exception:  # noqa: BLE001 - a hint is best effort; the error being reported is the user's
            continue
        from omegaconf import OmegaConf

        return [k for k in _flat_keys(OmegaConf.to_container(cfg, resolve=False))
                if k != "hydra" and not k.startswith("hydra.")]
    return []


_OPEN = object()  # a schema node that takes any key (a dict field such as topology.params)


def _schema_node(path: str) -> Any:
    """Where a dotted key lands in the Spec: a pydantic model class, _OPEN (anything is accepted below it),
    a leaf type, or None when the schema has no such key."""
    import types
    import typing

    from pydantic import BaseModel

    from cmtwin.config.schema import Spec

    def resolve(ann: Any) -> Any:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
        origin = typing.get_origin(ann)
        if ann is Any or ann is dict or origin is dict:
            return _OPEN
        if origin in (typing.Union, types.UnionType):
            found = [resolve(a) for a in typing.get_args(ann) if a is not type(None)]
            return next((f for f in found if f is _OPEN or isinstance(f, type) and issubclass(f, BaseModel)),
                        found[0] if found else None)
        return ann

    node: Any = Spec
    for part in path.split("."):
        if node is _OPEN:
            return _OPEN
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
        field = node.model_fields.get(part)
        if field is None:
            return None
        node = resolve(field.annotation)
    return node


def _schema_keys(parent: str) -> list[str]:
    """The keys the schema allows directly under a section ('' = the top level)."""
    from pydantic import BaseModel

    from cmtwin.config.schema import Spec

    node = _schema_node(parent) if parent else Spec
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f"{parent}.{k}" if parent else k for k in node.model_fields]
    return []


def close_keys(key: str, candidates: list[str], n: int = 3) -> list[str]:
    """Close matches for a misspelled dotted key among its siblings: difflib on the last part, with a bonus
    for whole words shared (so batch_size finds batch_per_device before microbatches). A misspelled section
    is matched first (prefil.ep -> prefill.ep)."""
    keys = list(dict.fromkeys(candidates))
    parent, _, leaf = key.rpartition(".")
    if parent and parent not in keys:
        sections = {k.rpartition(".")[0] for k in keys} - {""}
        fixed = difflib.get_close_matches(parent, sorted(sections), n=1, cutoff=0.6)
        if not fixed:
            return []
        parent = fixed[0]
    words = [w for w in leaf.split("_") if w]
    scored = []
    for c in keys:
        if c.rpartition(".")[0] != parent or c == key:
            continue
        other = c.rpartition(".")[2]
        shared = len(set(words) & set(other.split("_"))) / max(1, len(words))
        scored.append((difflib.SequenceMatcher(None, leaf, other).ratio() + 0.2 * shared, c))
    scored.sort(key=lambda x: (-x[0], x[1]))
    if not scored or scored[0][0] < 0.6:
        return []
    return [c for r, c in scored if r >= max(0.6, scored[0][0] - 0.15)][:n]


def _group_needs_plus_error(group: str, override: str) -> ConfigError:
    """`deployment=r1_ep320`: the group is not in the primary defaults, so Hydra can only add it (+)."""
    value = override.split("=", 1)[1] if "=" in override else ""
    valid = options(group)
    pick = value if value in valid else (difflib.get_close_matches(value, valid, n=1) or valid[:1] or ["NAME"])[0]
    if group.startswith("policies/"):
        why = (f"'{group}' is a policy family, and the primary config (conf/config.yaml) selects no policy by "
               "default")
    else:
        why = (f"'{group}' is a config group that the primary config (conf/config.yaml) leaves out of its "
               "defaults on purpose, so that you pick one")
    other = "" if value in valid else (f" There is no {group} '{value}' either; available: {', '.join(valid)}."
                                        if valid else "")
    return ConfigError(
        f"'{override}': {why}; Hydra can only add such a group, not override it, so it needs a plus: "
        f"write +{group}={pick}.{other}",
        key=group, fix=f"+{group}={pick}")


def _unknown_key_error(key: str, override: str, overrides: tuple[str, ...]) -> ConfigError:
    """An override of a key the composed config does not have: close matches first, then how to add a key
    the schema has but the selected options do not set."""
    value = override.split("=", 1)[1] if "=" in override else ""
    if len(value) > 200:
        value = value[:200] + "..."
    known = _known_keys(overrides)
    parent = key.rpartition(".")[0]
    close = close_keys(key, known) if known else []
    node = _schema_node(key)
    text = f"unknown config key '{key}' in override '{override}'."
    fix = None
    if close:
        also = f" (or {', '.join(close[1:])})" if len(close) > 1 else ""
        text += f" Did you mean {close[0]}{also}? Write {close[0]}={value}."
        fix = f"{close[0]}={value}"
    if node is not None:
        text += (f" '{key}' is a key the schema accepts but the selected options do not set; to add it, write it "
                 f"with a plus: +{key}={value}.")
        fix = fix or f"+{key}={value}"
    elif not close:
        under = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent] if parent in known else []
        if under:
            text += f" Keys under '{parent}': {', '.join(under)}."
        elif not parent:
            text += f" Top-level keys: {', '.join(k for k in known if '.' not in k)}."
    text += " See every key with `cmtwin config show +deployment=...` or `cmtwin config schema`."
    return ConfigError(text, key=key, fix=fix or "check the spelling against `cmtwin config show +deployment=...`")


def _hydra_error(exc: Exception, overrides: tuple[str, ...]) -> ConfigError:
    text = " ".join(str(exc).split())
    if len(text) > 1000:  # Hydra quotes what it could not read: a message stays one readable paragraph
        text = text[:1000] + f"... ({len(text):,} characters)"
    missing = _missing_option_error(str(exc))
    if missing is not None:
        return missing
    import re

    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        override = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key),
                        next((o for o in overrides if o.lstrip("+~").startswith(key)), key))
        if "." not in key and (key in groups() or key in policy_families()):
            return _group_needs_plus_error(key, override)
        return _unknown_key_error(key, override, overrides)
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
        shown = str(list(overrides))
        shown = shown if len(shown) <= 400 else shown[:400] + "...]"
        return ConfigError(f"cannot parse the overrides {shown}: {text}. Overrides look like "
                           "key=value, +group=option or ~key.", key="overrides")
    return ConfigError(f"config composition failed: {text}", key="overrides")


def _hydra_compose(overrides: tuple[str, ...]):
    """Hydra's composition of conf/config.yaml with the overrides (the hydra node kept); raises Hydra's own
    errors."""
    import warnings

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        warnings.filterwarnings("ignore", message=".*is not available", category=UserWarning)
        # Search path: ./cmtwin_conf (the user's options) and the data root, whose policies/<family>/ folders
        # make `+policies/<family>=<preset>` work from the checkout and from an installed wheel alike.
        search = f"hydra.searchpath=[file://{USER_CONF},file://{data_root()}]"
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return hydra_compose(config_name="config", overrides=[search, *overrides], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def check_user_files(folder: str | os.PathLike = USER_CONF) -> None:
    """Check every YAML file under ./cmtwin_conf before Hydra reads any of them (Hydra's loader expands aliases,
    recurses per nesting level and converts numbers of any length): size, UTF-8, nesting depth, alias count and
    expansion, number length, and no environment interpolation (a config file's values are stored in the run
    record). Raises a ConfigError naming the file, the key, the value (truncated) and the fix."""
    from cmtwin.config.yamlsafe import YamlLimitError, check_yaml, read_text

    root = Path(folder)
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.yaml")):
        if not path.is_file():
            continue
        try:
            check_yaml(read_text(path), interpolation=False)
        except YamlLimitError as exc:
            where = f" at '{exc.key}'" if not exc.key.startswith("<") and f"'{exc.key}'" not in exc.problem else ""
            raise ConfigError(f"config file {path}{where}: {exc.problem}.", key=f"{path}:{exc.key}",
                              fix=exc.fix) from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}.", key=str(path),
                              fix="fix its permissions or move it out of ./cmtwin_conf") from None


MAX_OVERRIDE_CHARS = 10_000
"""Longest override accepted, in characters (a list of every search value is a few hundred)."""


def _check_override_value(o: str) -> None:
    """Overrides that would make Hydra's parser work without bound or fail obscurely, refused with the key, the
    value (truncated) and the fix: longer than MAX_OVERRIDE_CHARS, nesting [ and { deeper than MAX_YAML_DEPTH
    (the grammar recurses per level: 50,000 levels took 20 s and 270 MB to fail), or a number too long for any
    setting (Python cannot even convert an integer of more than 4,300 digits)."""
    from cmtwin.config.yamlsafe import MAX_NUMBER_CHARS, MAX_YAML_DEPTH, _NUMBER_RE, short

    key, _, value = o.partition("=")
    if len(o) > MAX_OVERRIDE_CHARS:
        shown = short(key.lstrip("+~"), 40)
        raise ConfigError(f"override '{shown}' = {short(value, 20)}: {len(o):,} characters, longer than the "
                          f"{MAX_OVERRIDE_CHARS:,} an override may have.", key=shown,
                          fix="shorten it; put long settings in a config file under ./cmtwin_conf/")
    depth = deepest = 0
    for c in value:
        depth += (c in "[{") - (c in "]}")
        deepest = max(deepest, depth)
    if deepest > MAX_YAML_DEPTH:
        key = key.lstrip("+~")
        raise ConfigError(f"override '{key}' = {short(value, 20)}: lists and mappings nested {deepest:,} deep, more "
                          f"than the {MAX_YAML_DEPTH} any setting can use.", key=key,
                          fix=f"give {key} a flat value (e.g. {key}=[1,2])")
    value = value.strip()
    if len(value) > MAX_NUMBER_CHARS and _NUMBER_RE.match(value) and any(c.isdigit() for c in value):
        key = key.lstrip("+~")
        raise ConfigError(f"override '{key}' = {short(value, 20)}: a number of {len(value):,} characters, longer "
                          f"than the {MAX_NUMBER_CHARS} any setting can use.", key=key,
                          fix=f"write {key} in at most 17 significant digits (e.g. {key}=1.5e9)")


def _env_interpolations(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of the (unresolved) config whose string values read the environment or evaluate code."""
    from cmtwin.config.yamlsafe import is_env_interpolation

    found: list[str] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, str) and is_env_interpolation(v):
            found.append(key)
        elif isinstance(v, (dict, list)):
            found += _env_interpolations(v, key)
    return found


def compose(overrides: list[str] | tuple[str, ...] = ()) -> Composed:
    """Compose conf/config.yaml with Hydra overrides into a plain dict (no validation)."""
    overrides = tuple(overrides)
    for o in overrides:
        if isinstance(o, str):
            _check_override_value(o)
        if not isinstance(o, str) or "=" not in o and not o.startswith("~"):
            raise ConfigError(f"override '{o}' is not of the form key=value, +group=option or ~key.", key=str(o))
        if "${" in o and ("oc.env" in o or "eval" in o):
            raise ConfigError(f"override '{o}': interpolations that read the environment or evaluate code are "
                              "not allowed in overrides.", key=o.split("=")[0])
    check_user_files()  # before anything reads them (the cache key hashes them)
    cache = _compose_cache_path(overrides)
    hit = _read_composed(cache, overrides) if cache is not None else None
    if hit is not None:
        return hit  # neither Hydra nor OmegaConf is imported
    from omegaconf import OmegaConf, open_dict

    try:
        cfg = _hydra_compose(overrides)
    except Exception as exc:  # Hydra raises several unrelated types; all are bad input here
        raise _hydra_error(exc, overrides) from None
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    env = _env_interpolations(OmegaConf.to_container(cfg, resolve=False))
    if env:
        raise ConfigError(
            f"'{env[0]}' in the config reads the environment or evaluates code (an ${{oc.env:...}} interpolation); "
            "config values are stored in the run record, so an environment variable there (a token, a password) "
            "would be stored with every run.", key=env[0],
            fix="write the value itself in the config file, or pass it as an override (key=value)")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:
        raise ConfigError(f"cannot resolve an interpolation in the config: {' '.join(str(exc).split())}",
                          key="interpolation") from None
    from cmtwin.config.gate import check_targets

    check_targets(plain)
    _name_overridden_topology(plain, overrides)
    composed = Composed(config=plain, choices=choices, overrides=overrides)
    if cache is not None:
        _write_composed(cache, composed)
    return composed


# --- the composed config, cached -------------------------------------------------------------------------------
# Hydra's composition (and importing Hydra) is a third of `cmtwin plan`. Its result depends only on the overrides,
# the YAML files it can read (the package's conf/ and policies/, ./cmtwin_conf) and the code that composes, so it
# is cached on disk under that key (cmtwin/cachefile.py): an edited file, a new option or another cmtwin composes
# afresh. Only successful compositions are stored; every error still comes from Hydra and the checks above.

def _compose_cache_path(overrides: tuple[str, ...]) -> Path | None:
    from cmtwin.cachefile import entry_path
    from cmtwin.paths import policies_dir

    here = Path(__file__).parent
    files = [here / "compose.py", here / "gate.py", here / "yamlsafe.py"]
    for folder in (conf_dir(), policies_dir(), Path(USER_CONF)):
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    # a file that vanished or cannot be read: None, compose (and let Hydra say what is wrong)
    return entry_path("compose", repr(overrides), packages=("hydra", "omegaconf", "yaml"), files=files)


def _read_composed(path: Path, overrides: tuple[str, ...]) -> Composed | None:
    from cmtwin.cachefile import read_json

    data = read_json(path, "config")
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict) and isinstance(data.get("choices"), dict)):
        return None
    return Composed(config=data["config"], choices=data["choices"], overrides=overrides)


def _write_composed(path: Path, composed: Composed) -> None:
    import json

    from cmtwin.cachefile import write_text

    try:
        text = json.dumps({"config": composed.config, "choices": composed.choices}, allow_nan=False)
    except (TypeError, ValueError):
        return
    if json.loads(text) != {"config": composed.config, "choices": composed.choices}:
        return  # not JSON's own types (a non-string key): it would not come back the same
    write_text(path, text)


def _name_overridden_topology(plain: dict[str, Any], overrides: tuple[str, ...]) -> None:
    """`topology.file=./mine.yaml` without `topology.name=...`: the topology is named after the file given, not
    after the option it replaced (messages said "cloudmatrix384 has 8 devices" of a file that was not it)."""
    keys = {o.lstrip("+").split("=", 1)[0] for o in overrides if "=" in o}
    topology = plain.get("topology")
    if "topology.file" in keys and "topology.name" not in keys and isinstance(topology, dict) and topology.get("file"):
        topology["name"] = str(topology["file"])


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
    fix = None
    for err in exc.errors()[:6]:
        key = _loc(err.get("loc", ()))
        first_key = first_key or key or None
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if not key:
            parts.append(msg)
        elif err.get("type") == "extra_forbidden":
            close = close_keys(key, _schema_keys(key.rpartition(".")[0]))
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            parts.append(f"unknown key '{key}' (not part of the schema; {hint}see `cmtwin config schema`)")
        elif err.get("type") == "missing":
            parts.append(f"'{key}' is missing")
        else:
            val = err.get("input")
            if isinstance(val, (dict, list)):
                parts.append(f"'{key}': {msg}")
            else:
                parts.append(f"'{key}' = {short_repr(val)}: {msg}")
            if err.get("type") == "finite_number" and fix is None:
                fix = f"give '{key}' a finite number (inf and nan are not values of any setting)"
            bound = _BOUNDS.get(err.get("type", ""))
            if bound and fix is None:
                op, name = bound
                limit = (err.get("ctx") or {}).get(name)
                if limit is not None:
                    fix = f"give '{key}' a value {op} {limit:g}" if isinstance(limit, float) else \
                        f"give '{key}' a value {op} {limit}"
    more = len(exc.errors()) - 6
    tail = f" (and {more} more)" if more > 0 else ""
    return ConfigError(f"invalid {what}: " + "; ".join(parts) + tail + ".", key=first_key, fix=fix)


_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"),
           "less_than_equal": ("<=", "le")}


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() of a value for a message, at most `limit` characters, without ever building the whole repr of a
    huge value (an integer of 100,000 digits cannot even be converted; a long string is cut first)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 200:
            return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
        text = repr(value)
    elif isinstance(value, str):
        text = repr(value[: limit + 2])
    elif isinstance(value, (float, complex)):
        text = repr(value)
    elif isinstance(value, (dict, list, tuple, set)):
        text = f"<a {type(value).__name__} of {len(value):,} item(s)>"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
