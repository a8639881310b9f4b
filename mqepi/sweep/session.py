"""One run of a sweep: its ``run`` events, its meter (simulated, or the epi-meter on a serial
port) and thermal sampler, and its measured stages in order: stabilisation, the idle
baseline window, one window per benchmark, perplexity/KLD, throughput.

The meter's samples go through a local spool (:class:`mqepi.meter.spool.SpoolSink`, under
``$MQEPI_CACHE/spool``): acknowledged on disk every second, committed to the lake every 10 s
and at the end of every measured stage, so a stage's windows have their samples in the lake
when it returns. ``begin`` first commits what a killed earlier session left spooled.

A run id takes events from one session only: ``begin`` refuses a run id that already has
``run`` events, ``finish`` refuses a run that ended meanwhile (or that another process began
too), and ``fail`` writes nothing to a run this session did not begin or that has ended. Each
check reads only the run's own partition. (The sweep's locks already keep a second process
away; these checks hold where the locks cannot, e.g. sweeps on two machines into one lake.)
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from mqepi import PRODUCER
from mqepi.meter.epimeter import MeterReader
from mqepi.meter.simulated import SimulatedMeter
from mqepi.meter.spool import SpoolSink, replay, spool_dir_for
from mqepi.meter.stream import RunKey
from mqepi.meter.windows import EnergyMonitor, Measurement
from mqepi.progress import indented
from mqepi.quality import perplexity, scoring, throughput
from mqepi.quant.quantize import Quantized
from mqepi.rig import thermal
from mqepi.rig.ops import rpc_args
from mqepi.rig.processes import descendants
from mqepi.sweep.resume import RunPlan
from mqepi.sweep.rig import Rig
from mqepi.sweep.spec import SweepError


class RunTaken(SweepError):
    """The run id already has events another session wrote, or the run has ended."""


class RunSession:
    """One run: its meter, its windows, its run events. Stages are methods, called in order."""

    def __init__(self, rig: Rig, plan: RunPlan, q: Quantized, model_path: str):
        self.rig, self.plan, self.q, self.model_path = rig, plan, q, model_path
        self.key = RunKey(rig.spec.model, plan.config_id, plan.run_id)
        self.sim = self.reader = self.sampler = None
        self.provenance = rig.provenance(plan, q)
        self.begun = False  # this session recorded the run's ``started``

    def _statuses(self) -> list[str]:
        """The ``run`` statuses this run id has in the lake (its partition only)."""
        k = self.key
        runs = self.rig.lake.read("run", columns=["status"], model=k.model, config_id=k.config_id, run_id=k.run_id)
        return runs["status"].to_list()

    def _require_open(self) -> None:
        """Raise :class:`RunTaken` if the run has ended or another session began it too."""
        statuses = self._statuses()
        ended = sorted({s for s in statuses if s != "started"})
        if ended or statuses.count("started") != 1:
            raise RunTaken(f"run {self.key.run_id}: the lake has {', '.join(sorted(statuses))} for it; "
                           "another process or attempt wrote to this run, so this session adds nothing more")

    def _record_run(self, status: str, message: str | None = None) -> None:
        head = self.rig.nodes[0].name
        self.rig.lake.record("run", {
            **self.key.columns(1), "status": [status], "repeat": [self.plan.repeat], "file_sha256": [self.q.file_sha256],
            "power_source": [self.rig.spec.power_source], "host": [head],
            "provenance_json": [json.dumps(self.provenance, sort_keys=True, default=str)], "message": [message],
            "hardware_id": [self.rig.hardware.hardware_id],
        }, producer=PRODUCER)

    # -- begin / end
    def begin(self) -> None:
        """Record ``run started`` and start the meter (and the thermal sampler)."""
        rig, spec = self.rig, self.rig.spec
        taken = self._statuses()
        if taken:
            raise RunTaken(f"run {self.key.run_id} already has run events ({', '.join(sorted(set(taken)))}) in the "
                           "lake: a run id is never reused; another process may be running this sweep")
        self._record_run("started")
        self.begun = True
        channels = {n.channel: n.name for n in rig.nodes}
        if spec.meter == "simulated":
            self.sim = SimulatedMeter(channels, rate_hz=spec.meter_rate_hz, seed=None).start()
            for node in rig.nodes:
                pids = (rig.node_pids or {}).get(node.name)
                if pids is None and rig.config is None:
                    pids = lambda: descendants(os.getpid())  # noqa: E731 - this machine: its tools
                if pids is not None:
                    self.sim.assign(node.channel, pids)
            port = self.sim.port
        elif spec.meter.startswith("epi-meter:"):
            port = spec.meter.split(":", 1)[1]
        else:
            return
        spool = spool_dir_for(rig.lake)
        replay(rig.lake, spool)  # what a killed earlier session spooled and never committed
        self.reader = MeterReader(port, SpoolSink(rig.lake, self.key, spool), nodes=channels,
                                  power_source="epi-meter").start()
        if not self.reader.wait_past(time.time_ns(), timeout_s=10.0):
            raise SweepError(f"no line from the meter on {port} within 10 s")
        if rig.probes:
            self.sampler = thermal.ThermalSampler(rig.probes, rig.lake, self.key).start()

    def _stop_meter(self) -> None:
        errors = []
        for stop in (self.sampler, self.reader, self.sim):
            if stop is not None:
                try:
                    stop.stop()
                except BaseException as exc:  # noqa: BLE001 - every device is stopped, the first error raised
                    errors.append(exc)
        self.sampler = self.reader = self.sim = None
        if errors:
            raise errors[0]

    def _commit_meter(self) -> None:
        """A stage's windows have ended: commit the meter's samples up to now to the lake."""
        if self.reader is not None:
            self.reader.wait_past(time.time_ns(), timeout_s=10.0)
            self.reader.commit()

    def finish(self) -> None:
        """Let the meter pass the last window, stop it, record ``run finished``."""
        if self.reader is not None:
            self.reader.wait_past(time.time_ns(), timeout_s=10.0)
        self._stop_meter()
        self._require_open()
        self._record_run("finished")

    def fail(self, exc: BaseException) -> None:
        """Stop the meter as far as it stops, record ``run failed`` with the error - only for
        a run this session began and that has not ended."""
        with contextlib.suppress(BaseException):
            self._stop_meter()
        if not self.begun or {"finished", "failed"} & set(self._statuses()):
            return
        self._record_run("failed", f"{type(exc).__name__}: {exc}"[:2000])

    # -- measured stages
    def stabilise(self) -> str:
        """Wait for a stable thermal state (a fixed settle where no node has a sensor)."""
        rig, spec = self.rig, self.rig.spec
        if not rig.probes:
            time.sleep(spec.settle_s)
            return rig.thermal_note

        def record(readings):
            if readings:
                frame = thermal.readings_frame(readings)
                rig.lake.record("thermal_sample", frame.with_columns(**self.key.columns(frame.height)))

        policy = thermal.StabilisationPolicy(min_duration_s=spec.stabilise_min_s, timeout_s=spec.stabilise_timeout_s)
        result = thermal.wait_until_stable(rig.probes, policy, on_readings=record)
        return f"stable after {result.elapsed_s:.0f} s"

    def idle(self) -> Measurement | None:
        if self.reader is None:
            return None
        return EnergyMonitor(self.rig.lake, self.key, reader=self.reader).measure_idle(self.rig.spec.idle_s)

    def benchmark(self, benchmark: str) -> scoring.BenchmarkResult:
        rig = self.rig
        qset = next(q for q in rig.qsets if q.benchmark == benchmark)
        result = scoring.run_scoring(qset, self.model_path, rig.engine, threads=rig.spec.threads, rpc=rig.endpoints,
                                     lake=rig.lake, key=self.key, executor=rig.head_exec,
                                     progress=indented(rig.progress))
        self._commit_meter()
        return result

    def perplexity(self) -> tuple[perplexity.PerplexityResult, dict | None]:
        rig, spec = self.rig, self.rig.spec
        result = perplexity.run_perplexity(f"{rig.bin_dir}/llama-perplexity", self.model_path, rig.text_path,
                                           context=spec.ppl_context, chunks=spec.ppl_chunks, text_sha256=rig.text.sha256,
                                           base_logits_path=rig.logits_path, base_sha256=rig.base.sha256,
                                           threads=spec.threads, extra_args=rpc_args(rig.endpoints), lake=rig.lake,
                                           key=self.key, executor=rig.head_exec)
        self._commit_meter()
        return result

    def throughput(self) -> list[dict]:
        rig, spec = self.rig, self.rig.spec
        result = throughput.run_throughput(f"{rig.bin_dir}/llama-bench", self.model_path, n_prompt=spec.n_prompt,
                                           n_gen=spec.n_gen, repetitions=spec.bench_repetitions, threads=spec.threads,
                                           rpc_nodes=len(rig.endpoints), extra_args=rpc_args(rig.endpoints),
                                           lake=rig.lake, key=self.key, executor=rig.head_exec)
        self._commit_meter()
        return result
