"""The SSH layer (asyncssh): :class:`Remote`, the :class:`~mqepi.rig.executor.Executor` of a
node over SSH, behind a small synchronous interface.

* Host keys are verified against the config's ``known_hosts`` (or ``~/.ssh/known_hosts``);
  the opt-out ``insecure_skip_host_key_check`` is for tests and prints a warning each time.
* ``run`` streams stdout and stderr line by line, stamping each line on arrival (UTC ns),
  with a timeout.
* ``put`` streams a file in one pass: one remote command writes stdin to a temporary name
  while hashing it (``tee | sha256sum``) and renames it into place only when the sha256 is the
  expected one (else removes it), while this side hashes what it sends; a partial copy never
  counts as deployed. ``get`` copies by SFTP to a temporary name, checked, then renamed.
* ``start_background`` starts a detached process and remembers its pid; ``close`` (and any
  failure in a ``with`` block) kills every process this session started.

One SSH connection per host (keyed by host, port, user, key, known_hosts and the insecure
flag) serves every command of the process, a channel per command, so a whole sweep's
stages share it even though each stage makes its own :class:`Remote`. It opens lazily on one
private event loop thread, under a lock, and is reopened on the next call after a drop; a
drop mid-command still raises :class:`ConnectionDropped` (transient: callers retry the
stage), a refused host key :class:`HostKeyError` (never retried). :func:`close_connections`
closes a cluster's (a sweep calls it when its rig closes).

Every command line sent over SSH is built below from an argument list (:func:`shell_join`) or
a constant script with its values as positional parameters (:func:`shell_script`); the
remote login shell must be a POSIX shell (sh, dash, bash, zsh), as on Raspberry Pi OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

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
#: $1 temporary name, $2 target, $3 expected sha256, $4 the target's folder. stdin goes to $1
#: and to sha256sum in one pass (a failing tee adds a line, so its hash cannot match); the copy
#: is renamed into place only with the expected hash, else removed. Prints ``sha256:<hash>``;
#: exits 3 on a wrong hash.
PUT_SCRIPT = ('mkdir -p -- "$4" || exit 1; got=$( (tee -- "$1" || echo tee-failed) | sha256sum ); got=${got%% *}; '
              'echo "sha256:$got"; if [ "$got" = "$3" ]; then mv -f -- "$1" "$2"; else rm -f -- "$1"; exit 3; fi')
#: Bytes per write while streaming a file to a host.
PUT_CHUNK = 1 << 18


def put_command(temp: str, remote: str, sha256: str) -> str:
    """Write stdin to ``temp`` while hashing it; rename it to ``remote`` only with ``sha256``."""
    if not SHA256.match(sha256):
        raise CommandError(f"expected sha256 {sha256!r} is not 64 lowercase hex digits")
    return shell_script(PUT_SCRIPT, temp, remote, sha256, str(PurePosixPath(remote).parent))


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


class _Connection:
    """The one SSH connection to a host: opened on first use, reopened after a drop. Used
    only on the :class:`_Loop` thread."""

    def __init__(self):
        self.conn: asyncssh.SSHClientConnection | None = None
        self.lock = asyncio.Lock()
        self.opened = 0  # connections opened so far (1 while none dropped)

    async def get(self, connect) -> asyncssh.SSHClientConnection:
        async with self.lock:
            if self.conn is None or self.conn.is_closed():
                self.conn = await connect()
                self.opened += 1
            return self.conn

    def discard(self, conn) -> None:
        """Forget ``conn`` (it failed); the next :meth:`get` opens a new one."""
        if self.conn is conn:
            conn.abort()
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


#: (host, port, user, key, known_hosts, insecure) -> its connection; touched only on the loop thread.
_CONNECTIONS: dict[tuple, _Connection] = {}


def connections_opened() -> dict[tuple, int]:
    """How many SSH connections were opened to each host so far (key as in the cache)."""
    return {key: c.opened for key, c in list(_CONNECTIONS.items())}


def close_connections(config: ClusterConfig | None = None) -> None:
    """Close the cached SSH connections to ``config``'s hosts (every one when None), as a sweep
    does when it ends; a later call reconnects. Another cluster's connections stay open."""
    hosts = None if config is None else [h for h in [config.quant_host, *config.nodes] if h is not None]
    keys = None if hosts is None else {Remote(h, config).key for h in hosts}

    async def close_some() -> None:
        for key in [k for k in _CONNECTIONS if keys is None or k in keys]:
            _CONNECTIONS.pop(key).close()

    if _Loop._loop is not None:
        _Loop.run(close_some(), 30)


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

    @property
    def key(self) -> tuple:
        """What identifies this host's shared connection."""
        h = self.host
        return (h.host, h.port, h.user, h.key, self.config.known_hosts, bool(self.config.insecure_skip_host_key_check))

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

    async def _process(self, command: str, **kwargs) -> asyncssh.SSHClientProcess:
        """A new channel running ``command`` on the shared connection; when the cached
        connection turns out dead before the command starts, once more on a new one."""
        connection = _CONNECTIONS.setdefault(self.key, _Connection())
        for attempt in (1, 2):
            conn = await connection.get(self._connect)
            try:
                return await conn.create_process(command, **kwargs)
            except (OSError, asyncssh.Error):
                connection.discard(conn)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def run(self, command: str | Sequence, *, timeout: float | None = 600, on_line: Callable[[str], None] | None = None,
            check: bool = False) -> Result:
        """Run ``command`` remotely: an argument list (quoted by :func:`shell_join`), or a command
        line built by :func:`shell_join` / :func:`shell_script`; stdout and stderr merged,
        stamped per line."""
        if not isinstance(command, str):
            command = shell_join(command)

        async def go() -> Result:
            lines: list[tuple[int, str]] = []
            async with await self._process(command, stderr=asyncssh.STDOUT) as proc:
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
        """Stream a file to a temporary name on this host, hashed on both sides in the same
        pass, renamed into place only when its sha256 is ``sha256`` (see :data:`PUT_SCRIPT`)."""
        temp = f"{remote}.partial-{time.time_ns():x}"
        command = put_command(temp, remote, sha256)
        try:
            fh = open(local, "rb")  # noqa: SIM115 - closed below, after the copy
        except OSError as exc:
            raise RemoteError(f"{self.host.name}: cannot read {local} to copy it: {exc}") from None

        async def go() -> tuple[str, int | None, str]:
            digest = hashlib.sha256()
            async with await self._process(command, stderr=asyncssh.STDOUT, encoding=None) as proc:
                with contextlib.suppress(BrokenPipeError):  # the command ended early: its output says why
                    while chunk := fh.read(PUT_CHUNK):
                        digest.update(chunk)
                        proc.stdin.write(chunk)
                        await proc.stdin.drain()
                    proc.stdin.write_eof()
                output = (await proc.stdout.read()).decode(errors="replace")
                completed = await proc.wait()
            return digest.hexdigest(), completed.exit_status, output

        try:
            sent, status, output = _Loop.run(go())
        except (OSError, asyncssh.Error) as exc:
            self._remove_partial(temp)
            raise ConnectionDropped(f"{self.host.name}: copying {local} to {remote} failed: {exc}") from None
        finally:
            fh.close()
        if status is None:
            self._remove_partial(temp)
            raise ConnectionDropped(f"{self.host.name}: the connection ended while copying {local} to {remote}")
        copied = next((line[7:] for line in output.splitlines() if line.startswith("sha256:")), None)
        if status == 3:
            raise RemoteError(f"{self.host.name}: the copy of {local} at {temp} has sha256 {copied} (sent: {sent}), "
                              f"expected {sha256}; removed, nothing deployed")
        if status != 0:
            self._remove_partial(temp)
            raise RemoteError(f"{self.host.name}: copying {local} to {remote} failed (exit {status}): {output.strip()[-500:]}")

    def _remove_partial(self, temp: str) -> None:
        """Best effort after a failed copy: the partial file must not linger (it never counts
        as deployed either way; the failure itself is what gets raised)."""
        with contextlib.suppress(RemoteError):
            self.run(remove_command(temp), timeout=60)

    def get(self, remote: str, local: str | Path, sha256: str) -> None:
        """Copy a file here by SFTP to a temporary name, check its sha256, rename into place."""
        local = Path(local)
        temp = local.with_name(local.name + f".partial-{time.time_ns():x}")

        async def go() -> None:
            connection = _CONNECTIONS.setdefault(self.key, _Connection())
            conn = await connection.get(self._connect)
            try:
                async with conn.start_sftp_client() as sftp:
                    await sftp.get(remote, str(temp))
            except (OSError, asyncssh.Error):
                if conn.is_closed():
                    connection.discard(conn)  # dropped: the next call reconnects
                raise

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
