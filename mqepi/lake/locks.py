"""Exclusive locks that name their holder and cannot outlive it.

:func:`exclusive` holds an advisory ``flock`` on a lock file and writes who holds it (host,
pid, when, and whatever the caller adds) into that file. The kernel releases the lock when the
holding process ends, however it ends (a crash, SIGKILL, a lost SSH session of the shell that
ran it), so a lock is never left stale and never needs breaking by hand; the holder record
left behind is only a note of the last holder.

Scope: processes whose lock files are on one machine's local filesystem (the lake root of a
local lake, or ``~/.cache/mqepi/locks``). ``flock`` over NFS or object storage is not
reliable; several machines writing one lake need the table format's conditional commits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from mqepi.errors import MqepiError


class LockHeld(MqepiError):
    """Another process holds the lock; ``holder`` is its record (host, pid, since, ...)."""

    def __init__(self, what: str, path: Path, holder: dict):
        self.what, self.path, self.holder = what, path, holder
        who = ", ".join(f"{k} {v}" for k, v in holder.items() if k not in ("host", "pid", "since")) if holder else ""
        where = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
                 if holder else "another process")
        super().__init__(f"{what} is held by {where}{' (' + who + ')' if who else ''}; lock file {path}")


def holder_record(**extra) -> dict:
    """This process as a lock holder: host, pid, since (UTC, ISO 8601), plus ``extra``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds"),
            **{k: v for k, v in extra.items() if v is not None}}


def read_holder(path: str | os.PathLike) -> dict:
    """The holder record in a lock file ({} if none can be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")[:65536] or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str, *, wait_s: float | None = 0.0,
              holder: dict | None = None) -> Iterator[dict]:
    """Hold an exclusive lock on ``path`` for the block; yield this holder's record.

    ``wait_s``: 0 fails at once with :class:`LockHeld` naming the holder when the lock is
    taken; a number waits that many seconds first; None waits as long as it takes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, path, what, wait_s)
        record = holder if holder is not None else holder_record()
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        yield record
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, path: Path, what: str, wait_s: float | None) -> None:
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            raise LockHeld(what, path, read_holder(path))
        time.sleep(0.05)


def is_held(path: str | os.PathLike) -> bool:
    """True if some process holds the lock on ``path`` now."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
