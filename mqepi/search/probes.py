"""Sensitivity probes of the energy-aware search: one unit lowered (or raised) to a candidate type.

A *unit* is what the search assigns a type to: one layer (the default), a block of ``k``
consecutive layers (``group``), or a global tensor (``output.weight``; ``token_embd.weight``
too when the model does not tie its embeddings). A *probe* of (unit, type) is the reference
map (every layer at the reference type) with that unit at the candidate type. The global
tensors of every probe are pinned to the reference's (explicit ``token_embd`` / ``output``),
so lowering layer 0 or the last layer does not move them; the global units have probes of
their own. A probe whose unit comes out with the reference's effective tensor types (e.g.
``output`` under Q4_K_M and Q5_K_M: q6_K both) is known without measuring: its effect is 0.

Probes are ordinary configurations (config ids ``probe-<ref>-<unit>-<type>``, kind ``probe``):
quantized by :func:`mqepi.quant.quantize.quantize` and measured by
:func:`mqepi.quality.evaluate.evaluate` (perplexity and KLD against the F16 base on the fixed
held-out text; no benchmark, no throughput), their events in the lake. A probe whose map
(by hash) was measured in the lake with the same text, context and chunks is not measured
again: a probe set is resumable and cached by map hash. The probe GGUFs are deleted once
measured (the events keep their hash and types).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mqepi.errors import MqepiError
from mqepi.quality import evaluate as ev
from mqepi.quality.scoring import ScoringError
from mqepi.quant import assets, ggml, maps, toolchain
from mqepi.quant.expansion import expand
from mqepi.quant.maps import PROBE_PREFIX, LayerGroup, ModelProfile, QuantMap
from mqepi.quant.quantize import quantize

#: Candidate types when none are named: the paper's six, so every paper map can be predicted.
PAPER_TYPES = ("Q2_K", "Q3_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


class SearchError(MqepiError):
    """The search cannot go on (bad settings, missing probes, an infeasible budget)."""


@dataclass(frozen=True)
class Unit:
    """What the search assigns one type to: layers, or one global tensor (``tensor``)."""

    name: str
    layers: tuple[int, ...] = ()
    tensor: str | None = None  # "output" | "token_embd"


@dataclass(frozen=True)
class Probe:
    unit: Unit
    qtype: str
    qmap: QuantMap
    free: bool = False  # the unit's effective types equal the reference's: effect 0, not measured


@dataclass
class ProbeSettings:
    """What a probe set measures (its identity in the lake: the model, the text, context, chunks)."""

    model: str = "smollm2-135m"
    #: Q8_0: the rest of each probe near the base, so a probe measures the unit's own error, not its
    #: cancellation with the reference's (docs/search.md, "Why the reference is Q8_0")
    reference: str = "Q8_0"
    candidates: tuple[str, ...] = PAPER_TYPES
    group: int = 1  # layers per unit
    ppl_context: int = 128
    ppl_chunks: int = 8
    threads: int | None = None

    def __post_init__(self) -> None:
        for t in (self.reference, *self.candidates):
            if t not in ggml.FTYPE_BASE:
                raise SearchError(f"type {t!r}: not a llama-quantize file type mqepi expands "
                                  f"(known: {', '.join(sorted(ggml.FTYPE_BASE))})")
        if self.group < 1:
            raise SearchError(f"group = {self.group}: at least 1 layer per unit")
        self.candidates = tuple(dict.fromkeys(t for t in self.candidates if t != self.reference))


@dataclass
class ProbeResult:
    """A probe's measurement: the lake's numbers of its latest finished run (or 0 if free)."""

    config_id: str
    unit: str
    qtype: str
    kld_mean: float
    kld_mean_stderr: float | None = None
    ppl_ratio: float | None = None
    run_id: str | None = None
    measured_now: bool = False
    seconds: float = 0.0


@dataclass
class ProbeSet:
    settings: ProbeSettings
    units: list[Unit]
    reference: ProbeResult
    results: dict[tuple[str, str], ProbeResult] = field(default_factory=dict)  # (unit, type) -> result

    def delta(self, unit: str, qtype: str) -> float:
        """The predicted change of mean KLD when ``unit`` goes from the reference to ``qtype``."""
        if qtype == self.settings.reference:
            return 0.0
        try:
            return self.results[(unit, qtype)].kld_mean - self.reference.kld_mean
        except KeyError:
            raise SearchError(f"no probe of unit {unit} at {qtype} (probed types: "
                              f"{', '.join(self.settings.candidates)})") from None


def tag(qtype: str) -> str:
    """A type as it appears in config ids: ``Q4_K_M`` -> ``q4km``."""
    return re.sub(r"[^a-z0-9]", "", qtype.lower())


def units(profile: ModelProfile, group: int = 1) -> list[Unit]:
    """The layer units (``group`` consecutive layers each) and the global tensor units."""
    out = []
    for lo in range(0, profile.n_layers, group):
        layers = tuple(range(lo, min(lo + group, profile.n_layers)))
        name = f"L{lo:02d}" if len(layers) == 1 else f"L{lo:02d}-{layers[-1]:02d}"
        out.append(Unit(name, layers))
    names = {t.name for t in profile.tensors}
    if "output.weight" in names or profile.tied_embeddings:
        out.append(Unit("output", tensor="output"))
    if not profile.tied_embeddings and "token_embd.weight" in names:
        out.append(Unit("token_embd", tensor="token_embd"))
    return out


def assigned_map(profile: ModelProfile, config_id: str, types: dict[str, str], unit_list: list[Unit],
                 reference: str, strategy: str = "") -> QuantMap:
    """The map giving each unit of ``unit_list`` its type in ``types`` (unit name -> type;
    units not named: the reference), the global tensors explicit; consecutive layers of one
    type form one group."""
    per_layer = {layer: types.get(u.name, reference) for u in unit_list for layer in u.layers}
    groups: list[LayerGroup] = []
    run: list[int] = []
    for layer in range(profile.n_layers):
        if run and per_layer[layer] != per_layer[run[-1]]:
            groups.append(LayerGroup(f"g{len(groups)}-L{run[0]:02d}", tuple(run), per_layer[run[-1]]))
            run = []
        run.append(layer)
    groups.append(LayerGroup(f"g{len(groups)}-L{run[0]:02d}", tuple(run), per_layer[run[-1]]))
    output = types.get("output", reference)
    token_embd = output if profile.tied_embeddings else types.get("token_embd", reference)
    return QuantMap(config_id, profile.id, tuple(groups), token_embd, output, strategy)


def _unit_types(qmap: QuantMap, profile: ModelProfile, unit: Unit) -> list[tuple[str, str]]:
    """The effective type of every tensor of ``unit`` under ``qmap``."""
    exp = expand(qmap, profile)
    if unit.tensor == "output":
        names = {"output.weight", "token_embd.weight"} if profile.tied_embeddings else {"output.weight"}
        return sorted((t.name, t.effective_type) for t in exp.tensors if t.name in names)
    if unit.tensor == "token_embd":
        return sorted((t.name, t.effective_type) for t in exp.tensors if t.name == "token_embd.weight")
    return sorted((t.name, t.effective_type) for t in exp.tensors if t.layer in unit.layers)


def plan(profile: ModelProfile, settings: ProbeSettings) -> tuple[QuantMap, list[Unit], list[Probe]]:
    """The reference map, the units and every probe (free ones flagged)."""
    unit_list = units(profile, settings.group)
    ref_tag = tag(settings.reference)
    reference = assigned_map(profile, f"{PROBE_PREFIX}{ref_tag}-ref", {}, unit_list, settings.reference,
                             f"search reference: every layer {settings.reference}")
    probes = []
    for unit in unit_list:
        ref_types = _unit_types(reference, profile, unit)
        for qtype in settings.candidates:
            qmap = assigned_map(profile, f"{PROBE_PREFIX}{ref_tag}-{unit.name}-{tag(qtype)}", {unit.name: qtype},
                                unit_list, settings.reference, f"probe: {unit.name} at {qtype}, the rest {settings.reference}")
            probes.append(Probe(unit, qtype, qmap, free=_unit_types(qmap, profile, unit) == ref_types))
    return reference, unit_list, probes


def measured(lake, settings: ProbeSettings, text_sha256: str) -> dict[str, dict]:
    """effective_map_sha256 -> the latest finished KLD measurement in the lake of a file of those
    tensor types on this text, context and chunks (any config id: a probe measured under
    another name, or a paper configuration of the same tensors, counts)."""
    if not lake.exists():
        return {}
    kld = lake.read("kld").filter((pl.col("model") == settings.model) & (pl.col("text_sha256") == text_sha256)
                                  & (pl.col("context") == settings.ppl_context) & (pl.col("chunks") == settings.ppl_chunks))
    if kld.is_empty():
        return {}
    runs = lake.read("run").filter(pl.col("status") == "finished").select("model", "config_id", "run_id").unique()
    configs = lake.read("quantization").select("model", "config_id", "effective_map_sha256").unique()
    rows = (kld.join(runs, on=["model", "config_id", "run_id"]).join(configs, on=["model", "config_id"])
            .sort("recorded_at_ns").unique("effective_map_sha256", keep="last"))
    return {r["effective_map_sha256"]: r for r in rows.iter_rows(named=True)}


def _result(probe_id: str, unit: str, qtype: str, row: dict, now: bool, seconds: float = 0.0) -> ProbeResult:
    return ProbeResult(probe_id, unit, qtype, row["kld_mean"], row.get("kld_mean_stderr"), row.get("ppl_ratio"),
                       row.get("run_id"), now, seconds)


def measure(qmap: QuantMap, profile: ModelProfile, lake, settings: ProbeSettings, work: Path,
            progress: Callable[[str], None]) -> dict:
    """Quantize ``qmap`` (events in the lake), measure its perplexity and KLD, delete the GGUF."""
    tc, base = toolchain.ensure(), assets.ensure_base_model()
    q = quantize(qmap, profile, base.path, base.sha256, tc.tool("llama-quantize"), tc.llama_cpp_commit, work,
                 lake=lake, threads=settings.threads)
    try:
        quality = ev.Settings(benchmarks={}, ppl_context=settings.ppl_context, ppl_chunks=settings.ppl_chunks,
                              kld=True, throughput=False, threads=settings.threads)
        result = ev.evaluate(q.path, qmap.model, qmap.config_id, lake, quality, base_path=base.path,
                             base_sha256=base.sha256, cache=toolchain.cache_root(), progress=lambda line: None)
    finally:
        Path(q.path).unlink(missing_ok=True)
    if not result.kld:
        raise SearchError(f"{qmap.config_id}: no KLD measured")
    return {**result.kld, "run_id": result.run_id}


@dataclass
class ProbePlan:
    """What a probe set costs before it runs (``mqepi search --plan``)."""

    units: int
    probes: int
    free: int
    distinct: int  # distinct tensor sets among the probes that are not free
    to_measure: int  # the reference included, when not in the lake
    seconds_each: float
    basis: str  # where seconds_each comes from

    @property
    def seconds(self) -> float:
        return self.to_measure * self.seconds_each

    def describe(self) -> str:
        return (f"{self.units} units, {self.probes} probes: {self.free} with the reference's tensors, "
                f"{self.probes - self.free} others of {self.distinct} distinct tensor sets; {self.to_measure} to measure, "
                f"the rest in the lake: about {self.seconds / 60:.0f} min at {self.seconds_each:.0f} s each ({self.basis})")


#: Seconds per probe (quantize + perplexity + KLD of SmolLM2 at the demo's text) without history.
DEFAULT_PROBE_S = 10.0


def probe_seconds(lake) -> tuple[float, str]:
    """The median wall time of the lake's finished probe runs plus their quantization, or the default."""
    if not lake.exists():
        return DEFAULT_PROBE_S, "no probe measured yet: a default"
    runs = lake.read("run", columns=["config_id", "run_id", "status", "recorded_at_ns"]).filter(
        pl.col("config_id").str.starts_with(PROBE_PREFIX))
    spans = runs.group_by("run_id").agg((pl.col("recorded_at_ns").max() - pl.col("recorded_at_ns").min()) / 1e9,
                                         (pl.col("status") == "finished").any().alias("done")).filter(pl.col("done"))
    if spans.height < 3:
        return DEFAULT_PROBE_S, "fewer than 3 probes measured: a default"
    quant = lake.read("quantization", columns=["config_id", "duration_s"]).filter(
        pl.col("config_id").str.starts_with(PROBE_PREFIX))["duration_s"].median() or 0.0
    return float(spans["recorded_at_ns"].median()) + quant, f"median of {spans.height} probes measured"


