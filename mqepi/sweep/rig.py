"""The rig a sweep measures with: the toolchain, the base model, the held-out text and question
sets, the nodes (this machine, or a cluster over SSH with RPC workers and thermal probes) and
the stages that act on a configuration (quantize, deploy) before its runs, and the
effective identity of each configuration (its per-tensor expansion), which decides aliases.

Set-up is a context manager: everything it starts (SSH sessions, RPC workers) stops on exit,
also when set-up itself fails half way; the sweep's shared SSH connections close last.
"""

from __future__ import annotations

import contextlib
import platform
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass

import polars as pl

from mqepi import PRODUCER, __version__
from mqepi.lake.durable import sha256_file
from mqepi.meter.simulated import PowerModel
from mqepi.quality import evaluate as ev
from mqepi.quality import perplexity, scoring
from mqepi.quant import assets, maps, toolchain
from mqepi.quant.expansion import Expansion, expand
from mqepi.quant.quantize import Quantized, quantize
from mqepi.rig import config as cfg
from mqepi.rig import hardware, ops, thermal
from mqepi.rig.executor import Executor, LocalExecutor
from mqepi.rig.processes import NodeProcesses, loopback_host
from mqepi.rig.ssh import Remote, RemoteError, close_connections
from mqepi.sweep.resume import Alias, RunPlan
from mqepi.sweep.spec import SweepError, SweepSpec


@dataclass
class Node:
    """A measured node: its name, its meter channel and where its commands run."""

    name: str
    channel: int
    executor: Executor | None = None  # a Remote for a cluster node; None: this machine


