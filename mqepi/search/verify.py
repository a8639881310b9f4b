"""What the measured searched maps show: predicted vs measured, and where each lands.

The verification sweep measures the written maps together with the paper configurations
they must beat (:func:`paper_baselines`: those of KLD at most the budget), in the same run
and setting, so the energy comparison is never between runs of different days or loads; it
is a sweep of its own name (:func:`sweep_name`), which resumes like any sweep. The paper
configurations' earlier runs stay in their summaries (more repeats, the day-to-day variation
in their intervals).

The comparison itself (frontier, the paper configurations of equal or lower KLD, within
intervals) is :func:`mqepi.results.report.searched.compare`, which the report's "Per-layer
search" section uses too; this module reads its inputs from the lake and words the result.
"""

from __future__ import annotations

import hashlib

import polars as pl

from mqepi.results import sql
from mqepi.results.report.searched import beats, compare, file_provenances, is_paper, provenance


def paper_baselines(lake, model: str, budget_kld: float) -> list[str]:
    """The paper configurations of ``model`` whose measured KLD (config_summary, any group) is at
    most ``budget_kld``: what a searched map within the budget has to beat. [] on a lake
    without measurements."""
    if not lake.exists():
        return []
    rows = sql.query(sql.connect(lake), "SELECT DISTINCT config_id FROM config_summary WHERE model = ? "
                     "AND kld_mean <= ? ORDER BY config_id", [model, budget_kld]).to_pylist()
    return [r["config_id"] for r in rows if is_paper(r["config_id"])]


def sweep_name(config_ids: list[str]) -> str:
    """The verification sweep's name: one per set of measured configurations (a rerun resumes it)."""
    return "search-verify-" + hashlib.sha256("\n".join(sorted(config_ids)).encode()).hexdigest()[:10]


def verdict(lake, config_ids: list[str]) -> dict:
    """Per written map: measured KLD and J/token, predictions (from its provenance), frontier."""
    con = sql.connect(lake)
    points = pl.from_arrow(sql.query(
        con, "SELECT f.model, f.origin, f.power_source, f.hardware_id, f.config_id, f.kld_mean, f.j_per_token, f.on_frontier, "
        "s.j_per_token_ci_low, s.j_per_token_ci_high, s.simulated FROM kld_frontier f JOIN config_summary s "
        "USING (model, origin, power_source, hardware_id, config_id)"))
    latest = sql.query(con, "SELECT model, config_id, json_extract_string(arg_max(map_json, recorded_at_ns), '$.provenance') "
                            "AS p, arg_max(map_sha256, recorded_at_ns) AS sha FROM quant_config GROUP BY ALL").to_pylist()
    provenances = {r["config_id"]: provenance(r["p"]) for r in latest if r["p"]}
    for model in {r["model"] for r in latest if r["config_id"] in config_ids}:
        provenances |= file_provenances(model, {r["config_id"]: r["sha"] for r in latest
                                                if r["model"] == model and r["config_id"] in config_ids})
    out = compare(points, provenances, config_ids)
    missing = sorted(set(config_ids) - {o["config_id"] for o in out})
    return {"maps": out, "not_measured": missing}


def describe(v: dict) -> list[str]:
    """One line per map, in words; every J/token labelled with its power source."""
    lines = []
    for m in v["maps"]:
        sim = " (SIMULATED power)" if m["simulated"] else ""
        pred_k = f"{m['predicted_kld']:.5f}" if m["predicted_kld"] is not None else "n/a"
        pred_j = f"{m['predicted_j_per_token']:.4g}" if m["predicted_j_per_token"] is not None else "n/a"
        where = "on the KLD-vs-J/token frontier" if m["on_kld_frontier"] else "not on the KLD-vs-J/token frontier"
        lines.append(f"{m['config_id']} ({m['role']}): KLD measured {m['measured_kld']:.5f} vs predicted {pred_k}; "
                     f"J/token measured {m['measured_j_per_token']:.4g}{sim} vs predicted {pred_j}; {where}; {beats(m)}")
    if v["not_measured"]:
        lines.append(f"not measured (no valid run with KLD and energy): {', '.join(v['not_measured'])}")
    return lines
