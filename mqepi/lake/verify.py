"""``lake verify``: every table's Delta log checked, every active file re-hashed and re-read.

Reports active files that are gone or changed (``missing``, ``changed``: data lost; a file
whose sha256 differs from the one its commit recorded), files no version names (``uncommitted``:
an interrupted write or ingest, never read as data; ``stray-temp``: a temporary file),
unreadable log entries (``log``), a transaction whose tables are not all committed
(``incomplete``: re-run the write, which is idempotent), schema violations, hash and name
mismatches, duplicate ids, run ids under two models or configurations (``collision``) and
anything else that does not belong. Files a compaction replaced are history (reachable by
time travel), not problems. Reads only.

Schema versions are per event type (``EventSpec.version``). A later version only adds
nullable columns (``EventSpec.added``), so every older event stays valid: a file of an older
version lacks the columns added since, which read as null, and its event ids are the hash of
the columns it stores. Each table's seed partition holds one empty ``schema-v<N>.parquet`` per
version the lake has met, each with that version's columns.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqepi.errors import EventValidationError
from mqepi.lake import durable, events
from mqepi.lake.delta import LOG_DIR, DataFile
from mqepi.lake.index import SEED_VALUE, FileIndex
from mqepi.schemas import EVENT_TYPES, RUN_BOUND, EventSpec

DATA_PREFIX = "ev-"
#: Prefix of the files ``lake compact`` writes.
COMPACT_PREFIX = "cp-"
TEMP_PREFIX = durable.TEMP_PREFIX
#: Files a lake root may hold besides event folders.
ROOT_EXTRAS = ("README.md",)
#: Folder of a local lake's lock files (``Lake.lock_path``).
LOCKS_DIR = "_locks"
#: Folders of the root that hold no events (the locks).
SYSTEM_DIRS = (LOCKS_DIR,)
#: Name of a seed file: ``schema-v<version>.parquet``.
SEED_NAME = re.compile(r"schema-v([1-9][0-9]{0,5})\.parquet")


def seed_name(version: int) -> str:
    """The name of the seed file of schema ``version``."""
    return f"schema-v{version}.parquet"


def with_added_columns(spec: EventSpec, df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with each column of ``spec.added`` it lacks (events of an older schema version)
    as typed nulls, columns in schema order; any other missing column stays missing, for
    validation to report. Its event ids still hash the columns ``df`` had: compute them on
    ``df`` (:func:`mqepi.lake.events.content_ids`)."""
    missing = [c for c in spec.added if c not in df.columns]
    if missing:
        df = df.with_columns(pl.lit(None, dtype=spec.polars_schema[c]).alias(c) for c in missing)
    return df.select([c for c in spec.polars_schema if c in df.columns])


def version_checks(spec: EventSpec, present: list[str] | tuple[str, ...]) -> list[tuple[str, pl.Expr, str]]:
    """(column, rows-that-fail expression, detail) of the version rules for a file of ``spec``'s
    type holding the columns ``present``: every event's ``schema_version`` is one this mqepi
    knows (1 .. current); a file that lacks a column of ``spec.added`` holds no event of the
    current version (a file of the current version has every column); an event of version 1
    has every column of ``spec.added`` (all added after version 1) null."""
    version = pl.col("schema_version")
    checks = [("schema_version", version > spec.version,
               f"schema_version is newer than the current {spec.version} of {spec.name} (written by a newer mqepi)"),
              ("schema_version", version < 1, "schema_version is below 1")]
    for column in spec.added:
        if column not in present:
            checks.append((column, version == spec.version, f"the file lacks column {column!r}, which events of the "
                           f"current schema version {spec.version} have"))
        else:
            checks.append((column, (version == 1) & pl.col(column).is_not_null(),
                           f"column {column!r} holds a value in an event of schema version 1, which has no such column"))
    return checks


@dataclass
class Problem:
    """One thing ``lake verify`` found: its kind, the file, what is wrong."""

    # schema | hash | name | duplicate | unreadable | stray-temp | unexpected | layout
    # | missing | changed | uncommitted | log | collision
    kind: str
    path: str
    detail: str


