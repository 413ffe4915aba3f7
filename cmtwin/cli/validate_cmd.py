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
    from itertools import groupby

    from rich.markup import escape

    from cmtwin.cli.common import compact_table, console

    con = console()
    rows = []
    for c in checks:
        pred, err = c.cells()
        rows.append((escape(c.name), c.unit, f"{c.published:,.4g}", pred, err, c.bound(), c.verdict(), c))
    # one table per operator table / the headlines, its name as the title (with the unit when its rows share one);
    # the figures' columns as wide in every table, the case column takes the rest and wraps (never cut)
    cols = ("unit", "published", "twin", "error", "bound", "ok")
    widths = [max(len(col), *(len(r[k + 1]) for r in rows)) for k, col in enumerate(cols)]
    con.print("[bold]cmtwin validate: twin vs published[/]")
    for group, members in groupby(rows, key=lambda r: r[-1].group):
        members = list(members)
        units = {r[1] for r in members}
        keep = range(1 if len(units) == 1 else 0, len(cols))
        title = f"{group} ({next(iter(units))})" if len(units) == 1 else group
        con.print(f"[bold]{escape(title)}[/]")
        t = compact_table()
        room = con.width - sum(widths[k] + 2 for k in keep) - 1
        t.add_column("case", overflow="fold", width=max(16, min(room, max(len(r[0]) for r in members))))
        for k in keep:
            t.add_column(cols[k], justify="left" if cols[k] in ("unit", "ok") else "right", no_wrap=True,
                         width=widths[k])
        for name, unit, published, pred, err, bound, verdict, c in members:
            bad = c.ok is False
            cells = (unit, published, pred, f"[red]{err}[/]" if bad else err, bound, "[red]no[/]" if bad else verdict)
            t.add_row(name, *(cells[k] for k in keep))
        con.print(t)
    for item in LEGEND:
        con.print(f"[dim]{escape(item)}[/]")
    con.print(("[red]" if code else "[green]") + escape(summary(checks)) + "[/]")
    if written:
        con.print(f"[dim]wrote {escape(' and '.join(written))}[/]")
    return code
