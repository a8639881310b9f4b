"""Power sources besides the epi-meter line reader, behind the same stream interface
(:class:`mqepi.meter.core.SampleStream`: ``run`` / ``start`` / ``stop`` / ``flush`` /
``wait_past``, batches to a sink):

* :class:`Atm90e26Source` reads one ATM90E26 chip directly over its UART register protocol.
* :class:`ReplaySource` replays a recorded trace (CSV or Parquet, any origin).
* :class:`NvmlSource` polls NVIDIA GPUs through NVML (the ``pynvml`` package if installed,
  else ``libnvidia-ml.so.1`` through ctypes); :class:`SourceUnavailable` where neither
  exists or no GPU is present.
"""

from __future__ import annotations

import ctypes
import socket
import time
from pathlib import Path

import polars as pl

from mqepi.meter.epimeter import open_port
from mqepi.meter.protocol import (
    DEFAULT_IMP_PER_KWH,
    Register,
    decode_read_response,
    encode_read_request,
    energy_from_raw,
    freq_from_raw,
    irms_from_raw,
    pmean_from_raw,
    power_factor_from_raw,
    urms_from_raw,
)
from mqepi.meter.stream import SAMPLE_COLUMNS, HostClock, MeterError, ProtocolError, SampleStream, SourceUnavailable


def _row(**values) -> pl.DataFrame:
    return pl.DataFrame({c: [values.get(c)] for c in SAMPLE_COLUMNS}, schema=SAMPLE_COLUMNS)


class _Polled(SampleStream):
    """A source that takes one reading every ``1 / rate_hz`` seconds."""

    def __init__(self, sink, *, rate_hz: float, flush_interval_s: float = 1.0, clock: HostClock | None = None):
        super().__init__(sink, flush_interval_s=flush_interval_s)
        if not 0 < rate_hz <= 1000:
            raise MeterError(f"rate_hz {rate_hz} must be in (0, 1000]")
        self.period_s = 1.0 / rate_hz
        self.clock = clock or HostClock()
        self.seq = 0
        self._next = None

    def _step(self) -> None:
        now = time.monotonic()
        if self._next is None:
            self._next = now
        if now < self._next:
            self._stop.wait(self._next - now)
            return
        self._next += self.period_s
        seq = self.seq
        self.seq += 1
        frame = self._poll(seq)
        if frame is not None:
            self._add(frame)

    def _poll(self, seq: int) -> pl.DataFrame | None:
        raise NotImplementedError