class Rig:
    """Everything a sweep measures with: toolchain, base model, question sets, the nodes
    (this machine or a cluster), the meter. ``node_pids`` (node name -> callable returning
    pids) drives the simulated meter; without it, this machine's child processes drive
    channel 0, and on a cluster each node on a loopback address is driven by the processes
    serving it here (:class:`mqepi.rig.processes.NodeProcesses`: found by its SSH port);
    nodes elsewhere have a real meter, none is simulated for them."""

    def __init__(self, spec: SweepSpec, lake, *, progress: Callable[[str], None] = lambda line: None,
                 node_pids: dict[str, Callable[[], list[int]]] | None = None):
        self.spec, self.lake, self.progress = spec, lake, progress
        self.node_pids = node_pids
        self.config: cfg.ClusterConfig | None = None
        self.nodes: list[Node] = []
        self.head_exec: Executor | None = None
        self.endpoints: list[str] = []
        self._stack = contextlib.ExitStack()
        self.thermal_note = ""
        self.probes: list[thermal.ThermalProbe] = []
        self._expansions: dict[str, Expansion] = {}

    def __enter__(self) -> Rig:
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        self.lake.init()
        self.tc = toolchain.ensure(progress=lambda line: None)
        self.cache = toolchain.cache_root()
        if self.spec.model != assets.MODEL_ID and self.spec.cluster is None:
            raise SweepError(f"model {self.spec.model!r}: only {assets.MODEL_ID!r} has an embedded base; others need "
                             "a cluster config with a quant host")
        self.profile = maps.load_profile(self.spec.model)
        self.maps = self._load_maps()
        self._prepare_inputs()
        if self.spec.cluster is None:
            self._this_machine()
        else:
            self._cluster()
        self._power_sources()
        self.hardware = self._hardware()
        self.progress(f"hardware {self.hardware.hardware_id}: {self.hardware.describe()}")

    def _power_sources(self) -> None:
        """Which processes drive each node's simulated channel, said once. Without ``node_pids``
        a loopback node (a Prefect worker's sweep on ``mqepi cluster local``) gets the processes
        serving its SSH port and its pid files; a node elsewhere is driven by nothing here."""
        if self.spec.meter != "simulated":
            return
        if self.node_pids is None and self.config is not None:
            self.node_pids = {h.name: NodeProcesses(h.port, h.work_dir) for h in self.config.nodes
                              if loopback_host(h.host)}
            hosts = {h.name: h for h in self.config.nodes}
            said = {name: f"processes serving {hosts[name].host}:{hosts[name].port} (its sshd's sessions, "
                          f"pid files under {hosts[name].work_dir})" for name in self.node_pids}
        elif self.node_pids is None:
            said = {self.nodes[0].name: "this process's child processes"}
        else:
            said = {name: "the processes the caller names" for name in self.node_pids}
        parts = [f"channel {n.channel} ({n.name}) <- {said.get(n.name, 'nothing on this machine (flat idle power)')}"
                 for n in self.nodes]
        self.progress("simulated power driven by CPU time: " + "; ".join(parts))

    def _hardware(self) -> hardware.HardwareProfile:
        """The hardware profile every run records: the config's ``[hardware]`` completed by
        probing the head node (this machine without a cluster), the toolchain's llama.cpp
        commit and the sweep's meter (:func:`mqepi.rig.hardware.complete`)."""
        stated = self.config.hardware if self.config is not None else None
        return ops.retrying(lambda: hardware.complete(stated, self.head_exec, llama_cpp_commit=self.tc.llama_cpp_commit,
                                                      meter=self.spec.meter))

    def _load_maps(self) -> list[maps.QuantMap]:
        spec, folder = self.spec, maps.maps_dir(self.spec.model)
        if not spec.configs:
            return maps.load_maps(sorted(folder.glob("*.json")), self.profile)
        missing = [c for c in spec.configs if not (folder / f"{c}.json").is_file()]
        if missing:
            known = ", ".join(sorted(p.stem for p in folder.glob("*.json")))
            raise SweepError(f"configs: no map {missing[0]!r} for {spec.model} in {folder} (known: {known})")
        return [maps.load_map(folder / f"{c}.json", self.profile) for c in spec.configs]

    def _prepare_inputs(self) -> None:
        """The base model, the held-out text, the question sets and (for KLD) the base model's
        logits, all cached."""
        spec = self.spec
        self.base = assets.ensure_base_model()
        self.text = ev.heldout_text(self.cache)
        self.qsets = ev.question_sets(spec, self.cache)
        self.logits = None
        if spec.kld:
            self.progress("base logits for KLD (cached per base, text and context)")
            self.logits = perplexity.base_logits(self.tc.tool("llama-perplexity"), self.base.path, self.text.path,
                                           spec.ppl_context, spec.ppl_chunks, self.cache / "kld", self.base.sha256,
                                           self.text.sha256, spec.threads)

    def _this_machine(self) -> None:
        self.nodes = [Node(socket.gethostname(), 0)]
        self.head_exec = LocalExecutor(self.cache / "work")
        self.bin_dir = str(self.tc.bin_dir)
        self.engine = scoring.EngineCommand.local(self.progress)
        self.text_path, self.logits_path = str(self.text.path), str(self.logits) if self.logits else None
        if thermal.SysfsProbe.available():
            self.probes = [thermal.SysfsProbe(self.nodes[0].name)]
            self.thermal_note = "sysfs thermal zones on this machine"
        else:
            self.thermal_note = f"no thermal sensor on {self.nodes[0].name}: fixed {self.spec.settle_s:g} s settle"

    def _cluster(self) -> None:
        self.config = cfg.load(self.spec.cluster)
        self._stack.callback(close_connections, self.config)  # last on exit: the sweep's SSH connections
        reports = ops.require_healthy(self.config)
        self.progress(f"{len(reports)} hosts healthy: {', '.join(r.name for r in reports)}")
        head = self.config.head
        self.head_exec = self._stack.enter_context(Remote(head, self.config))
        for i, host in enumerate(self.config.nodes):
            remote = self.head_exec if host is head else self._stack.enter_context(Remote(host, self.config))
            self.nodes.append(Node(host.name, host.meter_channel if host.meter_channel is not None else i, remote))
        self.bin_dir = head.bin_dir
        self.engine = scoring.EngineCommand(head.python, head.engine_lib_dir)
        self.text_path = ops.retrying(lambda: self.head_exec.provide(self.text.path, self.text.sha256))
        self.logits_path = None
        if self.logits is not None:
            self.logits_path = ops.retrying(lambda: self.head_exec.provide(self.logits, sha256_file(self.logits)))
        if self.spec.rpc and self.config.workers:
            self.endpoints = self._stack.enter_context(ops.rpc_workers(self.config))
            self.progress(f"RPC workers listening: {', '.join(self.endpoints)}")
        self._cluster_probes()

    def _cluster_probes(self) -> None:
        """A thermal probe on every node that answers one; a fixed settle where none does."""
        probes, missing = [], []
        for node in self.nodes:
            probe = thermal.CommandProbe(node.name, node.executor)
            try:
                probe.read()
                probes.append(probe)
            except (thermal.ThermalError, RemoteError, ValueError):
                missing.append(node.name)
        self.probes = probes
        self.thermal_note = (f"no thermal sensor on {', '.join(missing)}: fixed {self.spec.settle_s:g} s settle"
                             if not probes else f"thermal probes on {', '.join(p.node for p in probes)}"
                             + (f"; none on {', '.join(missing)}" if missing else ""))

    # ------------------------------------------------------------------ per configuration

    @property
    def quant_overlaps(self) -> bool:
        """Quantization may run beside a measurement only on a quant host that is no node."""
        if self.config is None or self.config.quant_host is None:
            return False
        q = self.config.quant_host
        return all((n.host, n.port) != (q.host, q.port) for n in self.config.nodes)

    def qmap(self, config_id: str) -> maps.QuantMap:
        """The map of one of the sweep's configurations."""
        return next(m for m in self.maps if m.config_id == config_id)

    def expansion(self, config_id: str) -> Expansion:
        """The configuration's per-tensor expansion on the model's profile: the same one the
        quantize step checks the written file against (:func:`mqepi.quant.quantize.check_types`)."""
        if config_id not in self._expansions:
            self._expansions[config_id] = expand(self.qmap(config_id), self.profile)
        return self._expansions[config_id]

    def identities(self) -> list[tuple[str, str, str]]:
        """(config id, map sha256, effective map sha256) of every configuration, in sweep order."""
        return [(m.config_id, m.sha256, self.expansion(m.config_id).effective_sha256) for m in self.maps]

    def check_measured(self, config_id: str, aliases: list[str]) -> None:
        """Check that what llama-quantize wrote for ``config_id`` (every file the lake records
        for its map, this base and this llama.cpp commit) holds exactly the predicted effective
        types, before ``aliases`` are recorded as the same model. Quantizes it first (a cached
        file is reused) when the lake records no such file. :class:`SweepError` otherwise."""
        exp = self.expansion(config_id)
        written = written_types(self.lake, exp, self.base.sha256, self.tc.llama_cpp_commit)
        if not written:
            self.quantize(config_id)
            written = written_types(self.lake, exp, self.base.sha256, self.tc.llama_cpp_commit)
        if not written:
            raise SweepError(f"{config_id}: quantized, yet the lake records no tensor inventory of it for base "
                             f"{self.base.sha256[:12]}; cannot check its aliases {', '.join(aliases)}")
        check_written(exp, written, aliases)

    def record_alias(self, alias: Alias) -> bool:
        """Record an alias (never quantized): its ``quant_config`` (the map, as the quantize
        step records it) and its ``config_alias`` event, in one commit. Recording it again adds
        nothing (events are content-addressed). True if the ``config_alias`` event is new."""
        qmap = self.qmap(alias.config_id)
        with self.lake.transaction(f"alias {alias.config_id}"):
            self.lake.record("quant_config", {
                "model": [qmap.model], "config_id": [qmap.config_id], "map_sha256": [qmap.sha256],
                "map_json": [qmap.canonical_json()], "n_layers": [self.profile.n_layers], "kind": [qmap.kind],
            }, producer=PRODUCER)
            return self.lake.record("config_alias", alias.row(qmap.model), producer=PRODUCER).rows_written > 0

    def quantize(self, config_id: str) -> Quantized:
        """Quantize one configuration (a cached file is reused); on the quant host if any."""
        qmap = self.qmap(config_id)
        out_dir = self.cache / "gguf"
        if self.config is None or self.config.quant_host is None:
            return quantize(qmap, self.profile, self.base.path, self.base.sha256, self.tc.tool("llama-quantize"),
                            self.tc.llama_cpp_commit, out_dir, lake=self.lake, threads=self.spec.threads)
        qh = self.config.quant_host

        def on_quant_host() -> Quantized:
            with Remote(qh, self.config) as remote:
                base = remote.provide(self.base.path, self.base.sha256, "base")
                return quantize(qmap, self.profile, base, self.base.sha256, f"{qh.bin_dir}/llama-quantize",
                                self.tc.llama_cpp_commit, out_dir, lake=self.lake, executor=remote,
                                threads=self.spec.threads)

        return ops.retrying(on_quant_host)

    def deploy(self, q: Quantized) -> str:
        """The model file's path where the head runs it (copied and checked on a cluster)."""
        if self.config is None:
            return q.path
        return ops.retrying(lambda: ops.deploy(self.config, q.path, q.file_sha256)).path

    def provenance(self, plan: RunPlan, q: Quantized) -> dict:
        """What a run's ``run`` events record about how it was measured."""
        spec = self.spec
        meter = {"source": spec.power_source, "meter": spec.meter, "rate_hz": spec.meter_rate_hz}
        if spec.meter == "simulated":
            meter["simulator"] = {"power_model": asdict(PowerModel()), "driven_by": "CPU time of each node's processes"}
        return {
            "mqepi": __version__, "llama_cpp_commit": self.tc.llama_cpp_commit, "toolchain": self.tc.version,
            "host": socket.gethostname(), "platform": platform.platform(), "sweep_id": spec.sweep_id,
            "sweep": spec.identity(), "attempt": plan.attempt, "base_sha256": self.base.sha256,
            "file_sha256": q.file_sha256, "map_sha256": q.effective_map_sha256,
            "text": {"sha256": self.text.sha256}, "question_sets": {s.benchmark: s.sha256 for s in self.qsets},
            "tasks": {s.benchmark: s.task_record() for s in self.qsets},
            "nodes": [n.name for n in self.nodes], "rpc_endpoints": self.endpoints, "meter": meter,
            "thermal": self.thermal_note, "cluster": spec.cluster, "hardware": self.hardware.as_dict(),
        }


