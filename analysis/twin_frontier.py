"""An independent Polars/numpy twin of ``analysis/frontier.sql`` (matched_pairs, pareto_frontier).

Written from the rules in docs/frontier.md, not from the SQL: tests compute both views both
ways on the same data and compare them (style lesson 11). Inputs are Polars frames shaped
like the views the SQL reads: ``run_metrics`` and ``config_summary`` (runs.sql) and
``benchmark_answer`` (views.sql); only the columns named below are used, so tests can build
them by hand.

    run_metrics:      model, config_id, run_id, origin, repeat, power_source, valid,
                      accuracy, j_per_token, epi
    config_summary:   model, config_id, origin, power_source, simulated, kind, accuracy,
                      j_per_token, epi, accuracy_ci_low, accuracy_ci_high,
                      j_per_token_ci_low, j_per_token_ci_high, ppl, ppl_stderr
    benchmark_answer: model, config_id, origin, run_id, question_set_sha256, question_id,
                      correct

The draws, medians and intervals are the shared seeded bootstrap
(:mod:`mqepi.analysis.bootstrap`); the output columns are the contract's
(:mod:`mqepi.analysis.contract`). Missing values (null) are carried as NaN inside and ignored
by medians and quantiles, as SQL ignores NULL.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import polars as pl

from mqepi.analysis import bootstrap
from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.analysis.contract import CONFIG_KEY, FAMILY_KEY, VIEWS

GROUP = list(FAMILY_KEY)
CONFIG = list(CONFIG_KEY)
PAIR = [*GROUP, "config_a", "config_b"]
#: What each side of a pair takes from config_summary (suffixed _a / _b).
SIDE = ("config_id", "ppl", "ppl_stderr", "j_per_token", "epi")


# --------------------------------------------------------------------------- building blocks


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p: min(1, 2 * P(X <= min(b, c))), X ~ Bin(b + c, 1/2); 1 when b + c = 0.

    Exact rational arithmetic, rounded once.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    term = tail = 1  # C(m, 0)
    for i in range(1, min(b, c) + 1):
        term = term * (m - i + 1) // i  # C(m, i), exact
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def _as_points(acc, jpt) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(acc, dtype=float)
    j = np.asarray(jpt, dtype=float)
    if a.shape != j.shape or a.ndim != 1:
        raise ValueError(f"accuracy and J/token must be 1-d arrays of one length, got {a.shape} and {j.shape}")
    return a, j


def pareto_mask(acc, jpt) -> np.ndarray:
    """True where the point (accuracy up, J/token down) is not dominated; O(n log n).

    x dominates y when acc_x >= acc_y and jpt_x <= jpt_y with at least one strict, so an exact
    duplicate does not dominate its twin. A non-finite (or None) coordinate makes no point:
    False, and it dominates nothing.
    """
    a, j = _as_points(acc, jpt)
    mask = np.zeros(a.shape, dtype=bool)
    ok = np.flatnonzero(np.isfinite(a) & np.isfinite(j))
    if ok.size == 0:
        return mask
    order = ok[np.lexsort((j[ok], -a[ok]))]  # accuracy descending, J/token ascending
    sa, sj = a[order], j[order]
    starts = np.flatnonzero(np.r_[True, sa[1:] != sa[:-1]])  # first index of each accuracy level
    level = np.cumsum(np.r_[True, sa[1:] != sa[:-1]]) - 1
    level_min = sj[starts]  # sorted ascending within a level
    better_min = np.r_[np.inf, np.minimum.accumulate(level_min)[:-1]]  # over strictly higher accuracy
    dominated = (level_min[level] < sj) | (better_min[level] <= sj)
    mask[order] = ~dominated
    return mask


def pareto_bruteforce(acc, jpt) -> np.ndarray:
    """The same as :func:`pareto_mask` by comparing every pair, O(n^2): the test oracle."""
    a, j = _as_points(acc, jpt)
    finite = np.isfinite(a) & np.isfinite(j)
    mask = np.zeros(a.shape, dtype=bool)
    for y in range(a.size):
        if not finite[y]:
            continue
        mask[y] = not any(
            finite[x] and a[x] >= a[y] and j[x] <= j[y] and (a[x] > a[y] or j[x] < j[y]) for x in range(a.size)
        )
    return mask


def _float(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()



# --------------------------------------------------------------------------- matched_pairs


def _match_rule(ppl_tolerance: float | None) -> str:
    # printf('%g') in DuckDB and Python's :g both give 6 significant digits, shortest form
    return "within uncertainty" if ppl_tolerance is None else f"within {ppl_tolerance * 100:g}%"


def _perplexity_pairs(config_summary: pl.DataFrame, ppl_tolerance: float | None) -> pl.DataFrame:
    """Pairs a < b of one group whose perplexities match, sorted by PAIR."""
    cs = config_summary.select(*CONFIG, "simulated", "ppl", "ppl_stderr", "j_per_token", "epi")
    a = cs.rename({c: f"{c}_a" for c in SIDE})
    b = cs.drop("simulated").rename({c: f"{c}_b" for c in SIDE})
    pairs = a.join(b, on=GROUP).filter(pl.col("config_id_a") < pl.col("config_id_b"))
    gap = (pl.col("ppl_a") - pl.col("ppl_b")).abs()
    if ppl_tolerance is None:
        match = gap <= (pl.col("ppl_stderr_a") * pl.col("ppl_stderr_a")
                        + pl.col("ppl_stderr_b") * pl.col("ppl_stderr_b")).sqrt()
    else:
        match = gap <= ppl_tolerance * pl.min_horizontal("ppl_a", "ppl_b")
    return (pairs.filter(match.fill_null(False))
            .rename({"config_id_a": "config_a", "config_id_b": "config_b"})
            .sort(PAIR))


def _paired_repeats(run_metrics: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """The repeats valid in both configurations of a pair, with their runs and differences."""
    # one valid run per configuration and repeat: the smallest run_id
    reps = (run_metrics.filter(pl.col("valid")).sort("run_id")
            .unique([*CONFIG, "repeat"], keep="first", maintain_order=True)
            .select(*CONFIG, "repeat", "run_id", "j_per_token", "epi"))
    ra = reps.rename({"config_id": "config_a", "run_id": "run_a", "j_per_token": "jpt_a", "epi": "epi_a_run"})
    rb = reps.rename({"config_id": "config_b", "run_id": "run_b", "j_per_token": "jpt_b", "epi": "epi_b_run"})
    return (pairs.select(PAIR).join(ra, on=[*GROUP, "config_a"]).join(rb, on=[*GROUP, "config_b", "repeat"])
            .with_columns(d_jpt=pl.col("jpt_b") - pl.col("jpt_a"), d_epi=pl.col("epi_b_run") - pl.col("epi_a_run"))
            .sort([*PAIR, "repeat", "run_a"]))


def _mcnemar_counts(paired: pl.DataFrame, benchmark_answer: pl.DataFrame) -> dict[tuple, dict]:
    """Per pair: answers paired over its paired runs and the discordant counts b and c."""
    answers = (benchmark_answer.group_by("model", "config_id", "origin", "run_id", "question_set_sha256", "question_id")
               .agg(pl.col("correct").all()))
    xa = answers.rename({"config_id": "config_a", "run_id": "run_a", "correct": "right_a"})
    xb = answers.rename({"config_id": "config_b", "run_id": "run_b", "correct": "right_b"})
    mcn = (paired.select(*PAIR, "run_a", "run_b")
           .join(xa, on=["model", "origin", "config_a", "run_a"])
           .join(xb, on=["model", "origin", "config_b", "run_b", "question_set_sha256", "question_id"])
           .group_by(PAIR)
           .agg(n_questions_paired=pl.len(),
                mcnemar_b=(pl.col("right_a") & ~pl.col("right_b")).sum(),
                mcnemar_c=(~pl.col("right_a") & pl.col("right_b")).sum()))
    return {tuple(r[k] for k in PAIR): r for r in mcn.iter_rows(named=True)}


def _pair_row(pair: dict, diffs: pl.DataFrame | None, counts: dict | None, seed: int, n_boot: int,
              rule: str) -> dict:
    """One matched_pairs row: the pair, its paired differences' medians and intervals, McNemar."""
    d_jpt = _float(diffs["d_jpt"]) if diffs is not None else np.empty(0)
    d_epi = _float(diffs["d_epi"]) if diffs is not None else np.empty(0)
    n = d_jpt.size
    ci_jpt = ci_epi = (None, None)
    if n:
        idx = bootstrap.index_matrix(seed, n, n_boot)
        ci_jpt = bootstrap.median_interval(d_jpt, indices=idx)
        ci_epi = bootstrap.median_interval(d_epi, indices=idx)
    nq, mb, mc = (counts["n_questions_paired"], counts["mcnemar_b"], counts["mcnemar_c"]) if counts else (0, 0, 0)
    return {
        **{k: pair[k] for k in (*GROUP, "simulated", "config_a", "config_b")},
        "ppl_a": pair["ppl_a"], "ppl_b": pair["ppl_b"],
        "ppl_stderr_a": pair["ppl_stderr_a"], "ppl_stderr_b": pair["ppl_stderr_b"],
        "ppl_diff": pair["ppl_b"] - pair["ppl_a"], "match_rule": rule,
        "j_per_token_a": pair["j_per_token_a"], "j_per_token_b": pair["j_per_token_b"],
        "j_per_token_diff": _median(d_jpt), "j_per_token_diff_ci_low": ci_jpt[0],
        "j_per_token_diff_ci_high": ci_jpt[1],
        "epi_a": pair["epi_a"], "epi_b": pair["epi_b"],
        "epi_diff": _median(d_epi), "epi_diff_ci_low": ci_epi[0], "epi_diff_ci_high": ci_epi[1],
        "n_paired_repeats": n, "n_questions_paired": nq, "mcnemar_b": mb, "mcnemar_c": mc,
        "mcnemar_p": mcnemar_p(mb, mc) if nq else None,
    }


