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

[hardware]                         # optional: what the runs are measured on (mqepi.rig.hardware)
name = "pi5-rack-a"; node_model = "Raspberry Pi 5 Model B Rev 1.0"; ram_mb = 8192; cooling = "active cooler"
os = "Debian GNU/Linux 12 (bookworm)"; kernel = "6.6.51+rpt-rpi-2712"; llama_cpp_commit = "b4153"
meter_id = "epi-meter-0"; meter_firmware = "1.2.0"  # every field optional: the rest is probed
```

Host keys are verified against ``known_hosts`` (default ``~/.ssh/known_hosts``).
``insecure_skip_host_key_check = true`` exists for tests only and is announced loudly.

Values are checked strictly, since some reach commands on the nodes (always quoted there):
``host`` is a dotted-quad IPv4 address, an IPv6 address without a scope id, or an ASCII DNS
name; ``user`` a plain user name; paths carry no control characters; ports and counts are
integers (a bool is not one). ``rpc_address`` follows :func:`check_rpc_address`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mqepi.errors import MqepiError
from mqepi.rig.hardware import MAX_TEXT, PROFILE_FIELDS, HardwareProfile

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
ROLES = ("head", "worker")
USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}\Z){LABEL}(\.{LABEL})*\Z")
IPV4 = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}\Z")
IPV4_LIKE = re.compile(r"^[0-9.]+\Z")  # all digits and dots: an address or nothing, never a name
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Where an RPC server may listen without ``private_network = true``: loopback, RFC 1918, link-local.
PRIVATE_RPC = tuple(ipaddress.IPv4Network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                        "169.254.0.0/16"))
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


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
    #: The head's Python with mqepi and llama-cpp-python's bindings, and its folder of llama.cpp
    #: shared libraries (same commit as bin_dir's tools): what runs the scoring engine there.
    python: str = "python3"
    lib_dir: str | None = None

    @property
    def engine_lib_dir(self) -> str:
        """The shared-library folder (default: ``lib`` beside ``bin_dir``)."""
        return self.lib_dir or str(Path(self.bin_dir).parent / "lib")


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
    #: The ``[hardware]`` table (None: absent); fields it omits are probed when a sweep starts.
    hardware: HardwareProfile | None = None

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
    known = {"nodes", "quant_host", "known_hosts", "insecure_skip_host_key_check", "private_network", "lake", "cache",
             "hardware"}
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
    for key in ("known_hosts", "lake", "cache"):
        if data.get(key) is not None:
            _text(data[key], where, key)
    return ClusterConfig(
        path=where, nodes=nodes, quant_host=quant_host,
        known_hosts=str(Path(data["known_hosts"]).expanduser()) if data.get("known_hosts") else None,
        insecure_skip_host_key_check=_bool(data, "insecure_skip_host_key_check", where, False),
        private_network=private, lake=data.get("lake"), cache=data.get("cache"),
        hardware=_hardware(data["hardware"], f"{where}: hardware") if "hardware" in data else None,
    )


def _hardware(raw, where: str) -> HardwareProfile:
    """The ``[hardware]`` table: every field optional; ``ram_mb`` a positive integer, the others
    non-empty one-line strings of at most MAX_TEXT characters."""
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where}: must be a table, not {type(raw).__name__}")
    allowed = ("name", *PROFILE_FIELDS)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ClusterConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(allowed)})")
    for key in allowed:
        if key in raw and key != "ram_mb":
            _text(raw[key], where, key)
            if len(raw[key]) > MAX_TEXT:
                raise ClusterConfigError(f"{where}: field {key} {raw[key][:40]!r}... is longer than {MAX_TEXT} characters")
    ram_mb = _int(raw, "ram_mb", where, None, 1, None, "a positive integer (MB)")
    return HardwareProfile(**{**{k: raw[k] for k in allowed if k in raw}, "ram_mb": ram_mb})


def _bool(data: dict, key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ClusterConfigError(f"{where}: field {key}: {value!r} is not true/false")
    return value


def _text(value, where: str, key: str) -> str:
    """A non-empty string without control characters (a newline, a NUL ...)."""
    if not isinstance(value, str) or not value:
        raise ClusterConfigError(f"{where}: field {key} is required (a non-empty string), got {value!r}")
    if CONTROL.search(value):
        raise ClusterConfigError(f"{where}: field {key} {value!r} contains a control character (newline, tab, NUL ...)")
    return value


def _int(raw: dict, key: str, where: str, default, low: int, high: int | None, what: str):
    """An integer field (a bool is not one) within ``low..high``; ``default`` when absent."""
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise ClusterConfigError(f"{where}: field {key} {value!r} is not {what}")
    return value


def _scope_refused(value: str) -> str | None:
    """The reason an address with a ``%`` is refused, or None."""
    if "%" in value:
        return "has an IPv6 scope id (the part after '%'); scope ids are refused"
    return None


def check_ssh_host(value, where: str) -> str:
    """``host``: an IPv4 address in dotted-quad form, an IPv6 address without a scope id, or an
    ASCII DNS name (letters, digits, hyphens, dots)."""
    value = _text(value, where, "host")
    why = _scope_refused(value) or ("is not ASCII (write a DNS name in its xn-- form)" if not value.isascii() else None)
    if why is None and ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            why = "is not an IPv6 address (no brackets, no port)"
    elif why is None and not (IPV4.match(value) and _ipv4(value) or HOSTNAME.match(value) and not IPV4_LIKE.match(value)):
        why = "is neither an IPv4 address in dotted-quad form nor a DNS name"
    if why:
        raise ClusterConfigError(f"{where}: field host {value!r} {why}")
    return value


def _ipv4(value: str) -> ipaddress.IPv4Address | None:
    """The address when ``value`` is exactly its canonical dotted quad (no leading zeros)."""
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        return None
    return address if str(address) == value else None


def check_rpc_address(value, where: str, *, private: bool) -> str:
    """The address a worker's RPC server binds: an IPv4 address (the pinned llama.cpp's
    ``ggml-rpc-server`` binds IPv4 only), never multicast, broadcast, reserved or ``0.x.x.x``
    other than ``0.0.0.0``; ``0.0.0.0`` and addresses outside loopback, RFC 1918 and link-local
    only with ``private_network = true`` (the RPC server has no authentication)."""
    if not isinstance(value, str):
        raise ClusterConfigError(f"{where}: field rpc_address {value!r} is not a string (an IPv4 address)")
    shown = f"{where}: field rpc_address {value!r}"
    why = _scope_refused(value)
    if why is None and not value.isascii():
        why = "is not ASCII"
    elif why is None and ":" in value:
        mapped = _mapped(value)
        why = ("is an IPv6 address" + (f" (IPv4-mapped {mapped})" if mapped else "")
               + "; llama.cpp's RPC server binds IPv4 addresses only")
    if why:
        raise ClusterConfigError(f"{shown} {why}; use the worker's private IPv4 address")
    address = _ipv4(value) if IPV4.match(value) else None
    if address is None:
        raise ClusterConfigError(f"{shown} is not an IPv4 address in dotted-quad form (four numbers 0-255, no leading "
                                 "zeros, no spaces or other characters)")
    if address.is_multicast or address.is_reserved or (address in THIS_NETWORK and not address.is_unspecified):
        raise ClusterConfigError(f"{shown} is a multicast, broadcast or reserved address; no server can bind it")
    if address.is_unspecified and not private:
        raise ClusterConfigError(
            f"{shown} binds every interface; the llama.cpp RPC server has no authentication: use the private "
            "interface's address, or set private_network = true if it is one")
    if not (address.is_unspecified or any(address in net for net in PRIVATE_RPC) or private):
        raise ClusterConfigError(
            f"{shown} is not a loopback or private address (127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, "
            "169.254.0.0/16); the RPC server has no authentication (set private_network = true only if that network "
            "is private)")
    return value


def _mapped(value: str) -> str | None:
    """The IPv4 address an IPv4-mapped IPv6 address carries, for the message."""
    try:
        mapped = ipaddress.IPv6Address(value).ipv4_mapped
    except ValueError:
        return None
    return str(mapped) if mapped else None


def _host(raw, where: str, *, node: bool, private: bool) -> Host:
    """One ``[quant_host]`` or ``[[nodes]]`` table, every field checked."""
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{where}: must be a table, not {type(raw).__name__}")
    allowed = {"name", "host", "port", "user", "key", "bin_dir", "work_dir", "role", "rpc_address", "rpc_port",
               "meter_channel", "memory_mb", "python", "lib_dir"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ClusterConfigError(f"{where}: unknown field {unknown[0]!r}")
    for key in ("key", "bin_dir", "work_dir") + (("name", "role") if node else ()):
        _text(raw.get(key), where, key)
    for key in ("python", "lib_dir"):
        if key in raw:
            _text(raw.get(key), where, key)
    host = check_ssh_host(raw.get("host"), where)
    user = _text(raw.get("user"), where, "user")
    if not USER.match(user):
        raise ClusterConfigError(f"{where}: field user {user!r} is not a user name (letters, digits, '_', '.', '-')")
    name = raw.get("name", "quant-host")
    if not isinstance(name, str) or not NAME.match(name):
        raise ClusterConfigError(f"{where}: field name {name!r} is not a simple name")
    role = raw.get("role", "quant")
    if node and role not in ROLES:
        raise ClusterConfigError(f"{where}: field role {role!r} is not one of {ROLES}")
    port = _int(raw, "port", where, 22, 1, 65535, "a TCP port")
    rpc_port = _int(raw, "rpc_port", where, 50052, 1, 65535, "a TCP port")
    rpc_address = raw.get("rpc_address")
    if node and role == "worker" and rpc_address is None:
        raise ClusterConfigError(f"{where}: field rpc_address is required for a worker (its private interface)")
    if rpc_address is not None:
        check_rpc_address(rpc_address, where, private=private)
    meter_channel = _int(raw, "meter_channel", where, None, 0, None, "a non-negative integer")
    memory_mb = _int(raw, "memory_mb", where, None, 0, None, "a non-negative integer")
    return Host(name=name, host=host, port=port, user=user, key=str(Path(raw["key"]).expanduser()),
                bin_dir=raw["bin_dir"], work_dir=raw["work_dir"], role=role, rpc_address=rpc_address,
                rpc_port=rpc_port, meter_channel=meter_channel, memory_mb=memory_mb,
                python=raw.get("python", "python3"), lib_dir=raw.get("lib_dir"))
