"""A durable local spool between a power source and the lake: samples are acknowledged when
they are on the measuring host's disk, and reach the lake in a few large commits.

Why: a stream flushes about once a second; appending each flush to the lake would make a
lake commit (a table version) per second, 3,600 an hour. :class:`SpoolSink` takes the same
``write(frame)`` calls as :class:`~mqepi.meter.stream.LakeSink` but appends each frame to a
local file and fsyncs it before returning (that return is the acknowledgement), and appends
what is spooled to the lake in one ``lake.record`` call every ``commit_interval_s`` (10 s),
every ``max_rows`` samples, at every window end (:meth:`SpoolSink.commit`) and at close.

Format: a sequence of segments, one per lake commit. A segment is one Arrow IPC *stream*
file (``seg-<8-digit number>.arrows``) under ``<spool_dir>/<model>/<config_id>/<run_id>/``:
the schema message, whose metadata names the format version, the lake, the event type and
the run, then one record batch message per acknowledged write; a clean close adds the IPC
end-of-stream marker. Why segments rather than one growing file with a "committed up to
byte N" marker: marking a segment done is one atomic unlink, so the spool never needs a
second file kept consistent with the first; the spool holds only what is not yet in the lake
(bounded by ``max_rows``, not by the length of the run); and a commit, a replay and a retry
after a failed lake write are all the same operation, "commit this whole segment". Why Arrow
IPC: the frames are Arrow already (no conversion, no parsing), a stream file can be appended
a message at a time, and a reader of a file cut short by a kill gets every complete message
before the cut.

Commit: the current segment is closed, read back from disk (what the lake gets is exactly
what was acknowledged), appended with one ``lake.record`` call, and only after that call
returned is the file deleted. A failed lake append leaves the segment in place and raises
(nothing is swallowed); the next commit, or :func:`replay`, retries it.

Replay (:func:`replay`): after a reader was killed, its uncommitted segments are committed the
same way. It is idempotent: ``lake.record`` derives each event's id from its content and the
lake de-duplicates by id (the same batch names the same file; readers keep one row per id),
so replaying a segment the killed reader had in fact committed adds nothing. A segment cut in
the middle of a message (killed during a write, before its fsync, so never acknowledged)
loses that message with a :class:`SpoolWarning`; everything before it is committed. A
segment over ``max_segment_bytes`` (2 GiB) is refused with a :class:`SpoolError` naming it.

Locking: a sink holds ``flock`` on its run folder's ``.lock`` for its lifetime; the kernel
drops it when the process dies, so :func:`replay` skips exactly the runs a live reader still
owns.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from mqepi.errors import MqepiError
from mqepi.meter.stream import MeterError, RunKey

#: Spool format version, in every segment's schema metadata.
FORMAT_VERSION = "1"
SEGMENT_GLOB = "seg-*.arrows"
SEGMENT_NAME = re.compile(r"seg-(\d{8})\.arrows")
LOCK_NAME = ".lock"
#: A segment larger than this is refused (2 GiB; a segment holds about ``max_rows``
#: samples of about 130 bytes, 6.5 MB by default, so only a foreign or corrupt file gets
#: near it).
MAX_SEGMENT_BYTES = 2 * 2**30
#: Environment variable of mqepi's cache root (the spool root is ``<cache>/spool``).
CACHE_ENV = "MQEPI_CACHE"
#: Defaults: commit every 10 s, and whenever this many samples are spooled (memory bound
#: of one commit: the lake append holds them all at once).
COMMIT_INTERVAL_S = 10.0
MAX_ROWS = 50_000


class SpoolError(MeterError):
    """A spool segment or folder cannot be used (too large, foreign, locked, unreadable)."""


class SpoolWarning(UserWarning):
    """Something in the spool was dropped or skipped (a torn, unacknowledged tail)."""


def spool_root() -> Path:
    """``$MQEPI_CACHE/spool``, else ``~/.cache/mqepi/spool``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mqepi") / "spool"


def spool_dir_for(lake) -> Path:
    """The default spool folder of ``lake`` on this host: ``<spool_root>/<16 hex of sha256 of
    the lake URI>``, so that replaying one lake never commits samples meant for another."""
    return spool_root() / hashlib.sha256(str(lake.uri).encode()).hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- run folder lock


