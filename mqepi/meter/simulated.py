"""A simulated epi-meter: the real line protocol on a pty, power from real CPU time.

Nothing on a development machine measures power, so this stands in for the board. It
serves the v1 line format (:mod:`mqepi.meter.protocol`) through a pseudo-terminal, so the
reader, the framing, the clock fit and the windows all run exactly as with the board.
Every line carries ``"sim":1``; the reader records its samples as ``simulated``.

**Power model** (:class:`PowerModel`, Pi 5-like, AC side of the supply): each channel is a
node; its busy cores are the CPU seconds per second consumed by the processes assigned to
it (``/proc/<pid>/stat`` utime + stime of each process and its live descendants, over a
trailing ``cpu_window_s``), capped at the node's cores. Then

    dc_w = idle_w + w_per_busy_core * busy_cores
    ac_w = dc_w / psu_efficiency
    reading = round((ac_w + noise) / resolution_w) * resolution_w        (>= 0)

with Gaussian ``noise_w`` (supply ripple and load jitter; it also dithers the 1 W steps
of the ATM90E26 so that averages are unbiased). Voltage, frequency and power factor are
mains-like with small noise; current = power / (voltage x power factor); the energy
counter integrates the true AC power and reports it in the chip's 360 J register steps.

**Faults** (:class:`Faults`): garbage bytes between lines, lines with a wrong check value,
dropped lines (sequence gaps), meter clock drift (ppm) and unplug/replug (the pty is closed
and a new one made after a pause; the stable path is a symlink, like
``/dev/serial/by-id``).
"""

from __future__ import annotations

import errno
import os
import pty
import tempfile
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mqepi.meter.atm90e26 import energy_from_raw
from mqepi.meter.protocol import MAX_CHANNELS, encode_line
from mqepi.meter.stream import POWER_RESOLUTION_W, MeterError, check_rate
from mqepi.rig.processes import descendants

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PowerModel:
    """A Raspberry Pi 5 on its 27 W USB-C supply, seen from the wall (AC side).

    Defaults: about 2.7 W idle and 7.1 W with four busy cores on the DC side (published
    Pi 5 figures), an 80 % efficient supply at these light loads, so 3.4 W to 8.9 W at
    the wall; the simulated source's reading steps (1 W, the ATM90E26 Pmean LSB) and the
    chip's energy register steps (360 J)."""

    idle_w: float = 2.7
    w_per_busy_core: float = 1.1
    cores: int = 4
    psu_efficiency: float = 0.80
    noise_w: float = 0.5
    resolution_w: float = POWER_RESOLUTION_W["simulated"]
    voltage_v: float = 230.0
    voltage_noise_v: float = 0.3
    frequency_hz: float = 50.0
    frequency_noise_hz: float = 0.01
    power_factor_idle: float = 0.55
    power_factor_busy: float = 0.62
    energy_step_j: float = energy_from_raw(1)

    def true_power_w(self, busy_cores: float) -> float:
        """AC power for a number of busy cores (capped at ``cores``), without noise."""
        busy = min(max(busy_cores, 0.0), float(self.cores))
        return (self.idle_w + self.w_per_busy_core * busy) / self.psu_efficiency

    def reading_w(self, true_w: float, rng: np.random.Generator) -> float:
        noisy = true_w + rng.normal(0.0, self.noise_w) if self.noise_w else true_w
        step = self.resolution_w
        return max(0.0, round(noisy / step) * step) if step else max(0.0, noisy)


