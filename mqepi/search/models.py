"""The search's models, each with its error: predicted KLD of a map (first-order, from the
probes), the cost of a unit (bytes and J/token from the measured runs), KLD -> accuracy.

Quality. predicted KLD(map) = KLD(reference) + sum over units of [KLD(probe of the unit at its
type) - KLD(reference)]: the first-order (additive) model. It is checked against every map of
the lake measured on the same text, context and chunks (the paper's configurations): the
Spearman rank correlation and the median relative error, and the median ratio measured /
predicted says whether interactions matter (>1: errors compound, super-additive).

Cost. J/token = a + b * bytes read per token (the paper's RQ5 relation: every weight is read
once per decoded token), fitted by least squares over the lake's configurations with a valid
energy measurement, with 95% intervals. A unit's cost at a type is b times its exact bytes
(from the per-tensor expansion). Where the lake has no energy measurement the cost is the
bytes themselves and no J/token is predicted (said). With a cost linear in bytes, minimising
predicted J/token is minimising bytes read per token: the energy-aware and the size-aware
searches coincide unless the measured relation says otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from mqepi.quant import maps
from mqepi.quant.expansion import expand
from mqepi.quant.maps import PROBE_PREFIX, SEARCH_PREFIX, ModelProfile, QuantMap
from mqepi.results import sql
from mqepi.search.probes import ProbeSet, SearchError, Unit, assigned_map


def unit_types(qmap: QuantMap, unit: Unit) -> dict[str, float]:
    """Share of ``unit`` at each file type under ``qmap`` (a layer block may straddle groups)."""
    if unit.tensor == "output":
        return {qmap.output or qmap.group_of(max(g for grp in qmap.groups for g in grp.layers)).quant: 1.0}
    if unit.tensor == "token_embd":
        return {qmap.token_embd or qmap.group_of(0).quant: 1.0}
    out: dict[str, float] = {}
    for layer in unit.layers:
        q = qmap.group_of(layer).quant
        out[q] = out.get(q, 0.0) + 1.0 / len(unit.layers)
    return out


def predict_kld(probes: ProbeSet, qmap: QuantMap, scale: float = 1.0) -> float:
    """First-order predicted mean KLD of ``qmap`` (nats per token); ``scale`` multiplies the summed
    change from the reference (a :class:`Calibration`'s ratio)."""
    change = 0.0
    for unit in probes.units:
        for qtype, share in unit_types(qmap, unit).items():
            change += share * probes.delta(unit.name, qtype)
    return max(probes.reference.kld_mean + scale * change, 0.0)


@dataclass
class Calibration:
    """How much the first-order model under-predicts the maps an optimiser picks: the median, over
    the searched maps measured on the probes' text (random baselines left out: nobody selected
    them), of measured / predicted KLD change from the reference. An optimiser picks the units
    whose probes came out lowest, noise and interactions included, so its maps' errors compound
    more than a paper configuration's; the next search scales its predictions by this ratio."""

    ratio: float
    n: int
    config_ids: list[str]

    def describe(self) -> str:
        return (f"calibration: measured / predicted KLD change of {self.n} searched map(s) measured on this text "
                f"(median) = {self.ratio:.3f}; predictions of this search are scaled by it ({', '.join(self.config_ids)})")


def calibrate(probes: ProbeSet, profile: ModelProfile, measured: list[tuple[str, str, float]],
              provenances: dict[str, dict]) -> Calibration | None:
    """The :class:`Calibration` of the searched maps among ``measured`` that a search with these
    probes picked: their ``provenances`` (the map files' provenance) name the same reference, unit
    size and text settings (None: none such measured)."""
    s = probes.settings
    ratios, ids = [], []
    for config_id, map_json, kld in measured:
        if not config_id.startswith(SEARCH_PREFIX) or config_id.startswith(f"{SEARCH_PREFIX}random-"):
            continue
        prov = provenances.get(config_id, {})
        if (prov.get("reference"), prov.get("group"), prov.get("text")) != (
                s.reference, s.group, {"context": s.ppl_context, "chunks": s.ppl_chunks}):
            continue  # picked by another search (other probes): its bias is not this one's
        qmap = maps.parse_map(json.loads(map_json), where=config_id, profile=profile)
        try:
            change = predict_kld(probes, qmap) - probes.reference.kld_mean
        except SearchError:
            continue  # a type these probes do not cover
        if change > 0:
            ratios.append((kld - probes.reference.kld_mean) / change)
            ids.append(config_id)
    if not ratios:
        return None
    return Calibration(float(np.median(ratios)), len(ratios), ids)


def unit_bytes(profile: ModelProfile, unit_list: list[Unit], types: list[str]) -> dict[tuple[str, str], int]:
    """Exact data bytes of every (unit, type), and of the rest under key ('rest', type)."""
    out: dict[tuple[str, str], int] = {}
    for qtype in types:
        qmap = assigned_map(profile, "bytes", {u.name: qtype for u in unit_list}, unit_list, qtype)
        by_tensor = {t.name: t.n_bytes for t in expand(qmap, profile).tensors}
        seen: set[str] = set()
        for u in unit_list:
            if u.tensor:
                names = {"output.weight", "token_embd.weight"} if u.tensor == "output" and profile.tied_embeddings \
                    else {f"{u.tensor}.weight"}
            else:
                names = {t.name for t in profile.tensors if t.layer in u.layers}
            names &= by_tensor.keys()
            out[(u.name, qtype)] = sum(by_tensor[n] for n in names)
            seen |= names
        out[("rest", qtype)] = sum(n for name, n in by_tensor.items() if name not in seen)
    return out


@dataclass
class CostModel:
    """J/token = intercept_j + j_per_byte * bytes (``measured`` False: bytes only, no J/token)."""

    measured: bool
    intercept_j: float = 0.0
    j_per_byte: float = 1.0
    j_per_byte_ci: tuple[float, float] | None = None
    intercept_ci: tuple[float, float] | None = None
    r2: float | None = None
    n_configs: int = 0
    power_source: str | None = None
    group: str = ""
    #: Why the measured fit is not used (``measured`` False with a fit): said by :meth:`describe`.
    rejected: str | None = None

    def j_per_token(self, data_bytes: float) -> float | None:
        return self.intercept_j + self.j_per_byte * data_bytes if self.measured else None

    def describe(self) -> str:
        if self.rejected:
            return f"cost = bytes read per token, no J/token predicted: {self.rejected}"
        if not self.measured:
            return ("cost = bytes read per token (the lake has no valid energy measurement of this model: "
                    "no J/token predicted)")
        lo, hi = self.j_per_byte_ci or (math.nan, math.nan)
        return (f"J/token = {self.intercept_j:.4g} + {self.j_per_byte * 1e6:.4g} x data MB "
                f"(95% CI of the slope {lo * 1e6:.4g}-{hi * 1e6:.4g}; R^2 {self.r2:.3f}; {self.n_configs} configurations, "
                f"{self.power_source} power{' - SIMULATED' if self.power_source == 'simulated' else ''}; {self.group})")


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, tuple[float, float], tuple[float, float], float]:
    """Least squares y = a + b x: a, b, 95% CI of b, of a (t quantile), R^2."""
    from scipy import stats  # scipy is heavy: only a fit needs it

    n = len(x)
    X = np.column_stack([np.ones(n), x])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = max(n - 2, 1)
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.pinv(X.T @ X)
    t = stats.t.ppf(0.975, dof)
    se_a, se_b = math.sqrt(max(cov[0, 0], 0)), math.sqrt(max(cov[1, 1], 0))
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(resid @ resid) / ss if ss > 0 else float("nan")
    a, b = float(coef[0]), float(coef[1])
    return a, b, (b - t * se_b, b + t * se_b), (a - t * se_a, a + t * se_a), r2


