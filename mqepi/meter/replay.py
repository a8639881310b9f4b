"""Replay of a recorded power trace (CSV or Parquet, any origin) behind the stream interface.

:func:`read_trace` turns a trace into power-sample columns (:data:`SAMPLE_COLUMNS`);
:class:`ReplaySource` hands it to a sink in batches. Rows are ``power_source = replay``,
except those the trace marks ``simulated``, which stay simulated.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mqepi.meter.stream import SAMPLE_COLUMNS, MeterError, SampleStream

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
    df = _renamed(_load(path), path, columns)
    df = df.with_columns(host_time_ns=_host_time_ns(df, path))
    if rebase_to_ns is not None and df.height:
        df = df.with_columns(host_time_ns=pl.col("host_time_ns") - df["host_time_ns"].min() + rebase_to_ns)
    return _as_samples(_with_defaults(df, meter_id), path)


def _load(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        if path.suffix.lower() in (".csv", ".txt"):
            return pl.read_csv(path, infer_schema_length=10_000)
        raise MeterError(f"trace {path}: suffix {path.suffix!r} is not .csv or .parquet")
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise MeterError(f"cannot read trace {path}: {exc}") from exc


def _renamed(df: pl.DataFrame, path: Path, columns: dict[str, str] | None) -> pl.DataFrame:
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise MeterError(f"trace {path}: no column {missing[0]!r} to rename (columns: {', '.join(df.columns)})")
        df = df.rename(columns)
    if "power_w" not in df.columns:
        raise MeterError(f"trace {path}: no column 'power_w' (columns: {', '.join(df.columns)}; rename with --map)")
    return df


def _host_time_ns(df: pl.DataFrame, path: Path) -> pl.Series:
    """The trace's time column as host UTC ns."""
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
    if host.null_count():
        raise MeterError(f"trace {path}: column {name!r} has {host.null_count()} empty times")
    return host.alias("host_time_ns")


def _with_defaults(df: pl.DataFrame, meter_id: str) -> pl.DataFrame:
    """Channel, meter id, seq, monotonic stamps and power source where the trace has none."""
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
    return df.with_columns(power_source=pl.when(source == "simulated").then(pl.lit("simulated")).otherwise(pl.lit("replay")))


def _as_samples(df: pl.DataFrame, path: Path) -> pl.DataFrame:
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
