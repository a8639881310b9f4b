"""``mqepi lake ...``: create, check, count, compact, vacuum, list and migrate the event lake."""

from __future__ import annotations

import typer
from rich.table import Table

from mqepi.cli._common import cell, edge, err, lake, out, print_frame, safe, say, write_data
from mqepi.errors import LakeError
from mqepi.lake import compact
from mqepi.lake.migrate import migrate
from mqepi.results.sql import committed_files

app = typer.Typer(name="lake", help="Inspect and check the event lake.", no_args_is_help=True)


@app.command("init")
@edge
def lake_init() -> None:
    """Create the lake: one append-only Delta table per event type, each with the zero-row seed
    file of its current schema version. Run it once before several writers share a lake."""
    lk = lake()
    written = lk.init()
    out.print(f"lake at {safe(lk.uri)}: {len(written)} seed files written", highlight=False, soft_wrap=True)


@app.command("verify")
@edge
def lake_verify() -> None:
    """Check every table's Delta log and re-read and re-hash every active file; report lost,
    changed and uncommitted files, incomplete transactions, schema violations, hash mismatches,
    duplicate ids, run id collisions and stray temporary files. Exit status 1 if anything is
    wrong."""
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
    """Count events (distinct ids), active files, bytes and the table version per event type and origin."""
    lk = lake()
    if not lk.exists():
        raise LakeError(f"no lake at {lk.uri}")
    print_frame(lk.stats(), title=f"lake {lk.uri}")


@app.command("migrate")
@edge
def lake_migrate(
    old: str = typer.Argument(..., metavar="OLD", help="The lake in the old layout (hive folders per run, _log/commits.jsonl)."),
    new: str = typer.Argument(..., metavar="NEW", help="The new (Delta) lake to create: an empty or missing folder, or one an "
                              "interrupted migration of OLD left."),
) -> None:
    """Copy a lake of the layout before Delta Lake (OLD) into a new lake (NEW): every committed
    event, with its event id and origin; then check both hold the same event ids and origins
    per type and that NEW passes lake verify. Files OLD's log never committed are not
    migrated. Re-running completes an interrupted migration; a NEW holding events that are
    not OLD's is refused. OLD is only read (the global --lake option is not used). Prints per
    event type: files, rows read, distinct ids, dups (rows repeating an id: dropped), written,
    had (events NEW held already), skipped (files of OLD no commit names), the check; then
    the events per origin."""
    report = migrate(old, new, progress=lambda line: say(line, err))
    print_frame(report.frame(), title=f"lake migrate {report.old} -> {report.new}")
    print_frame(report.origins_frame(), title="events by origin")
    notes = [f"{len(report.uncommitted)} uncommitted files of the old lake not migrated"] if report.uncommitted else []
    if report.torn_commits:
        notes.append(f"{report.torn_commits} torn commit lines in the old log (their files are not data)")
    if not report.old_logged:
        notes.append("the old lake had no commit log: every ev-*.parquet was read as data")
    out.print(f"[green]ok[/]: {sum(r.events_new for r in report.types.values())} events migrated to {safe(report.new)}, "
              f"ids and origins verified, lake verify clean ({report.files_checked} files)"
              + "".join(f"; {safe(n)}" for n in notes), highlight=False, soft_wrap=True)


@app.command("compact")
@edge
def lake_compact(
    event_type: list[str] = typer.Option(None, "--type", "-t", help="Event types to compact (repeatable); default: all."),
    min_files: int = typer.Option(compact.MIN_FILES, help="Rewrite a partition (model, config) once it has this many "
                                  "small files."),
    small_mb: float = typer.Option(compact.SMALL_BYTES / 2**20, help="Files smaller than this (MB) are small."),
    target_mb: float = typer.Option(compact.TARGET_BYTES / 2**20, help="Size (MB) of the files written."),
) -> None:
    """Merge each partition's small files into large ones, one new version per table. Every row
    is kept as it was; the old files stay reachable by time travel (`mqepi sql --as-of`) until
    an explicit `mqepi lake vacuum`."""
    lk = lake()
    if not lk.exists():
        raise LakeError(f"no lake at {lk.uri}")
    for r in compact.compact(lk, event_type or None, min_files=min_files, small_bytes=int(small_mb * 2**20),
                        target_bytes=int(target_mb * 2**20)):
        if r.version is None:
            say(f"{r.event_type}: nothing to compact ({r.files_before} files)", out)
        else:
            say(f"{r.event_type}: {r.files_before} -> {r.files_after} active files in {r.partitions} partitions "
                f"(version {r.version})", out)


@app.command("vacuum")
@edge
def lake_vacuum(
    retain_hours: int = typer.Option(..., "--retain-hours", help="Keep every file a version of the last N hours "
                                     "needs (required: no default). Time travel before then is lost."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted; delete nothing."),
) -> None:
    """Delete the files that compaction replaced more than --retain-hours ago: the one command
    that deletes data files (history older than the retention can no longer be read)."""
    lk = lake()
    if not lk.exists():
        raise LakeError(f"no lake at {lk.uri}")
    deleted = compact.vacuum(lk, retain_hours, dry_run=dry_run)
    for event_type, files in deleted.items():
        if files:
            say(f"{event_type}: {len(files)} files {'would be ' if dry_run else ''}deleted", out)
    say(f"{sum(len(f) for f in deleted.values())} files {'would be ' if dry_run else ''}deleted "
        f"(retention {retain_hours} h)", out)


@app.command("files")
@edge
def lake_files(
    event_type: list[str] = typer.Option(None, "--type", "-t", help="Event types (repeatable); default: all."),
    as_sql: bool = typer.Option(False, "--sql", help="Print DuckDB statements that point the views at these files."),
) -> None:
    """Print the active files of each event type's table, as its Delta log names them (what the
    SQL views and `Lake.read` read); with --sql, as `SET VARIABLE mqepi_files_<type> = [...]`
    statements for a plain duckdb session (docs/sql.md)."""
    lk = lake()
    if not lk.exists():
        raise LakeError(f"no lake at {lk.uri}")
    for name, paths in committed_files(lk).items():
        if event_type and name not in event_type:
            continue
        if as_sql:
            quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            write_data(f"SET VARIABLE mqepi_files_{name} = [{quoted}];\n")
        else:
            write_data("".join(f"{name}\t{p}\n" for p in paths))
