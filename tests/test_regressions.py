"""OLS with influence diagnostics (statistics.ols) and how RQ3 / RQ5 word them.

References are computed here with numpy from the closed forms (hat matrix, Cook's distance
D_i = e_i^2 / (p s^2) * h_ii / (1 - h_ii)^2, lstsq, t intervals from scipy's t quantile)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_report import PAPER, frontier_frame, inventory, pairs_frame, summary_frame

from mqepi.results.report import plots
from mqepi.results.report.data import ReportData
from mqepi.results.report.labels import CANNOT, fmt, fmt_ci
from mqepi.results.report.regressions import rq3_sensitivity, rq5_attribution
from mqepi.results.report.statistics import ols

# a hand-built data set: y = 1 + 2 x1 - 0.5 x2 + a fixed wiggle, with one planted outlier
X1 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0])
X2 = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0])
WIGGLE = np.array([0.1, -0.2, 0.15, 0.05, -0.1, 0.2, -0.15, 0.0, 0.1, -0.05, -0.1, 0.05])
LABELS = [f"cfg_{i:02d}" for i in range(12)]
OUTLIER = 6


def planted() -> np.ndarray:
    y = 1.0 + 2.0 * X1 - 0.5 * X2 + WIGGLE
    y[OUTLIER] += 6.0
    return y


def cooks_by_hand(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, p = X.shape
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    h = np.diag(X @ np.linalg.inv(X.T @ X) @ X.T)
    s2 = e @ e / (n - p)
    return e**2 / (p * s2) * h / (1 - h) ** 2


def t_intervals_by_hand(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, p = X.shape
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    se = np.sqrt(np.diag(e @ e / (n - p) * np.linalg.inv(X.T @ X)))
    t = stats.t.ppf(0.975, n - p)
    return beta, beta - t * se, beta + t * se


def test_cooks_distance_matches_the_closed_form_and_names_the_outlier():
    y = planted()
    fit = ols({"x1": X1, "x2": X2}, y, "y", labels=LABELS)
    X = np.column_stack([np.ones(12), X1, X2])
    expected = cooks_by_hand(X, y)
    assert [fit.cooks[c] for c in LABELS] == pytest.approx(expected, rel=1e-9)
    assert fit.cooks_threshold == pytest.approx(4 / 12)
    assert fit.influential == [LABELS[k] for k in np.argsort(-expected) if expected[k] > 4 / 12]
    assert fit.influential[0] == LABELS[OUTLIER]


def test_refit_without_the_influential_points_equals_lstsq_on_the_rest():
    y = planted()
    fit = ols({"x1": X1, "x2": X2}, y, "y", labels=LABELS)
    keep = np.array([c not in fit.influential for c in LABELS])
    X = np.column_stack([np.ones(12), X1, X2])[keep]
    beta, lo, hi = t_intervals_by_hand(X, y[keep])
    w = fit.without
    assert w is not None and w.n == keep.sum() and w.labels == [c for c, k in zip(LABELS, keep) if k]
    assert [w.coef[t] for t in ("intercept", "x1", "x2")] == pytest.approx(beta, rel=1e-9)
    assert [w.ci_low[t] for t in ("intercept", "x1", "x2")] == pytest.approx(lo, rel=1e-9)
    assert [w.ci_high[t] for t in ("intercept", "x1", "x2")] == pytest.approx(hi, rel=1e-9)
    assert w.supported and w.without is None and not w.influential  # one level only
    # the main fit's intervals are the same closed form on every row
    beta_all, lo_all, hi_all = t_intervals_by_hand(np.column_stack([np.ones(12), X1, X2]), y)
    assert [fit.ci_low[t] for t in ("intercept", "x1", "x2")] == pytest.approx(lo_all, rel=1e-9)
    assert [fit.ci_high[t] for t in ("intercept", "x1", "x2")] == pytest.approx(hi_all, rel=1e-9)
    text = fit.influence_text(lambda f: f"the slope is {fmt(f.coef['x1'], 3)}")
    assert text.startswith(f"{LABELS[OUTLIER]} ") and f"4/n = {fmt(4 / 12, 2)}" in text
    assert f"without {'it' if len(fit.influential) == 1 else 'them'} (n = {w.n}) the slope is {fmt(beta[1], 3)}" in text


def test_missing_rows_are_left_out_with_their_labels():
    y = list(planted())
    y[2] = None
    x1 = list(X1)
    x1[4] = float("nan")
    fit = ols({"x1": x1, "x2": X2}, y, "y", labels=LABELS)
    assert fit.n == 10 and fit.labels == [c for k, c in enumerate(LABELS) if k not in (2, 4)]
    keep = np.array([k not in (2, 4) for k in range(12)])
    X = np.column_stack([np.ones(12), X1, X2])[keep]
    assert [fit.cooks[c] for c in fit.labels] == pytest.approx(cooks_by_hand(X, planted()[keep]), rel=1e-9)


def test_a_conclusion_carried_by_one_point_does_not_survive_without_it():
    # eight points of pure noise and one far point that makes the slope
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 30.0]
    y = [1.0, -1.0, 1.2, -0.8, 0.9, -1.1, 1.0, -1.0, 40.0]
    names = [f"p{i}" for i in range(9)]
    fit = ols({"x": x}, y, "y", labels=names)
    assert fit.supported and fit.influential[0] == "p8"
    assert not fit.without.supported and "includes 0" in fit.without.reason
    text = fit.influence_text(lambda f: f"the slope is {fmt(f.coef['x'], 3)}")
    assert f"p8 has Cook's distance {fmt(fit.cooks['p8'], 2)} > 4/n = 0.44" in text
    assert f"without it {CANNOT} (every slope's 95% interval includes 0)" in text


def test_an_exact_fit_names_nobody():
    fit = ols({"x": [1, 2, 3, 4, 5, 6, 7]}, [2.0 + 3.0 * v for v in range(1, 8)], "y", labels=list("abcdefg"))
    assert fit.supported and fit.cooks == {} and fit.influential == [] and fit.without is None
    assert "exact" in fit.influence_note
    assert fit.influence_text(lambda f: "") == ""


def test_a_point_of_leverage_one_is_named_and_its_refit_is_collinear():
    # x2 is nonzero in one row only: that row alone fixes x2's slope (h = 1, Cook's distance 0/0)
    x1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    x2 = [0.0] * 7 + [1.0]
    y = [1.1, 1.9, 3.2, 3.9, 5.1, 5.8, 7.2, 20.0]
    fit = ols({"x1": x1, "x2": x2}, y, "y", labels=[f"c{i}" for i in range(8)])
    assert fit.influential[0] == "c7" and fit.cooks["c7"] is None
    with np.errstate(divide="ignore", invalid="ignore"):
        by_hand = cooks_by_hand(np.column_stack([np.ones(8), x1, x2]), np.array(y))
    assert [fit.cooks[f"c{i}"] for i in range(7)] == pytest.approx(by_hand[:7], rel=1e-6)
    assert fit.influential[1:] == [f"c{i}" for i in np.argsort(-by_hand[:7]) if by_hand[i] > 4 / 8]
    assert "collinear" in fit.without.reason
    assert "c7 (leverage 1, Cook's distance undefined)" in fit.influence_text(lambda f: "")


# ------------------------------------------------------------------ RQ3 / RQ5 wording

PLANT = "mix_q6_q3_q4"


def outlier_data() -> ReportData:
    cs = summary_frame(PAPER, noise=0.002).with_columns(
        j_per_token=pl.when(pl.col("config_id") == PLANT).then(pl.col("j_per_token") + 0.03).otherwise(pl.col("j_per_token")),
        decode_j_per_token=pl.when(pl.col("config_id") == PLANT).then(pl.col("decode_j_per_token") * 1.5)
        .otherwise(pl.col("decode_j_per_token")))
    return ReportData.from_frames(config_summary=cs, pareto_frontier=frontier_frame(cs), matched_pairs=pairs_frame(),
                                  inventory=inventory(PAPER))


def test_rq3_names_the_planted_configuration_and_states_the_fit_without_it(tmp_path):
    (res,) = rq3_sensitivity(outlier_data())
    fit = res.fits["j_per_token"]
    X = np.column_stack([np.ones(res.table.height), *(res.table[t].to_numpy() for t in ("early_bpw", "middle_bpw", "late_bpw"))])
    y = res.table["j_per_token"].to_numpy()
    ids = res.table["config_id"].to_list()
    d = dict(zip(ids, cooks_by_hand(X, y)))
    assert fit.influential == [c for c in sorted(d, key=lambda c: -d[c]) if d[c] > 4 / len(ids)]
    assert fit.influential[0] == PLANT
    keep = np.array([c not in fit.influential for c in ids])
    beta, *_ = np.linalg.lstsq(X[keep], y[keep], rcond=None)
    assert [fit.without.coef[t] for t in ("intercept", "early_bpw", "middle_bpw", "late_bpw")] == pytest.approx(beta, rel=1e-9)
    assert f"{PLANT} has Cook's distance {fmt(d[PLANT], 2)} > 4/n = {fmt(4 / len(ids), 2)}" in res.answer.answer
    w = fit.without  # the point value by hand, printed to the digits its interval supports
    early = fmt_ci(beta[1], w.ci_low["early_bpw"], w.ci_high["early_bpw"])
    assert f"without it (n = {len(ids) - 1}) the slopes are early {early}" in res.answer.answer
    assert plots.sensitivity_plot([res], tmp_path / "sens", model="toy") is not None
    assert "without " + PLANT in (tmp_path / "sens.svg").read_text()


def test_rq5_names_the_planted_configuration_and_states_the_fit_without_it(tmp_path):
    (res,) = rq5_attribution(outlier_data(), bandwidth_gbs=17.0)
    fb = res.fit_bytes
    x, y = res.table["gb_per_token"].to_numpy(), res.table["decode_j_per_token"].to_numpy()
    X = np.column_stack([np.ones(len(x)), x])
    d = dict(zip(res.table["config_id"].to_list(), cooks_by_hand(X, y)))
    assert fb.influential == [PLANT] and fb.cooks[PLANT] == pytest.approx(d[PLANT], rel=1e-9)
    keep = res.table["config_id"].to_numpy() != PLANT
    beta, lo, hi = t_intervals_by_hand(X[keep], y[keep])
    assert fb.without.coef["gb_per_token"] == pytest.approx(beta[1], rel=1e-9)
    sentence = (f"{PLANT} has Cook's distance {fmt(d[PLANT], 2)} > 4/n = {fmt(4 / len(x), 2)}; without it (n = {len(x) - 1}) "
                f"the slope is {fmt_ci(beta[1], lo[1], hi[1], 3)} J/token per GB read")
    assert sentence in res.answer.answer
    assert plots.attribution_plot([res], tmp_path / "attr", model="toy") is not None
    assert "Cook's distance &gt; 4/n" in (tmp_path / "attr.svg").read_text()