@dataclass
class VerifyReport:
    """What ``lake verify`` checked and every problem it found."""

    files_checked: int = 0
    rows_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(lake) -> VerifyReport:
    """Check every table's log and every active file (see the module's docstring)."""
    report = VerifyReport()
    if not lake.exists():
        report.problems.append(Problem("layout", lake.uri, "no lake folder here"))
        return report
    index = lake.index()
    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    transactions: dict[str, dict[str, list[str]]] = {}  # id -> table -> its files
    committed: dict[str, set[str]] = defaultdict(set)  # id -> tables with a commit of it
    for name in EVENT_TYPES:
        log = lake.log(name)
        table = lake.table_dir(name)
        if not log.exists():
            report.problems.append(Problem("layout", table, f"no Delta table for {name} (run `mqepi lake init`)"))
            continue
        for where, detail in log.problems:
            report.problems.append(Problem("log", where, detail))
        for commit in log.commits:
            txid = commit.meta.get("transaction")
            plan = commit.meta.get("tables")
            if isinstance(txid, str) and isinstance(plan, dict):
                transactions.setdefault(txid, {}).update(
                    {t: rels for t, rels in plan.items() if t in EVENT_TYPES and isinstance(rels, list)})
                committed[txid].add(name)
        on_disk: dict[str, pafs.FileInfo] = {}
        selector = pafs.FileSelector(table, recursive=True, allow_not_found=True)
        for info in lake.fs.get_file_info(selector):
            rel = str(PurePosixPath(info.path).relative_to(table))
            if info.type == pafs.FileType.File and not rel.startswith(f"{LOG_DIR}/"):
                on_disk[rel] = info
        for rel, entry in sorted(log.active.items()):
            info = on_disk.get(rel)
            if info is None:
                report.problems.append(Problem("missing", f"{table}/{rel}", f"a file active in version {log.version} "
                                               "is gone (deleted, renamed or hidden): its events are lost"))
                continue
            _verify_file(lake, name, info, entry, report, seen)
        for rel, info in sorted(on_disk.items()):
            if rel not in log.active and rel not in log.removed:
                report.problems.append(_stray(info, rel))
    for txid, plan in sorted(transactions.items()):
        # a table is done when it has a commit of the transaction or holds every file it planned
        # there (a retry committed them); files a compaction replaced count as held
        done = committed[txid]
        lacking = sorted(t for t, rels in plan.items() if t not in done and not all(
            r in lake.log(t).active or r in lake.log(t).removed for r in rels))
        if lacking:
            report.problems.append(Problem("incomplete", lake.uri, f"transaction {txid[:16]} committed "
                                           f"{', '.join(sorted(done))} but not {', '.join(lacking)} "
                                           "(interrupted between table commits; re-run the write to complete it)"))
    report.problems.extend(_root_extras(lake))
    _verify_ids(lake, seen, index, report)
    return report


def _root_extras(lake) -> list[Problem]:
    out = []
    for info in lake.fs.get_file_info(pafs.FileSelector(lake.root, allow_not_found=True)):
        if info.base_name in EVENT_TYPES or info.base_name in SYSTEM_DIRS or info.base_name in ROOT_EXTRAS:
            continue
        out.append(Problem("unexpected", info.path, "not an event table of a known event type"))
    return out


def _stray(info: pafs.FileInfo, rel: str) -> Problem:
    """What a file no version names is."""
    if info.base_name.startswith(TEMP_PREFIX):
        return Problem("stray-temp", info.path, "temporary file left by an interrupted write; never read as data")
    if info.base_name.endswith(".parquet") and not info.base_name.startswith("."):
        return Problem("uncommitted", info.path, "a data file no version of its table names: written by an append "
                       "or ingest that was interrupted before it committed; never read as data")
    return Problem("unexpected", info.path, "not a data file of the table")


def _verify_ids(lake, seen: dict, index: FileIndex, report: VerifyReport) -> None:
    for event_id, where in seen.items():
        if len(where) > 1:
            paths = sorted({p for _, p in where})
            report.problems.append(
                Problem("duplicate", paths[0],
                        f"{where[0][0]} event {event_id} appears {len(where)} times: {', '.join(paths)}")
            )
    for run_id, others in index.collisions.items():
        first = index.run_keys[run_id]
        pairs = ", ".join(f"{m}/{c}" for m, c in sorted({first, *others}))
        report.problems.append(Problem("collision", lake.root, f"run_id {run_id!r} is a run of several "
                                       f"(model, config) pairs: {pairs}; their events would be pooled"))


def _bytes_problems(lake, info: pafs.FileInfo, entry: DataFile) -> list[Problem]:
    """The file's size and sha256 against what its commit recorded."""
    out = []
    if info.size != entry.bytes:
        out.append(Problem("changed", info.path, f"{info.size} bytes, committed as {entry.bytes} bytes"))
    if entry.sha256 is None:
        return out + [Problem("log", info.path, f"the commit of version {entry.version} recorded no sha256 for it "
                              "(not written by mqepi)")]
    with lake.fs.open_input_stream(info.path) as fh:
        sha = durable.sha256_stream(fh)
    if sha != entry.sha256:
        out.append(Problem("changed", info.path, f"sha256 {sha[:16]}..., committed as "
                           f"{entry.sha256[:16]}... (version {entry.version}): the file was altered"))
    return out


