"""Energy per window: exact integrals of synthetic traces, coverage, gates, idle baseline,
J/token, and the SQL views against the Python computation on the same lake."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from factories import T0, rows_for

from mqepi.meter import MeterError, RunKey
from mqepi.meter.clock import align
from mqepi.meter.windows import Gates, analyze_run, channel_energy, integrate, record_window
from mqepi.results import sql

MS = 1_000_000
S = 1_000_000_000


def rel(a, b):
    return abs(a - b) / abs(b)


# --------------------------------------------------------------------------- exact integrals


def test_constant_trace_integrates_exactly():
    t = T0 + np.arange(0, 10 * S, 20 * MS)
    p = np.full(t.size, 5.0)
    start, end = T0 + 1_013_000_017, T0 + 7_777_000_003  # edges inside segments
    got = integrate(t, p, start, end)
    assert rel(got.energy_j, 5.0 * (end - start) / 1e9) < 1e-9
    assert rel(got.covered_s, (end - start) / 1e9) < 1e-12


def test_ramp_integrates_exactly_with_edges_inside_segments():
    a, b = 3.0, 0.37  # W, W/s
    t = T0 + np.arange(0, 20 * S, 20 * MS) + 7
    p = a + b * (t - T0) / 1e9
    s, e = 2.345_678_901, 17.654_321_987
    got = integrate(t, p, T0 + round(s * 1e9), T0 + round(e * 1e9))
    s, e = round(s * 1e9) / 1e9, round(e * 1e9) / 1e9
    expected = a * (e - s) + b / 2 * (e * e - s * s)
    assert rel(got.energy_j, expected) < 1e-9


def test_square_wave_with_vertical_edges_integrates_exactly():
    # 1 s period, 8 W for the first 0.4 s, 3 W for the rest; each edge is two samples at the
    # same time (the reading jumps), samples every 50 ms in between
    times, powers = [], []
    for k in range(10):
        base = k * S
        for off in range(0, 1000, 50):
            high = off < 400
            if off == 0:
                times += [base, base]
                powers += [3.0, 8.0]
            elif off == 400:
                times += [base + 400 * MS, base + 400 * MS]
                powers += [8.0, 3.0]
            else:
                times.append(base + off * MS)
                powers.append(8.0 if high else 3.0)
    t = T0 + np.array(times)
    p = np.array(powers)
    s, e = 0.25, 7.6  # from inside a high stretch to inside a low one

    def square_integral(x):
        whole, frac = divmod(x, 1.0)
        return whole * (0.4 * 8 + 0.6 * 3) + (8 * frac if frac <= 0.4 else 0.4 * 8 + 3 * (frac - 0.4))

    got = integrate(t, p, T0 + int(s * S), T0 + int(e * S))
    assert rel(got.energy_j, square_integral(e) - square_integral(s)) < 1e-9


def test_square_wave_sampled_without_edges_integrates_exactly_over_whole_periods():
    t = T0 + np.arange(0, 12 * S, 100 * MS)
    p = np.where(((t - T0) // (500 * MS)) % 2 == 0, 9.0, 4.0)  # 1 s period, 50 % duty
    got = integrate(t, p, T0 + 2 * S, T0 + 10 * S)
    assert rel(got.energy_j, 8 * (9.0 + 4.0) / 2) < 1e-9


def test_window_beyond_the_samples_holds_the_edge_readings_and_counts_as_gap():
    t = T0 + np.arange(2 * S, 4 * S + 1, 100 * MS)
    p = np.full(t.size, 6.0)
    got = integrate(t, p, T0 + 1 * S, T0 + 5 * S)
    assert rel(got.energy_j, 24.0) < 1e-12
    assert rel(got.covered_s, 2.0) < 1e-12  # only 2-4 s had samples
    assert got.n_samples == t.size


def test_coverage_counts_one_period_per_lost_line():
    t = T0 + np.arange(0, 10 * S, 20 * MS)
    keep = np.ones(t.size, bool)
    keep[5::10] = False  # every 10th line lost: each costs one 20 ms period
    got = integrate(t[keep], np.full(keep.sum(), 4.0), T0, T0 + t.size * 20 * MS - 20 * MS)
    lost = (~keep[1:-1]).sum()
    assert rel(got.covered_s, (t.size - 1) * 0.02 - lost * 0.02) < 1e-9


def test_integrate_rejects_unsorted_or_empty_input():
    with pytest.raises(MeterError, match="sorted"):
        integrate([3, 2, 1], [1, 1, 1], 0, 5)
    with pytest.raises(MeterError, match="without samples"):
        integrate([], [], 0, 5)


def channel_frame(t, p, residual=None, node="node0", source="simulated"):
    n = len(t)
    return pl.DataFrame({"meter_id": ["m"] * n, "channel": [0] * n, "node": [node] * n, "power_source": [source] * n,
                         "time_ns": t, "power_w": p,
                         "residual_ns": residual if residual is not None else [None] * n},
                        schema_overrides={"residual_ns": pl.Int64, "time_ns": pl.Int64})


def test_gates_flag_each_failure_by_name():
    t = T0 + np.arange(0, 10 * S, 20 * MS)
    good = channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + S, T0 + 9 * S)
    assert good.valid and good.coverage == pytest.approx(1.0) and good.samples_needed == 53

    gappy = np.concatenate([t[t < T0 + 3 * S], t[t > T0 + 5 * S]])
    low = channel_energy(channel_frame(gappy, np.full(gappy.size, 4.0)), T0 + S, T0 + 9 * S)
    assert not low.valid and low.invalid_reasons[0].startswith("coverage 0.74")

    residual = np.zeros(t.size, np.int64)
    residual[200] = 450 * MS
    late = channel_energy(channel_frame(t, np.full(t.size, 4.0), residual), T0 + S, T0 + 9 * S)
    assert late.invalid_reasons == ("clock residual 450.0 ms >= 400.0 ms",)

    thermal = pl.DataFrame({"node": ["node0", "node1"], "host_time_ns": [T0 + 5 * S, T0 + 5 * S],
                            "throttled": [True, False], "throttle_flags": [0x4, 0]})
    hot = channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + S, T0 + 9 * S, thermal=thermal)
    assert hot.invalid_reasons == ("throttled",) and hot.thermal_samples == 1
    # throttled just after the window: not this window's problem
    later = thermal.with_columns(host_time_ns=pl.lit(T0 + 9 * S + 5))
    assert channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + S, T0 + 9 * S, thermal=later).valid
    # the "occurred" bit appeared between the readings bracketing the window
    sticky = pl.DataFrame({"node": ["node0"] * 2, "host_time_ns": [T0 + S - 5, T0 + 9 * S + 5],
                           "throttled": [False, False], "throttle_flags": [0, 0x40000]})
    assert channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + S, T0 + 9 * S, thermal=sticky).throttled
    assert channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + 10 * S, T0 + 11 * S,
                          thermal=sticky).throttled is False

    short = channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + S, T0 + S + 300 * MS)
    assert short.invalid_reasons == ("samples 15 < 53 needed",)
    assert channel_energy(channel_frame(t, np.full(t.size, 4.0)), T0 + S, T0 + S + 300 * MS,
                          gates=Gates(target_uncertainty_rel=0.05)).valid


def test_uncertainty_combines_accuracy_resolution_and_sampling():
    t = T0 + np.arange(0, 10 * S + 1, 1 * S)
    p = np.array([4.0, 6.0] * 5 + [4.0])  # a zig-zag: trapezoid and hold differ
    ce = channel_energy(channel_frame(t, p), T0, T0 + 10 * S)
    assert ce.energy_j == pytest.approx(50.0)
    assert ce.sampling_error_j == pytest.approx(abs(50.0 - 50.0))  # hold of the zig-zag gives the same
    n = 10
    expected = math.sqrt((0.01 * 50.0) ** 2 + (1.0 / math.sqrt(12) * 10 / math.sqrt(n)) ** 2)
    assert ce.energy_uncertainty_j == pytest.approx(expected)
    ramp = channel_energy(channel_frame(t, np.linspace(2.0, 12.0, t.size)), T0, T0 + 10 * S)
    assert ramp.sampling_error_j == pytest.approx(abs(70.0 - 65.0))


# --------------------------------------------------------------------------- a synthetic run in a lake

RUN = "r-win"
KEY = {"model": "smollm2-135m", "config_id": "uniform_q4km", "run_id": RUN}


def power_rows(rng):
    """Two channels at 50 Hz for 30 s, a meter clock 250 ppm fast with 1-3 ms arrival
    jitter, busy square wave on node0, a ramp on node1, lines lost 20-22 s, a meter reset
    at 25 s."""
    rows = {k: [] for k in ("seq", "meter_time_ns", "host_time_ns", "host_monotonic_ns", "channel", "node",
                            "power_w", "voltage_v")}
    host = T0
    seq = 0
    reset_at = 25 * S
    for k in range(1500):
        true_t = k * 20 * MS
        if 20 * S <= true_t < 22 * S:
            seq += 1
            continue
        if true_t >= reset_at and seq > 1000:
            seq = 0  # meter restarts: new epoch, new clock origin
        meter_t = (true_t - (reset_at if true_t >= reset_at else 0)) * (1 + 250e-6) + 5 * S
        host = max(host + 1, T0 + true_t + int(rng.uniform(1, 3) * MS))
        busy = 6 * S <= true_t < 18 * S and (true_t // (500 * MS)) % 2 == 0
        for ch, node, power in ((0, "node0", 3.0 + (1.5 if busy else 0.0) + round(rng.normal(0, 0.3))),
                                (1, "node1", 3.0 + true_t / 30e9)):
            rows["seq"].append(seq)
            rows["meter_time_ns"].append(int(meter_t))
            rows["host_time_ns"].append(host)
            rows["host_monotonic_ns"].append(host - T0)
            rows["channel"].append(ch)
            rows["node"].append(node)
            rows["power_w"].append(float(max(power, 0.0)))
            rows["voltage_v"].append(230.0)
        seq += 1
    n = len(rows["seq"])
    empty = {c: [None] * n for c in ("current_a", "power_factor", "frequency_hz", "energy_counter_j")}
    return {**{k: [v] * n for k, v in KEY.items()}, "power_source": ["simulated"] * n, "meter_id": ["m0"] * n, **rows,
            **empty}


PHASES = [  # name, node, start s, end s, tokens
    ("idle_baseline", None, 1.0, 5.0, None),
    ("mmlu", None, 6.0, 12.0, None),  # tokens from benchmark_answer
    ("pp", "node0", 12.0, 14.0, None),  # tokens from throughput (prefill)
    ("tg", "node0", 14.0, 16.0, 777),  # the phase's own tokens win
    ("hot", None, 16.5, 18.0, 100),  # node0 throttled in here
    ("gapwin", None, 19.0, 23.0, 100),  # lines lost 20-22 s
    ("sticky", "node0", 22.5, 24.6, 100),  # node0's "throttling occurred" bit appears at 24 s
    ("after_reset", "node1", 26.0, 29.0, 100),
    ("beyond", None, 31.0, 33.0, None),  # after the last sample
    ("nobody", "node9", 2.0, 3.0, None),  # no channel on that node
    ("empty", None, 10.0, 10.0, None),
]


@pytest.fixture
def run_lake(lake):
    return build_run(lake)


def build_run(lake):
    rng = np.random.default_rng(7)
    lake.record("power_sample", power_rows(rng))
    phases = {**{k: [v] * len(PHASES) for k, v in KEY.items()},
              "phase": [p[0] for p in PHASES], "node": [p[1] for p in PHASES],
              "start_ns": [T0 + int(p[2] * S) for p in PHASES], "end_ns": [T0 + int(p[3] * S) for p in PHASES],
              "tokens": [p[4] for p in PHASES]}
    lake.record("phase", phases)
    times = [T0 + k * S for k in range(0, 31)]
    lake.record("thermal_sample", {**{k: [v] * len(times) for k, v in KEY.items()}, "node": ["node0"] * len(times),
                                   "sensor": ["cpu-thermal"] * len(times), "host_time_ns": times,
                                   "temperature_c": [50.0] * len(times),
                                   "throttled": [t == T0 + 17 * S for t in times],
                                   "throttle_flags": [0x4 if t == T0 + 17 * S else 0x40000 if t >= T0 + 24 * S else 0
                                                      for t in times]})
    lake.record("benchmark_answer", rows_for("benchmark_answer", 3, run_id=RUN))
    lake.record("throughput", rows_for("throughput", 3, run_id=RUN))
    return lake


def sql_frame(lake, view):
    con = sql.connect(lake)
    return pl.from_arrow(con.sql(f"SELECT * FROM {view} WHERE run_id = '{RUN}'").to_arrow_table())


def test_sql_views_equal_python_per_window(run_lake):
    py = {(m.name, m.start_ns): m for m in analyze_run(run_lake, RUN)}
    totals = sql_frame(run_lake, "window_energy_total")
    assert totals.height == len(PHASES) == len(py)  # every window listed, none dropped
    for row in totals.iter_rows(named=True):
        m = py[(row["phase"], row["start_ns"])]
        assert row["valid"] == m.valid, row["phase"]
        assert (row["invalid_reasons"] or "") == "; ".join(m.invalid_reasons), row["phase"]
        assert row["tokens"] == m.tokens and row["token_source"] == m.token_source
        assert row["simulated"] == m.simulated
        for column in ("energy_j", "net_energy_j", "energy_uncertainty_j", "j_per_token", "net_j_per_token",
                       "coverage", "avg_power_w"):
            a, b = row[column], getattr(m, column)
            assert (a is None) == (b is None), (row["phase"], column)
            if a is not None:
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (row["phase"], column)


def test_sql_views_equal_python_per_channel(run_lake):
    py = {(m.name, m.start_ns, c.channel): c for m in analyze_run(run_lake, RUN) for c in m.channels}
    channels = sql_frame(run_lake, "window_energy")
    assert channels.height == len(py) > 0
    for row in channels.iter_rows(named=True):
        c = py[(row["phase"], row["start_ns"], row["channel"])]
        assert (row["n_samples"], row["samples_needed"], row["valid"], row["throttled"], row["thermal_samples"]) == (
            c.n_samples, c.samples_needed, c.valid, c.throttled, c.thermal_samples), row["phase"]
        for column in ("energy_j", "avg_power_w", "energy_uncertainty_j", "sampling_error_j", "coverage", "gap_s",
                       "idle_power_w", "net_energy_j", "net_energy_uncertainty_j"):
            a, b = row[column], getattr(c, column)
            assert (a is None) == (b is None), (row["phase"], column)
            if a is not None:
                assert a == pytest.approx(b, rel=1e-9, abs=1e-9), (row["phase"], row["channel"], column)
        assert row["clock_residual_max_ms"] == pytest.approx(c.clock_residual_max_ms, abs=1e-5)


def test_synthetic_run_windows_say_what_happened(run_lake):
    m = {w.name: w for w in analyze_run(run_lake, RUN)}
    assert m["idle_baseline"].valid and m["idle_baseline"].net_energy_j is None
    assert m["idle_baseline"].avg_power_w == pytest.approx(3.0 + 3.0 + 3 / 30, abs=0.1)
    assert m["mmlu"].valid and m["mmlu"].tokens == 900 and m["mmlu"].token_source == "benchmark_answer"
    assert m["mmlu"].net_energy_j == pytest.approx(m["mmlu"].energy_j - sum(
        c.idle_power_w * 6.0 for c in m["mmlu"].channels))
    # busy half the time at +1.5 W on node0: about 4.5 J over idle in 6 s (ramp adds on node1)
    busy_net = next(c.net_energy_j for c in m["mmlu"].channels if c.channel == 0)
    assert busy_net == pytest.approx(4.5, abs=0.4)
    assert m["pp"].tokens == 512 * 5 and m["pp"].token_source == "throughput"
    assert [c.node for c in m["pp"].channels] == ["node0"]
    assert m["pp"].j_per_token == pytest.approx(m["pp"].energy_j / 2560)
    assert m["tg"].tokens == 777 and m["tg"].token_source == "phase"
    assert not m["hot"].valid and "ch0: throttled" in m["hot"].invalid_reasons
    assert not m["gapwin"].valid and m["gapwin"].coverage == pytest.approx(0.5, abs=0.02)
    assert "ch0: coverage" in m["gapwin"].invalid_reasons[0] and "throttled" not in str(m["gapwin"].invalid_reasons)
    assert m["sticky"].invalid_reasons == ("ch0: throttled",)
    assert m["after_reset"].valid and [c.node for c in m["after_reset"].channels] == ["node1"]
    assert not m["beyond"].valid and m["beyond"].coverage == 0.0
    assert m["nobody"].invalid_reasons == ("no power samples",) and m["nobody"].energy_j is None
    assert m["empty"].invalid_reasons == ("empty window",)


def test_clock_fit_sql_equals_python_and_recovers_the_drift(run_lake):
    power = run_lake.read("power_sample", run_id=RUN)
    _, fits = align(power)
    fits = {f.epoch: f for f in fits}
    rows = sql_frame(run_lake, "power_clock_fit").sort("epoch")
    assert rows["epoch"].to_list() == [0, 1] == sorted(fits)
    for row in rows.iter_rows(named=True):
        f = fits[row["epoch"]]
        assert row["n_lines"] == f.n_lines
        assert row["meter_drift_ppm"] == pytest.approx(f.meter_drift_ppm, rel=1e-6)
        assert row["residual_max_ms"] == pytest.approx(f.residual_max_ms, abs=1e-5)
        assert row["meter_drift_ppm"] == pytest.approx(250, abs=15)  # jitter 1-3 ms over 20 s
        assert row["residual_max_ms"] < 2.0 and row["clock_ok"]


def test_record_window_is_the_one_writer_of_phase_events(lake):
    record_window(lake, RunKey(**KEY), "mmlu", T0, T0 + 5 * S, tokens=42)
    record_window(lake, RunKey(**KEY), "pp", T0 + 6 * S, T0 + 7 * S, node="node0")
    rows = lake.read("phase", run_id=RUN).sort("start_ns").select("phase", "node", "start_ns", "end_ns", "tokens")
    assert rows.rows() == [("mmlu", None, T0, T0 + 5 * S, 42), ("pp", "node0", T0 + 6 * S, T0 + 7 * S, None)]
    root = Path(__file__).resolve().parent.parent
    writers = sorted(str(path.relative_to(root)) for folder in ("mqepi", "analysis", "flows", "schemas")
                     for path in (root / folder).rglob("*.py")
                     if re.search(r"""\.record\(\s*["']phase["']""", path.read_text()))
    assert writers == ["mqepi/meter/windows.py"]
