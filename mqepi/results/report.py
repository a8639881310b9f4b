"""The report: RQ1-RQ5 of the paper answered from the lake's analysis views.

:func:`collect` reads the views of the SQL contract (``config_summary``, ``matched_pairs``,
``pareto_frontier``, ``run_metrics``) and the base views it needs for sizes and provenance
(``quant_config``, ``quantization``, ``tensor_inventory``, ``run``, ``benchmark_answer``)
into polars frames (:class:`ReportData`). Everything after that is plain Python over those
frames, so the analyses are tested on frames built directly:

* :func:`rq1_matched_pairs`: perplexity-matched pairs whose EPI differs (paired bootstrap
  interval of the difference excluding 0) or whose accuracy differs (McNemar);
* :func:`rq2_frontier`: the Pareto frontier of accuracy vs J/token, uniform vs mixed;
* :func:`rq3_sensitivity`: J/token and accuracy regressed (OLS) on the mean bits/weight of
  the early, middle and late layers;
* :func:`rq4_optimum`: the EPI-optimal configuration against ``uniform_q4km``;
* :func:`rq5_attribution`: decode J/token against bytes read per generated token and
  against time per token, and each configuration's fraction of the decode roofline.

Lab and community data are never pooled: every answer is about one (origin, model, power
source) group. Every answer names its evidence and its power source; simulated power is
called "simulated power (not measured)" everywhere. :func:`summary` prints the answers;
:func:`write_report` writes ``report.md``, a self-contained ``report.html`` and the figures.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mqepi.errors import MqepiError


class ReportError(MqepiError):
    """The report cannot be built (a view is missing, a bad option)."""


#: Values of ``--origin``: lab only, every community origin, or both (shown separately).
ORIGINS = ("lab", "community", "all")
#: Layer groups of RQ3, positional as :func:`mqepi.maps.group_bounds` defines them.
LAYER_GROUPS = ("early", "middle", "late")
#: Significance level of every interval and test in the report.
ALPHA = 0.05
#: The paper's reference configuration for RQ4.
REFERENCE_CONFIG = "uniform_q4km"

RQ_QUESTIONS = {
    "RQ1": "Do mixed-quant configurations with identical perplexity produce different EPI?",
    "RQ2": "What does the Pareto frontier of accuracy vs. J/token look like?",
    "RQ3": "Which layers are most sensitive to quantization depth in terms of energy impact?",
    "RQ4": "Is the EPI-optimal mixed-quant configuration smaller or larger than uniform Q4_K_M?",
    "RQ5": "Does the energy benefit come from reduced memory bandwidth, reduced compute, or both?",
}

#: Power sources that are measurements (see schemas/events.py).
MEASURED_SOURCES = ("epi-meter", "atm90e26", "nvml")
SIMULATED = "simulated power (not measured)"
CANNOT = "the data cannot support a conclusion"


def power_label(source: str | None) -> str:
    """How the report names a power source: never lets simulated power pass as measured."""
    if source == "simulated":
        return SIMULATED
    if source == "epi-meter":
        return "measured power (epi-meter)"
    if source == "atm90e26":
        return "measured power (ATM90E26 meter)"
    if source == "nvml":
        return "measured power (NVML)"
    if source == "replay":
        return "replayed power trace (not a live measurement)"
    if source in (None, "none", ""):
        return "no power measured"
    return f"power source {source!r} (not a known measurement)"


# ------------------------------------------------------------------ the contract's columns

_F, _I, _S, _B = pl.Float64, pl.Int64, pl.Utf8, pl.Boolean

CONFIG_SUMMARY = {
    "model": _S, "config_id": _S, "origin": _S, "power_source": _S, "simulated": _B, "kind": _S,
    "early_type": _S, "middle_type": _S, "late_type": _S, "n_repeats": _I, "n_excluded": _I,
    "j_per_token": _F, "j_per_token_ci_low": _F, "j_per_token_ci_high": _F,
    "accuracy": _F, "accuracy_ci_low": _F, "accuracy_ci_high": _F, "epi": _F, "epi_ci_low": _F, "epi_ci_high": _F,
    "ppl": _F, "ppl_stderr": _F, "kld_mean": _F, "file_size_bytes": _I, "bits_per_weight": _F,
    "decode_tokens_per_s": _F, "prefill_j_per_token": _F, "decode_j_per_token": _F, "avg_power_w": _F,
}
MATCHED_PAIRS = {
    "model": _S, "origin": _S, "power_source": _S, "simulated": _B, "config_a": _S, "config_b": _S,
    "ppl_a": _F, "ppl_b": _F, "ppl_stderr_a": _F, "ppl_stderr_b": _F, "ppl_diff": _F, "match_rule": _S,
    "j_per_token_a": _F, "j_per_token_b": _F, "j_per_token_diff": _F, "j_per_token_diff_ci_low": _F,
    "j_per_token_diff_ci_high": _F, "epi_a": _F, "epi_b": _F, "epi_diff": _F, "epi_diff_ci_low": _F,
    "epi_diff_ci_high": _F, "n_paired_repeats": _I, "n_questions_paired": _I, "mcnemar_b": _I, "mcnemar_c": _I,
    "mcnemar_p": _F,
}
PARETO_FRONTIER = {
    "model": _S, "origin": _S, "power_source": _S, "simulated": _B, "config_id": _S, "kind": _S,
    "accuracy": _F, "j_per_token": _F, "epi": _F, "accuracy_ci_low": _F, "accuracy_ci_high": _F,
    "j_per_token_ci_low": _F, "j_per_token_ci_high": _F, "on_frontier": _B, "frontier_probability": _F,
    "uniform_dominated": _B, "mixed_unmatched": _B,
}
RUN_METRICS = {
    "model": _S, "config_id": _S, "run_id": _S, "origin": _S, "repeat": _I, "power_source": _S, "simulated": _B,
    "valid": _B, "n_benchmarks": _I, "benchmark_energy_j": _F, "benchmark_tokens": _I, "j_per_token": _F,
    "net_j_per_token": _F, "prefill_j_per_token": _F, "decode_j_per_token": _F, "accuracy": _F, "epi": _F,
    "epi_mmlu": _F, "epi_arc_challenge": _F, "epi_hellaswag": _F, "ppl": _F, "ppl_stderr": _F, "kld_mean": _F,
    "same_top_p": _F, "file_size_bytes": _I, "bits_per_weight": _F, "prefill_tokens_per_s": _F,
    "decode_tokens_per_s": _F, "avg_power_w": _F, "idle_power_w": _F, "invalid_reasons": _S,
}
#: Tensor rows of the one file chosen per (model, config_id, origin) (see :func:`collect`).
INVENTORY = {
    "model": _S, "config_id": _S, "origin": _S, "file_sha256": _S, "tensor": _S, "layer": pl.Int32,
    "layer_group": _S, "effective_type": _S, "n_elements": _I, "n_bytes": _I,
}
QUANT_CONFIG = {"model": _S, "config_id": _S, "origin": _S, "kind": _S, "n_layers": pl.Int32, "map_sha256": _S}
QUANTIZATION = {
    "model": _S, "config_id": _S, "origin": _S, "llama_cpp_commit": _S, "base_sha256": _S, "base_ftype": _S,
    "file_sha256": _S, "file_size_bytes": _I, "bits_per_weight": _F, "host": _S, "producer": _S,
}
RUNS = {
    "model": _S, "config_id": _S, "run_id": _S, "origin": _S, "repeat": _I, "power_source": _S, "host": _S,
    "file_sha256": _S, "producer": _S, "provenance_json": _S,
}
QUESTION_SETS = {"origin": _S, "model": _S, "benchmark": _S, "question_set_sha256": _S, "n_runs": _I, "n_questions": _I}

#: The analysis views and the columns the report reads from each.
CONTRACT_VIEWS = {
    "config_summary": CONFIG_SUMMARY, "matched_pairs": MATCHED_PAIRS, "pareto_frontier": PARETO_FRONTIER,
    "run_metrics": RUN_METRICS,
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


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class LakeSnapshot:
    """Which lake files the report read: their number and a sha256 over their sorted
    names relative to the lake root (file names are content hashes, so the names identify
    the data)."""

    uri: str
    n_files: int
    sha256: str


def lake_snapshot(lake) -> LakeSnapshot:
    """Snapshot of every committed Parquet file of ``lake`` (seed files included)."""
    from mqepi.schemas import EVENT_TYPES

    names: list[str] = []
    root = lake.root.rstrip("/") + "/"
    for event_type in EVENT_TYPES:
        names.extend(f.removeprefix(root) for f in lake.files(event_type))
    names.sort()
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return LakeSnapshot(lake.uri, len(names), digest)


@dataclass
class ReportData:
    """Everything the report needs, as polars frames (one set of contract columns each)."""

    config_summary: pl.DataFrame
    matched_pairs: pl.DataFrame
    pareto_frontier: pl.DataFrame
    run_metrics: pl.DataFrame
    inventory: pl.DataFrame
    quant_config: pl.DataFrame
    quantization: pl.DataFrame
    runs: pl.DataFrame
    question_sets: pl.DataFrame
    snapshot: LakeSnapshot | None = None
    settings: dict = field(default_factory=dict)
    origin: str = "all"
    bandwidth_gbs: float | None = None

    @classmethod
    def from_frames(cls, *, config_summary=None, matched_pairs=None, pareto_frontier=None, run_metrics=None,
                    inventory=None, quant_config=None, quantization=None, runs=None, question_sets=None,
                    snapshot: LakeSnapshot | None = None, settings: dict | None = None, origin: str = "all",
                    bandwidth_gbs: float | None = None) -> ReportData:
        """Build from frames shaped like the views; absent frames or columns become empty / null."""
        return cls(
            conform(config_summary, CONFIG_SUMMARY), conform(matched_pairs, MATCHED_PAIRS),
            conform(pareto_frontier, PARETO_FRONTIER), conform(run_metrics, RUN_METRICS),
            conform(inventory, INVENTORY), conform(quant_config, QUANT_CONFIG), conform(quantization, QUANTIZATION),
            conform(runs, RUNS), conform(question_sets, QUESTION_SETS), snapshot, dict(settings or {}), origin,
            bandwidth_gbs,
        )

    def groups(self) -> list[tuple[str, str, str]]:
        """(origin, model, power_source) of every configuration summary, lab first."""
        keys = self.config_summary.select("origin", "model", "power_source").unique().rows()
        return sorted(keys, key=lambda k: (k[0] != "lab", k[0] or "", k[1] or "", k[2] or ""))

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


def _where_origin(origin: str) -> str:
    if origin == "lab":
        return "origin = 'lab'"
    if origin == "community":
        return "origin LIKE 'community/%'"
    if origin == "all":
        return "true"
    raise ReportError(f"origin {origin!r} is not one of {', '.join(ORIGINS)}")


def collect(con_or_lake, *, origin: str = "all", bandwidth_gbs: float | None = None) -> ReportData:
    """Query the views into a :class:`ReportData`.

    ``con_or_lake``: a :class:`mqepi.lake.Lake`, a lake root path, or a DuckDB connection
    made by :func:`mqepi.sql.connect`. ``origin``: ``lab``, ``community`` (every
    ``community/<id>``) or ``all``. ``bandwidth_gbs``: the nodes' memory bandwidth for the
    RQ5 roofline (None: not computed).
    """
    from mqepi.lake.store import Lake
    from mqepi.results import sql

    where = _where_origin(origin)
    if bandwidth_gbs is not None and not (math.isfinite(bandwidth_gbs) and bandwidth_gbs > 0):
        raise ReportError(f"memory bandwidth must be a positive number of GB/s, not {bandwidth_gbs}")
    if isinstance(con_or_lake, (str, os.PathLike)):
        con_or_lake = Lake(con_or_lake)
    if isinstance(con_or_lake, Lake):
        lake, con = con_or_lake, sql.connect(con_or_lake)
    else:
        con = con_or_lake
        root = con.execute("SELECT getvariable('mqepi_lake')").fetchone()[0]
        lake = Lake(root) if root else None
    _check_contract(con)

    def frame(query: str, schema: dict) -> pl.DataFrame:
        return conform(pl.from_arrow(sql.query(con, query)), schema)

    def view(name: str, schema: dict, order: str) -> pl.DataFrame:
        cols = ", ".join(f'"{c}"' for c in schema)
        return frame(f"SELECT {cols} FROM {name} WHERE {where} ORDER BY {order}", schema)

    data = ReportData(
        config_summary=view("config_summary", CONFIG_SUMMARY, "origin, model, power_source, config_id"),
        matched_pairs=view("matched_pairs", MATCHED_PAIRS, "origin, model, power_source, config_a, config_b"),
        pareto_frontier=view("pareto_frontier", PARETO_FRONTIER, "origin, model, power_source, config_id"),
        run_metrics=view("run_metrics", RUN_METRICS, "origin, model, config_id, repeat, run_id"),
        inventory=frame(_INVENTORY_SQL.format(where=where), INVENTORY),
        quant_config=frame(
            "SELECT model, config_id, origin, kind, n_layers, map_sha256 FROM quant_config "
            f"WHERE {where} QUALIFY row_number() OVER (PARTITION BY model, config_id, origin ORDER BY recorded_at_ns DESC, event_id) = 1 "
            "ORDER BY ALL", QUANT_CONFIG),
        quantization=frame(
            "SELECT model, config_id, origin, llama_cpp_commit, base_sha256, base_ftype, file_sha256, file_size_bytes, "
            f"bits_per_weight, host, producer FROM quantization WHERE {where} ORDER BY ALL", QUANTIZATION),
        runs=frame(
            "SELECT model, config_id, run_id, origin, repeat, power_source, host, file_sha256, producer, provenance_json "
            f"FROM run WHERE status = 'started' AND {where} "
            "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY recorded_at_ns, event_id) = 1 ORDER BY ALL", RUNS),
        question_sets=frame(
            "SELECT origin, model, benchmark, question_set_sha256, count(DISTINCT run_id) AS n_runs, "
            f"count(DISTINCT question_id) AS n_questions FROM benchmark_answer WHERE {where} GROUP BY ALL ORDER BY ALL",
            QUESTION_SETS),
        snapshot=lake_snapshot(lake) if lake is not None and lake.exists() else None,
        settings=dict(zip(("seed", "bootstrap", "ppl_tolerance", "z"), map(_plain, con.execute(
            "SELECT coalesce(getvariable('mqepi_seed'), 1234), coalesce(getvariable('mqepi_bootstrap'), 1000), "
            "getvariable('mqepi_ppl_tolerance'), coalesce(getvariable('mqepi_z'), 1.96)").fetchone()))),
        origin=origin,
        bandwidth_gbs=bandwidth_gbs,
    )
    return data


def _plain(value):
    """A DuckDB scalar as a plain Python number (DECIMAL -> float)."""
    from decimal import Decimal

    return float(value) if isinstance(value, Decimal) else value


# The inventory of one file per (model, config_id, origin): the file most of that origin's
# runs used (run.file_sha256), else the most recently recorded one.
_INVENTORY_SQL = """
WITH inv AS (
    SELECT * FROM tensor_inventory WHERE {where}
), used AS (
    SELECT model, config_id, origin, file_sha256, count(DISTINCT run_id) AS n_runs
    FROM run WHERE file_sha256 IS NOT NULL GROUP BY ALL
), files AS (
    SELECT ti.model, ti.config_id, ti.origin, ti.file_sha256, max(ti.recorded_at_ns) AS t,
        coalesce(max(u.n_runs), 0) AS n_runs
    FROM inv ti
    LEFT JOIN used u ON u.model = ti.model AND u.config_id = ti.config_id AND u.origin = ti.origin
        AND u.file_sha256 = ti.file_sha256
    GROUP BY ALL
), chosen AS (
    SELECT * FROM files
    QUALIFY row_number() OVER (PARTITION BY model, config_id, origin ORDER BY n_runs DESC, t DESC, file_sha256) = 1
)
SELECT ti.model, ti.config_id, ti.origin, ti.file_sha256, ti.tensor, ti.layer, ti."group" AS layer_group,
    ti.effective_type, ti.n_elements, ti.n_bytes
