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

The bootstrap follows the shared contract (``bootstrap_indices``); medians are numpy's (the
mean of the two middle values for even n, as DuckDB's ``median``). Missing values (null) are
carried as NaN inside and ignored by medians and quantiles, as SQL ignores NULL.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl

#: Contract defaults of the DuckDB variables mqepi_seed and mqepi_bootstrap.
DEFAULT_SEED = 1234
DEFAULT_BOOTSTRAP = 1000
#: The contract's index generator: a multiplicative congruential step (MINSTD) modulo 2^31 - 1.
MODULUS = 2147483647
MULTIPLIER = 48271
#: Interval quantiles (95 %).
CI_LOW, CI_HIGH = 0.025, 0.975

GROUP = ["model", "origin", "power_source"]
CONFIG = ["model", "config_id", "origin", "power_source"]
PAIR = [*GROUP, "config_a", "config_b"]


# --------------------------------------------------------------------------- building blocks


def bootstrap_indices(seed: int, n_boot: int, n: int) -> np.ndarray:
    """The contract's draws: row b-1, column j holds the item index of draw j in resample b.

    The shared scheme of :func:`mqepi.analysis.twin_runs.bootstrap_index_matrix`.
    """
    _check_params(seed, n_boot)
    if n < 1:
        raise ValueError(f"need n >= 1 items, got {n}")
    from mqepi.analysis.twin_runs import bootstrap_index_matrix

    return bootstrap_index_matrix(seed, n, n_boot)


def _check_params(seed: int, n_boot: int) -> None:
    """The ranges frontier.sql (and runs.sql) accept: seed 0 .. 2^31 - 1, at least one resample."""
    if not 0 <= seed <= MODULUS:
        raise ValueError(f"mqepi_seed must be in 0 .. {MODULUS}, got {seed}")
    if n_boot < 1:
        raise ValueError(f"mqepi_bootstrap must be >= 1, got {n_boot}")


def _nanmedian_rows(matrix: np.ndarray) -> np.ndarray:
    """Median of each row, ignoring NaN; NaN for a row without any value."""
    out = np.full(matrix.shape[0], np.nan)
    has = ~np.isnan(matrix).all(axis=1)
    if has.any():
        out[has] = np.nanmedian(matrix[has], axis=1)
    return out


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def quantile_linear(values: np.ndarray, q: float) -> float | None:
    """Quantile with linear interpolation between closest ranks (DuckDB quantile_cont); NaN ignored."""
    s = np.sort(values[~np.isnan(values)])
    if s.size == 0:
        return None
    rank = (s.size - 1) * q
    lo, hi = math.floor(rank), math.ceil(rank)
    return float(s[lo] + (s[hi] - s[lo]) * (rank - lo))


def _interval(stats: np.ndarray) -> tuple[float | None, float | None]:
    return quantile_linear(stats, CI_LOW), quantile_linear(stats, CI_HIGH)


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


