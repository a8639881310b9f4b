"""The report's queries over the lake: :func:`collect` fills a :class:`ReportData`.

It reads the analysis views (``config_summary``, ``matched_pairs``, ``pareto_frontier``,
``run_metrics``, ``answer_flips``, ``kld_frontier``) with the columns of the view contract, and the base views it needs for
sizes and provenance (``quant_config``, ``quantization``, ``tensor_inventory``, ``run``,
``benchmark_answer``) with the report's own columns (:mod:`~mqepi.results.report.data`).
The per-layer search's sensitivity probes (``quant_config`` kind ``'probe'``) are no results:
no frame holds a row of theirs.
"""

from __future__ import annotations

import hashlib
import math
import os
from decimal import Decimal

import polars as pl

from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.lake.store import Lake
from mqepi.results import sql
from mqepi.results.report.data import (
    CONTRACT_VIEWS,
    INVENTORY,
    QUANT_CONFIG,
    QUANTIZATION,
    QUESTION_SETS,
    RUNS,
    SCORING,
    LakeSnapshot,
    ReportData,
    conform,
)
from mqepi.results.report.labels import ReportError, check_origin
from mqepi.schemas import EVENT_TYPES

#: The SQL condition of each ``--origin``.
_WHERE_ORIGIN = {"lab": "origin = 'lab'", "community": "origin LIKE 'community/%'", "all": "true"}
#: The rows of a configuration that is no sensitivity probe (matched_pairs, which has no
#: config_id, and pareto_frontier leave probes out themselves: analysis/frontier.sql).
_NOT_PROBE = ("concat_ws('/', model, config_id) NOT IN "
              "(SELECT concat_ws('/', model, config_id) FROM quant_config WHERE kind = 'probe')")
#: The SQL file that defines each analysis view the report reads.
_VIEW_FILES = {"config_summary": "analysis/summary.sql", "run_metrics": "analysis/runs.sql",
               "matched_pairs": "analysis/frontier.sql", "pareto_frontier": "analysis/frontier.sql",
               "answer_flips": "analysis/flips.sql", "kld_frontier": "analysis/kld_frontier.sql"}
#: Sort order of each analysis view's rows.
_VIEW_ORDER = {
    "config_summary": "origin, model, power_source, config_id",
    "matched_pairs": "origin, model, power_source, config_a, config_b",
    "pareto_frontier": "origin, model, power_source, config_id",
    "run_metrics": "origin, model, config_id, repeat, run_id",
    "answer_flips": "origin, model, power_source, config_id, reference_config_id, benchmark",
    "kld_frontier": "origin, model, power_source, hardware_id, \"rank\"",
}

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
_QUANT_CONFIG_SQL = (
    "SELECT model, config_id, origin, kind, n_layers, map_sha256, json_extract_string(map_json, '$.provenance') "
    "AS provenance_json FROM quant_config WHERE {where} "
    "QUALIFY row_number() OVER (PARTITION BY model, config_id, origin ORDER BY recorded_at_ns DESC, event_id) = 1 "
    "ORDER BY ALL")
_QUANTIZATION_SQL = (
    "SELECT model, config_id, origin, llama_cpp_commit, base_sha256, base_ftype, file_sha256, file_size_bytes, "
    "bits_per_weight, host, producer FROM quantization WHERE {where} ORDER BY ALL")
_RUNS_SQL = (
    "SELECT model, config_id, run_id, origin, repeat, power_source, host, file_sha256, producer, provenance_json, "
    "coalesce(hardware_id, 'unknown') AS hardware_id "
    "FROM run WHERE status = 'started' AND {where} "
    "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY recorded_at_ns, event_id) = 1 ORDER BY ALL")
_QUESTION_SETS_SQL = (
    "SELECT origin, model, benchmark, question_set_sha256, count(DISTINCT run_id) AS n_runs, "
    "count(DISTINCT question_id) AS n_questions FROM benchmark_answer WHERE {where} GROUP BY ALL ORDER BY ALL")
_SCORING_SQL = (  # per rule, deviation, shots and task version: answers, and the fewest/most questions of a run
    "WITH per_run AS (SELECT origin, model, benchmark, run_id, scoring, deviation, shots, count(*) AS n "
    "FROM benchmark_answer WHERE {where} GROUP BY ALL), "
    "prov AS (SELECT run_id, any_value(provenance_json) AS p FROM run WHERE status = 'started' GROUP BY run_id) "
    "SELECT origin, model, benchmark, scoring, deviation, shots, "
    "json_extract_string(prov.p, '$.tasks.' || benchmark || '.version') AS task_version, sum(n) AS n_answers, "
    "min(n) AS min_questions, max(n) AS max_questions FROM per_run LEFT JOIN prov USING (run_id) "
    "GROUP BY ALL ORDER BY ALL")
