"""Where a command runs: the one :class:`Executor` protocol, and :class:`LocalExecutor` for this
machine. :class:`mqepi.rig.ssh.Remote` is the same protocol on a node over SSH, so the
quantizer, the quality tools, the thermal probes and the sweep never ask which one they hold.

Every command's output (stdout and stderr merged) comes back as a :class:`Result`: the exit
status and each line stamped with UTC ns on arrival (the quality windows are cut by those
stamps). Files move through three calls: ``stage_file`` puts bytes where a tool can read
them, ``provide`` makes a local file available there (copied and sha256-checked when
remote), ``fetch`` brings a file the tool wrote back here (checked the same way).

Command lines are never formatted by hand. An argument list goes through :func:`shell_join`
(every word quoted for a POSIX shell); a command that needs the shell (pipes, redirections,
``&``) is a constant script whose values arrive as positional parameters (:func:`shell_script`);
numbers are checked as integers (:func:`int_arg`). No config or data value is ever spliced into
shell syntax, so a path with spaces, quotes, ``$(...)`` or ``;`` reaches the tool literally.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mqepi.errors import MqepiError
from mqepi.lake.durable import write_atomic


class ExecutorError(MqepiError):
    """A command failed where it ran (``check=True``), or a file could not be moved there."""


class CommandError(MqepiError):
    """A command could not be built: an argument that is not a string, path or integer, or one
    that no command line can carry (a NUL byte)."""


def argv_words(argv: Sequence) -> list[str]:
    """``argv`` as strings: each item a ``str``, an ``os.PathLike`` or an ``int`` (never a bool,
    a float or None, which would only be a bug upstream); a NUL byte is refused."""
    if isinstance(argv, str | bytes) or not argv:
        raise CommandError(f"a command is a non-empty list of arguments, not {argv!r}")
    words = []
    for arg in argv:
        if isinstance(arg, bool) or not isinstance(arg, str | int | os.PathLike):
            raise CommandError(f"command argument {arg!r} is not a string, path or integer")
        word = os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg)
        if not isinstance(word, str) or "\0" in word:
            raise CommandError(f"command argument {word!r} cannot be passed to a command")
        words.append(word)
    return words


def shell_join(argv: Sequence) -> str:
    """One POSIX shell command line running exactly ``argv`` (each word quoted; ``shlex.split``
    gives ``argv`` back). The only way a command line is built from values."""
    return shlex.join(argv_words(argv))


def shell_script(script: str, *args, shell: str = "sh") -> str:
    """A command line running the constant ``script`` with ``shell -c``; the values arrive as
    ``"$1"``, ``"$2"`` ... and are never parsed as shell syntax. ``script`` must be a constant."""
    return shell_join([shell, "-c", script, "mqepi", *args])


def int_arg(value, what: str, minimum: int = 0, maximum: int | None = None) -> str:
    """``value`` as a command argument, checked to be an integer (not a bool, a float or a
    string of digits) within ``minimum..maximum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(f"{what} {value!r} is not an integer")
    if value < minimum or (maximum is not None and value > maximum):
        raise CommandError(f"{what} {value} is outside {minimum}..{maximum if maximum is not None else 'any'}")
    return str(value)


