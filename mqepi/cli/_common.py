"""What every command module shares: the lake option's value, the consoles, the error edge,
progress and table printing.

Library errors (:class:`~mqepi.errors.MqepiError`) become one-line messages and exit status 1
here, and only here (:func:`edge`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mqepi.errors import MqepiError
from mqepi.lake.store import Lake
from mqepi.results import sql

out = Console()
err = Console(stderr=True)

#: What every simulated power figure printed by a command carries.
SIMULATED_NOTE = "[bold yellow]SIMULATED[/]: power_source=simulated; these numbers are not measurements."


class State:
    """Options of the root command (``mqepi --lake PATH ...``), set before any command runs."""

    lake_root: str | None = None


def lake() -> Lake:
    """The lake named by ``--lake`` / ``$MQEPI_LAKE`` (default ``./lake``)."""
    return Lake(State.lake_root)


def edge(func: Callable) -> Callable:
    """Turn library errors into one-line messages and exit status 1 (the CLI edge)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MqepiError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def print_frame(df: pl.DataFrame, title: str | None = None) -> None:
    """Print a polars frame as a rich table."""
    table = Table(title=title, show_lines=False)
    for column in df.columns:
        table.add_column(column, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


def say(line: str) -> None:
    """Print one progress line as it is (no markup, no highlighting)."""
    out.print(line, highlight=False, markup=False)


def progress_printer() -> Callable[[str], None]:
    """A progress callback that keeps long tool output to a one-line live status; call its
    ``stop()`` when done."""
    status = err.status("working ...")
    status.start()

    def progress(line: str) -> None:
        if line:
            status.update(line[:120])

    progress.stop = status.stop  # type: ignore[attr-defined]
    return progress


def query_frame(sql_text: str, params: list | None = None) -> pl.DataFrame:
    """Run ``sql_text`` (with ``?`` parameters) over the lake's views; a polars frame."""
    return pl.from_arrow(sql.query(sql.connect(lake()), sql_text, params))


def split_list(items: list[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: a repeatable option that also takes commas."""
    return [x.strip() for item in items for x in item.split(",") if x.strip()]