class RunLock:
    """An exclusive ``flock`` on ``<run folder>/.lock``, taken without waiting. The kernel
    releases it when its process dies, however it dies."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another open file (process or sink) holds it."""
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was just removed by a releasing holder
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:  # not a lock file a releasing holder unlinked meanwhile
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return True
            os.close(fd)

    def holder(self) -> str:
        """The pid the lock file names (for messages), or ``?``."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self, *, remove_empty_up_to: Path | None = None) -> None:
        """Release; with ``remove_empty_up_to``, first remove the lock file (unless segments
        are left) and then the run folder and its parents below that folder, as far as they
        are empty (a spool is scratch: nothing is left behind once it is all committed)."""
        if self._fd is None:
            return
        try:
            if remove_empty_up_to is not None and not any(self.folder.glob(SEGMENT_GLOB)):
                self.path.unlink(missing_ok=True)  # under the lock: see acquire's inode check
                folder = self.folder
                while folder != remove_empty_up_to and remove_empty_up_to in folder.parents:
                    try:
                        folder.rmdir()
                    except OSError:
                        break
                    folder = folder.parent
        finally:
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- segments


def _number(path: Path) -> int:
    match = SEGMENT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else -1


def segments(folder: Path) -> list[Path]:
    """The segment files of one run folder, oldest first."""
    return sorted((p for p in folder.glob(SEGMENT_GLOB) if _number(p) >= 0), key=_number)


class SegmentWriter:
    """One segment being appended: an Arrow IPC stream file, fsynced after every write."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.rows = 0
        self._file = open(path, "xb")  # noqa: SIM115 - closed by close(); held across writes
        try:
            self._writer = pa.ipc.new_stream(self._file, schema)
            _fsync_dir(path.parent)  # the new name survives a power cut too
        except BaseException:
            self._file.close()
            raise

    def append(self, table: pa.Table) -> None:
        """Append ``table`` (this segment's schema) and fsync: when this returns, it is on disk."""
        self._writer.write_table(table)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows += table.num_rows

    def close(self) -> None:
        """Write the end-of-stream marker, fsync and close."""
        try:
            self._writer.close()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()


@dataclass
class Segment:
    """What a segment file holds: its rows, the run and event type its metadata names, and
    the bytes of a torn tail that were dropped (0: the file was whole)."""

    path: Path
    table: pa.Table | None
    meta: dict[str, str]
    torn_bytes: int = 0

    @property
    def rows(self) -> int:
        """Complete rows read (those before a torn tail)."""
        return 0 if self.table is None else self.table.num_rows


