"""The report's statistics: Student's t distribution, ordinary least squares, Pearson's r.

Plain numpy, no SciPy: :func:`t_quantile` by bisection on the regularized incomplete beta
function, :func:`ols` with t intervals and the report's rule for when a fit cannot support
a conclusion (:class:`Fit`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mqepi.results.report.labels import ALPHA, CANNOT


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (bisection on :func:`t_cdf`; ``0 < p < 1``, ``df > 0``)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def excludes_zero(lo: float | None, hi: float | None) -> bool:
    """Whether the interval [lo, hi] is known and excludes 0."""
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


@dataclass
class Fit:
    """An ordinary least-squares fit ``response ~ 1 + terms`` with 95% intervals.

    ``supported`` is False, with ``reason``, when the data cannot support a conclusion: too
    few observations (n <= parameters + 2, the intercept counted), collinear regressors, a
    constant response, or every slope's interval including 0.
    """

    response: str
    terms: list[str]
    n: int
    n_params: int
    coef: dict[str, float] = field(default_factory=dict)
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)
    r2: float | None = None
    supported: bool = False
    reason: str | None = None

    def excludes_zero(self, term: str) -> bool:
        return excludes_zero(self.ci_low.get(term), self.ci_high.get(term))

    def verdict(self) -> str:
        return "supported" if self.supported else f"{CANNOT} ({self.reason})"


def _complete_rows(columns: dict[str, Iterable[float | None]], y: Iterable[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(X with an intercept column, y) over the rows without a missing or non-finite value."""
    yy = np.asarray([np.nan if v is None else v for v in y], float)
    X = np.ones((len(yy), 1 + len(columns)))
    for k, col in enumerate(columns.values(), start=1):
        X[:, k] = np.asarray([np.nan if v is None else v for v in col], float)
    keep = np.isfinite(yy) & np.all(np.isfinite(X), axis=1)
    return X[keep], yy[keep]


def _unfit_reason(X: np.ndarray, yy: np.ndarray, response: str) -> str | None:
    """Why ``X``, ``yy`` cannot be fitted at all, or None."""
    n, p = X.shape
    if n <= p + 2:
        return f"n = {n} observations for {p} parameters; more than {p + 2} are needed"
    if np.linalg.matrix_rank(X) < p:
        return "the regressors are collinear (they do not vary independently across the configurations)"
    if float(np.sum((yy - yy.mean()) ** 2)) <= 0:
        return f"{response} does not vary"
    return None


def ols(columns: dict[str, Iterable[float | None]], y: Iterable[float | None], response: str, *,
        alpha: float = ALPHA) -> Fit:
    """Fit ``y = b0 + sum(b_k * x_k)`` by least squares (numpy); rows with a missing or
    non-finite value are left out. Intervals: b +/- t(1 - alpha/2, n - p) * se."""
    terms = list(columns)
    X, yy = _complete_rows(columns, y)
    n, p = X.shape
    fit = Fit(response, terms, n, p)
    fit.reason = _unfit_reason(X, yy, response)
    if fit.reason:
        return fit
    tss = float(np.sum((yy - yy.mean()) ** 2))
    beta, *_ = np.linalg.lstsq(X, yy, rcond=None)
    resid = yy - X @ beta
    rss = float(resid @ resid)
    df = n - p
    cov = rss / df * np.linalg.inv(X.T @ X)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    tcrit = t_quantile(1.0 - alpha / 2.0, df)
    for name, b, s in zip(["intercept", *terms], beta, se):
        fit.coef[name], fit.ci_low[name], fit.ci_high[name] = float(b), float(b - tcrit * s), float(b + tcrit * s)
    fit.r2 = max(0.0, 1.0 - rss / tss)
    if terms and not any(fit.excludes_zero(t) for t in terms):
        fit.reason = "every slope's 95% interval includes 0"
        return fit
    fit.supported = True
    return fit


def pearson(x: Iterable[float | None], y: Iterable[float | None]) -> float | None:
    """Correlation of the complete pairs, None below 3 pairs or without variation."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    xa, ya = np.asarray(pairs, float).T
    if xa.std() == 0 or ya.std() == 0:
        return None
    return float(np.corrcoef(xa, ya)[0, 1])
