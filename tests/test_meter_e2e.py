"""End to end over a real pty: simulated meter -> reader -> lake -> windows, with every
injected fault, and power that follows real CPU load."""

from __future__ import annotations

import subprocess
import sys
import time

import polars as pl
import pytest

from mqepi.meter import RunKey
from mqepi.meter.epimeter import MeterReader
from mqepi.meter.simulated import Faults, PowerModel, SimulatedMeter, process_cpu_seconds
from mqepi.meter.stream import LakeSink
from mqepi.meter.windows import EnergyMonitor, analyze_run
from mqepi.results import sql

RUN = RunKey("smollm2-135m", "uniform_q4km", "r-e2e")


def record_window(lake, faults: Faults, seconds: float = 2.5, seed: int = 11, before=None):
    """Run the simulator and the reader; measure one window of ``seconds``."""
    with SimulatedMeter(4, rate_hz=50, faults=faults, seed=seed) as sim:
        reader = MeterReader(sim.port, LakeSink(lake, RUN), nodes=sim.channels, backoff_initial_s=0.02).start()
        assert reader.wait_past(time.time_ns(), timeout_s=5), "no line from the simulator"
        if before is not None:
            before(sim)
        monitor = EnergyMonitor(lake, RUN, reader=reader)
        monitor.begin_window("work")
        time.sleep(seconds)
        measurement = monitor.end_window("work", tokens=1000)
        reader.stop()  # no crash: raises if the reader failed
    return sim.stats, reader, measurement


def received(lake) -> list[int]:
    return sorted(lake.read("power_sample", columns=["seq", "channel"], run_id=RUN.run_id)
                  .filter(pl.col("channel") == 0)["seq"].to_list())


def missing_seqs(lake) -> set[int]:
    seqs = received(lake)
    return set(range(seqs[0], seqs[-1] + 1)) - set(seqs)


def within(seqs, lake) -> set[int]:
    got = received(lake)
    return {s for s in seqs if got[0] <= s <= got[-1]}


def test_clean_stream_every_line_recorded_and_window_valid(lake):
    stats, reader, m = record_window(lake, Faults())
    assert missing_seqs(lake) == set() and reader.missing_lines == 0
    assert m.valid, m.invalid_reasons
    assert m.power_sources == ("simulated",) and m.simulated
    assert len(m.channels) == 4 and m.coverage >= 0.99
    assert m.j_per_token == pytest.approx(m.energy_j / 1000)
    df = lake.read("power_sample", run_id=RUN.run_id)
    assert set(df["power_source"]) == {"simulated"}
    assert set(df["node"]) == {"node0", "node1", "node2", "node3"}
    # the SQL view says the same as the live measurement
    con = sql.connect(lake)
    row = con.sql("SELECT energy_j, valid, simulated FROM window_energy_total WHERE phase = 'work'").fetchall()[0]
    assert row[0] == pytest.approx(analyze_run(lake, RUN.run_id)[0].energy_j, rel=1e-9) and row[1] and row[2]


def test_garbage_bytes_are_skipped_without_losing_lines(lake):
    stats, reader, m = record_window(lake, Faults(garbage_rate=0.3))
    assert stats.garbage_chunks > 10
    assert reader.incident_counts.get("garbage", 0) >= stats.garbage_chunks // 2
    assert missing_seqs(lake) == set()
    assert m.valid, m.invalid_reasons


def test_bad_check_values_are_rejected_and_show_as_gaps(lake):
    stats, reader, m = record_window(lake, Faults(bad_check_rate=0.1))
    corrupted = within(stats.bad_checks, lake)
    assert len(corrupted) >= 3
    assert missing_seqs(lake) == corrupted  # exactly the corrupted lines are missing
    assert reader.incident_counts["bad_check"] >= len(corrupted)
    gap_lines = sum(i.seq_to - i.seq_from + 1 for i in reader.incidents if i.kind == "gap")
    assert gap_lines == reader.missing_lines >= len(corrupted)


def test_dropped_lines_lower_coverage_and_flag_the_window(lake):
    stats, reader, m = record_window(lake, Faults(drop_rate=0.25))
    dropped = within(stats.dropped, lake)
    assert missing_seqs(lake) == dropped and len(dropped) > 10
    assert reader.incident_counts["gap"] >= 1
    assert not m.valid
    assert m.coverage < 0.95 and all("coverage" in r for r in m.invalid_reasons if "coverage" in r)
    assert any(r.startswith("ch0: coverage") for r in m.invalid_reasons)


def test_clock_drift_is_recovered_and_does_not_invalidate(lake):
    stats, reader, m = record_window(lake, Faults(drift_ppm=20_000), seconds=3.0)
    con = sql.connect(lake)
    drift, residual = con.sql("SELECT meter_drift_ppm, residual_max_ms FROM power_clock_fit").fetchall()[0]
    assert drift == pytest.approx(20_000, abs=3_000)
    assert residual < 400
    assert m.valid, m.invalid_reasons


def test_unplug_and_replug_reconnects_records_the_gap_and_flags_the_window(lake):
    stats, reader, m = record_window(lake, Faults(unplug_every_s=1.0, unplug_for_s=0.5), seconds=3.0)
    assert stats.unplugs >= 1
    assert reader.disconnects >= 1 and reader.reconnects >= 1
    # lines are lost while unplugged and until the reader has reopened the port (its
    # backoff: well under a second, 50 lines): nowhere else
    around_unplugs = {s for first, last in stats.unplugged for s in range(first, last + 1 + 50)}
    missing = missing_seqs(lake)
    assert missing and missing <= around_unplugs | set(stats.overflow)
    assert missing & {s for first, last in stats.unplugged for s in range(first, last + 1)}
    assert reader.incident_counts["gap"] >= 1
    assert not m.valid and m.coverage < 0.95


def test_simulated_power_rises_with_real_cpu_load(lake):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    cpu = {}
    try:
        def assign(sim):
            sim.assign(0, [busy.pid])
            sim.assign(1, [idle.pid])
            time.sleep(0.4)  # the CPU-time estimate looks back 0.25 s
            cpu["before"] = (process_cpu_seconds(busy.pid), time.monotonic())

        stats, reader, m = record_window(lake, Faults(), seconds=2.5, before=assign)
        cpu["after"] = (process_cpu_seconds(busy.pid), time.monotonic())
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    power = {c.channel: c.avg_power_w for c in m.channels}
    model = PowerModel()
    busy_cores = (cpu["after"][0] - cpu["before"][0]) / (cpu["after"][1] - cpu["before"][1])
    assert busy_cores > 0.3  # the spinning process did run
    # channel 0 follows the CPU time its process really used; channel 1's process slept
    assert power[0] == pytest.approx(model.true_power_w(busy_cores), abs=0.35)
    assert power[1] == pytest.approx(model.true_power_w(0.0), abs=0.25)
    assert power[0] - power[1] > 0.9 * model.w_per_busy_core / model.psu_efficiency * busy_cores - 0.25
