"""``mqepi lake ...``: create, check and count the event lake."""

from __future__ import annotations

import typer
from rich.table import Table

from mqepi.cli._common import cell, edge, err, lake, out, print_frame, safe
from mqepi.errors import LakeError

app = typer.Typer(name="lake", help="Inspect and check the event lake.", no_args_is_help=True)


@app.command("init")
@edge
def lake_init() -> None:
    """Create the lake folder and the zero-row seed file of every event type."""
    lk = lake()
    written = lk.init()
    out.print(f"lake at {safe(lk.uri)}: {len(written)} seed files written", highlight=False, soft_wrap=True)


@app.command("verify")
@edge
def lake_verify() -> None:
    """Check the lake against its commit log and re-read every committed file; report lost,
    changed and uncommitted files, schema violations, hash mismatches, duplicate ids, run id
    collisions and stray temporary files. Exit status 1 if anything is wrong."""
    lk = lake()
    report = lk.verify()
    if report.ok:
        out.print(f"[green]ok[/]: {report.files_checked} files, {report.rows_checked} events checked in {safe(lk.uri)}",
                  highlight=False, soft_wrap=True)
        return
    table = Table(title=cell(f"{len(report.problems)} problems in {lk.uri}"))
    for column in ("kind", "path", "detail"):
        table.add_column(column, overflow="fold")
    for problem in report.problems:
        table.add_row(cell(problem.kind), cell(problem.path), cell(problem.detail))
    out.print(table)
    err.print(f"[bold red]lake verify failed[/]: {len(report.problems)} problems ({report.files_checked} files checked)")
    raise typer.Exit(1)


@app.command("stats")
@edge
def lake_stats() -> None:
    """Count events (distinct ids), files and bytes per event type and origin."""
    lk = lake()
    if not lk.exists():
        raise LakeError(f"no lake at {lk.uri}")
    print_frame(lk.stats(), title=f"lake {lk.uri}")
