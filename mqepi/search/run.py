"""The search end to end as library calls: probe -> fit -> optimise -> maps (-> verify by a sweep).

The optimum is exact for the predicted quantities (:mod:`mqepi.search.optimise`, an ILP over
the per-unit type choices); what it is worth is what the verification measures. Besides the
searched maps the search writes its baselines: a KLD-only search (energy ignored: the most
KLD-sensitive units get the better types first, whatever they cost, until the budget holds)
and a random map of the same predicted size, so one sweep measures all of them beside the
paper's configurations.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mqepi.quality.evaluate import heldout_text
from mqepi.quant import maps, toolchain
from mqepi.quant.expansion import expand
from mqepi.quant.maps import PROBE_PREFIX, SEARCH_PREFIX, ModelProfile, QuantMap
from mqepi.results import sql
from mqepi.results.report.searched import file_provenances
from mqepi.search import models, optimise
from mqepi.search import probes as pr
from mqepi.search.probes import ProbeSet, ProbeSettings, SearchError, Unit, assigned_map, run_probes


@dataclass
class SearchSettings:
    """What to search (``mqepi search`` flags): the probes, the budget and the constraints."""

    probe: ProbeSettings = field(default_factory=ProbeSettings)
    budget_kld: float | None = None  # None: the KLD of the uniform map at ``budget_like`` (:func:`default_budget`)
    budget_like: str = "Q4_K_M"  # llama.cpp's usual default type
    max_size_bytes: int | None = None
    types: tuple[str, ...] | None = None  # allowed types; None: the reference and the candidates
    pinned: dict[str, str] = field(default_factory=dict)  # unit name -> type
    verify: int = 3  # searched maps written (the optimum and frontier neighbours)
    calibrate: bool = True  # scale predictions by the measured searched maps' ratio (models.Calibration)
    seed: int = 1234


@dataclass
class Candidate:
    """A map the search writes, with its predictions."""

    qmap: QuantMap
    role: str  # searched | kld-only | random
    predicted_kld: float
    data_bytes: int
    predicted_j_per_token: float | None


@dataclass
class SearchResult:
    settings: SearchSettings
    probes: ProbeSet
    cost: models.CostModel
    check: models.QualityCheck
    frontier: list[Candidate]
    written: list[Candidate]
    budget_kld: float
    lake_state: str
    calibration: models.Calibration | None = None

    @property
    def scale(self) -> float:
        return self.calibration.ratio if self.calibration else 1.0

    def summary(self) -> dict:
        return {"budget_kld": self.budget_kld, "reference_kld": self.probes.reference.kld_mean,
                "cost_model": self.cost.describe(), "quality_check": self.check.describe(),
                "calibration": self.calibration.describe() if self.calibration else None, "kld_scale": self.scale,
                "kld_check": {"n": self.check.n, "spearman": self.check.spearman,
                              "median_relative_error": self.check.median_relative_error},
                "frontier": [_row(c) for c in self.frontier], "written": [_row(c) for c in self.written]}


def _row(c: Candidate) -> dict:
    return {"config_id": c.qmap.config_id, "role": c.role, "predicted_kld": round(c.predicted_kld, 6),
            "data_bytes": c.data_bytes, "predicted_j_per_token": c.predicted_j_per_token,
            "layers": {g.quant: len(g.layers) for g in c.qmap.groups} | {}}


def allowed_types(settings: SearchSettings) -> list[str]:
    """The types the search may use; every one probed (or the reference)."""
    probed = (settings.probe.reference, *settings.probe.candidates)
    types = list(dict.fromkeys(settings.types or probed))
    for t in types:
        if t not in probed:
            raise SearchError(f"--types {t}: not probed (the reference {settings.probe.reference} and the candidates "
                              f"{', '.join(settings.probe.candidates)}); add it to --candidates")
    return types


def check_settings(settings: SearchSettings, profile: ModelProfile) -> list[str]:
    """Every error a search can know before it measures anything; the allowed types."""
    types = allowed_types(settings)
    names = [u.name for u in pr.units(profile, settings.probe.group)]
    for unit, qtype in settings.pinned.items():
        if unit not in names:
            raise SearchError(f"--pin {unit}={qtype}: {unit!r} is not a unit of this search ({names[0]} ... "
                              f"{names[-1]}: layers{f' in blocks of {settings.probe.group}' if settings.probe.group > 1 else ''}"
                              ", and the global tensors)")
        if qtype not in types:
            raise SearchError(f"--pin {unit}={qtype}: {qtype} is not an allowed type ({', '.join(types)})")
    if settings.budget_kld is not None and not (settings.budget_kld >= 0 and math.isfinite(settings.budget_kld)):
        raise SearchError(f"--budget-kld {settings.budget_kld}: a finite KLD of 0 or more (nats per token)")
    if settings.max_size_bytes is not None and settings.max_size_bytes <= 0:
        raise SearchError(f"--max-size-mb: {settings.max_size_bytes / 1e6} MB is not a positive size")
    if settings.verify < 1:
        raise SearchError(f"--verify {settings.verify}: at least 1 map")
    if settings.budget_kld is None and settings.budget_like not in (settings.probe.reference, *settings.probe.candidates):
        raise SearchError(f"--budget-like {settings.budget_like}: not probed (the reference {settings.probe.reference} and "
                          f"the candidates {', '.join(settings.probe.candidates)}); add it to --candidates or give --budget-kld")
    return types


def default_budget(probes: ProbeSet, profile: ModelProfile, measured: list[tuple[str, str, float]],
                   qtype: str) -> tuple[float, str]:
    """(budget, why): the KLD of the uniform map at ``qtype``: measured on the probes' text where
    the lake has a map of its tensor types (``measured``: :func:`measured_kld`), else predicted."""
    uniform = assigned_map(profile, "budget", {u.name: qtype for u in probes.units}, probes.units,
                           probes.settings.reference)
    want = expand(uniform, profile).effective_sha256
    for config_id, map_json, kld in measured:
        qmap = maps.parse_map(json.loads(map_json), where=config_id, profile=profile)
        if expand(qmap, profile).effective_sha256 == want:
            return kld, f"the measured KLD of uniform {qtype} ({config_id})"
    return models.predict_kld(probes, uniform), f"the predicted KLD of uniform {qtype} (not measured on this text)"


def options(probes: ProbeSet, nbytes: dict, cost: models.CostModel, types: list[str],
            pinned: dict[str, str], scale: float = 1.0) -> list[list[optimise.Option]]:
    """Each unit's options: (type, cost = J/byte x bytes, loss = scale x KLD change, bytes)."""
    return [[optimise.Option(t, cost.j_per_byte * nbytes[(u.name, t)], scale * probes.delta(u.name, t),
                             nbytes[(u.name, t)])
             for t in ([pinned[u.name]] if u.name in pinned else types)] for u in probes.units]