def matched_pairs(run_metrics: pl.DataFrame, config_summary: pl.DataFrame, benchmark_answer: pl.DataFrame, *,
                  seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP,
                  ppl_tolerance: float | None = None) -> pl.DataFrame:
    """The matched_pairs view: perplexity-matched pairs, paired bootstrap and McNemar."""
    _check_params(seed, n_boot)
    if ppl_tolerance is not None and ppl_tolerance < 0:
        raise ValueError(f"mqepi_ppl_tolerance must be >= 0, got {ppl_tolerance}")
    cs = config_summary.select(*CONFIG, "simulated", "ppl", "ppl_stderr", "j_per_token", "epi")
    a = cs.rename({c: f"{c}_a" for c in ("config_id", "ppl", "ppl_stderr", "j_per_token", "epi")})
    b = cs.drop("simulated").rename({c: f"{c}_b" for c in ("config_id", "ppl", "ppl_stderr", "j_per_token", "epi")})
    pairs = a.join(b, on=GROUP).filter(pl.col("config_id_a") < pl.col("config_id_b"))
    gap = (pl.col("ppl_a") - pl.col("ppl_b")).abs()
    if ppl_tolerance is None:
        match = gap <= (pl.col("ppl_stderr_a") * pl.col("ppl_stderr_a")
                        + pl.col("ppl_stderr_b") * pl.col("ppl_stderr_b")).sqrt()
    else:
        match = gap <= ppl_tolerance * pl.min_horizontal("ppl_a", "ppl_b")
    pairs = (pairs.filter(match.fill_null(False))
             .rename({"config_id_a": "config_a", "config_id_b": "config_b"})
             .sort(PAIR))

    # one valid run per configuration and repeat: the smallest run_id
    reps = (run_metrics.filter(pl.col("valid")).sort("run_id")
            .unique([*CONFIG, "repeat"], keep="first", maintain_order=True)
            .select(*CONFIG, "repeat", "run_id", "j_per_token", "epi"))
    ra = reps.rename({"config_id": "config_a", "run_id": "run_a", "j_per_token": "jpt_a", "epi": "epi_a_run"})
    rb = reps.rename({"config_id": "config_b", "run_id": "run_b", "j_per_token": "jpt_b", "epi": "epi_b_run"})
    paired = (pairs.select(PAIR).join(ra, on=[*GROUP, "config_a"]).join(rb, on=[*GROUP, "config_b", "repeat"])
              .with_columns(d_jpt=pl.col("jpt_b") - pl.col("jpt_a"), d_epi=pl.col("epi_b_run") - pl.col("epi_a_run"))
              .sort([*PAIR, "repeat", "run_a"]))

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
    mcn_by_pair = {tuple(r[k] for k in PAIR): r for r in mcn.iter_rows(named=True)}

    by_pair = {key: frame for key, frame in paired.group_by(PAIR, maintain_order=True)}
    rows = []
    for pair in pairs.iter_rows(named=True):
        key = tuple(pair[k] for k in PAIR)
        frame = by_pair.get(key)
        d_jpt = _float(frame["d_jpt"]) if frame is not None else np.empty(0)
        d_epi = _float(frame["d_epi"]) if frame is not None else np.empty(0)
        n = d_jpt.size
        ci_jpt = ci_epi = (None, None)
        if n:
            idx = bootstrap_indices(seed, n_boot, n)
            ci_jpt = _interval(_nanmedian_rows(d_jpt[idx]))
            ci_epi = _interval(_nanmedian_rows(d_epi[idx]))
        m = mcn_by_pair.get(key)
        nq = m["n_questions_paired"] if m else 0
        mb = m["mcnemar_b"] if m else 0
        mc = m["mcnemar_c"] if m else 0
        rows.append({
            **{k: pair[k] for k in (*GROUP, "simulated", "config_a", "config_b")},
            "ppl_a": pair["ppl_a"], "ppl_b": pair["ppl_b"],
            "ppl_stderr_a": pair["ppl_stderr_a"], "ppl_stderr_b": pair["ppl_stderr_b"],
            "ppl_diff": pair["ppl_b"] - pair["ppl_a"], "match_rule": _match_rule(ppl_tolerance),
            "j_per_token_a": pair["j_per_token_a"], "j_per_token_b": pair["j_per_token_b"],
            "j_per_token_diff": _median(d_jpt), "j_per_token_diff_ci_low": ci_jpt[0],
            "j_per_token_diff_ci_high": ci_jpt[1],
            "epi_a": pair["epi_a"], "epi_b": pair["epi_b"],
            "epi_diff": _median(d_epi), "epi_diff_ci_low": ci_epi[0], "epi_diff_ci_high": ci_epi[1],
            "n_paired_repeats": n, "n_questions_paired": nq, "mcnemar_b": mb, "mcnemar_c": mc,
            "mcnemar_p": mcnemar_p(mb, mc) if nq else None,
        })
    return pl.DataFrame(rows, schema=MATCHED_PAIRS_SCHEMA)


