"""Honest uncertainty on a real lake: one repeat and a few questions give wide intervals and
conclusions the data can carry ("cannot support"), a degenerate interval is shown as none
with its reason, and the equivalence test's t quantiles are Student's."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from factories import sha
from scipy import stats
from test_analysis_runs import Builder, assert_frames_agree, sweep_run

from mqepi.analysis import MACROS_SQL, twin_runs
from mqepi.analysis import twin_frontier as twin
from mqepi.lake.store import Lake
from mqepi.results import sql
from mqepi.results.report.comparisons import rq4_optimum
from mqepi.results.report.labels import CANNOT
from mqepi.results.report.query import collect


def test_t_quantiles_are_students():
    import duckdb

    con = duckdb.connect()
    con.execute(MACROS_SQL.read_text())
    dfs = [*range(1, 130), 200, 500, 1000, 10**5]
    got = con.execute("SELECT df, mqepi_t95(df) FROM unnest(?::INTEGER[]) t(df)", [dfs]).fetchall()
    for df, value in got:
        assert value == pytest.approx(stats.t.ppf(0.95, df), rel=1e-10, abs=1e-10), df
        assert twin.t95(df) == pytest.approx(value, rel=1e-12)
    assert con.execute("SELECT mqepi_t95(0)").fetchone()[0] is None


@pytest.fixture(scope="module")
def thin_lake(tmp_path_factory):
    """Four configurations of one model, ONE repeat each, 12 questions per benchmark:
    uniform_q4km, mix_a, mix_zero whose every answer is wrong, and mix_one with one right
    answer (in mmlu)."""
    lake = Lake(tmp_path_factory.mktemp("thin") / "lake")
    lake.init()
    rng = np.random.default_rng(21)
    b = Builder()
    for config_id, kind, level, acc in (("uniform_q4km", "uniform", 6.5, 0.55), ("mix_a", "mixed", 6.0, 0.6),
                                        ("mix_zero", "mixed", 5.5, 0.0), ("mix_one", "mixed", 5.0, 0.0)):
        b.config("m1", config_id, [("early", "Q4_K_M"), ("middle", "Q4_K_M"), ("late", "Q4_K_M")], kind=kind)
        b.quantization("m1", config_id, sha(config_id), 80_000_000, 4.8)
        sweep_run(b, rng, model="m1", config_id=config_id, run_id=f"{config_id}-r0", repeat=0, level=level, acc=acc,
                  all_wrong=("mmlu", "arc_challenge", "hellaswag") if config_id == "mix_zero" else
                  ("arc_challenge", "hellaswag") if config_id == "mix_one" else (),
                  one_right=("mmlu",) if config_id == "mix_one" else ())
    return b.write(lake)


def test_one_repeat_and_few_questions_give_wide_intervals(thin_lake):
    con = sql.connect(thin_lake)
    cs = con.sql("SELECT * FROM config_summary ORDER BY config_id").pl()
    rows = {r["config_id"]: r for r in cs.iter_rows(named=True)}
    for name in ("uniform_q4km", "mix_a"):
        r = rows[name]
        assert r["n_repeats"] == 1 and r["n_questions"] == 36
        # 36 questions: the accuracy is uncertain by about +/- 0.16, not zero-width
        assert r["accuracy_ci_high"] - r["accuracy_ci_low"] > 0.2
        assert r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"]
        # one repeat: J/token's interval is the meter's alone, and the note says so
        assert r["j_per_token_ci_low"] < r["j_per_token"] < r["j_per_token_ci_high"]
        assert "one repeat" in r["interval_note"] and "meter" in r["interval_note"]
    zero = rows["mix_zero"]
    assert zero["accuracy"] == 0 and zero["accuracy_ci_low"] is None and zero["accuracy_ci_high"] is None
    assert "accuracy: no interval, every resample gives 0 (36 questions, 1 repeat)" in zero["interval_note"]
    assert zero["epi"] is None and zero["epi_ci_low"] is None
    assert "EPI: infinite in every resample (accuracy 0)" in zero["interval_note"]
    # a resample without a right answer is the worst EPI, not a missing one: mix_one's only right
    # answer is left out of (11/12)^12 = 35 % of the mmlu draws, so its EPI has no upper bound
    one = rows["mix_one"]
    assert one["accuracy"] == pytest.approx(1 / 36) and one["epi_ci_high"] == float("inf")
    assert 0 < one["epi_ci_low"] <= one["epi"]
    share = int(one["interval_note"].split("accuracy is 0 in ")[1].split("%")[0])
    assert 28 <= share <= 42  # (11/12)^12 = 35 %, over 1000 resamples
    for name in ("uniform_q4km", "mix_a"):
        assert rows[name]["epi_ci_high"] < float("inf") and "upper bound" not in rows[name]["interval_note"]


def test_the_report_does_not_conclude_what_the_intervals_do_not_carry(thin_lake):
    data = collect(thin_lake)
    (r4,) = rq4_optimum(data)
    assert r4.reference["config_id"] == "uniform_q4km"
    cs = data.config_summary.filter(pl.col("config_id").is_in([r4.best_mixed["config_id"], "uniform_q4km"])).sort(
        pl.col("config_id") == "uniform_q4km")
    lo, hi = cs["epi_ci_low"].to_list(), cs["epi_ci_high"].to_list()
    assert lo[0] <= hi[1] and lo[1] <= hi[0]  # one repeat and 36 questions: the EPI intervals overlap
    assert CANNOT in r4.answer.answer and not r4.answer.supported
    assert "do not overlap" not in r4.answer.answer


def test_the_twin_agrees_where_intervals_are_unbounded_or_missing(thin_lake):
    via_sql = sql.connect(thin_lake).sql("SELECT * FROM config_summary").pl()
    via_polars = twin_runs.all_views(thin_lake)["config_summary"]
    assert via_sql["epi_ci_high"].is_infinite().sum() == 1  # mix_one
    assert_frames_agree(via_sql, via_polars, ["model", "config_id", "origin", "power_source"], "config_summary")
