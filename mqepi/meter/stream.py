"""What every meter module shares: the run a stream belongs to, the exceptions, arrival
stamps, each power source's resolution and accuracy, the serial port, the stream plumbing of
every power source (:class:`SampleStream`, :class:`PolledStream`) and the simple sink that
appends power samples to the lake (:class:`LakeSink`; the spooling one is
:class:`mqepi.meter.spool.SpoolSink`)."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

import polars as pl
import serial

from mqepi.errors import MqepiError
from mqepi.schemas import COMMON_COLUMNS, EVENT_TYPES
from mqepi.schemas.events import SLUG

#: The lake's slug rule for model, config and run ids.
_SLUG = re.compile(SLUG)

#: Power resolution (W per reading step) by power source: the ATM90E26 Pmean LSB is 1 W (the
#: epi-meter board is made of those chips, the simulated meter models it); NVML reports
#: milliwatts; a replayed trace is assumed as coarse as the chip.
POWER_RESOLUTION_W = {"epi-meter": 1.0, "atm90e26": 1.0, "simulated": 1.0, "nvml": 0.001, "replay": 1.0}
#: Relative accuracy (one standard uncertainty) of a power reading by source: the
#: ATM90E26 is an accuracy class 1 device; NVML documents +-5 %.
POWER_ACCURACY_REL = {"epi-meter": 0.01, "atm90e26": 0.01, "simulated": 0.01, "nvml": 0.05, "replay": 0.01}
#: The fastest reading rate a polled source or the simulated meter accepts.
MAX_RATE_HZ = 1000


class MeterError(MqepiError):
    """A meter, its port or a measurement could not do what was asked."""


class ProtocolError(MeterError):
    """Bytes that do not follow the protocol (frame, checksum, field); names the value."""


class SourceUnavailable(MeterError):
    """A power source cannot run on this host (no GPU, no NVML library, no sensor)."""


@dataclass(frozen=True)
class RunKey:
    """The lake partition a stream of samples belongs to."""

    model: str
    config_id: str
    run_id: str

    def __post_init__(self) -> None:
        for name in ("model", "config_id", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _SLUG.fullmatch(value):
                raise MeterError(f"{name} {value!r} is not a slug ({SLUG[1:-1]})")

    def columns(self, n: int) -> dict[str, pl.Series]:
        """The three partition columns for ``n`` rows."""
        return {
            "model": pl.repeat(self.model, n, eager=True, dtype=pl.Utf8),
            "config_id": pl.repeat(self.config_id, n, eager=True, dtype=pl.Utf8),
            "run_id": pl.repeat(self.run_id, n, eager=True, dtype=pl.Utf8),
        }


class LakeSink:
    """Appends batches of one sample event type to a lake through ``Lake.record``: one lake
    commit per write (the simple path; :class:`mqepi.meter.spool.SpoolSink` spools writes
    locally and commits every few seconds).

    A sink is what a stream hands its frames to: ``write(frame)``, and optionally
    ``commit()`` (make everything written so far visible in the lake; a window end calls it)
    and ``close(commit=...)`` (the stream's end). A failed write raises
    (:class:`mqepi.errors.LakeError` or :class:`mqepi.errors.EventValidationError`) and so
    fails whoever flushes: nothing is swallowed.
    """

    def __init__(self, lake, run: RunKey, event_type: str = "power_sample"):
        self.lake, self.run, self.event_type = lake, run, event_type
        self.rows_written = 0
        self.batches_written = 0

    def write(self, frame: pl.DataFrame) -> None:
        """Append ``frame`` (plus the run's partition columns) to the lake, one commit."""
        if frame.height == 0:
            return
        rows = frame.with_columns(**self.run.columns(frame.height))
        result = self.lake.record(self.event_type, rows)
        self.rows_written += result.rows_written
        self.batches_written += 1

    def commit(self) -> int:
        """Nothing to do: every write is already a lake commit. Returns 0."""
        return 0

    def close(self, *, commit: bool = True) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- stream plumbing

#: The columns a source produces: power_sample's own columns, in schema order (derived from
#: the event schema, so the two cannot drift apart).
SAMPLE_COLUMNS = {
    name: dtype
    for name, dtype in EVENT_TYPES["power_sample"].polars_schema.items()
    if name not in COMMON_COLUMNS and name not in ("model", "config_id")
}


class HostClock:
    """Arrival stamps: host UTC and monotonic ns, each strictly increasing across calls (a
    UTC step backwards is held at the last stamp + 1 ns and counted), so that arrival order
    is recoverable from the stamps alone."""

    def __init__(self, utc=time.time_ns, monotonic=time.monotonic_ns):
        self._utc, self._monotonic = utc, monotonic
        self.last_utc = 0
        self.last_monotonic = -1
        self.steps_back = 0

    def stamp(self) -> tuple[int, int]:
        utc, mono = self._utc(), self._monotonic()
        if utc <= self.last_utc:
            if utc < self.last_utc:
                self.steps_back += 1
            utc = self.last_utc + 1
        mono = max(mono, self.last_monotonic + 1)
        self.last_utc, self.last_monotonic = utc, mono
        return utc, mono


def check_rate(rate_hz: float) -> float:
    """A reading rate in (0, :data:`MAX_RATE_HZ`] Hz, else :class:`MeterError` naming it."""
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise MeterError(f"rate_hz {rate_hz} must be in (0, {MAX_RATE_HZ}]")
    return rate_hz


def open_port(url: str, baudrate: int, timeout: float):
    """Open a serial port by path or pyserial URL; a clear :class:`MeterError` otherwise."""
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise MeterError(f"cannot open meter port {url!r}: {exc}") from exc


def port_or_url(port) -> tuple[str | None, object | None]:
    """``(url, None)`` for a path or pyserial URL that a stream opens and closes itself;
    ``(None, port)`` for an open port object (anything with ``read``) that its caller owns."""
    return (port, None) if isinstance(port, str) else (None, port)


def sample_row(**values) -> pl.DataFrame:
    """One row of :data:`SAMPLE_COLUMNS` (columns not given are null)."""
    return pl.DataFrame({c: [values.get(c)] for c in SAMPLE_COLUMNS}, schema=SAMPLE_COLUMNS)


@dataclass
class Incident:
    """Something a source noticed: a gap, a bad line, a disconnect, a reset ..."""

    kind: str
    host_time_ns: int
    detail: str
    seq_from: int | None = None
    seq_to: int | None = None


class SampleStream:
    """What every power source shares: runs in the foreground or a thread, buffers frames
    of :data:`SAMPLE_COLUMNS`, hands them to its sink at least every ``flush_interval_s``
    (and whenever ``max_rows`` are buffered), so memory stays bounded and a crash loses at
    most one interval. An error in the loop (a failed lake write included) stops the
    stream and is raised again by :meth:`stop` / :meth:`join`.

    Subclasses implement :meth:`_step` (one unit of work, calling :meth:`_add`), and may
    override :meth:`_drain` (turn buffered raw input into one frame), :meth:`_open` and
    :meth:`_close`.
    """

    def __init__(self, sink, *, flush_interval_s: float = 1.0, max_rows: int = 50_000,
                 max_incidents: int = 10_000, max_pending: int = 2, monotonic=time.monotonic):
        if flush_interval_s <= 0:
            raise MeterError(f"flush_interval_s must be > 0, not {flush_interval_s}")
        self.sink = sink
        self.flush_interval_s = flush_interval_s
        self.max_rows = max_rows
        self.incidents: deque[Incident] = deque(maxlen=max_incidents)
        self.incident_counts: dict[str, int] = {}
        self.rows_flushed = 0
        self.flushes = 0
        self._frames: list[pl.DataFrame] = []
        self._buffered_rows = 0
        self._lock = threading.RLock()
        self._latest = threading.Condition()
        self.latest_host_time_ns = 0
        self._monotonic = monotonic
        self._last_flush = monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._incident_log = None
        self._writes: queue.Queue = queue.Queue(maxsize=max_pending)
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None

    # -- hooks
    def _open(self) -> None:  # pragma: no cover - default: nothing to open
        pass

    def _close(self) -> None:  # pragma: no cover - default: nothing to close
        pass

    def _step(self) -> None:
        raise NotImplementedError

    def _drain(self) -> pl.DataFrame | None:
        if not self._frames:
            return None
        frame = pl.concat(self._frames, how="vertical")
        self._frames, self._buffered_rows = [], 0
        return frame

    # -- buffering
    def _add(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        with self._lock:
            self._frames.append(frame)
            self._buffered_rows += frame.height
        self._seen(int(frame["host_time_ns"].max()))

    def _seen(self, host_time_ns: int) -> None:
        with self._latest:
            if host_time_ns > self.latest_host_time_ns:
                self.latest_host_time_ns = host_time_ns
                self._latest.notify_all()

    def _incident(self, kind: str, host_time_ns: int, detail: str, seq_from=None, seq_to=None) -> None:
        incident = Incident(kind, host_time_ns, detail, seq_from, seq_to)
        self.incidents.append(incident)
        self.incident_counts[kind] = self.incident_counts.get(kind, 0) + 1
        if self._incident_log is not None:
            self._incident_log.write(json.dumps(incident.__dict__) + "\n")

    def log_incidents_to(self, path) -> None:
        """Also append every incident as a JSON line to ``path`` (line-buffered)."""
        self._incident_log = open(path, "a", buffering=1, encoding="utf-8")

    def flush(self, wait: bool = True) -> int:
        """Hand everything buffered to the sink; returns the rows handed over. With
        ``wait`` (the default) return only when they are written (raising a write error);
        the stream's own periodic flushes do not wait: a writer thread appends to the lake
        while reading and stamping go on, so lake latency never delays arrival stamps."""
        with self._lock:
            frame = self._drain()
            self._last_flush = self._monotonic()
        self._raise_write_error()
        if frame is not None and frame.height:
            self._writes.put(frame)  # blocks when the writer is max_pending batches behind
            self._ensure_writer()
        if wait:
            self._writes.join()
            self._raise_write_error()
        return 0 if frame is None else frame.height

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_loop, name=f"{type(self).__name__}-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            frame = self._writes.get()
            try:
                if frame is None:
                    return
                if self._write_error is None:
                    self.sink.write(frame)
                    self.rows_flushed += frame.height
                    self.flushes += 1
            except BaseException as exc:  # noqa: BLE001 - raised again in the reading thread
                self._write_error = exc
            finally:
                self._writes.task_done()

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            raise self._write_error

    def _flush_if_due(self) -> None:
        if self._buffered_rows >= self.max_rows or self._monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush(wait=False)

    def wait_past(self, host_time_ns: int, timeout_s: float = 5.0) -> bool:
        """Wait until a sample stamped after ``host_time_ns`` has arrived; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._latest:
            while self.latest_host_time_ns <= host_time_ns:
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None or (self._thread is not None and not self._thread.is_alive()):
                    return False
                self._latest.wait(min(left, 0.05))
            return True

    # -- running
    def run(self, *, duration_s: float | None = None) -> SampleStream:
        """Run in the calling thread until :meth:`request_stop` or ``duration_s``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            self._open()
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                self._step()
                self._flush_if_due()
            self.flush(wait=True)
        except BaseException as exc:
            self._shut_down(exc)
            raise
        self._shut_down(None)
        return self

    def _shut_down(self, error: BaseException | None) -> None:
        """Close the port, the writer thread and the incident log, then the sink, which
        commits what it holds. After ``error``, a failed commit is added to that error as a
        note rather than replacing it (a spooling sink keeps the samples for replay)."""
        try:
            self._close()
            if self._writer is not None and self._writer.is_alive():
                self._writes.put(None)
                self._writer.join()
            if self._incident_log is not None:
                self._incident_log.close()
                self._incident_log = None
        finally:
            self._close_sink(error)

    def _close_sink(self, error: BaseException | None) -> None:
        close = getattr(self.sink, "close", None)
        if close is None:
            return
        if error is None:
            close(commit=True)
            return
        try:
            close(commit=True)
        except Exception as exc:  # noqa: BLE001 - noted on the error being raised
            error.add_note(f"closing the sink failed too: {type(exc).__name__}: {exc}")

    def commit(self) -> int:
        """Flush and wait, then have the sink commit what it holds, so that every sample
        that has arrived is in the lake when this returns (a window end calls it). Returns
        the rows the sink committed (0 for a sink whose every write is a lake commit)."""
        self.flush(wait=True)
        commit = getattr(self.sink, "commit", None)
        return commit() if commit is not None else 0

    def start(self) -> SampleStream:
        """Run in a background thread."""
        if self._thread is not None:
            raise MeterError("this source was already started")

        def target():
            try:
                self.run()
            except BaseException as exc:  # noqa: BLE001 - kept and raised again by stop()/join()
                self._error = exc
                with self._latest:
                    self._latest.notify_all()

        self._thread = threading.Thread(target=target, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float | None = 30.0) -> SampleStream:
        """Stop, flush what is buffered, and raise the loop's error if it had one."""
        self.request_stop()
        self.join(timeout)
        return self

    @property
    def error(self) -> BaseException | None:
        return self._error

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class PolledStream(SampleStream):
    """A source that takes one reading every ``1 / rate_hz`` seconds: subclasses implement
    :meth:`_poll` (one reading as a frame, or None when it was lost)."""

    def __init__(self, sink, *, rate_hz: float, flush_interval_s: float = 1.0, clock: HostClock | None = None):
        super().__init__(sink, flush_interval_s=flush_interval_s)
        self.period_s = 1.0 / check_rate(rate_hz)
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
