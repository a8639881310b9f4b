"""``mqepi submit`` and ``mqepi ingest``: community bundles (see docs/community.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from mqepi.cli._common import cell, edge, err, lake, out, safe, split_list
from mqepi.community.ingest import ingest
from mqepi.community.manifest import LICENCES, origin_for
from mqepi.community.problems import BundleRejected, CommunityError, short
from mqepi.community.submit import build_bundle

app = typer.Typer()


@app.command("submit")
@edge
def submit_command(
    runs: list[str] = typer.Option(..., "--runs", "-r", help="Run id to include; repeat the option or separate ids by commas."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Bundle to write: a new folder, or a file ending in .zip."),
    submitter: str = typer.Option(..., "--submitter", envvar="MQEPI_SUBMITTER", show_envvar=True,
                                  help="Your submitter id, a lowercase slug; events become origin community/<id>."),
    contact: str = typer.Option(..., "--contact", envvar="MQEPI_CONTACT", show_envvar=True,
                                help="How to reach you (e-mail or URL)."),
    licence: str = typer.Option("CC-BY-4.0", "--licence", help=f"Data licence: {' or '.join(LICENCES)}."),
    name: str | None = typer.Option(None, "--name", help="Your name or group, for the manifest."),
    hardware: Path | None = typer.Option(
        None, "--hardware",
        help='JSON file {"nodes": [{"name", "description", "power_min_w", "power_max_w"}]}; '
             "without it, every node in the data, 0 to --node-max-w W."),
    node_max_w: float = typer.Option(50.0, "--node-max-w", help="Stated maximum power per node when --hardware is not given."),
    meter_calibration: str = typer.Option("not stated", "--meter-calibration", help="How and when the meter was calibrated."),
    llama_cpp_commit: str | None = typer.Option(
        None, "--llama-cpp-commit", help="llama.cpp commit of the data; without it, taken from the quantization events."),
    base_sha256: str | None = typer.Option(
        None, "--base-sha256", help="sha256 of the base model; without it, taken from the quantization events."),
) -> None:
    """Build a community bundle (manifest.json + one Parquet file per event type) from runs
    of the local lake, with their configurations, re-stamped origin community/<submitter>."""
    ids = split_list(runs)
    hw = None
    lk = lake()
    if hardware is not None:
        try:
            hw = json.loads(hardware.read_text())
        except (OSError, ValueError) as exc:
            raise CommunityError(f"--hardware {hardware}: cannot read JSON: {exc}") from None
    path = build_bundle(
        lk, ids, out_path, submitter=submitter, contact=contact, licence=licence, submitter_name=name, hardware=hw,
        meter_calibration=meter_calibration, node_max_w=node_max_w, llama_cpp_commit=llama_cpp_commit,
        base_sha256=base_sha256,
    )
    out.print(f"bundle {safe(path)}: {len(set(ids))} runs from {safe(lk.uri)}, origin {safe(origin_for(submitter))}; "
              f"checked with the ingest rules", highlight=False, soft_wrap=True)


@app.command("ingest")
@edge
def ingest_command(
    bundle: Path = typer.Argument(..., help="A bundle: a folder or a .zip file."),
    quarantine: Path | None = typer.Option(
        None, "--quarantine", "-q", help="Copy a rejected bundle and its report.json into this folder (outside the lake)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; write nothing."),
) -> None:
    """Validate a community bundle completely, then append it to the lake (all or nothing).
    A rejected bundle is listed problem by problem and nothing is written; exit status 1."""
    lk = lake()
    try:
        result = ingest(bundle, lk, quarantine_dir=quarantine, dry_run=dry_run)
    except BundleRejected as exc:
        table = Table(title=cell(f"{len(exc.report.problems)} problems in {bundle}"))
        for column in ("check", "file", "column", "row", "value", "detail"):
            table.add_column(column, overflow="fold")
        for p in exc.report.problems:
            cells = (p.check, p.file or "", p.column or "", "" if p.row is None else str(p.row),
                     "" if p.value is None else short(p.value), p.detail)
            table.add_row(*(cell(c) for c in cells))  # bundle text: never markup, controls made visible
        out.print(table)
        if exc.quarantined_to is not None:
            err.print(f"quarantined to {safe(exc.quarantined_to)}", highlight=False, soft_wrap=True)
        raise
    if result.status == "valid":
        out.print(f"[green]valid[/]: {result.events} events from {safe(result.origin)}; nothing written (--dry-run)",
                  highlight=False, soft_wrap=True)
    elif result.status == "already-ingested":
        out.print(f"already ingested: every event of {safe(result.bundle)} ({result.events}) is in {safe(lk.uri)}; "
                  "nothing written", highlight=False, soft_wrap=True)
    else:
        written = ", ".join(f"{t} {n}" for t, n in result.rows_written.items() if n)
        out.print(f"[green]ingested[/] {safe(result.bundle)} as {safe(result.origin)}: {sum(result.rows_written.values())} "
                  f"events written to {safe(lk.uri)} ({safe(written or 'none new')})", highlight=False, soft_wrap=True)
