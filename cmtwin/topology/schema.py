"""The topology file format (topologies/*.yaml) as frozen pydantic models, and its loader.

A file is purely tiered: per-node elements (accelerator devices of one or more dies, CPUs, node-level
switches), switch groups above the nodes (`fabric:`), and `connections:` rules saying which elements link
to which on which plane. Explicit `links:` between named elements are allowed for what-ifs. Units are in
the key names (`bandwidth_gbps`: gigabits per second, one way, per link; `latency_us`: microseconds per
link), and every number carries a `source:` (one string for its block) or a `sources:` map per key.

Plane names are the file's own; `roles:` declares which plane is the scale-up, inter-node and scale-out plane
(and, optionally, the CPUs' front-end network), and nothing downstream interprets a plane's name. Die ids
follow one scheme, n<node>.<id_prefix><device>[.d<die>] (cmtwin/topology/graph.py).

`params:` names overridable knobs: each maps to the key path(s) in the file that hold its value (the
default). `load_topology(name, {"nodes": 22})` merges the overrides onto the parsed YAML before validation;
an override key is either a param name or a key path (`node.devices.count`, `connections[0].latency_us`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError

from cmtwin.cachefile import entry_path, read_json
from cmtwin.errors import TopologyError
from cmtwin.paths import topologies_dir

MAX_FILE_BYTES = 1 << 20
"""Largest topology file accepted (1 MiB)."""

MAX_DIRECTED_LINKS = 400_000
"""Largest graph built (directed edges); CloudMatrix384 has about 27,000."""

MAX_ELEMENTS = 100_000
"""Largest graph built (dies, CPUs and switches); CloudMatrix384 has 1,410."""

Count = Annotated[int, Strict()]
Gbps = Annotated[float, Strict(), Field(gt=0, le=1e7)]
Micros = Annotated[float, Strict(), Field(ge=0, le=1e6)]
Ident = Annotated[str, Strict(), Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)]
Text = Annotated[str, Strict(), Field(min_length=1, max_length=2000)]

D2D_PLANE = "d2d"
"""The plane of the on-package links between the dies of one device (built from `node.devices.die_to_die`);
no connection rule may use the name."""

Plane = Ident
"""A link plane: any name the file chooses ("ub", "nvlink", "fabric_a"); what the twin does with a plane comes
from `roles:`, never from its name."""

ConnectionPlane = Ident
"""Planes a connection rule may wire: any plane name except "d2d" (those links come from
`node.devices.die_to_die`; _check_references refuses it)."""

IdPrefix = Annotated[str, Strict(), Field(pattern=r"^[a-z](?:[a-z0-9_]*[a-z_])?$", max_length=32)]
"""A device id stem: lowercase letters, digits and _, starting with a letter and not ending in a digit, so that
the device number after it reads back unambiguously (n03.gpu5, never n03.a1005)."""

ROLES = ("scale_up", "inter_node", "scale_out")
"""The plane roles every topology file declares under `roles:` (PlaneRoles)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_PATH_PART_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, populate_by_name=False
    )


class _Sourced(_Model):
    source: Text | None = None
    """Where every number of this block comes from: the paper (arXiv 2506.12708 v2) and its section or
    table, another paper or a README, a datasheet, or "assumption: ..." with the reasoning."""
    sources: dict[Annotated[str, Strict()], Text] | None = None
    """Per-key sources ({bandwidth_gbps: "...", latency_us: "..."}); a key here wins over `source`."""


class DieToDieSpec(_Sourced):
    """The on-package link between every two dies of one device (plane "d2d")."""

    bandwidth_gbps: Gbps
    """One-way bandwidth of the link between two dies of a device, in gigabits per second."""
    latency_us: Micros
    """One-way latency of that link, in microseconds."""


class DeviceSpec(_Sourced):
    """The accelerator packages of a node; a package holds `dies_per_device` dies (the rank unit)."""

    name: Text
    """Product name, e.g. "Ascend 910C" or "H100 SXM"."""
    id_prefix: IdPrefix
    """Stem of the device's node ids: "npu" gives n03.npu5.d1, "gpu" gives n03.gpu5 (the die-id scheme:
    n<node>.<id_prefix><device>[.d<die>], the node zero-padded to at least two digits). It must not end in a
    digit, so an id reads back as (node, device, die)."""
    count: Count = Field(ge=1, le=256)
    """Devices (packages) per node."""
    dies_per_device: Count = Field(default=1, ge=1, le=8)
    """Dies per package; each die is one rank. Ascend 910C: 2; a GPU: 1."""
    die_to_die: DieToDieSpec | None = None
    """The link between the dies of one package; required when dies_per_device > 1."""


class CpuSpec(_Sourced):
    """The host CPUs of a node (Kunpeng on CloudMatrix384); they are endpoints like dies."""

    name: Text
    """Product name, e.g. "Kunpeng 920"."""
    count: Count = Field(ge=0, le=64)
    """CPUs per node."""


