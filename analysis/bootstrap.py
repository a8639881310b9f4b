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

import hashlib
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


#: Streams of the hierarchical bootstrap (macros.sql mqepi_bootstrap_draw): 0 the repeats,
#: 1.. the questions of each benchmark (in this order), 101 / 102 the meter's noise.
STREAM_FACTOR = 999_999_937
REPEAT_STREAM = 0
QUESTION_STREAMS = {"mmlu": 1, "arc_challenge": 2, "hellaswag": 3}
NOISE_STREAMS = (101, 102)


def index_matrix(seed: int, n: int, n_boot: int | None = None, *, b_values: Iterable[int] | None = None,
                 stream: int = REPEAT_STREAM, j_values: Iterable[int] | None = None) -> np.ndarray:
    """All draws at once, shape ``(B, J)``, int64: row ``k`` holds the item indices (0..n-1)
    of resample ``b = k + 1`` (or of ``b_values[k]``) for draws ``j = 0..n-1`` (or
    ``j_values``), of ``stream`` (0: the repeats, the original scheme)."""
    if b_values is None:
        b = np.arange(1, (n_boot or 0) + 1, dtype=np.int64)
    else:
        b = np.asarray(list(b_values), dtype=np.int64)
    check_params(seed, max(len(b), 1))
    if n < 1:
        raise ValueError(f"a resample needs at least one item, got n = {n}")
    if b.size and (b.min() < 0 or b.max() > MAX_RESAMPLE):
        raise ValueError(f"resample numbers must be in 0 .. {MAX_RESAMPLE}")
    j = np.arange(n, dtype=np.int64) if j_values is None else np.asarray(list(j_values), dtype=np.int64)
    # every intermediate stays below 2**63: seed*1000003 < 2**52, x*48271 < 2**47
    start = np.int64(seed) * SEED_FACTOR + np.int64(stream) * STREAM_FACTOR
    x = (start + b[:, None] * RESAMPLE_FACTOR + j[None, :] * DRAW_FACTOR) % MODULUS
    for _ in range(2):
        x = (x * MULTIPLIER) % MODULUS
        x ^= x >> XOR_SHIFT
    return x % n


def run_hash(run_key: str) -> int:
    """A run's item key for the meter's noise (macros.sql mqepi_run_hash): the first 28 bits
    of md5('model/config_id/run_id')."""
    return int(hashlib.md5(run_key.encode()).hexdigest()[:7], 16)


def normal_matrix(seed: int, n_boot: int, keys: Iterable[int]) -> np.ndarray:
    """Standard normal deviates, shape ``(B, len(keys))``: Box-Muller on the uniforms
    (x + 0.5) / 2147483647 of streams 101 and 102 (macros.sql mqepi_bootstrap_normal)."""
    keys = list(keys)
    if not keys:
        return np.zeros((n_boot, 0))
    u1 = (index_matrix(seed, MODULUS, n_boot, stream=NOISE_STREAMS[0], j_values=keys) + 0.5) / MODULUS
    u2 = (index_matrix(seed, MODULUS, n_boot, stream=NOISE_STREAMS[1], j_values=keys) + 0.5) / MODULUS
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def degenerate(lo: float | None, hi: float | None) -> bool:
    """Every resample gave the same value (macros.sql mqepi_degenerate): no interval."""
    return lo is not None and hi is not None and hi - lo <= 1e-12 * max(1.0, abs(hi))


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
