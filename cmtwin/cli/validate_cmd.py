"""`cmtwin validate`: the twin beside every published figure, with the error of each."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare the twin with every published operator table and headline result")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write the report as Markdown (default: docs/validation.md when ./docs exists)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from cmtwin.twin.validate import all_checks, constants_markdown, markdown

    checks = all_checks()
    out = args.out or ("docs/validation.md" if Path("docs").is_dir() else None)
    if out:
        Path(out).write_text(markdown(checks))
        Path(out).with_name("calibration.md").write_text(constants_markdown())
    if args.format == "json":
        from cmtwin.cli.common import print_json

        print_json([{"group": c.group, "case": c.name, "published": c.published,
                     "twin": c.predicted if c.feasible else None, "infeasible": not c.feasible,
                     "error": c.error, "unit": c.unit, "within_bound": c.ok} for c in checks])
        return 0
    from rich.table import Table

    from cmtwin.cli.common import console

    con = console()
    t = Table(title="cmtwin validate: twin vs published", title_justify="left")
    for col in ("group", "case", "published", "twin", "error", "ok"):
        t.add_column(col, justify="right" if col in ("published", "twin", "error") else "left")
    for c in checks:
        bad = c.ok is False
        pred, err = c.cells()
        t.add_row(c.group, c.name, f"{c.published:,.4g}", pred, f"[red]{err}[/]" if bad else err,
                  "" if c.ok is None else ("yes" if c.ok else "[red]no[/]"))
    con.print(t)
    if out:
        con.print(f"[dim]wrote {out} and {Path(out).with_name('calibration.md')}[/]")
    return 0
