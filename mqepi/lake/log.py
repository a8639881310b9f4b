"""The commit log of the lake layout before Delta Lake (read only now, by :mod:`mqepi.lake.legacy`
for ``lake migrate``): the durable record of which files were data.

A file in an event folder is data only once a commit names it. Writers first write every file
of a transaction (a sweep stage's batch, a whole community bundle), then add one commit that
names them all, so a transaction's events become visible together or not at all: a writer
killed, out of disk or refused permission half-way leaves files no commit names, which
readers never read and ``lake verify`` reports as an incomplete write. Verify also checks
every committed file against the log (present, the recorded size), so a deleted, renamed or
hidden data file is reported as lost, never silently dropped.

Storage: on a local lake, one append-only JSON-lines file ``<root>/_log/commits.jsonl``;
commits are appended under the lake's commit lock (:mod:`mqepi.lake.locks`), one ``write``
of a whole line, then fsynced. A line carries a checksum of its content, so a line torn by a
crash is recognised and ignored (with its files, which it never committed). On an object
store, which has no append, each commit is one object ``_log/c-<time>-<random>.json``.

A lake written before the log existed has no ``_log`` folder; the first write (or ``lake
init``) adopts every data file present then in one commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from mqepi.errors import LakeError
from mqepi.lake.durable import fsync_dir

LOG_DIR = "_log"
LOG_FILE = "commits.jsonl"
#: Largest commit line read (a commit names at most a few thousand files).
MAX_LINE_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class CommittedFile:
    """One data file a commit names: its path under the lake root, rows and bytes."""

    path: str
    rows: int
    bytes: int
    commit: int  # the commit's position in the log (line or object, from 1)


@dataclass
class LogProblem:
    """A log record that cannot be read (torn by a crash, or damaged)."""

    where: str
    detail: str


@dataclass
class LogState:
    """What the log says so far: committed files in commit order, unreadable records."""

    files: dict[str, CommittedFile] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # the files' paths in commit order (indexed incrementally)
    problems: list[LogProblem] = field(default_factory=list)
    commits: int = 0
    exists: bool = False


def _checked(record: dict) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def encode(files: list[tuple[str, int, int]], writer: dict) -> bytes:
    """One commit record as a line: the files (path, rows, bytes), who and when, a checksum."""
    record = {"files": [list(f) for f in files], "writer": writer, "at_ns": time.time_ns()}
    record["check"] = _checked(record)
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> list[tuple[str, int, int]] | None:
    """The files of one commit line, or None if the line is not an intact commit record."""
    try:
        record = json.loads(line)
        check = record.pop("check")
        if check != _checked(record):
            return None
        return [(str(p), int(r), int(b)) for p, r, b in record["files"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class CommitLog:
    """The commit log of the lake at ``root`` on ``fs``, read incrementally."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.dir = f"{root}/{LOG_DIR}"
        self.path = f"{self.dir}/{LOG_FILE}"
        self.state = LogState()
        self._offset = 0
        self._objects: set[str] = set()

    def exists(self) -> bool:
        """True once the log was created (a lake written by this version)."""
        return self.fs.get_file_info(self.dir).type == pafs.FileType.Directory

    def refresh(self) -> LogState:
        """Read the commits added since the last refresh; return the whole state."""
        self.state.exists = self.exists()
        if not self.state.exists:
            return self.state
        if self.local:
            self._read_local()
        else:
            self._read_objects()
        return self.state

    def _read_local(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # complete lines only; a line being written is read next time
        start = 0
        while start < end:
            stop = data.index(b"\n", start)
            line = data[start:stop]
            self._add(line, f"{self.path} byte {self._offset + start}")
            start = stop + 1
        self._offset += end

    def _read_objects(self) -> None:
        infos = self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True))
        for path in sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith("c-")):
            if path in self._objects:
                continue
            self._objects.add(path)
            with self.fs.open_input_stream(path) as fh:
                self._add(fh.read(MAX_LINE_BYTES).rstrip(b"\n"), path)

    def _add(self, line: bytes, where: str) -> None:
        if not line.strip():
            return
        files = decode(line)
        self.state.commits += 1
        if files is None:
            self.state.problems.append(LogProblem(where, "unreadable commit record (torn by an interrupted commit, "
                                                         "or damaged): the files it named are not data"))
            return
        for path, rows, size in files:
            if path not in self.state.files:
                self.state.files[path] = CommittedFile(path, rows, size, self.state.commits)
                self.state.order.append(path)

    def create(self) -> None:
        """Make the log folder (and, on a local lake, the empty log file)."""
        try:
            self.fs.create_dir(self.dir, recursive=True)
            if self.local and not os.path.exists(self.path):
                with open(self.path, "ab"):
                    pass
                fsync_dir(self.dir)
        except OSError as exc:
            raise LakeError(f"cannot create the commit log {self.dir}: {exc}") from exc

    def commit(self, files: list[tuple[str, int, int]], writer: dict) -> None:
        """Add one commit naming ``files``. The caller holds the lake's commit lock."""
        if not files:
            return
        line = encode(files, writer)
        try:
            if self.local:
                self._append_local(line)
            else:
                name = f"{self.dir}/c-{time.time_ns():020d}-{uuid.uuid4().hex}.json"
                with self.fs.open_output_stream(name) as out:
                    out.write(line)
        except OSError as exc:
            raise LakeError(f"cannot commit to {self.dir}: {exc}") from exc

    def _append_local(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and not _ends_with_newline(self.path, size):
                line = b"\n" + line  # a torn last line stays its own (unreadable) record
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to the commit log ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)


def _ends_with_newline(path: str, size: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"
