"""Limits on user YAML, checked on the event stream before anything is built from it.

A small YAML file can describe an unbounded amount of work: an alias bomb (1 KB of `&a [*b, *b, ...]` expands to
billions of nodes), 50,000 nested `[` (the composer recurses once per level), a 100,000-digit number (Python
refuses to convert it). `check_yaml` reads the file's parse events (the parser keeps its own stack, so it neither
expands aliases nor recurses) and refuses, with the file, the key, the value (truncated) and the fix:

- files over MAX_YAML_BYTES, or not UTF-8;
- nesting deeper than MAX_YAML_DEPTH;
- more than MAX_YAML_ALIASES aliases, or aliases that expand the document past MAX_YAML_NODES nodes;
- plain numbers longer than MAX_NUMBER_CHARS characters;
- `${oc.env:...}` (or an `eval` resolver) in a value, when `interpolation` is False: a config file's value is
  stored in the run record, so reading the environment there would store a secret.

Topology files (cmtwin/topology/schema.py) and the user's config files under ./cmtwin_conf (before Hydra reads
them, cmtwin/config/compose.py) go through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MAX_YAML_BYTES = 1 << 20
"""Largest user YAML file accepted (1 MiB)."""

MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings accepted (the shipped files nest 5 deep)."""

MAX_YAML_ALIASES = 100
"""Most aliases (*name) one file may use."""

MAX_YAML_NODES = 100_000
"""Most nodes (scalars, lists, mappings) a file may hold once its aliases are expanded."""

MAX_NUMBER_CHARS = 100
"""Longest plain number accepted, in characters (a float has 17 significant digits; no setting needs more)."""

_NUMBER_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?$")
_ENV_RE = re.compile(r"\$\{[^}]*(?:oc\.env|eval)\b")


@dataclass
class YamlLimitError(Exception):
    """A user YAML file breaks one of the limits: what is wrong (with the value), the key, the line and the fix."""

    problem: str
    key: str
    fix: str
    line: int | None = None

    def __str__(self) -> str:
        return self.problem


def short(text: str, limit: int = 40) -> str:
    """A value for a message: at most `limit` characters, with the total length when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def is_env_interpolation(value: str) -> bool:
    """Whether a string holds an interpolation that reads the environment or evaluates code."""
    return "${" in value and bool(_ENV_RE.search(value))


def read_text(path: Path, *, max_bytes: int = MAX_YAML_BYTES) -> str:
    """The file's text, refused when larger than `max_bytes` or not UTF-8 (YamlLimitError)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise YamlLimitError(f"the file is {size:,} bytes, larger than the {max_bytes:,}-byte "
                             f"({max_bytes / (1 << 20):g} MiB) limit", key="<file>",
                             fix="a config file holds settings, not data; shorten it")
    blob = path.read_bytes()
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = blob[: exc.start].count(b"\n") + 1
        raise YamlLimitError(f"the file is not UTF-8 text: byte 0x{blob[exc.start]:02x} at byte offset "
                             f"{exc.start:,} (line {line}): {exc.reason}", key="<file>", line=line,
                             fix="save it as UTF-8 text, or move a binary file out of the folder") from None


