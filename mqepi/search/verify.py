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


#: The verification sweep's own runs per configuration: medians, and the J/token interval of the
#: meter's 95% (1.96 standard uncertainties of the benchmark energy over its tokens) for one run.
_SAME_RUN = """
SELECT model, origin, power_source, hardware_id, bool_or(simulated) AS simulated, config_id,
    median(kld_mean) AS kld_mean, median(j_per_token) AS j_per_token, count(*) AS n_runs,
    median(benchmark_energy_uncertainty_j / benchmark_tokens) AS u
FROM run_metrics WHERE valid AND starts_with(run_id, ?) AND isfinite(kld_mean) AND isfinite(j_per_token)
GROUP BY ALL
"""


def same_run_points(lake, sweep: str) -> pl.DataFrame:
    """The configurations the verification sweep ``sweep`` measured, from its runs only: KLD,
    J/token (one run each: the interval is the meter's), and the KLD-vs-J/token frontier among
    them per group (the ``kld_frontier`` rule: no other point at least as good on both, better
    on one)."""
    df = pl.from_arrow(sql.query(sql.connect(lake), _SAME_RUN, [f"{sweep}-"]))
    if df.is_empty():
        return df
    df = df.with_columns(j_per_token_ci_low=pl.col("j_per_token") - 1.96 * pl.col("u"),
                         j_per_token_ci_high=pl.col("j_per_token") + 1.96 * pl.col("u"))
    rows = df.to_dicts()
    key = ("model", "origin", "power_source", "hardware_id")
    on = [not any(all(x[k] == y[k] for k in key) and x["kld_mean"] <= y["kld_mean"] and x["j_per_token"] <= y["j_per_token"]
                  and (x["kld_mean"] < y["kld_mean"] or x["j_per_token"] < y["j_per_token"]) for x in rows) for y in rows]
    return df.with_columns(on_frontier=pl.Series(on))


def verdict(lake, config_ids: list[str], sweep: str | None = None) -> dict:
    """Per written map: measured KLD and J/token, predictions (from its provenance), frontier.
    With ``sweep``: from that verification sweep's runs only (every configuration measured in the
    same run and load); without: config_summary and kld_frontier (every run pooled)."""
    con = sql.connect(lake)
    if sweep is not None:
        points = same_run_points(lake, sweep)
    else:
        points = pl.from_arrow(sql.query(
            con, "SELECT f.model, f.origin, f.power_source, f.hardware_id, f.config_id, f.kld_mean, f.j_per_token, "
            "f.on_frontier, s.j_per_token_ci_low, s.j_per_token_ci_high, s.simulated FROM kld_frontier f JOIN "
            "config_summary s USING (model, origin, power_source, hardware_id, config_id)"))
    if points.is_empty():
        return {"maps": [], "not_measured": sorted(config_ids), "sweep": sweep}
    latest = sql.query(con, "SELECT model, config_id, json_extract_string(arg_max(map_json, recorded_at_ns), '$.provenance') "
                            "AS p, arg_max(map_sha256, recorded_at_ns) AS sha FROM quant_config GROUP BY ALL").to_pylist()
    provenances = {r["config_id"]: provenance(r["p"]) for r in latest if r["p"]}
    for model in {r["model"] for r in latest if r["config_id"] in config_ids}:
        provenances |= file_provenances(model, {r["config_id"]: r["sha"] for r in latest
                                                if r["model"] == model and r["config_id"] in config_ids})
    out = compare(points, provenances, config_ids)
    missing = sorted(set(config_ids) - {o["config_id"] for o in out})
    return {"maps": out, "not_measured": missing, "sweep": sweep}


def describe(v: dict) -> list[str]:
    """One line per map, in words; every J/token labelled with its power source."""
    lines = [f"in the verification sweep {v['sweep']} only (every configuration measured in the same run; one run "
             "each: J/token intervals are the meter's)"] if v.get("sweep") else []
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