class NodeSwitchGroup(_Sourced):
    """Identical switch chips inside every node (CloudMatrix384's L1 UB switches, a GPU node's NVSwitch)."""

    name: Ident
    """Group name, used by connections and as the id stem: "l1s" gives n03.l1s4."""
    tier: Ident
    """Tier label stored on the graph ("l1", "nvswitch", "host", ...); switches of one tier never link."""
    count: Count = Field(ge=1, le=256)
    """Switches of this group per node."""
    ports: Count | None = Field(default=None, ge=1, le=4096)
    """Ports per switch, checked against its links; leave out where not published."""
    port_bandwidth_gbps: Gbps | None = None
    """Largest link bandwidth a port carries, one way, in gigabits per second."""


class FabricSwitchGroup(_Sourced):
    """Switches above the nodes, shared by all of them (CloudMatrix384's L2 tier, IB leaves and spines)."""

    name: Ident
    """Group name and id stem: "l2" with groups gives l2.p3.s15; "leaf" gives leaf3; a single one is "rdma"."""
    tier: Ident
    """Tier label stored on the graph ("l2", "leaf", "spine", "roce", ...)."""
    groups: Count = Field(default=1, ge=1, le=64)
    """Sub-planes: CloudMatrix384's L2 tier has 7, one per L1 switch index."""
    count: Count = Field(ge=1, le=1024)
    """Switches per group (per sub-plane)."""
    ports: Count | None = Field(default=None, ge=1, le=4096)
    """Ports per switch, checked against its links; leave out where not published."""
    port_bandwidth_gbps: Gbps | None = None
    """Largest link bandwidth a port carries, one way, in gigabits per second."""


class NodeSpec(_Model):
    """What every node holds; all nodes are alike."""

    devices: DeviceSpec
    """The accelerator packages."""
    cpus: CpuSpec | None = None
    """The host CPUs, when they are endpoints of a plane."""
    switches: tuple[NodeSwitchGroup, ...] = ()
    """The node-level switch groups."""


class ConnectionSpec(_Sourced):
    """A wiring rule: every selected `from` element links (both ways) to its `to` switches on `plane`."""

    plane: ConnectionPlane
    """The plane the links belong to."""
    from_: Ident = Field(alias="from")
    """"die", "cpu" or a node switch group name."""
    to: Ident
    """A node switch group (same node) or a fabric switch group."""
    pattern: Literal["all", "same_index", "same_group"] = "all"
    """all: to every switch of `to`; same_index: element i to switch i (rails: GPU i to leaf i);
    same_group: element i to every switch of sub-plane i (CloudMatrix384: L1 switch i to L2 sub-plane i).
    For dies the index is the device index within the node."""
    from_indices: tuple[Annotated[int, Strict()], ...] | None = None
    """Only these local indices of `from` (e.g. [0]: the CPU hosting the Qingtian card); default all."""
    links_per_pair: Count = Field(default=1, ge=1, le=64)
    """Parallel links between each linked pair."""
    bandwidth_gbps: Gbps
    """One-way bandwidth of each link, in gigabits per second."""
    latency_us: Micros
    """One-way latency of each link (its share of the switch traversal included), in microseconds."""


class LinkSpec(_Sourced):
    """An explicit extra link between two named elements (what-ifs); it must not join two switches of one tier."""

    a: Text
    """Node id of one end, e.g. "n00.npu0.d0"."""
    b: Text
    """Node id of the other end."""
    plane: Plane
    """The plane the link belongs to."""
    bandwidth_gbps: Gbps
    """One-way bandwidth, in gigabits per second."""
    latency_us: Micros
    """One-way latency, in microseconds."""


class PlaneRoles(_Model):
    """What each plane is for: the twin, the simulator and the TUI read these, never the plane names.

    One plane may play several roles (CloudMatrix384's UB is scale-up and inter-node; a GPU cluster's
    InfiniBand is inter-node and scale-out; a single host's bus is all three)."""

    scale_up: Ident
    """The plane between the dies of one node (the scale-up domain's fabric: UB, NVLink, a host bus)."""
    inter_node: Ident
    """The plane between dies of different nodes (UB across a supernode, InfiniBand between GPU servers)."""
    scale_out: Ident
    """The plane that carries the prefill -> decode KV transfer (RoCE RDMA on CloudMatrix384, InfiniBand)."""
    frontend: Ident | None = None
    """The host CPUs' front-end network (CloudMatrix384's VPC plane), used by `sim.ems_plane=vpc`; leave it out
    where the CPUs have none."""


