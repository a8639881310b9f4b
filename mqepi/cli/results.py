"""``mqepi recompute`` and ``mqepi report``: the materialised frontier snapshot and the report."""

from __future__ import annotations

from pathlib import Path

import typer

from mqepi.cli._common import edge, lake, out, safe, say
from mqepi.results.report.labels import power_banner
from mqepi.results.report.write import build_report
from mqepi.results.snapshots import default_out_dir, recompute

app = typer.Typer()


@app.command("recompute")
@edge
def recompute_command(
    out_dir: Path | None = typer.Option(None, "--out", help="Derived-tables folder [default: derived/ beside the lake]."),
) -> None:
    """Rebuild the materialised tables (run_metrics, config_summary, matched_pairs,
    pareto_frontier) into a snapshot that records the lake state it came from; reuse the
    last snapshot when the lake has not changed."""
    lk = lake()
    snap = recompute(lk, out_dir or default_out_dir(lk), progress=say)
    out.print(f"{'reused' if snap.reused else 'wrote'} {safe(snap.path)}: {snap.runs_total} runs ({snap.runs_new} new), "
              f"lake state {snap.lake_state_sha256[:12]} ({snap.lake_files} files), {snap.seconds:.2f} s", highlight=False,
              soft_wrap=True)


@app.command("report")
@edge
def report_command(
    out_dir: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for report.md, report.html and figures/."),
    summary_only: bool = typer.Option(False, "--summary", help="Print the answers to RQ1-RQ5 only; write nothing."),
    origin: str = typer.Option("all", "--origin",
                               help="lab, community (every community/<id>) or all; groups are always shown separately."),
    bandwidth_gbs: float | None = typer.Option(
        None, "--bandwidth-gbs",
        help="Memory bandwidth of a node in GB/s, for the RQ5 decode roofline (without it: unknown, not computed)."),
) -> None:
    """Answer RQ1-RQ5 from the analysis views and write report.md, a self-contained
    report.html and the figures (PNG + SVG); every number names its power source."""
    lk = lake()
    built = build_report(lk, out_dir, origin=origin, bandwidth_gbs=bandwidth_gbs, write=not summary_only)
    if built.files is None:
        out.print(safe(built.summary, keep="\n"), highlight=False, soft_wrap=True, end="")
        return
    files = built.files
    severity, banner = power_banner(built.data.power_sources())
    style = {"simulated": "bold red", "measured": "green"}.get(severity, "bold")
    out.print(f"[{style}]{safe(banner)}[/]", highlight=False, soft_wrap=True)
    out.print(f"report of {len(built.data.groups())} groups from {safe(lk.uri)}:", highlight=False, soft_wrap=True)
    out.print(f"  {safe(files.markdown)}", highlight=False, soft_wrap=True)
    out.print(f"  {safe(files.html)} (self-contained)", highlight=False, soft_wrap=True)
    if files.figures:
        out.print(f"  {len(files.figures)} figure files in {safe(files.figures[0].parent)}", highlight=False,
                  soft_wrap=True)
