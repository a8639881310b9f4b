"""The SSH layer (asyncssh): :class:`Remote`, the :class:`~mqepi.rig.executor.Executor` of a
node over SSH, behind a small synchronous interface.

* Host keys are verified against the config's ``known_hosts`` (or ``~/.ssh/known_hosts``);
  the opt-out ``insecure_skip_host_key_check`` is for tests and prints a warning each time.
* ``run`` streams stdout and stderr line by line, stamping each line on arrival (UTC ns),
  with a timeout.
* ``put`` copies a file by SFTP to a temporary name, checks its sha256 on the remote side,
  then renames it into place, so a partial copy never counts as deployed.
* ``start_background`` starts a detached process and remembers its pid; ``close`` (and any
  failure in a ``with`` block) kills every process this session started.

Each call opens its own connection on a private event loop thread; the cost on loopback is
tens of milliseconds, which is fine for stage-level work (never per sample or question).

Every command line sent over SSH is built below from an argument list (:func:`shell_join`) or
a constant script with its values as positional parameters (:func:`shell_script`); the
remote login shell must be a POSIX shell (sh, dash, bash, zsh), as on Raspberry Pi OS.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncssh

from mqepi.errors import MqepiError
from mqepi.lake.durable import sha256_file
from mqepi.rig.config import ClusterConfig, Host
from mqepi.rig.executor import CommandError, Result, file_name, int_arg, shell_join, shell_script

SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
#: log=$1, then NAME=value words up to "--" (exported), then the command's argv.
BACKGROUND_SCRIPT = ('log=$1; shift; while [ $# -gt 0 ] && [ "$1" != -- ]; do export "$1"; shift; done; shift; '
                     'nohup -- "$@" > "$log" 2>&1 < /dev/null & echo $! | tee -- "$log.pid"')
#: stdin, not an argument: sha256sum escapes names with a backslash or a newline in its output.
SHA256_SCRIPT = 'sha256sum 2>/dev/null < "$1" || true'


def sha256_command(path: str) -> str:
    """The sha256 of a file on stdin (prints nothing when it is missing)."""
    return shell_script(SHA256_SCRIPT, path)


def remove_command(path: str) -> str:
    """Delete a file if it exists."""
    return shell_join(["rm", "-f", "--", path])


def move_command(src: str, dst: str) -> str:
    """Rename a file, replacing the target."""
    return shell_join(["mv", "-f", "--", src, dst])


def mkdir_command(path: str) -> str:
    """Create a folder and its parents."""
    return shell_join(["mkdir", "-p", "--", path])


def pid_arg(pid: int) -> str:
    """A process id to signal: an integer above 1 (``kill 0``, ``-1`` or ``1`` would reach far
    more than one process)."""
    return int_arg(pid, "process id", minimum=2)


def alive_command(pid: int) -> str:
    """Prints ``yes`` while the process lives, else ``no``."""
    return shell_script('kill -0 "$1" 2>/dev/null && echo yes || echo no', pid_arg(pid))


def stop_command(pid: int) -> str:
    """SIGTERM, a moment, then SIGKILL to one process."""
    return shell_script('kill "$1" 2>/dev/null; sleep 0.2; kill -9 "$1" 2>/dev/null; true', pid_arg(pid))


def background_command(argv: Sequence, log: str, env: dict[str, str] | None = None) -> str:
    """Start ``argv`` detached with ``env`` added, its output to ``log``; print its pid (also
    written to ``log.pid``)."""
    assignments = []
    for name, value in (env or {}).items():
        if not ENV_NAME.match(name):
            raise CommandError(f"environment variable name {name!r} is not NAME_LIKE_THIS")
        assignments.append(f"{name}={value}")  # one argument, exported by the script, never parsed
    return shell_script(BACKGROUND_SCRIPT, log, *assignments, "--", *argv)


class RemoteError(MqepiError):
    """A remote command or copy failed (transient ones may be retried by the caller)."""


class ConnectionDropped(RemoteError):
    """The SSH connection ended mid-command: transient, the stage may be retried."""


class HostKeyError(RemoteError):
    """The remote host key is not the one in known_hosts. Never retried."""


class _Loop:
    """One event loop on a daemon thread, shared by every Remote of the process."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro, timeout: float | None = None):
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="mqepi-ssh", daemon=True).start()
        future = asyncio.run_coroutine_threadsafe(coro, cls._loop)
        return future.result(timeout)