def file_name(name: str, what: str = "file name") -> str:
    """``name`` checked to be one path component (no ``/``, not ``.`` or ``..``, no control
    characters), so a staged or work file stays in its folder."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise CommandError(f"{what} {name!r} is not a single file name")
    return name


@dataclass
class Result:
    """A finished command: exit status and every output line with its arrival time (UTC ns)."""

    returncode: int
    lines: list[tuple[int, str]]

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def tail(self, n: int = 8) -> str:
        """The last ``n`` output lines, for an error message."""
        return "".join(line for _, line in self.lines[-n:]).strip()


class Executor(Protocol):
    """Runs commands and moves files on one host (this machine, or a node over SSH)."""

    #: The host's name, for provenance and messages.
    name: str

    def stream(self, cmd: list[str], progress: Callable[[str], None] = ..., timeout: float | None = ...) -> Result:
        """Run an argument list; ``progress`` sees each output line as it arrives."""

    def run(self, command: str | Sequence, *, timeout: float | None = ..., on_line: Callable[[str], None] | None = ...,
            check: bool = ...) -> Result:
        """Run an argument list, or a shell command line built by :func:`shell_join` or
        :func:`shell_script` (a literal string only when it is a constant)."""

    def stage_file(self, name: str, data: bytes) -> str:
        """Put ``data`` into the host's staging folder under ``name``; return its path there."""

    def provide(self, local: str | Path, sha256: str) -> str:
        """Make a local file available on the host; return the path a tool should use."""

    def work_path(self, *parts: str) -> str:
        """A path under the host's work folder (its parent folder exists)."""

    def fetch(self, path: str, local: str | Path) -> None:
        """Bring the host's file ``path`` to ``local`` here, checked by sha256 (from this
        machine's own folders it is moved, not copied)."""

    def move(self, src: str, dst: str) -> None:
        """Rename a file on the host, replacing ``dst``."""

    def remove(self, path: str) -> None:
        """Delete a file on the host if it exists."""


def run_stamped(cmd: list[str], progress: Callable[[str], None] = lambda line: None,
                timeout: float | None = None) -> Result:
    """Run ``cmd`` here, stamping every output line (stdout and stderr merged) with UTC ns;
    killed, and an :class:`ExecutorError` raised, if it runs longer than ``timeout`` seconds."""
    lines: list[tuple[int, str]] = []
    expired = threading.Event()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        def kill() -> None:
            expired.set()
            proc.kill()

        watchdog = threading.Timer(timeout, kill) if timeout is not None else None
        if watchdog is not None:
            watchdog.start()
        try:
            for line in proc.stdout:
                lines.append((time.time_ns(), line))
                progress(line.rstrip())
            proc.wait()
        finally:
            if watchdog is not None:
                watchdog.cancel()
    if expired.is_set():
        raise ExecutorError(f"{shlex.join(cmd)[:120]!r} did not finish within {timeout} s")
    return Result(proc.returncode, lines)


class LocalExecutor:
    """Runs commands on this machine. Staged files go to ``work_dir/staging`` (``work_dir`` is a
    temporary folder unless given), written only when their content changed."""

    def __init__(self, work_dir: str | Path | None = None):
        self.name = socket.gethostname()
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "mqepi-staging"

    def stream(self, cmd: list[str], progress: Callable[[str], None] = lambda line: None,
               timeout: float | None = None) -> Result:
        """Run an argument list here (no shell), stamped per line."""
        return run_stamped(argv_words(cmd), progress, timeout)

    def run(self, command: str | Sequence, *, timeout: float | None = 600, on_line: Callable[[str], None] | None = None,
            check: bool = False) -> Result:
        """Run an argument list directly, or a command line with ``sh -c``."""
        argv = ["sh", "-c", command] if isinstance(command, str) else argv_words(command)
        result = run_stamped(argv, on_line or (lambda line: None), timeout)
        if check and result.returncode != 0:
            raise ExecutorError(f"{self.name}: {command!r} exited {result.returncode}: {result.tail()}")
        return result

    def stage_file(self, name: str, data: bytes) -> str:
        target = self.work_dir / "staging" / file_name(name, "staged file name")
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)
        return str(target)

    def provide(self, local: str | Path, sha256: str) -> str:
        return str(local)

    def work_path(self, *parts: str) -> str:
        path = self.work_dir.joinpath(*(file_name(part, "work path part") for part in parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def fetch(self, path: str, local: str | Path) -> None:
        """Move the file to ``local`` (a rename, or a copy and delete across file systems)."""
        if Path(path).resolve() == Path(local).resolve():
            return
        try:
            shutil.move(path, local)
        except OSError as exc:
            raise ExecutorError(f"cannot move {path} to {local}: {exc}") from None

    def move(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)
