"""The epi-meter line format, version 1: its constants, encoder and pluggable decoders.

The format is the project's own (the board's real field names are unpublished, so the
decoder is pluggable and the names are data):

``{"v":1,"seq":812,"t":16240000,"p":[4,3,5,6],"u":[230.12,...],"i":[...],"pf":[...],"f":[...],"e":[...]}*3A4F09C2\\n``

One line per meter reading, sent over UART at 115200 baud 8N1. The JSON payload holds
exactly one object with no nested objects (so the payload starts at the last ``{`` of
a line: garbage before it is skipped). After the payload comes ``*`` and the check
value: CRC-32 (IEEE 802.3, as ``zlib.crc32``) of the payload bytes, 8 upper-case hex
digits. Then ``\\n`` (a ``\\r`` before it is ignored). Fields: see :class:`LineFields`.
Budget: at 115200 baud a line of about 200 bytes (4 channels) fits 50 times a second.

The ATM90E26 chips' own UART register protocol is in :mod:`mqepi.meter.atm90e26`; each
power source's resolution and accuracy in :mod:`mqepi.meter.stream`.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import polars as pl

from mqepi.meter.stream import ProtocolError

#: Version of the line format this module reads and writes (the ``v`` field).
FORMAT_VERSION = 1
#: UART speed of the epi-meter board.
BAUDRATE = 115200
#: A line longer than this is garbage (a v1 line of 4 channels is about 200 bytes).
MAX_LINE_BYTES = 1024
LINE_END = b"\n"
CHECK_SEPARATOR = b"*"
#: Hex digits of the check value.
CHECK_DIGITS = 8
#: Channels a line may carry (the lake's ``channel`` column is 0-63).
MAX_CHANNELS = 64
#: Unit of the meter clock field ``t``: microseconds since the meter started.
METER_TIME_UNIT_NS = 1000


@dataclass(frozen=True)
class LineFields:
    """JSON keys of one reading. A board that names them differently is a new instance
    of this class, not new code."""

    version: str = "v"  # int, FORMAT_VERSION
    seq: str = "seq"  # int >= 0, +1 per reading the meter takes (a lost line leaves a gap); restarts at 0 on reset
    meter_time: str = "t"  # int >= 0, meter clock in METER_TIME_UNIT_NS units; optional
    simulated: str = "sim"  # 1 when a simulator wrote the line; absent on real hardware
    channels: str = "ch"  # list of channel numbers 0-63; optional, default 0..n-1
    power: str = "p"  # list, active power W per channel (required)
    voltage: str = "u"  # list, Vrms V; optional, entries may be null
    current: str = "i"  # list, Irms A; optional
    power_factor: str = "pf"  # list, -1..1; optional
    frequency: str = "f"  # list, line frequency Hz; optional
    energy: str = "e"  # list, forward active energy J since meter start; optional


EPI_V1 = LineFields()

#: The per-channel list fields and the power_sample column each one fills.
CHANNEL_FIELDS = (
    ("power", "power_w"),
    ("voltage", "voltage_v"),
    ("current", "current_a"),
    ("power_factor", "power_factor"),
    ("frequency", "frequency_hz"),
    ("energy", "energy_counter_j"),
)

#: Valid range of each decoded value (mirrors the power_sample schema).
VALUE_RANGES = {
    "power_w": (0.0, 1e6),
    "voltage_v": (0.0, 1e4),
    "current_a": (0.0, 1e4),
    "power_factor": (-1.0, 1.0),
    "frequency_hz": (0.0, 1e3),
    "energy_counter_j": (0.0, math.inf),
}

#: Columns of a decoded frame (one row per channel reading).
DECODED_SCHEMA = {
    "line": pl.UInt32,
    "seq": pl.Int64,
    "meter_time_ns": pl.Int64,
    "simulated": pl.Boolean,
    "channel": pl.Int32,
    "power_w": pl.Float64,
    "voltage_v": pl.Float64,
    "current_a": pl.Float64,
    "power_factor": pl.Float64,
    "frequency_hz": pl.Float64,
    "energy_counter_j": pl.Float64,
}


def check_value(payload: bytes) -> bytes:
    """The check value of a payload: CRC-32 as 8 upper-case hex digits."""
    return b"%08X" % zlib.crc32(payload)


def encode_line(seq: int, power_w, *, meter_time_us: int | None = None, voltage_v=None, current_a=None,
                power_factor=None, frequency_hz=None, energy_j=None, channels=None, simulated: bool = False,
                fields: LineFields = EPI_V1) -> bytes:
    """One complete line (payload, check value, newline) in the v1 format."""
    obj: dict = {fields.version: FORMAT_VERSION, fields.seq: int(seq)}
    if meter_time_us is not None:
        obj[fields.meter_time] = int(meter_time_us)
    if simulated:
        obj[fields.simulated] = 1
    if channels is not None:
        obj[fields.channels] = list(channels)
    obj[fields.power] = list(power_w)
    for name, values in (("voltage", voltage_v), ("current", current_a), ("power_factor", power_factor),
                         ("frequency", frequency_hz), ("energy", energy_j)):
        if values is not None:
            obj[getattr(fields, name)] = list(values)
    payload = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    return payload + CHECK_SEPARATOR + check_value(payload) + LINE_END


@dataclass(frozen=True)
class LineIssue:
    """A line (or part of one) the decoder could not use."""

    kind: str  # garbage | bad_check | invalid
    line: int  # index of the line in its batch
    detail: str


class LineDecoder(ABC):
    """Turns raw lines into readings. Pluggable: the reader takes any subclass."""

    name: str = "abstract"

    @abstractmethod
    def check(self, line: bytes) -> tuple[bytes | None, str | None, str | None]:
        """Frame one raw line (without its newline) as it arrives.

        Returns ``(payload, issue_kind, detail)``: ``payload`` is the verified payload or
        None; ``issue_kind`` (``garbage`` or ``bad_check``) says what was wrong, if anything
        (a usable payload can still come with ``garbage`` bytes skipped before it).
        """

    @abstractmethod
    def decode(self, payloads: list[bytes]) -> tuple[pl.DataFrame, list[LineIssue]]:
        """Decode checked payloads in bulk: a frame of :data:`DECODED_SCHEMA` (``line`` is
        the payload's index) and one ``invalid`` issue per unusable payload or reading."""


class JsonLineDecoder(LineDecoder):
    """Decoder of the JSON line format (v1 by default; other key names via ``fields``)."""

    name = "epi-json-v1"

    def __init__(self, fields: LineFields = EPI_V1, *, meter_time_unit_ns: int = METER_TIME_UNIT_NS,
                 verify_check: bool = True):
        self.fields = fields
        self.meter_time_unit_ns = meter_time_unit_ns
        self.verify_check = verify_check
        list_fields = [fields.channels] + [getattr(fields, f) for f, _ in CHANNEL_FIELDS]
        self._schema = {fields.version: pl.Int64, fields.seq: pl.Int64, fields.meter_time: pl.Int64,
                        fields.simulated: pl.Int64, fields.channels: pl.List(pl.Int64)}
        self._schema.update({k: pl.List(pl.Float64) for k in list_fields[1:]})

    # -- framing, per line as it arrives
    def check(self, line: bytes) -> tuple[bytes | None, str | None, str | None]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not self.verify_check:
            start = line.rfind(b"{")
            if start < 0:
                return None, "garbage", f"{len(line)} bytes without a payload"
            return line[start:], ("garbage" if start else None), (f"{start} bytes before a line" if start else None)
        n = len(line)
        if n > MAX_LINE_BYTES:
            return None, "garbage", f"{n} bytes without a line end (limit {MAX_LINE_BYTES})"
        star = n - CHECK_DIGITS - 1
        start = line.rfind(b"{", 0, max(star, 0))
        if start < 0 or star < 0 or line[star:star + 1] != CHECK_SEPARATOR:
            return None, "garbage", f"{n} bytes that are not a framed line: {line[:24]!r}"
        payload = line[start:star]
        got = line[star + 1:]
        expected = check_value(payload)
        if got != expected:
            try:
                int(got, 16)
            except ValueError:
                return None, "garbage", f"check value {got!r} is not {CHECK_DIGITS} hex digits"
            return None, "bad_check", f"check value {got.decode()} != CRC-32 {expected.decode()} of the payload"
        if start:
            return payload, "garbage", f"{start} bytes before a line skipped"
        return payload, None, None

    # -- bulk decoding
    def decode(self, payloads: list[bytes]) -> tuple[pl.DataFrame, list[LineIssue]]:
        if not payloads:
            return pl.DataFrame(schema=DECODED_SCHEMA), []
        issues: list[LineIssue] = []
        try:
            raw = pl.read_ndjson(io.BytesIO(b"\n".join(payloads)), schema=self._schema)
            if raw.height != len(payloads):
                raise ValueError("row count differs")
            raw = raw.with_row_index("line")
        except Exception:  # noqa: BLE001 - polars raises several types; isolate the bad lines
            raw, issues = self._decode_each(payloads)
        raw, more = self._check_lines(raw)
        issues += more
        samples, more = self._explode(raw)
        issues += more
        return samples, issues

    def _decode_each(self, payloads: list[bytes]) -> tuple[pl.DataFrame, list[LineIssue]]:
        frames, issues = [], []
        for i, payload in enumerate(payloads):
            try:
                row = pl.read_ndjson(io.BytesIO(payload), schema=self._schema)
                if row.height != 1:
                    raise ValueError(f"{row.height} JSON objects")
            except Exception as exc:  # noqa: BLE001 - reported as an invalid line
                issues.append(LineIssue("invalid", i, f"payload is not a v{FORMAT_VERSION} reading: "
                                        f"{str(exc).splitlines()[0][:120]}"))
                continue
            frames.append(row.with_columns(pl.lit(i, dtype=pl.UInt32).alias("line")))
        if not frames:
            return pl.DataFrame(schema={"line": pl.UInt32, **self._schema}), issues
        return pl.concat(frames).select("line", *self._schema), issues

    def _check_lines(self, raw: pl.DataFrame) -> tuple[pl.DataFrame, list[LineIssue]]:
        f = self.fields
        n_power = pl.col(f.power).list.len()
        problem = pl.when(pl.col(f.version).is_null() | (pl.col(f.version) != FORMAT_VERSION)).then(
            pl.format(f"field '{f.version}' = {{}}: not format version {FORMAT_VERSION}", pl.col(f.version)))
        problem = problem.when(pl.col(f.seq).is_null()).then(pl.lit(f"field '{f.seq}' is missing"))
        problem = problem.when(pl.col(f.seq) < 0).then(pl.format(f"field '{f.seq}' = {{}}: negative", pl.col(f.seq)))
        limit = (2**63 - 1) // self.meter_time_unit_ns
        problem = problem.when((pl.col(f.meter_time) < 0) | (pl.col(f.meter_time) > limit)).then(
            pl.format(f"field '{f.meter_time}' = {{}}: out of range", pl.col(f.meter_time)))
        problem = problem.when(pl.col(f.power).is_null() | (n_power == 0)).then(
            pl.lit(f"field '{f.power}' is missing or empty"))
        problem = problem.when(n_power > MAX_CHANNELS).then(
            pl.format(f"field '{f.power}' has {{}} channels (at most {MAX_CHANNELS})", n_power))
        for key in [f.channels] + [getattr(f, name) for name, _ in CHANNEL_FIELDS[1:]]:
            problem = problem.when(pl.col(key).is_not_null() & (pl.col(key).list.len() != n_power)).then(
                pl.format(f"field '{key}' has {{}} values for {{}} channels", pl.col(key).list.len(), n_power))
        channels = pl.col(f.channels)
        problem = problem.when(channels.is_not_null() & (
            (channels.list.min() < 0) | (channels.list.max() >= MAX_CHANNELS)
            | (channels.list.n_unique() != channels.list.len()))).then(
            pl.format(f"field '{f.channels}' = {{}}: channels must be distinct, 0-{MAX_CHANNELS - 1}",
                      channels.cast(pl.List(pl.Utf8)).list.join(",")))
        checked = raw.with_columns(problem.otherwise(None).alias("_problem"))
        bad = checked.filter(pl.col("_problem").is_not_null())
        issues = [LineIssue("invalid", line, detail) for line, detail in bad.select("line", "_problem").iter_rows()]
        return checked.filter(pl.col("_problem").is_null()).drop("_problem"), issues

    def _explode(self, raw: pl.DataFrame) -> tuple[pl.DataFrame, list[LineIssue]]:
        f = self.fields
        long = raw.with_columns(_idx=pl.int_ranges(0, pl.col(f.power).list.len())).explode("_idx")
        idx = pl.col("_idx")
        columns = [
            pl.col("line"),
            pl.col(f.seq).alias("seq"),
            (pl.col(f.meter_time) * self.meter_time_unit_ns).alias("meter_time_ns"),
            (pl.col(f.simulated).fill_null(0) != 0).alias("simulated"),
            pl.coalesce(pl.col(f.channels).list.get(idx, null_on_oob=True), idx).cast(pl.Int32).alias("channel"),
        ]
        for name, column in CHANNEL_FIELDS:
            columns.append(pl.col(getattr(f, name)).list.get(idx, null_on_oob=True).alias(column))
        samples = long.select(columns)
        bad_value = None
        for column, (low, high) in VALUE_RANGES.items():
            value = pl.col(column)
            wrong = (~value.is_finite()) | (value < low) | (value > high)
            if column == "power_w":
                wrong = value.is_null() | wrong
            else:
                wrong = value.is_not_null() & wrong
            label = pl.format(f"channel {{}} {column} = {{}} (valid {low} to {high})", pl.col("channel"), value.cast(pl.Utf8))
            if column == "power_w":
                label = pl.when(value.is_null()).then(pl.format("channel {} power_w is null", pl.col("channel"))).otherwise(label)
            bad_value = (pl.when(wrong).then(label) if bad_value is None else bad_value.when(wrong).then(label))
        samples = samples.with_columns(bad_value.otherwise(None).alias("_problem"))
        bad = samples.filter(pl.col("_problem").is_not_null())
        issues = [LineIssue("invalid", line, detail) for line, detail in bad.select("line", "_problem").iter_rows()]
        return samples.filter(pl.col("_problem").is_null()).drop("_problem").cast(DECODED_SCHEMA), issues


#: Line decoders by name (``mqepi meter record --decoder``).
DECODERS = {JsonLineDecoder.name: JsonLineDecoder}


def decoder_for(name: str) -> LineDecoder:
    """A new decoder by its name in :data:`DECODERS`; :class:`ProtocolError` naming the known ones."""
    try:
        return DECODERS[name]()
    except KeyError:
        raise ProtocolError(f"unknown decoder {name!r}; known: {', '.join(DECODERS)}") from None