def matched_pairs(run_metrics: pl.DataFrame, config_summary: pl.DataFrame, benchmark_answer: pl.DataFrame, *,
                  seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP,
                  ppl_tolerance: float | None = None) -> pl.DataFrame:
    """The matched_pairs view: perplexity-matched pairs, paired bootstrap and McNemar."""
    bootstrap.check_params(seed, n_boot)
    if ppl_tolerance is not None and ppl_tolerance < 0:
        raise ValueError(f"mqepi_ppl_tolerance must be >= 0, got {ppl_tolerance}")
    pairs = _perplexity_pairs(config_summary, ppl_tolerance)
    paired = _paired_repeats(run_metrics, pairs)
    counts = _mcnemar_counts(paired, benchmark_answer)
    by_pair = {key: frame for key, frame in paired.group_by(PAIR, maintain_order=True)}
    rule = _match_rule(ppl_tolerance)
    rows = []
    for pair in pairs.iter_rows(named=True):
        key = tuple(pair[k] for k in PAIR)
        rows.append(_pair_row(pair, by_pair.get(key), counts.get(key), seed, n_boot, rule))
    return pl.DataFrame(rows, schema=VIEWS["matched_pairs"])


# --------------------------------------------------------------------------- pareto_frontier


def _uniform_flags(acc: np.ndarray, jpt: np.ndarray, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per configuration of a group: a uniform one at least as good in both (weakly matched),
    and one that dominates it."""
    finite = np.isfinite(acc) & np.isfinite(jpt)
    uniform = finite & uniform
    weakly = np.zeros(acc.size, dtype=bool)
    dominated = np.zeros(acc.size, dtype=bool)
    for k in np.flatnonzero(finite):
        weak = uniform & (acc >= acc[k]) & (jpt <= jpt[k])
        weakly[k] = weak.any()
        dominated[k] = (weak & ((acc > acc[k]) | (jpt < jpt[k]))).any()
    return weakly, dominated


def _frontier_probability(group: pl.DataFrame, by_config: dict, seed: int, n_boot: int) -> list[float | None]:
    """Per configuration of a group: the share of resamples in which it is on the frontier
    (None without a valid repeat). In resample b each configuration's point is the medians
    of its resampled valid runs."""
    boot_acc = np.full((n_boot, group.height), np.nan)
    boot_jpt = np.full((n_boot, group.height), np.nan)
    resampled = np.zeros(group.height, dtype=bool)
    for k, key in enumerate(group.select(CONFIG).iter_rows()):
        frame = by_config.get(key)
        if frame is None:
            continue
        resampled[k] = True
        idx = bootstrap.index_matrix(seed, frame.height, n_boot)
        boot_acc[:, k] = bootstrap.nanmedian_rows(_float(frame["accuracy"])[idx])
        boot_jpt[:, k] = bootstrap.nanmedian_rows(_float(frame["j_per_token"])[idx])
    hits = np.zeros(group.height, dtype=np.int64)
    for r in range(n_boot):
        hits += pareto_mask(boot_acc[r], boot_jpt[r])
    return [hits[k] / n_boot if resampled[k] else None for k in range(group.height)]


def pareto_frontier(run_metrics: pl.DataFrame, config_summary: pl.DataFrame, *,
                    seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP) -> pl.DataFrame:
    """The pareto_frontier view: one row per config_summary row."""
    bootstrap.check_params(seed, n_boot)
    cs = config_summary.sort(CONFIG).with_row_index("_row")
    items = (run_metrics.filter(pl.col("valid")).sort([*CONFIG, "repeat", "run_id"])
             .select(*CONFIG, "accuracy", "j_per_token"))
    by_config = {key: frame for key, frame in items.group_by(CONFIG, maintain_order=True)}

    on_frontier = np.zeros(cs.height, dtype=bool)
    probability: list[float | None] = [None] * cs.height
    uniform_dominated = np.zeros(cs.height, dtype=bool)
    weakly_matched = np.zeros(cs.height, dtype=bool)
    for _, group in cs.group_by(GROUP, maintain_order=True):
        rows = group["_row"].to_numpy()
        acc, jpt = _float(group["accuracy"]), _float(group["j_per_token"])
        on_frontier[rows] = pareto_mask(acc, jpt)
        uniform = (group["kind"] == "uniform").fill_null(False).to_numpy()
        weakly_matched[rows], uniform_dominated[rows] = _uniform_flags(acc, jpt, uniform)
        for row, p in zip(rows, _frontier_probability(group, by_config, seed, n_boot)):
            probability[row] = p

    kind_mixed = (cs["kind"] == "mixed").fill_null(False).to_numpy()
    return cs.with_columns(
        on_frontier=pl.Series(on_frontier),
        frontier_probability=pl.Series(probability, dtype=pl.Float64),
        uniform_dominated=pl.Series(uniform_dominated),
        mixed_unmatched=pl.Series(kind_mixed & on_frontier & ~weakly_matched),
    ).select(list(VIEWS["pareto_frontier"])).sort(GROUP + ["config_id"])
