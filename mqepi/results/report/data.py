"""The report's data: the analysis views and the base tables it reads, as polars frames.

:class:`ReportData` holds one frame per view or query, conformed to its columns: the
analysis views as the view contract (:data:`mqepi.analysis.contract.VIEWS`) states them,
the report's own queries (:data:`INVENTORY`, :data:`RUNS`, ...) as stated here. Everything
after that is plain Python over those frames, so the analyses are tested on frames built
directly (:meth:`ReportData.from_frames`); :func:`mqepi.results.report.query.collect` fills
them from a lake.

:func:`layer_group_bits` turns a tensor inventory into the bits/weight of the early, middle
and late layers and the bytes read per generated token (RQ3, RQ5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.analysis.contract import UNKNOWN_HARDWARE, VIEWS
from mqepi.quant.maps import group_bounds
from mqepi.results.report.labels import LAYER_GROUPS, lab_first
from mqepi.rig.hardware import describe

_F, _I, _S, _B = pl.Float64, pl.Int64, pl.Utf8, pl.Boolean

#: The analysis views the report reads, with their columns and types from the view contract.
CONTRACT_VIEWS = {name: VIEWS[name] for name in ("config_summary", "matched_pairs", "pareto_frontier", "run_metrics",
                                                  "answer_flips", "kld_frontier")}
#: Tensor rows of the one file chosen per (model, config_id, origin) (see :mod:`~mqepi.results.report.query`).
INVENTORY = {
    "model": _S, "config_id": _S, "origin": _S, "file_sha256": _S, "tensor": _S, "layer": pl.Int32,
    "layer_group": _S, "effective_type": _S, "n_elements": _I, "n_bytes": _I,
}
#: ``provenance_json``: the map's ``provenance`` object (maps written by ``mqepi search``; NULL otherwise).
QUANT_CONFIG = {"model": _S, "config_id": _S, "origin": _S, "kind": _S, "n_layers": pl.Int32, "map_sha256": _S,
                "provenance_json": _S}
QUANTIZATION = {
    "model": _S, "config_id": _S, "origin": _S, "llama_cpp_commit": _S, "base_sha256": _S, "base_ftype": _S,
    "file_sha256": _S, "file_size_bytes": _I, "bits_per_weight": _F, "host": _S, "producer": _S,
}
RUNS = {
    "model": _S, "config_id": _S, "run_id": _S, "origin": _S, "repeat": _I, "power_source": _S, "host": _S,
    "file_sha256": _S, "producer": _S, "provenance_json": _S, "hardware_id": _S,
}
#: The frames that carry hardware_id (:meth:`ReportData.for_hardware` filters them).
HARDWARE_FRAMES = ("config_summary", "matched_pairs", "pareto_frontier", "run_metrics", "answer_flips", "kld_frontier",
                   "runs")
#: How the answers were scored, per (origin, model, benchmark): the scoring rule
#: (``benchmark_answer.scoring``, NULL for version 1), the protocol's deviation from
#: lm-evaluation-harness (NULL: none), the shots, the task file's version (run provenance
#: ``tasks``; NULL where not recorded), with how many answers each and the fewest and most
#: questions one run answered.
SCORING = {"origin": _S, "model": _S, "benchmark": _S, "scoring": _S, "deviation": _S, "shots": _I,
           "task_version": _S, "n_answers": _I, "min_questions": _I, "max_questions": _I}
QUESTION_SETS = {"origin": _S, "model": _S, "benchmark": _S, "question_set_sha256": _S, "n_runs": _I, "n_questions": _I}
#: Columns of :func:`layer_group_bits`.
LAYER_BITS = {
    "model": _S, "config_id": _S, "origin": _S, "file_sha256": _S, "n_layers": _I,
    **{f"{g}_bpw": _F for g in LAYER_GROUPS}, **{f"{g}_n_elements": _I for g in LAYER_GROUPS},
    "bytes_per_token": _I, "data_bytes": _I, "moe": _B,
}


def conform(df: pl.DataFrame | None, schema: dict[str, Any]) -> pl.DataFrame:
    """``df`` with every column of ``schema`` (missing ones as typed nulls), cast to the
    schema's dtypes, schema columns first. ``None`` gives an empty frame."""
    if df is None:
        return pl.DataFrame(schema=schema)
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in schema.items() if c not in df.columns]
    if missing:
        df = df.with_columns(missing)
    df = df.with_columns([pl.col(c).cast(t, strict=False) for c, t in schema.items()])
    return df.select([*schema, *(c for c in df.columns if c not in schema)])


def group_filter(df: pl.DataFrame, origin: str, model: str, power_source: str) -> pl.DataFrame:
    """The rows of one (origin, model, power source) group."""
    return df.filter((pl.col("origin") == origin) & (pl.col("model") == model) & (pl.col("power_source") == power_source))


@dataclass(frozen=True)
class LakeSnapshot:
    """Which lake files the report read: their number and a sha256 over their sorted
    names relative to the lake root (file names are content hashes, so the names identify
    the data)."""

    uri: str
    n_files: int
    sha256: str
    versions: dict[str, int] | None = None  # event type -> Delta table version read


