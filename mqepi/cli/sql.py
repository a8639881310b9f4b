"""``mqepi sql``: SQL over the lake's views (DuckDB), printed or written to a file."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import typer

from mqepi.cli._common import edge, lake, out, print_frame, safe, write_data
from mqepi.errors import QueryError
from mqepi.results import sql
from mqepi.results.snapshots import as_of_versions

app = typer.Typer()


@app.command("sql")
@edge
def sql_command(
    query: str | None = typer.Argument(None, help="SQL to run with the lake's views loaded."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the result to this file."),
    list_views: bool = typer.Option(False, "--views", help="List the views and their columns."),
    limit: int = typer.Option(100, help="Rows shown in table format (files get all rows)."),
    as_of: str | None = typer.Option(None, "--as-of", metavar="SNAPSHOT",
                                     help="Query the lake as it was: a snapshot folder (or its snapshot.json), "
                                          "'latest', or TYPE=VERSION,... table versions."),
) -> None:
    """Run a SQL query over the lake (DuckDB, with analysis/views.sql loaded); with --as-of, over
    the table versions a snapshot read (Delta time travel)."""
    if fmt not in sql.FORMATS:
        raise QueryError(f"--format {fmt!r} is not one of {', '.join(sql.FORMATS)}")
    lk = lake()
    if as_of is not None:
        lk = lk.at(as_of_versions(lk, as_of))
    con = sql.connect(lk)
    if list_views:
        for view in sql.views(con):
            out.print(f"[bold]{safe(view.name)}[/]: " + ", ".join(f"{safe(c)} {safe(t)}" for c, t in view.columns),
                      soft_wrap=True, highlight=False)
        return
    if not query:
        raise QueryError("give a query, e.g. mqepi sql \"SELECT * FROM run\", or --views")
    result = sql.query(con, query)
    if fmt == "table":
        if output is not None:
            raise QueryError("--output needs --format csv, json or parquet")
        df = pl.from_arrow(result)
        print_frame(df.head(limit))
        if df.height > limit:
            out.print(f"({df.height} rows, {limit} shown; use --limit or --format/--output)")
        return
    if output is None:
        if fmt == "parquet":
            raise QueryError("--format parquet needs --output FILE")
        df = pl.from_arrow(result)
        write_data(df.write_csv() if fmt == "csv" else df.write_json())
        return
    sql.export(result, fmt, output)
    out.print(f"wrote {result.num_rows} rows to {safe(output)}", highlight=False, soft_wrap=True)
