"""What the measured searched maps show: predicted vs measured, and where each lands.

A searched map *beats the paper* when, in its own group (model, origin, power source,
hardware), it lies on the KLD-vs-J/token frontier (the ``kld_frontier`` view) and its measured
J/token is below that of every paper configuration whose measured KLD is equal or lower; it
does so *within intervals* when its J/token interval's upper end is below each of those
configurations' lower end (the intervals of config_summary: repeats and meter).
"""

from __future__ import annotations

import json

import polars as pl

from mqepi.quant.maps import PROBE_PREFIX, SEARCH_PREFIX
from mqepi.results import sql


def verdict(lake, config_ids: list[str]) -> dict:
    """Per written map: measured KLD and J/token, predictions (from its provenance), frontier."""
    con = sql.connect(lake)
    rows = pl.from_arrow(sql.query(
        con, "SELECT f.model, f.origin, f.power_source, f.hardware_id, f.config_id, f.kld_mean, f.j_per_token, f.on_frontier, "
        "s.j_per_token_ci_low, s.j_per_token_ci_high, s.simulated FROM kld_frontier f JOIN config_summary s "
        "USING (model, origin, power_source, hardware_id, config_id)"))
    latest = sql.query(con, "SELECT config_id, arg_max(map_json, recorded_at_ns) AS map_json FROM quant_config GROUP BY ALL")
    maps = {r["config_id"]: json.loads(r["map_json"]) for r in latest.to_pylist()}
    out = []
    for r in rows.filter(rows["config_id"].is_in(config_ids)).iter_rows(named=True):
        same = rows.filter((rows["model"] == r["model"]) & (rows["origin"] == r["origin"])
                           & (rows["power_source"] == r["power_source"]) & (rows["hardware_id"] == r["hardware_id"]))
        paper = [p for p in same.iter_rows(named=True)
                 if not p["config_id"].startswith((SEARCH_PREFIX, PROBE_PREFIX)) and p["kld_mean"] <= r["kld_mean"]]
        prov = maps.get(r["config_id"], {}).get("provenance", {})
        out.append({
            "config_id": r["config_id"], "role": prov.get("role"), "power_source": r["power_source"],
            "simulated": r["simulated"], "measured_kld": r["kld_mean"], "predicted_kld": prov.get("predicted_kld"),
            "measured_j_per_token": r["j_per_token"], "predicted_j_per_token": prov.get("predicted_j_per_token"),
            "on_kld_frontier": r["on_frontier"], "paper_configs_at_or_below_its_kld": len(paper),
            "lower_j_than_all_of_them": all(r["j_per_token"] < p["j_per_token"] for p in paper),
            "lower_j_within_intervals": bool(paper) and all(
                r["j_per_token_ci_high"] is not None and p["j_per_token_ci_low"] is not None
                and r["j_per_token_ci_high"] < p["j_per_token_ci_low"] for p in paper),
        })
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
        beats = (f"lower J/token than all {m['paper_configs_at_or_below_its_kld']} paper configs of equal or lower KLD"
                 + (" (also within intervals)" if m["lower_j_within_intervals"] else " (not within intervals)")
                 if m["lower_j_than_all_of_them"] and m["paper_configs_at_or_below_its_kld"] else
                 "no paper config has equal or lower KLD" if not m["paper_configs_at_or_below_its_kld"] else
                 f"not below every one of the {m['paper_configs_at_or_below_its_kld']} paper configs of equal or lower KLD")
        lines.append(f"{m['config_id']} ({m['role']}): KLD measured {m['measured_kld']:.5f} vs predicted {pred_k}; "
                     f"J/token measured {m['measured_j_per_token']:.4g}{sim} vs predicted {pred_j}; {where}; {beats}")
    if v["not_measured"]:
        lines.append(f"not measured (no valid run with KLD and energy): {', '.join(v['not_measured'])}")
    return lines