MATCHED_PAIRS_SCHEMA = {
    "model": pl.Utf8, "origin": pl.Utf8, "power_source": pl.Utf8, "simulated": pl.Boolean,
    "config_a": pl.Utf8, "config_b": pl.Utf8, "ppl_a": pl.Float64, "ppl_b": pl.Float64,
    "ppl_stderr_a": pl.Float64, "ppl_stderr_b": pl.Float64, "ppl_diff": pl.Float64, "match_rule": pl.Utf8,
    "j_per_token_a": pl.Float64, "j_per_token_b": pl.Float64, "j_per_token_diff": pl.Float64,
    "j_per_token_diff_ci_low": pl.Float64, "j_per_token_diff_ci_high": pl.Float64,
    "epi_a": pl.Float64, "epi_b": pl.Float64, "epi_diff": pl.Float64,
    "epi_diff_ci_low": pl.Float64, "epi_diff_ci_high": pl.Float64,
    "n_paired_repeats": pl.Int64, "n_questions_paired": pl.Int64, "mcnemar_b": pl.Int64, "mcnemar_c": pl.Int64,
    "mcnemar_p": pl.Float64,
}


# --------------------------------------------------------------------------- pareto_frontier


def pareto_frontier(run_metrics: pl.DataFrame, config_summary: pl.DataFrame, *,
                    seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP) -> pl.DataFrame:
    """The pareto_frontier view: one row per config_summary row."""
    _check_params(seed, n_boot)
    cs = config_summary.sort(CONFIG)
    items = (run_metrics.filter(pl.col("valid")).sort([*CONFIG, "repeat", "run_id"])
             .select(*CONFIG, "accuracy", "j_per_token"))
    by_config = {key: frame for key, frame in items.group_by(CONFIG, maintain_order=True)}

    on_frontier = np.zeros(cs.height, dtype=bool)
    probability: list[float | None] = [None] * cs.height
    uniform_dominated = np.zeros(cs.height, dtype=bool)
    weakly_matched = np.zeros(cs.height, dtype=bool)
    cs = cs.with_row_index("_row")
    for _, group in cs.group_by(GROUP, maintain_order=True):
        rows = group["_row"].to_numpy()
        acc, jpt = _float(group["accuracy"]), _float(group["j_per_token"])
        on_frontier[rows] = pareto_mask(acc, jpt)

        # uniform configurations: dominating, or at least as good in both
        finite = np.isfinite(acc) & np.isfinite(jpt)
        uniform = finite & (group["kind"] == "uniform").fill_null(False).to_numpy()
        for k, row in enumerate(rows):
            if not finite[k]:
                continue
            weak = uniform & (acc >= acc[k]) & (jpt <= jpt[k])
            weakly_matched[row] = weak.any()
            uniform_dominated[row] = (weak & ((acc > acc[k]) | (jpt < jpt[k]))).any()

        # bootstrap: each configuration's resampled medians, then the frontier per resample
        boot_acc = np.full((n_boot, rows.size), np.nan)
        boot_jpt = np.full((n_boot, rows.size), np.nan)
        resampled = np.zeros(rows.size, dtype=bool)
        for k, key in enumerate(group.select(CONFIG).iter_rows()):
            frame = by_config.get(key)
            if frame is None:
                continue
            resampled[k] = True
            idx = bootstrap_indices(seed, n_boot, frame.height)
            boot_acc[:, k] = _nanmedian_rows(_float(frame["accuracy"])[idx])
            boot_jpt[:, k] = _nanmedian_rows(_float(frame["j_per_token"])[idx])
        hits = np.zeros(rows.size, dtype=np.int64)
        for r in range(n_boot):
            hits += pareto_mask(boot_acc[r], boot_jpt[r])
        for k, row in enumerate(rows):
            if resampled[k]:
                probability[row] = hits[k] / n_boot

    kind_mixed = (cs["kind"] == "mixed").fill_null(False).to_numpy()
    return cs.select(
        *GROUP, "simulated", "config_id", "kind", "accuracy", "j_per_token", "epi",
        "accuracy_ci_low", "accuracy_ci_high", "j_per_token_ci_low", "j_per_token_ci_high",
    ).with_columns(
        on_frontier=pl.Series(on_frontier),
        frontier_probability=pl.Series(probability, dtype=pl.Float64),
        uniform_dominated=pl.Series(uniform_dominated),
        mixed_unmatched=pl.Series(kind_mixed & on_frontier & ~weakly_matched),
    ).sort(GROUP + ["config_id"])
