"""The sweep: every (configuration, repeat) of a model measured, the paper's pipeline.

Per configuration: quantize (cached) -> deploy. Per repeat: thermal stabilisation -> idle
baseline window -> one window per benchmark -> perplexity / KLD -> throughput -> run
finished. Every run has ``run`` started / finished (or failed) events with its provenance.

The plain library behind the Prefect ``sweep`` flow (``flows/sweep.py``): :func:`run_sweep`
calls each stage through a ``Stages`` object: :class:`DirectStages` runs them here, the
flow's stages make each one a Prefect task. Rules it keeps:

* measured windows never overlap other work on the measured nodes: all stages of a run go
  one after another; the only concurrent work is quantizing the next configuration on a
  quant host that is not a cluster node;
* resume: a rerun with the same spec skips each (configuration, repeat) finished in the
  lake; a run that started and never ended (the sweep was killed) is marked failed first
  and redone under a new run id (``...-a2``), never continued;
* only I/O stages retry (a dropped SSH connection); a validation error ends the sweep.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from mqepi import PRODUCER, __version__
from mqepi.errors import MqepiError
from mqepi.meter.stream import RunKey
from mqepi.quality.evaluate import Settings


class SweepError(MqepiError):
    """The sweep cannot go on (bad spec, unhealthy cluster, a stage failed for good)."""


METERS = ("simulated", "none")  # plus "epi-meter:<serial port>"


@dataclass
class SweepSpec(Settings):
    """What to measure: the quality settings of :class:`mqepi.quality.evaluate.Settings`
    (benchmarks and question counts, shots, seed, perplexity, KLD, throughput, threads) and
    the sweep's own. The measurement settings (everything but ``name`` and ``configs``)
    define the sweep's identity: the same settings resume the same sweep."""

    model: str = "smollm2-135m"
    configs: list[str] | None = None  # None: every committed map of the model
    repeats: int = 3
    cluster: str | None = None  # cluster TOML; None: this machine is the only node
    rpc: bool = True  # offload layers to the cluster's RPC workers
    meter: str = "simulated"  # simulated | none | epi-meter:<serial port URL>
    meter_rate_hz: float = 20.0
    idle_s: float = 10.0
    settle_s: float = 2.0  # fixed pause before the idle window when no node has a thermal sensor
    stabilise_min_s: float = 60.0
    stabilise_timeout_s: float = 900.0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise SweepError(f"repeats = {self.repeats}: at least 1")
        if not self.benchmarks:
            raise SweepError("benchmarks: at least one benchmark is needed (mmlu, arc_challenge, hellaswag)")
        for name, n in self.benchmarks.items():
            if n is not None and n < 1:
                raise SweepError(f"benchmarks: {name} = {n} questions: at least 1 (or null for all)")
        if self.meter not in METERS and not self.meter.startswith("epi-meter:"):
            raise SweepError(f"meter = {self.meter!r}: one of simulated, none, epi-meter:<serial port>")
        if self.idle_s <= 0 and self.meter != "none":
            raise SweepError(f"idle_s = {self.idle_s}: the idle baseline window needs a positive length")

    @property
    def power_source(self) -> str:
        return {"simulated": "simulated", "none": "none"}.get(self.meter, "epi-meter")

    def identity(self) -> dict:
        # which configurations to do now is not part of what is measured: a sweep over a
        # subset and the full one share an id, so each resumes the other
        skip = {"name", "configs"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    @property
    def sweep_id(self) -> str:
        if self.name:
            return self.name
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return f"sw-{digest[:10]}"


# --------------------------------------------------------------------------- resume


@dataclass
class RunPlan:
    config_id: str
    repeat: int
    attempt: int
    run_id: str
    done: bool
    interrupted: list[str] = field(default_factory=list)  # run ids left started: to mark failed


def run_id_for(sweep_id: str, config_id: str, repeat: int, attempt: int) -> str:
    return f"{sweep_id}-{config_id}-r{repeat}-a{attempt}"


def plan_runs(lake, spec: SweepSpec, config_ids: list[str]) -> list[RunPlan]:
    """Which (configuration, repeat) pairs still need a run, from the lake's run events."""
    runs = lake.read("run", columns=["config_id", "run_id", "repeat", "status"], model=spec.model)
    prefix = f"{spec.sweep_id}-"
    runs = runs.filter(pl.col("run_id").str.starts_with(prefix) & pl.col("config_id").is_in(config_ids))
    status = (runs.group_by("config_id", "run_id", "repeat")
              .agg(finished=(pl.col("status") == "finished").any(), failed=(pl.col("status") == "failed").any()))
    plans = []
    for config_id in config_ids:
        for repeat in range(spec.repeats):
            mine = status.filter((pl.col("config_id") == config_id) & (pl.col("repeat") == repeat))
            attempts = [int(r.rsplit("-a", 1)[1]) for r in mine["run_id"] if r.rsplit("-a", 1)[-1].isdigit()]
            done = mine.filter(pl.col("finished") & ~pl.col("failed")).height > 0
            interrupted = sorted(mine.filter(~pl.col("finished") & ~pl.col("failed"))["run_id"].to_list())
            attempt = max(attempts, default=0) + 1
            plans.append(RunPlan(config_id, repeat, attempt, run_id_for(spec.sweep_id, config_id, repeat, attempt),
                                 done, interrupted))
    return plans


# --------------------------------------------------------------------------- stages


class DirectStages:
    """Runs each stage here, in order; ``submit`` runs one in a background thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqepi-prefetch")

    def run(self, name: str, fn: Callable, *args, io: bool = False, **kwargs):
        return fn(*args, **kwargs)

    def submit(self, name: str, fn: Callable, *args, io: bool = False, **kwargs) -> Future:
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------- the rig


@dataclass
class Node:
    name: str
    channel: int
    remote: object | None = None  # mqepi.cluster.ssh.Remote for a cluster node


class Rig:
    """Everything a sweep measures with: toolchain, base model, question sets, the nodes
    (this machine or a cluster), the meter. ``node_pids`` (node name -> callable returning
    pids) drives the simulated meter; without it, this machine's child processes drive
    channel 0."""

    def __init__(self, spec: SweepSpec, lake, *, progress: Callable[[str], None] = lambda line: None,
                 node_pids: dict[str, Callable[[], list[int]]] | None = None):
        self.spec, self.lake, self.progress = spec, lake, progress
        self.node_pids = node_pids
        self.config = None
        self.nodes: list[Node] = []
        self.head_exec = None
        self.endpoints: list[str] = []
        self._stack = contextlib.ExitStack()
        self.thermal_note = ""
        self.probes: list = []

    # -- set-up
    def __enter__(self) -> Rig:
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _setup(self) -> None:
        from mqepi.quality import evaluate as ev
        from mqepi.quality import run as qrun
        from mqepi.quant import assets, maps, toolchain
        from mqepi.rig.executor import LocalExecutor

        spec = self.spec
        self.lake.init()
        self.tc = toolchain.ensure(progress=lambda line: None)
        self.cache = toolchain.cache_root()
        if spec.model != assets.MODEL_ID and spec.cluster is None:
            raise SweepError(f"model {spec.model!r}: only {assets.MODEL_ID!r} has an embedded base; others need a "
                             "cluster config with a quant host")
        self.profile = maps.load_profile(spec.model)
        folder = maps.maps_dir(spec.model)
        if spec.configs:
            missing = [c for c in spec.configs if not (folder / f"{c}.json").is_file()]
            if missing:
                known = ", ".join(sorted(p.stem for p in folder.glob("*.json")))
                raise SweepError(f"configs: no map {missing[0]!r} for {spec.model} in {folder} (known: {known})")
            self.maps = [maps.load_map(folder / f"{c}.json", self.profile) for c in spec.configs]
        else:
            self.maps = maps.load_maps(sorted(folder.glob("*.json")), self.profile)
        self.base = assets.ensure_base_model()
        self.text = ev.heldout_text(self.cache)
        self.qsets = ev.question_sets(spec, self.cache)
        self.counts = {q.benchmark: qrun.token_counts(q, self.tc.tool("llama-tokenize"), self.base.path,
                                                      self.cache / "token_counts") for q in self.qsets}
        self.logits = None
        if spec.kld:
            self.progress("base logits for KLD (cached per base, text and context)")
            self.logits = qrun.base_logits(self.tc.tool("llama-perplexity"), self.base.path, self.text.path,
                                           spec.ppl_context, spec.ppl_chunks, self.cache / "kld", self.base.sha256,
                                           self.text.sha256, spec.threads)
        if spec.cluster is None:
            self.nodes = [Node(socket.gethostname(), 0)]
            self.head_exec = LocalExecutor(self.cache / "work")
            self.bin_dir = str(self.tc.bin_dir)
            self.text_path, self.logits_path = str(self.text.path), str(self.logits) if self.logits else None
            self._local_probes()
        else:
            self._cluster_setup()

    def _local_probes(self) -> None:
        from mqepi.rig import thermal

        if thermal.SysfsProbe.available():
            self.probes = [thermal.SysfsProbe(self.nodes[0].name)]
            self.thermal_note = "sysfs thermal zones on this machine"
        else:
            self.thermal_note = f"no thermal sensor on {self.nodes[0].name}: fixed {self.spec.settle_s:g} s settle"

    def _cluster_setup(self) -> None:
        from mqepi.rig import config as cfg
        from mqepi.rig import ops, thermal
        from mqepi.rig.ssh import Remote, RemoteError

        self.config = cfg.load(self.spec.cluster)
        reports = ops.require_healthy(self.config)
        self.progress(f"{len(reports)} hosts healthy: {', '.join(r.name for r in reports)}")
        head = self.config.head
        self.head_exec = self._stack.enter_context(Remote(head, self.config))
        for i, host in enumerate(self.config.nodes):
            remote = self.head_exec if host is head else self._stack.enter_context(Remote(host, self.config))
            self.nodes.append(Node(host.name, host.meter_channel if host.meter_channel is not None else i, remote))
        self.bin_dir = head.bin_dir
        self.text_path = ops.retrying(lambda: self.head_exec.provide(self.text.path, self.text.sha256))
        self.logits_path = None
        if self.logits is not None:
            from mqepi.lake.durable import sha256_file

            self.logits_path = ops.retrying(lambda: self.head_exec.provide(self.logits, sha256_file(self.logits)))
        if self.spec.rpc and self.config.workers:
            self.endpoints = self._stack.enter_context(ops.rpc_workers(self.config))
            self.progress(f"RPC workers listening: {', '.join(self.endpoints)}")
        probes, missing = [], []
        for node in self.nodes:
            probe = thermal.CommandProbe(node.name, lambda c, r=node.remote: r.run(c, timeout=30, check=True).text)
            try:
                probe.read()
                probes.append(probe)
            except (thermal.ThermalError, RemoteError, ValueError):
                missing.append(node.name)
        self.probes = probes
        self.thermal_note = (f"no thermal sensor on {', '.join(missing)}: fixed {self.spec.settle_s:g} s settle"
                             if not probes else f"thermal probes on {', '.join(p.node for p in probes)}"
                             + (f"; none on {', '.join(missing)}" if missing else ""))

    @property
    def quant_overlaps(self) -> bool:
        """Quantization may run beside a measurement only on a quant host that is no node."""
        if self.config is None or self.config.quant_host is None:
            return False
        q = self.config.quant_host
        return all((n.host, n.port) != (q.host, q.port) for n in self.config.nodes)

    # -- stages
    def quantize(self, config_id: str):
        """Quantize one configuration (a cached file is reused); on the quant host if any."""
        from mqepi.quant.quantize import quantize

        qmap = next(m for m in self.maps if m.config_id == config_id)
        out_dir = self.cache / "gguf"
        if self.config is not None and self.config.quant_host is not None:
            from mqepi.rig import ops
            from mqepi.rig.ssh import Remote

            qh = self.config.quant_host

            def remote_quantize():
                with Remote(qh, self.config) as remote:
                    base = remote.provide(self.base.path, self.base.sha256, "base")
                    return quantize(qmap, self.profile, base, self.base.sha256, f"{qh.bin_dir}/llama-quantize",
                                    self.tc.llama_cpp_commit, out_dir, lake=self.lake, runner=remote,
                                    threads=self.spec.threads)

            return ops.retrying(remote_quantize)
        return quantize(qmap, self.profile, self.base.path, self.base.sha256, self.tc.tool("llama-quantize"),
                        self.tc.llama_cpp_commit, out_dir, lake=self.lake, threads=self.spec.threads)

    def deploy(self, q) -> str:
        """The model file's path where the head runs it (copied and checked on a cluster)."""
        if self.config is None:
            return q.path
        from mqepi.rig import ops

        return ops.retrying(lambda: ops.deploy(self.config, q.path, q.file_sha256)).path

    def start_run(self, plan: RunPlan, q, model_path: str) -> RunSession:
        return RunSession(self, plan, q, model_path)

    def provenance(self, plan: RunPlan, q) -> dict:
        spec = self.spec
        meter = {"source": spec.power_source, "meter": spec.meter, "rate_hz": spec.meter_rate_hz}
        if spec.meter == "simulated":
            from mqepi.meter.simulated import PowerModel

            meter["simulator"] = {"power_model": asdict(PowerModel()), "driven_by": "CPU time of each node's processes"}
        return {
            "mqepi": __version__, "llama_cpp_commit": self.tc.llama_cpp_commit, "toolchain": self.tc.version,
            "host": socket.gethostname(), "platform": platform.platform(), "sweep_id": spec.sweep_id,
            "sweep": spec.identity(), "attempt": plan.attempt, "base_sha256": self.base.sha256,
            "file_sha256": q.file_sha256, "map_sha256": q.effective_map_sha256,
            "text": {"sha256": self.text.sha256}, "question_sets": {s.benchmark: s.sha256 for s in self.qsets},
            "nodes": [n.name for n in self.nodes], "rpc_endpoints": self.endpoints, "meter": meter,
            "thermal": self.thermal_note, "cluster": spec.cluster,
        }


class RunSession:
    """One run: its meter, its windows, its run events. Stages are methods, called in order."""

    def __init__(self, rig: Rig, plan: RunPlan, q, model_path: str):
        self.rig, self.plan, self.q, self.model_path = rig, plan, q, model_path
        self.key = RunKey(rig.spec.model, plan.config_id, plan.run_id)
        self.sim = self.reader = self.sampler = None
        self.provenance = rig.provenance(plan, q)

    def _record_run(self, status: str, message: str | None = None) -> None:
        head = self.rig.nodes[0].name
        self.rig.lake.record("run", {
            **self.key.columns(1), "status": [status], "repeat": [self.plan.repeat], "file_sha256": [self.q.file_sha256],
            "power_source": [self.rig.spec.power_source], "host": [head],
            "provenance_json": [json.dumps(self.provenance, sort_keys=True, default=str)], "message": [message],
        }, producer=PRODUCER)

    # -- begin / end
    def begin(self) -> None:
        """Record ``run started`` and start the meter (and the thermal sampler)."""
        from mqepi.meter.epimeter import MeterReader
        from mqepi.meter.stream import LakeSink

        rig, spec = self.rig, self.rig.spec
        self._record_run("started")
        channels = {n.channel: n.name for n in rig.nodes}
        if spec.meter == "simulated":
            from mqepi.meter.simulated import SimulatedMeter, descendants

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
        self.reader = MeterReader(port, LakeSink(rig.lake, self.key), nodes=channels,
                                  power_source="epi-meter").start()
        if not self.reader.wait_past(time.time_ns(), timeout_s=10.0):
            raise SweepError(f"no line from the meter on {port} within 10 s")
        if rig.probes:
            from mqepi.rig.thermal import ThermalSampler

            self.sampler = ThermalSampler(rig.probes, rig.lake, self.key).start()

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

    def finish(self) -> None:
        if self.reader is not None:
            self.reader.wait_past(time.time_ns(), timeout_s=10.0)
        self._stop_meter()
        self._record_run("finished")

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(BaseException):
            self._stop_meter()
        self._record_run("failed", f"{type(exc).__name__}: {exc}"[:2000])

    # -- measured stages
    def stabilise(self) -> str:
        rig, spec = self.rig, self.rig.spec
        if not rig.probes:
            time.sleep(spec.settle_s)
            return rig.thermal_note
        from mqepi.rig import thermal

        def record(readings):
            if readings:
                frame = thermal.readings_frame(readings)
                rig.lake.record("thermal_sample", frame.with_columns(**self.key.columns(frame.height)))

        policy = thermal.StabilisationPolicy(min_duration_s=spec.stabilise_min_s, timeout_s=spec.stabilise_timeout_s)
        result = thermal.wait_until_stable(rig.probes, policy, on_readings=record)
        return f"stable after {result.elapsed_s:.0f} s"

    def idle(self):
        from mqepi.meter.windows import EnergyMonitor

        if self.reader is None:
            return None
        return EnergyMonitor(self.rig.lake, self.key, reader=self.reader).measure_idle(self.rig.spec.idle_s)

    def benchmark(self, benchmark: str):
        from mqepi.quality import run as qrun
        from mqepi.rig.ops import rpc_args

        rig = self.rig
        qset = next(q for q in rig.qsets if q.benchmark == benchmark)
        return qrun.run_multiple_choice(qset, f"{rig.bin_dir}/llama-perplexity", self.model_path,
                                        counts=rig.counts[benchmark], threads=rig.spec.threads,
                                        extra_args=rpc_args(rig.endpoints), lake=rig.lake, key=self.key,
                                        executor=rig.head_exec)

    def perplexity(self):
        from mqepi.quality import run as qrun
        from mqepi.rig.ops import rpc_args

        rig, spec = self.rig, self.rig.spec
        return qrun.run_perplexity(f"{rig.bin_dir}/llama-perplexity", self.model_path, rig.text_path,
                                   context=spec.ppl_context, chunks=spec.ppl_chunks, text_sha256=rig.text.sha256,
                                   base_logits_path=rig.logits_path, base_sha256=rig.base.sha256,
                                   threads=spec.threads, extra_args=rpc_args(rig.endpoints), lake=rig.lake,
                                   key=self.key, executor=rig.head_exec)

    def throughput(self):
        from mqepi.quality import run as qrun
        from mqepi.rig.ops import rpc_args

        rig, spec = self.rig, self.rig.spec
        return qrun.run_throughput(f"{rig.bin_dir}/llama-bench", self.model_path, n_prompt=spec.n_prompt,
                                   n_gen=spec.n_gen, repetitions=spec.bench_repetitions, threads=spec.threads,
                                   rpc_nodes=len(rig.endpoints), extra_args=rpc_args(rig.endpoints), lake=rig.lake,
                                   key=self.key, executor=rig.head_exec)


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    sweep_id: str
    finished: list[str]  # run ids finished by this call
    skipped: list[tuple[str, int]]  # (config, repeat) already finished before
    marked_failed: list[str]  # interrupted runs found and marked failed
    seconds: dict[str, float]  # stage -> wall seconds
    wall_s: float

    def summary(self) -> dict:
        """A JSON-able summary (what the ``sweep`` flow returns)."""
        return {"sweep_id": self.sweep_id, "finished": self.finished, "skipped": len(self.skipped),
                "marked_failed": self.marked_failed, "wall_s": round(self.wall_s, 1),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def is_transient(exc: BaseException) -> bool:
    """True for errors a stage may retry: a dropped SSH connection, a connection error, a
    timeout. Anything else (a validation error, a failed tool) is terminal."""
    from mqepi.rig.ssh import ConnectionDropped

    return isinstance(exc, (ConnectionDropped, ConnectionError, TimeoutError))


def run_sweep(spec: SweepSpec, lake, *, stages=None, progress: Callable[[str], None] = lambda line: None,
              node_pids: dict[str, Callable[[], list[int]]] | None = None) -> SweepResult:
    """Measure every (configuration, repeat) of ``spec`` not yet finished in ``lake``."""
    stages = stages or DirectStages()
    own = isinstance(stages, DirectStages)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args, io: bool = False):
        start = time.perf_counter()
        try:
            return stages.run(name, fn, *args, io=io)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    finished, marked, skipped = [], [], []
    try:
        with contextlib.ExitStack() as stack:
            rig = timed("set-up", stack.enter_context, Rig(spec, lake, progress=progress, node_pids=node_pids))
            config_ids = [m.config_id for m in rig.maps]
            plans = timed("plan", plan_runs, lake, spec, config_ids)
            for plan in plans:
                for stale in plan.interrupted:
                    lake.record("run", _failed_row(lake, spec, plan, stale), producer=PRODUCER)
                    marked.append(stale)
                    progress(f"{stale}: started and never ended (interrupted); marked failed, redone as {plan.run_id}")
            todo = [p for p in plans if not p.done]
            skipped = [(p.config_id, p.repeat) for p in plans if p.done]
            progress(f"sweep {spec.sweep_id}: {len(config_ids)} configs x {spec.repeats} repeats; "
                     f"{len(skipped)} finished before, {len(todo)} to run")
            todo_configs = list(dict.fromkeys(p.config_id for p in todo))
            prefetch: dict[str, Future] = {}
            for index, config_id in enumerate(todo_configs):
                if config_id in prefetch:
                    q = _timed_future(seconds, "quantize (wait)", prefetch.pop(config_id))
                else:
                    q = timed("quantize", rig.quantize, config_id, io=True)
                if rig.quant_overlaps and index + 1 < len(todo_configs):
                    nxt = todo_configs[index + 1]
                    prefetch[nxt] = stages.submit("quantize", rig.quantize, nxt, io=True)
                path = timed("deploy", rig.deploy, q, io=True)
                for plan in (p for p in todo if p.config_id == config_id):
                    run_id = _one_run(rig, plan, q, path, timed, progress, len(finished) + 1, len(todo))
                    finished.append(run_id)
            for fut in prefetch.values():
                fut.result()
    finally:
        if own:
            stages.close()
    return SweepResult(spec.sweep_id, finished, skipped, marked, seconds, time.perf_counter() - t0)


def _timed_future(seconds: dict, name: str, fut: Future):
    start = time.perf_counter()
    try:
        return fut.result()
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


def _one_run(rig: Rig, plan: RunPlan, q, path: str, timed, progress, number: int, total: int) -> str:
    spec = rig.spec
    session = rig.start_run(plan, q, path)
    progress(f"[{number}/{total}] {plan.config_id} repeat {plan.repeat} (run {plan.run_id})")
    try:
        timed("meter start", session.begin)
        note = timed("stabilisation", session.stabilise)
        idle = timed("idle window", session.idle)
        if idle is not None:
            label = "simulated power, " if idle.simulated else ""
            progress(f"  idle baseline {idle.avg_power_w:.2f} W ({label}{'valid' if idle.valid else 'INVALID'}); {note}")
        for benchmark in spec.benchmarks:
            b = timed(f"benchmark {benchmark}", session.benchmark, benchmark, io=True)
            progress(f"  {benchmark}: {b.n_correct}/{b.n} correct, {b.tokens_evaluated} tokens, "
                     f"{(b.end_ns - b.start_ns) / 1e9:.1f} s")
        ppl, kld = timed("perplexity/kld", session.perplexity, io=True)
        progress(f"  perplexity {ppl.ppl:.2f} +/- {ppl.ppl_stderr:.2f}"
                 + (f", KLD {kld['kld_mean']:.4f}" if kld else ""))
        if spec.throughput:
            tp = timed("throughput", session.throughput, io=True)
            progress("  " + ", ".join(f"{r['test']} {r['tokens_per_s']:.1f} tok/s" for r in tp))
        timed("finish", session.finish)
    except BaseException as exc:
        session.fail(exc)
        raise
    return plan.run_id


def _failed_row(lake, spec: SweepSpec, plan: RunPlan, stale_run_id: str) -> dict:
    started = lake.read("run", model=spec.model, config_id=plan.config_id, run_id=stale_run_id)
    first = started.sort("recorded_at_ns").row(0, named=True)
    return {"model": [spec.model], "config_id": [plan.config_id], "run_id": [stale_run_id], "status": ["failed"],
            "repeat": [first["repeat"]], "file_sha256": [first["file_sha256"]], "power_source": [first["power_source"]],
            "host": [first["host"]], "provenance_json": [first["provenance_json"]],
            "message": ["interrupted: started and never finished; marked failed when the sweep resumed"]}


def spec_from_json(path: str | Path) -> SweepSpec:
    """A spec from a JSON file (the keys of :class:`SweepSpec`), with clear errors."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep spec") from None
    except json.JSONDecodeError as exc:
        raise SweepError(f"{path}: not JSON: {exc}") from None
    known = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SweepError(f"{path}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return SweepSpec(**data)
