"""A loopback cluster: N SSH servers on 127.0.0.1, each a "node" with its own folder.

Each node is a real OpenSSH ``sshd`` (the server a Pi runs; :mod:`mqepi.rig.sshd`) on its own
loopback port, with its own ``sshd_config`` under the cluster root and a generated ed25519
host key; clients log in as this machine's user with a generated user key (public-key login
only), and the written ``known_hosts`` pins every host key, so host-key verification is
exercised for real. Commands run in the login user's home with sshd's session environment
(plus ``HOME`` and every ``MQEPI_*`` variable of this process, set by ``SetEnv``); the config
gives every path absolutely. Workers get distinct loopback RPC ports; ``[hardware]`` facts can
be written into the config. Everything is torn down on exit. This is how the tests and the
demo exercise the cluster path on one machine.

Only where no ``sshd`` binary exists (openssh-server not installed) does each node run
asyncssh's server instead, said on stderr; :attr:`LoopbackCluster.ssh_server` tells which
(``"openssh"`` or ``"asyncssh"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from mqepi.quant import toolchain
from mqepi.rig import config as cfg
from mqepi.rig.processes import descendants, pid_file_pids
from mqepi.rig.sshd import Sshd, sshd_binary

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes, backslashes and control characters escaped, so
    a root folder with quotes or ``$(...)`` in its name still gives a faithful config."""
    out = []
    for c in str(value):
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    """A string, integer, float or boolean as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    raise cfg.ClusterConfigError(f"a [hardware] value must be a string or a number, not {value!r}")


def hardware_lines(hardware: dict | None) -> list[str]:
    """The ``[hardware]`` table of the config (nothing when ``hardware`` is None)."""
    if hardware is None:
        return []
    return ["[hardware]", *(f"{k if BARE_KEY.match(str(k)) else toml_string(k)} = {toml_value(v)}"
                            for k, v in hardware.items()), ""]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_user() -> str:
    """The user the nodes' sshd lets in: the one running this process."""
    return pwd.getpwuid(os.getuid()).pw_name


def session_env() -> dict[str, str]:
    """What a loopback session gets on top of sshd's own environment: this process's home
    (so ``~/.cache/mqepi`` is the same folder) and every ``MQEPI_*`` variable."""
    return {"HOME": str(Path.home()), **{k: v for k, v in sorted(os.environ.items()) if k.startswith("MQEPI_")}}


async def _handle(process: asyncssh.SSHServerProcess, running: set[int]) -> None:
    """(asyncssh fallback) Run the requested command in the home folder, as sshd would; feed it
    the channel's input, copy its output until it ends."""
    command = process.command or "true"
    local = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=Path.home(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env={**os.environ, **session_env()})

    async def pump(source, sink) -> None:
        while chunk := await source.read(65536):
            sink.write(chunk)

    async def feed() -> None:
        with contextlib.suppress(OSError, asyncssh.Error):  # the command stopped reading: its exit tells
            while chunk := await process.stdin.read(65536):
                local.stdin.write(chunk)
                await local.stdin.drain()
            local.stdin.close()

    running.add(local.pid)
    feeding = asyncio.ensure_future(feed())
    try:
        await asyncio.gather(pump(local.stdout, process.stdout), pump(local.stderr, process.stderr))
        process.exit(await local.wait())
    finally:
        feeding.cancel()
        if local.returncode is None:  # the client went away: stop what it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(local.pid, signal.SIGKILL)
            await local.wait()
        running.discard(local.pid)


@dataclass
class LocalNode:
    name: str
    port: int
    work_dir: Path
    rpc_port: int
    host_key: asyncssh.SSHKey | None = None
    sshd: Sshd | None = None  # the node's OpenSSH server
    server: asyncssh.SSHAcceptor | None = None  # or, without sshd, asyncssh's
    connections: set = field(default_factory=set)  # (asyncssh) open connections
    running: set = field(default_factory=set)  # (asyncssh) pids of the commands its sessions run now


