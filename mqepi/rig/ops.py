"""Cluster operations: check, deploy, RPC workers. Each is one stage over SSH.

llama.cpp's RPC backend runs one model across nodes: an ``ggml-rpc-server`` per worker,
bound to the worker's private address, and the quality tools on the head with
``--rpc host:port,... -ngl 99`` (without ``-ngl`` nothing is offloaded to CPU workers).
distributed-llama, named in the paper, cannot load GGUF or mix types per tensor, so the
per-layer maps run on llama.cpp RPC instead.

Every command is built by a function below from an argument list or a constant script whose
values arrive as positional parameters (see :mod:`mqepi.rig.executor`); none formats a config
or data value into shell syntax.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mqepi.errors import MqepiError
from mqepi.rig import config as cfg
from mqepi.rig.config import ClusterConfig, Host
from mqepi.rig.executor import int_arg, shell_join, shell_script
from mqepi.rig.ssh import ConnectionDropped, Remote, RemoteError, remove_command

MANIFEST = "toolchain.json"  # written beside bin/ by mqepi toolchain build
RPC_SERVER = "ggml-rpc-server"


class ClusterError(MqepiError):
    """The cluster is not fit for a run (unreachable node, wrong llama.cpp, dead worker ...)."""


@dataclass
class NodeReport:
    name: str
    role: str
    reachable: bool
    llama_cpp_commit: str | None = None
    binaries_missing: list[str] = field(default_factory=list)
    free_disk_mb: int | None = None
    memory_available_mb: int | None = None
    temperature_c: float | None = None
    problems: list[str] = field(default_factory=list)


#: $1 the manifest, $2 bin_dir, $3 work_dir, then the tools to find in bin_dir.
CHECK_SCRIPT = r"""
manifest=$1; bin_dir=$2; work_dir=$3; shift 3
cat -- "$manifest" 2>/dev/null | tr -d '\n'; echo
for t in "$@"; do [ -x "$bin_dir/$t" ] || printf 'missing:%s\n' "$t"; done
df -Pk -- "$work_dir" 2>/dev/null | awk 'NR==2 {print "disk_kb:" $4}'
awk '/MemAvailable/ {print "mem_kb:" $2}' /proc/meminfo
cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null | awk '{print "temp_mc:" $1}'
"""
#: $1 address, $2 port: prints "open" when something accepts a TCP connection there (bash's /dev/tcp).
PORT_PROBE_SCRIPT = '(exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && echo open || echo closed'
#: $1 the deploy ledger: its lines, nothing when it is missing.
LEDGER_READ_SCRIPT = 'cat -- "$1" 2>/dev/null || true'
#: $1 the deploy ledger, then its new lines.
LEDGER_WRITE_SCRIPT = 'ledger=$1; shift; printf \'%s\\n\' "$@" > "$ledger"'


def check_command(host: Host, tools: tuple[str, ...]) -> str:
    """The health check's command line for ``host``: manifest, missing tools, disk, memory, temperature."""
    return shell_script(CHECK_SCRIPT, str(Path(host.bin_dir).parent / MANIFEST), host.bin_dir, host.work_dir, *tools)


def port_probe_command(address: str, port: int) -> str:
    """Whether ``address:port`` accepts a connection on that host: prints ``open`` or ``closed``."""
    return shell_script(PORT_PROBE_SCRIPT, address, int_arg(port, "TCP port", 1, 65535), shell="bash")


def rpc_server_argv(worker: Host) -> list[str]:
    """``ggml-rpc-server`` bound to the worker's RPC address and port, with its tensor cache."""
    return [f"{worker.bin_dir.rstrip('/')}/{RPC_SERVER}", "-H", worker.rpc_address, "-p",
            int_arg(worker.rpc_port, f"{worker.name}: rpc_port", 1, 65535), "-c"]


