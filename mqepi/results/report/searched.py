"""The per-layer search's maps against the paper's configurations (``mqepi search``, the report).

A measured searched map *beats the paper* when, in its own group (model, origin, power source,
hardware), it lies on the KLD-vs-J/token frontier (the ``kld_frontier`` view) and its J/token
is below that of every paper configuration whose KLD is equal or lower; it does so *within
intervals* when its J/token interval's upper end is below each of those configurations' lower
end (config_summary's 95% intervals: repeats and meter). KLD enters as the point value
(config_summary's median over repeats): the comparison carries no KLD interval, and says so.

:func:`compare` is plain Python over frames, shared by :func:`mqepi.search.verify.verdict` and
the report's "Per-layer search" section.
"""

from __future__ import annotations

import json
import statistics

import polars as pl

from mqepi.errors import MqepiError
from mqepi.quant import maps
from mqepi.quant.maps import PROBE_PREFIX, SEARCH_PREFIX
from mqepi.results.report.labels import fmt, fmt_ci

#: Columns :func:`compare` reads from its ``points`` frame (kld_frontier joined to config_summary).
POINT_COLUMNS = ("model", "origin", "power_source", "hardware_id", "config_id", "kld_mean", "j_per_token",
                 "on_frontier", "j_per_token_ci_low", "j_per_token_ci_high", "simulated")
SEARCH_HEADERS = ["Map", "Role", "KLD predicted", "KLD measured", "J/token predicted", "J/token measured (95% CI)",
                  "On KLD frontier", "Paper configs of equal or lower KLD", "Lower J/token than all of them"]


def is_paper(config_id: str) -> bool:
    """A configuration of the paper's matrix (neither a searched map nor a probe)."""
    return not config_id.startswith((SEARCH_PREFIX, PROBE_PREFIX))


def provenance(provenance_json: str | None) -> dict:
    """A quant map's ``provenance`` object from its JSON text (``{}`` when NULL or no JSON object)."""
    try:
        doc = json.loads(provenance_json) if provenance_json else {}
    except json.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def file_provenances(model: str, sha_by_id: dict[str, str]) -> dict[str, dict]:
    """``provenance`` of each quant map file ``quant_maps/<model>/<config_id>.json`` whose map is
    the one measured (its sha256 equal to the lake's ``map_sha256``): the lake records a map's
    identity, not its provenance, so predictions are read from the file that carries them."""
    out: dict[str, dict] = {}
    try:
        profile = maps.load_profile(model)
    except MqepiError:
        return out
    for config_id, sha in sha_by_id.items():
        path = maps.maps_dir(model) / f"{config_id}.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
            if maps.load_map(path, profile).sha256 == sha and isinstance(doc.get("provenance"), dict):
                out[config_id] = doc["provenance"]
        except (OSError, ValueError, MqepiError):
            continue
    return out


def compare(points: pl.DataFrame, provenances: dict[str, dict], config_ids: list[str] | None = None) -> list[dict]:
    """One dict per searched map in ``points`` (or per ``config_ids``): measured and predicted
    KLD and J/token, frontier, the paper configurations of equal or lower KLD in its group and
    whether it is below all of them in J/token (point values; within intervals)."""
    wanted = (points.filter(pl.col("config_id").is_in(config_ids)) if config_ids is not None
              else points.filter(pl.col("config_id").str.starts_with(SEARCH_PREFIX)))
    out = []
    for r in wanted.sort("config_id").iter_rows(named=True):
        same = points.filter((pl.col("model") == r["model"]) & (pl.col("origin") == r["origin"])
                             & (pl.col("power_source") == r["power_source"])
                             & (pl.col("hardware_id") == r["hardware_id"]))
        paper = [p for p in same.iter_rows(named=True) if is_paper(p["config_id"]) and p["kld_mean"] <= r["kld_mean"]]
        prov = provenances.get(r["config_id"], {})
        out.append({
            "config_id": r["config_id"], "role": prov.get("role"), "model": r["model"], "origin": r["origin"],
            "power_source": r["power_source"], "hardware_id": r["hardware_id"], "simulated": r["simulated"],
            "measured_kld": r["kld_mean"], "predicted_kld": prov.get("predicted_kld"),
            "measured_j_per_token": r["j_per_token"], "j_per_token_ci_low": r["j_per_token_ci_low"],
            "j_per_token_ci_high": r["j_per_token_ci_high"], "predicted_j_per_token": prov.get("predicted_j_per_token"),
            "on_kld_frontier": bool(r["on_frontier"]), "paper_configs_at_or_below_its_kld": len(paper),
            "lower_j_than_all_of_them": bool(paper) and all(r["j_per_token"] < p["j_per_token"] for p in paper),
            "lower_j_within_intervals": bool(paper) and all(
                r["j_per_token_ci_high"] is not None and p["j_per_token_ci_low"] is not None
                and r["j_per_token_ci_high"] < p["j_per_token_ci_low"] for p in paper),
        })
    return out


