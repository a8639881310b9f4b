"""Hardware identity: what a run was measured on, and its short stable hash ``hardware_id``.

A cluster config may state its hardware in a ``[hardware]`` table (:mod:`mqepi.rig.config`)::

    [hardware]
    name = "pi5-rack-a"                 # a label for people; NOT part of the hash
    node_model = "Raspberry Pi 5 Model B Rev 1.0"
    ram_mb = 8192
    os = "Debian GNU/Linux 12 (bookworm)"
    kernel = "6.6.51+rpt-rpi-2712"
    llama_cpp_commit = "b4153"
    meter_id = "epi-meter-0"
    meter_firmware = "1.2.0"
    cooling = "active cooler"

Every field is optional: what the config omits is probed (:func:`complete`) on the head node
through its executor (``uname -r``, ``/etc/os-release`` PRETTY_NAME, ``/proc/device-tree/model``
or the CPU model of ``/proc/cpuinfo``, ``MemTotal``), the llama.cpp commit comes from the
toolchain, the meter from the sweep's meter (``simulated`` for the simulated one). Values the
config states win over probed ones; a value neither stated nor found is ``unknown``.

:func:`hardware_id` is ``hw-`` and the first 12 hex digits of the sha256 of the canonical JSON
(sorted keys, no spaces) of the eight profile fields. The label ``name`` is left out, so that
relabelling a cluster does not split its data, and two clusters of identical hardware share
an id (they are the same hardware). Every ``run`` event carries the id (column
``hardware_id``) and the profile (``provenance_json["hardware"]``); the derived views never
pool runs of different ids.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from mqepi.rig.executor import Executor, LocalExecutor, shell_script

#: The fields that identify hardware (hashed), in documentation order.
PROFILE_FIELDS = ("node_model", "ram_mb", "os", "kernel", "llama_cpp_commit", "meter_id", "meter_firmware", "cooling")
#: A value neither stated nor probed.
UNKNOWN = "unknown"
#: The longest text value kept (probed values are cut to it, stated ones refused beyond it).
MAX_TEXT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: Prints ``kernel:``, ``os:``, ``model:`` and ``mem_kb:`` lines; reads only, needs no argument.
PROBE_SCRIPT = r"""
printf 'kernel:%s\n' "$(uname -r 2>/dev/null)"
printf 'os:%s\n' "$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | head -n 1 | tr -d '"')"
model=""
if [ -r /proc/device-tree/model ]; then model=$(tr -d '\000' < /proc/device-tree/model); fi
if [ -z "$model" ]; then
  model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
fi
if [ -z "$model" ]; then model=$(uname -m 2>/dev/null); fi
printf 'model:%s\n' "$model"
printf 'mem_kb:%s\n' "$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo 2>/dev/null)"
"""


@dataclass(frozen=True)
class HardwareProfile:
    """A hardware profile; None: not stated (yet). :func:`complete` fills every field."""

    node_model: str | None = None
    ram_mb: int | None = None
    os: str | None = None
    kernel: str | None = None
    llama_cpp_commit: str | None = None
    meter_id: str | None = None
    meter_firmware: str | None = None
    cooling: str | None = None
    #: A label for people (report headings); not hashed.
    name: str | None = None

    def identity(self) -> dict:
        """The hashed fields (every field but ``name``)."""
        return {f: getattr(self, f) for f in PROFILE_FIELDS}

    @property
    def hardware_id(self) -> str:
        return hardware_id(self)

    def merged(self, other: HardwareProfile) -> HardwareProfile:
        """This profile with each field it leaves None taken from ``other`` (stated wins)."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(self) if getattr(self, f.name) is None})

    def as_dict(self) -> dict:
        """Every field and the id: what a run's provenance records under ``hardware``."""
        return {**asdict(self), "hardware_id": self.hardware_id}

    def describe(self) -> str:
        """A short description: node model, RAM, cooling (and the label)."""
        return describe(self.as_dict())


