"""The ``mqepi`` command line (typer + rich): one module per command group.

Every command is a thin twin of a library function. Each module declares its own
``typer.Typer`` named ``app``: a group (``mqepi lake ...``) when the Typer has a name, top-level
commands (``mqepi sql``) when it has none; this module adds them all to the root the same way.
Library errors become one-line messages and exit status 1 (:func:`mqepi.cli._common.edge`).
``python -m mqepi`` is the same program.
"""

from __future__ import annotations

import typer

from mqepi import __version__
from mqepi.cli import cluster, community, demo, evaluate, lake, maps, meter, quant, results, search, serve, sql, sweep
from mqepi.cli._common import State, out
from mqepi.lake.store import LAKE_ENV

app = typer.Typer(
    name="mqepi",
    help="Which per-layer quantization of an LLM gives the most intelligence per joule.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: every default shown, "[...]" never eaten as markup
)

#: Command modules in the order ``mqepi --help`` lists them.
MODULES = (demo, sweep, search, results, sql, lake, maps, quant, evaluate, cluster, meter, community, serve)
for _module in MODULES:
    app.add_typer(_module.app)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"mqepi {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    lake_root: str | None = typer.Option(
        None, "--lake", envvar=LAKE_ENV, help="Lake root folder or URI [default: ./lake].", show_envvar=True
    ),
    _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                  help="Print the mqepi version and exit."),
) -> None:
    """mqepi: per-layer quantization evaluated by energy per intelligence (EPI)."""
    State.lake_root = lake_root


@app.command()
def version() -> None:
    """Print the mqepi version."""
    out.print(f"mqepi {__version__}")


def main() -> None:
    """Console entry point."""
    app()
