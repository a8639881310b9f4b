"""``mqepi lake migrate OLD NEW``: copy a lake of the layout before Delta Lake into a new lake.

OLD is read with :mod:`mqepi.lake.legacy` (the files its commit log committed, or, with no
log, every ``ev-*.parquet``); NEW is a :class:`~mqepi.lake.store.Lake`. Per event type, one
old partition (model, configuration[, run]) at a time, every row is read and appended with
:meth:`Lake.append <mqepi.lake.store.Lake.append>`, one old file per batch, which validates
the events and re-checks every content id, so the ids are preserved (they hash the content)
and so are the origins (a column). The files of one (model, configuration) commit as one
table version. A file of an older schema version (it lacks the columns added since, and its
ids hash only the columns it has) is appended with its own columns (:func:`_append_older`),
as ``lake verify`` and the readers expect of such a file.

Rows that repeat an event id (two old files holding the same event, which the old readers
de-duplicated at read time, keeping the earliest recorded) are written once, the earliest
recorded as the old readers chose it, and counted as duplicates dropped. Files the old log
never committed (interrupted writes) are not data and are not migrated; they are counted.

Then the migration is checked: per event type and configuration, the set of (event id,
origin) of every row OLD holds equals that of NEW, NEW holds each event once (its rows equal
the distinct ids), and ``lake verify`` of NEW is clean; a failure raises :class:`LakeError`
naming the type and the first missing or extra id.

Re-running is safe: appends are idempotent (a re-appended batch writes and commits nothing),
so a migration that was interrupted completes, and one that completed adds no version. NEW
may hold only events of OLD (a previous, possibly interrupted, migration); a NEW holding any
other event is a different lake and is refused before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl
import pyarrow.fs as pafs

from mqepi.errors import EventValidationError, LakeError
from mqepi.lake import events
from mqepi.lake.index import SEED_VALUE
from mqepi.lake.legacy import LegacyFile, LegacyLake, LegacyState
from mqepi.lake.store import COMMIT_ORDER, Lake
from mqepi.lake.verify import DATA_PREFIX, ROOT_EXTRAS, SYSTEM_DIRS, version_checks, with_added_columns
from mqepi.schemas import EVENT_TYPES, RUN_BOUND

Progress = Callable[[str], None]


@dataclass
class TypeReport:
    """What the migration did for one event type, and its check."""

    event_type: str
    files_read: int = 0  # data files of OLD
    rows_read: int = 0  # every row of them
    distinct_ids: int = 0  # distinct event ids among them
    duplicates_dropped: int = 0  # rows that repeat an event id (rows_read - distinct_ids)
    rows_written: int = 0  # events this run wrote to NEW
    already_present: int = 0  # events NEW held before this run (an earlier, interrupted migration)
    uncommitted_files: int = 0  # files of OLD no commit names: not data, not migrated
    events_new: int = 0  # distinct event ids in NEW after the migration
    rows_new: int = 0  # rows in NEW's active files
    origins: dict[str, int] = field(default_factory=dict)  # origin -> events, in NEW
    verified: bool = False  # ids and origins of OLD and NEW equal, each event once in NEW


@dataclass
class MigrateReport:
    """What ``lake migrate`` did: per event type, and the state of both lakes."""

    old: str
    new: str
    old_logged: bool  # OLD had a commit log (else every ev-*.parquet was data)
    types: dict[str, TypeReport] = field(default_factory=dict)
    uncommitted: list[str] = field(default_factory=list)  # OLD's files no commit names
    torn_commits: int = 0  # OLD's unreadable commit lines (their files are not data)
    verify_ok: bool = False  # ``lake verify`` of NEW
    files_checked: int = 0  # by that verify

    @property
    def ok(self) -> bool:
        return self.verify_ok and all(r.verified for r in self.types.values())

    def frame(self) -> pl.DataFrame:
        """One row per event type: files and rows read, distinct ids, duplicates dropped, events
        written, events NEW held before, uncommitted files not migrated, the check."""
        rows = [{"event type": r.event_type, "files": r.files_read, "rows": r.rows_read, "ids": r.distinct_ids,
                 "dups": r.duplicates_dropped, "written": r.rows_written, "had": r.already_present,
                 "skipped": r.uncommitted_files, "check": "ok" if r.verified else "FAILED"}
                for r in self.types.values()]
        return pl.DataFrame(rows)

    def origins_frame(self) -> pl.DataFrame:
        """Events in NEW per event type and origin (the same as in OLD once checked)."""
        rows = [{"event type": r.event_type, "origin": origin, "events": n}
                for r in self.types.values() for origin, n in sorted(r.origins.items())]
        return pl.DataFrame(rows, schema={"event type": pl.Utf8, "origin": pl.Utf8, "events": pl.Int64})


def migrate(old_root: str | os.PathLike, new_root: str | os.PathLike, *, progress: Progress | None = None) -> MigrateReport:
    """Copy every event of the old-layout lake at ``old_root`` into the lake at ``new_root``
    (created if missing), then check both hold the same events (see the module docstring).
    Raises :class:`LakeError` before writing anything if OLD is not a lake of the old layout,
    holds files it cannot migrate, or NEW holds events OLD does not; and after writing if the
    check fails."""
    say = progress or (lambda line: None)
    old = LegacyLake(old_root)
    new = Lake(new_root)
    if old.exists() and _same_place(old, new):
        raise LakeError(f"lake migrate: OLD and NEW are the same folder ({old.uri}); NEW must be another folder")
    state = _check_old(old)
    report = MigrateReport(old.uri, new.uri, state.logged, uncommitted=list(state.uncommitted),
                           torn_commits=len(state.log_problems))
    for path in state.uncommitted:
        event_type = path[len(old.root) + 1:].split("/", 1)[0]
        report.types.setdefault(event_type, TypeReport(event_type)).uncommitted_files += 1
    types = list(COMMIT_ORDER)  # what runs refer to first, run last
    report.types = {t: report.types.get(t, TypeReport(t)) for t in types}
    say(f"old lake {old.uri}: {sum(len(old.files(t)) for t in types)} data files"
        + ("" if state.logged else " (no commit log: every ev-*.parquet is data)")
        + (f", {len(state.uncommitted)} uncommitted files not migrated" if state.uncommitted else ""))
    _refuse_foreign(old, new, types, say)
    new.init()
    for event_type in types:
        _copy_type(old, new, report.types[event_type], say)
    for event_type in types:
        _check_type(old, new, report.types[event_type], say)
    say(f"lake verify {new.uri} ...")
    verified = new.verify()
    report.verify_ok, report.files_checked = verified.ok, verified.files_checked
    if not verified.ok:
        first = verified.problems[0]
        raise LakeError(f"lake migrate: the new lake {new.uri} fails lake verify ({len(verified.problems)} problems; "
                        f"first: {first.kind} {first.path}: {first.detail})")
    return report


def _same_place(old: LegacyLake, new: Lake) -> bool:
    if "://" in old.uri or "://" in new.uri:
        return old.uri.rstrip("/") == new.uri.rstrip("/")
    return os.path.realpath(old.root) == os.path.realpath(new.root)


def _check_old(old: LegacyLake) -> LegacyState:
    """OLD's state, refusing what cannot be migrated faithfully (before anything is written)."""
    if not old.exists():
        raise LakeError(f"lake migrate: no lake at {old.uri}")
    delta_tables = old.delta_tables()
    if delta_tables:
        raise LakeError(f"lake migrate: {old.uri} is already a lake of the Delta layout (tables "
                        f"{', '.join(delta_tables[:3])}{' ...' if len(delta_tables) > 3 else ''}); nothing to migrate")
    state = old.state()
    folders = old.fs.get_file_info([f"{old.root}/{t}" for t in EVENT_TYPES])
    if not state.logged and not any(info.type == pafs.FileType.Directory for info in folders):
        raise LakeError(f"lake migrate: {old.uri} holds no event folders and no commit log: not a lake")
    if state.missing:
        raise LakeError(f"lake migrate: {len(state.missing)} files the commit log of {old.uri} committed are gone "
                        f"(first: {state.missing[0]}): their events are lost; restore them before migrating")
    runs: dict[str, set[tuple[str, str]]] = {}
    for files in state.files.values():
        for f in files:
            if "run_id" in f.keys:
                runs.setdefault(f.keys["run_id"], set()).add(f.config)
    clash = sorted((r, sorted(keys)) for r, keys in runs.items() if len(keys) > 1)
    if clash:
        run_id, keys = clash[0]
        raise LakeError(f"lake migrate: run_id {run_id!r} of {old.uri} is a run of several (model, config) pairs "
                        f"({', '.join('/'.join(k) for k in keys)}; {len(clash)} such run ids), which the new lake "
                        "refuses; nothing was written")
    return state


