"""The ``mqepi`` command line (typer + rich).

Every command is a thin twin of a library function; library errors (:class:`MqepiError`)
become one-line messages and exit status 1. ``python -m mqepi`` is the same program.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mqepi import __version__
from mqepi.errors import MqepiError
from mqepi.lake import LAKE_ENV, Lake

app = typer.Typer(
    name="mqepi",
    help="Which per-layer quantization of an LLM gives the most intelligence per joule.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lake_app = typer.Typer(help="Inspect and check the event lake.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")

out = Console()
err = Console(stderr=True)


class State:
    lake_root: Optional[str] = None


def _lake() -> Lake:
    return Lake(State.lake_root)


def edge(func):
    """Turn library errors into one-line messages and exit status 1 (the CLI edge)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MqepiError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def root(
    lake: Optional[str] = typer.Option(
        None, "--lake", envvar=LAKE_ENV, help="Lake root folder or URI [default: ./lake].", show_envvar=True
    ),
) -> None:
    """mqepi: per-layer quantization evaluated by energy per intelligence (EPI)."""
    State.lake_root = lake


@app.command()
def version() -> None:
    """Print the mqepi version."""
    out.print(f"mqepi {__version__}")


def print_frame(df, title: str | None = None) -> None:
    """Print a polars frame as a rich table."""
    table = Table(title=title, show_lines=False)
    for column in df.columns:
        table.add_column(column, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


# ------------------------------------------------------------------ lake


@lake_app.command("init")
@edge
def lake_init() -> None:
    """Create the lake folder and the zero-row seed file of every event type."""
    lake = _lake()
    written = lake.init()
    out.print(f"lake at {lake.uri}: {len(written)} seed files written")


@lake_app.command("verify")
@edge
def lake_verify() -> None:
    """Re-read every lake file; report schema violations, hash mismatches, duplicate ids
    and stray temporary files. Exit status 1 if anything is wrong."""
    lake = _lake()
    report = lake.verify()
    if report.ok:
        out.print(f"[green]ok[/]: {report.files_checked} files, {report.rows_checked} events checked in {lake.uri}")
        return
    table = Table(title=f"{len(report.problems)} problems in {lake.uri}")
    for column in ("kind", "path", "detail"):
        table.add_column(column, overflow="fold")
    for problem in report.problems:
        table.add_row(problem.kind, problem.path, problem.detail)
    out.print(table)
    err.print(f"[bold red]lake verify failed[/]: {len(report.problems)} problems ({report.files_checked} files checked)")
    raise typer.Exit(1)


@lake_app.command("stats")
@edge
def lake_stats() -> None:
    """Count events (distinct ids), files and bytes per event type and origin."""
    lake = _lake()
    if not lake.exists():
        raise MqepiError(f"no lake at {lake.uri}")
    print_frame(lake.stats(), title=f"lake {lake.uri}")


# ------------------------------------------------------------------ sql


@app.command("sql")
@edge
def sql_command(
    query: Optional[str] = typer.Argument(None, help="SQL to run with the lake's views loaded."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result to this file."),
    list_views: bool = typer.Option(False, "--views", help="List the views and their columns."),
    limit: int = typer.Option(100, help="Rows shown in table format (files get all rows)."),
) -> None:
    """Run a SQL query over the lake (DuckDB, with analysis/views.sql loaded)."""
    from mqepi import sql

    if fmt not in sql.FORMATS:
        raise MqepiError(f"--format {fmt!r} is not one of {', '.join(sql.FORMATS)}")
    con = sql.connect(_lake())
    if list_views:
        for view in sql.views(con):
            out.print(f"[bold]{view.name}[/]: " + ", ".join(f"{c} {t}" for c, t in view.columns), soft_wrap=True)
        return
    if not query:
        raise MqepiError("give a query, e.g. mqepi sql \"SELECT * FROM run\", or --views")
    result = sql.query(con, query)
    if fmt == "table":
        if output is not None:
            raise MqepiError("--output needs --format csv, json or parquet")
        import polars as pl

        df = pl.from_arrow(result)
        print_frame(df.head(limit))
        if df.height > limit:
            out.print(f"({df.height} rows, {limit} shown; use --limit or --format/--output)")
        return
    if output is None:
        if fmt == "parquet":
            raise MqepiError("--format parquet needs --output FILE")
        import polars as pl

        df = pl.from_arrow(result)
        sys.stdout.write(df.write_csv() if fmt == "csv" else df.write_json())
        return
    sql.export(result, fmt, output)
    out.print(f"wrote {result.num_rows} rows to {output}")


# ------------------------------------------------------------------ demo


@app.command()
@edge
def demo() -> None:
    """Run the embedded demo sweep end to end (what exists of it) and say what is missing."""
    from mqepi.demo import run_demo

    ok = run_demo(_lake(), out)
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