def measured_configs(con, model: str) -> pl.DataFrame:
    """config_summary rows of ``model`` (paper and searched maps; probes left out) with their map."""
    return pl.from_arrow(sql.query(
        con, "SELECT s.origin, s.power_source, s.hardware_id, s.config_id, s.kld_mean, s.j_per_token, s.accuracy, "
        "s.n_repeats, q.map_json FROM config_summary s JOIN (SELECT model, config_id, arg_max(map_json, recorded_at_ns) "
        "AS map_json FROM quant_config GROUP BY ALL) q USING (model, config_id) WHERE s.model = ? "
        "AND NOT starts_with(s.config_id, ?)", [model, PROBE_PREFIX]))


def fit_cost(rows: pl.DataFrame, profile: ModelProfile) -> CostModel:
    """The cost model from the group (origin, power source, hardware) with the most configurations
    measured with power (not ``none``), excluding searched maps (fitted before they exist)."""
    energy = rows.filter(pl.col("j_per_token").is_not_null() & pl.col("j_per_token").is_finite()
                         & (pl.col("power_source") != "none") & ~pl.col("config_id").str.starts_with(SEARCH_PREFIX))
    if energy.height < 3:
        return CostModel(measured=False)
    best = energy.group_by("origin", "power_source", "hardware_id").len().sort("len", descending=True).row(0)
    grp = energy.filter((pl.col("origin") == best[0]) & (pl.col("power_source") == best[1])
                        & (pl.col("hardware_id") == best[2]))
    x = np.array([expand(maps.parse_map(json.loads(m), profile=profile), profile).data_bytes for m in grp["map_json"]],
                 dtype=float)
    a, b, b_ci, a_ci, r2 = fit_line(x, grp["j_per_token"].to_numpy())
    group = f"origin {best[0]}, hardware {best[2]}"
    if not b_ci[0] > 0:  # the data do not show J/token rising with bytes: never optimise on its sign
        return CostModel(False, rejected=(
            f"the measured slope {b * 1e6:.3g} J/token per MB (95% CI {b_ci[0] * 1e6:.3g} to {b_ci[1] * 1e6:.3g}; "
            f"{grp.height} configurations, {best[1]} power, {group}) is not shown positive (runs of different "
            "loads pooled, or a compute-bound machine); every weight is read once per token, so bytes stand in"))
    return CostModel(True, a, b, b_ci, a_ci, r2, grp.height, best[1], group)