def _new_partitions(new: Lake, event_type: str) -> list[tuple[str, str]]:
    """The (model, config_id) partitions of NEW's active data files of ``event_type``."""
    return sorted({e.partition for e in new.log(event_type).active.values() if e.partition[0] != SEED_VALUE})


def _old_by_config(old: LegacyLake, event_type: str) -> dict[tuple[str, str], list[LegacyFile]]:
    out: dict[tuple[str, str], list[LegacyFile]] = {}
    for f in old.files(event_type):
        out.setdefault(f.config, []).append(f)
    return out


def _old_ids(old: LegacyLake, files: list[LegacyFile], columns: list[str]) -> pl.DataFrame:
    """``columns`` (text columns: ids, origins) of every row of ``files`` (not de-duplicated)."""
    frames = [old.read_file(f, columns) for f in files]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema={c: pl.Utf8 for c in columns})


def _refuse_foreign(old: LegacyLake, new: Lake, types: list[str], say: Progress) -> None:
    """Refuse a NEW that holds an event OLD does not (a different lake), or anything but a lake's
    tables, before writing."""
    if not new.exists():
        return
    try:
        entries = new.fs.get_file_info(pafs.FileSelector(new.root, allow_not_found=True))
    except OSError as exc:
        raise LakeError(f"lake migrate: cannot list {new.uri}: {exc}") from exc
    odd = sorted(e.path for e in entries if e.base_name not in (*EVENT_TYPES, *SYSTEM_DIRS, *ROOT_EXTRAS)
                 or (e.base_name in EVENT_TYPES and not new.log(e.base_name).exists()))
    if odd:
        raise LakeError(f"lake migrate: {new.uri} holds what is not a Delta lake's (first: {odd[0]}); "
                        "migrate into a new or empty folder")
    for event_type in types:
        partitions = _new_partitions(new, event_type)
        if not partitions:
            continue
        say(f"{event_type}: the new lake holds events already; checking they are the old lake's")
        by_config = _old_by_config(old, event_type)
        for model, config_id in partitions:
            have = new.read(event_type, columns=["event_id"], model=model, config_id=config_id)["event_id"]
            known = _old_ids(old, by_config.get((model, config_id), []), ["event_id"])["event_id"]
            foreign = have.filter(~have.is_in(known.implode())).sort()
            if foreign.len():
                raise LakeError(f"lake migrate: the new lake {new.uri} already holds {foreign.len()} {event_type} events "
                                f"that are not in {old.uri} (first: {foreign[0]}, model {model}, config {config_id}): "
                                "it is a different lake; migrate into a new folder (NEW may only hold events of OLD, "
                                "from a migration that was interrupted)")