@dataclass
class ReportData:
    """Everything the report needs, as polars frames (one set of columns each)."""

    config_summary: pl.DataFrame
    matched_pairs: pl.DataFrame
    pareto_frontier: pl.DataFrame
    run_metrics: pl.DataFrame
    answer_flips: pl.DataFrame
    kld_frontier: pl.DataFrame
    inventory: pl.DataFrame
    quant_config: pl.DataFrame
    quantization: pl.DataFrame
    runs: pl.DataFrame
    question_sets: pl.DataFrame
    scoring: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SCORING))
    snapshot: LakeSnapshot | None = None
    settings: dict = field(default_factory=dict)
    origin: str = "all"
    bandwidth_gbs: float | None = None

    @classmethod
    def from_frames(cls, *, config_summary=None, matched_pairs=None, pareto_frontier=None, run_metrics=None,
                    answer_flips=None, kld_frontier=None, inventory=None, quant_config=None, quantization=None, runs=None,
                    question_sets=None, scoring=None, snapshot: LakeSnapshot | None = None,
                    settings: dict | None = None, origin: str = "all", bandwidth_gbs: float | None = None) -> ReportData:
        """Build from frames shaped like the views; absent frames or columns become empty / null."""
        views = {name: conform(frame, CONTRACT_VIEWS[name]) for name, frame in (
            ("config_summary", config_summary), ("matched_pairs", matched_pairs), ("pareto_frontier", pareto_frontier),
            ("run_metrics", run_metrics), ("answer_flips", answer_flips), ("kld_frontier", kld_frontier))}
        return cls(
            **views, inventory=conform(inventory, INVENTORY), quant_config=conform(quant_config, QUANT_CONFIG),
            quantization=conform(quantization, QUANTIZATION), runs=conform(runs, RUNS),
            question_sets=conform(question_sets, QUESTION_SETS), scoring=conform(scoring, SCORING), snapshot=snapshot,
            settings=dict(settings or {}), origin=origin, bandwidth_gbs=bandwidth_gbs,
        )

    @property
    def seed(self) -> int:
        return self.settings.get("seed", DEFAULT_SEED)

    @property
    def bootstrap(self) -> int:
        """Bootstrap resamples of the views' intervals."""
        return self.settings.get("bootstrap", DEFAULT_BOOTSTRAP)

    def groups(self) -> list[tuple[str, str, str]]:
        """(origin, model, power_source) of every configuration summary, lab first."""
        keys = self.config_summary.select("origin", "model", "power_source").unique().rows()
        return sorted(keys, key=lambda k: lab_first(*k))

    def hardware(self) -> list[tuple[str, str]]:
        """(hardware_id, short description) of every hardware with a configuration summary (or,
        without one, a run), sorted by id; the description from a run's provenance ``hardware``
        (node model, RAM, cooling) where recorded."""
        ids = set(self.config_summary["hardware_id"].drop_nulls().to_list())
        runs = self.runs.with_columns(pl.col("hardware_id").fill_null(UNKNOWN_HARDWARE))
        ids = ids or set(runs["hardware_id"].to_list())
        profiles: dict[str, dict] = {}
        for hw, raw in runs.select("hardware_id", "provenance_json").rows():
            if hw in ids and hw not in profiles:
                try:
                    prov = json.loads(raw or "{}")
                except ValueError:
                    prov = {}
                if isinstance(prov, dict) and isinstance(prov.get("hardware"), dict):
                    profiles[hw] = prov["hardware"]
        return [(hw, describe(profiles.get(hw), hw) if hw != UNKNOWN_HARDWARE
                 else f"hardware not recorded ({UNKNOWN_HARDWARE}: runs written before runs carried a hardware_id)")
                for hw in sorted(ids)]

    def for_hardware(self, hardware_id: str) -> ReportData:
        """The same data restricted to one hardware (its runs, summaries, pairs, frontier, flips)."""
        def mine(df: pl.DataFrame) -> pl.DataFrame:
            return df.filter(pl.col("hardware_id").fill_null(UNKNOWN_HARDWARE) == hardware_id)
        return replace(self, **{name: mine(getattr(self, name)) for name in HARDWARE_FRAMES})

    def origins(self) -> list[str]:
        return list(dict.fromkeys(g[0] for g in self.groups()))

    def power_sources(self) -> list[str]:
        sources = set(self.config_summary["power_source"].drop_nulls().to_list())
        sources |= set(self.runs["power_source"].drop_nulls().to_list())
        return sorted(sources)

    def layer_bits(self) -> pl.DataFrame:
        """Per (model, config_id, origin): bits/weight of the early, middle and late layers and
        bytes read per generated token (see :func:`layer_group_bits`)."""
        cached = self.__dict__.get("_layer_bits")
        if cached is None:
            cached = layer_group_bits(self.inventory, self.quant_config)
            self.__dict__["_layer_bits"] = cached
        return cached