def _verify_file(lake, event_type: str, info: pafs.FileInfo, entry: DataFile, report: VerifyReport, seen) -> None:
    spec = EVENT_TYPES[event_type]
    path = info.path
    relative = PurePosixPath(entry.path)
    keys = [part.partition("=") for part in relative.parts[:-1]]
    if [k for k, _, _ in keys] != list(spec.partition_by) or [v for _, _, v in keys] != list(entry.partition):
        report.problems.append(Problem("layout", path, f"expected partitions {'/'.join(k + '=' for k in spec.partition_by)} "
                                       f"matching its partition values {entry.partition}"))
        return
    report.files_checked += 1
    report.problems.extend(_bytes_problems(lake, info, entry))
    try:
        table = pq.read_table(path, filesystem=lake.fs)
    except (OSError, pa.ArrowException) as exc:
        report.problems.append(Problem("unreadable", path, f"not a readable Parquet file: {exc}"))
        return
    df = pl.from_arrow(table)
    report.rows_checked += df.height
    if entry.rows >= 0 and df.height != entry.rows:
        report.problems.append(Problem("changed", path, f"{df.height} rows, committed with {entry.rows}"))
    if entry.partition == (SEED_VALUE, SEED_VALUE):
        _verify_seed(spec, path, relative.name, df, report)
        return
    unknown = [c for c in df.columns if c not in spec.file_columns]
    if unknown:
        report.problems.append(Problem("schema", path, f"{spec.name}: unknown columns {unknown}"))
        return
    df = df.with_columns(pl.lit(v, dtype=pl.Utf8).alias(k) for k, v in zip(spec.partition_by, entry.partition))
    df = df.select([c for c in spec.polars_schema if c in df.columns])
    if "schema_version" in df.columns and df.schema["schema_version"].is_integer():
        for _, bad, detail in version_checks(spec, df.columns):
            rows = df.filter(bad.fill_null(False)).height
            if rows:
                report.problems.append(Problem("schema", path, f"{spec.name}: {detail} ({rows} rows)"))
                return
    try:
        # the columns a file of an older version lacks are null; its ids hash the columns it has
        events.validate(with_added_columns(spec, df), source=path, check_ids=False)
        _check_ids(spec, df, path)
    except EventValidationError as exc:
        hash_failed = any(f.get("column") == "event_id" and "sha256" in str(f.get("check")) for f in exc.failures)
        report.problems.append(Problem("hash" if hash_failed else "schema", path, str(exc)))
        return
    prefix = COMPACT_PREFIX if relative.name.startswith(COMPACT_PREFIX) else DATA_PREFIX
    expected = f"{prefix}{events.batch_id(df['event_id'])}.parquet"
    if relative.name != expected:
        report.problems.append(Problem("name", path, f"file name does not match its content (expected {expected})"))
    if spec.name in RUN_BOUND and "run_id" in df.columns:
        runs = tuple(sorted(set(df["run_id"].to_list())))
        if runs != tuple(sorted(entry.runs)):
            report.problems.append(Problem("log", path, f"holds runs {list(runs)[:5]}, its commit recorded "
                                           f"{list(entry.runs)[:5]}: the run index would miss events"))
    for event_id in df["event_id"]:
        seen[event_id].append((spec.name, path))


def _check_ids(spec: EventSpec, df: pl.DataFrame, path: str) -> None:
    """Every ``event_id`` of ``df`` (the file's own columns) the hash of its content; else the
    error :func:`mqepi.lake.events.validate` raises for it."""
    expected = events.content_ids(df)
    bad = df.select(pl.col("event_id"), expected.alias("expected")).filter(pl.col("event_id") != pl.col("expected"))
    if bad.height:
        raise EventValidationError(spec.name, [{"column": "event_id", "check": "equals sha256 of content",
                                                "values": bad["event_id"].head(events.QUOTED_VALUES).to_list(),
                                                "rows": bad.height}], path)


def _verify_seed(spec: EventSpec, path: str, name: str, df: pl.DataFrame, report: VerifyReport) -> None:
    """A seed: an empty ``schema-v<N>.parquet`` of a version 1 .. current with that version's file
    columns and dtypes (what ``Lake.init`` of an mqepi at version N wrote): every column of the
    current model but ``spec.added`` (version 1), all of them (the current version), in
    between some of ``spec.added``."""
    m = SEED_NAME.fullmatch(name)
    version = int(m.group(1)) if m else None
    if version is None or df.height:
        report.problems.append(Problem("layout", path, f"a seed file must be an empty schema-v<N>.parquet, N in "
                                       f"1 .. {spec.version} (the current {seed_name(spec.version)})"))
        return
    if version > spec.version:
        report.problems.append(Problem("layout", path, f"seed of schema version {version}, newer than the current "
                                       f"{spec.version} of {spec.name} (a lake written by a newer mqepi)"))
        return
    current = {c: spec.polars_schema[c] for c in spec.file_columns}
    required = [c for c in current if c not in spec.added or version == spec.version]
    allowed = [c for c in current if c not in spec.added or version > 1]
    wrong = [c for c in df.columns if c not in allowed or df.schema[c] != current[c]]
    missing = [c for c in required if c not in df.columns]
    if wrong or missing:
        detail = "; ".join(part for part in (
            f"unexpected {', '.join(f'{c} {df.schema[c]}' for c in wrong)}" if wrong else "",
            f"missing {', '.join(missing)}" if missing else "") if part)
        report.problems.append(Problem("schema", path, f"seed of {spec.name} schema version {version} does not have "
                                       f"that version's columns: {detail}"))
