"""Meter clock -> host clock: an offset-plus-drift fit over a run, and its residual.

Every line is stamped on arrival with the host's UTC clock; the meter also sends its own
clock (``meter_time_ns``). Arrival stamps carry the serial and USB latency jitter; the
meter clock is smooth but runs at its own rate from its own origin. A least-squares line

    host_s = intercept_s + slope * meter_s        (both relative to the first line)

maps meter time onto the host time line. ``meter_drift_ppm = (1 / slope - 1) * 1e6`` is how
much faster the meter clock runs; the residual (arrival stamp minus fitted time) is the
alignment error. MLPerf Power's limit is used as the gate: a window is invalid when a
residual inside it exceeds :data:`MAX_RESIDUAL_MS`.

A meter reset (its sequence number goes down) starts a new *epoch* with its own fit: the
meter clock restarted. The same definitions are in ``analysis/views.sql``
(``power_clock_fit``, ``power_aligned``); tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

#: MLPerf Power: host and analyzer clocks must agree within 400 ms.
MAX_RESIDUAL_MS = 400.0


@dataclass(frozen=True)
class ClockFit:
    """The fit of one meter epoch. ``slope`` is host seconds per meter second."""

    meter_id: str
    epoch: int
    n_lines: int
    meter_origin_ns: int
    host_origin_ns: int
    intercept_s: float
    slope: float
    residual_rms_ms: float
    residual_max_ms: float

    @property
    def meter_drift_ppm(self) -> float:
        """How much faster than the host the meter clock runs, in parts per million."""
        return (1.0 / self.slope - 1.0) * 1e6

    @property
    def ok(self) -> bool:
        return self.residual_max_ms < MAX_RESIDUAL_MS

    def to_host_ns(self, meter_time_ns) -> np.ndarray:
        """Fitted host UTC ns (int64) of meter clock readings."""
        x = (np.asarray(meter_time_ns, dtype=np.int64) - self.meter_origin_ns).astype(np.float64) / 1e9
        return self.host_origin_ns + np.round((self.intercept_s + self.slope * x) * 1e9).astype(np.int64)


def fit_clock(meter_time_ns, host_time_ns, *, meter_id: str = "", epoch: int = 0) -> ClockFit | None:
    """Least-squares fit of host time on meter time (one point per line). None when there
    are fewer than two distinct meter times."""
    meter = np.asarray(meter_time_ns, dtype=np.int64)
    host = np.asarray(host_time_ns, dtype=np.int64)
    if meter.size < 2 or meter.min() == meter.max():
        return None
    m0, h0 = int(meter.min()), int(host.min())
    x = (meter - m0).astype(np.float64) / 1e9
    y = (host - h0).astype(np.float64) / 1e9
    x_mean, y_mean = x.mean(), y.mean()
    slope = float(((x - x_mean) * (y - y_mean)).sum() / ((x - x_mean) ** 2).sum())
    intercept = float(y_mean - slope * x_mean)
    fit = ClockFit(meter_id, epoch, int(meter.size), m0, h0, intercept, slope, 0.0, 0.0)
    residual = (host - fit.to_host_ns(meter)).astype(np.float64) / 1e6
    return ClockFit(meter_id, epoch, int(meter.size), m0, h0, intercept, slope,
                    float(np.sqrt((residual**2).mean())), float(np.abs(residual).max()))


def epochs(seq) -> np.ndarray:
    """Epoch number of each line (in arrival order): +1 after every sequence decrease."""
    seq = np.asarray(seq, dtype=np.int64)
    if seq.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(([0], np.cumsum(np.diff(seq) < 0))).astype(np.int64)


def align(samples: pl.DataFrame) -> tuple[pl.DataFrame, list[ClockFit]]:
    """Add ``epoch``, ``time_ns`` (fitted host time, or the arrival stamp where a meter
    epoch has no clock fit) and ``residual_ns`` to power samples of one run.

    Needs ``meter_id, seq, channel, meter_time_ns, host_time_ns``. Lines are ordered by
    arrival (host time, then seq) per meter; each line counts once in the fit however many
    channels it carries.
    """
    if samples.height == 0:
        return samples.with_columns(epoch=pl.lit(0, pl.Int64), time_ns=pl.col("host_time_ns"),
                                    residual_ns=pl.lit(None, pl.Int64)), []
    ordered = samples.sort(["meter_id", "host_time_ns", "seq", "channel"], maintain_order=True)
    out, fits = [], []
    for (meter_id,), part in ordered.group_by("meter_id", maintain_order=True):
        part = part.with_columns(epoch=pl.Series(epochs(part["seq"].to_numpy())))
        for (epoch,), ep in part.group_by("epoch", maintain_order=True):
            lines = ep.filter(pl.col("meter_time_ns").is_not_null()).unique(
                ["seq", "meter_time_ns", "host_time_ns"], maintain_order=True)
            fit = fit_clock(lines["meter_time_ns"].to_numpy(), lines["host_time_ns"].to_numpy(),
                            meter_id=meter_id, epoch=int(epoch))
            if fit is None:
                ep = ep.with_columns(time_ns=pl.col("host_time_ns"), residual_ns=pl.lit(None, pl.Int64))
            else:
                fits.append(fit)
                has = ep["meter_time_ns"].is_not_null().to_numpy()
                meter = ep["meter_time_ns"].fill_null(0).to_numpy()
                fitted = np.where(has, fit.to_host_ns(meter), ep["host_time_ns"].to_numpy())
                ep = ep.with_columns(time_ns=pl.Series(fitted, dtype=pl.Int64)).with_columns(
                    residual_ns=pl.when(pl.col("meter_time_ns").is_not_null())
                    .then(pl.col("host_time_ns") - pl.col("time_ns")).otherwise(None))
            out.append(ep)
    return pl.concat(out), fits