_SETTINGS_SQL = (
    f"SELECT coalesce(getvariable('mqepi_seed'), {DEFAULT_SEED}), coalesce(getvariable('mqepi_bootstrap'), {DEFAULT_BOOTSTRAP}), "
    "coalesce(getvariable('mqepi_ppl_margin'), 0.01), coalesce(getvariable('mqepi_z'), 1.96), "
    "getvariable('mqepi_kld_margin')")


def collect(con_or_lake, *, origin: str = "all", bandwidth_gbs: float | None = None) -> ReportData:
    """Query the views into a :class:`ReportData`.

    ``con_or_lake``: a :class:`mqepi.lake.store.Lake`, a lake root path, or a DuckDB connection
    made by :func:`mqepi.results.sql.connect`. ``origin``: ``lab``, ``community`` (every
    ``community/<id>``) or ``all``. ``bandwidth_gbs``: the nodes' memory bandwidth for the
    RQ5 roofline (None: not computed).
    """
    where = _WHERE_ORIGIN[check_origin(origin)]
    if bandwidth_gbs is not None and not (math.isfinite(bandwidth_gbs) and bandwidth_gbs > 0):
        raise ReportError(f"memory bandwidth must be a positive number of GB/s, not {bandwidth_gbs}")
    lake, con = _open(con_or_lake)
    _check_contract(con)

    def frame(query: str, schema: dict, probes_left_out: bool = True) -> pl.DataFrame:
        rows = f"({where}) AND {_NOT_PROBE}" if probes_left_out else where
        return conform(pl.from_arrow(sql.query(con, query.format(where=rows))), schema)

    views = {name: frame(_view_sql(name, schema), schema, name != "matched_pairs")
             for name, schema in CONTRACT_VIEWS.items()}
    return ReportData(
        **views,
        inventory=frame(_INVENTORY_SQL, INVENTORY),
        quant_config=frame(_QUANT_CONFIG_SQL, QUANT_CONFIG),
        quantization=frame(_QUANTIZATION_SQL, QUANTIZATION),
        runs=frame(_RUNS_SQL, RUNS),
        question_sets=frame(_QUESTION_SETS_SQL, QUESTION_SETS),
        scoring=frame(_SCORING_SQL, SCORING),
        snapshot=lake_snapshot(lake) if lake is not None and lake.exists() else None,
        settings=dict(zip(("seed", "bootstrap", "ppl_margin", "z", "kld_margin"),
                          map(_plain, con.execute(_SETTINGS_SQL).fetchone()))),
        origin=origin,
        bandwidth_gbs=bandwidth_gbs,
    )


def _view_sql(name: str, schema: dict) -> str:
    """The query of one analysis view: its contract columns, in its order, ``{where}`` left to fill."""
    cols = ", ".join(f'"{c}"' for c in schema)
    return f"SELECT {cols} FROM {name} WHERE {{where}} ORDER BY {_VIEW_ORDER[name]}"


def _open(con_or_lake) -> tuple[Lake | None, object]:
    """(the lake or None, a DuckDB connection with the views) from a lake, a path or a connection."""
    if isinstance(con_or_lake, (str, os.PathLike)):
        con_or_lake = Lake(con_or_lake)
    if isinstance(con_or_lake, Lake):
        return con_or_lake, sql.connect(con_or_lake)
    root = con_or_lake.execute("SELECT getvariable('mqepi_lake')").fetchone()[0]
    return (Lake(root) if root else None), con_or_lake


def _plain(value):
    """A DuckDB scalar as a plain Python number (DECIMAL -> float)."""
    return float(value) if isinstance(value, Decimal) else value


def _check_contract(con) -> None:
    """A :class:`ReportError` naming the first analysis view, or view column, the connection lacks."""
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_name IN (SELECT view_name FROM duckdb_views() WHERE NOT internal)").fetchall()
    have: dict[str, set[str]] = {}
    for table, column in rows:
        have.setdefault(table, set()).add(column)
    for name, schema in CONTRACT_VIEWS.items():
        if name not in have:
            raise ReportError(f"view {name} is missing: {_VIEW_FILES[name]} is not loaded (the report needs the analysis views)")
        lacking = [c for c in schema if c not in have[name]]
        if lacking:
            raise ReportError(f"view {name} lacks the contract's columns {', '.join(lacking)}")


def lake_snapshot(lake: Lake) -> LakeSnapshot:
    """Snapshot of every committed Parquet file of ``lake`` (seed files included)."""
    names: list[str] = []
    root = lake.root.rstrip("/") + "/"
    for event_type in EVENT_TYPES:
        names.extend(f.removeprefix(root) for f in lake.files(event_type))
    names.sort()
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return LakeSnapshot(lake.uri, len(names), digest, lake.versions())
