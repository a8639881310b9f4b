"""Meter clock -> host clock: the offset + drift fit recovers what was injected."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from factories import T0

from mqepi.meter.clock import MAX_RESIDUAL_MS, align, epochs, fit_clock


def meter_and_host(drift_ppm: float, offset_s: float, seconds: float = 600.0, rate_hz: float = 10.0, jitter_ms=None,
                   seed: int = 0):
    """Host arrival times of lines sent every 1/rate_hz s of host time; the meter clock runs
    drift_ppm fast from its own origin."""
    rng = np.random.default_rng(seed)
    true_s = np.arange(0, seconds, 1 / rate_hz)
    meter_ns = np.round((offset_s + true_s * (1 + drift_ppm * 1e-6)) * 1e9).astype(np.int64)
    host_ns = T0 + np.round(true_s * 1e9).astype(np.int64)
    if jitter_ms is not None:
        host_ns = host_ns + (rng.uniform(0, jitter_ms, true_s.size) * 1e6).astype(np.int64)
    return meter_ns, host_ns


@pytest.mark.parametrize("drift_ppm", [-80.0, 0.0, 35.0, 5000.0])
def test_fit_recovers_an_injected_drift_exactly_without_jitter(drift_ppm):
    meter, host = meter_and_host(drift_ppm, offset_s=12.5)
    fit = fit_clock(meter, host)
    assert fit.meter_drift_ppm == pytest.approx(drift_ppm, abs=1e-3)
    assert fit.residual_max_ms < 1e-5
    # the fitted host time of each meter reading is the arrival time
    assert np.abs(fit.to_host_ns(meter) - host).max() <= 2


def test_fit_with_arrival_jitter_reports_it_as_residual():
    meter, host = meter_and_host(120.0, offset_s=3.0, jitter_ms=4.0, seed=3)
    fit = fit_clock(meter, host)
    assert fit.meter_drift_ppm == pytest.approx(120.0, abs=2.0)  # 4 ms jitter over 10 minutes
    assert 1.0 < fit.residual_rms_ms < 2.5  # uniform 0-4 ms: 1.15 ms around its mean
    assert fit.residual_max_ms < 2.5 and fit.ok


def test_a_late_burst_of_lines_shows_as_residual_over_the_limit():
    meter, host = meter_and_host(0.0, offset_s=0.0, seconds=60)
    host = host.copy()
    host[300:310] += 900_000_000  # ten lines stuck 0.9 s in a buffer
    fit = fit_clock(meter, host)
    assert fit.residual_max_ms > MAX_RESIDUAL_MS and not fit.ok


def test_fit_needs_two_distinct_meter_times():
    assert fit_clock([5, 5, 5], [T0, T0 + 1, T0 + 2]) is None
    assert fit_clock([5], [T0]) is None


def test_epochs_start_at_each_sequence_decrease():
    assert epochs([0, 1, 1, 2, 0, 1, 5, 3]).tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert epochs([]).tolist() == []


def test_align_fits_each_meter_epoch_on_its_own():
    m1, h1 = meter_and_host(200.0, offset_s=100.0, seconds=30)
    m2, h2 = meter_and_host(-50.0, offset_s=0.5, seconds=30)  # after a reset: new origin and rate
    h2 = h2 + 40 * 10**9
    n1, n2 = m1.size, m2.size
    frame = pl.DataFrame({
        "meter_id": ["m"] * (n1 + n2) + ["host-only"] * 3,
        "seq": list(range(n1)) + list(range(n2)) + [0, 1, 2],
        "channel": [0] * (n1 + n2 + 3),
        "meter_time_ns": list(m1) + list(m2) + [None] * 3,
        "host_time_ns": list(h1) + list(h2) + [T0, T0 + 10, T0 + 20],
    }, schema_overrides={"meter_time_ns": pl.Int64})
    aligned, fits = align(frame)
    assert [(f.meter_id, f.epoch) for f in fits] == [("m", 0), ("m", 1)]
    assert fits[0].meter_drift_ppm == pytest.approx(200.0, abs=1e-3)
    assert fits[1].meter_drift_ppm == pytest.approx(-50.0, abs=1e-3)
    m = aligned.filter(pl.col("meter_id") == "m")
    assert (m["time_ns"] - m["host_time_ns"]).abs().max() <= 2
    host_only = aligned.filter(pl.col("meter_id") == "host-only")
    assert host_only["time_ns"].to_list() == host_only["host_time_ns"].to_list()
    assert host_only["residual_ns"].null_count() == 3
