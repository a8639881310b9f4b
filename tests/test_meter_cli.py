"""``mqepi meter ...``: every command documented, simulated numbers labelled, errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import typer.main
from typer.testing import CliRunner

import mqepi.cli
from mqepi.cli.meter import app as meter_app
from mqepi.meter.nvml import nvml
from mqepi.meter.simulated import SimulatedMeter
from mqepi.results import sql
from mqepi.rig import thermal

DOCS = Path(__file__).resolve().parent.parent / "docs"
runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(meter_app).commands.items())


@pytest.fixture
def cli_lake(lake, monkeypatch):
    monkeypatch.setattr(mqepi.cli.State, "lake_root", lake.root)
    monkeypatch.setenv("COLUMNS", "250")
    return lake


def test_meter_has_its_commands():
    assert {"simulate", "record", "demo", "windows", "clock", "replay", "nvml", "atm90e26", "thermal"} <= dict(COMMANDS).keys()


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_meter_command_has_docstring_help_and_docs_entry(name, command):
    assert command.callback.__doc__ and command.callback.__doc__.strip()
    result = runner.invoke(meter_app, [name, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    entry = f"### `mqepi meter {name}`"
    docs = [(DOCS / f).read_text() for f in ("commands.md",)]
    assert any(entry in text for text in docs)


def test_demo_records_a_short_simulated_run_and_sql_shows_its_windows(cli_lake):
    result = runner.invoke(meter_app, ["demo", "--run-id", "cli-demo", "--idle", "2", "--busy", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.stdout and "busy" in result.stdout and "idle_baseline" in result.stdout
    con = sql.connect(cli_lake)
    rows = pl.from_arrow(con.sql("SELECT phase, energy_j, net_energy_j, simulated, valid FROM window_energy_total "
                                 "WHERE run_id = 'cli-demo' ORDER BY start_ns").to_arrow_table())
    assert rows["phase"].to_list() == ["idle_baseline", "busy"]
    assert rows["simulated"].to_list() == [True, True]
    assert rows["net_energy_j"][1] > 0.5  # a spinning process on node0 costs energy above idle
    statuses = cli_lake.read("run", run_id="cli-demo")["status"].to_list()
    assert sorted(statuses) == ["finished", "started"] and set(cli_lake.read("run")["power_source"]) == {"simulated"}

    windows = runner.invoke(meter_app, ["windows", "--run-id", "cli-demo"])
    assert windows.exit_code == 0 and "SIMULATED" in windows.stdout and "idle_baseline" in windows.stdout
    per_channel = runner.invoke(meter_app, ["windows", "--run-id", "cli-demo", "--channels"])
    assert per_channel.exit_code == 0 and "node3" in per_channel.stdout
    clock = runner.invoke(meter_app, ["clock", "--run-id", "cli-demo"])
    assert clock.exit_code == 0 and "epi-meter-0" in clock.stdout


def test_record_reads_a_port_for_a_while(cli_lake):
    with SimulatedMeter(2, rate_hz=50, seed=2) as sim:
        result = runner.invoke(meter_app, ["record", sim.port, "--run-id", "cli-rec", "--duration", "1",
                                           "--node", "0=pi0", "--node", "1=pi1"])
    assert result.exit_code == 0, result.output
    assert "samples=" in result.stdout and "SIMULATED" in result.stdout
    df = cli_lake.read("power_sample", run_id="cli-rec")
    assert df.height > 40 and set(df["node"]) == {"pi0", "pi1"} and set(df["power_source"]) == {"simulated"}


def test_replay_command(cli_lake, tmp_path):
    trace = tmp_path / "t.csv"
    pl.DataFrame({"time_ns": [1_764_000_000_000_000_000, 1_764_000_000_100_000_000], "W": [3.0, 4.0]}).write_csv(trace)
    result = runner.invoke(meter_app, ["replay", str(trace), "--run-id", "cli-rep", "--map", "W=power_w"])
    assert result.exit_code == 0, result.output
    assert "replayed 2 samples" in result.stdout and "replay" in result.stdout
    assert cli_lake.read("power_sample", run_id="cli-rep")["power_w"].to_list() == [3.0, 4.0]


@pytest.mark.parametrize("args,message", [
    (["record", "loop://", "--run-id", "r", "--node", "zero=pi0"], "--node 'zero=pi0' is not CHANNEL=VALUE"),
    (["record", "loop://", "--run-id", "bad/id"], "run_id 'bad/id' is not a slug"),
    (["replay", "missing.csv", "--run-id", "r", "--map", "W"], "--map 'W' is not TRACE_COLUMN=OUR_COLUMN"),
    (["simulate", "--drop", "2"], "fault drop_rate = 2.0"),
])
def test_errors_are_one_line_naming_the_value(cli_lake, args, message):
    result = runner.invoke(meter_app, args)
    assert result.exit_code == 1
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output


def test_nvml_and_thermal_say_why_they_cannot_run_here(cli_lake):
    try:
        nvml().shutdown()
    except Exception:  # noqa: BLE001 - no NVML here: the command must say so
        result = runner.invoke(meter_app, ["nvml", "--run-id", "r", "--duration", "0.2"])
        assert result.exit_code == 1 and "NVML" in result.stderr
    if not thermal.SysfsProbe.available():
        result = runner.invoke(meter_app, ["thermal"])
        assert result.exit_code == 1 and "no thermal sensor" in result.stderr
    else:
        result = runner.invoke(meter_app, ["thermal", "--run-id", "r"])
        assert result.exit_code == 0 and cli_lake.read("thermal_sample", run_id="r").height > 0


def test_simulate_serves_for_a_duration_and_reads_an_assignment_file(cli_lake, tmp_path):
    assignment = tmp_path / "assign.json"
    assignment.write_text(json.dumps({"0": [1]}))
    link = tmp_path / "meter"
    result = runner.invoke(meter_app, ["simulate", "--link", str(link), "--duration", "0.5", "--assign-file",
                                       str(assignment), "--channels", "2"])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.stdout and str(link) in result.stdout
    assert "lines" in result.stderr and not link.exists()  # unplugged when it stops