@dataclass
class QualityCheck:
    """Predicted vs measured KLD over the lake's measured maps: the figures over the maps no
    search picked (the paper's configurations), and apart the searched maps' (their own bias:
    :class:`Calibration`)."""

    n: int
    spearman: float | None
    median_relative_error: float | None
    median_ratio: float | None  # measured / predicted
    rows: list[dict]

    @property
    def searched(self) -> list[dict]:
        return [r for r in self.rows if r["config_id"].startswith(SEARCH_PREFIX)]

    def describe(self) -> str:
        extra = ""
        if self.searched:
            ratios = [r["measured_kld"] / r["predicted_kld"] for r in self.searched if r["predicted_kld"] > 0]
            extra = (f"; apart, {len(self.searched)} searched map(s): median measured/predicted "
                     f"{float(np.median(ratios)):.3f}" if ratios else "")
        if not self.n:
            return "no measured map of this model on the probes' text, context and chunks to check the KLD model against"
        inter = ("interactions matter: measured KLD exceeds the first-order sum (super-additive)"
                 if self.median_ratio > 1.1 else
                 "interactions matter: measured KLD falls below the first-order sum (sub-additive)"
                 if self.median_ratio < 0.9 else "the first-order sum holds within 10% at the median (interactions small)")
        return (f"predicted vs measured KLD over {self.n} maps no search picked: Spearman {self.spearman:.3f}, median "
                f"relative error {self.median_relative_error:.1%}, median measured/predicted {self.median_ratio:.3f}; "
                f"{inter}{extra}")


def check_quality(probes: ProbeSet, profile: ModelProfile, measured: list[tuple[str, str, float]]) -> QualityCheck:
    """``measured``: (config_id, map_json, measured mean KLD) of maps measured on the probes' text."""
    from scipy import stats  # scipy is heavy: only a check needs it

    rows = []
    for config_id, map_json, kld in measured:
        qmap = maps.parse_map(json.loads(map_json), where=config_id, profile=profile)
        try:
            pred = predict_kld(probes, qmap)
        except SearchError:
            continue  # a type no probe covers
        rows.append({"config_id": config_id, "measured_kld": kld, "predicted_kld": pred,
                     "relative_error": abs(pred - kld) / kld if kld > 0 else None})
    plain = [r for r in rows if not r["config_id"].startswith(SEARCH_PREFIX)]
    if len(plain) < 2:
        return QualityCheck(len(plain), None, None, None, rows)
    m = np.array([r["measured_kld"] for r in plain])
    p = np.array([r["predicted_kld"] for r in plain])
    rel = [r["relative_error"] for r in plain if r["relative_error"] is not None]
    rho = float(stats.spearmanr(m, p).statistic)
    ratio = float(np.median(m[p > 0] / p[p > 0])) if (p > 0).any() else None
    return QualityCheck(len(plain), rho, float(np.median(rel)) if rel else None, ratio, rows)
