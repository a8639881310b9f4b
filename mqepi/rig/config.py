"""Cluster configuration (TOML), validated with messages naming the file, field and value.

```toml
lake = "lake"                      # optional: lake root for the orchestrator
cache = "~/.cache/mqepi"           # optional
private_network = false            # true only if the RPC interface is a private network

[quant_host]                       # where llama-quantize runs (the paper: a DGX Spark)
host = "10.0.0.10"; port = 22; user = "pi"; key = "~/.ssh/id_ed25519"
bin_dir = "/opt/mqepi/llama.cpp/bin"; work_dir = "/srv/mqepi"

[[nodes]]
name = "pi0"; role = "head"; host = "10.0.0.20"; port = 22; user = "pi"; key = "~/.ssh/id_ed25519"
rpc_address = "192.168.50.20"; rpc_port = 50052; meter_channel = 0; memory_mb = 16384
bin_dir = "/opt/mqepi/llama.cpp/bin"; work_dir = "/srv/mqepi"
```

Host keys are verified against ``known_hosts`` (default ``~/.ssh/known_hosts``).
``insecure_skip_host_key_check = true`` exists for tests only and is announced loudly.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mqepi.errors import MqepiError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ROLES = ("head", "worker")


class ClusterConfigError(MqepiError):
    """The cluster configuration is invalid."""


@dataclass(frozen=True)
class Host:
    name: str
    host: str
    port: int
    user: str
    key: str
    bin_dir: str
    work_dir: str
    role: str = "quant"
    rpc_address: str | None = None
    rpc_port: int = 50052
    meter_channel: int | None = None
    memory_mb: int | None = None


@dataclass(frozen=True)
class ClusterConfig:
    path: str
    nodes: tuple[Host, ...]
    quant_host: Host | None
    known_hosts: str | None
    insecure_skip_host_key_check: bool = False
    private_network: bool = False
    lake: str | None = None
    cache: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def head(self) -> Host:
        return next(n for n in self.nodes if n.role == "head")

    @property
    def workers(self) -> list[Host]:
        return [n for n in self.nodes if n.role == "worker"]


def load(path: str | Path) -> ClusterConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterConfigError(f"{path}: no such cluster config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterConfigError(f"{path}: not TOML: {exc}") from None
    return parse(data, str(path))


def parse(data: dict, where: str) -> ClusterConfig:
    known = {"nodes", "quant_host", "known_hosts", "insecure_skip_host_key_check", "private_network", "lake", "cache"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ClusterConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    nodes_raw = data.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ClusterConfigError(f"{where}: field nodes: at least one [[nodes]] table is needed")
    private = _bool(data, "private_network", where, False)
    nodes = tuple(_host(n, f"{where}: nodes[{i}]", node=True, private=private) for i, n in enumerate(nodes_raw))
    names = [n.name for n in nodes]
    for name in names:
        if names.count(name) > 1:
            raise ClusterConfigError(f"{where}: field nodes: name {name!r} used twice")
    heads = [n.name for n in nodes if n.role == "head"]
    if len(heads) != 1:
        raise ClusterConfigError(f"{where}: field nodes: exactly one node needs role = \"head\", found {len(heads)} ({heads})")
    channels = [n.meter_channel for n in nodes if n.meter_channel is not None]
    if len(channels) != len(set(channels)):
        raise ClusterConfigError(f"{where}: field nodes: meter_channel values repeat: {channels}")
    rpc = [(n.rpc_address, n.rpc_port) for n in nodes if n.role == "worker"]
    if len(rpc) != len(set(rpc)):
        raise ClusterConfigError(f"{where}: field nodes: two workers share an RPC address and port: {rpc}")
    quant = data.get("quant_host")
    quant_host = _host(quant, f"{where}: quant_host", node=False, private=private) if quant is not None else None
    return ClusterConfig(
        path=where, nodes=nodes, quant_host=quant_host,
        known_hosts=str(Path(data["known_hosts"]).expanduser()) if data.get("known_hosts") else None,
        insecure_skip_host_key_check=_bool(data, "insecure_skip_host_key_check", where, False),
        private_network=private, lake=data.get("lake"), cache=data.get("cache"),
    )


def _bool(data: dict, key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ClusterConfigError(f"{where}: field {key}: {value!r} is not true/false")
    return value


def _host(raw, where: str, *, node: bool, private: bool) -> Host:
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where}: must be a table, not {type(raw).__name__}")
    allowed = {"name", "host", "port", "user", "key", "bin_dir", "work_dir", "role", "rpc_address", "rpc_port",
               "meter_channel", "memory_mb"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ClusterConfigError(f"{where}: unknown field {unknown[0]!r}")
    for key in ("host", "user", "key", "bin_dir", "work_dir") + (("name", "role") if node else ()):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ClusterConfigError(f"{where}: field {key} is required (a non-empty string), got {raw.get(key)!r}")
    name = raw.get("name", "quant-host")
    if not NAME.match(name):
        raise ClusterConfigError(f"{where}: field name {name!r} is not a simple name")
    role = raw.get("role", "quant")
    if node and role not in ROLES:
        raise ClusterConfigError(f"{where}: field role {role!r} is not one of {ROLES}")
    port = raw.get("port", 22)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ClusterConfigError(f"{where}: field port {port!r} is not a TCP port")
    rpc_port = raw.get("rpc_port", 50052)
    if not isinstance(rpc_port, int) or not 0 < rpc_port < 65536:
        raise ClusterConfigError(f"{where}: field rpc_port {rpc_port!r} is not a TCP port")
    rpc_address = raw.get("rpc_address")
    if node and role == "worker":
        if not isinstance(rpc_address, str):
            raise ClusterConfigError(f"{where}: field rpc_address is required for a worker (its private interface)")
        try:
            address = ipaddress.ip_address(rpc_address)
        except ValueError:
            raise ClusterConfigError(f"{where}: field rpc_address {rpc_address!r} is not an IP address") from None
        if address.is_unspecified and not private:
            raise ClusterConfigError(
                f"{where}: field rpc_address {rpc_address!r} binds every interface; the llama.cpp RPC server has no "
                "authentication: use the private interface's address, or set private_network = true if it is one")
        if not (address.is_loopback or address.is_private or private):
            raise ClusterConfigError(
                f"{where}: field rpc_address {rpc_address!r} is not a loopback or private address; the RPC server has "
                "no authentication (set private_network = true only if that network is private)")
    for key in ("meter_channel", "memory_mb"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ClusterConfigError(f"{where}: field {key} {value!r} is not a non-negative integer")
    return Host(name=name, host=raw["host"], port=port, user=raw["user"], key=str(Path(raw["key"]).expanduser()),
                bin_dir=raw["bin_dir"], work_dir=raw["work_dir"], role=role, rpc_address=rpc_address,
                rpc_port=rpc_port, meter_channel=raw.get("meter_channel"), memory_mb=raw.get("memory_mb"))
