"""The other power sources behind the same stream interface: an ATM90E26 chip over a pty,
replay of recorded traces, NVML."""

from __future__ import annotations

import time

import polars as pl
import pytest
from factories import T0

from mqepi.meter import MeterError, RunKey, SourceUnavailable
from mqepi.meter.atm90e26 import Atm90e26Emulator, Atm90e26Source
from mqepi.meter.nvml import NvmlSource, nvml
from mqepi.meter.replay import ReplaySource, read_trace
from mqepi.meter.stream import LakeSink

RUN = RunKey("smollm2-135m", "uniform_q4km", "r-src")


def test_atm90e26_source_reads_a_chip_over_its_uart_protocol(lake):
    with Atm90e26Emulator(lambda: 7.0, voltage_v=231.5, power_factor=0.62) as chip:
        source = Atm90e26Source(chip.port, LakeSink(lake, RUN), node="pi3", channel=2, power_source="simulated",
                                rate_hz=20)
        source.run(duration_s=1.0)
    df = lake.read("power_sample", run_id=RUN.run_id).sort("seq")
    assert df.height >= 5 and source.failed_polls == 0
    assert set(df["power_w"]) == {7.0}
    assert df["voltage_v"][0] == pytest.approx(231.5)
    assert df["power_factor"][0] == pytest.approx(0.62)
    assert df["frequency_hz"][0] == pytest.approx(50.0)
    assert df["current_a"][0] == pytest.approx(7.0 / (231.5 * 0.62), abs=0.001)
    assert set(df["channel"]) == {2} and set(df["node"]) == {"pi3"} and set(df["power_source"]) == {"simulated"}
    assert chip.bad_requests == 0 and chip.requests >= 7 * df.height
    # the energy register is cleared on read: the source sums it (360 J steps, far coarser
    # than 7 W over one second, so still 0 here)
    assert df["energy_counter_j"].max() == 0.0


def test_atm90e26_bad_checksums_lose_the_poll_and_are_recorded(lake):
    with Atm90e26Emulator(lambda: 4.0, corrupt_every=5) as chip:
        source = Atm90e26Source(chip.port, LakeSink(lake, RUN), rate_hz=20, power_source="simulated")
        source.run(duration_s=1.0)
    assert chip.corrupted >= 2
    assert source.failed_polls >= 2 and source.incident_counts["bad_check"] == source.failed_polls
    seqs = lake.read("power_sample", run_id=RUN.run_id)["seq"].to_list()
    assert len(seqs) == source.seq - source.failed_polls  # each failed poll left its seq out
    assert "checksum" in next(i.detail for i in source.incidents)


def test_atm90e26_source_refuses_to_call_a_real_chip_anything_else(lake):
    with pytest.raises(MeterError, match="power_source 'epi-meter'"):
        Atm90e26Source("loop://", LakeSink(lake, RUN), power_source="epi-meter")


def write_trace(tmp_path, fmt: str):
    df = pl.DataFrame({
        "timestamp": ["2025-11-24T00:00:00.000Z", "2025-11-24T00:00:00.500Z", "2025-11-24T00:00:01.000Z"],
        "watts": [3.5, 4.0, 4.5],
        "channel": [1, 1, 1],
        "power_source": ["epi-meter", "epi-meter", "epi-meter"],
    })
    path = tmp_path / f"trace.{fmt}"
    df.write_csv(path) if fmt == "csv" else df.write_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_replay_of_a_recorded_trace(lake, tmp_path, fmt):
    path = write_trace(tmp_path, fmt)
    source = ReplaySource(path, LakeSink(lake, RUN), columns={"watts": "power_w"}, meter_id="bench-meter")
    source.run()
    df = lake.read("power_sample", run_id=RUN.run_id).sort("host_time_ns")
    assert df["power_w"].to_list() == [3.5, 4.0, 4.5]
    midnight = 1_763_942_400 * 10**9  # 2025-11-24T00:00:00Z
    assert df["host_time_ns"].to_list() == [midnight, midnight + 500_000_000, midnight + 1_000_000_000]
    assert set(df["power_source"]) == {"replay"}  # replayed, not measured here
    assert df["seq"].to_list() == [0, 1, 2] and set(df["meter_id"]) == {"bench-meter"}


def test_replay_keeps_simulated_rows_simulated_and_can_rebase(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"time_s": [10.0, 10.02], "power_w": [5.0, 6.0], "power_source": ["simulated", "nvml"]}).write_parquet(path)
    trace = read_trace(path, rebase_to_ns=T0)
    assert trace["power_source"].to_list() == ["simulated", "replay"]
    assert trace["host_time_ns"].to_list() == [T0, T0 + 20_000_000]


@pytest.mark.parametrize("frame,message", [
    ({"time_s": [1.0], "watts": [3.0]}, "no column 'power_w'"),
    ({"power_w": [3.0]}, "no time column"),
    ({"time_s": ["x"], "power_w": [3.0]}, "column 'time_s' has type"),
    ({"timestamp": ["yesterday"], "power_w": [3.0]}, "not ISO 8601"),
    ({"time_s": [1.0], "power_w": ["abc"]}, "power_w"),
])
def test_replay_errors_name_the_column(tmp_path, frame, message):
    path = tmp_path / "bad.csv"
    pl.DataFrame(frame).write_csv(path)
    with pytest.raises(MeterError, match=message):
        read_trace(path)
    with pytest.raises(MeterError, match="not .csv or .parquet"):
        read_trace(tmp_path / "trace.json")


def test_nvml_records_gpu_power_or_says_why_it_cannot(lake):
    try:
        binding = nvml()
    except SourceUnavailable as exc:
        assert "NVML" in str(exc)
        with pytest.raises(SourceUnavailable, match="NVML"):
            NvmlSource(LakeSink(lake, RUN))
        pytest.skip(f"no NVML here: {exc}")
    binding.shutdown()
    source = NvmlSource(LakeSink(lake, RUN), rate_hz=20)
    start = time.time_ns()
    source.run(duration_s=1.0)
    df = lake.read("power_sample", run_id=RUN.run_id)
    assert df.height >= 10 and set(df["power_source"]) == {"nvml"}
    assert (df["power_w"] > 0).all() and (df["host_time_ns"] >= start).all()
