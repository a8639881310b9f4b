"""The event lake: one Delta table per event type, of validated, content-addressed events.

Layout (a local folder or an object-store prefix ``s3://bucket/prefix``)::

    <root>/<event_type>/_delta_log/<version>.json                    the table's log (Delta protocol)
    <root>/<event_type>/model=<m>/config_id=<c>/ev-<sha256>.parquet  one batch of events
    <root>/<event_type>/model=<m>/config_id=<c>/cp-<sha256>.parquet  a compacted file
    <root>/<event_type>/model=_seed/config_id=_seed/schema-v<N>.parquet  zero-row seed per schema version

Partitions are (model, config_id) for every type; run ids are a column (no folder per run).
A data file's name derives from the batch content (sha256 over its sorted event ids), so the
same batch twice writes and commits nothing the second time. mqepi writes each file itself
(:func:`mqepi.lake.durable.write_parquet`) and commits it with delta-rs
(:mod:`mqepi.lake.delta`): a file is data once its table's log names it. Every write is a
transaction (:meth:`Lake.transaction`): each table's files commit as one version carrying the
producer, each file's sha256, rows and runs, the transaction's plan, and an application
transaction keyed by the content (a retried commit is a no-op). A transaction over several
tables commits them in :data:`COMMIT_ORDER` (``run`` last); ``lake verify`` reports one
interrupted between tables (``incomplete``), and re-running the write completes it.

A local lake's commit lock makes a writer's checks (run-id claims) and its commit one step;
on an object store writers rely on Delta's optimistic concurrency (conditional puts). Nothing
here deletes or rewrites a committed file: :mod:`mqepi.lake.compact` merges small files as a new
version (old files stay reachable by time travel); only its ``vacuum`` deletes, when asked.

Schema versions (``EventSpec.version``) only add nullable columns (``EventSpec.added``), added
to the table's schema by ``init`` or the first append; every version's seed stays, so readers
that union files by column name see every column, older files reading the new ones as null.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqepi.errors import LakeError
from mqepi.lake import delta, events
from mqepi.lake.durable import PARQUET_COMPRESSION, publish, write_parquet  # noqa: F401 - PARQUET_COMPRESSION re-exported
from mqepi.lake.index import SEED_VALUE, FileIndex
from mqepi.lake.locks import LockHeld, exclusive, holder_record
from mqepi.lake.stats import stats as lake_stats
from mqepi.lake.verify import DATA_PREFIX, LOCKS_DIR, VerifyReport, seed_name, verify
from mqepi.schemas import CONFIG_BOUND, EVENT_TYPES, RUN_BOUND, EventSpec, spec_for

#: Environment variable naming the lake root when no option is given.
LAKE_ENV = "MQEPI_LAKE"
DEFAULT_ROOT = "lake"
#: How long a writer waits for the commit lock before giving up.
COMMIT_WAIT_S = 600.0
#: The order in which one transaction's tables commit: what runs refer to first, ``run`` last
#: (a run is listed once its events are in).
COMMIT_ORDER = (*CONFIG_BOUND, *(t for t in RUN_BOUND if t != "run"), "run")


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


@dataclass(frozen=True)
class _File:
    """A file written by a transaction, to be committed when it ends."""

    rel: str  # path under the table folder
    rows: int
    bytes: int
    sha256: str
    partition: tuple[str, str]
    runs: tuple[str, ...]


@dataclass
class _Pending:
    """The files a transaction wrote so far, per table (committed when it ends), and its run keys."""

    files: dict[str, list[_File]] = field(default_factory=dict)
    #: per table, every file the transaction holds: its new files and those already committed
    planned: dict[str, list[str]] = field(default_factory=dict)
    run_keys: dict[str, tuple[str, str]] = field(default_factory=dict)


class Lake:
    """An event lake rooted at a local folder or an object-store URI (``s3://bucket/prefix``).

    ``versions`` (event type -> table version) opens the lake as it was at those versions
    (time travel, read only): what a snapshot recorded (``mqepi sql --as-of``); a type it
    does not name reads its latest version.
    """

    def __init__(self, root: str | os.PathLike | None = None, filesystem: pafs.FileSystem | None = None,
                 versions: dict[str, int] | None = None):
        root = resolve_root(root)
        if filesystem is not None:
            self.fs, self.root = filesystem, root.rstrip("/")
        elif "://" in root:
            self.fs, self.root = delta.filesystem(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.uri = root.rstrip("/") if "://" in root else self.root
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        self.pinned = dict(versions) if versions is not None else None
        self._logs = {t: delta.TableLog(self.fs, self.table_dir(t), (self.pinned or {}).get(t)) for t in EVENT_TYPES}
        self._tables: set[str] = set()
        self._handles: dict = {}
        self._seeded: set[str] = set()
        self._index = FileIndex(self.root)
        self._mutex = threading.RLock()  # the in-memory index, shared by a process's threads
        self._thread = threading.local()  # each thread's open transaction

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"
    def at(self, versions: dict[str, int]) -> Lake:
        """This lake as it was at ``versions`` (read only)."""
        return Lake(self.uri, filesystem=None if "://" in self.uri else self.fs, versions=versions)

    # ------------------------------------------------------------------ paths

    def table_dir(self, event_type: str) -> str:
        """The folder (or object prefix) of an event type's table."""
        spec_for(event_type)
        return f"{self.root}/{event_type}"

    def table_uri(self, event_type: str) -> str:
        """The table's URI as delta-rs opens it."""
        return delta.table_uri(self.uri, event_type)

    def exists(self) -> bool:
        try:
            if self.fs.get_file_info(self.root).type == pafs.FileType.Directory:
                return True
            return not self._local and any(log.exists() for log in self._logs.values())
        except OSError as exc:
            raise LakeError(f"cannot reach the lake {self.uri}: {exc}") from exc

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
        """The active files, indexed (every table's log read up to now)."""
        with self._mutex:
            for event_type in self._logs:
                self._refresh(event_type)
            return self._index

    def _refresh(self, event_type: str) -> None:  # one table's new versions, their net change applied
        with self._mutex:
            added, removed = self._logs[event_type].refresh()
            for entry in removed:
                self._index.remove(event_type, entry)
            for entry in added:
                self._index.add(event_type, entry)

    def log(self, event_type: str) -> delta.TableLog:
        """The (refreshed) log of one table (only that table's log is read)."""
        self._refresh(event_type)
        return self._logs[event_type]

    def versions(self) -> dict[str, int]:
        """Event type -> the table version read (-1: no table yet): the lake's state."""
        self.index()
        return {t: log.version for t, log in self._logs.items()}

    @contextlib.contextmanager
    def transaction(self, writer: str | None = None) -> Iterator[_Pending]:
        """Every file written in the block (by :meth:`append`, :meth:`record`) is committed when
        the block ends without an error (one version per table, in :data:`COMMIT_ORDER`), and
        none is otherwise. On a local lake the block holds the lake's commit lock. Reads inside
        the block see the lake as committed when it began plus nothing of the block's own
        writes. A transaction opened inside another one (same thread) joins it."""
        self._writable()
        open_tx = getattr(self._thread, "tx", None)
        if open_tx is not None:
            yield open_tx
            return
        lock = (exclusive(self.lock_path("commit"), f"the commit lock of lake {self.uri}", wait_s=COMMIT_WAIT_S,
                          holder=holder_record(writer=writer)) if self._local else contextlib.nullcontext())
        try:
            if self._local:
                self.fs.create_dir(self.root, recursive=True)
            with lock:
                self.index()
                self._thread.tx = tx = _Pending()
                try:
                    yield tx
                finally:
                    self._thread.tx = None
                self._commit(tx, writer)
        except LockHeld as exc:
            raise LakeError(f"lake {self.uri}: {exc}") from exc
        except OSError as exc:
            raise LakeError(f"lake {self.uri}: cannot write: {exc}") from exc

    def _commit(self, tx: _Pending, writer: str | None) -> None:
        """Commit a transaction's files, one table version per table, in COMMIT_ORDER."""
        tables = [t for t in COMMIT_ORDER if tx.files.get(t)]
        if not tables:
            return
        planned = {t: sorted(set(tx.planned[t])) for t in COMMIT_ORDER if tx.planned.get(t)}
        txid = hashlib.sha256("\n".join(f"{t}/{rel}" for t, rels in planned.items() for rel in rels).encode()).hexdigest()
        producer = holder_record(writer=writer)
        for event_type in tables:
            files = tx.files[event_type]
            actions = [delta.add_action(f.rel, f.bytes, f.partition, f.rows) for f in files]
            meta = {"producer": producer, "transaction": txid, "tables": planned,
                    "files": {f.rel: {"sha256": f.sha256, "rows": f.rows, "runs": list(f.runs)} for f in files}}
            app_id = "mqepi-" + hashlib.sha256("\n".join(sorted(f.rel for f in files)).encode()).hexdigest()[:40]
            if app_id in self._logs[event_type].app_ids:
                continue  # committed before (a retried write): nothing to do
            try:
                delta.commit(self._table(event_type), actions, meta, app_id)
            except LakeError:
                self.index()  # another writer committed the same files meanwhile (same app id): done
                if app_id not in self._logs[event_type].app_ids:
                    raise
        self.index()

    def _table(self, event_type: str):
        """The delta-rs handle of a table, opened once."""
        table = self._handles.get(event_type)
        if table is None:
            table = self._handles[event_type] = delta.open_table(self.table_uri(event_type))
        return table

    def _writable(self) -> None:
        if self.pinned is not None:
            raise LakeError(f"lake {self.uri} is opened as of past table versions: read only")

    # ------------------------------------------------------------------ writing

    def init(self) -> list[str]:
        """Create the root, every event type's table (append-only) and the seed file of its
        current schema version; return the types whose seed was written. A lake made by an
        older mqepi gains the columns and seeds of the versions since (its older seeds stay).
        On a lake that has them all it writes nothing. Tables are best created once, by
        ``lake init``: two processes creating the same table at once conflict."""
        self._writable()
        written = []
        if self.exists() and all(self._seed_committed(spec) for spec in EVENT_TYPES.values()):
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

    def _ensure_table(self, spec: EventSpec) -> None:
        """Create the table of ``spec`` if missing; add the columns of a newer schema version."""
        if spec.name in self._tables:
            return
        schema = pl.DataFrame(schema=spec.polars_schema).to_arrow().schema
        uri = self.table_uri(spec.name)
        if not self._logs[spec.name].exists():
            delta.create(uri, schema, holder_record(writer=f"create table {spec.name}"))
        else:
            have = set(delta.schema_names(uri))
            missing = [f for f in schema if f.name not in have]
            if missing:
                delta.add_columns(uri, missing)
        self._tables.add(spec.name)

    def _seed_rel(self, spec: EventSpec) -> str:
        return f"model={SEED_VALUE}/config_id={SEED_VALUE}/{seed_name(spec.version)}"

    def _seed_committed(self, spec: EventSpec) -> bool:
        self.index()
        return self._seed_rel(spec) in self._logs[spec.name].active

    def _ensure_seed(self, spec: EventSpec) -> bool:
        if spec.name in self._seeded:
            return False
        self._ensure_table(spec)
        empty = pl.DataFrame(schema=spec.polars_schema).select(spec.file_columns)
        wrote = self._commit_file(spec.name, (SEED_VALUE, SEED_VALUE), seed_name(spec.version), empty.to_arrow(), ())
        self._seeded.add(spec.name)
        return wrote

    def append(self, batch: pl.DataFrame, *, source: str | None = None) -> AppendResult:
        """Validate ``batch`` (one event type) and write it, one file per partition, in one commit
        (or in the open :meth:`transaction`'s).

        Events whose id the batch repeats, or (except for high-volume sample streams) whose
        id is already in the lake for the same run or configuration, are dropped, so a retried
        stage adds nothing. Raises :class:`EventValidationError` before writing anything if
        any row is invalid, and :class:`LakeError` if the write fails or a run id of the batch
        is already in the lake under another model or configuration.
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
        try:
            self._write_partitions(spec, unique, result)
        except LakeError as exc:
            if spec.name in str(exc):
                raise
            raise LakeError(f"append to {spec.name} ({self.table_uri(spec.name)}) failed: {exc}") from exc
        return result

    def _write_partitions(self, spec: EventSpec, unique: pl.DataFrame, result: AppendResult) -> None:
        with self.transaction(f"append {spec.name}") as tx:
            self._ensure_seed(spec)
            parts = unique.partition_by(list(spec.partition_by), as_dict=True, maintain_order=True)
            run_bound = spec.name in RUN_BOUND
            runs_of = {values: tuple(sorted(part["run_id"].unique().to_list())) if run_bound else ()
                       for values, part in parts.items()}
            if run_bound:
                self._claim_runs(tx, runs_of)
            for values, part in parts.items():
                if not spec.high_volume:
                    known = self._ids_in(spec, values, runs_of[values])
                    if known:
                        before = part.height
                        part = part.filter(~pl.col("event_id").is_in(list(known)))
                        result.duplicate_rows_dropped += before - part.height
                if part.height == 0:
                    continue
                name = f"{DATA_PREFIX}{events.batch_id(part['event_id'])}.parquet"
                runs = tuple(sorted(part["run_id"].unique().to_list())) if run_bound else ()
                if self._commit_file(spec.name, values, name, part.select(spec.file_columns).to_arrow(), runs):
                    result.files_written.append(f"{self.table_dir(spec.name)}/{_partition_rel(values)}/{name}")
                    result.rows_written += part.height
                else:
                    result.files_already_present += 1

    def _claim_runs(self, tx: _Pending, runs_of: dict[tuple, tuple[str, ...]]) -> None:
        """Refuse run ids the lake (or this transaction) holds under another (model, config)."""
        keys: dict[str, tuple[str, str]] = {}
        clash = []
        for (model, config_id), runs in runs_of.items():
            key = (model, config_id)
            for run_id in runs:
                if keys.setdefault(run_id, key) != key or tx.run_keys.get(run_id, key) != key:
                    clash.append(f"run_id {run_id!r} appears under two (model, config) pairs in one write")
        clash += self.index().run_conflicts(keys)
        if clash:
            raise LakeError(f"lake {self.uri}: {clash[0]}" + (f" (+{len(clash) - 1} more)" if len(clash) > 1 else ""))
        tx.run_keys.update(keys)

    def _commit_file(self, event_type: str, partition: tuple, name: str, table: pa.Table, runs: tuple[str, ...]) -> bool:
        """Write the file ``name`` of ``partition`` unless it is active already, and add it to the
        open transaction. True if it was not active before (a file an interrupted write left
        uncommitted holds the same events: it is adopted, not rewritten)."""
        rel = f"{_partition_rel(partition)}/{name}"
        tx = self._thread.tx
        tx.planned.setdefault(event_type, []).append(rel)
        if rel in self._logs[event_type].active:
            return False
        pending = tx.files.setdefault(event_type, [])
        if any(f.rel == rel for f in pending):
            return False
        size, sha = self._write_file(f"{self.table_dir(event_type)}/{_partition_rel(partition)}", name, table)
        pending.append(_File(rel, table.num_rows, size, sha, tuple(str(v) for v in partition), runs))
        return True

    def _write_file(self, directory: str, name: str, table: pa.Table) -> tuple[int, str]:
        """Write ``table`` as ``directory/name`` unless that file exists (:func:`mqepi.lake.durable.write_parquet`)."""
        return write_parquet(self.fs, directory, name, table, publish=self._publish if self._local else None,
                             put_new=None if self._local else delta.put_if_absent)

    def _publish(self, temp: str, final: str) -> bool:
        """Publish a local temporary file, never clobbering (:func:`mqepi.lake.durable.publish`; a test hook)."""
        return publish(temp, final)

    def _ids_in(self, spec: EventSpec, values: tuple, runs: tuple[str, ...]) -> set[str]:
        """The event ids of the active files of one configuration (of a run-bound type: of the
        files holding ``runs``)."""
        index = self.index()
        if runs:
            files = sorted({f for r in runs for f in index.files(spec.name, run_id=r)})
        else:
            files = index.files(spec.name, **dict(zip(spec.partition_by, values)))
        if not files:
            return set()
        try:
            table = pq.ParquetDataset(files, filesystem=self.fs).read(columns=["event_id"])
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"cannot read existing events of {spec.name} {values}: {exc}") from exc
        return set(table.column("event_id").to_pylist())

    # ------------------------------------------------------------------ compaction, vacuum

    # ------------------------------------------------------------------ reading

    def files(self, event_type: str, **partition: str) -> list[str]:
        """Active files of ``event_type``, optionally only one model / config / run."""
        spec = spec_for(event_type)
        allowed = set(spec.keys)
        unknown = set(partition) - allowed
        if unknown:
            raise LakeError(f"{event_type} is keyed by {spec.keys}, not {sorted(unknown)}")
        return self.index().files(event_type, **partition)

    def read(self, event_type: str, columns: list[str] | None = None, **partition: str) -> pl.DataFrame:
        """All events of ``event_type`` (one row per event id, the earliest recorded).

        Columns come in schema order with schema dtypes; files of older schema versions
        that lack a column read it as null. ``model=``, ``config_id=``, ``run_id=`` read
        only that partition (or run).
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
                    partition_base_dir=self.table_dir(event_type),
                )
                filt = ds.field("run_id") == partition["run_id"] if "run_id" in partition else None
                table = dataset.to_table(columns=wanted, filter=filt)
            except (OSError, pa.ArrowException) as exc:
                raise LakeError(f"cannot read {event_type} from {self.uri}: {exc}") from exc
            df = pl.from_arrow(table).cast({c: spec.polars_schema[c] for c in wanted}).select(wanted)
        else:
            df = pl.DataFrame(schema={c: spec.polars_schema[c] for c in wanted})
        df = df.sort("recorded_at_ns", maintain_order=True).unique(subset="event_id", keep="first", maintain_order=True)
        return df.select(columns) if columns else df

    # ------------------------------------------------------------------ checking

    def verify(self) -> VerifyReport:
        """Check every table's log, every active file's hash and schema
        (:func:`mqepi.lake.verify.verify`)."""
        return verify(self)

    def stats(self) -> pl.DataFrame:
        """Events (distinct ids), active files, bytes and table version per event type and origin."""
        return lake_stats(self)


def _partition_rel(values: tuple) -> str:
    return "/".join(f"{k}={v}" for k, v in zip(("model", "config_id"), values))
