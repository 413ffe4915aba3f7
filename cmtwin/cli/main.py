"""The `cmtwin` console script: one argparse parser, one module per verb family.

Each module in cmtwin.cli exposes `register(subparsers)`, adding its verbs with `set_defaults(func=...)`.
A verb returns an exit code (or None for 0). CmtwinError -> exit 2 with one paragraph and no traceback;
anything else -> exit 1 (traceback only with CMTWIN_FULL_ERROR=1).
"""

from __future__ import annotations

import argparse
import os
import sys

from cmtwin import __version__
from cmtwin.errors import CmtwinError

VERBS = {"plan": "plan_cmd", "simulate": "simulate_cmd", "search": "search_cmd", "execute": "execute_cmd",
         "calibrate": "calibrate_cmd", "tui": "tui_cmd", "query": "store_cmds", "runs": "store_cmds",
         "db": "store_cmds", "compare": "compare_cmd", "config": "config_cmd", "export": "export_cmd",
         "import": "launch_cmd", "validate": "validate_cmd"}
"""Each verb's module (cmtwin/cli/*_cmd.py, store_cmds.py), in the order `cmtwin --help` lists them. A command line
naming a verb builds the parser of that verb alone (importing one module, not all; `cmtwin --help` and an unknown
verb build them all). tests/test_cli.py checks it against what the modules register. Each module must keep heavy
imports (torch, textual, matplotlib) inside its handlers."""


def _verb_modules() -> list[str]:
    """Every verb module: VERBS' in their order, then any other cmtwin/cli/*_cmd*.py (which the test then names)."""
    from pathlib import Path

    listed = list(dict.fromkeys(VERBS.values()))
    found = {p.stem for p in Path(__file__).parent.glob("*_cmd*.py")}
    return [f"cmtwin.cli.{m}" for m in listed + sorted(found - set(listed))]


def _verb_of(argv: list[str]) -> str | None:
    """The verb of a command line (its first word that is no option: the top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of every verb, or of `verb` alone when it is one of VERBS."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="cmtwin",
        description="Plan, predict and check deployments of giant MoE models on AI supernodes.",
        epilog="Overrides are Hydra's: key=value, +group=option, ~key. Example: cmtwin plan +deployment=r1_ep320",
    )
    parser.add_argument("--version", action="version", version=f"cmtwin {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in [f"cmtwin.cli.{VERBS[verb]}"] if verb in VERBS else _verb_modules():
        importlib.import_module(name).register(sub)
    return parser


def full_errors() -> bool:
    return os.environ.get("CMTWIN_FULL_ERROR", "") not in ("", "0")


def report_error(exc: BaseException) -> None:
    """One paragraph on stderr, no traceback."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True, highlight=False).print(Text.assemble(("error: ", "bold red"), str(exc)))


def utf8_output() -> None:
    """Make stdout and stderr UTF-8 where the console says otherwise (a C/POSIX locale, PYTHONIOENCODING=ascii,
    a Windows code page): sources cite e.g. 'paper §3', and a table has ± and box characters. Streams that are
    already UTF-8, or cannot be reconfigured (a test's capture), are left as they are."""
    import codecs

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        try:
            if encoding and codecs.lookup(encoding).name != "utf-8" and hasattr(stream, "reconfigure"):
                stream.reconfigure(encoding="utf-8")
        except (LookupError, ValueError, OSError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    utf8_output()
    parser = build_parser(_verb_of(sys.argv[1:] if argv is None else argv))
    # Overrides may come before or after options (`plan --format json decode.ep=32`): argparse stops a
    # positional list at the first option, so the rest arrive as extras and join the overrides here.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    try:
        if getattr(args, "multirun", False):
            from cmtwin.cli.sweep import multirun

            code = multirun(args)
        else:
            code = args.func(args)
    except CmtwinError as exc:
        if full_errors():
            raise
        report_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cmtwin query ... | head`: the reader left; stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141  # 128 + SIGPIPE
    except Exception as exc:  # noqa: BLE001 - the last line of defence for an internal error
        if full_errors():
            raise
        report_error(
            RuntimeError(
                f"internal error ({type(exc).__name__}: {exc}). This is a bug in cmtwin; "
                "rerun with CMTWIN_FULL_ERROR=1 for the traceback and report it."
            )
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
