"""Files that survive a crash, and what a file's content hashes to.

The one place for the primitives every writer of lasting files uses (the lake, the derived
snapshots, the caches): a content hash of a file, fsync of a file and of its folder, and an
atomic replace (:func:`replacing`: a temporary name beside the target, fsync, rename, fsync of
the folder), so a reader sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqepi.errors import LakeError

#: Read size when hashing a file.
CHUNK_BYTES = 1 << 20
#: Prefix of the temporary names :func:`write_atomic` writes under (never matched as data).
TEMP_PREFIX = ".tmp-"


def sha256_stream(stream: BinaryIO) -> str:
    """sha256 (hex) of everything left in an open binary stream, read in bounded chunks."""
    digest = hashlib.sha256()
    while block := stream.read(CHUNK_BYTES):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's content."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a new or renamed name in it) to disk."""
    fsync_file(path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write; when the block ends without an error, the
    file is fsynced and renamed onto ``path`` (readers see the old content or the new, never
    a partial one). The temporary file is gone either way."""
    target = Path(path)
    temp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    try:
        yield temp
        fsync_file(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (:func:`replacing`)."""
    with replacing(path) as temp:
        temp.write_bytes(data)


#: Suffix of the temporary names :func:`write_parquet` writes under.
TEMP_SUFFIX = ".partial"
PARQUET_COMPRESSION = "zstd"


def publish(temp: str, final: str) -> bool:
    """Make a fully written local temporary file visible under its final name, never
    clobbering (a no-clobber hard link, then fsync of the folder); False if the name exists."""
    try:
        os.link(temp, final)  # atomic and fails if the name exists: never replaces
    except FileExistsError:
        return False
    fsync_dir(os.path.dirname(final))
    return True


def write_parquet(fs, directory: str, name: str, table, publish=publish, put_new=None) -> tuple[int, str]:
    """Write ``table`` as Parquet ``directory/name`` on the pyarrow filesystem ``fs`` unless
    that file exists; return (bytes, sha256) of the file now there. The bytes are made and
    hashed in memory, then written: on a local filesystem (``publish`` given) under a temporary
    dot-name, fsynced and published without clobbering; on an object store (``publish`` None)
    as one object (no partial object is ever visible) by ``put_new(path, bytes)``, a put that
    never replaces an object (False if the name exists; :func:`mqepi.lake.delta.put_if_absent`),
    so of two writers racing on one name the first one's bytes stay. Raises
    :class:`mqepi.errors.LakeError`."""
    final = f"{directory}/{name}"
    try:
        if fs.get_file_info(final).type == pafs.FileType.File:
            return _hash_existing(fs, final)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
        data = sink.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        if publish is None:
            if put_new is None:
                with fs.open_output_stream(final) as out:
                    out.write(data)
            elif not put_new(final, data.to_pybytes()):
                return _hash_existing(fs, final)
            return data.size, sha
        os.makedirs(directory, exist_ok=True)
        temp = f"{directory}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}{TEMP_SUFFIX}"
        try:
            with open(temp, "wb") as fh:
                fh.write(data)
            fsync_file(temp)
            if not publish(temp, final):
                return _hash_existing(fs, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return data.size, sha
    except (OSError, pa.ArrowException) as exc:
        raise LakeError(f"lake write failed for {final}: {exc}") from exc


def _hash_existing(fs, path: str) -> tuple[int, str]:
    with fs.open_input_stream(path) as fh:
        sha = sha256_stream(fh)
    return fs.get_file_info(path).size, sha
