"""The report's statistics: ordinary least squares with influence diagnostics, Pearson's r.

:func:`ols` fits with statsmodels (``OLS``, ``conf_int``, ``get_influence().cooks_distance``)
and applies the report's rule for when a fit cannot support a conclusion (:class:`Fit`).
Every fit also names its influential observations, those with Cook's distance
``D_i = e_i^2 / (p s^2) * h_ii / (1 - h_ii)^2 > 4/n`` (``e_i`` the residual, ``h_ii`` the
leverage, ``s^2 = RSS / (n - p)``, ``p`` parameters with the intercept), and carries the fit
without them (:attr:`Fit.without`), judged by the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mqepi.results.report.labels import ALPHA, CANNOT, fmt

#: An observation is influential when its Cook's distance exceeds this over n (4/n).
COOKS_FACTOR = 4.0
#: RSS at or below this share of the total sum of squares is an exact fit: s^2 = 0, Cook's
#: distances undefined (0/0), so no observation is named.
EXACT_FIT = 1e-20


def excludes_zero(lo: float | None, hi: float | None) -> bool:
    """Whether the interval [lo, hi] is known and excludes 0."""
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


@dataclass
class Fit:
    """An ordinary least-squares fit ``response ~ 1 + terms`` with 95% intervals.

    ``supported`` is False, with ``reason``, when the data cannot support a conclusion: too
    few observations (n <= parameters + 2, the intercept counted), collinear regressors, a
    constant response, or every slope's interval including 0.

    Influence: ``labels`` names the observations fitted (configuration ids), ``cooks`` their
    Cook's distances (None for a point of leverage 1, where it is undefined; empty for an
    exact fit), ``influential`` those above ``cooks_threshold`` = 4/n (or of leverage 1),
    largest first, and ``without`` the same fit on the other observations (None when no
    point is influential).
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
    labels: list[str] = field(default_factory=list)
    cooks: dict[str, float | None] = field(default_factory=dict)
    cooks_threshold: float | None = None
    influential: list[str] = field(default_factory=list)
    without: Fit | None = None
    influence_note: str | None = None

    def excludes_zero(self, term: str) -> bool:
        return excludes_zero(self.ci_low.get(term), self.ci_high.get(term))

    def verdict(self) -> str:
        return "supported" if self.supported else f"{CANNOT} ({self.reason})"

    def influence_text(self, slope: Callable[[Fit], str]) -> str:
        """The sentence naming each influential observation and the fit without them
        (``slope(fit)`` words a fit's slopes, e.g. 'the slope is 0.2 [0.1, 0.3]'); '' when
        no observation is influential."""
        if not self.influential or self.without is None:
            return ""
        values = ["leverage 1, Cook's distance undefined" if self.cooks.get(c) is None else fmt(self.cooks[c], 2)
                  for c in self.influential]
        threshold = f"4/n = {fmt(self.cooks_threshold, 2)}"
        if len(values) == 1:
            c, v = self.influential[0], values[0]
            head = (f"{c} has leverage 1 (Cook's distance undefined)" if self.cooks.get(c) is None
                    else f"{c} has Cook's distance {v} > {threshold}")
        else:
            first = "Cook's distance "
            named = [f"{c} ({v if k or self.cooks.get(c) is None else first + v})"
                     for k, (c, v) in enumerate(zip(self.influential, values))]
            head = f"{_join(named)} exceed {threshold}"
        them = "it" if len(values) == 1 else "them"
        w = self.without
        if not w.coef:
            return f"{head}; without {them} (n = {w.n}) {CANNOT} ({w.reason})."
        return (f"{head}; without {them} (n = {w.n}) {slope(w)}"
                + ("." if w.supported else f"; without {them} {CANNOT} ({w.reason})."))


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _complete_rows(columns: dict[str, Iterable[float | None]], y: Iterable[float | None],
                   labels: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X with an intercept column, y, labels) over the rows without a missing or non-finite value."""
    yy = np.asarray([np.nan if v is None else v for v in y], float)
    X = np.ones((len(yy), 1 + len(columns)))
    for k, col in enumerate(columns.values(), start=1):
        X[:, k] = np.asarray([np.nan if v is None else v for v in col], float)
    names = [str(x) for x in labels] if labels is not None else [f"row {i}" for i in range(len(yy))]
    if len(names) != len(yy):
        raise ValueError(f"{len(names)} labels for {len(yy)} observations")
    keep = np.isfinite(yy) & np.all(np.isfinite(X), axis=1)
    return X[keep], yy[keep], [c for c, k in zip(names, keep) if k]


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
        labels: Sequence[str] | None = None, alpha: float = ALPHA, influence: bool = True) -> Fit:
    """Fit ``y = b0 + sum(b_k * x_k)`` by least squares (statsmodels ``OLS``); rows with a
    missing or non-finite value are left out. Intervals: b +/- t(1 - alpha/2, n - p) * se.
    ``labels`` name the rows (configuration ids) for the influence diagnostics; with
    ``influence`` the fit without the influential rows is made too (``Fit.without``)."""
    from statsmodels.regression.linear_model import OLS  # heavy (statsmodels): only the report fits
    terms = list(columns)
    X, yy, names = _complete_rows(columns, y, labels)
    n, p = X.shape
    fit = Fit(response, terms, n, p, labels=names)
    fit.reason = _unfit_reason(X, yy, response)
    if fit.reason:
        return fit
    res = OLS(yy, X).fit()
    ci = res.conf_int(alpha)
    for k, name in enumerate(["intercept", *terms]):
        fit.coef[name], fit.ci_low[name], fit.ci_high[name] = float(res.params[k]), float(ci[k, 0]), float(ci[k, 1])
    tss = float(np.sum((yy - yy.mean()) ** 2))
    fit.r2 = max(0.0, 1.0 - float(res.ssr) / tss)
    if influence:
        _influence(fit, res, X, yy, alpha)
    if terms and not any(fit.excludes_zero(t) for t in terms):
        fit.reason = "every slope's 95% interval includes 0"
        return fit
    fit.supported = True
    return fit


def _influence(fit: Fit, res, X: np.ndarray, yy: np.ndarray, alpha: float) -> None:
    """Cook's distances of ``res`` (statsmodels results), the influential rows and the refit
    without them, into ``fit``."""
    n = fit.n
    fit.cooks_threshold = COOKS_FACTOR / n
    if float(res.ssr) <= EXACT_FIT * float(np.sum((yy - yy.mean()) ** 2)):
        fit.influence_note = "the fit is exact (every residual 0): Cook's distances are undefined"
        return
    infl = res.get_influence()
    with np.errstate(divide="ignore", invalid="ignore"):
        distances = np.asarray(infl.cooks_distance[0], float)
    leverage = np.asarray(infl.hat_matrix_diag, float)
    flagged = []
    for name, d, h in zip(fit.labels, distances, leverage):
        if h >= 1.0 - 1e-9 or not math.isfinite(d):
            fit.cooks[name] = None
            flagged.append((math.inf, name))
        else:
            fit.cooks[name] = float(d)
            if d > fit.cooks_threshold:
                flagged.append((float(d), name))
    fit.influential = [name for _, name in sorted(flagged, key=lambda t: (-t[0], t[1]))]
    if fit.influential:
        keep = np.array([name not in fit.influential for name in fit.labels])
        columns = {t: X[keep, k] for k, t in enumerate(fit.terms, start=1)}
        fit.without = ols(columns, yy[keep], fit.response, labels=[c for c, k in zip(fit.labels, keep) if k],
                          alpha=alpha, influence=False)


def pearson(x: Iterable[float | None], y: Iterable[float | None]) -> float | None:
    """Correlation of the complete pairs, None below 3 pairs or without variation."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    xa, ya = np.asarray(pairs, float).T
    if xa.std() == 0 or ya.std() == 0:
        return None
    return float(np.corrcoef(xa, ya)[0, 1])
