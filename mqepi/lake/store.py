"""The event lake: append-only Parquet partitions of validated events.

Layout (hive partitions; the partition columns live in the path, not in the files)::

    <root>/<event_type>/model=<m>/config_id=<c>/ev-<batch sha256>.parquet            configs
    <root>/<event_type>/model=<m>/config_id=<c>/run_id=<r>/ev-<batch sha256>.parquet  run-bound
    <root>/<event_type>/model=_seed/.../schema-v<N>.parquet                           zero-row seed

A query by model, configuration or run reads only that folder. File names derive from the
batch content (sha256 over the sorted event ids), so appending the same batch twice writes
nothing the second time. A file is written under a temporary dot-name (``.tmp-*.partial``,
never matched by ``*.parquet``), fsynced, then published with a no-clobber hard link, so a
reader never sees a partial file and nothing committed is ever replaced. Nothing here
deletes or rewrites a committed file.

All I/O goes through a ``pyarrow.fs`` filesystem: a local folder by default, an object store
URI (``s3://...``) where pyarrow supports one.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqepi.errors import EventValidationError, LakeError
from mqepi.lake import durable, events
from mqepi.lake.durable import fsync_dir, fsync_file
from mqepi.schemas import EVENT_TYPES, EventSpec, spec_for

#: Environment variable naming the lake root when no option is given.
LAKE_ENV = "MQEPI_LAKE"
DEFAULT_ROOT = "lake"
#: Partition value of the zero-row seed files (real values start with a letter or digit).
SEED_VALUE = "_seed"
DATA_PREFIX = "ev-"
TEMP_PREFIX = durable.TEMP_PREFIX
TEMP_SUFFIX = ".partial"
#: Files a lake root may hold besides event folders.
ROOT_EXTRAS = ("README.md",)
PARQUET_COMPRESSION = "zstd"


@dataclass
class AppendResult:
    """What one :meth:`Lake.append` did."""

    event_type: str
    rows_in: int
    rows_written: int = 0
    files_written: list[str] = field(default_factory=list)
    files_already_present: int = 0
    duplicate_rows_dropped: int = 0


@dataclass
class Problem:
    kind: str  # schema | hash | name | duplicate | unreadable | stray-temp | unexpected | layout
    path: str
    detail: str


@dataclass
class VerifyReport:
    files_checked: int = 0
    rows_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def resolve_root(root: str | os.PathLike | None = None) -> str:
    """The lake root: the argument, else ``$MQEPI_LAKE``, else ``./lake``."""
    return str(root if root is not None else os.environ.get(LAKE_ENV) or DEFAULT_ROOT)


class Lake:
    """An event lake rooted at a local folder or a pyarrow filesystem URI."""

    def __init__(self, root: str | os.PathLike | None = None, filesystem: pafs.FileSystem | None = None):
        root = resolve_root(root)
        if filesystem is not None:
            self.fs, self.root = filesystem, root.rstrip("/")
        elif "://" in root:
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.root = path.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.uri = root if "://" in root else self.root
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        self._seeded: set[str] = set()

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    # ------------------------------------------------------------------ paths

    def event_dir(self, event_type: str) -> str:
        spec_for(event_type)
        return f"{self.root}/{event_type}"

    def partition_dir(self, spec: EventSpec, values: tuple) -> str:
        parts = [f"{k}={v}" for k, v in zip(spec.partition_by, values)]
        return "/".join([self.event_dir(spec.name), *parts])

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    # ------------------------------------------------------------------ writing

    def init(self) -> list[str]:
        """Create the root and every event type's seed file; return the seeds written."""
        written = []
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise LakeError(f"cannot create lake folder {self.uri}: {exc}") from exc
        for spec in EVENT_TYPES.values():
            if self._ensure_seed(spec):
                written.append(spec.name)
        return written

    def _ensure_seed(self, spec: EventSpec) -> bool:
        if spec.name in self._seeded:
            return False
        directory = self.partition_dir(spec, (SEED_VALUE,) * len(spec.partition_by))
        name = f"schema-v{spec.version}.parquet"
        empty = pl.DataFrame(schema=spec.polars_schema).select(spec.file_columns)
        wrote = self._write_file(directory, name, empty.to_arrow())
        self._seeded.add(spec.name)
        return wrote

    def append(self, batch: pl.DataFrame, *, source: str | None = None) -> AppendResult:
        """Validate ``batch`` (one event type) and write it, one file per partition.

        Events whose id the batch repeats, or (except for high-volume sample streams) whose
        id is already in the target partition, are dropped, so a retried stage adds nothing.
        Raises :class:`EventValidationError` before writing anything if any row is invalid,
        and :class:`LakeError` if the write fails.
        """
        spec, batch = events.validate(batch, source=source)
        return self._write_batch(spec, batch)

    def record(self, event_type: str, rows, *, origin: str = "lab", producer: str | None = None,
               recorded_at_ns: int | None = None) -> AppendResult:
        """Build events of ``event_type`` from ``rows`` (see :func:`mqepi.lake.events.build`),
        validate and append them. The ids were computed here, so they are not re-checked:
        this is the path for mqepi's own producers; untrusted batches go through
        :meth:`append`."""
        kwargs = {"origin": origin, "recorded_at_ns": recorded_at_ns}
        if producer is not None:
            kwargs["producer"] = producer
        batch = events.build(event_type, rows, **kwargs)
        spec, batch = events.validate(batch, check_ids=False)
        return self._write_batch(spec, batch)

    def _write_batch(self, spec: EventSpec, batch: pl.DataFrame) -> AppendResult:
        result = AppendResult(spec.name, batch.height)
        if batch.height == 0:
            return result
        unique = batch.unique(subset="event_id", keep="first", maintain_order=True)
        result.duplicate_rows_dropped = batch.height - unique.height
        self._ensure_seed(spec)
        for values, part in unique.partition_by(list(spec.partition_by), as_dict=True, maintain_order=True).items():
            directory = self.partition_dir(spec, values)
            if not spec.high_volume:
                known = self._ids_in(directory)
                if known:
                    before = part.height
                    part = part.filter(~pl.col("event_id").is_in(list(known)))
                    result.duplicate_rows_dropped += before - part.height
            if part.height == 0:
                continue
            name = f"{DATA_PREFIX}{events.batch_id(part['event_id'])}.parquet"
            table = part.select(spec.file_columns).to_arrow()
            if self._write_file(directory, name, table):
                result.files_written.append(f"{directory}/{name}")
                result.rows_written += part.height
            else:
                result.files_already_present += 1
        return result

    def _write_file(self, directory: str, name: str, table: pa.Table) -> bool:
        """Write ``table`` as ``directory/name`` unless that file exists. True if written."""
        final = f"{directory}/{name}"
        try:
            if self.fs.get_file_info(final).type == pafs.FileType.File:
                return False
            self.fs.create_dir(directory, recursive=True)
            temp = f"{directory}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}{TEMP_SUFFIX}"
            try:
                pq.write_table(table, temp, filesystem=self.fs, compression=PARQUET_COMPRESSION)
                return self._publish(temp, final)
            finally:
                if self.fs.get_file_info(temp).type == pafs.FileType.File:
                    self.fs.delete_file(temp)
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"lake write failed for {final}: {exc}") from exc

    def _publish(self, temp: str, final: str) -> bool:
        """Make a fully written temporary file visible under its final name, never clobbering."""
        if not self._local:
            # Object stores publish a whole object at once; no partial object is visible.
            if self.fs.get_file_info(final).type == pafs.FileType.File:
                return False
            self.fs.move(temp, final)
            return True
        fsync_file(temp)
        try:
            os.link(temp, final)  # atomic and fails if the name exists: never replaces
        except FileExistsError:
            return False
        fsync_dir(os.path.dirname(final))
        return True

    def _ids_in(self, directory: str) -> set[str]:
        files = self._list(directory, recursive=False)
        if not files:
            return set()
        try:
            table = pq.ParquetDataset(files, filesystem=self.fs).read(columns=["event_id"])
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"cannot read existing events in {directory}: {exc}") from exc
        return set(table.column("event_id").to_pylist())

    # ------------------------------------------------------------------ reading

    def _list(self, directory: str, recursive: bool = True) -> list[str]:
        """Committed Parquet files under ``directory`` (no temporary files), sorted."""
        selector = pafs.FileSelector(directory, recursive=recursive, allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )

    def files(self, event_type: str, **partition: str) -> list[str]:
        """Committed files of ``event_type``, optionally only one model / config / run."""
        spec = spec_for(event_type)
        unknown = set(partition) - set(spec.partition_by)
        if unknown:
            raise LakeError(f"{event_type} is partitioned by {spec.partition_by}, not {sorted(unknown)}")
        files = self._list(self.event_dir(event_type))
        for key, value in partition.items():
            if value is not None:
                files = [f for f in files if f"/{key}={value}/" in f]
        return files

    def read(self, event_type: str, columns: list[str] | None = None, **partition: str) -> pl.DataFrame:
        """All events of ``event_type`` (one row per event id, the earliest recorded).

        Columns come in schema order with schema dtypes; files of older schema versions
        that lack a column read it as null. ``model=``, ``config_id=``, ``run_id=`` read
        only that partition.
        """
        spec = spec_for(event_type)
        unknown = [c for c in columns or () if c not in spec.polars_schema]
        if unknown:
            raise LakeError(f"{event_type} has no columns {unknown}")
        # the columns asked for, plus what de-duplication needs, in schema order
        wanted = [c for c in spec.polars_schema if not columns or c in columns or c in ("event_id", "recorded_at_ns")]
        arrow_schema = pl.DataFrame(schema=spec.polars_schema).to_arrow().schema
        files = self.files(event_type, **partition)
        if files:
            try:
                dataset = ds.dataset(
                    files,
                    schema=arrow_schema,
                    filesystem=self.fs,
                    format="parquet",
                    partitioning=ds.partitioning(
                        pa.schema([(k, arrow_schema.field(k).type) for k in spec.partition_by]), flavor="hive"
                    ),
                    partition_base_dir=self.event_dir(event_type),
                )
                table = dataset.to_table(columns=wanted)
            except (OSError, pa.ArrowException) as exc:
                raise LakeError(f"cannot read {event_type} from {self.uri}: {exc}") from exc
            df = pl.from_arrow(table).cast({c: spec.polars_schema[c] for c in wanted}).select(wanted)
        else:
            df = pl.DataFrame(schema={c: spec.polars_schema[c] for c in wanted})
        df = df.sort("recorded_at_ns", maintain_order=True).unique(subset="event_id", keep="first", maintain_order=True)
        return df.select(columns) if columns else df

    # ------------------------------------------------------------------ checking

    def verify(self) -> VerifyReport:
        """Re-read every file; report schema violations, hash mismatches, duplicate ids,
        stray temporary files and anything else that does not belong."""
        report = VerifyReport()
        if not self.exists():
            report.problems.append(Problem("layout", self.uri, "no lake folder here"))
            return report
        seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
        selector = pafs.FileSelector(self.root, recursive=True)
        for info in sorted(self.fs.get_file_info(selector), key=lambda i: i.path):
            if info.type != pafs.FileType.File:
                continue
            relative = PurePosixPath(info.path).relative_to(self.root)
            if info.base_name.startswith(TEMP_PREFIX):
                report.problems.append(Problem("stray-temp", info.path,
                                               "temporary file left by an interrupted write; never read as data"))
                continue
            if len(relative.parts) == 1 and info.base_name in ROOT_EXTRAS:
                continue
            spec = EVENT_TYPES.get(relative.parts[0])
            if spec is None or not info.base_name.endswith(".parquet"):
                report.problems.append(Problem("unexpected", info.path, "not an event file of a known event type"))
                continue
            self._verify_file(spec, info.path, relative, report, seen)
        for event_id, where in seen.items():
            if len(where) > 1:
                paths = sorted({p for _, p in where})
                report.problems.append(
                    Problem("duplicate", paths[0],
                            f"{where[0][0]} event {event_id} appears {len(where)} times: {', '.join(paths)}")
                )
        return report

    def _verify_file(self, spec: EventSpec, path: str, relative: PurePosixPath, report: VerifyReport, seen) -> None:
        keys = [part.partition("=") for part in relative.parts[1:-1]]
        if [k for k, _, _ in keys] != list(spec.partition_by) or any(not sep for _, sep, _ in keys):
            report.problems.append(Problem("layout", path, f"expected partitions {'/'.join(k + '=' for k in spec.partition_by)}"))
            return
        values = [v for _, _, v in keys]
        report.files_checked += 1
        try:
            table = pq.read_table(path, filesystem=self.fs)
        except (OSError, pa.ArrowException) as exc:
            report.problems.append(Problem("unreadable", path, f"not a readable Parquet file: {exc}"))
            return
        df = pl.from_arrow(table)
        report.rows_checked += df.height
        if values == [SEED_VALUE] * len(values):
            expected_name = f"schema-v{spec.version}.parquet"
            if relative.name != expected_name or df.height:
                report.problems.append(Problem("layout", path, f"a seed file must be an empty {expected_name}"))
            return
        unknown = [c for c in df.columns if c not in spec.file_columns]
        if unknown:
            report.problems.append(Problem("schema", path, f"{spec.name}: unknown columns {unknown}"))
            return
        df = df.with_columns(pl.lit(v, dtype=pl.Utf8).alias(k) for k, v in zip(spec.partition_by, values))
        df = df.select([c for c in spec.polars_schema if c in df.columns])
        try:
            events.validate(df, source=path)
        except EventValidationError as exc:
            hash_failed = any(f.get("column") == "event_id" and "sha256" in str(f.get("check")) for f in exc.failures)
            kind = "hash" if hash_failed else "schema"
            report.problems.append(Problem(kind, path, str(exc)))
            return
        expected = f"{DATA_PREFIX}{events.batch_id(df['event_id'])}.parquet"
        if relative.name != expected:
            report.problems.append(Problem("name", path, f"file name does not match its content (expected {expected})"))
        for event_id in df["event_id"]:
            seen[event_id].append((spec.name, path))

    def stats(self) -> pl.DataFrame:
        """Events (distinct ids), files and bytes per event type and origin."""
        rows = []
        for name in EVENT_TYPES:
            files = [f for f in self.files(name) if f"={SEED_VALUE}/" not in f]
            size = sum(i.size for i in self.fs.get_file_info(files)) if files else 0
            df = self.read(name, columns=["origin"])
            if df.height == 0:
                rows.append({"event_type": name, "origin": None, "events": 0, "files": len(files), "bytes": size})
                continue
            for origin, count in df.group_by("origin").len().sort("origin").iter_rows():
                rows.append({"event_type": name, "origin": origin, "events": count, "files": len(files), "bytes": size})
        return pl.DataFrame(rows, schema={"event_type": pl.Utf8, "origin": pl.Utf8, "events": pl.Int64, "files": pl.Int64,
                                          "bytes": pl.Int64})
