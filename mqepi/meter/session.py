"""A short recorded run on the simulated meter, end to end: simulator -> pty -> reader ->
lake, an idle baseline window, then a window with real CPU load on node0 (a process that
spins), measured and gated. What ``mqepi meter demo`` runs. Every number is simulated."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mqepi import __version__
from mqepi.meter.epimeter import MeterReader
from mqepi.meter.simulated import Faults, PowerModel, SimulatedMeter
from mqepi.meter.spool import SpoolSink
from mqepi.meter.stream import LakeSink, MeterError, RunKey
from mqepi.meter.windows import EnergyMonitor, Measurement, analyze_run
from mqepi.rig.hardware import local_profile

#: A process that keeps one core busy until killed.
SPIN = "while True: pass"
#: The default: a simulated meter that breaks nothing.
NO_FAULTS = Faults()


def spin_processes(n: int) -> list[subprocess.Popen]:
    """Start ``n`` processes that each keep one core busy."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def simulated_run(lake, run: RunKey, *, idle_s: float = 3.0, busy_s: float = 3.0, busy_processes: int = 1,
                  rate_hz: float = 50.0, faults: Faults = NO_FAULTS, seed: int | None = None,
                  spool_dir: Path | None = None,
                  progress: Callable[[str], None] = lambda line: None) -> list[Measurement]:
    """Record a short simulated run into ``lake``; returns its windows (as analysed from the
    lake after the run, like the ``window_energy_total`` view). With ``spool_dir`` the
    samples go through a local spool (:class:`~mqepi.meter.spool.SpoolSink`), else straight
    to the lake."""
    lake.init()
    profile = local_profile(meter="simulated")
    provenance = {"mqepi": __version__, "simulator": {"rate_hz": rate_hz, "faults": faults.__dict__,
                                                      "model": PowerModel().__dict__, "seed": seed},
                  "hardware": profile.as_dict()}
    run_row = {"model": [run.model], "config_id": [run.config_id], "run_id": [run.run_id], "repeat": [0],
               "file_sha256": [None], "power_source": ["simulated"], "host": [socket.gethostname()],
               "provenance_json": [json.dumps(provenance, sort_keys=True)], "message": [None],
               "hardware_id": [profile.hardware_id]}
    lake.record("run", {**run_row, "status": ["started"]})
    sim = SimulatedMeter(4, rate_hz=rate_hz, faults=faults, seed=seed).start()
    burners: list[subprocess.Popen] = []
    reader = sink = None
    try:
        sink = LakeSink(lake, run) if spool_dir is None else SpoolSink(lake, run, spool_dir)
        reader = MeterReader(sim.port, sink, nodes=sim.channels).start()
        if not reader.wait_past(time.time_ns(), timeout_s=5.0):
            raise MeterError(f"no line from the simulated meter on {sim.port} within 5 s")
        progress(f"simulated meter on {sim.port}, {rate_hz:g} lines/s, channels {sim.channels}")
        monitor = EnergyMonitor(lake, run, reader=reader)
        progress(f"idle baseline window, {idle_s:g} s")
        monitor.measure_idle(idle_s)
        burners = spin_processes(busy_processes)
        sim.assign(0, [p.pid for p in burners])
        time.sleep(sim.loads[0].window_s + 0.1)  # let the CPU-time estimate see the load
        progress(f"busy window on node0 ({busy_processes} spinning process(es)), {busy_s:g} s")
        monitor.begin_window("busy")
        time.sleep(busy_s)
        monitor.end_window("busy")
    except BaseException as exc:
        lake.record("run", {**run_row, "status": ["failed"], "message": [str(exc)[:500]]})
        raise
    finally:
        for p in burners:
            p.kill()
            p.wait()
        if reader is not None:
            reader.stop()  # closes the sink (a spool commits what it holds)
        elif sink is not None:
            sink.close(commit=False)
        sim.stop()
    progress(f"reader: {reader.summary()}")
    lake.record("run", {**run_row, "status": ["finished"]})
    return analyze_run(lake, run.run_id)