def _candidate(profile: ModelProfile, probes: ProbeSet, labels, role: str, cost: models.CostModel,
               strategy: str, scale: float = 1.0) -> Candidate:
    types = {u.name: t for u, t in zip(probes.units, labels)}
    draft = assigned_map(profile, "draft", types, probes.units, probes.settings.reference, strategy)
    digest = draft.layer_types_sha256[:10]
    prefix = {"searched": "", "kld-only": "kldonly-", "random": "random-"}[role]
    qmap = assigned_map(profile, f"{SEARCH_PREFIX}{prefix}{digest}", types, probes.units, probes.settings.reference, strategy)
    data = expand(qmap, profile).data_bytes
    return Candidate(qmap, role, models.predict_kld(probes, qmap, scale), data, cost.j_per_token(data))


def kld_only(units: list[list[optimise.Option]], max_loss: float) -> tuple[str, ...]:
    """The energy-blind baseline: from each unit's largest-loss option, upgrade the unit whose
    best remaining option lowers the loss most (bytes ignored) until the budget holds."""
    pick = [max(opts, key=lambda o: o.loss) for opts in units]
    while sum(o.loss for o in pick) > max_loss:
        gains = [(pick[i].loss - min(opts, key=lambda o: o.loss).loss, i) for i, opts in enumerate(units)]
        gain, i = max(gains)
        if gain <= 0:
            break
        pick[i] = min(units[i], key=lambda o: o.loss)
    return tuple(o.label for o in pick)


def random_like(units: list[list[optimise.Option]], size: int, seed: int, tries: int = 20000) -> tuple[str, ...]:
    """A seeded random assignment whose bytes are closest to ``size`` over ``tries`` draws."""
    rng = random.Random(seed)
    best, gap = None, None
    for _ in range(tries):
        pick = [rng.choice(opts) for opts in units]
        g = abs(sum(o.size_bytes for o in pick) - size)
        if gap is None or g < gap:
            best, gap = pick, g
    return tuple(o.label for o in best)


def measured_kld(lake, probes: ProbeSet, text_sha256: str) -> list[tuple[str, str, float]]:
    """(config_id, map_json, latest measured mean KLD) of every non-probe map measured on the probes' text."""
    s = probes.settings
    kld = lake.read("kld").filter((pl.col("model") == s.model) & (pl.col("text_sha256") == text_sha256)
                                  & (pl.col("context") == s.ppl_context) & (pl.col("chunks") == s.ppl_chunks)
                                  & ~pl.col("config_id").str.starts_with(PROBE_PREFIX))
    cfg = lake.read("quant_config").sort("recorded_at_ns").unique(["model", "config_id"], keep="last")
    rows = kld.sort("recorded_at_ns").unique("config_id", keep="last").join(cfg, on=["model", "config_id"])
    return [(r["config_id"], r["map_json"], r["kld_mean"]) for r in rows.sort("config_id").iter_rows(named=True)]


