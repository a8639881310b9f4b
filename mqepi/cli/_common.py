"""What every command module shares: the lake option's value, the consoles, the error edge,
progress and table printing, and the one rule for printing untrusted text.

Library errors (:class:`~mqepi.errors.MqepiError`) become one-line messages and exit status 1
here, and only here (:func:`edge`).

Every value a command prints may come from a community bundle, a file or a tool's output, so
every printing path goes through :func:`plain`: control characters (C0, DEL, C1) and the
invisible characters that reorder or break lines become visible escapes (``\\x1b``), so
nothing printed can move the cursor, clear the screen or set the terminal's title. A value
put into a rich markup string goes through :func:`safe` (``plain`` + markup escaped), a table
cell or title through :func:`cell` (a rich ``Text``, never read as markup).
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from mqepi.errors import MqepiError
from mqepi.lake.store import Lake
from mqepi.progress import Count, about_left
from mqepi.results import sql

#: Into a pipe or a file, lines are never wrapped (rich would wrap at 80 columns mid-sentence).
out = Console(soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())

#: What every simulated power figure printed by a command carries.
SIMULATED_NOTE = "[bold yellow]SIMULATED[/]: power_source=simulated; these numbers are not measurements."


#: Characters a terminal may act on or that hide or reorder text: C0 controls, DEL, C1
#: controls, the Arabic letter mark, left-to-right / right-to-left marks, the line and
#: paragraph separators, and the bidi embeddings, overrides and isolates.
_HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def plain(value: object, keep: str = "") -> str:
    """``value`` as text that shows as itself on a terminal: every control character (C0,
    DEL, C1) and invisible bidi or line-separator character becomes its escape (``\\x1b``,
    ``\\u202e``); characters in ``keep`` (``"\\n"`` for a multi-line message) stay."""
    text = value if isinstance(value, str) else str(value)
    return _HIDDEN.sub(lambda m: m.group() if m.group() in keep else _escaped(m.group()), text)


def _escaped(char: str) -> str:
    """``\\xNN`` for a character below U+0100, ``\\uNNNN`` otherwise."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object, keep: str = "") -> str:
    """:func:`plain`, with rich markup escaped: for a value put into a markup string."""
    return escape(plain(value, keep))


def cell(value: object, style: str = "") -> Text:
    """:func:`plain` as a rich ``Text`` (never read as markup): a table cell, title or header;
    None is empty."""
    return Text("" if value is None else plain(value), style=style)