FROM inv ti
JOIN chosen c ON c.model = ti.model AND c.config_id = ti.config_id AND c.origin = ti.origin
    AND c.file_sha256 = ti.file_sha256
ORDER BY ti.model, ti.config_id, ti.origin, ti.layer NULLS LAST, ti.tensor
"""


def _check_contract(con) -> None:
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_name IN (SELECT view_name FROM duckdb_views() WHERE NOT internal)").fetchall()
    have: dict[str, set[str]] = {}
    for table, column in rows:
        have.setdefault(table, set()).add(column)
    for name, schema in CONTRACT_VIEWS.items():
        if name not in have:
            where = "analysis/frontier.sql" if name in ("matched_pairs", "pareto_frontier") else "analysis/runs.sql"
            raise ReportError(f"view {name} is missing: {where} is not loaded (the report needs the analysis views)")
        lacking = [c for c in schema if c not in have[name]]
        if lacking:
            raise ReportError(f"view {name} lacks the contract's columns {', '.join(lacking)}")


# ------------------------------------------------------------------ layer groups and bytes


def layer_group_bits(inventory: pl.DataFrame, quant_config: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (model, config_id, origin) of ``inventory`` (one file each):

    * ``early_bpw``, ``middle_bpw``, ``late_bpw``: 8 * bytes / weights over the block tensors
      (``layer`` not null) of the early, middle and late layers, positional as
      :func:`mqepi.maps.group_bounds` (``n_layers`` from ``quant_config``, else the highest
      layer + 1); ``early_n_elements`` ... the weights of each group;
    * ``bytes_per_token``: the bytes read per generated token: every tensor except an
      untied ``token_embd.weight`` (of which one row per token is read); a tied
      ``token_embd.weight`` is the output matrix and counts;
    * ``moe``: the file has expert tensors (``*_exps``): all experts are counted, so
      ``bytes_per_token`` is an upper bound (only the routed experts are read).
    """
    from mqepi.quant.maps import group_bounds

    inv = conform(inventory, INVENTORY)
    schema = {"model": _S, "config_id": _S, "origin": _S, "file_sha256": _S, "n_layers": _I,
              **{f"{g}_bpw": _F for g in LAYER_GROUPS}, **{f"{g}_n_elements": _I for g in LAYER_GROUPS},
              "bytes_per_token": _I, "data_bytes": _I, "moe": _B}
    if inv.is_empty():
        return pl.DataFrame(schema=schema)
    declared: dict[str, int] = {}
    if quant_config is not None and not quant_config.is_empty():
        for model, n in conform(quant_config, QUANT_CONFIG).select("model", "n_layers").drop_nulls().rows():
            declared[model] = max(declared.get(model, 0), int(n))
    seen = inv.group_by("model").agg(pl.col("layer").max().alias("top")).rows()
    n_layers = {m: declared.get(m) or (int(top) + 1 if top is not None else 0) for m, top in seen}
    rows = []
    for (model, config_id, origin), part in inv.group_by(["model", "config_id", "origin"], maintain_order=True):
        n = n_layers.get(model, 0)
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
        rows.append(row)
    return pl.DataFrame(rows, schema=schema, orient="row")