def written_types(lake, exp: Expansion, base_sha256: str, llama_cpp_commit: str) -> dict[str, dict[str, str]]:
    """file sha256 -> {tensor: type written} of every file the lake records (``quantization`` and
    ``tensor_inventory`` events) for ``exp``'s map made from that base by that llama.cpp commit."""
    qmap = exp.qmap
    made = lake.read("quantization", columns=["map_sha256", "base_sha256", "llama_cpp_commit", "file_sha256"],
                     model=qmap.model, config_id=qmap.config_id)
    made = made.filter((pl.col("map_sha256") == qmap.sha256) & (pl.col("base_sha256") == base_sha256)
                       & (pl.col("llama_cpp_commit") == llama_cpp_commit))
    files = sorted(set(made["file_sha256"]))
    if not files:
        return {}
    inv = lake.read("tensor_inventory", columns=["file_sha256", "tensor", "effective_type"], model=qmap.model,
                    config_id=qmap.config_id)
    out = {}
    for file_sha in files:
        mine = inv.filter(pl.col("file_sha256") == file_sha)
        out[file_sha] = dict(zip(mine["tensor"], mine["effective_type"]))
    return out


def check_written(exp: Expansion, written: dict[str, dict[str, str]], aliases: list[str]) -> None:
    """:class:`SweepError` unless every file in ``written`` (file sha256 -> {tensor: type}) has
    the effective map ``exp`` predicts (:attr:`Expansion.effective_sha256`): the aliases of a
    configuration rest on that prediction, so a difference is a bug to report, never an alias."""
    for file_sha, types in written.items():
        actual = exp.written_sha256(types)
        if actual == exp.effective_sha256:
            continue
        diff = exp.differences(types)
        name, predicted, wrote = diff[0]
        raise SweepError(
            f"{exp.qmap.config_id}: the quantized file {file_sha[:12]} has effective map {actual[:12]}, but the "
            f"expansion predicted {exp.effective_sha256[:12]} ({len(diff)} tensor(s) differ, e.g. {name}: predicted "
            f"{predicted}, written {wrote}); not recording {', '.join(aliases)} as the same model. This is a bug in "
            "mqepi.quant.expansion: please report it")