class TopologySpec(_Sourced):
    """A validated topology file."""

    name: Ident
    """Topology name (the file stem for shipped files)."""
    description: Annotated[str, Strict()] = ""
    """One paragraph on what the file models."""
    params: dict[Ident, Text | tuple[Text, ...]] = {}
    """Overridable knobs: name -> key path(s) holding the value; the default is the value found there."""
    nodes: Count = Field(ge=1, le=1024)
    """Number of nodes (UB domains, GPU servers, hosts)."""
    node: NodeSpec
    """What every node holds."""
    fabric: tuple[FabricSwitchGroup, ...] = ()
    """Switch groups above the nodes."""
    connections: tuple[ConnectionSpec, ...] = Field(min_length=1)
    """The wiring rules."""
    roles: PlaneRoles
    """Which plane is the scale-up, inter-node and scale-out plane (and the CPUs' front-end network)."""
    links: tuple[LinkSpec, ...] = ()
    """Explicit extra links between named elements."""
    non_blocking: tuple[ConnectionPlane, ...] = ()
    """Planes that carry any traffic pattern at full injection: every node's uplink must carry its dies' full
    injection bandwidth (on a node-local plane: its switches are crossbars)."""
    node_local: tuple[ConnectionPlane, ...] = ()
    """Planes that only join endpoints of one node (NVLink, a host bus); connectivity is checked per node."""
    _origin: str = PrivateAttr(default="<dict>")

    @property
    def origin(self) -> str:
        """The file (or "<dict>") this spec was loaded from, for messages."""
        return self._origin

    def param_values(self) -> dict[str, Any]:
        """The current value of every param (the file's default unless overridden)."""
        data = self.model_dump(by_alias=True)
        out = {}
        for pname, paths in self.params.items():
            first = paths if isinstance(paths, str) else paths[0]
            out[pname] = _get(data, _parse_path(first, "<spec>"))
        return out


# ----------------------------------------------------------------------------------------------- loading


def available_topologies() -> list[str]:
    """Names of the shipped topology files."""
    folder = topologies_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_topology(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> TopologySpec:
    """Load, override and validate a topology file; any problem raises one TopologyError.

    A bare name (letters, digits, _ and -) means topologies_dir()/NAME.yaml; anything else is a .yaml path,
    which must lie in the topologies folder or under the current working directory.
    """
    path = _resolve(name_or_path)
    origin = _display(path)
    raw = _read_yaml(path, origin)
    return parse_topology(raw, origin=origin, overrides=overrides)


def parse_topology(
    raw: Any, *, origin: str = "<dict>", overrides: Mapping[str, Any] | None = None
) -> TopologySpec:
    """Validate an already-parsed topology mapping (after merging `overrides`) into a TopologySpec."""
    if not isinstance(raw, dict):
        raise TopologyError(
            f"Topology {origin}: the document is a {type(raw).__name__}, not a mapping of keys.",
            key="<root>",
            fix="start the file with `name:`, `nodes:`, `node:`, `connections:` ...",
        )
    data = copy.deepcopy(raw)
    params = _check_params(data, origin)
    _apply_overrides(data, params, overrides or {}, origin)
    _check_params_agree(data, params, origin, overridden=bool(overrides))
    _check_roles_given(data, origin)
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, origin) from None
    spec._origin = origin
    _check_sources(spec, origin)
    _check_references(spec, origin)
    _check_roles(spec, origin)
    _check_size(spec, origin)
    return spec


def _resolve(name_or_path: str | Path) -> Path:
    folder = topologies_dir()
    text = str(name_or_path)
    if isinstance(name_or_path, str) and _NAME_RE.match(text):
        path = folder / f"{text}.yaml"
        if not path.is_file():
            names = ", ".join(available_topologies()) or "(none)"
            raise TopologyError(
                f"Topology `{text}` not found: no file {path}. Available topologies: {names}.",
                key="topology",
                fix="use one of the available names, or a path to a .yaml file",
            )
        return path
    path = Path(text).expanduser()
    resolved = (Path.cwd() / path).resolve() if not path.is_absolute() else path.resolve()
    roots = (folder.resolve(), Path.cwd().resolve())
    if not any(resolved.is_relative_to(r) for r in roots):
        raise TopologyError(
            f"Topology path `{text}` resolves to {resolved}, outside the allowed folders "
            f"({roots[0]} and the working directory {roots[1]}).",
            key="topology",
            fix="copy the file under the working directory, or give a shipped topology's name",
        )
    if resolved.suffix not in (".yaml", ".yml"):
        raise TopologyError(
            f"Topology path `{text}` is not a .yaml/.yml file.", key="topology", fix="give a .yaml topology file"
        )
    if not resolved.is_file():
        names = ", ".join(available_topologies()) or "(none)"
        raise TopologyError(
            f"Topology file `{text}` not found ({resolved}). Shipped topologies: {names}.",
            key="topology",
            fix="check the path, or use a shipped topology's name",
        )
    return resolved


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@functools.cache
def _loader() -> type:
    """The safe loader (libyaml's C parser where PyYAML has it) that refuses duplicate keys (PyYAML silently keeps
    the last one). Made on first use: a topology read from the parse cache needs no YAML at all."""
    import yaml

    from cmtwin.config.yamlsafe import safe_loader

    class Loader(safe_loader()):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            self.flatten_mapping(node)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_short(key)} (first given on line {first + 1})",
                        key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return Loader