def _with_layer_bits(data: ReportData, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with model, config_id, origin) joined to its layer bits: the same origin's
    inventory, else the lab's, else any origin's (``inventory_origin`` says which)."""
    bits = data.layer_bits()
    cols = [c for c in bits.columns if c not in ("model", "config_id", "origin")]
    if bits.is_empty():
        return frame.with_columns([pl.lit(None, dtype=bits.schema[c]).alias(c) for c in cols]
                                  + [pl.lit(None, dtype=_S).alias("inventory_origin")])
    ranked = []
    for model, config_id, origin in frame.select("model", "config_id", "origin").rows():
        cands = bits.filter((pl.col("model") == model) & (pl.col("config_id") == config_id))
        pick = None
        for want in (origin, "lab"):
            hit = cands.filter(pl.col("origin") == want)
            if hit.height:
                pick = hit.row(0, named=True)
                break
        if pick is None and cands.height:
            pick = cands.sort("origin").row(0, named=True)
        ranked.append({"model": model, "config_id": config_id, "origin": origin,
                       **{c: (pick or {}).get(c) for c in cols}, "inventory_origin": (pick or {}).get("origin")})
    joined = pl.DataFrame(ranked, schema={"model": _S, "config_id": _S, "origin": _S, **{c: bits.schema[c] for c in cols},
                                          "inventory_origin": _S}, orient="row").unique(["model", "config_id", "origin"])
    return frame.join(joined, on=["model", "config_id", "origin"], how="left")


# ------------------------------------------------------------------ statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (bisection on :func:`t_cdf`; ``0 < p < 1``, ``df > 0``)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


@dataclass
class Fit:
    """An ordinary least-squares fit ``response ~ 1 + terms`` with 95% intervals.

    ``supported`` is False, with ``reason``, when the data cannot support a conclusion: too
    few observations (n <= parameters + 2, the intercept counted), collinear regressors, a
    constant response, or every slope's interval including 0.
    """

    response: str
    terms: list[str]
    n: int
    n_params: int
    coef: dict[str, float] = field(default_factory=dict)
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)
    r2: float | None = None
    supported: bool = False
    reason: str | None = None

    def excludes_zero(self, term: str) -> bool:
        lo, hi = self.ci_low.get(term), self.ci_high.get(term)
        return lo is not None and hi is not None and (lo > 0 or hi < 0)

    def verdict(self) -> str:
        return "supported" if self.supported else f"{CANNOT} ({self.reason})"


def ols(columns: dict[str, Iterable[float | None]], y: Iterable[float | None], response: str, *,
        alpha: float = ALPHA) -> Fit:
    """Fit ``y = b0 + sum(b_k * x_k)`` by least squares (numpy); rows with a missing or
    non-finite value are left out. Intervals: b +/- t(1 - alpha/2, n - p) * se."""
    terms = list(columns)
    yy = np.asarray([np.nan if v is None else v for v in y], float)
    X = np.ones((len(yy), 1 + len(terms)))
    for k, col in enumerate(columns.values(), start=1):
        X[:, k] = np.asarray([np.nan if v is None else v for v in col], float)
    keep = np.isfinite(yy) & np.all(np.isfinite(X), axis=1)
    X, yy = X[keep], yy[keep]
    n, p = X.shape
    fit = Fit(response, terms, n, p)
    if n <= p + 2:
        fit.reason = f"n = {n} observations for {p} parameters; more than {p + 2} are needed"
        return fit
    if np.linalg.matrix_rank(X) < p:
        fit.reason = "the regressors are collinear (they do not vary independently across the configurations)"
        return fit
    tss = float(np.sum((yy - yy.mean()) ** 2))
    if tss <= 0:
        fit.reason = f"{response} does not vary"
        return fit
    beta, *_ = np.linalg.lstsq(X, yy, rcond=None)
    resid = yy - X @ beta
    rss = float(resid @ resid)
    df = n - p
    cov = rss / df * np.linalg.inv(X.T @ X)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    tcrit = t_quantile(1.0 - alpha / 2.0, df)
    for name, b, s in zip(["intercept", *terms], beta, se):
        fit.coef[name], fit.ci_low[name], fit.ci_high[name] = float(b), float(b - tcrit * s), float(b + tcrit * s)
    fit.r2 = max(0.0, 1.0 - rss / tss)
    if terms and not any(fit.excludes_zero(t) for t in terms):
        fit.reason = "every slope's 95% interval includes 0"
        return fit
    fit.supported = True
    return fit


def pearson(x: Iterable[float | None], y: Iterable[float | None]) -> float | None:
    """Correlation of the complete pairs, None below 3 pairs or without variation."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    xa, ya = np.asarray(pairs, float).T
    if xa.std() == 0 or ya.std() == 0:
        return None
    return float(np.corrcoef(xa, ya)[0, 1])


# ------------------------------------------------------------------ formatting