class LoopbackCluster:
    """``with LoopbackCluster(3, bin_dir) as lc: lc.config_path`` -> a matching cluster TOML.
    ``hardware`` (name -> string or number) is written as the config's ``[hardware]`` table."""

    def __init__(self, nodes: int, bin_dir: str | Path, root: str | Path | None = None, *, quant_host: bool = True,
                 hardware: dict | None = None):
        if nodes < 1:
            raise cfg.ClusterConfigError(f"a loopback cluster needs at least one node, not {nodes}")
        self.n = nodes
        self.bin_dir = str(bin_dir)
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="mqepi-cluster-"))
        self.with_quant_host = quant_host
        self.hardware = hardware
        self.nodes: list[LocalNode] = []
        self._sshd = sshd_binary()
        #: which SSH server the nodes run: "openssh" (sshd) or "asyncssh" (only where sshd is missing)
        self.ssh_server = "openssh" if self._sshd else "asyncssh"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqepi-loopback-sshd", daemon=True)
        self.config_path = self.root / "cluster.toml"

    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> LoopbackCluster:
        keys = self.root / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        user_key.write_private_key(str(keys / "id_ed25519"))
        os.chmod(keys / "id_ed25519", 0o600)
        (keys / "authorized_keys").write_bytes(user_key.export_public_key())
        if self._sshd is None:
            print("mqepi: no OpenSSH sshd on this machine (install openssh-server): the loopback nodes run "
                  "asyncssh's SSH server instead", file=sys.stderr)
            self._thread.start()
        known_lines = []
        names = ["quant"] * self.with_quant_host + [f"node{i}" for i in range(self.n)]
        for name in names:
            host_key = asyncssh.generate_private_key("ssh-ed25519")
            host_key.write_private_key(str(keys / f"{name}_host_key"))
            os.chmod(keys / f"{name}_host_key", 0o600)
            work = self.root / name
            work.mkdir(exist_ok=True)
            node = LocalNode(name, _free_port(), work, _free_port(), host_key=host_key)
            self.nodes.append(node)
            if self._sshd is not None:
                folder = self.root / "sshd" / name
                folder.mkdir(parents=True, exist_ok=True)
                node.sshd = Sshd(self._sshd, folder, node.port, keys / f"{name}_host_key", keys / "authorized_keys",
                                 session_env()).start()
            else:
                node.server = self._call(self._serve(node, asyncssh.import_authorized_keys(
                    (keys / "authorized_keys").read_text())))
            known_lines.append(f"[127.0.0.1]:{node.port} {host_key.export_public_key().decode().strip()}")
        (keys / "known_hosts").write_text("\n".join(known_lines) + "\n")
        self.config_path.write_text(self._toml(keys))
        return self

    @staticmethod
    async def _serve(node: LocalNode, authorized):
        class Server(asyncssh.SSHServer):
            def connection_made(self, conn) -> None:
                self.conn = conn
                node.connections.add(conn)

            def connection_lost(self, exc) -> None:
                node.connections.discard(self.conn)

        return await asyncssh.create_server(
            Server, "127.0.0.1", node.port, server_host_keys=[node.host_key],
            authorized_client_keys=authorized, sftp_factory=True, allow_scp=False, encoding=None,
            process_factory=lambda p: _handle(p, node.running))

    def _engine_lines(self) -> list[str]:
        """The scoring engine on a loopback node: this interpreter and the cached libraries."""
        lib = toolchain.cached_library()
        return [f"python = {toml_string(sys.executable)}"] + ([f"lib_dir = {toml_string(str(lib))}"] if lib else [])

    def _toml(self, keys: Path) -> str:
        """The cluster config of these nodes (every string escaped for TOML)."""
        q = toml_string
        lines = [f"known_hosts = {q(keys / 'known_hosts')}", "", *hardware_lines(self.hardware)]
        key, bin_dir = q(keys / "id_ed25519"), q(self.bin_dir)
        user = q(login_user())
        for node in self.nodes:
            if node.name == "quant":
                lines += ["[quant_host]", 'host = "127.0.0.1"', f"port = {node.port}", f"user = {user}",
                          f"key = {key}", f"bin_dir = {bin_dir}", f"work_dir = {q(node.work_dir)}", ""]
        for i, node in enumerate(n for n in self.nodes if n.name != "quant"):
            role = "head" if i == 0 else "worker"
            lines += ["[[nodes]]", f"name = {q(node.name)}", f'role = "{role}"', 'host = "127.0.0.1"',
                      f"port = {node.port}", f"user = {user}", f"key = {key}", f"bin_dir = {bin_dir}",
                      f"work_dir = {q(node.work_dir)}", 'rpc_address = "127.0.0.1"', f"rpc_port = {node.rpc_port}",
                      f"meter_channel = {i}", *self._engine_lines(), ""]
        return "\n".join(lines)

    def _node(self, name: str) -> LocalNode:
        return next(n for n in self.nodes if n.name == name)

    def pids(self, name: str) -> list[int]:
        """Processes running on a node now: what its SSH sessions run (with their children; sshd
        itself excluded) and the background servers it started. The simulated meter assigns
        them to the node's channel, so that node's power follows their real CPU time."""
        node = self._node(name)
        alive = set(node.sshd.pids()) if node.sshd is not None else set()
        for pid in list(node.running):  # (asyncssh) the commands its sessions run
            if Path(f"/proc/{pid}").exists():
                alive.update([pid, *descendants(pid)])
        alive.update(pid_file_pids(node.work_dir))
        return sorted(alive)

    def kill_connections(self, name: str) -> None:
        """Drop every open SSH connection of a node from the server side (a cut link); the
        node keeps listening, so a retry can connect again."""
        node = self._node(name)
        if node.sshd is not None:
            node.sshd.kill_connections()
            return

        async def bounce():
            for conn in list(node.connections):
                conn.abort()  # drop the TCP connection, as a cut link would
            node.connections.clear()

        self._call(bounce())

    def stop(self) -> None:
        """Stop every node's SSH server and what its sessions run, kill the background servers
        the nodes started, remove the temporary root."""
        for node in self.nodes:
            if node.sshd is not None:
                node.sshd.stop()

        async def close_all():
            for node in self.nodes:
                if node.server is not None:
                    node.server.close()
                    await node.server.wait_closed()

        if self._thread.is_alive():
            self._call(close_all())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        for node in self.nodes:  # background processes a node started (RPC servers)
            for pid in pid_file_pids(node.work_dir):
                with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                    os.kill(pid, signal.SIGKILL)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