@dataclass(frozen=True)
class Faults:
    """What to break, as rates per line (0-1) or times in seconds."""

    garbage_rate: float = 0.0
    bad_check_rate: float = 0.0
    drop_rate: float = 0.0
    drift_ppm: float = 0.0
    unplug_every_s: float | None = None
    unplug_for_s: float = 0.5

    def __post_init__(self):
        for name in ("garbage_rate", "bad_check_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise MeterError(f"fault {name} = {value}: must be between 0 and 1")
        if self.unplug_every_s is not None and self.unplug_every_s <= 0:
            raise MeterError(f"fault unplug_every_s = {self.unplug_every_s}: must be > 0")
        if self.unplug_for_s < 0:
            raise MeterError(f"fault unplug_for_s = {self.unplug_for_s}: must be >= 0")


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rpartition(b")")[2].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuLoad:
    """Busy cores of a set of processes (and their descendants) over a trailing window.

    The set is a fixed list of pids, or a callable returning the current list (a node
    whose processes come and go); a callable is asked at most every ``refresh_s``."""

    def __init__(self, pids=(), window_s: float = 0.25, monotonic=time.monotonic, refresh_s: float = 0.5):
        self.window_s = window_s
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._snapshots: deque[tuple[float, dict[int, float]]] = deque()
        self.assign(pids)

    def assign(self, pids) -> None:
        if callable(pids):
            self._provider, self.pids, self._asked = pids, (), None
        else:
            self._provider, self.pids = None, tuple(int(p) for p in pids)
        self._snapshots.clear()

    def _roots(self) -> tuple[int, ...]:
        if self._provider is not None:
            now = self._monotonic()
            if self._asked is None or now - self._asked >= self.refresh_s:
                self.pids, self._asked = tuple(int(p) for p in self._provider()), now
        return self.pids

    def snapshot(self) -> dict[int, float]:
        seconds = {}
        for root in self._roots():
            for pid in [root, *descendants(root)]:
                cpu = process_cpu_seconds(pid)
                if cpu is not None:
                    seconds[pid] = cpu
        return seconds

    def busy_cores(self) -> float:
        now = self._monotonic()
        current = self.snapshot() if (self.pids or self._provider is not None) else {}
        self._snapshots.append((now, current))
        while len(self._snapshots) > 2 and now - self._snapshots[1][0] >= self.window_s:
            self._snapshots.popleft()
        then, old = self._snapshots[0]
        if now - then <= 0:
            return 0.0
        used = sum(cpu - old[pid] for pid, cpu in current.items() if pid in old)
        return max(used, 0.0) / (now - then)


@dataclass
class SimulatorStats:
    lines_generated: int = 0
    lines_written: int = 0
    garbage_chunks: int = 0
    bad_checks: list[int] = field(default_factory=list)  # seq of each corrupted line
    dropped: list[int] = field(default_factory=list)  # seq of each dropped line
    unplugged: list[tuple[int, int]] = field(default_factory=list)  # (first, last) seq lost while unplugged
    overflow: list[int] = field(default_factory=list)  # seq of lines the pty could not take
    unplugs: int = 0


class SimulatedMeter:
    """Serves the epi-meter line protocol on a pty, at ``rate_hz`` lines per second.

    ``channels`` maps channel -> node name; :meth:`assign` gives a channel the pids whose
    CPU time drives its power. ``port`` is a stable path (a symlink to the current pty).
    """

    def __init__(self, channels: dict[int, str] | int = 4, *, rate_hz: float = 50.0, model: PowerModel = PowerModel(),
                 faults: Faults = Faults(), seed: int | None = None, link: str | os.PathLike | None = None,
                 cpu_window_s: float = 0.25, meter_time_offset_us: int = 1_000_000):
        if isinstance(channels, int):
            channels = {c: f"node{c}" for c in range(channels)}
        if not channels or any(not 0 <= c < MAX_CHANNELS for c in channels):
            raise MeterError(f"channels {sorted(channels)} must be 1-{MAX_CHANNELS} numbers between 0 and {MAX_CHANNELS - 1}")
        self.channels = dict(sorted(channels.items()))
        self.rate_hz = check_rate(rate_hz)
        self.model = model
        self.faults = faults
        self.rng = np.random.default_rng(seed)
        self.loads = {c: CpuLoad(window_s=cpu_window_s) for c in self.channels}
        self.stats = SimulatorStats()
        self._own_dir = None
        if link is None:
            self._own_dir = tempfile.mkdtemp(prefix="mqepi-sim-")
            link = os.path.join(self._own_dir, "epi-meter")
        self.port = str(link)
        self._master: int | None = None
        self._slave: int | None = None
        self._seq = 0
        self._energy_j = {c: 0.0 for c in self.channels}
        self._meter_offset_us = meter_time_offset_us
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.last_true_w: dict[int, float] = {c: 0.0 for c in self.channels}

    # -- control
    def assign(self, channel: int, pids) -> None:
        """Drive ``channel``'s power by the CPU time of ``pids`` (and their children); ``pids``
        may be a callable returning the node's current processes."""
        if channel not in self.loads:
            raise MeterError(f"channel {channel} is not one of {sorted(self.loads)}")
        with self._lock:
            self.loads[channel].assign(pids)

    def start(self) -> SimulatedMeter:
        self._plug()
        self._thread = threading.Thread(target=self._run, name="SimulatedMeter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> SimulatorStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._unplug()
        if self._own_dir is not None:
            try:
                os.rmdir(self._own_dir)
            except OSError:
                pass
        if self._error is not None:
            raise self._error
        return self.stats

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait(self, timeout: float | None = None) -> None:
        """Block until stopped (or ``timeout``)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the pty
    def _plug(self) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes as a UART would carry them
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        name = os.ttyname(slave)
        tmp = f"{self.port}.tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)
        os.replace(tmp, self.port)

    def _unplug(self) -> None:
        if os.path.lexists(self.port):
            os.unlink(self.port)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    # -- the loop
    def _meter_time_us(self, mono: float) -> int:
        elapsed = mono - self._t0
        return int(elapsed * (1.0 + self.faults.drift_ppm * 1e-6) * 1e6) + self._meter_offset_us

    def _run(self) -> None:
        try:
            period = 1.0 / self.rate_hz
            self._t0 = time.monotonic()
            next_t = self._t0
            last = self._t0
            next_unplug = self._t0 + self.faults.unplug_every_s if self.faults.unplug_every_s else None
            while not self._stop.is_set():
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    if self._stop.is_set():
                        break
                now = time.monotonic()
                if next_unplug is not None and now >= next_unplug:
                    self._unplug_for(self.faults.unplug_for_s)
                    next_unplug = time.monotonic() + self.faults.unplug_every_s
                    now = time.monotonic()
                    next_t = now
                self._emit(now, now - last)
                last = now
        except BaseException as exc:  # noqa: BLE001 - raised again by stop()
            self._error = exc

    def _unplug_for(self, seconds: float) -> None:
        self.stats.unplugs += 1
        self._unplug()
        first = self._seq
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self._stop.is_set():
            # the meter keeps measuring while its cable is out: those lines are lost
            self._stop.wait(min(1.0 / self.rate_hz, max(end - time.monotonic(), 0)))
            self._emit(time.monotonic(), 1.0 / self.rate_hz, send=False)
        if self._seq > first:
            self.stats.unplugged.append((first, self._seq - 1))
        if not self._stop.is_set():
            self._plug()

    def _reading(self, dt_s: float) -> dict:
        m, rng = self.model, self.rng
        power, volts, amps, pfs, freqs, energy = [], [], [], [], [], []
        with self._lock:
            busy = {c: load.busy_cores() for c, load in self.loads.items()}
        for c in self.channels:
            true_w = m.true_power_w(busy[c])
            self.last_true_w[c] = true_w
            self._energy_j[c] += true_w * dt_s
            reading = m.reading_w(true_w, rng)
            v = round(m.voltage_v + rng.normal(0.0, m.voltage_noise_v), 2)
            pf = round(m.power_factor_idle + (m.power_factor_busy - m.power_factor_idle) * min(busy[c], m.cores) / m.cores, 3)
            power.append(int(reading) if float(reading).is_integer() else reading)
            volts.append(v)
            pfs.append(pf)
            amps.append(round(reading / (v * pf), 3) if reading else 0.0)
            freqs.append(round(m.frequency_hz + rng.normal(0.0, m.frequency_noise_hz), 2))
            step = m.energy_step_j
            energy.append(int(self._energy_j[c] // step * step) if step else self._energy_j[c])
        return {"power_w": power, "voltage_v": volts, "current_a": amps, "power_factor": pfs,
                "frequency_hz": freqs, "energy_j": energy}

    def _emit(self, mono: float, dt_s: float, send: bool = True) -> None:
        seq = self._seq
        self._seq += 1
        self.stats.lines_generated += 1
        reading = self._reading(dt_s)
        if not send:
            return
        f, rng = self.faults, self.rng
        if f.drop_rate and rng.random() < f.drop_rate:
            self.stats.dropped.append(seq)
            return
        line = encode_line(seq, channels=list(self.channels), meter_time_us=self._meter_time_us(mono),
                           simulated=True, **reading)
        if f.bad_check_rate and rng.random() < f.bad_check_rate:
            # flip one payload digit after the check value was computed
            i = line.index(b'"p":[') + 5
            line = line[:i] + (b"8" if line[i:i + 1] != b"8" else b"7") + line[i + 1:]
            self.stats.bad_checks.append(seq)
        if f.garbage_rate and rng.random() < f.garbage_rate:
            n = int(rng.integers(1, 40))
            junk = bytes(rng.integers(0, 256, n, dtype=np.uint8))
            if rng.random() < 0.5:
                junk += b"\n"  # a garbage line of its own, else a prefix of the next line
            line = junk + line
            self.stats.garbage_chunks += 1
        if self._write(line):
            self.stats.lines_written += 1
        else:
            self.stats.overflow.append(seq)

    def _write(self, data: bytes) -> bool:
        if self._master is None:
            return False
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADF):
                return False
            raise
        deadline = time.monotonic() + 0.05
        while written < len(data) and time.monotonic() < deadline:
            try:
                written += os.write(self._master, data[written:])
            except BlockingIOError:
                time.sleep(0.001)
        return written == len(data)
