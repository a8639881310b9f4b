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