def read_segment(path: Path, *, max_bytes: int = MAX_SEGMENT_BYTES) -> Segment:
    """Read a segment: every complete record batch, up to a torn tail (dropped, counted in
    ``torn_bytes``). Raises :class:`SpoolError` for a file over ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise SpoolError(f"spool segment {path} is {size} bytes, over the {max_bytes}-byte limit; not read")
    batches: list[pa.RecordBatch] = []
    with pa.OSFile(str(path), "rb") as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError):  # not even a whole schema message: nothing was acknowledged
            return Segment(path, None, {}, torn_bytes=size)
        good = source.tell()  # the end of the last complete message
        while True:
            try:
                batches.append(reader.read_next_batch())
            except (StopIteration, pa.ArrowInvalid, OSError):  # the end, or a torn message (measured below)
                break
            good = source.tell()
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        table = pa.Table.from_batches(batches, schema=reader.schema)
    torn = 0 if good >= size or _ends_clean(path, good, size) else size - good
    return Segment(path, table, meta, torn_bytes=torn)


def _ends_clean(path: Path, good: int, size: int) -> bool:
    """Whether the bytes after the last complete batch are just the end-of-stream marker."""
    if size - good > 8:
        return False
    with open(path, "rb") as f:
        f.seek(good)
        rest = f.read(size - good)
    return rest in (b"\xff\xff\xff\xff\x00\x00\x00\x00", b"\x00\x00\x00\x00")


def _segment_run(seg: Segment) -> tuple[RunKey, str]:
    meta = seg.meta
    if meta.get("mqepi.spool") != FORMAT_VERSION:
        raise SpoolError(f"spool segment {seg.path}: format {meta.get('mqepi.spool')!r}, not {FORMAT_VERSION!r}")
    return RunKey(meta["model"], meta["config_id"], meta["run_id"]), meta["event_type"]


@dataclass(frozen=True)
class Committed:
    """One segment appended to the lake: rows read from it, rows the lake wrote (0 when the
    lake had them all already), bytes of a torn tail dropped."""

    path: Path
    rows: int
    rows_written: int
    torn_bytes: int


def commit_segment(lake, path: Path, *, max_bytes: int = MAX_SEGMENT_BYTES) -> Committed:
    """Append one segment's rows to ``lake`` in one ``lake.record`` call, then delete the
    file. A torn tail is dropped with a :class:`SpoolWarning`; a segment spooled for another
    lake, or in another format, raises :class:`SpoolError` and stays."""
    seg = read_segment(path, max_bytes=max_bytes)
    if seg.torn_bytes:
        warnings.warn(f"spool segment {path}: dropped a torn, unacknowledged tail of {seg.torn_bytes} bytes "
                      f"after {seg.rows} complete rows", SpoolWarning, stacklevel=2)
    written = 0
    if seg.rows:
        run, event_type = _segment_run(seg)
        if seg.meta.get("lake") != str(lake.uri):
            raise SpoolError(f"spool segment {path} was spooled for lake {seg.meta.get('lake')!r}, not {lake.uri!r}")
        frame = pl.from_arrow(seg.table)
        try:
            written = lake.record(event_type, frame.with_columns(**run.columns(frame.height))).rows_written
        except MqepiError as exc:
            exc.add_note(f"spool segment {path} ({seg.rows} rows) is kept for a later commit or replay")
            raise
    path.unlink()  # only now: the lake append returned
    _fsync_dir(path.parent)
    return Committed(path, seg.rows, written, seg.torn_bytes)


# --------------------------------------------------------------------------- the sink


class SpoolSink:
    """A sink (``write(frame)``, like :class:`~mqepi.meter.stream.LakeSink`) that acknowledges
    a frame once it is fsynced into the local spool and appends the spool to the lake in one
    ``lake.record`` call per commit: every ``commit_interval_s`` (checked at write time on
    ``monotonic``), whenever ``max_rows`` samples are spooled, on :meth:`commit` (window
    ends) and on :meth:`close`. Segments a killed reader of the same run left behind are
    committed by the first commit, before the new ones. Thread-safe: the stream's writer
    thread writes while a window end commits."""

    def __init__(self, lake, run: RunKey, spool_dir: Path, event_type: str = "power_sample", *,
                 commit_interval_s: float = COMMIT_INTERVAL_S, max_rows: int = MAX_ROWS,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES, monotonic=time.monotonic):
        if commit_interval_s <= 0 or max_rows <= 0:
            raise SpoolError(f"commit_interval_s {commit_interval_s} and max_rows {max_rows} must be > 0")
        self.lake, self.run, self.event_type = lake, run, event_type
        self.spool_dir = Path(spool_dir)
        self.folder = self.spool_dir / run.model / run.config_id / run.run_id
        self.commit_interval_s, self.max_rows, self.max_segment_bytes = commit_interval_s, max_rows, max_segment_bytes
        self._monotonic = monotonic
        self._mutex = threading.RLock()
        self._lock = RunLock(self.folder)
        if not self._lock.acquire():
            raise SpoolError(f"spool folder {self.folder} is in use by another reader (pid {self._lock.holder()})")
        self._pending = segments(self.folder)  # closed, not yet committed: a killed reader's first
        self._next = max((_number(p) for p in self._pending), default=-1) + 1
        self._segment: SegmentWriter | None = None
        self._last_commit = monotonic()
        self.closed = False
        self.recovered_segments = len(self._pending)
        #: rows acknowledged; rows committed (a killed reader's included); rows the lake
        #: wrote; ``lake.record`` calls
        self.rows_spooled = self.rows_committed = self.rows_written = self.commits = 0

    def _table(self, frame: pl.DataFrame) -> pa.Table:
        # polars' own string layout (Arrow string views): no conversion on the way to the
        # spool, and none on the way back into polars for the lake append
        table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
        if self._segment is None:
            meta = {"mqepi.spool": FORMAT_VERSION, "lake": str(self.lake.uri), "event_type": self.event_type,
                    "model": self.run.model, "config_id": self.run.config_id, "run_id": self.run.run_id}
            path = self.folder / f"seg-{self._next:08d}.arrows"
            self._next += 1
            self._segment = SegmentWriter(path, table.schema.with_metadata(meta))
        schema = self._segment.schema
        if table.schema.remove_metadata() != schema.remove_metadata():
            try:
                table = table.select(schema.names).cast(schema.remove_metadata())
            except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise SpoolError(f"frame columns {table.schema.names} do not fit spool segment "
                                 f"{self._segment.path} ({schema.names}): {exc}") from exc
        return table

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` to the spool, fsynced (the acknowledgement), then commit if due."""
        if frame.height == 0:
            return
        with self._mutex:
            if self.closed:
                raise SpoolError(f"spool sink of {self.folder} is closed")
            table = self._table(frame)
            self._segment.append(table)
            self.rows_spooled += table.num_rows
            if (self._segment.rows >= self.max_rows
                    or self._monotonic() - self._last_commit >= self.commit_interval_s):
                self.commit()

    def commit(self) -> int:
        """Append everything spooled and not yet committed to the lake (one ``lake.record``
        per segment: normally exactly one), deleting each segment after its append returned.
        Returns the rows committed. A failed append raises and keeps its segment."""
        with self._mutex:
            if self.closed and self._pending:
                raise SpoolError(f"spool sink of {self.folder} is closed with {len(self._pending)} segments "
                                 "uncommitted; replay() commits them")
            self._last_commit = self._monotonic()
            if self._segment is not None:
                self._segment.close()
                self._pending.append(self._segment.path)
                self._segment = None
            rows = 0
            while self._pending:
                done = commit_segment(self.lake, self._pending[0], max_bytes=self.max_segment_bytes)
                self._pending.pop(0)
                rows += done.rows
                self.rows_committed += done.rows
                self.rows_written += done.rows_written
                self.commits += 1
            return rows

    def close(self, *, commit: bool = True) -> None:
        """Commit (unless ``commit`` is False: after a failure, leave the spool for
        :func:`replay`), then release the run folder (removed, with ``spool_dir``, when
        nothing is left in them)."""
        with self._mutex:
            if self.closed:
                return
            try:
                if commit:
                    self.commit()
                elif self._segment is not None:
                    self._segment.close()
                    self._segment = None
            finally:
                self.closed = True
                self._lock.release(remove_empty_up_to=self.spool_dir.parent)

    def __enter__(self) -> SpoolSink:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(commit=exc_type is None)


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayResult:
    """What :func:`replay` did: segments and rows committed, torn tails dropped, runs skipped
    because a live reader holds them."""

    segments: int = 0
    rows: int = 0
    rows_written: int = 0
    torn: int = 0
    busy: list[Path] = field(default_factory=list)


def replay(lake, spool_dir: Path, *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> ReplayResult:
    """Commit every segment under ``spool_dir`` (all runs) that a killed reader left
    uncommitted, oldest first, one ``lake.record`` call each, and remove emptied run folders;
    skip the runs a live reader holds. Idempotent (see the module docstring); a torn tail is
    dropped with a :class:`SpoolWarning`."""
    result = ReplayResult()
    spool_dir = Path(spool_dir)
    folders = {p.parent for pattern in (LOCK_NAME, SEGMENT_GLOB) for p in spool_dir.glob(f"*/*/*/{pattern}")}
    for folder in sorted(folders):
        lock = RunLock(folder)
        if not lock.acquire():
            result.busy.append(folder)
            continue
        try:
            for path in segments(folder):
                done = commit_segment(lake, path, max_bytes=max_segment_bytes)
                result.segments += 1
                result.rows += done.rows
                result.rows_written += done.rows_written
                result.torn += done.torn_bytes > 0
        finally:
            lock.release(remove_empty_up_to=spool_dir.parent)
    return result