def hardware_id(profile: HardwareProfile | Mapping) -> str:
    """``hw-`` + 12 hex digits of the sha256 of the profile's canonical JSON. A
    :class:`HardwareProfile` hashes its eight :data:`PROFILE_FIELDS` (not ``name``); a mapping
    (a community manifest's ``hardware`` object) hashes as it is."""
    data = profile.identity() if isinstance(profile, HardwareProfile) else dict(profile)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "hw-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def describe(profile: Mapping | None, hw_id: str | None = None) -> str:
    """``node model, N MB RAM, cooling (id)`` from a profile as recorded (``as_dict``) or a
    community manifest's hardware; what is missing is left out."""
    profile = dict(profile or {})
    hw_id = hw_id or profile.get("hardware_id")
    parts = [str(profile[k]) for k in ("name", "node_model") if profile.get(k) not in (None, UNKNOWN)]
    if isinstance(profile.get("ram_mb"), int):
        parts.append(f"{profile['ram_mb']} MB RAM")
    if profile.get("cooling") not in (None, UNKNOWN):
        parts.append(f"cooling: {profile['cooling']}")
    if not parts and isinstance(profile.get("nodes"), list):  # a community manifest's hardware
        parts = sorted({str(n.get("description")) for n in profile["nodes"] if isinstance(n, dict)})[:3]
    text = ", ".join(parts) or "hardware not described"
    return f"{text} ({hw_id})" if hw_id else text


def _clean(value: str) -> str | None:
    value = _CONTROL.sub(" ", value).strip()[:MAX_TEXT]
    return value or None


def parse_probe(text: str) -> HardwareProfile:
    """The profile fields :data:`PROBE_SCRIPT`'s output names (None where it found nothing)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("kernel", "os", "model", "mem_kb") and key not in found:
            found[key] = value
    mem = found.get("mem_kb", "").strip()
    return HardwareProfile(node_model=_clean(found.get("model", "")), os=_clean(found.get("os", "")),
                           kernel=_clean(found.get("kernel", "")),
                           ram_mb=int(mem) // 1024 if mem.isdigit() and int(mem) >= 1024 else None)


def probe(executor: Executor) -> HardwareProfile:
    """Node model, RAM, OS and kernel of the host ``executor`` runs on (read-only commands)."""
    result = executor.run(shell_script(PROBE_SCRIPT), timeout=60)
    return parse_probe(result.text)


def meter_identity(meter: str | None) -> tuple[str, str]:
    """(meter_id, meter_firmware) of a sweep's meter setting when the config states none:
    ``simulated`` for the simulated meter, ``none`` without one; the epi-meter's reader id
    (``epi-meter-0``) with firmware ``unknown`` (state it in ``[hardware]``)."""
    if meter == "simulated":
        return "simulated", "simulated"
    if not meter or meter == "none":
        return "none", "none"
    if meter.startswith("epi-meter"):
        return "epi-meter-0", UNKNOWN
    return meter.split(":", 1)[0], UNKNOWN


def complete(stated: HardwareProfile | None, executor: Executor | None = None, *,
             llama_cpp_commit: str | None = None, meter: str | None = None) -> HardwareProfile:
    """``stated`` (a config's ``[hardware]``; None: nothing stated) with every missing field
    filled: probed through ``executor`` (this machine when None), the llama.cpp commit and the
    meter given; ``unknown`` where nothing is found. Probing happens only when a probed field
    is missing."""
    stated = stated or HardwareProfile()
    need_probe = any(getattr(stated, f) is None for f in ("node_model", "ram_mb", "os", "kernel"))
    probed = probe(executor or LocalExecutor()) if need_probe else HardwareProfile()
    meter_id, firmware = meter_identity(meter)
    given = HardwareProfile(llama_cpp_commit=llama_cpp_commit, meter_id=meter_id, meter_firmware=firmware)
    out = stated.merged(probed).merged(given)
    fill = {f: UNKNOWN for f in PROFILE_FIELDS if getattr(out, f) is None and f != "ram_mb"}
    return replace(out, **fill)


def local_profile(*, llama_cpp_commit: str | None = None, meter: str | None = None) -> HardwareProfile:
    """This machine's profile (no config): what ``mqepi evaluate`` and a sweep without a
    cluster record."""
    return complete(None, None, llama_cpp_commit=llama_cpp_commit, meter=meter)
