"""The seeded bootstrap of the SQL contract, in numpy: the one Python copy of its draws.

``runs.sql`` (config_summary) and ``frontier.sql`` (matched_pairs, pareto_frontier) draw their
resamples with the macros ``mqepi_bootstrap_index``, ``mqepi_bootstrap_seed`` and
``mqepi_bootstrap_resamples`` of ``macros.sql``; both Polars twins draw theirs here, so the
same seed gives the same resamples in SQL and in Python. The scheme (docs/analysis.md): the n
items of a group are numbered i = 0..n-1; resample b = 1..B draws n items, draw j = 0..n-1
taking item

    x = (seed * 1000003 + b * 10007 + j * 101) % 2147483647
    twice: x = (x * 48271) % 2147483647;  x = x XOR (x >> 13)
    i = x % n

An interval is the linear 2.5 % / 97.5 % quantile (DuckDB's ``quantile_cont``) of the B
resample statistics; missing values (None, NaN) are left out of medians and quantiles, as SQL
leaves out NULL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

#: Defaults of the DuckDB variables mqepi_seed and mqepi_bootstrap.
DEFAULT_SEED = 1234
DEFAULT_BOOTSTRAP = 1000
#: The generator: MINSTD (Park-Miller) steps over a seed mix, each followed by an xor-shift.
MODULUS = 2_147_483_647
MULTIPLIER = 48_271
SEED_FACTOR, RESAMPLE_FACTOR, DRAW_FACTOR = 1_000_003, 10_007, 101
XOR_SHIFT = 13
#: Resample numbers accepted by :func:`index_matrix` (keeps every intermediate below 2**63).
MAX_RESAMPLE = 10**9
#: Percentile interval of the resample statistics.
CI_LOW, CI_HIGH = 0.025, 0.975


def check_params(seed: int, n_boot: int = 1) -> None:
    """The ranges the SQL accepts: seed 0 .. 2147483647, at least one resample."""
    if not 0 <= int(seed) <= MODULUS:
        raise ValueError(f"mqepi_seed must be in 0 .. {MODULUS}, got {seed}")
    if int(n_boot) < 1:
        raise ValueError(f"mqepi_bootstrap must be >= 1, got {n_boot}")


def index_matrix(seed: int, n: int, n_boot: int | None = None, *, b_values: Iterable[int] | None = None) -> np.ndarray:
    """All draws at once, shape ``(B, n)``, int64: row ``k`` holds the item indices (0..n-1)
    of resample ``b = k + 1`` (or of ``b_values[k]``)."""
    if b_values is None:
        b = np.arange(1, (n_boot or 0) + 1, dtype=np.int64)
    else:
        b = np.asarray(list(b_values), dtype=np.int64)
    check_params(seed, max(len(b), 1))
    if n < 1:
        raise ValueError(f"a resample needs at least one item, got n = {n}")
    if b.size and (b.min() < 0 or b.max() > MAX_RESAMPLE):
        raise ValueError(f"resample numbers must be in 0 .. {MAX_RESAMPLE}")
    j = np.arange(n, dtype=np.int64)
    # every intermediate stays below 2**63: seed*1000003 < 2**52, x*48271 < 2**47
    x = (np.int64(seed) * SEED_FACTOR + b[:, None] * RESAMPLE_FACTOR + j[None, :] * DRAW_FACTOR) % MODULUS
    for _ in range(2):
        x = (x * MULTIPLIER) % MODULUS
        x ^= x >> XOR_SHIFT
    return x % n


def resample_indices(seed: int, b: int, n: int) -> np.ndarray:
    """The item indices (0..n-1) of resample ``b`` (1..B) of ``n`` items: the SQL macro
    ``mqepi_bootstrap_index(seed, b, j, n)`` for j = 0..n-1."""
    return index_matrix(seed, n, b_values=[b])[0]


def nanmedian_rows(matrix: np.ndarray) -> np.ndarray:
    """Median of each row, ignoring NaN (the mean of the two middle values for an even
    count, as DuckDB's ``median``); NaN for a row without any value."""
    out = np.full(matrix.shape[0], np.nan)
    has = ~np.isnan(matrix).all(axis=1)
    if has.any():
        out[has] = np.nanmedian(matrix[has], axis=1)
    return out


def quantile_linear(values: np.ndarray, q: float) -> float | None:
    """Quantile with linear interpolation between closest ranks (DuckDB ``quantile_cont``);
    NaN ignored; None without any value."""
    s = np.sort(values[~np.isnan(values)])
    if s.size == 0:
        return None
    rank = (s.size - 1) * q
    lo, hi = math.floor(rank), math.ceil(rank)
    return float(s[lo] + (s[hi] - s[lo]) * (rank - lo))


def percentile_interval(stats: np.ndarray) -> tuple[float | None, float | None]:
    """The 95 % percentile interval of the resample statistics ``stats``."""
    return quantile_linear(stats, CI_LOW), quantile_linear(stats, CI_HIGH)


def median_interval(values: Iterable[float | None], seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP,
                    indices: np.ndarray | None = None) -> tuple[float | None, float | None]:
    """Percentile interval of the median of ``values`` (items in their bootstrap order; None
    and NaN values are left out of each resample's median). ``indices``: the draws, when
    several statistics share them (:func:`index_matrix`)."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        return None, None
    idx = index_matrix(seed, v.size, n_boot) if indices is None else indices
    return percentile_interval(nanmedian_rows(v[idx]))
