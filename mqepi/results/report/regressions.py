"""RQ3 and RQ5: energy regressed on what the quantization changes.

* :func:`rq3_sensitivity`: J/token and accuracy regressed (OLS) on the mean bits/weight of
  the early, middle and late layers;
* :func:`rq5_attribution`: decode J/token against bytes read per generated token and
  against time per token, and each configuration's fraction of the decode roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mqepi.results.report.data import ReportData, group_filter, with_layer_bits
from mqepi.results.report.labels import CANNOT, LAYER_GROUPS, fmt, fmt_ci
from mqepi.results.report.questions import Answer, GroupResult, no_energy
from mqepi.results.report.statistics import Fit, ols, pearson

#: The RQ3 regressors: mean bits/weight of each layer group.
RQ3_TERMS = [f"{g}_bpw" for g in LAYER_GROUPS]


# -- RQ3 -----------------------------------------------------------------


@dataclass
class Rq3Result(GroupResult):
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
    for origin, model, ps in data.groups():
        cs = group_filter(data.config_summary, origin, model, ps).select("model", "config_id", "origin", "kind", *responses)
        table = with_layer_bits(data, cs).select("config_id", "kind", *RQ3_TERMS, *responses,
                                                 *[f"{g}_n_elements" for g in LAYER_GROUPS], "inventory_origin").sort("config_id")
        fits = {r: ols({t: table[t].to_list() for t in RQ3_TERMS}, table[r].to_list(), r,
                       labels=table["config_id"].to_list()) for r in responses}
        n_el = {g: (table[f"{g}_n_elements"].drop_nulls().max() if table.height else None) for g in LAYER_GROUPS}
        inv_origins = sorted(set(table["inventory_origin"].drop_nulls().to_list()))
        evidence = (f"config_summary medians of {table.height} configurations; bits/weight per layer group from "
                    f"tensor_inventory ({', '.join(inv_origins) or 'none found'}); OLS with intercept, 95% t intervals; "
                    "configurations with Cook's distance > 4/n named, with the fit without them.")
        parts = [_rq3_response(r, fits[r], n_el, no_energy(ps)) for r in responses]
        supported = any(r.startswith("j_per_token") and fits[r].supported and not no_energy(ps) for r in responses)
        results.append(Rq3Result(origin, model, ps, table, fits, n_el,
                                 Answer("RQ3", origin, model, ps, " ".join(parts), evidence, supported)))
    return results


def _rq3_slopes(fit: Fit) -> str:
    """'early 0.004 [0.003, 0.005]; middle ...; late ...' of a fit with coefficients."""
    return "; ".join(f"{t.removesuffix('_bpw')} {fmt_ci(fit.coef[t], fit.ci_low[t], fit.ci_high[t], 3)}" for t in RQ3_TERMS)


def _rq3_response(r: str, fit: Fit, n_el: dict[str, int | None], no_energy_why: str | None) -> str:
    """The RQ3 answer about one response: its slopes, the most sensitive layer group, and
    each influential configuration with the fit without it."""
    unit = "J/token" if "j_per_token" in r else r
    if r.startswith("j_per_token") and no_energy_why:
        return f"{r}: {no_energy_why}."
    if not fit.coef:
        return f"{r}: {CANNOT} ({fit.reason})."
    head = f"{r} per extra bit/weight (n = {fit.n}, R^2 = {fmt(fit.r2, 3)}): {_rq3_slopes(fit)}."
    influence = fit.influence_text(lambda w: f"the slopes are {_rq3_slopes(w)}, R^2 = {fmt(w.r2, 3)}")
    tail = f" {influence}" if influence else ""
    if not fit.supported:
        return f"{head} {CANNOT.capitalize()} ({fit.reason}).{tail}"
    sig = [t for t in RQ3_TERMS if fit.excludes_zero(t)]
    best = max(sig, key=lambda t: abs(fit.coef[t]))
    g = best.removesuffix("_bpw")
    per_gb = ""
    if n_el.get(g) and r.startswith("j_per_token"):
        per_gb = f", {fmt(fit.coef[best] * 8e9 / n_el[g], 3)} {unit} per GB of its weights"
    return (f"{head} Most sensitive: the {g} layers ({fmt(fit.coef[best], 3)} {unit} per bit/weight{per_gb}); "
            f"intervals excluding 0: {', '.join(t.removesuffix('_bpw') for t in sig)}.{tail}")


# -- RQ5 -----------------------------------------------------------------


@dataclass
class Rq5Result(GroupResult):
    # config_id, kind, bytes_per_token, decode_tokens_per_s, s_per_token, decode_j_per_token, roofline_fraction
    table: pl.DataFrame
    fit_bytes: Fit  # decode_j_per_token ~ gb_per_token
    fit_time: Fit  # decode_j_per_token ~ s_per_token
    correlation: float | None  # between bytes/token and time/token
    bandwidth_gbs: float | None
    moe: bool
    answer: Answer


def rq5_attribution(data: ReportData, bandwidth_gbs: float | None = None) -> list[Rq5Result]:
    """RQ5 per group: decode J/token regressed on the bytes read per generated token
    (:func:`~mqepi.results.report.data.layer_group_bits`) and, separately, on the time per
    token (1 / decode tokens/s), each a simple OLS with R^2; and each configuration's fraction
    of the decode roofline, bytes_per_token * decode_tokens_per_s / bandwidth, when the memory
    bandwidth (GB/s) is known (``bandwidth_gbs``, else ``data.bandwidth_gbs``)."""
    bw = bandwidth_gbs if bandwidth_gbs is not None else data.bandwidth_gbs
    results = []
    for origin, model, ps in data.groups():
        table = _rq5_table(data, group_filter(data.config_summary, origin, model, ps), bw)
        decode = table["decode_j_per_token"].to_list()
        ids = table["config_id"].to_list()
        fit_b = ols({"gb_per_token": table["gb_per_token"].to_list()}, decode, "decode_j_per_token", labels=ids)
        fit_t = ols({"s_per_token": table["s_per_token"].to_list()}, decode, "decode_j_per_token", labels=ids)
        corr = pearson(table["gb_per_token"].to_list(), table["s_per_token"].to_list())
        moe = bool(table["moe"].fill_null(False).any()) if table.height else False
        evidence = (f"config_summary decode windows (tg) of {table.height} configurations: median decode J/token and decode "
                    "tokens/s; bytes read per generated token from tensor_inventory (every tensor except an untied "
                    "token_embd.weight)"
                    + (" - an upper bound for this MoE model, which reads only its routed experts" if moe else "")
                    + "; simple OLS with intercept, 95% t intervals; configurations with Cook's distance > 4/n "
                    "named, with the fit without them.")
        why = no_energy(ps)
        supported, parts = (False, [f"{CANNOT.capitalize()}: {why}."]) if why else _rq5_fits(fit_b, fit_t, corr)
        parts.append(_roofline_text(table, bw))
        results.append(Rq5Result(origin, model, ps, table, fit_b, fit_t, corr, bw, moe,
                                 Answer("RQ5", origin, model, ps, " ".join(parts), evidence, supported)))
    return results


def _rq5_table(data: ReportData, cs: pl.DataFrame, bw: float | None) -> pl.DataFrame:
    """Per configuration: bytes and time per token, decode J/token and the roofline fraction."""
    t = with_layer_bits(data, cs.select("model", "config_id", "origin", "kind", "decode_tokens_per_s", "decode_j_per_token"))
    t = t.with_columns(
        s_per_token=pl.when(pl.col("decode_tokens_per_s") > 0).then(1.0 / pl.col("decode_tokens_per_s")),
        gb_per_token=pl.col("bytes_per_token").cast(pl.Float64) / 1e9,
    ).with_columns(
        roofline_fraction=(pl.col("bytes_per_token").cast(pl.Float64) * pl.col("decode_tokens_per_s") / (bw * 1e9))
        if bw else pl.lit(None, dtype=pl.Float64),
    )
    return t.select("config_id", "kind", "bytes_per_token", "decode_tokens_per_s", "s_per_token", "decode_j_per_token",
                    "roofline_fraction", "moe", "gb_per_token").sort("config_id")


def _rq5_fits(fit_b: Fit, fit_t: Fit, corr: float | None) -> tuple[bool, list[str]]:
    """(supported, sentences) of RQ5 about the two fits and what explains decode energy."""
    parts: list[str] = []
    for label, fit, term, unit in (("bytes read per token", fit_b, "gb_per_token", "J/token per GB read"),
                                  ("time per token", fit_t, "s_per_token", "W (J/token per s/token)")):
        if fit.coef:
            parts.append(f"Decode J/token vs {label} (n = {fit.n}): slope "
                         f"{fmt_ci(fit.coef[term], fit.ci_low[term], fit.ci_high[term], 3)} {unit}, "
                         f"R^2 = {fmt(fit.r2, 3)}" + ("." if fit.supported else f"; {CANNOT} ({fit.reason})."))
            influence = fit.influence_text(
                lambda w, term=term, unit=unit: f"the slope is {fmt_ci(w.coef[term], w.ci_low[term], w.ci_high[term], 3)} "
                                               f"{unit}, R^2 = {fmt(w.r2, 3)}")
            if influence:
                parts.append(influence)
        else:
            parts.append(f"Decode J/token vs {label}: {CANNOT} ({fit.reason}).")
    if corr is not None:
        parts.append(f"Bytes/token and time/token correlate at r = {fmt(corr, 3)}.")
    verdict = _rq5_verdict(fit_b, fit_t, corr)
    if verdict:
        parts.append(verdict)
    return verdict is not None, parts


def _rq5_verdict(fit_b: Fit, fit_t: Fit, corr: float | None) -> str | None:
    """Bandwidth, compute or both, from the supported fits; None when neither is supported."""
    if fit_b.supported and fit_t.supported:
        if corr is not None and abs(corr) >= 0.9:
            return ("Both explain decode energy, and they move together, so these configurations cannot "
                    "separate a memory-bandwidth effect from a compute effect: the saving comes with fewer "
                    "bytes and less time alike.")
        if (fit_b.r2 or 0) >= (fit_t.r2 or 0) + 0.1:
            return "Bytes read explain decode energy better than time per token: mostly a memory-bandwidth effect."
        if (fit_t.r2 or 0) >= (fit_b.r2 or 0) + 0.1:
            return "Time per token explains decode energy better than bytes read: mostly compute (or stalls), not bandwidth."
        return "Bytes read and time per token explain decode energy about equally: both."
    if fit_b.supported:
        return "Only bytes read per token explains decode energy: a memory-bandwidth effect."
    if fit_t.supported:
        return "Only time per token explains decode energy: compute (or stalls), not bytes read."
    return None


def _roofline_text(table: pl.DataFrame, bw: float | None) -> str:
    """Where decode sits against the memory roofline at ``bw`` GB/s, or that ``bw`` is unknown."""
    fractions = table["roofline_fraction"].drop_nulls()
    if not bw:
        return "Memory bandwidth unknown (pass --bandwidth-gbs): the roofline fraction is not computed."
    if not fractions.len():
        return f"At {fmt(bw)} GB/s: no configuration has both decode throughput and a tensor inventory."
    med = float(fractions.median())
    where = ("near the memory roofline (bandwidth-bound)" if med >= 0.6 else
             "far below the memory roofline (not bandwidth-bound)" if med <= 0.3 else "part-way to the memory roofline")
    return (f"At {fmt(bw)} GB/s, decode reaches {fmt(float(fractions.min()), 2)} to {fmt(float(fractions.max()), 2)} "
            f"of the roofline (median {fmt(med, 2)}): {where}.")
