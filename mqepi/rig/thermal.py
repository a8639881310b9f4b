"""Thermal state of the nodes: ``thermal_sample`` events and a stabilisation policy.

Probes (small interface, :class:`ThermalProbe`):

* :class:`SysfsProbe` reads the local ``/sys/class/thermal/thermal_zone*/temp``
  (millidegrees) and, where ``vcgencmd`` exists (a Raspberry Pi), its throttle flags.
* :class:`CommandProbe` runs the same two reads as one shell command through an
  :class:`~mqepi.rig.executor.Executor` (a node over SSH, or this machine).

Throttle flags are ``vcgencmd get_throttled``'s bits: 0 under-voltage, 1 arm frequency
capped, 2 throttled, 3 soft temperature limit (now); 16-19 the same "has occurred since
boot". A reading is ``throttled`` when any "now" bit is set.

Stabilisation (:func:`wait_until_stable`): at least ``min_duration_s`` (60 s), then every
sensor's temperature slope over the trailing ``trailing_s`` below
``max_slope_c_per_min``, and no throttling in that period; past ``timeout_s`` it fails the
run with :class:`ThermalNotStable` saying what was not met.

Reading a measured node costs energy on that node, so :class:`ThermalSampler` pauses while
a measurement window is open (``poll_during_windows=False``, the default), reading once
just before the window and once just after.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from mqepi.errors import MqepiError
from mqepi.rig.executor import Executor

THERMAL_ROOT = "/sys/class/thermal"
#: vcgencmd get_throttled bits.
THROTTLE_BITS = {
    0: "under-voltage now",
    1: "arm frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage occurred",
    17: "arm frequency capping occurred",
    18: "throttling occurred",
    19: "soft temperature limit occurred",
}
THROTTLED_NOW_MASK = 0xF
#: A constant: no value is formatted into it.
REMOTE_COMMAND = ("cat /sys/class/thermal/thermal_zone0/temp; "
                  "(vcgencmd get_throttled 2>/dev/null || echo throttled=none)")


class ThermalError(MqepiError):
    """A thermal probe could not be read."""


class ThermalNotStable(MqepiError):
    """The nodes did not reach a stable thermal state in time. Fails the run."""


@dataclass(frozen=True)
class ThermalReading:
    node: str
    sensor: str
    host_time_ns: int
    temperature_c: float
    throttled: bool
    throttle_flags: int | None


def parse_throttled(text: str) -> int | None:
    """``throttled=0x50005`` -> 0x50005; None when the tool is absent (``throttled=none``)."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|none)", text)
    if not m:
        raise ThermalError(f"cannot read throttle flags from {text.strip()[:80]!r}")
    return None if m.group(1) == "none" else int(m.group(1), 16)


def describe_flags(flags: int | None) -> str:
    if not flags:
        return "none"
    return ", ".join(name for bit, name in THROTTLE_BITS.items() if flags >> bit & 1) or f"0x{flags:x}"


def _millidegrees(text: str, where: str) -> float:
    try:
        value = int(text.strip()) / 1000.0
    except ValueError:
        raise ThermalError(f"{where}: temperature {text.strip()[:40]!r} is not millidegrees") from None
    if not -60 <= value <= 150:
        raise ThermalError(f"{where}: temperature {value} C is outside -60..150 C")
    return value


class ThermalProbe(ABC):
    """Reads the temperatures (and throttle state) of one node."""

    node: str

    @abstractmethod
    def read(self) -> list[ThermalReading]:
        """One reading per sensor, stamped with host UTC ns."""


