"""`cmtwin validate`: the twin beside every published figure, with the error of each.

Prints to stdout only; `--out DIR` also writes validation.md and calibration.md into DIR. It never writes into
the working directory by itself. Exit 3 when it ran fine but some row is outside its bound.
"""

from __future__ import annotations

import argparse

from cmtwin.validation.checks import EXIT_OUTSIDE_BOUNDS

EPILOG = f"""\
Each row: the published figure, the twin's, their error (twin - published) / published, the bound the row
is judged against (e.g. ±5 %; '-' for calibration rows that are not judged) and ok (yes within the bound,
no outside it or infeasible).

exit codes:
  0  every judged row is within its bound
  {EXIT_OUTSIDE_BOUNDS}  ran fine, some figures outside their bounds (or infeasible); the same with --format json
  2  bad input (e.g. --out names a file)
  1  internal error

Nothing is written unless --out is given: `cmtwin validate --out docs` regenerates docs/validation.md and
docs/calibration.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare the twin with every published operator table and headline result",
                       description="Compare the twin with every published operator table and headline result.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="also write validation.md and calibration.md into DIR (created if missing); "
                        "default: print to stdout only")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: %(default)s)")
    p.set_defaults(func=run)


def _out_dir(out: str):
    from pathlib import Path

    from cmtwin.errors import CmtwinError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CmtwinError(f"--out {out}: '{out}' is a file, and validate writes two reports (validation.md, "
                          "calibration.md) into a directory.", key="--out",
                          fix="name a directory (it is created if missing), e.g. --out validation-report")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CmtwinError(f"--out {out}: cannot create the directory ({exc.strerror or exc}).", key="--out",
                          fix="name a directory you can write to") from None
    return path


def run(args) -> int:
    from cmtwin.validation.checks import LEGEND, all_checks, constants_markdown, markdown, outside, summary

    out = _out_dir(args.out) if args.out else None  # refuse a bad --out before the minute of work
    checks = all_checks()
    code = EXIT_OUTSIDE_BOUNDS if outside(checks) else 0
    written = []
    if out is not None:
        for name, text in (("validation.md", markdown(checks)), ("calibration.md", constants_markdown())):
            (out / name).write_text(text, encoding="utf-8")
            written.append(str(out / name))
    if args.format == "json":
        from cmtwin.cli.common import print_json

        print_json([{"group": c.group, "case": c.name, "published": c.published,
                     "twin": c.predicted if c.feasible else None, "infeasible": not c.feasible,
                     "error": c.error, "unit": c.unit, "bound": c.tolerance, "within_bound": c.ok}
                    for c in checks])
        return code
    from rich.markup import escape
    from rich.table import Table

    from cmtwin.cli.common import console

    con = console()
    t = Table(title="cmtwin validate: twin vs published", title_justify="left")
    t.add_column("case", overflow="fold")  # long conditions wrap, never cut
    for col in ("unit", "published", "twin", "error", "bound", "ok"):
        t.add_column(col, justify="left" if col in ("unit", "ok") else "right", no_wrap=True)
    group = None
    for c in checks:
        if c.group != group:  # one heading row per operator table / the headlines
            if group is not None:
                t.add_section()
            group = c.group
            t.add_row(f"[bold]{escape(group)}[/]")
        bad = c.ok is False
        pred, err = c.cells()
        t.add_row(escape(c.name), c.unit, f"{c.published:,.4g}", pred,
                  f"[red]{err}[/]" if bad else err, c.bound(), "[red]no[/]" if bad else c.verdict())
    con.print(t)
    for item in LEGEND:
        con.print(f"[dim]{escape(item)}[/]")
    con.print(("[red]" if code else "[green]") + escape(summary(checks)) + "[/]")
    if written:
        con.print(f"[dim]wrote {escape(' and '.join(written))}[/]")
    return code
