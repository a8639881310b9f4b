"""Thermal state: probes on real files and commands, the stabilisation policy on a
scripted sensor and a fake clock, and sampling that stays out of measured windows."""

from __future__ import annotations

import os
import stat
import time

import polars as pl
import pytest

from mqepi.meter import RunKey
from mqepi.meter.windows import EnergyMonitor
from mqepi.rig import thermal as th
from mqepi.rig.executor import LocalExecutor, Result

RUN = RunKey("smollm2-135m", "uniform_q4km", "r-therm")


def fake_sysfs(tmp_path, temps: dict[str, str]):
    root = tmp_path / "thermal"
    for i, (kind, value) in enumerate(temps.items()):
        zone = root / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(value + "\n")
        (zone / "type").write_text(kind + "\n")
    return root


def fake_vcgencmd(tmp_path, output: str):
    tool = tmp_path / "vcgencmd"
    tool.write_text(f"#!/bin/sh\necho '{output}'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return str(tool)


def test_sysfs_probe_reads_zones_and_throttle_flags(tmp_path):
    root = fake_sysfs(tmp_path, {"cpu-thermal": "45123", "rp1_adc": "38000"})
    probe = th.SysfsProbe("pi0", root=str(root), vcgencmd=fake_vcgencmd(tmp_path, "throttled=0x50005"))
    readings = probe.read()
    assert [(r.sensor, r.temperature_c) for r in readings] == [("cpu-thermal", 45.123), ("rp1_adc", 38.0)]
    assert all(r.throttled and r.throttle_flags == 0x50005 and r.node == "pi0" for r in readings)
    assert th.describe_flags(0x50005) == ("under-voltage now, throttled now, under-voltage occurred, "
                                          "throttling occurred")
    quiet = th.SysfsProbe("pi0", root=str(root), vcgencmd=fake_vcgencmd(tmp_path, "throttled=0x50000"))
    assert not any(r.throttled for r in quiet.read())  # only "has occurred" bits: not throttled now


def test_probes_name_what_they_could_not_read(tmp_path):
    root = fake_sysfs(tmp_path, {"cpu-thermal": "hot"})
    with pytest.raises(th.ThermalError, match="temperature 'hot' is not millidegrees"):
        th.SysfsProbe("pi0", root=str(root), vcgencmd="").read()
    with pytest.raises(th.ThermalError, match="no thermal zones"):
        th.SysfsProbe("pi0", root=str(tmp_path / "none"), vcgencmd="").read()
    with pytest.raises(th.ThermalError, match="cannot read throttle flags"):
        th.parse_throttled("command not found")
    assert th.parse_throttled("throttled=none") is None


class OneLineNode:
    """A node whose probe command prints only a temperature (no throttle line)."""

    name = "pi2"

    def run(self, command: str, **kwargs) -> Result:
        return Result(0, [(0, "61500\n")])


def test_command_probe_runs_the_remote_reads_through_an_executor(tmp_path):
    temp = tmp_path / "temp"
    temp.write_text("61500\n")
    command = ["sh", "-c", 'cat "$1"; echo throttled=0x4', "probe", str(temp)]
    probe = th.CommandProbe("pi2", LocalExecutor(tmp_path), command=command)
    (reading,) = probe.read()
    assert (reading.node, reading.temperature_c, reading.throttled, reading.throttle_flags) == ("pi2", 61.5, True, 4)
    broken = th.CommandProbe("pi2", OneLineNode())
    with pytest.raises(th.ThermalError, match="expected a temperature and a throttle line"):
        broken.read()
    assert th.REMOTE_COMMAND.startswith("cat /sys/class/thermal/thermal_zone0/temp")


class ScriptedProbe(th.ThermalProbe):
    """A sensor that cannot exist here: temperature as a function of (fake) time."""

    def __init__(self, clock, temperature, throttled=lambda t: False):
        self.node, self.clock, self.temperature, self.throttled = "pi0", clock, temperature, throttled

    def read(self):
        t = self.clock.now
        flags = 0x4 if self.throttled(t) else 0
        return [th.ThermalReading("pi0", "cpu-thermal", int(t * 1e9) + 1, self.temperature(t), bool(flags), flags)]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_stable_only_after_the_minimum_time_and_a_flat_slope():
    clock = FakeClock()
    # warms from 40 C towards 55 C with a 30 s time constant
    probe = ScriptedProbe(clock, lambda t: 55.0 - 15.0 * pow(2.718281828, -t / 30.0))
    result = th.wait_until_stable([probe], th.StabilisationPolicy(), monotonic=clock.monotonic, sleep=clock.sleep)
    assert result.elapsed_s >= 60.0
    (state,) = result.sensors
    assert abs(state.slope_c_per_min) <= 0.5 and state.temperature_c > 54.0
    # the slope limit, not the minimum time, decided: at 60 s it was still warming too fast
    assert result.elapsed_s > 100


def test_flat_from_the_start_waits_the_minimum_time():
    clock = FakeClock()
    result = th.wait_until_stable([ScriptedProbe(clock, lambda t: 48.0)], th.StabilisationPolicy(min_duration_s=60),
                                  monotonic=clock.monotonic, sleep=clock.sleep)
    assert 60.0 <= result.elapsed_s < 63.0


def test_never_stable_fails_the_run_with_the_reason():
    clock = FakeClock()
    rising = ScriptedProbe(clock, lambda t: 40.0 + t / 30.0)  # +2 C/min forever
    with pytest.raises(th.ThermalNotStable, match=r"not stable after 300 s.*pi0/cpu-thermal: \+2\.00 C/min"):
        th.wait_until_stable([rising], th.StabilisationPolicy(timeout_s=300), monotonic=clock.monotonic,
                             sleep=clock.sleep)
    clock = FakeClock()
    hot = ScriptedProbe(clock, lambda t: 80.0, throttled=lambda t: True)
    with pytest.raises(th.ThermalNotStable, match="throttled"):
        th.wait_until_stable([hot], th.StabilisationPolicy(timeout_s=120), monotonic=clock.monotonic, sleep=clock.sleep)


def test_sampler_records_to_the_lake_and_keeps_out_of_measured_windows(lake, tmp_path):
    root = fake_sysfs(tmp_path, {"cpu-thermal": "50000"})
    probe = th.SysfsProbe("pi0", root=str(root), vcgencmd="")
    sampler = th.ThermalSampler([probe], lake, RUN, interval_s=0.02).start()
    monitor = EnergyMonitor(lake, RUN, thermal=sampler)
    time.sleep(0.2)
    start = monitor.begin_window("quiet")
    time.sleep(0.3)
    monitor.end_window("quiet")
    phase = lake.read("phase", run_id=RUN.run_id).row(0, named=True)
    time.sleep(0.2)
    sampler.stop()
    samples = lake.read("thermal_sample", run_id=RUN.run_id)["host_time_ns"]
    inside = samples.filter((samples > phase["start_ns"]) & (samples < phase["end_ns"]))
    assert phase["start_ns"] == start
    assert inside.len() == 0  # no polling of the node while its window is measured
    assert samples.filter(samples <= phase["start_ns"]).len() >= 2  # polling before ...
    assert samples.filter(samples >= phase["end_ns"]).len() >= 2  # ... after (incl. the bracketing reads)


def test_sampler_polls_during_windows_when_asked(lake, tmp_path):
    root = fake_sysfs(tmp_path, {"cpu-thermal": "50000"})
    sampler = th.ThermalSampler([th.SysfsProbe("pi0", root=str(root), vcgencmd="")], lake, RUN, interval_s=0.02,
                                poll_during_windows=True).start()
    monitor = EnergyMonitor(lake, RUN, thermal=sampler)
    monitor.begin_window("watched")
    time.sleep(0.3)
    monitor.end_window("watched")
    sampler.stop()
    phase = lake.read("phase", run_id=RUN.run_id).row(0, named=True)
    samples = lake.read("thermal_sample", run_id=RUN.run_id)["host_time_ns"]
    assert samples.filter((samples > phase["start_ns"]) & (samples < phase["end_ns"])).len() >= 2


def test_readings_frame_fits_the_thermal_sample_event(lake):
    readings = [th.ThermalReading("pi0", "cpu-thermal", 1_764_000_000_000_000_000, 51.2, False, None)]
    frame = th.readings_frame(readings)
    lake.record("thermal_sample", frame.with_columns(**RUN.columns(1)))
    assert lake.read("thermal_sample", run_id=RUN.run_id)["temperature_c"].to_list() == [51.2]


def test_local_sensor_is_read_when_this_machine_has_one():
    if not th.SysfsProbe.available():
        assert not os.path.exists(th.THERMAL_ROOT) or not any(
            name.startswith("thermal_zone") for name in os.listdir(th.THERMAL_ROOT))
        pytest.skip(f"no thermal zones under {th.THERMAL_ROOT} on this machine")
    readings = th.SysfsProbe().read()
    assert readings and all(-60 <= r.temperature_c <= 150 for r in readings)
    assert pl.DataFrame([r.__dict__ for r in readings]).height == len(readings)