def _keepers(old: LegacyLake, files: list[LegacyFile]) -> list[pl.Series] | None:
    """For the files of one old partition, which rows to write: per file a boolean mask, each
    event id once, the row the old readers kept (the earliest recorded; on a tie the first in
    path order). None when no id repeats (every row is written)."""
    frames = [old.read_file(f, ["event_id", "recorded_at_ns"]).with_columns(pl.lit(i).alias("_file"))
              .with_row_index("_row") for i, f in enumerate(files)]
    rows = pl.concat(frames, how="vertical")
    if rows["event_id"].n_unique() == rows.height:
        return None
    kept = rows.sort(["recorded_at_ns", "_file", "_row"]).unique("event_id", keep="first")
    return [frames[i]["_row"].is_in(kept.filter(pl.col("_file") == i)["_row"].implode()) for i in range(len(files))]


def _copy_type(old: LegacyLake, new: Lake, report: TypeReport, say: Progress) -> None:
    """Append every event of one type, one (model, configuration) per transaction."""
    event_type = report.event_type
    for (model, config_id), files in sorted(_old_by_config(old, event_type).items()):
        by_partition: dict[tuple[str, ...], list[LegacyFile]] = {}
        for f in files:
            by_partition.setdefault(f.partition, []).append(f)
        rows = written = 0
        with new.transaction(f"lake migrate {event_type}"):
            for partition_files in by_partition.values():
                masks = _keepers(old, partition_files)
                for i, f in enumerate(partition_files):
                    older = bool(old.missing_added(f))  # a file of an older schema version
                    df = old.read_file(f, added_as_null=not older)
                    report.files_read += 1
                    report.rows_read += df.height
                    rows += df.height
                    if masks is not None:
                        before = df.height
                        df = df.filter(masks[i])
                        report.duplicates_dropped += before - df.height
                    if df.height == 0:
                        continue
                    done = _append_older(new, df, f.path) if older else new.append(df, source=f.path).rows_written
                    report.rows_written += done
                    report.already_present += df.height - done
                    written += done
        say(f"{event_type} {model}/{config_id}: {len(files)} files, {rows} rows read, {written} events written")
    report.distinct_ids = report.rows_read - report.duplicates_dropped