class Atm90e26Source(_Polled):
    """One ATM90E26 read over its own UART (2400 or 9600 baud), polled at ``rate_hz``.

    Each poll reads Urms, Irms, Pmean (+ the LSB register for the fine bits when
    ``fine_power``), Freq, PowerF and APenergy (cleared on read, so accumulated here into
    ``energy_counter_j``). A bad checksum or a missing answer loses that poll (an incident;
    its ``seq`` is skipped, so windows see the gap). Each register read costs 6 bytes on the
    wire: at 9600 baud a poll of 7 registers takes about 45 ms.
    """

    power_source = "atm90e26"

    def __init__(self, port, sink, *, channel: int = 0, node: str | None = None, meter_id: str = "atm90e26-0",
                 power_source: str = "atm90e26", rate_hz: float = 5.0, baudrate: int = 9600,
                 imp_per_kwh: int = DEFAULT_IMP_PER_KWH, fine_power: bool = True, answer_timeout_s: float = 0.2,
                 flush_interval_s: float = 1.0):
        super().__init__(sink, rate_hz=rate_hz, flush_interval_s=flush_interval_s)
        if power_source not in ("atm90e26", "simulated"):
            raise MeterError(f"power_source {power_source!r} must be atm90e26 (or simulated for an emulated chip)")
        self.url = port if isinstance(port, str) else None
        self._port = None if isinstance(port, str) else port
        self.channel, self.node, self.meter_id, self.power_source = channel, node, meter_id, power_source
        self.baudrate, self.imp_per_kwh, self.fine_power = baudrate, imp_per_kwh, fine_power
        self.answer_timeout_s = answer_timeout_s
        self.energy_j = 0.0
        self.failed_polls = 0

    def _open(self) -> None:
        if self._port is None:
            self._port = open_port(self.url, self.baudrate, timeout=self.answer_timeout_s)

    def _close(self) -> None:
        if self._port is not None and self.url is not None:
            self._port.close()
            self._port = None

    def read_register(self, address: int) -> int:
        """One register read transaction; :class:`ProtocolError` on a bad or missing answer."""
        self._port.write(encode_read_request(address))
        answer = self._port.read(3)
        return decode_read_response(answer, address)

    def _poll(self, seq: int) -> pl.DataFrame | None:
        try:
            volts = urms_from_raw(self.read_register(Register.URMS))
            amps = irms_from_raw(self.read_register(Register.IRMS))
            pmean = self.read_register(Register.PMEAN)
            lsb = self.read_register(Register.LSB) if self.fine_power else None
            watts = pmean_from_raw(pmean, lsb)
            hz = freq_from_raw(self.read_register(Register.FREQ))
            pf = power_factor_from_raw(self.read_register(Register.POWER_F))
            self.energy_j += energy_from_raw(self.read_register(Register.AP_ENERGY), self.imp_per_kwh)
        except ProtocolError as exc:
            self.failed_polls += 1
            self._incident("bad_check" if "checksum" in str(exc) else "no_answer", self.clock.stamp()[0], str(exc),
                           seq, seq)
            try:
                self._port.reset_input_buffer()
            except Exception:  # noqa: BLE001 - a port object without the method
                pass
            return None
        host, mono = self.clock.stamp()
        if watts < 0:
            self._incident("invalid", host, f"Pmean {watts} W is negative (current transformer reversed?)", seq, seq)
            return None
        return _row(power_source=self.power_source, meter_id=self.meter_id, channel=self.channel, node=self.node,
                    seq=seq, meter_time_ns=None, host_time_ns=host, host_monotonic_ns=mono, power_w=watts,
                    voltage_v=volts, current_a=amps, power_factor=pf, frequency_hz=hz, energy_counter_j=self.energy_j)


# --------------------------------------------------------------------------- replay

#: Accepted time columns of a trace, in order of preference, and their unit in ns.
REPLAY_TIME_COLUMNS = (("host_time_ns", 1), ("time_ns", 1), ("timestamp_ns", 1), ("time_s", 1e9),
                       ("timestamp_s", 1e9), ("timestamp", None))