def fmt(x: float | int | None, digits: int = 4) -> str:
    """A number in ``digits`` significant digits; '-' for missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,d}"
    return f"{x:.{digits}g}"


def fmt_ci(x, lo, hi, digits: int = 4) -> str:
    if x is None:
        return "-"
    if lo is None or hi is None:
        return fmt(x, digits)
    return f"{fmt(x, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def _group_filter(df: pl.DataFrame, origin: str, model: str, power_source: str) -> pl.DataFrame:
    return df.filter((pl.col("origin") == origin) & (pl.col("model") == model) & (pl.col("power_source") == power_source))


def group_title(origin: str, model: str, power_source: str) -> str:
    return f"{model}, origin {origin}, {power_label(power_source)}"


# ------------------------------------------------------------------ answers


@dataclass
class Answer:
    """One research question answered for one (origin, model, power source) group."""

    rq: str
    origin: str
    model: str
    power_source: str
    answer: str
    evidence: str
    supported: bool

    @property
    def question(self) -> str:
        return RQ_QUESTIONS[self.rq]

    @property
    def power(self) -> str:
        return power_label(self.power_source)

    def text(self) -> str:
        return f"{self.rq}: {self.answer} Evidence: {self.evidence} Power: {self.power}."


def _no_energy(power_source: str) -> str | None:
    if power_source in (None, "none", ""):
        return "no power was measured for these runs (power source none), so no energy question can be answered"
    return None


# -- RQ1 -----------------------------------------------------------------


@dataclass
class Rq1Result:
    origin: str
    model: str
    power_source: str
    pairs: pl.DataFrame  # matched_pairs rows + epi_differs, j_per_token_differs, accuracy_differs, testable
    answer: Answer


def rq1_matched_pairs(data: ReportData) -> list[Rq1Result]:
    """RQ1 per group: perplexity-matched pairs whose EPI differs (paired bootstrap 95%
    interval of the difference excluding 0, with at least 2 paired repeats) and whose
    accuracy differs on the paired questions (exact McNemar, p < 0.05)."""
    results = []
    for origin, model, ps in data.groups():
        n_configs = _group_filter(data.config_summary, origin, model, ps).filter(pl.col("ppl").is_not_null()).height
        pairs = _group_filter(data.matched_pairs, origin, model, ps).with_columns(
            testable=pl.col("n_paired_repeats").fill_null(0) >= 2,
            epi_differs=(pl.col("n_paired_repeats").fill_null(0) >= 2)
            & ((pl.col("epi_diff_ci_low") > 0) | (pl.col("epi_diff_ci_high") < 0)).fill_null(False),
            j_per_token_differs=(pl.col("n_paired_repeats").fill_null(0) >= 2)
            & ((pl.col("j_per_token_diff_ci_low") > 0) | (pl.col("j_per_token_diff_ci_high") < 0)).fill_null(False),
            accuracy_differs=(pl.col("mcnemar_p") < ALPHA).fill_null(False),
        )
        m = pairs.height
        rules = ", ".join(sorted(set(pairs["match_rule"].drop_nulls().to_list()))) or "the matched_pairs rule"
        b = data.settings.get("bootstrap", 1000)
        evidence = (f"matched_pairs: {m} perplexity-matched pairs among {n_configs} configurations with a perplexity "
                    f"(matched {rules}); EPI and J/token differences by paired bootstrap over repeats "
                    f"({b} resamples), accuracy by exact McNemar on the paired questions.")
        no_energy = _no_energy(ps)
        n_testable = int(pairs["testable"].sum()) if m else 0
        n_epi = int(pairs["epi_differs"].sum()) if m else 0
        n_acc = int(pairs["accuracy_differs"].sum()) if m else 0
        supported = False
        if m == 0:
            text = "No configurations of this group match in perplexity, so RQ1 cannot be answered here."
        elif no_energy:
            text = f"{m} perplexity-matched pairs, but {no_energy}. {n_acc} of them differ in accuracy (McNemar p < 0.05)."
        elif n_testable == 0:
            text = (f"{CANNOT.capitalize()}: {m} perplexity-matched pairs, none with 2 or more paired repeats, so no EPI "
                    f"difference can be tested. {n_acc} differ in accuracy (McNemar p < 0.05).")
        elif n_epi:
            top = pairs.filter(pl.col("epi_differs")).sort(pl.col("epi_diff").abs(), descending=True).row(0, named=True)
            supported = True
            text = (f"Yes: {n_epi} of {n_testable} testable perplexity-matched pairs differ in EPI (95% interval of the "
                    f"paired difference excludes 0; about {0.05 * n_testable:.1f} would be expected by chance). Largest: "
                    f"{top['config_b']} - {top['config_a']} (perplexity {fmt(top['ppl_b'])} vs {fmt(top['ppl_a'])}), "
                    f"EPI difference {fmt_ci(top['epi_diff'], top['epi_diff_ci_low'], top['epi_diff_ci_high'])}, "
                    f"J/token difference {fmt_ci(top['j_per_token_diff'], top['j_per_token_diff_ci_low'], top['j_per_token_diff_ci_high'])}. "
                    f"{n_acc} of {m} pairs differ in accuracy (McNemar p < 0.05).")
        else:
            text = (f"No evidence: none of {n_testable} testable perplexity-matched pairs has an EPI difference whose 95% "
                    f"interval excludes 0; {CANNOT} that matched perplexity hides an EPI difference at this number of "
                    f"repeats. {n_acc} of {m} pairs differ in accuracy (McNemar p < 0.05).")
        results.append(Rq1Result(origin, model, ps, pairs, Answer("RQ1", origin, model, ps, text, evidence, supported)))
    return results


# -- RQ2 -----------------------------------------------------------------


@dataclass
class Rq2Result:
    origin: str
    model: str
    power_source: str
    frontier: pl.DataFrame  # the group's pareto_frontier rows, by accuracy
    answer: Answer


def rq2_frontier(data: ReportData) -> list[Rq2Result]:
    """RQ2 per group: which configurations are on the frontier, how many uniform and mixed,
    which mixed ones no uniform configuration reaches, and how robust membership is."""
    results = []
    for origin, model, ps in data.groups():
        rows = _group_filter(data.pareto_frontier, origin, model, ps).sort("accuracy", "j_per_token", nulls_last=True)
        b = data.settings.get("bootstrap", 1000)
        evidence = (f"pareto_frontier: {rows.height} configurations, frontier membership from the medians over repeats, "
                    f"frontier probability = share of {b} bootstrap resamples in which a configuration is on the frontier.")
        no_energy = _no_energy(ps)
        on = rows.filter(pl.col("on_frontier").fill_null(False) & pl.col("j_per_token").is_not_null())
        supported = False
        if no_energy or rows.filter(pl.col("j_per_token").is_not_null()).is_empty():
            text = f"No frontier: {no_energy or 'no configuration of this group has a J/token'}."
        elif on.is_empty():
            text = "The pareto_frontier view marks no configuration as on the frontier."
        else:
            supported = True
            n_u = on.filter(pl.col("kind") == "uniform").height
            n_m = on.filter(pl.col("kind") == "mixed").height
            lo, hi = on.row(0, named=True), on.row(on.height - 1, named=True)
            points = ", ".join(f"{r['config_id']} ({r['kind']}, p={fmt(r['frontier_probability'], 2)})"
                               for r in on.iter_rows(named=True))
            unmatched = on.filter(pl.col("mixed_unmatched").fill_null(False))["config_id"].to_list()
            shaky = on.filter(pl.col("frontier_probability").fill_null(0) < 0.95)["config_id"].to_list()
            slope = ""
            if on.height >= 2 and hi["accuracy"] != lo["accuracy"]:
                cost = (hi["j_per_token"] - lo["j_per_token"]) / (hi["accuracy"] - lo["accuracy"])
                slope = f" Along it, J/token rises {fmt(cost * 0.01, 3)} per accuracy point (0.01)."
            text = (f"{on.height} of {rows.height} configurations are on the frontier ({n_u} uniform, {n_m} mixed), from "
                    f"{lo['config_id']} (accuracy {fmt(lo['accuracy'], 3)}, {fmt(lo['j_per_token'])} J/token) to "
                    f"{hi['config_id']} (accuracy {fmt(hi['accuracy'], 3)}, {fmt(hi['j_per_token'])} J/token): {points}.{slope} "
                    + (f"Mixed configurations on the frontier that no uniform configuration reaches: {', '.join(unmatched)}. "
                       if unmatched else "No mixed configuration reaches a point that no uniform configuration reaches. ")
                    + (f"Uncertain members (on the frontier in fewer than 95% of resamples): {', '.join(shaky)}." if shaky
                       else "Every member is on the frontier in at least 95% of resamples."))
        results.append(Rq2Result(origin, model, ps, rows, Answer("RQ2", origin, model, ps, text, evidence, supported)))
    return results


# -- RQ3 -----------------------------------------------------------------


@dataclass
class Rq3Result:
    origin: str
    model: str
    power_source: str
    table: pl.DataFrame  # config_id, kind, early_bpw, middle_bpw, late_bpw, j_per_token, accuracy
    fits: dict[str, Fit]  # response -> fit
    group_n_elements: dict[str, int | None]
    answer: Answer


def rq3_sensitivity(data: ReportData, *, responses: tuple[str, ...] = ("j_per_token", "accuracy")) -> list[Rq3Result]:
    """RQ3 per group: each response (median per configuration, config_summary) regressed by
    OLS on the mean bits/weight of the early, middle and late layers (tensor_inventory:
    8 * n_bytes / n_elements over each group's block tensors), with 95% intervals and R^2.
    The most energy-sensitive group is the one with the largest J/token slope whose
    interval excludes 0; slopes are also given per GB of that group's weights."""
    results = []
    terms = [f"{g}_bpw" for g in LAYER_GROUPS]
    for origin, model, ps in data.groups():
        cs = _group_filter(data.config_summary, origin, model, ps).select("model", "config_id", "origin", "kind", *responses)
        table = _with_layer_bits(data, cs).select("config_id", "kind", *terms, *responses,
                                                  *[f"{g}_n_elements" for g in LAYER_GROUPS], "inventory_origin").sort("config_id")
        fits = {r: ols({t: table[t].to_list() for t in terms}, table[r].to_list(), r) for r in responses}
        n_el = {g: (table[f"{g}_n_elements"].drop_nulls().max() if table.height else None) for g in LAYER_GROUPS}
        inv_origins = sorted(set(table["inventory_origin"].drop_nulls().to_list()))
        evidence = (f"config_summary medians of {table.height} configurations; bits/weight per layer group from "
                    f"tensor_inventory ({', '.join(inv_origins) or 'none found'}); OLS with intercept, 95% t intervals.")
        parts = []
        supported = False
        no_energy = _no_energy(ps)
        for r in responses:
            fit = fits[r]
            unit = "J/token" if "j_per_token" in r else r
            if r.startswith("j_per_token") and no_energy:
                parts.append(f"{r}: {no_energy}.")
                continue
            if not fit.coef:
                parts.append(f"{r}: {CANNOT} ({fit.reason}).")
                continue
            slopes = "; ".join(f"{t.removesuffix('_bpw')} {fmt_ci(fit.coef[t], fit.ci_low[t], fit.ci_high[t], 3)}"
                               for t in terms)
            head = f"{r} per extra bit/weight (n = {fit.n}, R^2 = {fmt(fit.r2, 3)}): {slopes}."
            if not fit.supported:
                parts.append(f"{head} {CANNOT.capitalize()} ({fit.reason}).")
                continue
            sig = [t for t in terms if fit.excludes_zero(t)]
            best = max(sig, key=lambda t: abs(fit.coef[t]))
            g = best.removesuffix("_bpw")
            per_gb = ""
            if n_el.get(g) and r.startswith("j_per_token"):
                per_gb = f", {fmt(fit.coef[best] * 8e9 / n_el[g], 3)} {unit} per GB of its weights"
            parts.append(f"{head} Most sensitive: the {g} layers ({fmt(fit.coef[best], 3)} {unit} per bit/weight{per_gb}); "
                         f"intervals excluding 0: {', '.join(t.removesuffix('_bpw') for t in sig)}.")
            if r.startswith("j_per_token"):
                supported = True
        results.append(Rq3Result(origin, model, ps, table, fits, n_el,
                                 Answer("RQ3", origin, model, ps, " ".join(parts), evidence, supported)))
    return results


# -- RQ4 -----------------------------------------------------------------


@dataclass
class Rq4Result:
    origin: str
    model: str
    power_source: str
    best: dict | None
    best_mixed: dict | None
    reference: dict | None
    answer: Answer


def _overlap(a: dict, b: dict, key: str) -> bool | None:
    lo_a, hi_a, lo_b, hi_b = a.get(f"{key}_ci_low"), a.get(f"{key}_ci_high"), b.get(f"{key}_ci_low"), b.get(f"{key}_ci_high")
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None
    return lo_a <= hi_b and lo_b <= hi_a


def rq4_optimum(data: ReportData) -> list[Rq4Result]:
    """RQ4 per group: the lowest-EPI mixed configuration (and the lowest overall) against
    uniform_q4km in file size and bits/weight, with whether their EPI intervals overlap."""
    results = []
    for origin, model, ps in data.groups():
        cs = _group_filter(data.config_summary, origin, model, ps)
        ranked = cs.filter(pl.col("epi").is_not_null()).sort("epi", "config_id")
        best = ranked.row(0, named=True) if ranked.height else None
        mixed = ranked.filter(pl.col("kind") == "mixed")
        best_mixed = mixed.row(0, named=True) if mixed.height else None
        ref_rows = cs.filter(pl.col("config_id") == REFERENCE_CONFIG)
        ref = ref_rows.row(0, named=True) if ref_rows.height else None
        evidence = (f"config_summary: EPI (median over repeats, bootstrap 95% interval) of {ranked.height} configurations; "
                    "file size and bits/weight from the quantization events.")
        no_energy = _no_energy(ps)
        supported = False
        if no_energy or best is None:
            text = f"{CANNOT.capitalize()}: {no_energy or 'no configuration of this group has an EPI'}."
        elif best_mixed is None:
            text = f"No mixed configuration has an EPI in this group; the EPI optimum is {best['config_id']}."
        elif ref is None:
            text = (f"The EPI-optimal mixed configuration is {best_mixed['config_id']} "
                    f"(EPI {fmt_ci(best_mixed['epi'], best_mixed['epi_ci_low'], best_mixed['epi_ci_high'])}, "
                    f"{fmt(_gb(best_mixed['file_size_bytes']))} GB), but {REFERENCE_CONFIG} was not measured in this group, "
                    "so RQ4 cannot be answered.")
        else:
            size_m, size_r = best_mixed["file_size_bytes"], ref["file_size_bytes"]
            if size_m is None or size_r is None:
                rel = "of unknown size relative to"
            else:
                change = (size_m - size_r) / size_r * 100
                rel = ("the same size as" if size_m == size_r
                       else f"{'smaller' if size_m < size_r else 'larger'} ({change:+.1f}% bytes) than")
            overlap = _overlap(best_mixed, ref, "epi")
            if overlap is None:
                distinct = ""
            elif overlap:
                distinct = " Their EPI intervals overlap, so the data do not show either to have the lower EPI."
            else:
                lower = best_mixed["config_id"] if best_mixed["epi"] < ref["epi"] else REFERENCE_CONFIG
                distinct = f" Their EPI intervals do not overlap: {lower} has the lower EPI."
            supported = overlap is False
            text = (f"The EPI-optimal mixed configuration, {best_mixed['config_id']} "
                    f"(EPI {fmt_ci(best_mixed['epi'], best_mixed['epi_ci_low'], best_mixed['epi_ci_high'])}; "
                    f"{fmt(_gb(size_m))} GB, {fmt(best_mixed['bits_per_weight'], 3)} bits/weight), is {rel} {REFERENCE_CONFIG} "
                    f"(EPI {fmt_ci(ref['epi'], ref['epi_ci_low'], ref['epi_ci_high'])}; {fmt(_gb(size_r))} GB, "
                    f"{fmt(ref['bits_per_weight'], 3)} bits/weight).{distinct} Lowest EPI overall: {best['config_id']} ({best['kind']}).")
        results.append(Rq4Result(origin, model, ps, best, best_mixed, ref, Answer("RQ4", origin, model, ps, text, evidence, supported)))
    return results


def _gb(n: int | float | None) -> float | None:
    return None if n is None else n / 1e9


# -- RQ5 -----------------------------------------------------------------


@dataclass
class Rq5Result:
    origin: str
    model: str
    power_source: str
    table: pl.DataFrame  # config_id, kind, bytes_per_token, decode_tokens_per_s, s_per_token, decode_j_per_token, roofline_fraction
    fit_bytes: Fit  # decode_j_per_token ~ gb_per_token
    fit_time: Fit  # decode_j_per_token ~ s_per_token
    correlation: float | None  # between bytes/token and time/token
    bandwidth_gbs: float | None
    moe: bool
    answer: Answer


def rq5_attribution(data: ReportData, bandwidth_gbs: float | None = None) -> list[Rq5Result]:
    """RQ5 per group: decode J/token regressed on the bytes read per generated token
    (:func:`layer_group_bits`) and, separately, on the time per token (1 / decode
    tokens/s), each a simple OLS with R^2; and each configuration's fraction of the decode
    roofline, bytes_per_token * decode_tokens_per_s / bandwidth, when the memory bandwidth
    (GB/s) is known (``bandwidth_gbs``, else ``data.bandwidth_gbs``)."""
    bw = bandwidth_gbs if bandwidth_gbs is not None else data.bandwidth_gbs
    results = []
    for origin, model, ps in data.groups():
        cs = _group_filter(data.config_summary, origin, model, ps).select(
            "model", "config_id", "origin", "kind", "decode_tokens_per_s", "decode_j_per_token")
        t = _with_layer_bits(data, cs).with_columns(
            s_per_token=pl.when(pl.col("decode_tokens_per_s") > 0).then(1.0 / pl.col("decode_tokens_per_s")),
            gb_per_token=pl.col("bytes_per_token").cast(pl.Float64) / 1e9,
        ).with_columns(
            roofline_fraction=(pl.col("bytes_per_token").cast(pl.Float64) * pl.col("decode_tokens_per_s") / (bw * 1e9))
            if bw else pl.lit(None, dtype=pl.Float64),
        )
        table = t.select("config_id", "kind", "bytes_per_token", "decode_tokens_per_s", "s_per_token", "decode_j_per_token",
                         "roofline_fraction", "moe", "gb_per_token").sort("config_id")
        fit_b = ols({"gb_per_token": table["gb_per_token"].to_list()}, table["decode_j_per_token"].to_list(), "decode_j_per_token")
        fit_t = ols({"s_per_token": table["s_per_token"].to_list()}, table["decode_j_per_token"].to_list(), "decode_j_per_token")
        corr = pearson(table["gb_per_token"].to_list(), table["s_per_token"].to_list())
        moe = bool(table["moe"].fill_null(False).any()) if table.height else False
        evidence = (f"config_summary decode windows (tg) of {table.height} configurations: median decode J/token and decode "
                    "tokens/s; bytes read per generated token from tensor_inventory (every tensor except an untied "
                    "token_embd.weight)" + (" - an upper bound for this MoE model, which reads only its routed experts" if moe else "")
                    + "; simple OLS with intercept, 95% t intervals.")
        no_energy = _no_energy(ps)
        parts: list[str] = []
        supported = False
        if no_energy:
            parts.append(f"{CANNOT.capitalize()}: {no_energy}.")
        else:
            for label, fit, term, unit in (("bytes read per token", fit_b, "gb_per_token", "J/token per GB read"),
                                          ("time per token", fit_t, "s_per_token", "W (J/token per s/token)")):
                if fit.coef:
                    parts.append(f"Decode J/token vs {label} (n = {fit.n}): slope "
                                 f"{fmt_ci(fit.coef[term], fit.ci_low[term], fit.ci_high[term], 3)} {unit}, "
                                 f"R^2 = {fmt(fit.r2, 3)}" + ("." if fit.supported else f"; {CANNOT} ({fit.reason})."))
                else:
                    parts.append(f"Decode J/token vs {label}: {CANNOT} ({fit.reason}).")
            if corr is not None:
                parts.append(f"Bytes/token and time/token correlate at r = {fmt(corr, 3)}.")
            if fit_b.supported and fit_t.supported:
                supported = True
                if corr is not None and abs(corr) >= 0.9:
                    parts.append("Both explain decode energy, and they move together, so these configurations cannot "
                                 "separate a memory-bandwidth effect from a compute effect: the saving comes with fewer "
                                 "bytes and less time alike.")
                elif (fit_b.r2 or 0) >= (fit_t.r2 or 0) + 0.1:
                    parts.append("Bytes read explain decode energy better than time per token: mostly a memory-bandwidth effect.")
                elif (fit_t.r2 or 0) >= (fit_b.r2 or 0) + 0.1:
                    parts.append("Time per token explains decode energy better than bytes read: mostly compute (or stalls), "
                                 "not bandwidth.")
                else:
                    parts.append("Bytes read and time per token explain decode energy about equally: both.")
            elif fit_b.supported:
                supported = True
                parts.append("Only bytes read per token explains decode energy: a memory-bandwidth effect.")
            elif fit_t.supported:
                supported = True
                parts.append("Only time per token explains decode energy: compute (or stalls), not bytes read.")
        fractions = table["roofline_fraction"].drop_nulls()
        if not bw:
            parts.append("Memory bandwidth unknown (pass --bandwidth-gbs): the roofline fraction is not computed.")
        elif fractions.len():
            med = float(fractions.median())
            where = ("near the memory roofline (bandwidth-bound)" if med >= 0.6 else
                     "far below the memory roofline (not bandwidth-bound)" if med <= 0.3 else "part-way to the memory roofline")
            parts.append(f"At {fmt(bw)} GB/s, decode reaches {fmt(float(fractions.min()), 2)} to {fmt(float(fractions.max()), 2)} "
                         f"of the roofline (median {fmt(med, 2)}): {where}.")
        else:
            parts.append(f"At {fmt(bw)} GB/s: no configuration has both decode throughput and a tensor inventory.")
        results.append(Rq5Result(origin, model, ps, table, fit_b, fit_t, corr, bw, moe,
                                 Answer("RQ5", origin, model, ps, " ".join(parts), evidence, supported)))
    return results


# ------------------------------------------------------------------ all answers, summary


@dataclass
class Analyses:
    rq1: list[Rq1Result]
    rq2: list[Rq2Result]
    rq3: list[Rq3Result]
    rq4: list[Rq4Result]
    rq5: list[Rq5Result]

    def answers(self, origin: str, model: str, power_source: str) -> list[Answer]:
        out = []
        for results in (self.rq1, self.rq2, self.rq3, self.rq4, self.rq5):
            out.extend(r.answer for r in results if (r.origin, r.model, r.power_source) == (origin, model, power_source))
        return out


def analyse(data: ReportData) -> Analyses:
    """Every research question for every group."""
    return Analyses(rq1_matched_pairs(data), rq2_frontier(data), rq3_sensitivity(data), rq4_optimum(data),
                    rq5_attribution(data))


def power_banner(data: ReportData) -> tuple[str, str]:
    """(severity, text) of the report's power-source banner: 'simulated', 'measured' or 'none'."""
    sources = [s for s in data.power_sources() if s]
    measured = [s for s in sources if s in MEASURED_SOURCES]
    other = [s for s in sources if s not in MEASURED_SOURCES and s != "none"]
    if "simulated" in sources:
        text = ("SIMULATED POWER (NOT MEASURED): energy numbers (J/token, EPI, W) of every group marked "
                f"'{SIMULATED}' come from a simulated meter, not from a measurement; do not cite them as measured.")
        if measured:
            text += f" Other groups: {', '.join(power_label(s) for s in measured)}."
        return "simulated", text
    if other:
        return "simulated", ("NOT MEASURED LIVE: power comes from " + ", ".join(power_label(s) for s in other)
                             + (f"; measured groups: {', '.join(power_label(s) for s in measured)}" if measured else "") + ".")
    if measured:
        return "measured", "Power source: " + ", ".join(power_label(s) for s in measured) + "."
    return "none", "NO POWER MEASURED: no run of this report has power data, so there are no energy numbers."


def summary(data: ReportData, analyses: Analyses | None = None) -> str:
    """RQ1-RQ5 in a few lines each, per (origin, model, power source) group."""
    analyses = analyses or analyse(data)
    _sev, banner = power_banner(data)
    lines = [banner]
    groups = data.groups()
    if not groups:
        lines.append(f"No finished runs with a configuration summary for origin {data.origin}: nothing to answer.")
        return "\n".join(lines) + "\n"
    for origin, model, ps in groups:
        lines += ["", f"== {group_title(origin, model, ps)} =="]
        for a in analyses.answers(origin, model, ps):
            lines.append(f"{a.rq} ({a.question})")
            lines.append(f"  {a.answer}")
            lines.append(f"  Evidence: {a.evidence} Power: {a.power}.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the document


@dataclass
class _Block:
    kind: str  # h | p | banner | table | figure | list
    text: str = ""
    level: int = 0
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    png: Path | None = None
    svg: Path | None = None


class Document:
    """A tiny document model rendered to Markdown and to self-contained HTML."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[_Block] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(_Block("h", text, level))

    def p(self, text: str) -> None:
        self.blocks.append(_Block("p", text))

    def banner(self, severity: str, text: str) -> None:
        self.blocks.append(_Block("banner", text, headers=[severity]))

    def table(self, headers: list[str], rows: list[list[Any]], caption: str = "") -> None:
        self.blocks.append(_Block("table", caption, headers=headers, rows=[["" if c is None else str(c) for c in r] for r in rows]))

    def figure(self, png: Path, svg: Path, caption: str) -> None:
        self.blocks.append(_Block("figure", caption, png=png, svg=svg))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(_Block("list", rows=[[i] for i in items]))

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "h":
                out += [f"{'#' * (b.level + 1)} {_md_inline(b.text)}", ""]
            elif b.kind == "p":
                out += [_md_inline(b.text), ""]
            elif b.kind == "banner":
                out += [f"> **{_md_inline(b.text)}**", ""]
            elif b.kind == "table":
                if b.text:
                    out += [f"*{_md_inline(b.text)}*", ""]
                if not b.rows:
                    out += ["(none)", ""]
                    continue
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "|".join("---" for _ in b.headers) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
                out.append("")
            elif b.kind == "figure":
                png, svg = os.path.relpath(b.png, base), os.path.relpath(b.svg, base)
                out += [f"![{_md_inline(b.text)}]({png})", "", f"*{_md_inline(b.text)}* ([SVG]({svg}))", ""]
            elif b.kind == "list":
                out += [f"- {_md_inline(r[0])}" for r in b.rows] + [""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b.kind == "h":
                lvl = min(b.level + 1, 6)
                body.append(f"<h{lvl}>{e(b.text)}</h{lvl}>")
            elif b.kind == "p":
                body.append(f"<p>{e(b.text)}</p>")
            elif b.kind == "banner":
                body.append(f'<div class="banner {e(b.headers[0])}"><strong>{e(b.text)}</strong></div>')
            elif b.kind == "table":
                cap = f"<caption>{e(b.text)}</caption>" if b.text else ""
                if not b.rows:
                    body.append(f"<p>{e(b.text + ': ' if b.text else '')}(none)</p>")
                    continue
                head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
                body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b.kind == "figure":
                data = base64.b64encode(Path(b.svg).read_bytes()).decode()
                body.append(f'<figure><img alt="{e(b.text)}" src="data:image/svg+xml;base64,{data}">'
                            f"<figcaption>{e(b.text)}</figcaption></figure>")
            elif b.kind == "list":
                body.append("<ul>" + "".join(f"<li>{e(r[0])}</li>" for r in b.rows) + "</ul>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
th,td{border:1px solid #bbb;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#eee} caption{text-align:left;font-style:italic;padding:.3rem 0}
figure{margin:1rem 0} figure img{max-width:100%} figcaption{font-style:italic;font-size:.9rem}
.banner{padding:1rem;margin:1rem 0;border:3px solid;font-size:1.05rem}
.banner.simulated{background:#fde8e8;border-color:#c0392b;color:#7b1d1d}
.banner.measured{background:#e8f6ea;border-color:#2e7d32}
.banner.none{background:#eee;border-color:#666}
""".strip()


def _md_inline(text: str) -> str:
    return text.replace("\n", " ")


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------ writing the report


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]


def _slug(*parts: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(p for p in parts if p)).strip("-") or "x"


def results_rows(cs: pl.DataFrame) -> list[list[str]]:
    """The paper's results table: Config, Early, Middle, Late, Size (GB), Perplexity,
    J/Token, Accuracy, EPI (medians, bootstrap 95% intervals) and repeats."""
    order = cs.with_columns(_u=(pl.col("kind") != "uniform")).sort("_u", "bits_per_weight", "config_id", nulls_last=True)
    rows = []
    for r in order.iter_rows(named=True):
        ppl = "-" if r["ppl"] is None else (fmt(r["ppl"]) + (f" ± {fmt(r['ppl_stderr'], 2)}" if r["ppl_stderr"] is not None else ""))
        rows.append([r["config_id"], r["kind"] or "-", r["early_type"] or "-", r["middle_type"] or "-", r["late_type"] or "-",
                     fmt(_gb(r["file_size_bytes"])), fmt(r["bits_per_weight"], 3), ppl,
                     fmt_ci(r["j_per_token"], r["j_per_token_ci_low"], r["j_per_token_ci_high"]),
                     fmt_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"], 3),
                     fmt_ci(r["epi"], r["epi_ci_low"], r["epi_ci_high"]),
                     f"{fmt(r['n_repeats'])} (+{fmt(r['n_excluded'])} excluded)" if r["n_excluded"] else fmt(r["n_repeats"])])
    return rows


RESULTS_HEADERS = ["Config", "Kind", "Early", "Middle", "Late", "Size (GB)", "Bits/weight", "Perplexity",
                   "J/Token [95% CI]", "Accuracy [95% CI]", "EPI [95% CI]", "n repeats"]
PAIRS_HEADERS = ["Config A", "Config B", "Perplexity A", "Perplexity B", "Match", "EPI A", "EPI B",
                 "Delta EPI (B-A) [95% CI]", "Delta J/token (B-A) [95% CI]", "McNemar b/c, p", "n paired repeats",
                 "EPI differs"]


def pairs_rows(pairs: pl.DataFrame) -> list[list[str]]:
    rows = []
    for r in pairs.iter_rows(named=True):
        def ppl(k):
            return fmt(r[f"ppl_{k}"]) + (f" ± {fmt(r[f'ppl_stderr_{k}'], 2)}" if r[f"ppl_stderr_{k}"] is not None else "")

        mc = "-" if r["mcnemar_p"] is None else f"{fmt(r['mcnemar_b'])}/{fmt(r['mcnemar_c'])}, p = {fmt(r['mcnemar_p'], 3)}"
        rows.append([r["config_a"], r["config_b"], ppl("a"), ppl("b"), r["match_rule"] or "-", fmt(r["epi_a"]), fmt(r["epi_b"]),
                     fmt_ci(r["epi_diff"], r["epi_diff_ci_low"], r["epi_diff_ci_high"]),
                     fmt_ci(r["j_per_token_diff"], r["j_per_token_diff_ci_low"], r["j_per_token_diff_ci_high"]),
                     mc, fmt(r["n_paired_repeats"]),
                     "yes" if r.get("epi_differs") else ("untestable" if not r.get("testable") else "no")])
    return rows


def write_report(data: ReportData, out_dir: str | Path, analyses: Analyses | None = None) -> ReportFiles:
    """Write ``report.md``, a self-contained ``report.html`` and ``figures/*.png|svg``."""
    from mqepi import __version__
    from mqepi.results import plots

    out = Path(out_dir)
    fig_dir = out / "figures"
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {fig_dir}: {exc}") from None
    analyses = analyses or analyse(data)
    figures: list[Path] = []
    doc = Document("mqepi report: per-layer quantization evaluated by energy per intelligence (EPI)")
    severity, banner = power_banner(data)
    doc.banner(severity, banner)
    snap = data.snapshot
    doc.p(f"Generated by mqepi {__version__} from the lake {snap.uri if snap else '(unknown)'}"
          + (f" (snapshot: {snap.n_files} files, sha256 {snap.sha256})" if snap else "")
          + f". Origins: {data.origin} (lab and community are never pooled). EPI = J/token / composite accuracy; lower is better.")

    def fig(caption: str, made: tuple[Path, Path] | None) -> None:
        if made is not None:
            figures.extend(made)
            doc.figure(made[0], made[1], caption)

    doc.h(1, "Summary")
    groups = data.groups()
    if not groups:
        doc.p(f"No finished runs with a configuration summary for origin {data.origin}: nothing to answer.")
    for origin, model, ps in groups:
        doc.p(f"{group_title(origin, model, ps)}:")
        doc.bullets([f"{a.rq}: {a.answer}" for a in analyses.answers(origin, model, ps)])

    by_key = lambda results: {(r.origin, r.model, r.power_source): r for r in results}  # noqa: E731
    rq1, rq2, rq3, rq4, rq5 = (by_key(x) for x in (analyses.rq1, analyses.rq2, analyses.rq3, analyses.rq4, analyses.rq5))
    for origin in data.origins():
        doc.h(1, "Lab results (origin lab)" if origin == "lab" else f"Community results (origin {origin})")
        if origin != "lab":
            doc.p(f"Submitted by {origin.removeprefix('community/')}; analysed on its own, never pooled with lab data.")
        for o, model, ps in [g for g in groups if g[0] == origin]:
            key = (o, model, ps)
            label = power_label(ps)
            stem = _slug(model, origin, ps)
            cs = _group_filter(data.config_summary, o, model, ps)
            doc.h(2, f"{model} ({label})")
            doc.p(f"Origin {origin}. Power: {label}. {cs.height} configurations, {int(cs['n_repeats'].fill_null(0).sum())} valid "
                  f"repeats used, {int(cs['n_excluded'].fill_null(0).sum())} finished runs excluded as invalid.")
            doc.h(3, "Results")
            doc.table(RESULTS_HEADERS, results_rows(cs),
                      f"{model}, origin {origin}, {label}: medians over valid repeats with bootstrap 95% intervals")
            doc.h(3, "Perplexity-matched pairs")
            doc.table(PAIRS_HEADERS, pairs_rows(rq1[key].pairs), f"Pairs of equal perplexity; {label}")
            fig(f"EPI and J/token differences of perplexity-matched pairs, {model}, origin {origin}, {label}",
                plots.matched_pairs_plot(rq1[key].pairs, fig_dir / f"pairs-{stem}", model=model))
            doc.h(3, "Pareto analysis")
            front = rq2[key].frontier
            doc.table(["Config", "Kind", "Accuracy [95% CI]", "J/Token [95% CI]", "EPI", "On frontier", "Frontier probability",
                       "Mixed, beyond every uniform"],
                      [[r["config_id"], r["kind"] or "-", fmt_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"], 3),
                        fmt_ci(r["j_per_token"], r["j_per_token_ci_low"], r["j_per_token_ci_high"]), fmt(r["epi"]),
                        "yes" if r["on_frontier"] else "no", fmt(r["frontier_probability"], 2),
                        "yes" if r["mixed_unmatched"] else ""] for r in front.iter_rows(named=True)],
                      f"Accuracy vs J/token; {label}")
            fig(f"Pareto frontier of accuracy vs J/token, {model}, origin {origin}, {label}",
                plots.pareto_plot(front, fig_dir / f"pareto-{stem}", model=model))
            doc.h(3, "Research questions")
            for a in analyses.answers(o, model, ps):
                doc.p(f"{a.rq}. {a.question}")
                doc.p(f"Answer: {a.answer}")
                doc.p(f"Evidence: {a.evidence} Power: {a.power}.")
                if a.rq == "RQ3":
                    r3 = rq3[key]
                    doc.table(["Response", "n", "R^2", "Intercept", "Early [95% CI]", "Middle [95% CI]", "Late [95% CI]", "Verdict"],
                              [[resp, fmt(f.n), fmt(f.r2, 3), fmt(f.coef.get("intercept")),
                                *[fmt_ci(f.coef.get(f"{g}_bpw"), f.ci_low.get(f"{g}_bpw"), f.ci_high.get(f"{g}_bpw"), 3)
                                  for g in LAYER_GROUPS], f.verdict()] for resp, f in r3.fits.items()],
                              f"RQ3: OLS slopes per extra bit/weight of each layer group; {label}")
                    doc.table(["Config", "Kind", "Early bits/weight", "Middle bits/weight", "Late bits/weight", "J/Token", "Accuracy"],
                              [[r["config_id"], r["kind"] or "-", fmt(r["early_bpw"], 4), fmt(r["middle_bpw"], 4), fmt(r["late_bpw"], 4),
                                fmt(r["j_per_token"]), fmt(r["accuracy"], 3)] for r in r3.table.iter_rows(named=True)],
                              "RQ3 data: mean bits/weight per layer group (tensor_inventory)")
                    fig(f"Layer-group sensitivity (RQ3), {model}, origin {origin}, {label}",
                        plots.sensitivity_plot([r3], fig_dir / f"sensitivity-{stem}", model=model))
                if a.rq == "RQ5":
                    r5 = rq5[key]
                    doc.table(["Config", "Kind", "Bytes read per token", "Decode tokens/s", "ms per token", "Decode J/token",
                               "Roofline fraction"],
                              [[r["config_id"], r["kind"] or "-", fmt(r["bytes_per_token"]), fmt(r["decode_tokens_per_s"]),
                                fmt(None if r["s_per_token"] is None else r["s_per_token"] * 1e3), fmt(r["decode_j_per_token"]),
                                fmt(r["roofline_fraction"], 3) if r5.bandwidth_gbs else "bandwidth unknown"]
                               for r in r5.table.iter_rows(named=True)],
                              f"RQ5: decode energy against bytes read and time per token; {label}")
                    fig(f"Decode energy attribution (RQ5), {model}, origin {origin}, {label}",
                        plots.attribution_plot([r5], fig_dir / f"attribution-{stem}", model=model))

    models = sorted({g[1] for g in groups})
    shared = [m for m in models if len([g for g in groups if g[1] == m]) > 1]
    if shared:
        doc.h(1, "Side by side")
        doc.p("The same model's groups (origins, power sources) in separate panels of one figure, never pooled.")
        for model in shared:
            front = data.pareto_frontier.filter(pl.col("model") == model)
            labels = ", ".join(sorted({power_label(s) for s in front["power_source"].drop_nulls().to_list()}))
            fig(f"Pareto frontiers of {model} by origin and power source ({labels})",
                plots.pareto_plot(front, fig_dir / f"pareto-{_slug(model)}-all", model=model))

    _excluded_section(doc, data)
    _provenance_section(doc, data)
    doc.h(1, "Method")
    doc.bullets([
        "Every number is derived from the lake's raw events by the SQL views (docs/sql.md); medians over valid repeats with "
        f"seeded bootstrap 95% intervals (seed {data.settings.get('seed', 1234)}, {data.settings.get('bootstrap', 1000)} resamples).",
        "RQ1: matched_pairs; an EPI difference counts when its paired bootstrap 95% interval excludes 0 (2 or more paired "
        "repeats); accuracy differences by exact McNemar, p < 0.05.",
        "RQ2: pareto_frontier; a configuration is on the frontier when no other configuration of its group has accuracy >= "
        "and J/token <= with one strict.",
        "RQ3: OLS of J/token and accuracy on the mean bits/weight of the early, middle and late layers (tensor_inventory); "
        f"'{CANNOT}' when n <= parameters + 2 or every slope's interval includes 0.",
        "RQ4: the lowest-EPI mixed configuration against uniform_q4km in size and bits/weight.",
        "RQ5: decode J/token against bytes read per generated token and against time per token; roofline fraction = "
        "bytes/token x decode tokens/s / memory bandwidth.",
        "See docs/report.md for the details.",
    ])

    md_path, html_path = out / "report.md", out / "report.html"
    try:
        md_path.write_text(doc.markdown(out))
        html_path.write_text(doc.html())
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out}: {exc}") from None
    return ReportFiles(md_path, html_path, figures)


