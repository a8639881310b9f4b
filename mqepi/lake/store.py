"""The event lake: append-only Parquet partitions of validated events.

Layout (hive partitions; the partition columns live in the path, not in the files)::

    <root>/<event_type>/model=<m>/config_id=<c>/ev-<batch sha256>.parquet            configs
    <root>/<event_type>/model=<m>/config_id=<c>/run_id=<r>/ev-<batch sha256>.parquet  run-bound
    <root>/<event_type>/model=_seed/.../schema-v<N>.parquet                           zero-row seed
                                                                                       (one per schema version met)

A query by model, configuration or run reads only that folder. File names derive from the
batch content (sha256 over the sorted event ids), so appending the same batch twice writes
nothing the second time. A file is written under a temporary dot-name (``.tmp-*.partial``,
never matched by ``*.parquet``), fsynced, then published with a no-clobber hard link, so no
file is ever partial and nothing committed is ever replaced. A file is data once the commit
log (:mod:`mqepi.lake.log`) names it: every write is a transaction (:meth:`Lake.transaction`)
whose files one commit makes visible together, under the lake's commit lock, so the checks a
writer makes against the lake and its append are one atomic step. Readers (``Lake.read``,
the SQL views through :func:`mqepi.results.sql.connect`) see exactly the committed files.
Nothing here deletes or rewrites a committed file.

All I/O goes through a ``pyarrow.fs`` filesystem: a local folder by default, an object store
URI (``s3://...``) where pyarrow supports one.

Schema versions are per event type (``EventSpec.version``); a new version only adds nullable
columns (``EventSpec.added``). The seed of the current version is written by ``init`` (which
``mqepi.results.sql.connect`` runs) and by the first append of the type, beside the seeds of
older versions (never replaced), so readers that union files by column name (the SQL views)
see every column, and the files of older versions read the columns added since as null.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqepi.errors import LakeError
from mqepi.lake import events
from mqepi.lake.durable import fsync_dir, fsync_file
from mqepi.lake.index import SEED_VALUE, FileIndex, parse
from mqepi.lake.locks import LockHeld, exclusive, holder_record
from mqepi.lake.log import CommitLog
from mqepi.lake.verify import DATA_PREFIX, LOCKS_DIR, TEMP_PREFIX, VerifyReport, seed_name, verify
from mqepi.schemas import EVENT_TYPES, RUN_BOUND, EventSpec, spec_for

#: Environment variable naming the lake root when no option is given.
LAKE_ENV = "MQEPI_LAKE"
DEFAULT_ROOT = "lake"
TEMP_SUFFIX = ".partial"
#: How long a writer waits for the commit lock before giving up.
COMMIT_WAIT_S = 600.0
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


def resolve_root(root: str | os.PathLike | None = None) -> str:
    """The lake root: the argument, else ``$MQEPI_LAKE``, else ``./lake``."""
    return str(root if root is not None else os.environ.get(LAKE_ENV) or DEFAULT_ROOT)


@dataclass
class _Pending:
    """The files a transaction wrote so far (committed together when it ends) and its run keys."""

    files: list[tuple[str, int, int]] = field(default_factory=list)
    run_keys: dict[str, tuple[str, str]] = field(default_factory=dict)


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
        self.log = CommitLog(self.fs, self.root)
        self._index = FileIndex(self.root)
        self._indexed = 0
        self._mutex = threading.RLock()  # the in-memory index, shared by a process's threads
        self._thread = threading.local()  # each thread's open transaction

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

    def lock_path(self, name: str) -> Path:
        """The lock file ``name`` (:mod:`mqepi.lake.locks`) of this lake: under ``<root>/_locks``
        for a local lake, else under ``~/.cache/mqepi/locks/<hash of the lake URI>``."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:150] + ".lock"
        if self._local:
            return Path(self.root) / LOCKS_DIR / safe
        cache = Path(os.environ.get("MQEPI_CACHE") or Path.home() / ".cache" / "mqepi")
        return cache / "locks" / hashlib.sha256(self.uri.encode()).hexdigest()[:16] / safe

    def _rel(self, path: str) -> str:
        return path[len(self.root) + 1:]

    # ------------------------------------------------------------------ the committed state

    def index(self) -> FileIndex:
        """The committed files, indexed (the commit log read up to now). A lake written before
        the log existed (no ``_log`` folder) is indexed from a listing of its folders."""
        with self._mutex:
            state = self.log.refresh()
            if not state.exists:
                legacy = FileIndex(self.root)
                for path in self._list(self.root):
                    legacy.add(self._rel(path))
                return legacy
            for rel in state.order[self._indexed:]:
                self._index.add(rel)
            self._indexed = len(state.order)
            return self._index

    @contextlib.contextmanager
    def transaction(self, writer: str | None = None) -> Iterator[_Pending]:
        """Hold the lake's commit lock for the block; every file written in it (by
        :meth:`append`, :meth:`record`) becomes visible in one commit when the block ends
        without an error, and none does otherwise. Reads inside the block see the lake as
        committed when it began plus nothing of the block's own writes. A transaction opened
        inside another one (same thread) joins it."""
        open_tx = getattr(self._thread, "tx", None)
        if open_tx is not None:
            yield open_tx
            return
        try:
            self.fs.create_dir(self.root, recursive=True)
            with exclusive(self.lock_path("commit"), f"the commit lock of lake {self.uri}", wait_s=COMMIT_WAIT_S,
                           holder=holder_record(writer=writer)):
                self._ensure_log()
                self.index()
                self._thread.tx = tx = _Pending()
                try:
                    yield tx
                finally:
                    self._thread.tx = None
                self.log.commit(tx.files, holder_record(writer=writer))
        except LockHeld as exc:
            raise LakeError(f"lake {self.uri}: {exc}") from exc
        except OSError as exc:
            raise LakeError(f"lake {self.uri}: cannot write: {exc}") from exc

    def _ensure_log(self) -> None:
        """Create the commit log; a lake written before it had one adopts its data files in one
        commit. The caller holds the commit lock."""
        if self.log.exists():
            return
        files = []
        for path in self._list(self.root):
            if parse(self._rel(path)) is not None:
                size = self.fs.get_file_info(path).size
                files.append((self._rel(path), pq.ParquetFile(path, filesystem=self.fs).metadata.num_rows, size))
        self.log.create()
        self.log.commit(files, holder_record(writer="adopted the files of a lake written before the commit log"))

    # ------------------------------------------------------------------ writing

    def init(self) -> list[str]:
        """Create the root, the commit log and every event type's seed file of its current schema
        version; return the types whose seed was written. A lake made by an older mqepi gains the
        seeds of the versions since (its older seeds stay). On a lake that has them all it writes
        nothing (not even the lock file)."""
        written = []
        if self.exists() and self.log.exists() and all(self._seed_committed(spec) for spec in EVENT_TYPES.values()):
            return written
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise LakeError(f"cannot create lake folder {self.uri}: {exc}") from exc
        with self.transaction("lake init"):
            for spec in EVENT_TYPES.values():
                if self._ensure_seed(spec):
                    written.append(spec.name)
        return written

    def _seed_path(self, spec: EventSpec) -> str:
        values = (SEED_VALUE,) * len(spec.partition_by)
        return f"{self._rel(self.partition_dir(spec, values))}/{seed_name(spec.version)}"

    def _seed_committed(self, spec: EventSpec) -> bool:
        self.index()
        return self._seed_path(spec) in self.log.state.files

    def _ensure_seed(self, spec: EventSpec) -> bool:
        if spec.name in self._seeded:
            return False
        directory = self.partition_dir(spec, (SEED_VALUE,) * len(spec.partition_by))
        name = seed_name(spec.version)
        empty = pl.DataFrame(schema=spec.polars_schema).select(spec.file_columns)
        wrote = self._commit_file(directory, name, empty.to_arrow())
        self._seeded.add(spec.name)
        return wrote

    def append(self, batch: pl.DataFrame, *, source: str | None = None) -> AppendResult:
        """Validate ``batch`` (one event type) and write it, one file per partition, in one commit
        (or in the open :meth:`transaction`'s).

        Events whose id the batch repeats, or (except for high-volume sample streams) whose
        id is already in the target partition, are dropped, so a retried stage adds nothing.
        Raises :class:`EventValidationError` before writing anything if any row is invalid,
        and :class:`LakeError` if the write fails or a run id of the batch is already in the
        lake under another model or configuration.
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
        with self.transaction(f"append {spec.name}") as tx:
            self._ensure_seed(spec)
            parts = unique.partition_by(list(spec.partition_by), as_dict=True, maintain_order=True)
            if spec.name in RUN_BOUND:
                self._claim_runs(tx, list(parts))
            for values, part in parts.items():
                directory = self.partition_dir(spec, values)
                if not spec.high_volume:
                    known = self._ids_in(spec, values)
                    if known:
                        before = part.height
                        part = part.filter(~pl.col("event_id").is_in(list(known)))
                        result.duplicate_rows_dropped += before - part.height
                if part.height == 0:
                    continue
                name = f"{DATA_PREFIX}{events.batch_id(part['event_id'])}.parquet"
                if self._commit_file(directory, name, part.select(spec.file_columns).to_arrow()):
                    result.files_written.append(f"{directory}/{name}")
                    result.rows_written += part.height
                else:
                    result.files_already_present += 1
        return result

    def _claim_runs(self, tx: _Pending, partitions: list[tuple]) -> None:
        """Refuse run ids the lake (or this transaction) holds under another (model, config)."""
        keys: dict[str, tuple[str, str]] = {}
        clash = []
        for model, config_id, run_id in partitions:
            key = (model, config_id)
            if keys.setdefault(run_id, key) != key or tx.run_keys.get(run_id, key) != key:
                clash.append(f"run_id {run_id!r} appears under two (model, config) pairs in one write")
        clash += self.index().run_conflicts(keys)
        if clash:
            raise LakeError(f"lake {self.uri}: {clash[0]}" + (f" (+{len(clash) - 1} more)" if len(clash) > 1 else ""))
        tx.run_keys.update(keys)

    def _commit_file(self, directory: str, name: str, table: pa.Table) -> bool:
        """Write ``directory/name`` unless it is committed already, and add it to the open
        transaction. True if it was not committed before (a file an interrupted write left
        uncommitted is complete: it is adopted, not rewritten)."""
        final = f"{directory}/{name}"
        rel = self._rel(final)
        if rel in self.log.state.files:
            return False
        self._write_file(directory, name, table)
        tx = self._thread.tx
        if any(f[0] == rel for f in tx.files):
            return False
        tx.files.append((rel, table.num_rows, self.fs.get_file_info(final).size))
        return True

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

    def _ids_in(self, spec: EventSpec, values: tuple) -> set[str]:
        """The event ids of the committed files of one partition."""
        files = self.index().files(spec.name, **dict(zip(spec.partition_by, values)))
        if not files:
            return set()
        try:
            table = pq.ParquetDataset(files, filesystem=self.fs).read(columns=["event_id"])
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"cannot read existing events of {spec.name} {values}: {exc}") from exc
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
        return self.index().files(event_type, **partition)

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
        """Check the lake against its commit log and re-read every committed file
        (:func:`mqepi.lake.verify.verify`)."""
        return verify(self)

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