class SysfsProbe(ThermalProbe):
    """The local machine's thermal zones (and vcgencmd where it exists)."""

    def __init__(self, node: str | None = None, root: str = THERMAL_ROOT, vcgencmd: str | None = None):
        self.node = node or socket.gethostname()
        self.root = root
        self.vcgencmd = vcgencmd if vcgencmd is not None else shutil.which("vcgencmd")
        self.zones = sorted(glob.glob(os.path.join(root, "thermal_zone*")))

    @classmethod
    def available(cls, root: str = THERMAL_ROOT) -> bool:
        return bool(glob.glob(os.path.join(root, "thermal_zone*", "temp")))

    def read(self) -> list[ThermalReading]:
        if not self.zones:
            raise ThermalError(f"no thermal zones under {self.root} on {self.node}")
        flags = None
        if self.vcgencmd:
            out = subprocess.run([self.vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5)
            flags = parse_throttled(out.stdout)
        now = time.time_ns()
        readings = []
        for zone in self.zones:
            try:
                text = open(os.path.join(zone, "temp")).read()
                kind = open(os.path.join(zone, "type")).read().strip() if os.path.exists(os.path.join(zone, "type")) else ""
            except OSError as exc:
                raise ThermalError(f"cannot read {zone}: {exc}") from exc
            sensor = kind or os.path.basename(zone)
            readings.append(ThermalReading(self.node, sensor[:128], now, _millidegrees(text, zone),
                                           bool(flags and flags & THROTTLED_NOW_MASK), flags))
        return readings


class CommandProbe(ThermalProbe):
    """A node read by one command through its executor (e.g. SSH): the temperature file, then
    ``vcgencmd get_throttled``. ``command`` is a constant shell line (the default) or an
    argument list; never a line formatted from values (see :func:`mqepi.rig.executor.shell_join`)."""

    def __init__(self, node: str, executor: Executor, sensor: str = "cpu-thermal", command: str | Sequence = REMOTE_COMMAND,
                 timeout_s: float = 30.0):
        self.node, self.executor, self.sensor, self.command, self.timeout_s = node, executor, sensor, command, timeout_s

    def read(self) -> list[ThermalReading]:
        out = self.executor.run(self.command, timeout=self.timeout_s, check=True).text
        lines = [line for line in out.splitlines() if line.strip()]
        if len(lines) < 2:
            raise ThermalError(f"{self.node}: expected a temperature and a throttle line, got {out.strip()[:80]!r}")
        flags = parse_throttled(lines[1])
        return [ThermalReading(self.node, self.sensor, time.time_ns(), _millidegrees(lines[0], self.node),
                               bool(flags and flags & THROTTLED_NOW_MASK), flags)]


def readings_frame(readings: list[ThermalReading]) -> pl.DataFrame:
    """Thermal readings as the thermal_sample event's own columns."""
    return pl.DataFrame({
        "node": [r.node for r in readings], "sensor": [r.sensor for r in readings],
        "host_time_ns": [r.host_time_ns for r in readings], "temperature_c": [r.temperature_c for r in readings],
        "throttled": [r.throttled for r in readings], "throttle_flags": [r.throttle_flags for r in readings],
    }, schema={"node": pl.Utf8, "sensor": pl.Utf8, "host_time_ns": pl.Int64, "temperature_c": pl.Float64,
               "throttled": pl.Boolean, "throttle_flags": pl.Int64})


# --------------------------------------------------------------------------- stabilisation


@dataclass(frozen=True)
class StabilisationPolicy:
    """When the nodes count as thermally stable."""

    min_duration_s: float = 60.0
    trailing_s: float = 30.0
    max_slope_c_per_min: float = 0.5
    poll_interval_s: float = 2.0
    timeout_s: float = 900.0


@dataclass(frozen=True)
class SensorState:
    node: str
    sensor: str
    temperature_c: float
    slope_c_per_min: float | None
    throttled: bool
    throttle_flags: int | None


@dataclass(frozen=True)
class StabilisationResult:
    elapsed_s: float
    readings: int
    sensors: tuple[SensorState, ...]


def slope_c_per_min(times_s, temps_c) -> float | None:
    """Least-squares slope of temperature over time, in C per minute."""
    t = np.asarray(times_s, dtype=np.float64)
    y = np.asarray(temps_c, dtype=np.float64)
    if t.size < 3 or t.max() - t.min() <= 0:
        return None
    t = t - t.mean()
    return float((t * (y - y.mean())).sum() / (t * t).sum() * 60.0)


def assess(history: list[tuple[float, ThermalReading]], now_s: float,
           policy: StabilisationPolicy) -> tuple[bool, list[SensorState], list[str]]:
    """Whether ``history`` ((monotonic s, reading) pairs) is stable now, and why not."""
    states, problems = [], []
    by_sensor: dict[tuple[str, str], list[tuple[float, ThermalReading]]] = {}
    for t, r in history:
        if t >= now_s - policy.trailing_s:
            by_sensor.setdefault((r.node, r.sensor), []).append((t, r))
    if not by_sensor:
        return False, [], ["no readings in the trailing period"]
    for (node, sensor), items in sorted(by_sensor.items()):
        times = [t for t, _ in items]
        slope = slope_c_per_min(times, [r.temperature_c for _, r in items])
        last = items[-1][1]
        throttled = any(r.throttled for _, r in items)
        states.append(SensorState(node, sensor, last.temperature_c, slope, throttled, last.throttle_flags))
        if slope is None or max(times) - min(times) < 0.8 * policy.trailing_s:
            problems.append(f"{node}/{sensor}: not enough readings over the last {policy.trailing_s:g} s")
        elif abs(slope) > policy.max_slope_c_per_min:
            problems.append(f"{node}/{sensor}: {slope:+.2f} C/min (limit {policy.max_slope_c_per_min:g})")
        if throttled:
            problems.append(f"{node}/{sensor}: throttled ({describe_flags(last.throttle_flags)})")
    return not problems, states, problems


def wait_until_stable(probes: list[ThermalProbe], policy: StabilisationPolicy = StabilisationPolicy(), *,
                      on_readings: Callable[[list[ThermalReading]], None] | None = None,
                      monotonic: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> StabilisationResult:
    """Poll ``probes`` until the policy is met; :class:`ThermalNotStable` after
    ``timeout_s``. ``on_readings`` receives each poll's readings (e.g. to record them)."""
    if not probes:
        raise ThermalError("no thermal probes to wait on")
    start = monotonic()
    history: list[tuple[float, ThermalReading]] = []
    count = 0
    while True:
        now = monotonic()
        readings = [r for probe in probes for r in probe.read()]
        count += len(readings)
        if on_readings is not None:
            on_readings(readings)
        history.extend((now - start, r) for r in readings)
        history = [(t, r) for t, r in history if t >= now - start - policy.trailing_s]
        elapsed = now - start
        stable, states, problems = assess(history, elapsed, policy)
        if stable and elapsed >= policy.min_duration_s:
            return StabilisationResult(elapsed, count, tuple(states))
        if elapsed >= policy.timeout_s:
            raise ThermalNotStable(f"thermal state not stable after {elapsed:.0f} s (timeout {policy.timeout_s:g} s): "
                                   + "; ".join(problems or [f"minimum {policy.min_duration_s:g} s not reached"]))
        sleep(policy.poll_interval_s)


# --------------------------------------------------------------------------- sampling to the lake


class ThermalSampler:
    """Polls probes every ``interval_s`` in a thread and records ``thermal_sample`` events
    to the lake; pauses while measurement windows are open unless ``poll_during_windows``."""

    def __init__(self, probes: list[ThermalProbe], lake, run, *, interval_s: float = 5.0,
                 poll_during_windows: bool = False):
        self.probes, self.lake, self.run = probes, lake, run
        self.interval_s = interval_s
        self.poll_during_windows = poll_during_windows
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._gate = threading.Lock()
        self.recorded = 0

    def sample_once(self) -> list[ThermalReading]:
        """Read every probe now and record the readings."""
        readings = [r for probe in self.probes for r in probe.read()]
        if readings:
            frame = readings_frame(readings)
            with self._lock:
                self.lake.record("thermal_sample", frame.with_columns(**self.run.columns(frame.height)))
                self.recorded += frame.height
        return readings

    def window_opening(self) -> None:
        """Called just before a window starts: one reading, then pause if so configured."""
        with self._gate:
            self.sample_once()
            if not self.poll_during_windows:
                self._paused.set()

    def window_closed(self, any_open: bool = False) -> None:
        """Called just after a window ends: one reading, resume when no window is open."""
        with self._gate:
            self.sample_once()
            if not any_open:
                self._paused.clear()

    def start(self) -> ThermalSampler:
        def loop():
            try:
                while not self._stop.wait(self.interval_s):
                    with self._gate:  # never mid-reading when a window opens
                        if not self._paused.is_set():
                            self.sample_once()
            except BaseException as exc:  # noqa: BLE001 - raised again by stop()
                self._error = exc

        self._thread = threading.Thread(target=loop, name="ThermalSampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._error is not None:
            raise self._error
