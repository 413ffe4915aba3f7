"""Launch material: one shell script per process to start (role, instance, node), the engine's extra files, the
router that joins the instances, and a README that says how to start it and what cmtwin predicts for it.

Every script starts with two comment lines `cmtwin import launch` reads back: `# cmtwin-launch:` (which role,
instance and node it is) and `# cmtwin-context:` (cmtwin/launch/context.py).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cmtwin.errors import CmtwinError

LAUNCH_MARK = "# cmtwin-launch: "


@dataclass(frozen=True)
class Launch:
    """One process: the command of one node of one instance of a role."""

    role: str  # prefill | decode | agg
    instance: int
    node: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.role}-{self.instance}-node{self.node}.sh"


@dataclass
class Bundle:
    engine: str
    launches: list[Launch]
    files: dict[str, str] = field(default_factory=dict)  # extra files the commands read (YAML / JSON configs)
    router: tuple[str, ...] | None = None  # the process joining the instances (PD router, load balancer)
    notes: list[str] = field(default_factory=list)  # what the user must fill in or know


def shell_script(launch: Launch, context: str) -> str:
    lines = ["#!/usr/bin/env bash", f"{LAUNCH_MARK}role={launch.role} instance={launch.instance} node={launch.node}",
             context, "set -euo pipefail"]
    lines += [f"export {k}={v}" for k, v in launch.env]
    lines.append(join_command(launch.argv))
    return "\n".join(lines) + "\n"


def join_command(argv) -> str:
    """The command (up to its first --flag) on one line, then one flag and its value per line; ${VAR} placeholders
    stay unquoted so the shell expands them."""
    parts, i, argv = [], 0, list(argv)
    head = []
    while i < len(argv) and not argv[i].startswith("--"):
        head.append(_quote(argv[i]))
        i += 1
    parts.append(" ".join(head))
    while i < len(argv):
        item = _quote(argv[i])
        if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            item += " " + _quote(argv[i + 1])
            i += 1
        parts.append(item)
        i += 1
    return " \\\n    ".join(parts)


def _quote(s: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./${}-]+", s):
        return s
    return shlex.quote(s)


def write_bundle(bundle: Bundle, out: Path, context: str, readme: str) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for launch in bundle.launches:
            p = out / launch.name
            p.write_text(shell_script(launch, context))
            p.chmod(0o755)
            written.append(p)
        for name, text in bundle.files.items():
            (out / name).write_text(text)
            written.append(out / name)
        if bundle.router:
            p = out / "router.sh"
            p.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + join_command(bundle.router) + "\n")
            p.chmod(0o755)
            written.append(p)
        (out / "README.md").write_text(readme)
        written.append(out / "README.md")
    except OSError as exc:
        raise CmtwinError(f"--out {out}: cannot write the launch files ({exc.strerror}).", key="--out",
                          fix="give a writable directory") from None
    return written


def read_launches(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """(the `# cmtwin-launch:` fields, argv) of each command in a script or a command line; comments, `export`
    lines and `set` lines are skipped, line continuations joined."""
    fields: dict[str, str] = {}
    out = []
    body = []
    for line in text.splitlines():
        if line.startswith(LAUNCH_MARK):
            fields = dict(kv.split("=", 1) for kv in line[len(LAUNCH_MARK):].split())
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("export ") or s.startswith("set "):
            continue
        body.append(s[:-1] if s.endswith("\\") else s)
        if not s.endswith("\\"):
            out.append((fields, shlex.split(" ".join(body))))
            body = []
    if body:
        out.append((fields, shlex.split(" ".join(body))))
    return out


def dump_json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