def _read_yaml(path: Path, origin: str) -> Any:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TopologyError(
            f"Topology {origin} is {size:,} bytes, larger than the {MAX_FILE_BYTES:,}-byte (1 MiB) limit.",
            key="<file>",
            fix="a topology is tiered counts and rules, not an edge list; describe repeated elements with counts",
        )
    blob = path.read_bytes()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(
            f"Topology {origin} is not UTF-8: byte 0x{blob[exc.start]:02x} at byte offset {exc.start} "
            f"({exc.reason}).",
            key="<file>",
            fix="save the file as UTF-8",
        ) from None
    cache = _parse_cache_path(blob)
    if cache is not None:
        hit = read_json(cache, "topology")
        if isinstance(hit, dict) and hit.get("format") == PARSE_CACHE_FORMAT and hit.get("key") == cache.stem:
            return hit["data"]
    data = _parse_yaml(text, origin)
    if cache is not None:
        _write_parse_cache(cache, data)
    return data


PARSE_CACHE_FORMAT = "cmtwin-topology-yaml"


def _parse_cache_path(blob: bytes) -> Path | None:
    """Where the parsed form of a topology file's bytes is cached (None: caching is off), keyed by the bytes, the
    modules that read them (the limits, the loader) and the installed PyYAML: a topology read again (every `cmtwin
    plan`) is then JSON, without importing or running YAML (about a twentieth of a warm `cmtwin plan`)."""
    import hashlib
    import sys

    from cmtwin.config import yamlsafe

    return entry_path("topology-yaml", hashlib.sha256(blob).hexdigest(), packages=("yaml",),
                      files=[Path(m.__file__) for m in (yamlsafe, sys.modules[__name__])])


def _write_parse_cache(path: Path, data: Any) -> None:
    """Cache a parsed topology, if JSON gives it back exactly (not, say, a mapping with number keys)."""
    import json

    from cmtwin.cachefile import write_text

    try:
        text = json.dumps({"format": PARSE_CACHE_FORMAT, "key": path.stem, "data": data}, allow_nan=False)
    except (TypeError, ValueError):
        return
    if json.loads(text)["data"] == data:
        write_text(path, text)


def _parse_yaml(text: str, origin: str) -> Any:
    import yaml

    from cmtwin.config.yamlsafe import YamlLimitError, check_yaml

    try:  # depth, aliases and number lengths first, on the event stream: nothing is expanded or recursed yet
        check_yaml(text)
    except YamlLimitError as exc:
        raise TopologyError(f"Topology {origin}: {exc.problem}.", key=exc.key, fix=exc.fix) from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise TopologyError(f"Topology {origin}: the YAML nests too deeply to read.", key="<file>",
                            fix="flatten it: a topology nests a few levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(
            f"Topology {origin}: YAML syntax error at {where}: {problem}.",
            key="<file>",
            fix=f"correct the YAML near line {mark.line + 1}" if mark is not None else "correct the YAML",
        ) from None


# ------------------------------------------------------------------------------------ params and overrides


