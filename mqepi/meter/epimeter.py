"""The epi-meter reader: lines from any pyserial port or URL into ``power_sample`` events.

``/dev/ttyACM0``, a pty, ``socket://host:port``, ``loop://`` ... (anything
``serial.serial_for_url`` opens), or an already open port object with ``read``.

* **Stamps**: each line gets the host UTC and monotonic clocks when its line end is read
  (strictly increasing per line: see :class:`mqepi.meter.stream.HostClock`).
* **Framing and resynchronisation**: a line is checked when it arrives (check value, framing);
  bytes before a payload's ``{`` are skipped as garbage, an over-long partial line is
  dropped, and reading goes on at the next line end.
* **Sequence**: a jump in ``seq`` is a gap (the lines in between were lost), an equal
  ``seq`` a duplicate (dropped), a decrease a meter reset. All are incidents.
* **Reconnects**: a port error closes the port; it is reopened with exponential backoff
  (``backoff_initial_s`` doubling to ``backoff_max_s``) until the stream is stopped.
* **Batches**: lines are decoded in bulk and appended to the lake at least every
  ``flush_interval_s`` (and every ``max_rows`` samples), so a crash loses at most that
  much and memory stays bounded however long the run. A failed lake write stops the
  reader and is raised by :meth:`~mqepi.meter.stream.SampleStream.stop`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mqepi.meter.protocol import BAUDRATE, MAX_LINE_BYTES, JsonLineDecoder, LineDecoder
from mqepi.meter.stream import SAMPLE_COLUMNS, HostClock, MeterError, SampleStream, open_port, port_or_url

#: Port read timeout: how often the loop looks at its stop flag and flush clock.
READ_TIMEOUT_S = 0.05
#: Largest single read.
READ_MAX_BYTES = 1 << 16
POWER_SOURCES_READ = ("epi-meter", "simulated", "replay")


class MeterReader(SampleStream):
    """Reads the epi-meter line protocol from a port into a sink (usually a lake).

    ``nodes`` maps channel -> node name. ``power_source`` is ``epi-meter`` for the board;
    lines that say they come from a simulator (``"sim":1``) are always recorded as
    ``simulated``.
    """

    def __init__(self, port, sink, *, meter_id: str = "epi-meter-0", power_source: str = "epi-meter",
                 nodes: dict[int, str] | None = None, decoder: LineDecoder | None = None, baudrate: int = BAUDRATE,
                 flush_interval_s: float = 1.0, max_rows: int = 50_000, backoff_initial_s: float = 0.05,
                 backoff_max_s: float = 2.0, clock: HostClock | None = None, reconnect: bool = True):
        super().__init__(sink, flush_interval_s=flush_interval_s, max_rows=max_rows)
        if power_source not in POWER_SOURCES_READ:
            raise MeterError(f"power_source {power_source!r} is not one of {', '.join(POWER_SOURCES_READ)}")
        if not meter_id or len(meter_id) > 128:
            raise MeterError(f"meter_id {meter_id!r} must be 1-128 characters")
        self.url, self._port = port_or_url(port)
        self.meter_id = meter_id
        self.power_source = power_source
        self.nodes = dict(nodes or {})
        self.decoder = decoder or JsonLineDecoder()
        self.baudrate = baudrate
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.reconnect = reconnect and self.url is not None
        self.clock = clock or HostClock()
        self._buffer = b""
        self._discarding = False
        self._payloads: list[bytes] = []
        self._host_ns: list[int] = []
        self._mono_ns: list[int] = []
        self._last_seq: int | None = None
        self.bytes_read = 0
        self.lines = 0
        self.lines_ok = 0
        self.samples = 0
        self.missing_lines = 0
        self.disconnects = 0
        self.reconnects = 0
        self._connected_once = False
        self._channels_per_line = 4  # estimate for max_rows, updated as lines are decoded

    # -- port
    def _open(self) -> None:
        if self._port is None:
            self._connect()

    def _connect(self) -> None:
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                self._port = open_port(self.url, self.baudrate, READ_TIMEOUT_S)
            except MeterError as exc:
                if not self.reconnect:
                    raise
                if not self._connected_once and self.disconnects == 0:
                    # the first open of a port that never worked: say so once, keep trying
                    self._incident("open_failed", self.clock.stamp()[0], str(exc))
                    self.disconnects += 1
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            if self._connected_once:
                self.reconnects += 1
                self._incident("reconnect", self.clock.stamp()[0], f"reopened {self.url}")
            self._connected_once = True
            self._buffer, self._discarding = b"", False
            return

    def _close(self) -> None:
        if self._port is not None and self.url is not None:
            try:
                self._port.close()
            except Exception:  # noqa: BLE001 - closing a port that is already gone
                pass
            self._port = None

    def _step(self) -> None:
        if self._port is None:
            self._connect()
            if self._port is None:
                return
        try:
            waiting = getattr(self._port, "in_waiting", 0) or 0
            data = self._port.read(max(1, min(waiting, READ_MAX_BYTES)))
        except Exception as exc:  # noqa: BLE001 - SerialException, OSError: the port is gone
            self.disconnects += 1
            self._incident("disconnect", self.clock.stamp()[0], f"{type(exc).__name__}: {exc}")
            self.flush()
            self._close()
            if not self.reconnect:
                raise MeterError(f"meter port failed: {exc}") from exc
            return
        if data:
            self.feed(data)

    # -- bytes in
    def feed(self, data: bytes) -> None:
        """Take bytes as they arrived from the port (public for in-memory streams)."""
        host, mono = self.clock.stamp()
        self.bytes_read += len(data)
        buffer = self._buffer + data if self._buffer else data
        parts = buffer.split(b"\n")
        self._buffer = parts.pop()
        check = self.decoder.check
        with self._lock:
            for i, line in enumerate(parts):
                if self._discarding:  # the tail of an over-long line
                    self._discarding = False
                    self._incident("garbage", host, f"{len(line)} more bytes of an over-long line dropped")
                    continue
                if not line:
                    continue
                self.lines += 1
                payload, kind, detail = check(line)
                if kind is not None:
                    self._incident(kind, host, detail)
                if payload is not None:
                    self._payloads.append(payload)
                    if i:
                        host, mono = self.clock.stamp()
                    self._host_ns.append(host)
                    self._mono_ns.append(mono)
            latest = self._host_ns[-1] if self._host_ns else 0
            self._buffered_rows = len(self._payloads) * self._channels_per_line
        if len(self._buffer) > MAX_LINE_BYTES:
            self._incident("garbage", host, f"{len(self._buffer)} bytes without a line end dropped")
            self._buffer, self._discarding = b"", True
        if latest:
            self._seen(latest)

    # -- decoding at flush time
    def _drain(self) -> pl.DataFrame | None:
        if not self._payloads:
            return None
        payloads, host, mono = self._payloads, self._host_ns, self._mono_ns
        self._payloads, self._host_ns, self._mono_ns = [], [], []
        self._buffered_rows = 0
        decoded, issues = self.decoder.decode(payloads)
        host_arr = np.asarray(host, dtype=np.int64)
        for issue in issues:
            self._incident(issue.kind, int(host_arr[issue.line]), issue.detail)
        if decoded.height == 0:
            return None
        keep_lines = self._sequence(decoded, host_arr)
        if keep_lines is not None:
            decoded = decoded.filter(pl.col("line").is_in(keep_lines))
        line_idx = decoded["line"].to_numpy()
        n_lines = int(np.unique(line_idx).size)
        self.lines_ok += n_lines
        self._channels_per_line = max(1, decoded.height // max(n_lines, 1))
        source = pl.lit(self.power_source) if self.power_source == "simulated" else (
            pl.when(pl.col("simulated")).then(pl.lit("simulated")).otherwise(pl.lit(self.power_source)))
        node = (pl.col("channel").replace_strict(self.nodes, default=None, return_dtype=pl.Utf8)
                if self.nodes else pl.lit(None, dtype=pl.Utf8))
        frame = decoded.with_columns(
            power_source=source,
            meter_id=pl.lit(self.meter_id),
            node=node,
            host_time_ns=pl.Series(host_arr[line_idx]),
            host_monotonic_ns=pl.Series(np.asarray(mono, dtype=np.int64)[line_idx]),
        ).select([pl.col(c).cast(t) for c, t in SAMPLE_COLUMNS.items()])
        self.samples += frame.height
        return frame

    def _sequence(self, decoded: pl.DataFrame, host: np.ndarray) -> list[int] | None:
        """Gaps, duplicates and resets from the line sequence numbers; returns the lines to
        keep (None: all)."""
        lines = decoded.select("line", "seq").unique("line", maintain_order=True)
        line_ids = lines["line"].to_numpy()
        seqs = lines["seq"].to_numpy()
        previous = np.concatenate(([self._last_seq if self._last_seq is not None else seqs[0] - 1], seqs[:-1]))
        step = seqs - previous
        self._last_seq = int(seqs[-1])
        if np.all(step == 1):
            return None
        drop = []
        for k in np.flatnonzero(step != 1):
            at = int(host[line_ids[k]])
            if step[k] > 1:
                missing = int(step[k] - 1)
                self.missing_lines += missing
                self._incident("gap", at, f"{missing} lines missing", int(previous[k] + 1), int(seqs[k] - 1))
            elif step[k] == 0:
                drop.append(int(line_ids[k]))
                self._incident("duplicate", at, f"line {int(seqs[k])} again", int(seqs[k]), int(seqs[k]))
            else:
                self._incident("meter_reset", at, f"sequence went from {int(previous[k])} to {int(seqs[k])}",
                               int(seqs[k]), int(seqs[k]))
        if not drop:
            return None
        dropped = set(drop)
        return [int(x) for x in line_ids if int(x) not in dropped]

    def summary(self) -> dict:
        """Counters for people and logs."""
        return {"meter_id": self.meter_id, "bytes": self.bytes_read, "lines": self.lines, "lines_ok": self.lines_ok,
                "samples": self.samples, "rows_flushed": self.rows_flushed, "flushes": self.flushes,
                "missing_lines": self.missing_lines, "disconnects": self.disconnects, "reconnects": self.reconnects,
                **{f"incidents_{k}": v for k, v in sorted(self.incident_counts.items())}}