def read_trace(path: str | Path, *, columns: dict[str, str] | None = None, meter_id: str = "replay",
               rebase_to_ns: int | None = None) -> pl.DataFrame:
    """A recorded power trace as power-sample columns (:data:`SAMPLE_COLUMNS`).

    CSV or Parquet (by suffix). ``columns`` renames trace columns to ours first
    (``{"watts": "power_w"}``). Needs ``power_w`` and one time column: ``host_time_ns``,
    ``time_ns``, ``timestamp_ns`` (UTC ns), ``time_s``/``timestamp_s`` (UTC s) or
    ``timestamp`` (ISO 8601 text or a datetime). Optional: ``channel`` (0), ``node``,
    ``meter_id``, ``seq`` (row order per channel), ``meter_time_ns``, ``voltage_v``,
    ``current_a``, ``power_factor``, ``frequency_hz``, ``energy_counter_j``,
    ``power_source`` (rows marked ``simulated`` stay simulated; all others become
    ``replay``). ``rebase_to_ns`` shifts the trace to start at that host time.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            df = pl.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            df = pl.read_csv(path, infer_schema_length=10_000)
        else:
            raise MeterError(f"trace {path}: suffix {path.suffix!r} is not .csv or .parquet")
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise MeterError(f"cannot read trace {path}: {exc}") from exc
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise MeterError(f"trace {path}: no column {missing[0]!r} to rename (columns: {', '.join(df.columns)})")
        df = df.rename(columns)
    if "power_w" not in df.columns:
        raise MeterError(f"trace {path}: no column 'power_w' (columns: {', '.join(df.columns)}; rename with --map)")
    time_col = next(((c, unit) for c, unit in REPLAY_TIME_COLUMNS if c in df.columns), None)
    if time_col is None:
        raise MeterError(f"trace {path}: no time column; need one of {', '.join(c for c, _ in REPLAY_TIME_COLUMNS)}")
    name, unit = time_col
    if unit is None:
        ts = df[name]
        if ts.dtype == pl.Utf8:
            try:
                ts = ts.str.to_datetime(time_zone="UTC")
            except pl.exceptions.PolarsError as exc:
                raise MeterError(f"trace {path}: column 'timestamp' is not ISO 8601 time: {exc}") from exc
        if not isinstance(ts.dtype, pl.Datetime):
            raise MeterError(f"trace {path}: column 'timestamp' has type {ts.dtype}, not a time")
        host = ts.dt.replace_time_zone(None).dt.epoch("ns") if ts.dtype.time_zone else ts.dt.epoch("ns")
    else:
        if not df[name].dtype.is_numeric():
            raise MeterError(f"trace {path}: column {name!r} has type {df[name].dtype}, not a number")
        host = (df[name].cast(pl.Float64) * unit).round().cast(pl.Int64) if unit != 1 else df[name].cast(pl.Int64)
    df = df.with_columns(host_time_ns=host)
    if df["host_time_ns"].null_count():
        raise MeterError(f"trace {path}: column {name!r} has {df['host_time_ns'].null_count()} empty times")
    if rebase_to_ns is not None and df.height:
        df = df.with_columns(host_time_ns=pl.col("host_time_ns") - df["host_time_ns"].min() + rebase_to_ns)
    if "channel" not in df.columns:
        df = df.with_columns(channel=pl.lit(0))
    if "meter_id" not in df.columns:
        df = df.with_columns(meter_id=pl.lit(meter_id))
    df = df.sort(["meter_id", "channel", "host_time_ns"], maintain_order=True)
    if "seq" not in df.columns:
        df = df.with_columns(seq=pl.int_range(0, pl.len()).over(["meter_id", "channel"]))
    if "host_monotonic_ns" not in df.columns:
        df = df.with_columns(host_monotonic_ns=pl.col("host_time_ns") - pl.col("host_time_ns").min())
    source = pl.col("power_source") if "power_source" in df.columns else pl.lit(None, pl.Utf8)
    df = df.with_columns(power_source=pl.when(source == "simulated").then(pl.lit("simulated")).otherwise(pl.lit("replay")))
    for column, dtype in SAMPLE_COLUMNS.items():
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, dtype).alias(column))
    try:
        return df.select([pl.col(c).cast(t, strict=True) for c, t in SAMPLE_COLUMNS.items()])
    except pl.exceptions.PolarsError as exc:
        raise MeterError(f"trace {path}: {str(exc).splitlines()[0]}") from exc


class ReplaySource(SampleStream):
    """Replays a trace into a sink in batches; stops when the trace is exhausted."""

    def __init__(self, path, sink, *, columns: dict[str, str] | None = None, meter_id: str = "replay",
                 rebase_to_ns: int | None = None, batch_rows: int = 50_000):
        super().__init__(sink, max_rows=batch_rows)
        self.trace = read_trace(path, columns=columns, meter_id=meter_id, rebase_to_ns=rebase_to_ns)
        self._offset = 0
        self.batch_rows = batch_rows

    def _step(self) -> None:
        if self._offset >= self.trace.height:
            self.request_stop()
            return
        self._add(self.trace.slice(self._offset, self.batch_rows))
        self._offset += self.batch_rows


# --------------------------------------------------------------------------- NVML

NVML_LIBRARY = "libnvidia-ml.so.1"


class _CtypesNvml:
    """The few NVML calls needed, through ctypes (no Python package needed)."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL(NVML_LIBRARY)
        except OSError as exc:
            raise SourceUnavailable(f"NVML is not available here: no pynvml package and no {NVML_LIBRARY} "
                                    f"(no NVIDIA driver on this host) ({exc})") from None
        self.lib.nvmlErrorString.restype = ctypes.c_char_p
        self._call("nvmlInit_v2")

    def _call(self, name, *args):
        code = getattr(self.lib, name)(*args)
        if code != 0:
            raise SourceUnavailable(f"NVML {name} failed: {self.lib.nvmlErrorString(code).decode()} (code {code})")

    def count(self) -> int:
        n = ctypes.c_uint()
        self._call("nvmlDeviceGetCount_v2", ctypes.byref(n))
        return n.value

    def handle(self, index: int):
        h = ctypes.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(h))
        return h

    def name(self, handle) -> str:
        buf = ctypes.create_string_buffer(96)
        self._call("nvmlDeviceGetName", handle, buf, ctypes.c_uint(96))
        return buf.value.decode()

    def power_mw(self, handle) -> int:
        mw = ctypes.c_uint()
        self._call("nvmlDeviceGetPowerUsage", handle, ctypes.byref(mw))
        return mw.value

    def energy_mj(self, handle) -> int | None:
        mj = ctypes.c_ulonglong()
        try:
            self._call("nvmlDeviceGetTotalEnergyConsumption", handle, ctypes.byref(mj))
        except SourceUnavailable:
            return None  # pre-Volta GPUs have no energy counter
        return mj.value

    def shutdown(self) -> None:
        self.lib.nvmlShutdown()