def check(config: ClusterConfig, tools: tuple[str, ...] = ("llama-perplexity", "llama-bench", RPC_SERVER)) -> list[NodeReport]:
    """Reachability, llama.cpp commit (all must match the quant host's), binaries, disk,
    memory and temperature of every host, before anything is quantized."""
    reports = []
    hosts = ([config.quant_host] if config.quant_host else []) + list(config.nodes)
    for host in hosts:
        report = NodeReport(host.name, host.role, reachable=False)
        wanted = ("llama-quantize",) if host.role == "quant" else tools
        try:
            with Remote(host, config) as remote:
                result = remote.run(check_command(host, wanted), timeout=60)
        except RemoteError as exc:
            report.problems.append(str(exc))
            reports.append(report)
            continue
        report.reachable = True
        lines = result.text.splitlines()
        try:
            report.llama_cpp_commit = json.loads(lines[0]).get("llama_cpp_commit") if lines and lines[0] else None
        except json.JSONDecodeError:
            report.problems.append(f"unreadable {MANIFEST} in {Path(host.bin_dir).parent}")
        for line in lines[1:]:
            kind, _, value = line.partition(":")
            if kind == "missing":
                report.binaries_missing.append(value)
            elif kind == "disk_kb" and value.isdigit():
                report.free_disk_mb = int(value) // 1024
            elif kind == "mem_kb" and value.isdigit():
                report.memory_available_mb = int(value) // 1024
            elif kind == "temp_mc" and value.lstrip("-").isdigit():
                report.temperature_c = int(value) / 1000
        if report.binaries_missing:
            report.problems.append(f"missing in {host.bin_dir}: {', '.join(report.binaries_missing)}")
        if report.llama_cpp_commit is None:
            report.problems.append(f"no llama.cpp build manifest at {Path(host.bin_dir).parent / MANIFEST}")
        reports.append(report)
    reference = next((r.llama_cpp_commit for r in reports if r.role == "quant"), None) or \
        next((r.llama_cpp_commit for r in reports if r.llama_cpp_commit), None)
    for r in reports:
        if r.llama_cpp_commit and reference and r.llama_cpp_commit != reference:
            r.problems.append(f"llama.cpp {r.llama_cpp_commit} differs from the quant host's {reference}")
    return reports


def require_healthy(config: ClusterConfig) -> list[NodeReport]:
    """Fail before any work if a node is unreachable or unfit."""
    reports = check(config)
    bad = [r for r in reports if r.problems]
    if bad:
        raise ClusterError("; ".join(f"{r.name}: {' / '.join(r.problems)}" for r in bad))
    return reports


@dataclass
class Deployed:
    path: str
    sha256: str
    copied: bool
    removed: list[str]


def deploy(config: ClusterConfig, local: str | Path, sha256: str, *, keep: int = 2) -> Deployed:
    """Copy a GGUF to the head node's ``work_dir/models/`` unless it is there with the same
    sha256; a partial copy never counts (temp name, verified, renamed). Keeps the disk bounded:
    removes models this tool deployed earlier beyond the ``keep`` most recent, nothing else
    (it tracks them in ``models/.deployed``)."""
    head = config.head
    models = f"{head.work_dir.rstrip('/')}/models"
    target = f"{models}/{Path(local).name}"
    removed: list[str] = []
    with Remote(head, config) as remote:
        copied = remote.sha256(target) != sha256
        if copied:
            remote.put(local, target, sha256)
        ledger = f"{models}/.deployed"
        listing = remote.run(shell_script(LEDGER_READ_SCRIPT, ledger), timeout=60).text.splitlines()
        # only files this tool put in models/ are ever removed, whatever the ledger says
        order = [p for p in listing if _deployed_here(p, models) and p != target] + [target]
        for old in order[:-keep] if keep > 0 else []:
            remote.run(remove_command(old), timeout=60, check=True)
            removed.append(old)
        kept = order[-keep:] if keep > 0 else order
        remote.run(shell_script(LEDGER_WRITE_SCRIPT, ledger, *kept), timeout=60, check=True)
    return Deployed(target, sha256, copied, removed)