def _excluded_section(doc: Document, data: ReportData) -> None:
    bad = data.run_metrics.filter(~pl.col("valid").fill_null(False))
    doc.h(1, "Excluded runs")
    doc.table(["Origin", "Model", "Config", "Run", "Repeat", "Power", "Why"],
              [[r["origin"], r["model"], r["config_id"], r["run_id"], fmt(r["repeat"]), power_label(r["power_source"]),
                r["invalid_reasons"] or "-"] for r in bad.sort("origin", "model", "config_id", "run_id").iter_rows(named=True)],
              "Finished runs left out of every median (run_metrics.valid is false)")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        text = "null" if value is None else str(value)
        out[prefix] = text if len(text) <= 100 else text[:97] + "..."


#: Provenance keys of run.provenance_json left out of the report (per-host or shown elsewhere).
_PROVENANCE_SKIP = ("host", "model_file", "question_sets", "settings", "text.sources")


def _provenance_section(doc: Document, data: ReportData) -> None:
    doc.h(1, "Provenance")
    snap = data.snapshot
    if snap:
        doc.p(f"Lake snapshot: {snap.uri}, {snap.n_files} files; sha256 over their sorted names (relative to the lake root, "
              f"one per line): {snap.sha256}.")
    else:
        doc.p("Lake snapshot: unknown (the report was built from frames, not from a lake).")
    doc.p("SQL settings: " + ", ".join(f"{k} = {'default' if v is None else v}" for k, v in data.settings.items()) + "."
          if data.settings else "SQL settings: defaults.")
    counts: dict[tuple[str, str, str], int] = {}
    for origin, raw in data.runs.select("origin", "provenance_json").rows():
        try:
            prov = json.loads(raw) if raw else {}
        except ValueError:
            prov = {"provenance_json": "(not JSON)"}
        flat: dict[str, str] = {}
        _flatten("", prov, flat)
        for k, v in flat.items():
            if not any(k == s or k.startswith(s + ".") for s in _PROVENANCE_SKIP):
                counts[(origin, k, v)] = counts.get((origin, k, v), 0) + 1
    rows = [[o, k, v, str(n)] for (o, k, v), n in sorted(counts.items())]
    doc.table(["Origin", "Key", "Value", "Runs"], rows[:200], "Tool versions and settings from run.provenance_json")
    producers = sorted(set(data.runs.select("origin", "producer").rows()) | set(data.quantization.select("origin", "producer").rows()),
                       key=lambda r: tuple("" if x is None else x for x in r))
    doc.table(["Origin", "Producer"], [list(r) for r in producers], "Programs that recorded the runs and quantizations")
    q = data.quantization.group_by("origin", "llama_cpp_commit", "base_sha256").agg(
        pl.col("config_id").n_unique().alias("n")).sort("origin", "llama_cpp_commit", "base_sha256", nulls_last=True)
    doc.table(["Origin", "llama.cpp commit", "Base model sha256", "Configurations"],
              [[r["origin"], r["llama_cpp_commit"], r["base_sha256"], str(r["n"])] for r in q.iter_rows(named=True)],
              "llama.cpp commits of the quantization events")
    doc.table(["Origin", "Model", "Benchmark", "Question set sha256", "Runs", "Questions"],
              [[r["origin"], r["model"], r["benchmark"], r["question_set_sha256"], fmt(r["n_runs"]), fmt(r["n_questions"])]
               for r in data.question_sets.iter_rows(named=True)],
              "Question sets (benchmark_answer)")


@dataclass
class BuiltReport:
    """What :func:`build_report` produced: the data, the answers and (unless summary only) the files."""

    data: ReportData
    analyses: Analyses
    files: ReportFiles | None

    @property
    def summary(self) -> str:
        return summary(self.data, self.analyses)


def build_report(lake, out_dir: str | Path = "report", *, origin: str = "all", bandwidth_gbs: float | None = None,
                 write: bool = True) -> BuiltReport:
    """Collect the report's data from ``lake``, answer RQ1-RQ5 and (with ``write``) write
    report.md, report.html and the figures into ``out_dir``: the one report pipeline of the
    ``mqepi report`` command and the demo."""
    if origin not in ORIGINS:
        raise ReportError(f"--origin {origin!r} is not one of {', '.join(ORIGINS)}")
    data = collect(lake, origin=origin, bandwidth_gbs=bandwidth_gbs)
    analyses = analyse(data)
    files = write_report(data, out_dir, analyses) if write else None
    return BuiltReport(data, analyses, files)