def write_data(data: str) -> None:
    """Write CSV / JSON output to stdout: as is into a pipe or file, with control characters
    made visible (:func:`plain`, newlines kept) on a terminal; it always ends with a newline."""
    if data and not data.endswith("\n"):
        data += "\n"
    if sys.stdout.isatty():
        data = plain(data, keep="\n")
    sys.stdout.write(data)


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
            err.print(Text.assemble(("error:", "bold red"), " ", plain(str(exc), keep="\n\t")), highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def print_frame(df: pl.DataFrame, title: str | None = None) -> None:
    """Print a polars frame as a rich table; every title, header and cell through :func:`cell`."""
    table = Table(title=None if title is None else cell(title), show_lines=False)
    for column in df.columns:
        table.add_column(cell(column), overflow="fold")
    for row in df.iter_rows():
        table.add_row(*(cell(v) for v in row))
    out.print(table)


def say(line: str, console: Console | None = None) -> None:
    """Print one progress line as text (:func:`plain`; no markup, no highlighting), on ``out``
    or on ``console``."""
    (console or out).print(plain(line), highlight=False, markup=False, soft_wrap=True)


def progress_printer() -> Callable[[str], None]:
    """A progress callback that keeps long tool output to a one-line live status; call its
    ``stop()`` when done."""
    status = err.status("working ...")
    status.start()

    def progress(line: str) -> None:
        if line:
            status.update(cell(line[:120]))

    progress.stop = status.stop  # type: ignore[attr-defined]
    return progress


@contextlib.contextmanager
def progress_lines(console: Console | None = None, *, indent: str = "", forecast_s: float | None = None,
                   keep_lines: bool = True) -> Iterator[Callable[[str], None]]:
    """The progress callback of a long command (a sweep, the demo, an evaluation), for the
    length of the ``with``; ``console`` defaults to :data:`out`, each line follows ``indent``.

    At a terminal: every line printed as :func:`say` prints it and, below them, a transient rich
    Progress: a bar of a sweep's runs (done / total, and the time left: the sweep's estimate from
    the runs it has finished, before the first one ``forecast_s``, the planner's forecast, both
    counted down) and a line of the questions the current benchmark window has scored
    (:class:`~mqepi.progress.Count` lines). With ``keep_lines=False`` the lines (a tool's output
    among them) show in a live status line instead, warnings excepted. Anywhere else (a pipe, a
    file, a CI log): the plain unwrapped lines of :func:`say`, of a window's question counts only
    the first past each quarter of its questions (a dumb terminal, TERM=dumb, gets these too)."""
    console = console or out
    if not console.is_terminal or console.is_dumb_terminal:
        yield _PlainLines(console, indent)
        return
    bars = _Bars(console, indent, forecast_s, keep_lines)
    try:
        yield bars
    finally:
        bars.stop()


class _PlainLines:
    """Progress into a pipe or a file: each line as :func:`say` prints it; of a window's
    question counts, only the first past each quarter."""

    def __init__(self, console: Console, indent: str):
        self.console, self.indent = console, indent
        self.done = self.quarter = 0

    def __call__(self, line: str) -> None:
        if isinstance(line, Count) and line.kind == "questions":
            if line.done <= self.done:  # a new window
                self.quarter = 0
            self.done, quarter = line.done, 4 * line.done // max(line.total, 1)
            if quarter <= self.quarter:
                return
            self.quarter = quarter
        else:
            self.done = self.quarter = 0
        say(self.indent + line, self.console)


class _Bars:
    """Progress at a terminal: lines printed above a transient rich Progress with rows for the
    runs, the current window's questions and (``keep_lines=False``) the latest line."""

    def __init__(self, console: Console, indent: str, forecast_s: float | None, keep_lines: bool):
        self.console, self.indent, self.forecast_s, self.keep_lines = console, indent, forecast_s, keep_lines
        self.bars = Progress(TextColumn("{task.description}", markup=False), _Bar(bar_width=30), _TimeLeft(),
                             console=console, transient=True, refresh_per_second=4)
        self.t0 = time.monotonic()
        self.rows: dict[str, TaskID] = {}
        self.lock = threading.Lock()  # the sweep's prefetch thread reports too
        self.live = self.closed = False

    def __call__(self, line: str) -> None:
        with self.lock:
            if self.closed:
                say(self.indent + line, self.console)
                return
            self._show(line)
            if self.live:
                self.bars.refresh()  # lines come seldom (the library throttles its counts): shown at once

    def _show(self, line: str) -> None:
        kind = line.kind if isinstance(line, Count) else None
        if kind == "questions":
            self._row("questions", line, completed=line.done, total=line.total)
            return
        if kind == "runs":
            left_s, at = line.left_s, time.monotonic()
            if left_s is None and line.done == 0 and self.forecast_s is not None:  # none finished yet
                left_s, at = self.forecast_s, self.t0
            self._row("runs", f"{line.done}/{line.total} runs", completed=line.done, total=line.total,
                      left_s=left_s, at=at)
        if "questions" in self.rows:  # the window has ended
            self.bars.update(self.rows["questions"], visible=False)
        if self.keep_lines or line.lstrip().startswith("warning"):
            say(self.indent + line, self.console)
        else:
            self._row("status", line[:160], total=None)

    def _row(self, name: str, text: str, **fields) -> None:
        if not self.live:
            self.bars.start()
            self.live = True
        description = plain(self.indent + text)
        if name in self.rows:
            self.bars.update(self.rows[name], description=description, visible=True, **fields)
        else:
            self.rows[name] = self.bars.add_task(description, **fields)

    def stop(self) -> None:
        with self.lock:
            self.closed = True
            if self.live:
                self.bars.stop()


class _Bar(BarColumn):
    """A bar for a row with a total; nothing for a status line."""

    def render(self, task: Task):
        return super().render(task) if task.total else Text("")


class _TimeLeft(ProgressColumn):
    """The time left of a row that has an estimate, counted down since it was made."""

    def render(self, task: Task) -> Text:
        left_s = task.fields.get("left_s")
        if left_s is None:
            return Text("")
        left_s -= time.monotonic() - task.fields["at"]
        return Text(about_left(left_s) if left_s >= 1 else "past the estimate", style="progress.remaining")


def query_frame(sql_text: str, params: list | None = None) -> pl.DataFrame:
    """Run ``sql_text`` (with ``?`` parameters) over the lake's views; a polars frame."""
    return pl.from_arrow(sql.query(sql.connect(lake()), sql_text, params))


def split_list(items: list[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: a repeatable option that also takes commas."""
    return [x.strip() for item in items for x in item.split(",") if x.strip()]


#: The one spelling of benchmarks and question counts, for every command that measures accuracy.
BENCH_HELP = "NAME[=QUESTIONS|all], repeatable or comma-separated (mmlu, arc_challenge, hellaswag) [default: mmlu=20]."


def parse_bench(items: list[str]) -> dict[str, int | None]:
    """``["mmlu=200", "hellaswag=all"]`` -> ``{"mmlu": 200, "hellaswag": None}``."""
    out: dict[str, int | None] = {}
    for item in split_list(items):
        name, _, n = item.partition("=")
        if not name:
            raise MqepiError(f"--bench {item!r}: expected NAME or NAME=QUESTIONS (e.g. mmlu=200, hellaswag=all)")
        if n in ("", "all"):
            out[name] = None
        elif n.isdigit() and int(n) > 0:
            out[name] = int(n)
        else:
            raise MqepiError(f"--bench {item!r}: QUESTIONS must be a positive number or 'all', not {n!r}")
    return out