def _deployed_here(path: str, models: str) -> bool:
    """Whether a ledger line names a file directly in ``models`` (not the ledger, not elsewhere)."""
    name = path[len(models) + 1:] if path.startswith(models + "/") else ""
    return name not in ("", ".", "..", ".deployed") and "/" not in name


def rpc_endpoints(config: ClusterConfig) -> list[str]:
    """The workers' ``address:port`` list for ``--rpc``."""
    return [f"{w.rpc_address}:{int_arg(w.rpc_port, f'{w.name}: rpc_port', 1, 65535)}" for w in config.workers]


@contextmanager
def rpc_workers(config: ClusterConfig, *, wait_s: float = 15.0):
    """Start ggml-rpc-server on every worker (bound to its private address, with its tensor
    cache), wait until each listens, yield the ``--rpc`` list, stop them all afterwards."""
    remotes: list[tuple[Host, Remote, int]] = []
    try:
        for worker in config.workers:
            remote = Remote(worker, config)
            remotes.append((worker, remote, _start_rpc_server(config, worker, remote)))
        deadline = time.monotonic() + wait_s
        for worker, remote, pid in remotes:
            _wait_listening(worker, remote, pid, deadline, wait_s)
        yield rpc_endpoints(config)
    finally:
        for _worker, remote, _pid in remotes:
            remote.close()


def _start_rpc_server(config: ClusterConfig, worker: Host, remote: Remote) -> int:
    """Start one worker's RPC server (its address checked again: the config may not come
    from :func:`mqepi.rig.config.load`); refuse a port already in use. Returns the pid."""
    cfg.check_rpc_address(worker.rpc_address, f"{config.path}: node {worker.name}", private=config.private_network)
    probe = remote.run(port_probe_command(worker.rpc_address, worker.rpc_port), timeout=30).text.strip()
    if probe == "open":
        raise ClusterError(f"{worker.name}: RPC port {worker.rpc_address}:{worker.rpc_port} is already in use")
    work = worker.work_dir.rstrip("/")
    return remote.start_background(rpc_server_argv(worker), f"{work}/rpc-server.log", env={"LLAMA_CACHE": f"{work}/rpc-cache"})


def _wait_listening(worker: Host, remote: Remote, pid: int, deadline: float, wait_s: float) -> None:
    """Until the worker's RPC server accepts connections; a clear error if it exits or is late."""
    while True:
        if not remote.alive(pid):
            log = f"{worker.work_dir.rstrip('/')}/rpc-server.log"
            tail = remote.run(shell_join(["tail", "-n", "5", "--", log]), timeout=30).text
            raise ClusterError(f"{worker.name}: the RPC server exited: {tail.strip()}")
        if remote.run(port_probe_command(worker.rpc_address, worker.rpc_port), timeout=30).text.strip() == "open":
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"{worker.name}: the RPC server is not listening on "
                               f"{worker.rpc_address}:{worker.rpc_port} after {wait_s} s")
        time.sleep(0.3)


def rpc_args(endpoints: list[str]) -> list[str]:
    """Arguments that make a llama.cpp tool offload every layer to the RPC workers."""
    return ["--rpc", ",".join(endpoints), "-ngl", "99"] if endpoints else []


def retrying(stage, *, attempts: int = 3, wait_s: float = 1.0, on_retry=None):
    """Run ``stage()``; after a dropped SSH connection (transient) run it again, up to
    ``attempts`` times. Anything else (a refused host key, a validation error) is final.
    Stages append their events only when complete, and the lake drops events it already has,
    so a retried stage never duplicates an event."""
    for attempt in range(1, attempts + 1):
        try:
            return stage()
        except ConnectionDropped as exc:
            if attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            time.sleep(wait_s)
