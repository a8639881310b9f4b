"""``mqepi report``: RQ1-RQ5, tables and figures from the lake (see docs/report.md).

A plain function with a typer signature; :mod:`mqepi.cli` registers it, wrapped in its
``edge`` (library errors become one-line messages and exit status 1)::

    app.command("report")(edge(report_command))
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report_command(
    out_dir: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for report.md, report.html and figures/."),
    summary_only: bool = typer.Option(False, "--summary", help="Print the answers to RQ1-RQ5 only; write nothing."),
    origin: str = typer.Option("all", "--origin",
                               help="lab, community (every community/<id>) or all; groups are always shown separately."),
    bandwidth_gbs: Optional[float] = typer.Option(
        None, "--bandwidth-gbs", help="Memory bandwidth of a node in GB/s, for the RQ5 decode roofline (without it: unknown, not computed)."),
) -> None:
    """Answer RQ1-RQ5 from the analysis views and write report.md, a self-contained
    report.html and the figures (PNG + SVG); every number names its power source."""
    from mqepi.cli import _lake

    run_report(_lake(), out_dir=out_dir, summary_only=summary_only, origin=origin, bandwidth_gbs=bandwidth_gbs)


def run_report(lake, *, out_dir: Path = Path("report"), summary_only: bool = False, origin: str = "all",
               bandwidth_gbs: float | None = None, console=None) -> None:
    """The command's work for a given lake (also used by tests and the demo)."""
    from rich.markup import escape

    from mqepi import report

    if console is None:
        from mqepi.cli import out as console
    if origin not in report.ORIGINS:
        raise report.ReportError(f"--origin {origin!r} is not one of {', '.join(report.ORIGINS)}")
    data = report.collect(lake, origin=origin, bandwidth_gbs=bandwidth_gbs)
    analyses = report.analyse(data)
    if summary_only:
        console.print(escape(report.summary(data, analyses)), highlight=False, soft_wrap=True, end="")
        return
    files = report.write_report(data, out_dir, analyses)
    severity, banner = report.power_banner(data)
    style = {"simulated": "bold red", "measured": "green"}.get(severity, "bold")
    console.print(f"[{style}]{escape(banner)}[/]", highlight=False, soft_wrap=True)
    console.print(f"report of {len(data.groups())} groups from {escape(str(getattr(lake, 'uri', lake)))}:", highlight=False,
                  soft_wrap=True)
    console.print(f"  {escape(str(files.markdown))}", highlight=False, soft_wrap=True)
    console.print(f"  {escape(str(files.html))} (self-contained)", highlight=False, soft_wrap=True)
    if files.figures:
        console.print(f"  {len(files.figures)} figure files in {escape(str(files.figures[0].parent))}", highlight=False,
                      soft_wrap=True)
