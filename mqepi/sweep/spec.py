"""What a sweep measures: :class:`SweepSpec` (the quality settings plus the sweep's own), its
identity (the same settings resume the same sweep), and specs read from JSON files."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mqepi.errors import MqepiError
from mqepi.quality.evaluate import Settings
from mqepi.quality.tasks import known


class SweepError(MqepiError):
    """The sweep cannot go on (bad spec, unhealthy cluster, a stage failed for good)."""


METERS = ("simulated", "none")  # plus "epi-meter:<serial port>"
#: A sweep name: it starts every run id and names the sweep's lock file.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass
class SweepSpec(Settings):
    """What to measure: the quality settings of :class:`mqepi.quality.evaluate.Settings`
    (benchmarks and question counts, shots, seed, perplexity, KLD, throughput, threads) and
    the sweep's own. The measurement settings (everything but ``name`` and ``configs``)
    define the sweep's identity: the same settings resume the same sweep."""

    model: str = "smollm2-135m"
    configs: list[str] | None = None  # None: every committed map of the model
    repeats: int = 3
    cluster: str | None = None  # cluster TOML; None: this machine is the only node
    rpc: bool = True  # offload layers to the cluster's RPC workers
    meter: str = "simulated"  # simulated | none | epi-meter:<serial port URL>
    meter_rate_hz: float = 20.0
    idle_s: float = 10.0
    settle_s: float = 2.0  # fixed pause before the idle window when no node has a thermal sensor
    stabilise_min_s: float = 60.0
    stabilise_timeout_s: float = 900.0
    name: str | None = None
    #: Only these [configuration, repeat] pairs now (a cluster's share of a multi-cluster sweep);
    #: None: every pair. Not part of the identity, like ``configs``.
    pairs: list[list] | None = None

    def __post_init__(self) -> None:
        check_types(self)
        if self.name and not NAME.match(self.name):
            raise SweepError(f"name = {self.name!r}: 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', "
                             "starting with a letter or digit")
        if self.repeats < 1:
            raise SweepError(f"repeats = {self.repeats}: at least 1")
        if not self.benchmarks:
            raise SweepError(f"benchmarks: at least one benchmark is needed ({known()})")
        for name, n in self.benchmarks.items():
            if n is not None and n < 1:
                raise SweepError(f"benchmarks: {name} = {n} questions: at least 1 (or null for all)")
        if self.meter not in METERS and not self.meter.startswith("epi-meter:"):
            raise SweepError(f"meter = {self.meter!r}: one of simulated, none, epi-meter:<serial port>")
        for pair in self.pairs or []:
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str)
                    or not isinstance(pair[1], int) or isinstance(pair[1], bool) or not 0 <= pair[1] < self.repeats):
                raise SweepError(f"pairs: {pair!r} is not [configuration, repeat] with 0 <= repeat < {self.repeats}")
        if self.idle_s <= 0 and self.meter != "none":
            raise SweepError(f"idle_s = {self.idle_s}: the idle baseline window needs a positive length")

    @property
    def power_source(self) -> str:
        return {"simulated": "simulated", "none": "none"}.get(self.meter, "epi-meter")

    def identity(self) -> dict:
        # which configurations to do now is not part of what is measured: a sweep over a
        # subset and the full one share an id, so each resumes the other
        skip = {"name", "configs", "pairs"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def wants(self, config_id: str, repeat: int | None = None) -> bool:
        """Whether this call measures (``config_id``, ``repeat``) (any repeat when None)."""
        if self.pairs is None:
            return True
        return any(c == config_id and (repeat is None or r == repeat) for c, r in self.pairs)

    @property
    def sweep_id(self) -> str:
        if self.name:
            return self.name
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return f"sw-{digest[:10]}"


#: Python types of each annotation a SweepSpec field has (``from __future__`` makes them strings).
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}


def check_types(spec) -> None:
    """A :class:`SweepError` naming the first field whose value is not of its declared type
    (``idle_s = 'abc'``), before anything compares or computes with it."""
    for name, f in spec.__dataclass_fields__.items():
        value, kinds = getattr(spec, name), str(f.type).replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        allowed = tuple(t for k in kinds for t in _TYPES.get(k.split("[")[0], ()))
        if not allowed:
            continue
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise SweepError(f"{name} = {value!r}: expected {f.type}")


def spec_from_json(path: str | Path) -> SweepSpec:
    """A spec from a JSON file (the keys of :class:`SweepSpec`), with clear errors."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep spec") from None
    except json.JSONDecodeError as exc:
        raise SweepError(f"{path}: not JSON: {exc}") from None
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SweepError(f"{path}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return SweepSpec(**data)
    except SweepError as exc:
        raise SweepError(f"{path}: {exc}") from None