def _parse_path(text: Any, origin: str) -> list[str | int]:
    if not isinstance(text, str) or not text:
        raise TopologyError(
            f"Topology {origin}: key path {_short(text)} is not a string.",
            key="params",
            fix="write a path like `node.devices.count`",
        )
    parts: list[str | int] = []
    for piece in text.split("."):
        if piece.isdigit():
            parts.append(int(piece))
            continue
        m = _PATH_PART_RE.match(piece)
        if not m:
            raise TopologyError(
                f"Topology {origin}: key path `{text}` is malformed at `{piece}`.",
                key=text,
                fix="write a dotted path with list indices in brackets, like `connections[0].bandwidth_gbps`",
            )
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def _render(parts: tuple | list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _get(data: Any, parts: list[str | int]) -> Any:
    for p in parts:
        data = data[p]
    return data


def _check_params(data: dict, origin: str) -> dict[str, list[list[str | int]]]:
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TopologyError(
            f"Topology {origin}: key `params` = {_short(params)} is not a mapping.",
            key="params",
            fix="write `params: {nodes: nodes}` (param name -> key path)",
        )
    out: dict[str, list[list[str | int]]] = {}
    for pname, target in params.items():
        paths = [target] if isinstance(target, str) else target
        if not isinstance(pname, str) or not isinstance(paths, list) or not paths:
            raise TopologyError(
                f"Topology {origin}: key `params.{pname}` = {_short(target)} is not a key path or a list of them.",
                key=f"params.{pname}",
                fix="map each param to a key path or a list of them, e.g. `nodes: nodes`",
            )
        parsed = [_parse_path(p, origin) for p in paths]
        for text, parts in zip(paths, parsed):
            try:
                _get(data, parts)
            except (KeyError, IndexError, TypeError):
                raise TopologyError(
                    f"Topology {origin}: key `params.{pname}` points at `{text}`, which the file does not hold.",
                    key=f"params.{pname}",
                    fix="point the param at an existing key that holds its default value",
                ) from None
        out[pname] = parsed
    return out


def _apply_overrides(data: dict, params: dict, overrides: Mapping[str, Any], origin: str) -> None:
    if not isinstance(overrides, Mapping):
        raise TopologyError(
            f"Topology {origin}: overrides {_short(overrides)} are not a mapping.", key="overrides", fix="pass a dict"
        )
    for key, value in overrides.items():
        if isinstance(key, str) and key in params:
            targets = params[key]
        elif isinstance(key, str) and ("." in key or "[" in key or key in data or key in TopologySpec.model_fields):
            targets = [_parse_path(key, origin)]
        else:
            choices = ", ".join(sorted(params)) or "(none)"
            raise TopologyError(
                f"Topology {origin}: override `{key}` = {_short(value)} names no param and no key. "
                f"Params of this file: {choices}.",
                key=str(key),
                fix="use a param name or a key path like `node.devices.count`",
            )
        for parts in targets:
            _set(data, parts, _thaw(value), origin, str(key))


def _thaw(value: Any) -> Any:
    """Frozen override values (tuples of pairs from get_fabric's cache key) back to plain YAML-like data."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_thaw(v) for v in value]
    return value


def _set(data: dict, parts: list[str | int], value: Any, origin: str, key: str) -> None:
    node: Any = data
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        where = _render(parts[: i + 1])
        if isinstance(p, int):
            if not isinstance(node, list) or not -len(node) <= p < len(node):
                raise TopologyError(
                    f"Topology {origin}: override `{key}`: `{where}` is no existing list item.",
                    key=key,
                    fix="index an existing item of the list",
                )
        elif not isinstance(node, dict):
            raise TopologyError(
                f"Topology {origin}: override `{key}` goes through `{_render(parts[:i])}`, "
                f"which holds {_short(node)}, not a mapping.",
                key=key,
                fix="override the whole value, or a key of a mapping",
            )
        if last:
            old = node[p] if (isinstance(p, int) or p in node) else None
            node[p] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else copy.deepcopy(value)
        else:
            if isinstance(p, str) and p not in node:
                node[p] = {}
            node = node[p]


def _merge(base: dict, delta: dict) -> dict:
    out = dict(base)
    for k, v in delta.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def _check_params_agree(data: dict, params: dict, origin: str, *, overridden: bool) -> None:
    for pname, paths in params.items():
        values = []
        for parts in paths:
            try:
                values.append((_render(parts), _get(data, parts)))
            except (KeyError, IndexError, TypeError):
                raise TopologyError(
                    f"Topology {origin}: param `{pname}` points at `{_render(parts)}`, which an override removed.",
                    key=f"params.{pname}",
                    fix="override the param by its name instead of its keys",
                ) from None
        if any(v != values[0][1] for _, v in values[1:]):
            listing = ", ".join(f"{k}={_short(v)}" for k, v in values)
            raise TopologyError(
                f"Topology {origin}: key `params.{pname}` names several keys that disagree: {listing}.",
                key=f"params.{pname}",
                fix=f"override `{pname}` itself so all its keys change together"
                if overridden
                else "make them equal in the file: a param's keys hold one value",
            )


# ------------------------------------------------------------------------------------------ error messages


_REPR = __import__("reprlib").Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def _short(value: Any) -> str:
    """A value for a message, at most 80 characters; never the whole repr of a large value (an alias-expanded
    list, a 100,000-digit integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class whose keys live at `loc` (used to list valid keys for an unknown one)."""
    model: type[BaseModel] | None = TopologySpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        by_alias = {(f.alias or n): f for n, f in model.model_fields.items()}
        field = by_alias.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType or origin is tuple:
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


_FIXES = {
    "greater_than": "use a number > {gt}: sizes, counts and bandwidths are positive",
    "greater_than_equal": "use a number >= {ge}",
    "less_than_equal": "use a number <= {le}",
    "less_than": "use a number < {lt}",
    "finite_number": "use a finite number",
    "int_type": "write a whole number without quotes",
    "float_type": "write a number without quotes",
    "string_type": "write a string",
    "bool_type": "write true or false",
    "missing": "add this key",
    "literal_error": "use one of: {expected}",
    "string_pattern_mismatch": "use lowercase letters, digits and _, starting with a letter",
    "string_too_short": "write a non-empty string",
    "too_short": "give at least {min_length} item(s)",
    "model_type": "write a mapping of keys here",
    "model_attributes_type": "write a mapping of keys here",
    "dict_type": "write a mapping here",
    "tuple_type": "write a list here",
    "list_type": "write a list here",
}


def _validation_error(exc: ValidationError, origin: str) -> TopologyError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    key = _render(loc)
    kind = first["type"]
    ctx = {k: v for k, v in (first.get("ctx") or {}).items()}
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = sorted((f.alias or n) for n, f in model.model_fields.items()) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        fix = f"remove `{loc[-1]}` or fix its spelling{hint}; keys allowed here: {', '.join(valid)}"
        problem = "is an unknown key"
    else:
        try:
            fix = _FIXES.get(kind, "correct the value").format(**ctx)
        except (KeyError, IndexError):
            fix = _FIXES.get(kind, "correct the value")
        if kind == "string_pattern_mismatch" and loc and loc[-1] == "id_prefix":
            fix += ", not ending in a digit (the device number follows it: n03.gpu5)"
        problem = f"is invalid: {first['msg']}"
    value = "(missing)" if kind == "missing" else _short(first.get("input"))
    more = ""
    if len(errors) > 1:
        others = ", ".join(f"`{_render(tuple(e['loc']))}`" for e in errors[1:4])
        more = f" ({len(errors) - 1} more problem(s), at {others}{', ...' if len(errors) > 4 else ''})"
    return TopologyError(f"Topology {origin}: key `{key}` = {value} {problem}.{more}", key=key, fix=fix)


# ------------------------------------------------------------------------------------------ semantic checks


def _walk(model: BaseModel, loc: tuple) -> Iterator[tuple[tuple, BaseModel]]:
    yield loc, model
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = field.alias or name
        if isinstance(value, BaseModel):
            yield from _walk(value, loc + (key,))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _walk(item, loc + (key, i))


def _check_sources(spec: TopologySpec, origin: str) -> None:
    """Every number given in the file has a source; every `sources:` key names a number of its block."""
    for loc, model in _walk(spec, ()):
        if not isinstance(model, _Sourced):
            continue
        numbers = [
            n
            for n in type(model).model_fields
            if n not in ("source", "sources")
            and isinstance(getattr(model, n), (int, float))
            and not isinstance(getattr(model, n), bool)
        ]
        for key in model.sources or {}:
            if key not in numbers:
                raise TopologyError(
                    f"Topology {origin}: key `{_render(loc + ('sources', key))}` names no number of this block "
                    f"(numbers here: {', '.join(numbers) or 'none'}).",
                    key=_render(loc + ("sources", key)),
                    fix="name one of the block's numeric keys, or remove the entry",
                )
        for name in numbers:
            if name not in model.model_fields_set or model.source or (model.sources and name in model.sources):
                continue
            raise TopologyError(
                f"Topology {origin}: key `{_render(loc + (name,))}` = {getattr(model, name)!r} has no source.",
                key=_render(loc + (name,)),
                fix=f"add `source: ...` to the block, or `sources: {{{name}: ...}}`, naming the paper section, "
                "reference file, datasheet, or 'assumption: ...' with the reasoning",
            )


def _check_references(spec: TopologySpec, origin: str) -> None:
    """Names used by connections exist and each pattern fits the counts it pairs."""
    node_groups = {g.name: g for g in spec.node.switches}
    fabric_groups = {g.name: g for g in spec.fabric}
    seen: dict[str, str] = {}
    for where, names in (("node.switches", node_groups), ("fabric", fabric_groups)):
        for name in names:
            if name in ("die", "cpu") or name in seen:
                raise TopologyError(
                    f"Topology {origin}: switch group name `{name}` in `{where}` is used twice (or is reserved).",
                    key=f"{where}.name",
                    fix="give every switch group a distinct name other than die and cpu",
                )
            seen[name] = where
    dev = spec.node.devices
    if dev.dies_per_device > 1 and dev.die_to_die is None:
        raise TopologyError(
            f"Topology {origin}: key `node.devices.dies_per_device` = {dev.dies_per_device} but "
            "`node.devices.die_to_die` is missing.",
            key="node.devices.die_to_die",
            fix="add `die_to_die: {bandwidth_gbps: ..., latency_us: ..., source: ...}`",
        )
    cpus = spec.node.cpus.count if spec.node.cpus else 0
    per_node = {"die": dev.count, "cpu": cpus} | {n: g.count for n, g in node_groups.items()}
    for i, conn in enumerate(spec.connections):
        at = f"connections[{i}]"
        source_group = fabric_groups.get(conn.from_)
        if conn.from_ not in per_node and source_group is None:
            raise TopologyError(
                f"Topology {origin}: key `{at}.from` = {conn.from_!r} names no element.",
                key=f"{at}.from",
                fix=f"use one of: {', '.join([*per_node, *fabric_groups])}",
            )
        target = node_groups.get(conn.to) or fabric_groups.get(conn.to)
        if target is None or (source_group is not None and conn.to not in fabric_groups):
            valid = [*fabric_groups] if source_group is not None else [*node_groups, *fabric_groups]
            raise TopologyError(
                f"Topology {origin}: key `{at}.to` = {conn.to!r} names no switch group "
                f"{'above the nodes' if source_group is not None else ''}.".replace(" .", "."),
                key=f"{at}.to",
                fix=f"use one of: {', '.join(valid) or '(declare a switch group first)'}",
            )
        source_tier = source_group.tier if source_group else getattr(node_groups.get(conn.from_), "tier", None)
        if source_tier == target.tier:
            raise TopologyError(
                f"Topology {origin}: key `{at}` links `{conn.from_}` to `{conn.to}`, switches of one tier "
                f"({target.tier!r}): a loop the tiered structure forbids.",
                key=f"{at}.to",
                fix="link a switch tier only to the tier above or below it",
            )
        n_from = source_group.groups * source_group.count if source_group else per_node[conn.from_]
        if n_from == 0:
            raise TopologyError(
                f"Topology {origin}: key `{at}.from` = {conn.from_!r} selects no elements (count 0).",
                key=f"{at}.from",
                fix="declare the elements or drop the connection",
            )
        for j in conn.from_indices or ():
            if not 0 <= j < n_from:
                raise TopologyError(
                    f"Topology {origin}: key `{at}.from_indices` holds {j}, outside 0..{n_from - 1}.",
                    key=f"{at}.from_indices",
                    fix=f"use local indices from 0 to {n_from - 1}",
                )
        groups = getattr(target, "groups", 1)
        if conn.pattern == "same_index" and (groups != 1 or target.count != n_from):
            raise TopologyError(
                f"Topology {origin}: key `{at}.pattern` = 'same_index' pairs {n_from} `{conn.from_}` "
                f"with {groups} x {target.count} `{conn.to}` switches; the counts must be equal (one group).",
                key=f"{at}.pattern",
                fix=f"give `{conn.to}` count {n_from}, or use pattern `all`",
            )
        if conn.pattern == "same_group" and (conn.to not in fabric_groups or groups != n_from):
            raise TopologyError(
                f"Topology {origin}: key `{at}.pattern` = 'same_group' needs a fabric group `{conn.to}` with "
                f"groups == {n_from} (one sub-plane per `{conn.from_}`), found {groups}.",
                key=f"{at}.pattern",
                fix=f"set `groups: {n_from}` on `{conn.to}`, or use pattern `all`",
            )
    for i, conn in enumerate(spec.connections):
        if conn.plane == D2D_PLANE:
            raise TopologyError(
                f"Topology {origin}: key `connections[{i}].plane` = {D2D_PLANE!r} is reserved for the links "
                "between the dies of one device.",
                key=f"connections[{i}].plane",
                fix="declare those links under `node.devices.die_to_die`, or give this plane another name",
            )
    used = {c.plane for c in spec.connections}
    for field in ("non_blocking", "node_local"):
        for i, plane in enumerate(getattr(spec, field)):
            if plane not in used:
                raise TopologyError(
                    f"Topology {origin}: key `{field}[{i}]` = {plane!r} is a plane no connection wires.",
                    key=f"{field}[{i}]",
                    fix=f"use one of the wired planes: {', '.join(sorted(used))}",
                )


_ROLE_MEANING = {
    "scale_up": "the plane between the dies of one node",
    "inter_node": "the plane between dies of different nodes",
    "scale_out": "the plane carrying the prefill -> decode KV transfer",
    "frontend": "the host CPUs' front-end network (optional)",
}


def _raw_planes(data: dict, from_: str | None = None) -> list[str]:
    """Plane names the (not yet validated) file wires (only by connections `from` that element when given), in
    order of first use, d2d excluded."""
    out: list[str] = []
    for key in ("connections",) if from_ else ("connections", "links"):
        items = data.get(key)
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict) or (from_ and item.get("from") != from_):
                continue
            plane = item.get("plane")
            if isinstance(plane, str) and plane != D2D_PLANE and plane not in out:
                out.append(plane)
    return out


def _roles_example(data: dict) -> str:
    """A `roles:` line for this file: its first die plane for scale_up, its first and last die planes that span
    the nodes for inter_node and scale_out."""
    dies = _raw_planes(data, "die") or _raw_planes(data) or ["PLANE"]
    local = data.get("node_local") if isinstance(data.get("node_local"), list) else []
    spanning = [p for p in dies if p not in local] or dies
    return f"roles: {{scale_up: {dies[0]}, inter_node: {spanning[0]}, scale_out: {spanning[-1]}}}"


def _check_roles_given(data: dict, origin: str) -> None:
    """`roles:` is present, a mapping of the known role keys, each naming a plane the file wires (plane names
    carry no meaning of their own, so a missing or misspelt role is an error, never a guess)."""
    planes = _raw_planes(data)
    listing = ", ".join(planes) or "(none)"
    roles = data.get("roles")
    if roles is None:
        raise TopologyError(
            f"Topology {origin}: key `roles` = (missing): the file must declare which of its planes is the "
            f"scale-up, inter-node and scale-out plane (the twin never guesses a role from a plane's name). "
            f"Planes wired here: {listing}.",
            key="roles",
            fix=f"add `{_roles_example(data)}` (scale_up: {_ROLE_MEANING['scale_up']}; inter_node: "
            f"{_ROLE_MEANING['inter_node']}; scale_out: {_ROLE_MEANING['scale_out']}), naming planes of this file",
        )
    if not isinstance(roles, dict):
        raise TopologyError(
            f"Topology {origin}: key `roles` = {_short(roles)} is not a mapping of role -> plane. "
            f"Planes wired here: {listing}.",
            key="roles",
            fix=f"write `{_roles_example(data)}`",
        )
    for key, value in roles.items():
        if key not in _ROLE_MEANING:
            close = difflib.get_close_matches(str(key), list(_ROLE_MEANING), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise TopologyError(
                f"Topology {origin}: key `roles.{key}` = {_short(value)} is no role{hint}. Roles: "
                f"{', '.join(_ROLE_MEANING)}; planes wired here: {listing}.",
                key=f"roles.{key}",
                fix=f"use one of the role keys: {', '.join(_ROLE_MEANING)}",
            )
    for key in (*ROLES, "frontend"):
        value = roles.get(key)
        if value is None and key == "frontend":
            continue
        what = "(missing)" if key not in roles else _short(value)
        if value is None or not isinstance(value, str) or value not in planes:
            problem = "is missing" if key not in roles else "names no plane this file wires"
            raise TopologyError(
                f"Topology {origin}: key `roles.{key}` = {what} {problem} ({_ROLE_MEANING[key]}). "
                f"Planes wired here: {listing}.",
                key=f"roles.{key}",
                fix=f"set `roles.{key}` to one of: {listing}",
            )


def _check_roles(spec: TopologySpec, origin: str) -> None:
    """Each role's plane reaches the endpoints the role needs: dies for scale_up, inter_node and scale_out
    (and two nodes for the last two), CPUs for frontend."""
    from_die = {c.plane for c in spec.connections if c.from_ == "die"}
    from_cpu = {c.plane for c in spec.connections if c.from_ == "cpu"}
    linked = {link.plane for link in spec.links}
    roles = spec.roles
    for key in (*ROLES, "frontend"):
        plane = getattr(roles, key)
        if plane is None:
            continue
        ends, kind = (from_cpu, "cpu") if key == "frontend" else (from_die, "die")
        if plane not in ends and plane not in linked:
            valid = ", ".join(sorted(ends)) or "(none)"
            raise TopologyError(
                f"Topology {origin}: key `roles.{key}` = {plane!r} names a plane that wires no {kind} "
                f"({_ROLE_MEANING[key]} must reach the {kind}s). Planes with a `from: {kind}` connection: {valid}.",
                key=f"roles.{key}",
                fix=f"set `roles.{key}` to one of: {valid}, or wire the {kind}s to plane {plane}",
            )
        if key in ("inter_node", "scale_out") and spec.nodes > 1 and plane in spec.node_local:
            valid = ", ".join(sorted(p for p in from_die if p not in spec.node_local)) or "(none)"
            raise TopologyError(
                f"Topology {origin}: key `roles.{key}` = {plane!r} names a `node_local` plane, which joins no "
                f"two of the {spec.nodes} nodes ({_ROLE_MEANING[key]}).",
                key=f"roles.{key}",
                fix=f"set `roles.{key}` to a plane that spans the nodes: {valid}",
            )


def expected_directed_links(spec: TopologySpec) -> int:
    """Directed edges build_graph will create (both directions of every link)."""
    dev = spec.node.devices
    cpus = spec.node.cpus.count if spec.node.cpus else 0
    per_node = {"die": dev.count, "cpu": cpus} | {g.name: g.count for g in spec.node.switches}
    fabric = {g.name: g for g in spec.fabric}
    sizes = {g.name: g.count for g in spec.node.switches} | {g.name: g.groups * g.count for g in spec.fabric}
    total = spec.nodes * dev.count * dev.dies_per_device * (dev.dies_per_device - 1)
    for conn in spec.connections:
        if conn.from_ in fabric:
            n_from, repeat = fabric[conn.from_].groups * fabric[conn.from_].count, 1
        else:
            n_from, repeat = per_node[conn.from_], spec.nodes
        if conn.from_indices is not None:
            n_from = len(conn.from_indices)
        elements = n_from * (dev.dies_per_device if conn.from_ == "die" else 1)
        per_group = sizes[conn.to] // (fabric[conn.to].groups if conn.to in fabric else 1)
        fan = {"all": sizes[conn.to], "same_index": 1, "same_group": per_group}[conn.pattern]
        total += 2 * repeat * elements * fan * conn.links_per_pair
    return total + 2 * len(spec.links)


def _check_size(spec: TopologySpec, origin: str) -> None:
    node = spec.node
    per_node = node.devices.count * node.devices.dies_per_device + (node.cpus.count if node.cpus else 0)
    per_node += sum(g.count for g in node.switches)
    elements = spec.nodes * per_node + sum(g.groups * g.count for g in spec.fabric)
    if elements > MAX_ELEMENTS:
        raise TopologyError(
            f"Topology {origin}: these counts make {elements:,} elements, more than the {MAX_ELEMENTS:,} this "
            f"tool builds (nodes={spec.nodes}).",
            key="nodes",
            fix="reduce the counts (nodes, devices, dies, CPUs, switches)",
        )
    n = expected_directed_links(spec)
    if n > MAX_DIRECTED_LINKS:
        raise TopologyError(
            f"Topology {origin}: these counts make {n:,} directed links, more than the {MAX_DIRECTED_LINKS:,} "
            f"this tool builds (nodes={spec.nodes}).",
            key="nodes",
            fix="reduce the counts (nodes, devices, switches, links_per_pair)",
        )