def run_search(lake, settings: SearchSettings, progress: Callable[[str], None] = lambda line: None) -> SearchResult:
    """Probe (resumable), fit the models, optimise, and pick the maps to write."""
    profile = maps.load_profile(settings.probe.model)
    types = check_settings(settings, profile)
    probes = run_probes(lake, settings.probe, progress)
    measured = measured_kld(lake, probes, heldout_text(toolchain.cache_root()).sha256)
    check = models.check_quality(probes, profile, measured)
    progress(check.describe())
    con = sql.connect(lake)
    cost = models.fit_cost(models.measured_configs(con, profile.id), profile)
    progress(cost.describe())
    provenances = file_provenances(profile.id, {c: maps.parse_map(json.loads(m), where=c, profile=profile).sha256
                                                for c, m, _ in measured if c.startswith(SEARCH_PREFIX)})
    calibration = models.calibrate(probes, profile, measured, provenances) if settings.calibrate else None
    progress(calibration.describe() if calibration else
             "calibration: none (" + ("--no-calibrate" if not settings.calibrate else
                                      "no searched map measured on this text yet") + "): first-order predictions as they are")
    scale = calibration.ratio if calibration else 1.0
    nbytes = models.unit_bytes(profile, probes.units, types)
    units = options(probes, nbytes, cost, types, settings.pinned, scale)
    if settings.budget_kld is not None:
        budget = settings.budget_kld
    else:
        budget, why = default_budget(probes, profile, measured, settings.budget_like)
        progress(f"budget: KLD <= {budget:.5g}, {why}")
    rest = nbytes[("rest", settings.probe.reference)]
    cap = None if settings.max_size_bytes is None else settings.max_size_bytes - rest
    offset = probes.reference.kld_mean
    try:
        best = optimise.minimise(units, budget, offset_loss=offset, max_size_bytes=cap)
    except optimise.InfeasibleError as exc:
        least = (f"the least predicted KLD with these types{' and this size cap' if cap else ''} is "
                 f"{exc.smallest_loss:.6g}" if exc.smallest_loss is not None else
                 f"no map fits the size cap (the smallest is {(exc.smallest_size_bytes + rest) / 1e6:.1f} MB)")
        raise SearchError(f"no map meets --budget-kld {budget:.6g}: {least}") from None
    front = optimise.frontier(units, max_size_bytes=cap, points=25, offset_loss=offset)
    frontier = [_candidate(profile, probes, s.labels, "searched", cost, "search: predicted frontier", scale)
                for s in front]
    chosen = [_candidate(profile, probes, best.labels, "searched",
                         cost, f"search: least predicted J/token at predicted KLD <= {budget:.5g}", scale)]
    below = sorted((c for c in frontier if c.predicted_kld <= budget and c.qmap.config_id != chosen[0].qmap.config_id),
                   key=lambda c: -c.predicted_kld)
    chosen += below[: max(settings.verify - 1, 0)]
    chosen.append(_candidate(profile, probes, kld_only(units, budget - offset), "kld-only", cost,
                             f"baseline: KLD-only search (bytes ignored) at predicted KLD <= {budget:.5g}", scale))
    chosen.append(_candidate(profile, probes, random_like(units, best.size_bytes, settings.seed), "random", cost,
                             f"baseline: random map of the searched map's size (seed {settings.seed})", scale))
    state = hashlib.sha256(json.dumps(lake.versions(), sort_keys=True).encode()).hexdigest()[:16]
    return SearchResult(settings, probes, cost, check, frontier, chosen, budget, state, calibration)


def write_maps(result: SearchResult, folder: Path | None = None) -> list[Path]:
    """The chosen maps as ordinary quant maps ``search-*.json`` with their provenance."""
    s = result.settings
    folder = folder or maps.maps_dir(s.probe.model)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in result.written:
        doc = c.qmap.to_dict()
        doc["provenance"] = {
            "tool": "mqepi search", "role": c.role, "reference": s.probe.reference,
            "candidates": list(s.probe.candidates), "group": s.probe.group, "units": len(result.probes.units),
            "text": {"context": s.probe.ppl_context, "chunks": s.probe.ppl_chunks},
            "reference_kld": result.probes.reference.kld_mean, "budget_kld": result.budget_kld,
            "max_size_bytes": s.max_size_bytes, "pinned": s.pinned,
            "predicted_kld": c.predicted_kld, "data_bytes": c.data_bytes, "predicted_j_per_token": c.predicted_j_per_token,
            "cost_model": result.cost.describe(), "kld_model": result.check.describe(), "lake_versions_sha256": result.lake_state,
            "kld_scale": result.scale,
            "calibration": result.calibration.describe() if result.calibration else None,
        }
        path = folder / f"{c.qmap.config_id}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        maps.load_map(path, maps.load_profile(s.probe.model))  # what is written reads back as a valid map
        out.append(path)
    return out


__all__ = ["SearchSettings", "SearchResult", "Candidate", "run_search", "write_maps", "Unit"]
