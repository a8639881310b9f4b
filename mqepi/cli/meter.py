"""``mqepi meter ...``: power meters, windows and thermal state on the command line.

Each command is a thin twin of a library function in :mod:`mqepi.meter` or
:mod:`mqepi.rig.thermal`; library errors become one-line messages (the CLI's ``edge``).
Anything simulated is labelled so in the output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import typer

from mqepi.cli._common import SIMULATED_NOTE, edge, err, lake, out, print_frame, query_frame, safe, say
from mqepi.meter import MeterError, RunKey
from mqepi.meter.atm90e26 import Atm90e26Source
from mqepi.meter.epimeter import MeterReader
from mqepi.meter.nvml import NvmlSource
from mqepi.meter.protocol import decoder_for
from mqepi.meter.replay import ReplaySource
from mqepi.meter.session import simulated_run
from mqepi.meter.simulated import Faults, SimulatedMeter
from mqepi.meter.spool import SpoolSink, spool_dir_for
from mqepi.meter.spool import replay as replay_spool
from mqepi.meter.stream import SampleStream
from mqepi.rig import thermal as th

app = typer.Typer(name="meter", no_args_is_help=True,
                  help="Power meters (epi-meter, simulated, ATM90E26, NVML, replay), energy windows, thermal state.")


def _channel(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _pairs(values: list[str] | None, option: str, form: str = "CHANNEL=VALUE (e.g. 0=node0)",
           key: Callable[[str], object] = _channel) -> dict:
    """``["0=node0", "1=node1"]`` -> ``{0: "node0", 1: "node1"}``; ``key`` parses a key (None:
    not one), ``form`` names the expected form in the error."""
    out = {}
    for value in values or []:
        text, sep, item = value.partition("=")
        parsed = key(text) if sep and item else None
        if parsed is None:
            raise MeterError(f"{option} {value!r} is not {form}")
        out[parsed] = item
    return out


def _faults(garbage: float, bad_check: float, drop: float, drift_ppm: float, unplug_every: float | None,
            unplug_for: float):
    return Faults(garbage_rate=garbage, bad_check_rate=bad_check, drop_rate=drop, drift_ppm=drift_ppm,
                  unplug_every_s=unplug_every, unplug_for_s=unplug_for)


# option shorthands
_RUN_ID = typer.Option(..., "--run-id", "-r", help="Run id the samples belong to.")
_MODEL = typer.Option("smollm2-135m", "--model", "-m", help="Model id of the run (lake partition).")
_CONFIG = typer.Option("uniform_q4km", "--config-id", "-c", help="Quant configuration id of the run (lake partition).")
_UNTIL = typer.Option(None, "--duration", help="Stop after this many seconds [default: Ctrl-C].")
_GARBAGE = typer.Option(0.0, "--garbage", help="Fault: share of lines preceded by garbage bytes.")
_BAD_CHECK = typer.Option(0.0, "--bad-check", help="Fault: share of lines with a wrong check value.")
_DROP = typer.Option(0.0, "--drop", help="Fault: share of lines dropped (sequence gaps).")
_DRIFT = typer.Option(0.0, "--drift-ppm", help="Fault: meter clock runs this many ppm fast.")
_UNPLUG_EVERY = typer.Option(None, "--unplug-every", help="Fault: unplug the meter every this many seconds.")
_UNPLUG_FOR = typer.Option(0.5, "--unplug-for", help="Fault: stay unplugged this many seconds.")


def _run_for(device, duration: float | None, wait: Callable[[float | None], None] | None = None):
    """Start ``device`` (a power source or the simulated meter), let it run for ``duration``
    seconds, until Ctrl-C or until it ends by itself (``wait``, by default its ``join``), then
    stop it; returns what its ``stop`` returns."""
    device.start()
    try:
        (wait or device.join)(duration)
    except KeyboardInterrupt:
        pass
    finally:
        stopped = device.stop()
    return stopped


def _record(model: str, config_id: str, run_id: str, build: Callable[[SpoolSink], SampleStream],
            duration: float | None = None) -> SampleStream:
    """What every source command does: the lake; what a killed earlier reader left in this
    host's spool for it, committed; a spooling sink for the run (acknowledged on local disk
    at every flush, committed to the lake every 10 s and at the end); the source ``build``
    makes on it, run for ``duration`` seconds (or until Ctrl-C or its end), stopped and
    committed."""
    lk = lake()
    lk.init()
    spool = spool_dir_for(lk)
    recovered = replay_spool(lk, spool)
    if recovered.segments:
        say(f"committed {recovered.rows} samples a stopped reader had left in {spool} "
            f"({recovered.segments} segments, {recovered.torn} torn tails dropped)", err)
    sink = SpoolSink(lk, RunKey(model, config_id, run_id), spool)
    try:
        source = build(sink)
    except BaseException:
        sink.close(commit=False)  # nothing was written: release the run's spool folder
        raise
    _run_for(source, duration)
    return source


@app.command("simulate")
@edge
def simulate(
    link: Path | None = typer.Option(None, "--link", help="Stable port path (a symlink to the pty) [default: a temp path]."),
    channels: int = typer.Option(4, "--channels", help="Channels (one per node: node0, node1 ...)."),
    rate: float = typer.Option(50.0, "--rate", help="Lines per second."),
    assign: list[str] | None = typer.Option(None, "--assign", help="CHANNEL=PID[,PID...]: processes driving a channel's power."),
    assign_file: Path | None = typer.Option(None, "--assign-file", help="JSON {channel: [pids]} re-read when it changes."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the noise and fault draws."),
    duration: float | None = _UNTIL,
    garbage: float = _GARBAGE, bad_check: float = _BAD_CHECK, drop: float = _DROP, drift_ppm: float = _DRIFT,
    unplug_every: float | None = _UNPLUG_EVERY, unplug_for: float = _UNPLUG_FOR,
) -> None:
    """Serve a simulated epi-meter on a pty: the real line protocol, power from the CPU time
    of assigned processes (Pi 5-like model), with optional fault injection."""
    sim = SimulatedMeter(channels, rate_hz=rate, seed=seed, link=link,
                         faults=_faults(garbage, bad_check, drop, drift_ppm, unplug_every, unplug_for))
    for channel, pids in _pairs(assign, "--assign").items():
        try:
            sim.assign(channel, [int(p) for p in pids.split(",")])
        except ValueError:
            raise MeterError(f"--assign {channel}={pids}: pids must be integers") from None

    def serve(duration: float | None) -> None:
        out.print(f"{SIMULATED_NOTE}\nsimulated meter serving on [bold]{safe(sim.port)}[/] at {rate:g} lines/s; "
                  f"channels {safe(', '.join(f'{c}={n}' for c, n in sim.channels.items()))}; "
                  f"read it with: mqepi meter record {safe(sim.port)} --run-id RUN", highlight=False, soft_wrap=True)
        _follow_assign_file(sim, assign_file, duration)

    stats = _run_for(sim, duration, serve)
    err.print(f"simulated meter stopped: {stats.lines_generated} lines, {stats.lines_written} written, "
              f"{len(stats.dropped)} dropped, {len(stats.bad_checks)} bad check values, {stats.garbage_chunks} garbage chunks, "
              f"{stats.unplugs} unplugs", highlight=False)


def _follow_assign_file(sim: SimulatedMeter, assign_file: Path | None, duration: float | None) -> None:
    """Until ``duration`` has passed (or forever), re-read ``assign_file`` whenever it changes."""
    seen_mtime = None
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        if assign_file is not None and assign_file.exists() and assign_file.stat().st_mtime != seen_mtime:
            seen_mtime = assign_file.stat().st_mtime
            try:
                mapping = json.loads(assign_file.read_text())
                for channel, pids in mapping.items():
                    sim.assign(int(channel), [int(p) for p in pids])
            except (ValueError, TypeError, AttributeError) as exc:
                raise MeterError(f"--assign-file {assign_file}: not a JSON object of channel -> pid list ({exc})") from None
        time.sleep(0.2)


@app.command("record")
@edge
def record(
    port: str = typer.Argument(..., help="Serial port or pyserial URL (/dev/ttyACM0, a pty, socket://h:p, loop://)."),
    run_id: str = _RUN_ID,
    model: str = _MODEL, config_id: str = _CONFIG,
    meter_id: str = typer.Option("epi-meter-0", "--meter-id", help="Meter id recorded with each sample."),
    node: list[str] | None = typer.Option(None, "--node", help="CHANNEL=NODE, e.g. 0=pi0 (repeatable)."),
    power_source: str = typer.Option("epi-meter", "--power-source",
                                     help="epi-meter (the board) or simulated; lines marked sim are always simulated."),
    duration: float | None = _UNTIL,
    flush_interval: float = typer.Option(1.0, "--flush-interval",
                                         help="Spool to local disk (fsynced) at least this often (s); the lake "
                                              "gets the spool every 10 s and at the end."),
    decoder: str = typer.Option("epi-json-v1", "--decoder", help="Line decoder."),
    baud: int = typer.Option(115200, "--baud", help="Baud rate."),
    incidents: Path | None = typer.Option(None, "--incidents",
                                          help="Also append every incident (gap, bad line, reconnect) as JSON lines here."),
) -> None:
    """Read the epi-meter line protocol from a port into power_sample events (spooled to
    local disk every second, committed to the lake every 10 s; resynchronises, reconnects,
    records gaps and bad lines)."""

    def build(sink: SpoolSink) -> MeterReader:
        reader = MeterReader(port, sink, meter_id=meter_id, power_source=power_source, nodes=_pairs(node, "--node"),
                             decoder=decoder_for(decoder), baudrate=baud, flush_interval_s=flush_interval)
        if incidents is not None:
            reader.log_incidents_to(incidents)
        say(f"reading {port} into {sink.lake.uri} run {run_id}; Ctrl-C to stop", err)
        return reader

    reader = _record(model, config_id, run_id, build, duration)
    summary = reader.summary()
    say(" ".join(f"{k}={v}" for k, v in summary.items()))
    simulated = query_frame("SELECT count(*) AS n FROM power_sample WHERE run_id = ? AND power_source = 'simulated'", [run_id])
    if simulated["n"][0]:
        out.print(SIMULATED_NOTE)


@app.command("atm90e26")
@edge
def atm90e26(
    port: str = typer.Argument(..., help="Serial port of one ATM90E26 chip."),
    run_id: str = _RUN_ID,
    model: str = _MODEL, config_id: str = _CONFIG,
    channel: int = typer.Option(0, "--channel", help="Channel number recorded for this chip."),
    node: str | None = typer.Option(None, "--node", help="Node this chip measures."),
    meter_id: str = typer.Option("atm90e26-0", "--meter-id", help="Meter id recorded with each sample."),
    rate: float = typer.Option(5.0, "--rate", help="Polls per second."),
    baud: int = typer.Option(9600, "--baud", help="2400 or 9600."),
    imp_per_kwh: int = typer.Option(1000, "--imp-per-kwh", help="Meter constant (pulses/kWh) of the chip's calibration."),
    duration: float | None = _UNTIL,
) -> None:
    """Poll one ATM90E26 chip over its UART register protocol into power_sample events."""
    source = _record(model, config_id, run_id, lambda sink: Atm90e26Source(
        port, sink, channel=channel, node=node, meter_id=meter_id, rate_hz=rate, baudrate=baud,
        imp_per_kwh=imp_per_kwh), duration)
    out.print(f"{source.rows_flushed} samples, {source.failed_polls} failed polls, energy register total "
              f"{source.energy_j:.0f} J (coarse: 360 J steps)", highlight=False)


@app.command("nvml")
@edge
def nvml(
    run_id: str = _RUN_ID,
    model: str = _MODEL, config_id: str = _CONFIG,
    device: list[int] | None = typer.Option(None, "--device", help="GPU index (repeatable) [default: all]."),
    rate: float = typer.Option(10.0, "--rate", help="Polls per second."),
    duration: float = typer.Option(10.0, "--duration", help="Seconds to record."),
) -> None:
    """Record GPU board power from NVML (needs an NVIDIA driver; says why not otherwise)."""
    source = _record(model, config_id, run_id, lambda sink: NvmlSource(sink, devices=device, rate_hz=rate),
                     duration)
    say(f"{source.rows_flushed} NVML samples from {', '.join(f'{d}: {n}' for d, n in source.names.items())}")


@app.command("replay")
@edge
def replay(
    trace: Path = typer.Argument(..., help="Recorded power trace, .csv or .parquet."),
    run_id: str = _RUN_ID,
    model: str = _MODEL, config_id: str = _CONFIG,
    map_: list[str] | None = typer.Option(None, "--map", help="TRACE_COLUMN=OUR_COLUMN, e.g. watts=power_w (repeatable)."),
    meter_id: str = typer.Option("replay", "--meter-id", help="Meter id where the trace has none."),
    rebase_now: bool = typer.Option(False, "--rebase-now", help="Shift the trace to start now."),
) -> None:
    """Import a recorded power trace (CSV or Parquet, any origin) as power_source=replay
    samples (rows marked simulated stay simulated)."""
    columns = _pairs(map_, "--map", "TRACE_COLUMN=OUR_COLUMN", key=lambda text: text or None)
    source = _record(model, config_id, run_id, lambda sink: ReplaySource(
        trace, sink, columns=columns or None, meter_id=meter_id, rebase_to_ns=time.time_ns() if rebase_now else None))
    sources = sorted(set(source.trace["power_source"].to_list()))
    say(f"replayed {source.rows_flushed} samples from {trace} into run {run_id} (power_source: {', '.join(sources)})")
    if "simulated" in sources:
        out.print(SIMULATED_NOTE)


@app.command("windows")
@edge
def windows(
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Only this run."),
    channels: bool = typer.Option(False, "--channels", help="One row per window and channel."),
) -> None:
    """Energy per measurement window (the window_energy_total / window_energy views): J,
    W, net of idle, J/token, coverage, uncertainty and the validity gates."""
    if channels:
        cols = ("run_id, phase, channel, node, power_source, round(elapsed_s, 3) AS elapsed_s, round(energy_j, 3) AS energy_j, "
                "round(avg_power_w, 3) AS avg_power_w, round(energy_uncertainty_j, 3) AS u_j, round(net_energy_j, 3) AS net_j, "
                "n_samples, round(coverage, 4) AS coverage, round(clock_residual_max_ms, 1) AS residual_ms, valid, "
                "invalid_reasons")
        df = query_frame(f"SELECT {cols} FROM window_energy WHERE ? IS NULL OR run_id = ? ORDER BY run_id, start_ns, channel",
                    [run_id, run_id])
        simulated = any("simulated" in s for s in df["power_source"].to_list())
    else:
        cols = ("run_id, phase, node, round(elapsed_s, 3) AS elapsed_s, channels, round(energy_j, 3) AS energy_j, "
                "round(avg_power_w, 3) AS avg_power_w, round(energy_uncertainty_j, 3) AS u_j, round(net_energy_j, 3) AS net_j, "
                "tokens, round(j_per_token, 6) AS j_per_token, round(coverage, 4) AS coverage, power_sources, valid, "
                "invalid_reasons")
        df = query_frame(f"SELECT {cols} FROM window_energy_total WHERE ? IS NULL OR run_id = ? ORDER BY run_id, start_ns",
                    [run_id, run_id])
        simulated = any(s and "simulated" in s for s in df["power_sources"].to_list())
    if df.height == 0:
        say("no windows (phase events) in the lake" + (f" for run {run_id}" if run_id else ""))
        return
    print_frame(df, title="energy per window" + (" (SIMULATED power)" if simulated else ""))
    if simulated:
        out.print(SIMULATED_NOTE)


@app.command("clock")
@edge
def clock(run_id: str | None = typer.Option(None, "--run-id", "-r", help="Only this run.")) -> None:
    """Meter clock vs host clock per run, meter and epoch: drift (ppm) and residual (ms);
    a residual of 400 ms or more invalidates the windows it touches."""
    df = query_frame("SELECT run_id, meter_id, epoch, n_lines, round(meter_drift_ppm, 1) AS drift_ppm, "
                "round(residual_rms_ms, 3) AS residual_rms_ms, round(residual_max_ms, 3) AS residual_max_ms, clock_ok "
                "FROM power_clock_fit WHERE ? IS NULL OR run_id = ? ORDER BY run_id, meter_id, epoch", [run_id, run_id])
    if df.height == 0:
        say("no meter clock readings in the lake" + (f" for run {run_id}" if run_id else ""))
        return
    print_frame(df, title="meter clock fit")


@app.command("demo")
@edge
def demo(
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Run id [default: sim-<UTC time>]."),
    model: str = _MODEL, config_id: str = _CONFIG,
    idle: float = typer.Option(3.0, "--idle", help="Idle baseline window (s)."),
    busy: float = typer.Option(3.0, "--busy", help="Busy window (s)."),
    processes: int = typer.Option(1, "--processes", help="Spinning processes on node0 during the busy window."),
    rate: float = typer.Option(50.0, "--rate", help="Simulated meter lines per second."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the noise and fault draws."),
    garbage: float = _GARBAGE, bad_check: float = _BAD_CHECK, drop: float = _DROP, drift_ppm: float = _DRIFT,
    unplug_every: float | None = _UNPLUG_EVERY, unplug_for: float = _UNPLUG_FOR,
) -> None:
    """A short recorded run on the simulated meter: idle baseline, then real CPU load on
    node0; prints the windows (all simulated). See them later with mqepi meter windows."""
    run_id = run_id or time.strftime("sim-%Y%m%dT%H%M%SZ", time.gmtime())
    lk = lake()
    measurements = simulated_run(lk, RunKey(model, config_id, run_id), idle_s=idle, busy_s=busy,
                                 busy_processes=processes, rate_hz=rate, seed=seed, spool_dir=spool_dir_for(lk),
                                 faults=_faults(garbage, bad_check, drop, drift_ppm, unplug_every, unplug_for),
                                 progress=lambda line: say(line, err))
    rows = [{"phase": m.name, "channel": c.channel, "node": c.node, "power_source": c.power_source,
             "energy_j": round(c.energy_j, 3), "avg_power_w": round(c.avg_power_w or 0, 3),
             "net_j": None if c.net_energy_j is None else round(c.net_energy_j, 3), "n_samples": c.n_samples,
             "coverage": round(c.coverage or 0, 4), "valid": c.valid, "invalid_reasons": "; ".join(c.invalid_reasons)}
            for m in measurements for c in m.channels]
    print_frame(pl.DataFrame(rows), title=f"run {run_id}: energy per window and channel (SIMULATED power)")
    out.print(SIMULATED_NOTE)
    say(f"SQL: mqepi sql \"SELECT * FROM window_energy_total WHERE run_id = '{run_id}'\"")


@app.command("thermal")
@edge
def thermal(
    run_id: str | None = typer.Option(None, "--run-id", "-r", help="Record thermal_sample events for this run."),
    model: str = _MODEL, config_id: str = _CONFIG,
    stabilise: bool = typer.Option(False, "--stabilise", help="Wait until the thermal state is stable (or time out)."),
    min_duration: float = typer.Option(60.0, "--min-duration", help="Stabilisation: at least this long (s)."),
    trailing: float = typer.Option(30.0, "--trailing", help="Stabilisation: slope over this trailing period (s)."),
    max_slope: float = typer.Option(0.5, "--max-slope", help="Stabilisation: |slope| limit (C/min)."),
    timeout: float = typer.Option(900.0, "--timeout", help="Stabilisation: fail after this long (s)."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between readings."),
) -> None:
    """Read this machine's thermal zones (and vcgencmd throttle flags); optionally wait for
    a stable thermal state, failing after a timeout."""
    if not th.SysfsProbe.available():
        raise th.ThermalError(f"no thermal sensor on this machine ({th.THERMAL_ROOT} has no thermal_zone*/temp)")
    probe = th.SysfsProbe()
    lk = run = None
    if run_id:
        lk, run = lake(), RunKey(model, config_id, run_id)
        lk.init()

    def record(readings):
        if lk is not None and readings:
            frame = th.readings_frame(readings)
            lk.record("thermal_sample", frame.with_columns(**run.columns(frame.height)))
        for r in readings:
            say(f"{r.node}/{r.sensor}: {r.temperature_c:.1f} C, throttle flags {th.describe_flags(r.throttle_flags)}", err)

    if not stabilise:
        record(probe.read())
        return
    policy = th.StabilisationPolicy(min_duration_s=min_duration, trailing_s=trailing, max_slope_c_per_min=max_slope,
                                    poll_interval_s=interval, timeout_s=timeout)
    result = th.wait_until_stable([probe], policy, on_readings=record)
    say(f"stable after {result.elapsed_s:.0f} s: " + "; ".join(
        f"{s.node}/{s.sensor} {s.temperature_c:.1f} C, {s.slope_c_per_min:+.2f} C/min" for s in result.sensors))


if __name__ == "__main__":  # pragma: no cover
    app()