def beats(m: dict) -> str:
    """Whether a compared map is below every paper configuration of equal or lower KLD, in words."""
    n = m["paper_configs_at_or_below_its_kld"]
    if not n:
        return "no paper config has equal or lower KLD"
    if not m["lower_j_than_all_of_them"]:
        return f"not below every one of the {n} paper configs of equal or lower KLD"
    return (f"lower J/token than all {n} paper configs of equal or lower KLD"
            + (" (also within intervals)" if m["lower_j_within_intervals"] else " (point values only, not within intervals)"))


def search_rows(compared: list[dict]) -> list[list[str]]:
    """The report's table of searched maps."""
    rows = []
    for m in compared:
        n = m["paper_configs_at_or_below_its_kld"]
        lower = ("-" if not n else "yes, within intervals" if m["lower_j_within_intervals"]
                 else "yes (point values)" if m["lower_j_than_all_of_them"] else "no")
        rows.append([m["config_id"], m["role"] or "-", fmt(m["predicted_kld"]), fmt(m["measured_kld"]),
                     fmt(m["predicted_j_per_token"]),
                     fmt_ci(m["measured_j_per_token"], m["j_per_token_ci_low"], m["j_per_token_ci_high"]),
                     "yes" if m["on_kld_frontier"] else "no", fmt(n), lower])
    return rows


def search_summary(compared: list[dict]) -> str:
    """What the measured searched maps of one group show, in sentences their figures support."""
    errors = [abs(m["measured_kld"] - m["predicted_kld"]) / m["measured_kld"] for m in compared
              if m["predicted_kld"] is not None and m["measured_kld"]]
    optimised = [m for m in compared if m["role"] == "searched"]
    on = [m["config_id"] for m in optimised if m["on_kld_frontier"]]
    below = [m for m in optimised if m["lower_j_than_all_of_them"]]
    within = [m["config_id"] for m in below if m["lower_j_within_intervals"]]
    baselines = [m for m in compared if m["role"] in ("kld-only", "random")]
    unknown = len(compared) - len(optimised) - len(baselines)
    parts = [f"{len(compared)} maps of the per-layer search measured ({len(optimised)} optimised, {len(baselines)} "
             "baselines" + (f", {unknown} without their map file: role and predictions unknown" if unknown else "") + ")."]
    if errors:
        parts.append(f"Predicted vs measured KLD: median relative error {100 * statistics.median(errors):.0f}%.")
    parts.append(f"On the KLD-vs-J/token frontier: {', '.join(on) if on else 'none of the optimised maps'}.")
    if not below:
        parts.append("No optimised map has lower J/token than every paper configuration of equal or lower KLD.")
    elif within:
        parts.append(f"Lower J/token than every paper configuration of equal or lower KLD, with non-overlapping 95% "
                     f"J/token intervals: {', '.join(within)}.")
    else:
        parts.append(f"Lower J/token than every paper configuration of equal or lower KLD in point values "
                     f"({', '.join(m['config_id'] for m in below)}), but the 95% J/token intervals overlap: "
                     "the data do not show that it dominates.")
    parts.append("KLD is compared as a point value (median over repeats), without an interval. J/token pools every "
                 "valid run of a configuration (runs of other days or loads included); `mqepi search` also compares "
                 "within its own verification sweep.")
    return " ".join(parts)