# ------------------------------------------------------------------ layer groups and bytes


def layer_group_bits(inventory: pl.DataFrame, quant_config: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (model, config_id, origin) of ``inventory`` (one file each):

    * ``early_bpw``, ``middle_bpw``, ``late_bpw``: 8 * bytes / weights over the block tensors
      (``layer`` not null) of the early, middle and late layers, positional as
      :func:`mqepi.quant.maps.group_bounds` (``n_layers`` from ``quant_config``, else the highest
      layer + 1); ``early_n_elements`` ... the weights of each group;
    * ``bytes_per_token``: the bytes read per generated token: every tensor except an
      untied ``token_embd.weight`` (of which one row per token is read); a tied
      ``token_embd.weight`` is the output matrix and counts;
    * ``moe``: the file has expert tensors (``*_exps``): all experts are counted, so
      ``bytes_per_token`` is an upper bound (only the routed experts are read).
    """
    inv = conform(inventory, INVENTORY)
    if inv.is_empty():
        return pl.DataFrame(schema=LAYER_BITS)
    n_layers = _n_layers(inv, quant_config)
    rows = [_file_bits(model, config_id, origin, part, n_layers.get(model, 0))
            for (model, config_id, origin), part in inv.group_by(["model", "config_id", "origin"], maintain_order=True)]
    return pl.DataFrame(rows, schema=LAYER_BITS, orient="row")


def _n_layers(inv: pl.DataFrame, quant_config: pl.DataFrame | None) -> dict[str, int]:
    """Layers per model: as the quant configs declare them, else the highest layer + 1."""
    declared: dict[str, int] = {}
    if quant_config is not None and not quant_config.is_empty():
        for model, n in conform(quant_config, QUANT_CONFIG).select("model", "n_layers").drop_nulls().rows():
            declared[model] = max(declared.get(model, 0), int(n))
    seen = inv.group_by("model").agg(pl.col("layer").max().alias("top")).rows()
    return {m: declared.get(m) or (int(top) + 1 if top is not None else 0) for m, top in seen}


def _file_bits(model: str, config_id: str, origin: str, part: pl.DataFrame, n: int) -> dict[str, Any]:
    """One row of :func:`layer_group_bits` from the tensors of one file of an ``n``-layer model."""
    row: dict[str, Any] = {"model": model, "config_id": config_id, "origin": origin,
                           "file_sha256": part["file_sha256"][0], "n_layers": n}
    bounds = group_bounds(n) if n >= 3 else None
    tensors = part["tensor"].to_list()
    layers = part["layer"].to_list()
    n_el = part["n_elements"].to_list()
    n_by = part["n_bytes"].to_list()
    for g_index, g in enumerate(LAYER_GROUPS):
        el = by = 0
        if bounds is not None:
            rng = bounds[g_index]
            for layer, e, b in zip(layers, n_el, n_by):
                if layer is not None and layer in rng:
                    el += e
                    by += b
        row[f"{g}_bpw"] = 8.0 * by / el if el else None
        row[f"{g}_n_elements"] = el or None
    untied = "output.weight" in tensors
    row["bytes_per_token"] = sum(b for t, b in zip(tensors, n_by) if not (untied and t == "token_embd.weight"))
    row["data_bytes"] = sum(n_by)
    row["moe"] = any("_exps" in t for t in tensors)
    return row


def with_layer_bits(data: ReportData, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with model, config_id, origin) joined to its layer bits: the same origin's
    inventory, else the lab's, else any origin's (``inventory_origin`` says which)."""
    bits = data.layer_bits()
    cols = [c for c in bits.columns if c not in ("model", "config_id", "origin")]
    if bits.is_empty():
        return frame.with_columns([pl.lit(None, dtype=bits.schema[c]).alias(c) for c in cols]
                                  + [pl.lit(None, dtype=_S).alias("inventory_origin")])
    ranked = []
    for model, config_id, origin in frame.select("model", "config_id", "origin").rows():
        pick = _pick_inventory(bits.filter((pl.col("model") == model) & (pl.col("config_id") == config_id)), origin) or {}
        ranked.append({"model": model, "config_id": config_id, "origin": origin,
                       **{c: pick.get(c) for c in cols}, "inventory_origin": pick.get("origin")})
    joined = pl.DataFrame(ranked, schema={"model": _S, "config_id": _S, "origin": _S, **{c: bits.schema[c] for c in cols},
                                          "inventory_origin": _S}, orient="row").unique(["model", "config_id", "origin"])
    return frame.join(joined, on=["model", "config_id", "origin"], how="left")


def _pick_inventory(candidates: pl.DataFrame, origin: str) -> dict | None:
    """The layer bits of ``origin`` among one configuration's, else the lab's, else the first origin's."""
    for want in (origin, "lab"):
        hit = candidates.filter(pl.col("origin") == want)
        if hit.height:
            return hit.row(0, named=True)
    return candidates.sort("origin").row(0, named=True) if candidates.height else None
