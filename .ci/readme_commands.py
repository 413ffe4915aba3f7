"""Run every command of README.md, in order, in an empty directory, the way a new user would.

usage: python .ci/readme_commands.py [--readme README.md] [--only SUBSTRING]

Every line of the page's ```bash blocks that starts with `cmtwin` (and every `$ cmtwin` line of its other
blocks, a command shown with its output) runs as written (through the shell, in
one fresh folder, so a later command sees what an earlier one recorded). A command must exit 0, or the code
its comment documents ("... exits 3 ..."). `cmtwin tui` runs in a pseudo-terminal and is quit with `q`.
A few commands also have their output checked against what their comment promises (CHECKS below).
Prints a table of commands, exit codes and wall times; exits 1 if any command did not do what it says.
CI runs it after the test suite (.ci/run).
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands(readme: Path) -> list[tuple[str, str]]:
    """(command, comment) for each command of a page, in order: the `cmtwin ...` lines of its ```bash blocks,
    and the `$ cmtwin ...` lines of its other blocks (a command shown with its output)."""
    out, block = [], None
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = line.strip()[3:] if block is None else None
            continue
        text = line.strip()
        if block == "bash" and text.startswith("cmtwin"):
            command, _, comment = text.partition("  #")
        elif block is not None and text.startswith("$ cmtwin"):
            command, _, comment = text[2:].partition("  #")
        else:
            continue
        out.append((command.strip(), comment.strip()))
    return out


def expected_code(comment: str) -> int:
    m = re.search(r"\bexits (\d+)\b", comment)
    return int(m.group(1)) if m else 0


def _json(stdout: str) -> dict:
    obj = json.loads(stdout)
    assert {"run_id", "plan_hash", "plan", "prediction"} <= set(obj), sorted(obj)
    return obj


# What a command's comment promises, checked on its output (stdout + stderr). Keyed by a prefix of the command.
CHECKS = {
    "cmtwin plan +deployment=r1_ep320 --format json": lambda out, err: _json(out),
    "cmtwin query": lambda out, err: re.search(r"\b[1-9][0-9]* row\(s\)", out) is not None,
    "cmtwin runs ls": lambda out, err: "plan" in out,
    "cmtwin compare": lambda out, err: "per kW" in out and "r1_gb200_nvl72" in out,
    "cmtwin simulate": lambda out, err: "TTFT" in out + err,
    "cmtwin search": lambda out, err: "frontier" in (out + err).lower(),
    "cmtwin execute": lambda out, err: "numerics" in out + err,
    "cmtwin calibrate": lambda out, err: Path("cmtwin_conf/hardware").is_dir(),
    "cmtwin export trace": lambda out, err: any(Path(".").glob("*.trace.json")),
    "cmtwin export launch": lambda out, err: Path("launch/best/README.md").is_file()
    and any(Path("launch/best").glob("*-0-node0.sh")),
    "cmtwin import launch": lambda out, err: Path("cmtwin_conf/deployment/best.yaml").is_file(),
}


def run_tui(command: str, env: dict, timeout: float = 60.0) -> tuple[int, str]:
    """Start the TUI in a pseudo-terminal, wait until it has drawn, press q; return (exit code, screen bytes)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: the TUI on a 120x40 terminal
        os.environ.update(env, TERM="xterm-256color", COLUMNS="120", LINES="40")
        os.execvp("sh", ["sh", "-c", command])
    screen, quit_sent, deadline = b"", False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        if not quit_sent and b"runs" in screen.lower() and len(screen) > 2000:
            time.sleep(1.0)
            os.write(fd, b"q")
            quit_sent = True
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode("utf-8", "replace")


def main() -> int:
    args = sys.argv[1:]
    readme = Path(args[args.index("--readme") + 1]) if "--readme" in args else ROOT / "README.md"
    only = args[args.index("--only") + 1] if "--only" in args else None
    commands = [c for c in readme_commands(readme) if only is None or only in c[0]]
    if not commands:
        print(f"no `cmtwin` commands found in {readme}", file=sys.stderr)
        return 1
    env = {k: v for k, v in os.environ.items() if k not in ("CMTWIN_DB_URL", "CMTWIN_FULL_ERROR")}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        os.chdir(tmp)
        print(f"running {len(commands)} README commands in {tmp}", flush=True)
        for command, comment in commands:
            want = expected_code(comment)
            t0 = time.perf_counter()
            if shlex.split(command)[:2] == ["cmtwin", "tui"]:
                code, out = run_tui(command, env)
                err = ""
            else:
                r = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=900)
                code, out, err = r.returncode, r.stdout, r.stderr
            wall = time.perf_counter() - t0
            problem = None if code == want else f"exit {code}, the README says {want}"
            check = next((f for prefix, f in CHECKS.items() if command.startswith(prefix)), None)
            if problem is None and check is not None:
                try:
                    if check(out, err) is False:
                        problem = "its output does not show what its comment says"
                except Exception as exc:  # noqa: BLE001 - a failed check is reported, not raised
                    problem = f"its output does not show what its comment says ({exc!r})"
            mark = "ok  " if problem is None else "FAIL"
            print(f"{mark} {wall:6.1f} s  exit {code}  {command}", flush=True)
            if problem:
                failed += 1
                print(f"     {problem}\n     stdout: {out[-1500:]}\n     stderr: {err[-1500:]}", flush=True)
    print(f"{len(commands) - failed} of {len(commands)} commands of {readme.name} did what they say")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
