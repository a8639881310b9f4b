"""Real OpenSSH servers for the loopback cluster: one ``sshd`` listener per node on 127.0.0.1.

Each :class:`Sshd` writes its own ``sshd_config`` (its generated ed25519 host key, the cluster's
authorized user key given by absolute path, public-key login only, no PAM, its pid file, one
listener on its loopback port) and runs ``sshd -D -e -f <config>`` as a child process, then
waits until the port accepts connections (sshd's stderr in the error if it exits first).

OpenSSH forks one process per connection under the listener, and one more per session; the
commands of a node are the listener's descendants that are not sshd itself. Dropping a node's
connections kills those per-connection processes (and what their sessions run); the listener
keeps listening, so the next connection succeeds, as on a Pi whose link came back.

Where no ``sshd`` binary exists (the ``openssh-server`` package is missing),
:func:`sshd_binary` returns None and the loopback cluster falls back to asyncssh's server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from mqepi.errors import MqepiError
from mqepi.rig.processes import descendants, session_pids

#: Where Debian's openssh-server installs it; ``PATH`` is searched too.
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
#: The privilege-separation folder sshd insists on (Debian's is /run/sshd).
PRIVSEP_DIR = Path("/run/sshd")


class SshdError(MqepiError):
    """An OpenSSH server of the loopback cluster could not be started."""


def sshd_binary() -> str | None:
    """The OpenSSH server binary, or None where openssh-server is not installed."""
    for path in SSHD_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def config_word(value: str | Path) -> str:
    """One sshd_config argument, double-quoted (backslashes and quotes escaped, ``%`` doubled
    for the options that expand ``%`` tokens), so folders with spaces or quotes in their
    names stay whole. A control character cannot be written: :class:`SshdError`."""
    text = str(value)
    if any(ord(c) < 32 or ord(c) == 0x7F for c in text):
        raise SshdError(f"an sshd_config value cannot hold a control character: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(port: int, host_key: Path, authorized_keys: Path, pid_file: Path, env: dict[str, str]) -> str:
    """The sshd_config of one loopback node: one listener, public keys only, ``env`` set in
    every session."""
    lines = [
        f"ListenAddress 127.0.0.1:{int(port)}",
        f"HostKey {config_word(host_key)}",
        f"AuthorizedKeysFile {config_word(str(authorized_keys).replace('%', '%%'))}",
        f"PidFile {config_word(pid_file)}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",  # the keys live in a temporary folder of whatever permissions
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "PermitTunnel no",
        "MaxSessions 64",  # the cluster code shares one connection per host between commands
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
    ]
    if env:
        lines.append("SetEnv " + " ".join(config_word(f"{name}={value}") for name, value in env.items()))
    return "\n".join(lines) + "\n"


class Sshd:
    """One node's OpenSSH server: ``start()``, ``pids()``, ``kill_connections()``, ``stop()``."""

    def __init__(self, binary: str, folder: Path, port: int, host_key: Path, authorized_keys: Path,
                 env: dict[str, str] | None = None):
        self.binary, self.folder, self.port = binary, Path(folder), port
        self.config = self.folder / "sshd_config"
        self.log = self.folder / "sshd.log"
        self.config.write_text(config_text(port, host_key, authorized_keys, self.folder / "sshd.pid", env or {}))
        self.process: subprocess.Popen | None = None

    def start(self, wait_s: float = 15.0) -> Sshd:
        """Start the listener and wait until it accepts connections."""
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.binary, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + wait_s
        while True:
            if self.process.poll() is not None:
                raise SshdError(f"sshd on 127.0.0.1:{self.port} exited with {self.process.returncode}: "
                                f"{self.log.read_text(errors='replace').strip()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise SshdError(f"sshd on 127.0.0.1:{self.port} does not accept connections after {wait_s} s: "
                                f"{self.log.read_text(errors='replace').strip()[-2000:]}")
            time.sleep(0.05)

    def connections(self) -> list[int]:
        """The per-connection sshd processes (the listener's children)."""
        if self.process is None:
            return []
        try:
            return [int(p) for p in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
        except OSError:
            return []

    def pids(self) -> list[int]:
        """What the node's sessions run now: the listener's descendants that are not sshd."""
        if self.process is None:
            return []
        return session_pids(self.process.pid)

    def kill_connections(self) -> None:
        """Drop every open connection (a cut link): its sshd processes and what their sessions
        run are killed; the listener stays."""
        for conn in self.connections():
            for pid in [conn, *descendants(conn)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill the sessions, then stop the listener."""
        if self.process is None:
            return
        self.kill_connections()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