def _prepare(lake, settings: ProbeSettings):
    profile = maps.load_profile(settings.model)
    if settings.model != assets.MODEL_ID:
        raise SearchError(f"probes quantize the embedded model {assets.MODEL_ID!r} here; {settings.model!r} has no local base")
    reference, unit_list, probes = plan(profile, settings)
    known = measured(lake, settings, ev.heldout_text(toolchain.cache_root()).sha256)
    eff = {p.qmap.config_id: expand(p.qmap, profile).effective_sha256 for p in [*probes, Probe(None, "", reference)]}
    todo = list(dict.fromkeys(eff[q.config_id] for q in [reference, *(p.qmap for p in probes if not p.free)]
                              if eff[q.config_id] not in known))
    each, basis = probe_seconds(lake)
    forecast = ProbePlan(len(unit_list), len(probes), sum(p.free for p in probes), len(set(eff.values())) - 1,
                         len(todo), each, basis)
    return profile, reference, unit_list, probes, known, eff, todo, forecast


def forecast(lake, settings: ProbeSettings) -> ProbePlan:
    """What :func:`run_probes` would measure, and about how long it takes."""
    return _prepare(lake, settings)[-1]


def run_probes(lake, settings: ProbeSettings, progress: Callable[[str], None] = lambda line: None) -> ProbeSet:
    """Measure the reference and every probe whose tensors were not measured yet (in the lake,
    or by another probe of the same effective types); the whole probe set."""
    profile, reference, unit_list, probes, known, eff, todo, fc = _prepare(lake, settings)
    progress(fc.describe())
    work, start, done = toolchain.cache_root() / "search" / "probes", time.perf_counter(), [0]

    def get(qmap: QuantMap, unit: str, qtype: str) -> ProbeResult:
        key = eff[qmap.config_id]
        if key in known:
            return _result(qmap.config_id, unit, qtype, known[key], False)
        t0 = time.perf_counter()
        try:
            row = measure(qmap, profile, lake, settings, work, progress)
        except ScoringError as exc:  # a tool's output without its summary: its run is recorded failed; once more
            progress(f"warning: {qmap.config_id}: {exc}; measuring it again (a second failure stops the probes)")
            row = measure(qmap, profile, lake, settings, work, progress)
        known[key] = row
        done[0] += 1
        left = (time.perf_counter() - start) / done[0] * (len(todo) - done[0])
        progress(f"[{done[0]}/{len(todo)}] {qmap.config_id}: KLD {row['kld_mean']:.5f} "
                 f"({time.perf_counter() - t0:.0f} s; about {left / 60:.1f} min left)")
        return _result(qmap.config_id, unit, qtype, row, True, time.perf_counter() - t0)

    out = ProbeSet(settings, unit_list, get(reference, "reference", settings.reference))
    for p in probes:
        out.results[(p.unit.name, p.qtype)] = (
            ProbeResult(p.qmap.config_id, p.unit.name, p.qtype, out.reference.kld_mean) if p.free
            else get(p.qmap, p.unit.name, p.qtype))
    return out
