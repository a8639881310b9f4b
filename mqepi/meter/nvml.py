"""NVIDIA GPU board power from NVML behind the stream interface.

:func:`nvml` binds NVML through the ``pynvml`` package if installed, else
``libnvidia-ml.so.1`` through ctypes; :class:`SourceUnavailable` where neither exists or no
GPU is present. :class:`NvmlSource` polls it, one channel per GPU index.
"""

from __future__ import annotations

import ctypes
import socket

import polars as pl

from mqepi.meter.stream import MeterError, PolledStream, SourceUnavailable, sample_row

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
    """The same calls through the ``pynvml`` package."""

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
        import pynvml  # type: ignore[import-not-found]  # optional: only on GPU hosts; ctypes otherwise
    except ImportError:
        return _CtypesNvml()
    return _PynvmlNvml(pynvml)


class NvmlSource(PolledStream):
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
            rows.append(sample_row(power_source=self.power_source, meter_id=self.meter_id, channel=d, node=self.node, seq=seq,
                                   meter_time_ns=None, host_time_ns=host, host_monotonic_ns=mono, power_w=mw / 1000.0,
                                   energy_counter_j=None if mj is None else mj / 1000.0))
        return pl.concat(rows)
