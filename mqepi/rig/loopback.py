"""A loopback cluster: N SSH servers on 127.0.0.1, each a "node" with its own folder.

Each node is a real SSH server (asyncssh's server, the same protocol a Pi's OpenSSH speaks)
on its own loopback port with a generated ed25519 host key; clients authenticate with a
generated user key, and the written ``known_hosts`` pins every host key, so host-key
verification is exercised for real. Commands run as local shell processes in the node's
folder; SFTP serves files. Workers get distinct loopback RPC ports. Everything is torn down
on exit. This is how the tests and the demo exercise the cluster path on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from mqepi.rig.processes import descendants


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _handle(process: asyncssh.SSHServerProcess, work_dir: str, running: set[int]) -> None:
    """Run the requested command in the node's folder; copy its output until it ends."""
    command = process.command or "true"
    local = await asyncio.create_subprocess_exec(
        "bash", "-c", command, cwd=work_dir, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)

    async def pump(source, sink) -> None:
        while chunk := await source.read(65536):
            sink.write(chunk)

    running.add(local.pid)
    try:
        await asyncio.gather(pump(local.stdout, process.stdout), pump(local.stderr, process.stderr))
        process.exit(await local.wait())
    finally:
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
    authorized: object = None
    server: asyncssh.SSHAcceptor | None = None
    connections: set = field(default_factory=set)
    running: set = field(default_factory=set)  # pids of the commands its SSH sessions run now


class LoopbackCluster:
    """``with LoopbackCluster(3, bin_dir) as lc: lc.config_path`` -> a matching cluster TOML."""

    def __init__(self, nodes: int, bin_dir: str | Path, root: str | Path | None = None, *, quant_host: bool = True):
        if nodes < 1:
            raise cfg.ClusterConfigError(f"a loopback cluster needs at least one node, not {nodes}")
        self.n = nodes
        self.bin_dir = str(bin_dir)
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="mqepi-cluster-"))
        self.with_quant_host = quant_host
        self.nodes: list[LocalNode] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqepi-loopback-sshd", daemon=True)
        self.config_path = self.root / "cluster.toml"

    def __enter__(self) -> LoopbackCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> LoopbackCluster:
        self._thread.start()
        keys = self.root / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        user_key.write_private_key(str(keys / "id_ed25519"))
        os.chmod(keys / "id_ed25519", 0o600)
        authorized = asyncssh.import_authorized_keys(user_key.export_public_key().decode())
        known_lines = []
        names = ["quant"] * self.with_quant_host + [f"node{i}" for i in range(self.n)]
        for name in names:
            host_key = asyncssh.generate_private_key("ssh-ed25519")
            host_key.write_private_key(str(keys / f"{name}_host_key"))
            work = self.root / name
            work.mkdir(exist_ok=True)
            node = LocalNode(name, _free_port(), work, _free_port(), host_key=host_key, authorized=authorized)
            node.server = self._call(self._serve(node))
            known_lines.append(f"[127.0.0.1]:{node.port} {host_key.export_public_key().decode().strip()}")
            self.nodes.append(node)
        (keys / "known_hosts").write_text("\n".join(known_lines) + "\n")
        self.config_path.write_text(self._toml(keys))
        return self

    @staticmethod
    async def _serve(node: LocalNode):
        class Server(asyncssh.SSHServer):
            def connection_made(self, conn) -> None:
                self.conn = conn
                node.connections.add(conn)

            def connection_lost(self, exc) -> None:
                node.connections.discard(self.conn)

        return await asyncssh.create_server(
            Server, "127.0.0.1", node.port, server_host_keys=[node.host_key],
            authorized_client_keys=node.authorized, sftp_factory=True, allow_scp=False, encoding=None,
            process_factory=lambda p, w=str(node.work_dir): _handle(p, w, node.running))

    def _engine_lines(self) -> list[str]:
        """The scoring engine on a loopback node: this interpreter and the cached libraries."""
        lib = toolchain.cached_library()
        return [f"python = {toml_string(sys.executable)}"] + ([f"lib_dir = {toml_string(str(lib))}"] if lib else [])

    def _toml(self, keys: Path) -> str:
        """The cluster config of these nodes (every string escaped for TOML)."""
        q = toml_string
        lines = [f"known_hosts = {q(keys / 'known_hosts')}", ""]
        key, bin_dir = q(keys / "id_ed25519"), q(self.bin_dir)
        user = q(os.environ.get("USER", "mqepi"))
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

    def pids(self, name: str) -> list[int]:
        """Processes running on a node now: its SSH sessions' commands (with their children)
        and the background servers it started. The simulated meter assigns them to the
        node's channel, so that node's power follows their real CPU time."""
        node = next(n for n in self.nodes if n.name == name)
        roots = set(node.running)
        for pid_file in node.work_dir.glob("**/*.pid"):
            with contextlib.suppress(ValueError, OSError):
                roots.add(int(pid_file.read_text().strip()))
        alive = set()
        for pid in roots:
            if Path(f"/proc/{pid}").exists():
                alive.add(pid)
                alive.update(descendants(pid))
        return sorted(alive)

    def kill_connections(self, name: str) -> None:
        """Drop every open SSH connection of a node from the server side (a cut link); the
        node keeps listening, so a retry can connect again."""
        node = next(n for n in self.nodes if n.name == name)

        async def bounce():
            for conn in list(node.connections):
                conn.abort()  # drop the TCP connection, as a cut link would
            node.connections.clear()

        self._call(bounce())

    def stop(self) -> None:
        async def close_all():
            for node in self.nodes:
                if node.server is not None:
                    node.server.close()
                    await node.server.wait_closed()

        if self._thread.is_alive():
            self._call(close_all())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        # processes a node started (RPC servers) die with their sessions' process groups below
        for node in self.nodes:
            pid_files = list(node.work_dir.glob("**/*.pid"))
            for pid_file in pid_files:
                try:
                    os.kill(int(pid_file.read_text().strip()), 9)
                except (ValueError, ProcessLookupError, PermissionError):
                    pass  # already gone
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
