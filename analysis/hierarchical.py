"""The hierarchical bootstrap of the SQL contract, in numpy (runs.sql, "the hierarchical
bootstrap"; docs/analysis.md, "Uncertainty"): the twins' one copy of its resamples.

A family is (model, origin, power_source, hardware_id); its items are its valid runs, each of one
configuration (``ckey``). Resample b = 1..B draws at once the repeats of every configuration
(stream 0), the questions of every benchmark once for the whole family (streams 1..3), and
each run's meter noise (streams 101/102, keyed by the run's hash). :func:`run_resamples`
gives every run's J/token, accuracy and EPI in every resample (an EPI where the resampled
accuracy is 0 is infinite, carried as :data:`INFINITE_EPI`); :func:`config_resamples` the
medians over each configuration's drawn repeats. NaN stands for SQL's NULL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from mqepi.analysis import bootstrap

#: A run's EPI in a resample where its accuracy is 0 (macros.sql mqepi_infinite): infinite,
#: carried as a large finite number so that medians and linear quantiles stay arithmetic.
INFINITE_EPI = 1e300
#: Any statistic at or above this came from an infinite EPI: it is +Infinity.
INFINITE_FROM = 1e200


def unbounded(x: float | None) -> float | None:
    """macros.sql mqepi_unbounded: a statistic at or above 1e200 is +Infinity."""
    return None if x is None else (math.inf if x >= INFINITE_FROM else x)


@dataclass
class RunResamples:
    """Per run (by run_key): arrays of shape (B,)."""

    j_per_token: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    epi: dict[str, np.ndarray]


def _answers_by_run(answers: pl.DataFrame) -> pl.DataFrame:
    """Per run, benchmark and question: answers and correct answers."""
    return (answers.with_columns(run_key=pl.concat_str("model", "config_id", "run_id", separator="/"),
                                 qkey=pl.concat_str("question_set_sha256", "question_id", separator="/"))
            .group_by("run_key", "benchmark", "qkey")
            .agg(n_answers=pl.len(), n_correct=pl.col("correct").sum()))


def run_resamples(items: pl.DataFrame, answers: pl.DataFrame, seed: int, n_boot: int) -> RunResamples:
    """``items``: the valid runs with columns g, run_key, benchmark_energy_j,
    benchmark_energy_uncertainty_j, benchmark_tokens; ``answers``: benchmark_answer rows
    (model, config_id, run_id, benchmark, question_set_sha256, question_id, correct)."""
    per_q = _answers_by_run(answers).filter(pl.col("run_key").is_in(items["run_key"].to_list()))
    family_of = dict(zip(items["run_key"].to_list(), items["g"].to_list()))
    per_q = per_q.with_columns(g=pl.col("run_key").replace_strict(family_of))
    acc_parts: dict[str, dict[str, np.ndarray]] = {}
    for (_family, benchmark), rows in per_q.group_by("g", "benchmark", maintain_order=True):
        universe = sorted(set(rows["qkey"].to_list()))
        m = len(universe)
        position = {q: k for k, q in enumerate(universe)}
        picks = bootstrap.index_matrix(seed, m, n_boot, stream=bootstrap.QUESTION_STREAMS[benchmark])
        weights = np.zeros((n_boot, m), dtype=np.int64)
        np.add.at(weights, (np.repeat(np.arange(n_boot), m), picks.ravel()), 1)
        for run_key, run_rows in rows.group_by("run_key", maintain_order=True):
            correct = np.zeros(m, dtype=np.int64)
            answered = np.zeros(m, dtype=np.int64)
            cols = [position[q] for q in run_rows["qkey"].to_list()]
            correct[cols] = run_rows["n_correct"].to_numpy()
            answered[cols] = run_rows["n_answers"].to_numpy()
            num, den = weights @ correct, weights @ answered
            with np.errstate(divide="ignore", invalid="ignore"):
                acc = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
            acc_parts.setdefault(run_key[0], {})[benchmark] = acc

    keys = items["run_key"].to_list()
    noise = bootstrap.normal_matrix(seed, n_boot, [bootstrap.run_hash(k) for k in keys])
    out = RunResamples({}, {}, {})
    for col, row in enumerate(items.iter_rows(named=True)):
        key = row["run_key"]
        energy, unc, tokens = row["benchmark_energy_j"], row["benchmark_energy_uncertainty_j"], row["benchmark_tokens"]
        if energy is None or not tokens:
            jpt = np.full(n_boot, np.nan)
        else:
            jpt = (energy + (unc or 0.0) * noise[:, col]) / tokens
        parts = acc_parts.get(key)
        if parts:
            stacked = np.vstack([parts[b] for b in sorted(parts)])  # avg(... ORDER BY benchmark)
            acc = np.where(np.isnan(stacked).any(axis=0), np.nan, stacked.sum(axis=0) / stacked.shape[0])
        else:
            acc = np.full(n_boot, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            epi = np.where(acc != 0, jpt / np.where(acc != 0, acc, 1), INFINITE_EPI)
        epi = np.where(np.isnan(jpt) | np.isnan(acc), np.nan, epi)
        out.j_per_token[key], out.accuracy[key], out.epi[key] = jpt, acc, epi
    return out


def pick_medians(values: list[np.ndarray], seed: int, n_boot: int) -> np.ndarray:
    """Per resample b: the median over the repeats drawn in b (stream 0, n = len(values)) of
    those repeats' values in resample b. ``values``: one (B,) array per item, in item order."""
    n = len(values)
    matrix = np.column_stack(values)  # (B, n)
    picks = bootstrap.index_matrix(seed, n, n_boot)
    drawn = np.take_along_axis(matrix, picks, axis=1)
    return bootstrap.nanmedian_rows(drawn)


def interval(stats: np.ndarray) -> tuple[float | None, float | None, bool]:
    """(low, high, degenerate) of resample statistics: the 95 % percentile interval, and
    whether every resample gave the same value (then low and high are None)."""
    finite = stats[~np.isnan(stats)]
    if finite.size == 0:
        return None, None, False
    lo, hi = bootstrap.percentile_interval(stats)
    if bootstrap.degenerate(float(finite.min()), float(finite.max())):
        return None, None, True
    return lo, hi, False