class _PynvmlNvml:
    def __init__(self, pynvml):
        self.m = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise SourceUnavailable(f"NVML init failed: {exc} (no NVIDIA driver or GPU on this host)") from None

    def count(self) -> int:
        return self.m.nvmlDeviceGetCount()

    def handle(self, index: int):
        return self.m.nvmlDeviceGetHandleByIndex(index)

    def name(self, handle) -> str:
        name = self.m.nvmlDeviceGetName(handle)
        return name.decode() if isinstance(name, bytes) else name

    def power_mw(self, handle) -> int:
        return self.m.nvmlDeviceGetPowerUsage(handle)

    def energy_mj(self, handle) -> int | None:
        try:
            return self.m.nvmlDeviceGetTotalEnergyConsumption(handle)
        except self.m.NVMLError:
            return None

    def shutdown(self) -> None:
        self.m.nvmlShutdown()


def nvml() -> _CtypesNvml | _PynvmlNvml:
    """An initialised NVML binding, or :class:`SourceUnavailable` saying why not."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return _CtypesNvml()
    return _PynvmlNvml(pynvml)


class NvmlSource(_Polled):
    """GPU board power from NVML: one channel per GPU index, ``power_source = nvml``.
    ``energy_counter_j`` is NVML's total energy counter (mJ since driver load) where the
    GPU has one."""

    power_source = "nvml"

    def __init__(self, sink, *, devices: list[int] | None = None, rate_hz: float = 10.0, node: str | None = None,
                 meter_id: str | None = None, flush_interval_s: float = 1.0):
        super().__init__(sink, rate_hz=rate_hz, flush_interval_s=flush_interval_s)
        self.nvml = nvml()
        count = self.nvml.count()
        if count == 0:
            self.nvml.shutdown()
            raise SourceUnavailable("NVML found no GPU on this host")
        self.devices = list(range(count)) if devices is None else list(devices)
        bad = [d for d in self.devices if not 0 <= d < count]
        if bad:
            raise MeterError(f"GPU index {bad[0]} does not exist (this host has {count})")
        self.handles = {d: self.nvml.handle(d) for d in self.devices}
        self.names = {d: self.nvml.name(h) for d, h in self.handles.items()}
        self.node = node or socket.gethostname()
        self.meter_id = meter_id or f"nvml-{self.node}"[:128]

    def _close(self) -> None:
        self.nvml.shutdown()

    def _poll(self, seq: int) -> pl.DataFrame:
        rows = []
        for d, h in self.handles.items():
            mw = self.nvml.power_mw(h)
            mj = self.nvml.energy_mj(h)
            host, mono = self.clock.stamp()
            rows.append(_row(power_source="nvml", meter_id=self.meter_id, channel=d, node=self.node, seq=seq,
                             meter_time_ns=None, host_time_ns=host, host_monotonic_ns=mono, power_w=mw / 1000.0,
                             energy_counter_j=None if mj is None else mj / 1000.0))
        return pl.concat(rows)