def safe_loader() -> type:
    """PyYAML's safe loader on libyaml's C parser (CSafeLoader) where PyYAML has it: the same events and values,
    about ten times faster than the pure-Python SafeLoader, which is the fallback."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_yaml(text: str, *, interpolation: bool = True, max_depth: int = MAX_YAML_DEPTH,
               max_aliases: int = MAX_YAML_ALIASES, max_nodes: int = MAX_YAML_NODES) -> None:
    """Refuse (YamlLimitError) a YAML text that breaks the limits above. YAML syntax errors are left to the loader
    that follows (the event stream stops at them, and so does this check).

    The events come from libyaml's parser where PyYAML has it (safe_loader). libyaml stops at limits of its own
    before the events show them (a nesting past 1,000 levels is a syntax error to it), so a text it cannot parse
    is read again by the pure-Python parser: that names the key that breaks a limit, or stops at the same error."""
    import yaml

    limits = dict(interpolation=interpolation, max_depth=max_depth, max_aliases=max_aliases, max_nodes=max_nodes)
    if not _check_events(text, safe_loader(), **limits) and safe_loader() is not yaml.SafeLoader:
        _check_events(text, yaml.SafeLoader, **limits)


def _check_events(text: str, loader: type, *, interpolation: bool, max_depth: int, max_aliases: int,
                  max_nodes: int) -> bool:
    """check_yaml on the events of one parser; False when the parser stopped at a syntax error."""
    import yaml

    stack: list[_Frame] = []  # the open lists and mappings
    anchors: dict[str, int] = {}  # anchor -> nodes its value holds (expanded)
    nodes = aliases = 0

    def path() -> str:
        out = ""
        for f in stack:
            if f.kind == "seq" and f.index >= 0:
                out += f"[{f.index}]"
            elif f.kind == "map" and not f.expect_key and f.key is not None:
                out += ("." if out else "") + f.key
        out = out or "<root>"
        return out if len(out) <= 80 else out[:77] + "..."

    def begin() -> bool:
        """A node starts: count it in its parent; True when it is a mapping's key."""
        if not stack:
            return False
        top = stack[-1]
        if top.kind == "seq":
            top.index += 1
            return False
        return top.expect_key

    def end(is_key: bool, scalar: str | None) -> None:
        """A node ended: after a key comes its value, after a value the next key."""
        if stack and stack[-1].kind == "map":
            top = stack[-1]
            if is_key:
                top.key = short(scalar, 40) if scalar is not None else "<complex key>"
            top.expect_key = not is_key

    try:
        for event in yaml.parse(text, Loader=loader):
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                nodes += 1
                is_key = begin()
                if len(stack) >= max_depth:
                    raise YamlLimitError(
                        f"'{path()}' nests lists and mappings more than {max_depth} deep (line {line})",
                        key=path(), line=line, fix="flatten it: no setting nests more than a few levels")
                kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
                stack.append(_Frame(kind, nodes, event.anchor, is_key))
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                frame = stack.pop()
                if frame.anchor is not None:
                    anchors[frame.anchor] = nodes - frame.start + 1
                end(frame.is_key, None)
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                is_key = begin()
                value = event.value
                if event.anchor is not None:
                    anchors[event.anchor] = 1
                if not is_key:
                    plain = event.style in (None, "") and event.implicit[0]
                    if (plain and len(value) > MAX_NUMBER_CHARS and _NUMBER_RE.match(value)
                            and any(c.isdigit() for c in value)):
                        raise YamlLimitError(
                            f"'{path()}' = {short(value, 20)}: a number of {len(value):,} characters (line {line}), "
                            f"longer than the {MAX_NUMBER_CHARS} any setting can use", key=path(), line=line,
                            fix="write the number in at most 17 significant digits (e.g. 1.5e9)")
                    if not interpolation and is_env_interpolation(value):
                        raise YamlLimitError(
                            f"'{path()}' = {short(value, 60)!r} (line {line}) reads the environment or evaluates "
                            "code; a config file's values are stored in the run record, so an environment "
                            "variable there (a token, a password) would be stored with every run", key=path(),
                            line=line, fix="write the value itself in the file, or pass it as an override on the "
                                           "command line (key=value)")
                end(is_key, value)
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                is_key = begin()
                if aliases > max_aliases:
                    raise YamlLimitError(
                        f"more than {max_aliases} aliases (*{short(event.anchor, 20)} at '{path()}', line {line}); "
                        "aliases are limited so that a small file cannot expand into an unbounded one",
                        key=path(), line=line, fix="write the values out, or use fewer anchors and aliases")
                nodes += anchors.get(event.anchor, 1)
                if nodes > max_nodes:
                    raise YamlLimitError(
                        f"the alias *{short(event.anchor, 20)} at '{path()}' (line {line}) expands the file past "
                        f"{max_nodes:,} values (an alias bomb: each alias copies its anchor's whole value)",
                        key=path(), line=line, fix="write the values out instead of nesting aliases of aliases")
                end(is_key, None)
            if nodes > max_nodes:
                raise YamlLimitError(f"more than {max_nodes:,} values (line {line})", key=path(), line=line,
                                     fix="a config file holds settings, not data; shorten it")
    except yaml.YAMLError:
        return False  # the loader reports the syntax error with its line and column
    return True


@dataclass
class _Frame:
    """An open list or mapping of the event stream."""

    kind: str  # "seq" or "map"
    start: int  # the node count at its start
    anchor: str | None
    is_key: bool  # whether the collection itself is a mapping's key
    index: int = -1  # seq: the current item
    expect_key: bool = True  # map: whether the next node is a key
    key: str | None = None  # map: the current key
