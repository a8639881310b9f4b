"""``mqepi sql``: SQL over the lake's views (DuckDB), printed or written to a file."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import typer

from mqepi.cli._common import edge, err, lake, out, print_frame, progress_printer, safe, say, write_data
from mqepi.errors import QueryError
from mqepi.results import sql
from mqepi.results.snapshots import PROJECTED_VIEWS, as_of_versions, projection, snapshot_files

app = typer.Typer()


def _connect(lk, query: str | None, live: bool):
    """A connection for ``query``: its derived views read the snapshot of the lake's state
    (:func:`mqepi.results.snapshots.projection`) unless ``live``, the query sets mqepi_*
    tunables (snapshots hold the defaults) or it names no derived view."""
    snapshot = None
    if not live and query and re.search(r"\bSET\s+VARIABLE\s+mqepi_", query, re.I):
        live = True
        say("the query sets mqepi_* tunables: evaluating the live views (as --live)", err)
    if not live and query and sql.reads(query, PROJECTED_VIEWS):
        progress = progress_printer()
        try:
            snapshot = projection(lk, progress=progress)
        finally:
            progress.stop()
    con = sql.connect(lk, projected={v: snapshot.tables[v] for v in PROJECTED_VIEWS} if snapshot else None,
                      files=snapshot_files(lk, snapshot) if snapshot else None)
    if snapshot is not None and not snapshot.reused:
        say(f"derived views: snapshot {snapshot.path.name} ({snapshot.runs_new} runs recomputed, "
            f"{snapshot.seconds:.1f} s)", err)
    return con


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
    live: bool = typer.Option(False, "--live", help="Evaluate every view from the raw events (slow on a large "
                                                     "lake) instead of reading the derived views' snapshot."),
) -> None:
    """Run a SQL query over the lake (DuckDB, with the analysis SQL loaded); with --as-of, over
    the table versions a snapshot read (Delta time travel).

    The derived views (run_energy, run_accuracy, run_metrics, config_summary, matched_pairs,
    pareto_frontier) read the latest snapshot of the derived tables when it is of the lake's
    current state, after an incremental recompute when it is not (with --as-of: a snapshot
    of that state, else the live views); --live evaluates them from the raw events. The
    answer is the same either way."""
    if fmt not in sql.FORMATS:
        raise QueryError(f"--format {fmt!r} is not one of {', '.join(sql.FORMATS)}")
    lk = lake()
    if as_of is not None:
        lk = lk.at(as_of_versions(lk, as_of))
    con = _connect(lk, query if not list_views else None, live)
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
        write_data(sql.flat(df).write_csv() if fmt == "csv" else df.write_json())
        return
    sql.export(result, fmt, output)
    out.print(f"wrote {result.num_rows} rows to {safe(output)}", highlight=False, soft_wrap=True)