class Remote:
    """Commands and copies on one host of a cluster config (an :class:`~mqepi.rig.executor.Executor`)."""

    def __init__(self, host: Host, config: ClusterConfig):
        self.host = host
        self.name = f"{host.name}:{host.host}"  # as provenance records it: node name and address
        self.config = config
        self.started: list[int] = []

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _options(self) -> dict:
        if self.config.insecure_skip_host_key_check:
            print(f"WARNING: not verifying the SSH host key of {self.host.name} ({self.host.host}:{self.host.port}): "
                  "insecure_skip_host_key_check is for tests only", file=sys.stderr)
            known = None
        else:
            known = self.config.known_hosts or str(Path.home() / ".ssh" / "known_hosts")
        return {"host": self.host.host, "port": self.host.port, "username": self.host.user,
                "client_keys": [self.host.key], "known_hosts": known, "connect_timeout": 15}

    async def _connect(self):
        try:
            return await asyncssh.connect(**self._options())
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyError(f"{self.host.name} ({self.host.host}:{self.host.port}): host key not verified against "
                               f"known_hosts: {exc}") from None
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"{self.host.name} ({self.host.host}:{self.host.port}): cannot connect: {exc}") from None

    def run(self, command: str | Sequence, *, timeout: float | None = 600, on_line: Callable[[str], None] | None = None,
            check: bool = False) -> Result:
        """Run ``command`` remotely: an argument list (quoted by :func:`shell_join`), or a command
        line built by :func:`shell_join` / :func:`shell_script`; stdout and stderr merged,
        stamped per line."""
        if not isinstance(command, str):
            command = shell_join(command)

        async def go() -> Result:
            async with await self._connect() as conn:
                lines: list[tuple[int, str]] = []
                async with conn.create_process(command, stderr=asyncssh.STDOUT) as proc:
                    async for line in proc.stdout:
                        lines.append((time.time_ns(), line))
                        if on_line:
                            on_line(line.rstrip("\n"))
                    completed = await proc.wait()
                if completed.exit_status is None:
                    raise ConnectionDropped(f"{self.host.name}: the connection ended before {command[:80]!r} exited")
                return Result(completed.exit_status, lines)

        try:
            result = _Loop.run(asyncio.wait_for(go(), timeout))
        except TimeoutError:
            raise RemoteError(f"{self.host.name}: {command!r} did not finish within {timeout} s") from None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionDropped(f"{self.host.name}: the connection dropped during {command[:80]!r}: {exc}") from None
        if check and result.returncode != 0:
            tail = "".join(line for _, line in result.lines[-8:]).strip()
            raise RemoteError(f"{self.host.name}: {command!r} exited {result.returncode}: {tail}")
        return result

    def sha256(self, path: str) -> str | None:
        """The sha256 of this host's file ``path``; None when it is missing or unreadable."""
        words = self.run(sha256_command(path), timeout=300).text.split()
        return words[0] if words and SHA256.match(words[0]) else None

    def put(self, local: str | Path, remote: str, sha256: str) -> None:
        """Copy by SFTP to a temporary name, verify the remote sha256, then rename into place."""
        temp = f"{remote}.partial-{time.time_ns():x}"

        async def go() -> None:
            async with await self._connect() as conn:
                async with conn.start_sftp_client() as sftp:
                    await sftp.makedirs(str(Path(remote).parent), exist_ok=True)
                    await sftp.put(str(local), temp)

        try:
            _Loop.run(go())
        except (OSError, asyncssh.Error) as exc:
            self.run(remove_command(temp), timeout=60)
            raise RemoteError(f"{self.host.name}: copying {local} to {remote} failed: {exc}") from None
        copied = self.sha256(temp)
        if copied != sha256:
            self.run(remove_command(temp), timeout=60)
            raise RemoteError(f"{self.host.name}: the copy of {local} at {temp} has sha256 {copied}, expected {sha256}")
        self.run(move_command(temp, remote), timeout=60, check=True)

    def get(self, remote: str, local: str | Path, sha256: str) -> None:
        """Copy a file here by SFTP to a temporary name, check its sha256, rename into place."""
        local = Path(local)
        temp = local.with_name(local.name + f".partial-{time.time_ns():x}")

        async def go() -> None:
            async with await self._connect() as conn:
                async with conn.start_sftp_client() as sftp:
                    await sftp.get(remote, str(temp))

        try:
            _Loop.run(go())
            copied = sha256_file(temp)
            if copied != sha256:
                raise RemoteError(f"{self.host.name}: the copy of {remote} has sha256 {copied}, expected {sha256}")
            temp.replace(local)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"{self.host.name}: fetching {remote} failed: {exc}") from None
        finally:
            temp.unlink(missing_ok=True)

    def stage_file(self, name: str, data: bytes) -> str:
        """Put ``data`` into ``work_dir/staging/name`` on this host (verified); return the path."""
        remote = f"{self.host.work_dir.rstrip('/')}/staging/{file_name(name, 'staged file name')}"
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fh.write(data)
        try:
            self.put(fh.name, remote, hashlib.sha256(data).hexdigest())
        finally:
            Path(fh.name).unlink(missing_ok=True)
        return remote

    def provide(self, local: str | Path, sha256: str, subdir: str = "inputs") -> str:
        """Make a local file available on this host under ``work_dir/subdir`` (copied only
        when missing or different, sha256-checked); return its path there."""
        remote = f"{self.host.work_dir.rstrip('/')}/{file_name(subdir, 'folder')}/{file_name(Path(local).name)}"
        if self.sha256(remote) != sha256:
            self.put(local, remote, sha256)
        return remote

    def stream(self, cmd: list[str], progress: Callable[[str], None] = lambda line: None,
               timeout: float | None = 3600) -> Result:
        """Run an argument list on this host, stamped per line."""
        return self.run(shell_join(cmd), timeout=timeout, on_line=progress)

    def work_path(self, *parts: str) -> str:
        """A path under this host's work folder; its parent folder is created."""
        path = "/".join([self.host.work_dir.rstrip("/"), *(file_name(part, "work path part") for part in parts)])
        self.run(mkdir_command(path.rsplit("/", 1)[0]), timeout=60, check=True)
        return path

    def fetch(self, path: str, local: str | Path) -> None:
        """Copy this host's file ``path`` here, checked against its sha256 on the host."""
        sha256 = self.sha256(path)
        if sha256 is None:
            raise RemoteError(f"{self.host.name}: {path} is missing")
        self.get(path, local, sha256)

    def move(self, src: str, dst: str) -> None:
        """Rename a file on this host, replacing ``dst``."""
        self.run(move_command(src, dst), timeout=60, check=True)

    def remove(self, path: str) -> None:
        """Delete a file on this host if it exists."""
        self.run(remove_command(path), timeout=60)

    def start_background(self, argv: Sequence, log: str, env: dict[str, str] | None = None) -> int:
        """Start the argument list ``argv`` detached, with ``env`` added (its output to
        ``log``); return its pid."""
        result = self.run(background_command(argv, log, env), timeout=60, check=True)
        lines = result.text.split()
        if not lines or not lines[-1].isascii() or not lines[-1].isdigit():
            raise RemoteError(f"{self.host.name}: starting {argv[0]!r} printed no process id: {result.text.strip()[:200]!r}")
        pid = int(lines[-1])
        self.started.append(pid)
        return pid

    def alive(self, pid: int) -> bool:
        """Whether process ``pid`` still runs on this host."""
        return self.run(alive_command(pid), timeout=30).text.strip() == "yes"

    def stop(self, pid: int) -> None:
        """Stop process ``pid`` on this host (SIGTERM, then SIGKILL)."""
        self.run(stop_command(pid), timeout=30)
        if pid in self.started:
            self.started.remove(pid)

    def close(self) -> None:
        """Kill everything this session started (cleanup also on failure)."""
        for pid in list(self.started):
            try:
                self.stop(pid)
            except RemoteError:
                pass  # the host is gone; nothing left to stop there