def _append_older(new: Lake, df: pl.DataFrame, source: str) -> int:
    """Append the rows of one old file of an older schema version (it lacks columns added
    since; its event ids hash only the columns it has), keeping its columns, as
    :meth:`Lake.append` does for a current one: checked (schema, version rules, every id over
    the file's own columns), events NEW holds dropped (except high-volume types), one file
    named by its content, committed in the open transaction. Returns the rows written.

    :meth:`Lake.append` cannot take these rows: it writes every column of the current
    version, so the stored ids would no longer be the hash of the stored content. Until the
    store has a public way to append a batch with its own columns, this uses the store's
    own steps (``_ensure_seed``, ``_claim_runs``, ``_ids_in``, ``_commit_file``)."""
    spec = EVENT_TYPES[df["event_type"][0]]
    for _column, bad, detail in version_checks(spec, df.columns):
        rows = df.filter(bad.fill_null(False)).height
        if rows:
            raise LakeError(f"lake migrate: {source}: {spec.name}: {detail} ({rows} rows); nothing of it was written")
    events.validate(with_added_columns(spec, df), source=source, check_ids=False)
    bad_ids = df.filter(pl.col("event_id") != events.content_ids(df))
    if bad_ids.height:
        raise EventValidationError(spec.name, [{"column": "event_id", "check": "equals sha256 of content",
                                                "values": bad_ids["event_id"].head(5).to_list(), "rows": bad_ids.height}],
                                   source)
    df = df.unique("event_id", keep="first", maintain_order=True)
    values = (df["model"][0], df["config_id"][0])
    if df.select(pl.struct("model", "config_id").n_unique()).item() != 1:
        raise LakeError(f"lake migrate: {source} holds events of several (model, config) pairs")
    run_bound = spec.name in RUN_BOUND
    runs = tuple(sorted(df["run_id"].unique().to_list())) if run_bound else ()
    with new.transaction(f"lake migrate {spec.name}") as tx:
        new._ensure_seed(spec)
        if run_bound:
            new._claim_runs(tx, {values: runs})
        if not spec.high_volume:
            known = new._ids_in(spec, values, runs)
            if known:
                df = df.filter(~pl.col("event_id").is_in(list(known)))
        if df.height == 0:
            return 0
        name = f"{DATA_PREFIX}{events.batch_id(df['event_id'])}.parquet"
        columns = [c for c in spec.file_columns if c in df.columns]
        return df.height if new._commit_file(spec.name, values, name, df.select(columns).to_arrow(), runs) else 0


def _check_type(old: LegacyLake, new: Lake, report: TypeReport, say: Progress) -> None:
    """OLD and NEW hold the same (event id, origin) per configuration, NEW each event once."""
    event_type = report.event_type
    by_config = _old_by_config(old, event_type)
    origins: dict[str, int] = {}
    events = distinct = 0
    for model, config_id in sorted(set(by_config) | set(_new_partitions(new, event_type))):
        was = _old_ids(old, by_config.get((model, config_id), []), ["event_id", "origin"]).unique()
        now = new.read(event_type, columns=["event_id", "origin"], model=model, config_id=config_id)
        missing = was.join(now, on=["event_id", "origin"], how="anti").sort("event_id")
        extra = now.join(was, on=["event_id", "origin"], how="anti").sort("event_id")
        if missing.height or extra.height:
            what = (f"{missing.height} events of the old lake are not in the new one (first: {missing['event_id'][0]}, "
                    f"origin {missing['origin'][0]})" if missing.height else
                    f"the new lake holds {extra.height} events the old one does not (first: {extra['event_id'][0]}, "
                    f"origin {extra['origin'][0]})")
            raise LakeError(f"lake migrate: {event_type} model {model} config {config_id}: {what}")
        events += now.height
        distinct += was["event_id"].n_unique()
        for origin, count in now.group_by("origin").len().iter_rows():
            origins[origin] = origins.get(origin, 0) + count
    rows_new = sum(e.rows for e in new.log(event_type).active.values() if e.partition[0] != SEED_VALUE)
    report.events_new, report.rows_new, report.origins = events, rows_new, origins
    if not events == distinct == report.distinct_ids or rows_new != events:
        raise LakeError(f"lake migrate: {event_type}: the old lake holds {distinct} distinct events "
                        f"({report.distinct_ids} migrated), the new one {events} in {rows_new} rows")
    report.verified = True
    say(f"{event_type}: {events} events in both lakes, ids and origins equal")
