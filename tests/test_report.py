"""The report: RQ analyses on frames shaped like the contract views, plots, report files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import polars as pl
import pytest

from mqepi.results.report import plots
from mqepi.results.report.answers import summary
from mqepi.results.report.comparisons import rq1_matched_pairs, rq2_frontier, rq4_optimum
from mqepi.results.report.data import INVENTORY, RUNS, LakeSnapshot, ReportData, conform, layer_group_bits
from mqepi.results.report.labels import CANNOT, SIMULATED, ReportError
from mqepi.results.report.query import collect
from mqepi.results.report.regressions import rq3_sensitivity, rq5_attribution
from mqepi.results.report.statistics import ols
from mqepi.results.report.write import write_report

# ggml bits/weight of the paper's types (K-quants with their super-block scales)
BITS = {"Q2_K": 2.625, "Q3_K_S": 3.4375, "Q4_K_M": 4.5, "Q5_K_M": 5.5, "Q6_K": 6.5625, "Q8_0": 8.5}
PAPER = [
    ("uniform_q2k", "Q2_K", "Q2_K", "Q2_K"), ("uniform_q3ks", "Q3_K_S", "Q3_K_S", "Q3_K_S"),
    ("uniform_q4km", "Q4_K_M", "Q4_K_M", "Q4_K_M"), ("uniform_q5km", "Q5_K_M", "Q5_K_M", "Q5_K_M"),
    ("uniform_q6k", "Q6_K", "Q6_K", "Q6_K"), ("uniform_q8", "Q8_0", "Q8_0", "Q8_0"),
    ("mix_high_early", "Q6_K", "Q4_K_M", "Q3_K_S"), ("mix_high_late", "Q3_K_S", "Q4_K_M", "Q6_K"),
    ("mix_high_middle", "Q3_K_S", "Q6_K", "Q3_K_S"), ("mix_gradient_down", "Q6_K", "Q5_K_M", "Q4_K_M"),
    ("mix_gradient_up", "Q4_K_M", "Q5_K_M", "Q6_K"), ("mix_extreme_early", "Q8_0", "Q4_K_M", "Q2_K"),
    ("mix_extreme_late", "Q2_K", "Q4_K_M", "Q8_0"), ("mix_bookend_high", "Q6_K", "Q3_K_S", "Q6_K"),
    ("mix_q5_q4", "Q5_K_M", "Q4_K_M", "Q4_K_M"), ("mix_q4_q5", "Q4_K_M", "Q4_K_M", "Q5_K_M"),
    ("mix_q6_q4_q4", "Q6_K", "Q4_K_M", "Q4_K_M"), ("mix_q4_q6_q4", "Q4_K_M", "Q6_K", "Q4_K_M"),
    ("mix_q5_q3_q5", "Q5_K_M", "Q3_K_S", "Q5_K_M"), ("mix_q6_q3_q4", "Q6_K", "Q3_K_S", "Q4_K_M"),
]
N_LAYERS = 8  # early 0-1, middle 2-5, late 6-7 (mqepi.quant.maps.group_bounds)
EL = 32_000  # weights per block tensor: 8 * bytes / EL is exact for every type above
# the "true" model the synthetic data follow exactly
J0, JE, JM, JL = 0.05, 0.004, 0.010, 0.002
A0, AE, AM, AL = 0.20, 0.030, 0.020, 0.010
DEC0, DEC_PER_GB = 0.01, 40.0


def layer_of(group: str) -> list[int]:
    return {"early": [0, 1], "middle": [2, 3, 4, 5], "late": [6, 7]}[group]


def inventory(configs, *, model="toy", origin="lab", tied=False) -> pl.DataFrame:
    rows = []
    for cid, e, m, lt in configs:
        types = {"early": e, "middle": m, "late": lt}
        for g, t in types.items():
            for layer in layer_of(g):
                for name in ("attn_q", "ffn_down"):
                    rows.append((model, cid, origin, f"sha-{cid}", f"blk.{layer}.{name}.weight", layer, g, t.lower(),
                                 EL, int(BITS[t] * EL / 8)))
            for layer in layer_of(g):
                rows.append((model, cid, origin, f"sha-{cid}", f"blk.{layer}.attn_norm.weight", layer, g, "f32", 64, 256))
        rows.append((model, cid, origin, f"sha-{cid}", "token_embd.weight", None, None, "q4_K", 64_000, 36_000))
        if not tied:
            rows.append((model, cid, origin, f"sha-{cid}", "output.weight", None, None, "q6_K", 64_000, 52_500))
        rows.append((model, cid, origin, f"sha-{cid}", "output_norm.weight", None, None, "f32", 64, 256))
    return pl.DataFrame(rows, schema=INVENTORY, orient="row")


def group_bpw(t: str) -> float:
    # block tensors of a layer: 2 quantized (EL weights each) + one f32 norm (64 weights, 256 bytes)
    return 8 * (2 * BITS[t] * EL / 8 + 256) / (2 * EL + 64)


def bytes_per_token(e, m, lt, tied=False) -> int:
    blocks = sum(len(layer_of(g)) * (2 * int(BITS[t] * EL / 8) + 256) for g, t in (("early", e), ("middle", m), ("late", lt)))
    return blocks + 256 + (36_000 if tied else 52_500)


def summary_frame(configs, *, model="toy", origin="lab", power_source="simulated", noise=0.0) -> pl.DataFrame:
    rows = []
    for i, (cid, e, m, lt) in enumerate(configs):
        be, bm, bl = group_bpw(e), group_bpw(m), group_bpw(lt)
        jpt = J0 + JE * be + JM * bm + JL * bl + noise * math.sin(3.7 * i)
        acc = A0 + AE * be + AM * bm + AL * bl + noise * math.cos(1.3 * i)
        bpt = bytes_per_token(e, m, lt)
        tps = 1.0 / (2e-6 * bpt + 0.001 * (i % 3))  # time not a pure function of bytes
        rows.append({
            "model": model, "config_id": cid, "origin": origin, "power_source": power_source,
            "simulated": power_source == "simulated", "kind": "uniform" if e == m == lt else "mixed",
            "early_type": e, "middle_type": m, "late_type": lt, "n_repeats": 3, "n_excluded": 0,
            "j_per_token": jpt, "j_per_token_ci_low": jpt * 0.98, "j_per_token_ci_high": jpt * 1.02,
            "accuracy": acc, "accuracy_ci_low": acc - 0.01, "accuracy_ci_high": acc + 0.01,
            "epi": jpt / acc, "epi_ci_low": jpt / acc * 0.97, "epi_ci_high": jpt / acc * 1.03,
            "ppl": 30.0 - 2 * (be + bm + bl) / 3, "ppl_stderr": 0.2, "kld_mean": 0.01,
            "file_size_bytes": int(bpt * 1.01) + 36_000, "bits_per_weight": (be + 2 * bm + bl) / 4,
            "decode_tokens_per_s": tps, "prefill_j_per_token": jpt / 5,
            "decode_j_per_token": DEC0 + DEC_PER_GB * bpt / 1e9, "avg_power_w": 5.0,
        })
    return pl.DataFrame(rows)


def frontier_frame(cs: pl.DataFrame) -> pl.DataFrame:
    pts = cs.select("model", "origin", "power_source", "simulated", "config_id", "kind", "accuracy", "j_per_token", "epi",
                    "accuracy_ci_low", "accuracy_ci_high", "j_per_token_ci_low", "j_per_token_ci_high").rows(named=True)

    def dominated(p, pool):
        return any(q is not p and q["accuracy"] >= p["accuracy"] and q["j_per_token"] <= p["j_per_token"]
                   and (q["accuracy"] > p["accuracy"] or q["j_per_token"] < p["j_per_token"]) for q in pool)

    uniform = [p for p in pts if p["kind"] == "uniform"]
    for p in pts:
        p["on_frontier"] = not dominated(p, pts)
        p["frontier_probability"] = 0.97 if p["on_frontier"] else 0.1
        p["uniform_dominated"] = p["kind"] == "uniform" and dominated(p, pts)
        p["mixed_unmatched"] = (p["kind"] == "mixed" and p["on_frontier"]
                                and not any(u["accuracy"] >= p["accuracy"] and u["j_per_token"] <= p["j_per_token"]
                                            for u in uniform))
    return pl.DataFrame(pts)


def pairs_frame(model="toy", origin="lab", power_source="simulated") -> pl.DataFrame:
    base = {"model": model, "origin": origin, "power_source": power_source, "simulated": power_source == "simulated",
            "ppl_stderr_a": 0.2, "ppl_stderr_b": 0.2, "match_rule": "TOST at 90%: perplexity ratio within 1 +/- 1%",
            "n_paired_repeats": 3, "n_questions_paired": 400, "ppl_test": "paired t over 8 chunks", "n_chunks": 8,
            "ppl_margin": 0.01, "ppl_verdict": "matched", "matched": True}
    return pl.DataFrame([
        {**base, "config_a": "mix_high_early", "config_b": "mix_high_late", "ppl_a": 20.1, "ppl_b": 20.1, "ppl_diff": 0.0,
         "j_per_token_a": 0.11, "j_per_token_b": 0.12, "j_per_token_diff": 0.01, "j_per_token_diff_ci_low": 0.004,
         "j_per_token_diff_ci_high": 0.016, "epi_a": 0.25, "epi_b": 0.28, "epi_diff": 0.03, "epi_diff_ci_low": 0.01,
         "epi_diff_ci_high": 0.05, "mcnemar_b": 30, "mcnemar_c": 12, "mcnemar_p": 0.008},
        {**base, "config_a": "mix_q4_q5", "config_b": "mix_q5_q4", "ppl_a": 19.0, "ppl_b": 19.05, "ppl_diff": 0.05,
         "j_per_token_a": 0.11, "j_per_token_b": 0.111, "j_per_token_diff": 0.001, "j_per_token_diff_ci_low": -0.003,
         "j_per_token_diff_ci_high": 0.004, "epi_a": 0.25, "epi_b": 0.251, "epi_diff": 0.001, "epi_diff_ci_low": -0.01,
         "epi_diff_ci_high": 0.012, "mcnemar_b": 10, "mcnemar_c": 11, "mcnemar_p": 1.0},
        # an inconclusive pair (its interval crosses the margin): never counted as matched
        {**base, "config_a": "mix_q4_q6_q4", "config_b": "mix_q6_q4_q4", "ppl_a": 19.5, "ppl_b": 19.6, "ppl_diff": 0.1,
         "ppl_verdict": "inconclusive", "matched": False, "j_per_token_a": 0.11, "j_per_token_b": 0.2,
         "j_per_token_diff": 0.09, "j_per_token_diff_ci_low": 0.08, "j_per_token_diff_ci_high": 0.1, "epi_a": 0.25,
         "epi_b": 0.5, "epi_diff": 0.25, "epi_diff_ci_low": 0.2, "epi_diff_ci_high": 0.3, "mcnemar_b": 10,
         "mcnemar_c": 11, "mcnemar_p": 1.0},
    ])


def synthetic(configs=PAPER, *, noise=0.0, origin="lab", power_source="simulated", **kw) -> ReportData:
    cs = summary_frame(configs, origin=origin, power_source=power_source, noise=noise)
    return ReportData.from_frames(config_summary=cs, pareto_frontier=frontier_frame(cs),
                                  matched_pairs=pairs_frame(origin=origin, power_source=power_source),
                                  inventory=inventory(configs, origin=origin), **kw)


# ------------------------------------------------------------------ statistics


def test_ols_interval_matches_a_hand_computation():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [1.1, 1.9, 3.2, 3.9, 5.1]
    fit = ols({"x": x}, y, "y")
    # by hand: mean y 3.04, Sxy = Sxx = 10, slope 1, intercept 0.04; residuals
    # 0.06 -0.14 0.16 -0.14 0.06: RSS 0.072, TSS 10.072; se(slope) = sqrt(RSS / 3 / Sxx)
    assert fit.coef["x"] == pytest.approx(1.0)
    assert fit.coef["intercept"] == pytest.approx(0.04)
    half = 3.1824463052837 * math.sqrt(0.072 / 3 / 10)  # t(0.975, 3), from tables: 3.1824
    assert fit.ci_low["x"] == pytest.approx(1.0 - half)
    assert fit.ci_high["x"] == pytest.approx(1.0 + half)
    assert fit.r2 == pytest.approx(1 - 0.072 / 10.072)
    assert fit.supported


# ------------------------------------------------------------------ RQ3


def test_layer_group_bits_are_bytes_over_weights_per_positional_group():
    bits = layer_group_bits(inventory(PAPER[:1] + PAPER[6:7]))
    row = bits.filter(pl.col("config_id") == "mix_high_early").row(0, named=True)
    assert row["early_bpw"] == pytest.approx(group_bpw("Q6_K"))
    assert row["middle_bpw"] == pytest.approx(group_bpw("Q4_K_M"))
    assert row["late_bpw"] == pytest.approx(group_bpw("Q3_K_S"))
    assert row["middle_n_elements"] == 4 * (2 * EL + 64)
    assert row["bytes_per_token"] == bytes_per_token("Q6_K", "Q4_K_M", "Q3_K_S")
    assert row["moe"] is False
    tied = layer_group_bits(inventory(PAPER[:1], tied=True)).row(0, named=True)
    assert tied["bytes_per_token"] == bytes_per_token("Q2_K", "Q2_K", "Q2_K", tied=True)


def test_rq3_recovers_known_coefficients_on_exact_data():
    (res,) = rq3_sensitivity(synthetic())
    j, a = res.fits["j_per_token"], res.fits["accuracy"]
    assert j.n == a.n == len(PAPER)
    for fit, (b0, be, bm, bl) in ((j, (J0, JE, JM, JL)), (a, (A0, AE, AM, AL))):
        assert fit.coef["intercept"] == pytest.approx(b0, abs=1e-9)
        assert fit.coef["early_bpw"] == pytest.approx(be, abs=1e-9)
        assert fit.coef["middle_bpw"] == pytest.approx(bm, abs=1e-9)
        assert fit.coef["late_bpw"] == pytest.approx(bl, abs=1e-9)
        assert fit.r2 == pytest.approx(1.0)
        assert fit.ci_low["early_bpw"] <= fit.coef["early_bpw"] <= fit.ci_high["early_bpw"]
        assert fit.supported
    assert "Most sensitive: the middle layers" in res.answer.answer
    assert res.answer.supported
    assert SIMULATED in res.answer.text()


def test_rq3_noisy_data_intervals_cover_the_truth():
    (res,) = rq3_sensitivity(synthetic(noise=0.002))
    fit = res.fits["j_per_token"]
    assert 0 < fit.r2 < 1
    for term, truth in (("early_bpw", JE), ("middle_bpw", JM), ("late_bpw", JL)):
        assert fit.ci_low[term] < truth < fit.ci_high[term]


def test_rq3_too_few_configurations_cannot_support_a_conclusion():
    few = PAPER[:3] + PAPER[6:9]  # 6 configurations for 4 parameters: n <= p + 2
    (res,) = rq3_sensitivity(synthetic(few))
    assert not res.fits["j_per_token"].supported
    assert "n = 6 observations for 4 parameters" in res.fits["j_per_token"].reason
    assert CANNOT in res.answer.answer
    assert not res.answer.supported


def test_rq3_only_uniform_configurations_are_collinear():
    (res,) = rq3_sensitivity(synthetic(PAPER[:6] + [("uniform_q4_0", "Q4_K_M", "Q4_K_M", "Q4_K_M")]))
    assert "collinear" in res.fits["j_per_token"].reason
    assert CANNOT in res.answer.answer


def test_intervals_all_including_zero_cannot_support_a_conclusion():
    fit = ols({"x": [1, 2, 3, 4, 5, 6, 7, 8]}, [1.0, -1.0, 1.2, -0.8, 0.9, -1.1, 1.0, -1.0], "y")
    assert not fit.supported and "includes 0" in fit.reason
    assert fit.verdict().startswith(CANNOT)


# ------------------------------------------------------------------ RQ5


def test_rq5_recovers_slope_and_roofline_fraction():
    data = synthetic()
    (res,) = rq5_attribution(data, bandwidth_gbs=17.0)
    fb = res.fit_bytes
    assert fb.coef["gb_per_token"] == pytest.approx(DEC_PER_GB, rel=1e-6)
    assert fb.coef["intercept"] == pytest.approx(DEC0, abs=1e-9)
    assert fb.r2 == pytest.approx(1.0) and fb.supported
    assert res.fit_time.n == len(PAPER) and 0 <= res.fit_time.r2 <= 1
    row = res.table.filter(pl.col("config_id") == "uniform_q4km").row(0, named=True)
    bpt = bytes_per_token("Q4_K_M", "Q4_K_M", "Q4_K_M")
    assert row["bytes_per_token"] == bpt
    assert row["roofline_fraction"] == pytest.approx(bpt * row["decode_tokens_per_s"] / 17e9)
    assert "17 GB/s" in res.answer.answer and SIMULATED in res.answer.text()


def test_rq5_without_bandwidth_says_it_is_unknown():
    (res,) = rq5_attribution(synthetic())
    assert res.table["roofline_fraction"].null_count() == res.table.height
    assert "bandwidth unknown" in res.answer.answer


def test_rq5_too_few_points_cannot_support_a_conclusion():
    (res,) = rq5_attribution(synthetic(PAPER[:4]), bandwidth_gbs=10.0)
    assert not res.fit_bytes.supported and not res.fit_time.supported
    assert CANNOT in res.answer.answer


def test_rq5_moe_bytes_are_flagged_as_an_upper_bound():
    inv = inventory(PAPER[:6]).with_columns(
        tensor=pl.when(pl.col("tensor").str.contains("ffn_down")).then(pl.col("tensor").str.replace("ffn_down", "ffn_down_exps"))
        .otherwise(pl.col("tensor")))
    data = ReportData.from_frames(config_summary=summary_frame(PAPER[:6]), inventory=inv)
    (res,) = rq5_attribution(data)
    assert res.moe and "upper bound" in res.answer.evidence


# ------------------------------------------------------------------ RQ1, RQ2, RQ4, summary


def test_rq1_rq2_rq4_answers():
    data = synthetic()
    (r1,) = rq1_matched_pairs(data)
    assert r1.answer.answer.startswith("Yes: 1 of 2")
    assert r1.pairs["epi_differs"].to_list() == [True, False]
    (r2,) = rq2_frontier(data)
    on = data.pareto_frontier.filter(pl.col("on_frontier"))
    assert f"{on.height} of {len(PAPER)} configurations are on the frontier" in r2.answer.answer
    (r4,) = rq4_optimum(data)
    assert r4.reference["config_id"] == "uniform_q4km"
    assert r4.best_mixed["kind"] == "mixed"
    assert "uniform_q4km" in r4.answer.answer and ("smaller" in r4.answer.answer or "larger" in r4.answer.answer)
    assert f"do not overlap: {r4.best_mixed['config_id']} has the lower EPI" in r4.answer.answer
    for a in (r1.answer, r2.answer, r4.answer):
        assert a.evidence and a.power == SIMULATED
    assert "2 are shown equivalent in perplexity" in r1.answer.evidence and "1 are inconclusive" in r1.answer.evidence


def test_rq4_states_no_lower_epi_where_the_intervals_say_nothing():
    """Overlapping intervals, or a configuration without an interval: 'cannot support', never
    'do not overlap'."""
    data = synthetic()
    (r4,) = rq4_optimum(data)
    best, ref = r4.best_mixed["config_id"], "uniform_q4km"
    wide = data.config_summary.with_columns(
        epi_ci_low=pl.when(pl.col("config_id").is_in([best, ref])).then(0.0).otherwise(pl.col("epi_ci_low")),
        epi_ci_high=pl.when(pl.col("config_id").is_in([best, ref])).then(10.0).otherwise(pl.col("epi_ci_high")))
    (r4,) = rq4_optimum(ReportData.from_frames(config_summary=wide, pareto_frontier=data.pareto_frontier,
                                               matched_pairs=data.matched_pairs, inventory=data.inventory))
    assert "intervals overlap" in r4.answer.answer and CANNOT in r4.answer.answer and not r4.answer.supported
    assert "do not overlap" not in r4.answer.answer
    none = data.config_summary.with_columns(
        epi_ci_low=pl.when(pl.col("config_id") == ref).then(None).otherwise(pl.col("epi_ci_low")))
    (r4,) = rq4_optimum(ReportData.from_frames(config_summary=none, pareto_frontier=data.pareto_frontier,
                                               matched_pairs=data.matched_pairs, inventory=data.inventory))
    assert f"{ref} has no EPI interval" in r4.answer.answer and CANNOT in r4.answer.answer
    assert not r4.answer.supported and "do not overlap" not in r4.answer.answer


def test_rq1_with_only_inconclusive_pairs_cannot_support():
    data = synthetic()
    data.matched_pairs = data.matched_pairs.with_columns(matched=pl.lit(False), ppl_verdict=pl.lit("inconclusive"))
    (r1,) = rq1_matched_pairs(data)
    assert r1.pairs.height == 0 and not r1.answer.supported
    assert "3 pairs are inconclusive" in r1.answer.answer and CANNOT in r1.answer.answer


def test_rq1_single_repeat_pairs_are_not_testable():
    data = synthetic()
    data.matched_pairs = data.matched_pairs.with_columns(n_paired_repeats=pl.lit(1, dtype=pl.Int64))
    (r1,) = rq1_matched_pairs(data)
    assert CANNOT in r1.answer.answer.lower() and not r1.answer.supported


def test_no_power_groups_answer_no_energy_question():
    data = synthetic(power_source="none")
    data.config_summary = data.config_summary.with_columns(
        [pl.lit(None, dtype=pl.Float64).alias(c) for c in ("j_per_token", "epi", "decode_j_per_token")])
    text = summary(data)
    assert "NO POWER MEASURED" in text
    assert text.count("no power was measured") >= 3


def test_summary_lists_every_rq_with_evidence_and_power():
    text = summary(synthetic())
    assert text.splitlines()[0].startswith("SIMULATED POWER (NOT MEASURED)")
    for rq in ("RQ1", "RQ2", "RQ3", "RQ4", "RQ5"):
        assert f"{rq} (" in text
    assert text.count(f"Power: {SIMULATED}.") == 5
    assert "origin lab" in text


def test_summary_of_nothing_says_so():
    text = summary(ReportData.from_frames(origin="community"))
    assert "nothing to answer" in text


def test_measured_power_is_not_called_simulated():
    text = summary(synthetic(power_source="epi-meter"))
    assert "simulated" not in text.lower()
    assert "measured power (epi-meter)" in text


# ------------------------------------------------------------------ plots and files


def test_plots_write_png_and_svg_with_the_power_source(tmp_path):
    data = synthetic()
    made = [
        plots.pareto_plot(data.pareto_frontier, tmp_path / "pareto", model="toy"),
        plots.matched_pairs_plot(data.matched_pairs, tmp_path / "pairs", model="toy"),
        plots.sensitivity_plot(rq3_sensitivity(data), tmp_path / "sens", model="toy"),
        plots.attribution_plot(rq5_attribution(data), tmp_path / "rq5", model="toy"),
    ]
    for png, svg in made:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = svg.read_text()
        assert "simulated power" in text and "NOT MEASURED" in text
    assert "mix_high_early" in made[0][1].read_text()  # labels stay text
    assert plots.pareto_plot(data.pareto_frontier.clear(), tmp_path / "none", model="toy") is None


def test_plots_of_measured_power_do_not_say_simulated(tmp_path):
    data = synthetic(power_source="epi-meter")
    _png, svg = plots.pareto_plot(data.pareto_frontier, tmp_path / "pareto", model="toy")
    text = svg.read_text()
    assert "measured power (epi-meter)" in text and "simulated" not in text.lower()


def lab_and_community() -> ReportData:
    lab = synthetic()
    com = synthetic(PAPER[:8], origin="community/alice", power_source="epi-meter", noise=0.001)
    frames = {name: pl.concat([getattr(lab, name), getattr(com, name)], how="vertical_relaxed")
              for name in ("config_summary", "pareto_frontier", "matched_pairs", "inventory")}
    runs = pl.DataFrame({"model": ["toy", "toy"], "config_id": ["uniform_q4km"] * 2, "run_id": ["r1", "c1"],
                         "origin": ["lab", "community/alice"], "repeat": [0, 0], "power_source": ["simulated", "epi-meter"],
                         "producer": ["mqepi/0.1.0"] * 2,
                         "provenance_json": ['{"mqepi": "0.1.0", "llama_cpp_commit": "abc123", "host": "h"}',
                                             '{"mqepi": "0.1.0", "llama_cpp_commit": "def456"}']})
    quant = pl.DataFrame({"model": ["toy"], "config_id": ["uniform_q4km"], "origin": ["lab"], "llama_cpp_commit": ["abc123"],
                          "base_sha256": ["b" * 64], "producer": ["mqepi/0.1.0"]})
    qsets = pl.DataFrame({"origin": ["lab"], "model": ["toy"], "benchmark": ["mmlu"], "question_set_sha256": ["c" * 64],
                          "n_runs": [60], "n_questions": [20]})
    metrics = pl.DataFrame({"model": ["toy"], "config_id": ["uniform_q8"], "run_id": ["bad1"], "origin": ["lab"], "repeat": [3],
                            "power_source": ["simulated"], "valid": [False], "invalid_reasons": ["mmlu: coverage 0.80 < 0.95"]})
    return ReportData.from_frames(**frames, runs=runs, quantization=quant, question_sets=qsets, run_metrics=metrics,
                                  snapshot=LakeSnapshot("/tmp/lake", 12, "d" * 64), settings={"seed": 1234, "bootstrap": 1000})


def test_report_files_hold_tables_banner_sections_and_no_remote_resources(tmp_path):
    data = lab_and_community()
    files = write_report(data, tmp_path / "out")
    md, page = files.markdown.read_text(), files.html.read_text()
    for text in (md, page):
        assert "SIMULATED POWER (NOT MEASURED)" in text
        assert "Lab results (origin lab)" in text and "Community results (origin community/alice)" in text
        assert "mix_high_early" in text and "uniform_q4km" in text
        assert "abc123" in text and "def456" in text and "c" * 64 in text  # provenance
        assert "12 files" in text and "d" * 64 in text  # snapshot
        assert "mmlu: coverage 0.80 &lt; 0.95" in text or "mmlu: coverage 0.80 < 0.95" in text  # excluded runs
        assert "measured power (epi-meter)" in text
        for rq in ("RQ1", "RQ2", "RQ3", "RQ4", "RQ5"):
            assert rq in text
    assert "| Config | Kind | Early | Middle | Late | Size (GB) |" in md
    assert "| Config A | Config B | Perplexity A | Perplexity B |" in md
    assert md.count("![") == len(files.figures) // 2
    assert '<th class="num">J/Token (95% CI)</th>' in page and '<th class="num">Delta EPI (B-A) (95% CI)</th>' in page
    assert '<th>Config</th>' in page and re.search(r'<td class="num">[\d.]+ \([\d.]+-[\d.]+\)</td>', page)
    # self-contained: every figure inline, nothing fetched from anywhere
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert page.count("data:image/svg+xml;base64,") == len(files.figures) // 2
    # figures: per group, plus the side-by-side Pareto figure with a panel per origin
    names = sorted(p.name for p in files.figures)
    assert "pareto-toy-all.svg" in names and "pareto-toy-all.png" in names
    assert all(p.is_file() for p in files.figures)
    side = (tmp_path / "out" / "figures" / "pareto-toy-all.svg").read_text()
    assert "origin lab" in side and "origin community/alice" in side and "simulated power" in side


def test_report_escapes_lake_text_in_html(tmp_path):
    data = synthetic(PAPER[:4])
    data.runs = conform(pl.DataFrame({"origin": ["lab"], "provenance_json": ['{"mqepi": "<script>alert(1)</script>"}']}),
                               RUNS)
    page = write_report(data, tmp_path).html.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert write_report(data, tmp_path / "again").html.read_text() == page  # no time stamps


def test_empty_report_still_has_banner_and_sections(tmp_path):
    files = write_report(ReportData.from_frames(), tmp_path)
    md = files.markdown.read_text()
    assert "NO POWER MEASURED" in md and "nothing to answer" in md
    assert "\n## Provenance\n" in md and "\n## Excluded runs\n" in md and files.figures == []


def test_origin_option_is_checked():
    with pytest.raises(ReportError, match="origin 'labs' is not one of"):
        collect(None, origin="labs")


# ------------------------------------------------------------------ end to end through the views

E2E_CONFIGS = [  # config id, early, middle, late on a 4-layer model (early 0, middle 1-2, late 3)
    ("uniform_q3ks", "Q3_K_S", "Q3_K_S", "Q3_K_S"), ("uniform_q4km", "Q4_K_M", "Q4_K_M", "Q4_K_M"),
    ("uniform_q6k", "Q6_K", "Q6_K", "Q6_K"), ("uniform_q8", "Q8_0", "Q8_0", "Q8_0"),
    ("mix_high_early", "Q6_K", "Q4_K_M", "Q3_K_S"), ("mix_high_late", "Q3_K_S", "Q4_K_M", "Q6_K"),
    ("mix_q4_q6_q4", "Q4_K_M", "Q6_K", "Q4_K_M"), ("mix_extreme_early", "Q8_0", "Q4_K_M", "Q2_K"),
]
E2E_GROUPS = {"early": [0], "middle": [1, 2], "late": [3]}
S_NS = 1_000_000_000


def fill_e2e_lake(lake, *, origin="lab", source="simulated", configs=E2E_CONFIGS, repeats=3):
    """A small sweep recorded as raw events: configurations, quantizations, tensor
    inventories, and per repeat a run with idle, mmlu, tg and pp windows, power samples at
    10 Hz, answers, perplexity and throughput."""
    import json

    from factories import T0, sha

    ev: dict[str, dict[str, list]] = {}

    def add(event_type, **cols):
        n = max((len(v) for v in cols.values() if isinstance(v, list)), default=1)
        batch = ev.setdefault(event_type, {})
        for k, v in cols.items():
            batch.setdefault(k, []).extend(v if isinstance(v, list) else [v] * n)

    for ci, (cid, e, m, lt) in enumerate(configs):
        types = {"early": e, "middle": m, "late": lt}
        kind = "uniform" if e == m == lt else "mixed"
        qmap = {"config_id": cid, "model": "tiny", "layer_groups": [
            {"name": g, "layers": E2E_GROUPS[g], "quant": types[g]} for g in ("early", "middle", "late")]}
        map_json = json.dumps(qmap, sort_keys=True, separators=(",", ":"))
        file_sha = sha(f"{origin}-{cid}")
        names, layers, groups, eff, n_el, n_by = [], [], [], [], [], []
        for g, ls in E2E_GROUPS.items():
            for layer in ls:
                names.append(f"blk.{layer}.ffn_down.weight")
                layers.append(layer)
                groups.append(g)
                eff.append(types[g].split("_")[0].lower() + ("_K" if "_K" in types[g] else "_0"))
                n_el.append(EL)
                n_by.append(int(BITS[types[g]] * EL / 8))
        names += ["token_embd.weight", "output.weight"]
        layers += [None, None]
        groups += [None, None]
        eff += ["q4_K", "q6_K"]
        n_el += [EL, EL]
        n_by += [18_000, 26_250]
        add("quant_config", model="tiny", config_id=cid, map_sha256=sha(map_json), map_json=map_json, n_layers=4, kind=kind)
        size = sum(n_by) + 4096
        add("quantization", model="tiny", config_id=cid, map_sha256=sha(map_json), base_sha256=sha("base"),
            base_ftype="Q8_0", llama_cpp_commit="b4242", file_sha256=file_sha, effective_map_sha256=sha(file_sha + "e"),
            file_size_bytes=size, bits_per_weight=8 * sum(n_by) / sum(n_el), duration_s=1.0, host="quant-host")
        add("tensor_inventory", model="tiny", config_id=cid, file_sha256=file_sha, tensor=names, layer=layers, group=groups,
            requested_type=eff, effective_type=eff, fallback=[False] * len(names), n_elements=n_el, n_bytes=n_by)
        bits = (BITS[e] + 2 * BITS[m] + BITS[lt]) / 4
        for r in range(repeats):
            run_id = f"{origin.replace('/', '-')}-{cid}-r{r}"
            key = {"model": "tiny", "config_id": cid, "run_id": run_id}
            prov = json.dumps({"mqepi": "0.1.0", "llama_cpp_commit": "b4242", "simulator": {"rate_hz": 10}})
            add("run", **key, status=["started", "finished"], repeat=r, file_sha256=file_sha, power_source=source,
                host="pi0", provenance_json=prov, message=None)
            windows = [("idle_baseline", 0, 10, None), ("mmlu", 11, 21, 2000), ("tg", 22, 30, 64), ("pp", 31, 35, 256)]
            add("phase", **key, phase=[w[0] for w in windows], node=None,
                start_ns=[T0 + w[1] * S_NS for w in windows], end_ns=[T0 + w[2] * S_NS for w in windows],
                tokens=[w[3] for w in windows])
            busy = 5.0 + 0.4 * bits + 0.05 * ((ci + r) % 3)
            k = list(range(0, 361))  # 0 .. 36 s at 10 Hz
            power = [3.0 if t < 105 else (busy if t < 215 else busy * (0.9 + 0.02 * BITS[m]) if t < 305 else busy) for t in k]
            add("power_sample", **key, power_source=source, meter_id="m0", channel=0, node="pi0", seq=k,
                meter_time_ns=[None] * len(k), host_time_ns=[T0 + t * S_NS // 10 for t in k],
                host_monotonic_ns=[t * S_NS // 10 for t in k], power_w=power, voltage_v=[None] * len(k),
                current_a=[None] * len(k), power_factor=[None] * len(k), frequency_hz=[None] * len(k),
                energy_counter_j=[None] * len(k))
            n_right = min(10, int(2 + 0.8 * bits + (r + ci) % 2))
            add("benchmark_answer", **key, benchmark="mmlu", question_set_sha256=sha("mmlu-set"),
                question_id=[f"q{i}" for i in range(10)], subject=None, shots=5,
                prompt_sha256=[sha(f"p{i}") for i in range(10)], predicted=[1 if i < n_right else 2 for i in range(10)],
                gold=1, correct=[i < n_right for i in range(10)], choice_scores=[None] * 10, tokens_evaluated=200)
            add("perplexity", **key, text_sha256=sha("text"), context=256, chunks=4, tokens=1024,
                ppl=30.0 - bits + 0.01 * r, ppl_stderr=0.3)
            add("throughput", **key, test=["pp", "tg"], n_prompt=[256, 0], n_gen=[0, 64], repetitions=1, n_threads=4,
                tokens_per_s=[120.0 - 5 * bits, 40.0 - 3 * bits + 0.1 * r], tokens_per_s_stddev=0.5, rpc_nodes=0)
    for event_type, cols in ev.items():
        lake.record(event_type, cols, origin=origin)
    return lake


views_ready = pytest.mark.skipif(
    not all((Path(__file__).parent.parent / "analysis" / f).is_file() for f in ("runs.sql", "frontier.sql")),
    reason="analysis/runs.sql and analysis/frontier.sql not written yet")


@views_ready
def test_end_to_end_report_from_a_real_lake(lake, tmp_path):
    from mqepi.results import sql

    fill_e2e_lake(lake, repeats=2)
    fill_e2e_lake(lake, origin="community/alice", source="epi-meter", configs=E2E_CONFIGS[:4], repeats=2)
    con = sql.connect(lake)
    con.execute("SET VARIABLE mqepi_bootstrap = 200")
    data = collect(con, bandwidth_gbs=10.0)
    assert set(data.groups()) == {("lab", "tiny", "simulated"), ("community/alice", "tiny", "epi-meter")}
    lab = data.config_summary.filter(pl.col("origin") == "lab")
    assert lab.height == len(E2E_CONFIGS) and lab["n_repeats"].to_list() == [2] * len(E2E_CONFIGS)
    assert lab["j_per_token"].null_count() == 0 and lab["decode_j_per_token"].null_count() == 0
    assert data.settings["bootstrap"] == 200
    from mqepi.schemas import EVENT_TYPES

    assert data.snapshot.n_files == sum(len(lake.files(t)) for t in EVENT_TYPES) > len(E2E_CONFIGS)
    # RQ3 reads the group bits the inventory events hold
    bits = data.layer_bits().filter((pl.col("origin") == "lab") & (pl.col("config_id") == "mix_high_early")).row(0, named=True)
    assert bits["early_bpw"] == pytest.approx(BITS["Q6_K"]) and bits["late_bpw"] == pytest.approx(BITS["Q3_K_S"])
    assert bits["bytes_per_token"] == sum(int(BITS[t] * EL / 8) for t in ("Q6_K", "Q4_K_M", "Q4_K_M", "Q3_K_S")) + 26_250
    rq3 = {r.origin: r for r in rq3_sensitivity(data)}
    assert rq3["lab"].fits["j_per_token"].n == len(E2E_CONFIGS)
    assert not rq3["community/alice"].fits["j_per_token"].supported  # 4 configurations for 4 parameters
    rq5 = {r.origin: r for r in rq5_attribution(data)}
    row = rq5["lab"].table.filter(pl.col("config_id") == "uniform_q4km").row(0, named=True)
    assert row["roofline_fraction"] == pytest.approx(row["bytes_per_token"] * row["decode_tokens_per_s"] / 10e9)
    files = write_report(data, tmp_path / "report")
    md = files.markdown.read_text()
    assert "SIMULATED POWER (NOT MEASURED)" in md and "measured power (epi-meter)" in md
    assert "Community results (origin community/alice)" in md and "b4242" in md
    assert data.snapshot.sha256 in md
    assert not re.search(r"https?://", files.html.read_text())
    for text in (md, files.html.read_text()):  # no path of this machine: the lake by name, files by hash
        assert str(tmp_path) not in text and lake.root not in text and "(a local folder)" in text


@views_ready
def test_report_command_writes_files_and_prints_the_summary(lake, tmp_path):
    from typer.testing import CliRunner

    from mqepi.cli import app as mqepi_app

    fill_e2e_lake(lake, configs=E2E_CONFIGS[:3], repeats=2)
    runner = CliRunner()

    def app_args(args):  # the real command line, with the global --lake option
        return ["--lake", lake.uri, *args]

    app, env = mqepi_app, {}
    res = runner.invoke(app, app_args(["report", "--summary", "--origin", "lab"]), env=env)
    assert res.exit_code == 0, res.output
    assert "RQ1 (" in res.output and "RQ5 (" in res.output and SIMULATED in res.output
    assert "bandwidth unknown" in res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(app, app_args(["report", "--out", str(tmp_path / "r"), "--bandwidth-gbs", "8.5"]), env=env)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "report.html").is_file()
    assert "report.html" in res.output and "SIMULATED POWER" in res.output
    assert "At 8.5 GB/s" in (tmp_path / "r" / "report.md").read_text()
    res = runner.invoke(app, app_args(["report", "--origin", "labs"]), env=env)
    assert res.exit_code == 1 and "not one of lab, community, all" in res.output


def test_rq2_states_a_cost_per_accuracy_point_only_when_the_ends_differ():
    data = synthetic()
    narrow = data.pareto_frontier.with_columns(accuracy_ci_low=pl.col("accuracy") - 1e-6,
                                               accuracy_ci_high=pl.col("accuracy") + 1e-6)
    data.pareto_frontier = narrow
    (r2,) = rq2_frontier(data)
    assert "per accuracy point" in r2.answer.answer and "intervals of its two ends overlap" not in r2.answer.answer
    data.pareto_frontier = narrow.with_columns(accuracy_ci_low=pl.lit(0.0), accuracy_ci_high=pl.lit(1.0))
    (r2,) = rq2_frontier(data)
    assert f"The accuracy intervals of its two ends overlap: {CANNOT}" in r2.answer.answer
    assert "J/token rises" not in r2.answer.answer


def two_hardware() -> ReportData:
    """The same configurations measured on two hardware profiles (the second 20 % costlier)."""
    parts, runs = [], []
    for hw, node, noise in (("hw-aaaaaaaaaaaa", "Raspberry Pi 5", 0.0), ("hw-bbbbbbbbbbbb", "Orange Pi 5", 0.001)):
        one = synthetic(noise=noise)
        parts.append({name: getattr(one, name).with_columns(hardware_id=pl.lit(hw))
                      for name in ("config_summary", "pareto_frontier", "matched_pairs")})
        prov = json.dumps({"mqepi": "0.1.0", "hardware": {"node_model": node, "ram_mb": 8192, "cooling": "fan",
                                                          "hardware_id": hw}})
        runs.append({"model": "toy", "config_id": "uniform_q4km", "run_id": f"r-{hw}", "origin": "lab", "repeat": 0,
                     "power_source": "simulated", "provenance_json": prov, "hardware_id": hw})
    frames = {name: pl.concat([p[name] for p in parts], how="vertical_relaxed") for name in parts[0]}
    return ReportData.from_frames(**frames, runs=pl.DataFrame(runs), inventory=synthetic().inventory)


def test_report_has_one_section_per_hardware(tmp_path):
    data = two_hardware()
    assert [hw for hw, _ in data.hardware()] == ["hw-aaaaaaaaaaaa", "hw-bbbbbbbbbbbb"]
    sub = data.for_hardware("hw-bbbbbbbbbbbb")
    assert set(sub.config_summary["hardware_id"]) == {"hw-bbbbbbbbbbbb"} and sub.runs.height == 1
    files = write_report(data, tmp_path / "out")
    md = files.markdown.read_text()
    for hw, node in (("hw-aaaaaaaaaaaa", "Raspberry Pi 5"), ("hw-bbbbbbbbbbbb", "Orange Pi 5")):
        assert f"# Hardware {hw}" in md and f"{node}, 8192 MB RAM, cooling: fan ({hw})" in md
        assert f"Lab results (origin lab), hardware {hw}" in md
    names = {p.name for p in files.figures}
    assert len(names) == len(files.figures)  # no figure of one hardware overwrites another's
    assert any("hw-aaaaaaaaaaaa" in n for n in names) and any("hw-bbbbbbbbbbbb" in n for n in names)
    text = summary(data)
    assert "Raspberry Pi 5" in text and "Orange Pi 5" in text
    # one hardware: as before, with the id named once
    single = write_report(data.for_hardware("hw-aaaaaaaaaaaa"), tmp_path / "one").markdown.read_text()
    assert "# Hardware " not in single and single.count("(hw-aaaaaaaaaaaa)") == 1


def test_intervals_are_compact_and_numbers_right_aligned(tmp_path):
    from mqepi.results.report.document import Document
    from mqepi.results.report.labels import fmt_ci

    assert fmt_ci(0.41, 0.17, 0.69, 2) == "0.41 (0.17-0.69)"
    assert fmt_ci(-0.01, -0.02, 0.004, 2) == "-0.010 (-0.020 to 0.004)"  # a minus never reads as the dash
    # digits follow the uncertainty (half-width to 2 significant digits below 35, else 1), not a fixed count
    assert fmt_ci(20.12345, 19.52, 20.71) == "20.1 (19.5-20.7)"
    assert fmt_ci(0.016931, 0.016512, 0.017334) == "0.0169 (0.0165-0.0173)"
    assert fmt_ci(0.016931, 0.016912, 0.016954) == "0.016931 (0.016912-0.016954)"  # tighter: finer
    assert fmt_ci(12345.0, 11000.0, 13700.0) == "12,300 (11,000-13,700)"
    assert fmt_ci(-0.00001, -0.02, 0.02) == "0.000 (-0.020 to 0.020)"  # no "-0.000"
    assert fmt_ci(0.25, 0.25, 0.25, 2) == "0.25 (0.25-0.25)"  # an empty interval: significant digits
    from mqepi.results.report.labels import fmt_pm
    assert fmt_pm(27.42, 3.6) == "27 ± 4" and fmt_pm(20.87, 0.29) == "20.87 ± 0.29" and fmt_pm(19.0, None) == "19"
    assert fmt_ci(0.5, 0.2, math.inf, 2) == "0.5 (0.2 to inf)" and fmt_ci(0.5, None, 1.0) == "0.5"
    doc = Document("t")
    doc.table(["Config", "J/token (95% CI)", "n", "Note"],
              [["a", "0.41 (0.17-0.69)", "1,024", "x"], ["b", "-", "3", "7 apples"]], "caption")
    md = doc.markdown(tmp_path)
    assert "|---|---:|---:|---|" in md
    page = doc.html()
    assert '<td class="num">0.41 (0.17-0.69)</td>' in page and "<td>a</td>" in page and "<td>7 apples</td>" in page
    assert "td.num,th.num{text-align:right;white-space:nowrap" in page



def test_many_pairs_show_the_ones_that_matter_and_a_csv_beside_the_report_has_all(tmp_path):
    """With more pairs than a page holds: the table and the figure show the pairs whose EPI
    interval excludes 0 first, then the largest differences; every pair is in the CSV beside
    the report; an axis never promises intervals the data does not have."""
    one = pairs_frame().row(1, named=True)  # a pair whose EPI interval includes 0
    rows = [{**one, "config_a": f"a{k:02d}", "config_b": f"b{k:02d}", "epi_diff": 0.001 * k} for k in range(30)]
    rows[3] |= {"epi_diff": 0.002, "epi_diff_ci_low": 0.001, "epi_diff_ci_high": 0.003}  # small, but excludes 0
    data = synthetic()
    data.matched_pairs = pl.DataFrame(rows)
    (r1,) = rq1_matched_pairs(data)
    shown = plots.pairs_shown(r1.pairs)
    assert shown.height == plots.PAIRS_SHOWN
    assert shown["config_a"].to_list()[:3] == ["a03", "a29", "a28"]  # excludes 0 first, then by size
    files = write_report(data, tmp_path / "r")
    (csv,) = files.tables
    assert csv.parent == tmp_path / "r" and pl.read_csv(csv).height == 30
    md = files.markdown.read_text()
    assert f"]({csv.name})" in md and f'href="{csv.name}"' in files.html.read_text()
    assert "a03" in md and "a29" in md and "| a04 |" not in md  # a04 is the 27th by size: only in the CSV
    single = pairs_frame().filter(pl.col("matched")).with_columns(epi_diff_ci_low=None, epi_diff_ci_high=None,
                                                                  j_per_token_diff_ci_low=None,
                                                                  j_per_token_diff_ci_high=None)
    _png, svg = plots.matched_pairs_plot(single, tmp_path / "one", model="toy")
    assert "no interval: fewer than 2 paired repeats" in svg.read_text()
    assert "95% paired" not in svg.read_text()


def test_a_crowded_panel_numbers_its_points_with_a_key_and_an_outlier_gets_a_log_axis(tmp_path):
    data = synthetic()
    front = data.pareto_frontier
    assert front.height > plots.MAX_NAMED
    _png, svg = plots.pareto_plot(front, tmp_path / "crowded", model="toy")
    text = svg.read_text()
    names = sorted(front["config_id"].to_list())
    assert f"1  {names[0]}" in text and f"{len(names)}  {names[-1]}" in text  # the key, in the order of names
    assert "log scale" not in text  # J/token within 3x: linear
    worst = names[0]
    spread = front.with_columns(j_per_token=pl.when(pl.col("config_id") == worst).then(pl.col("j_per_token") * 20)
                                .otherwise(pl.col("j_per_token")))
    _png, svg = plots.pareto_plot(spread, tmp_path / "outlier", model="toy")
    assert "J/token (simulated), log scale" in svg.read_text()
    few = front.head(plots.MAX_NAMED)
    _png, svg = plots.pareto_plot(few, tmp_path / "few", model="toy")
    assert "points" not in svg.read_text() and few["config_id"][0] in svg.read_text()  # names on the points


def test_every_accuracy_names_its_benchmarks_shots_scoring_task_version_and_questions(tmp_path):
    scoring = pl.DataFrame([
        {"origin": "lab", "model": "toy", "benchmark": "mmlu", "scoring": "loglikelihood", "deviation": None, "shots": 5,
         "task_version": "1", "n_answers": 480, "min_questions": 20, "max_questions": 20},
        {"origin": "lab", "model": "toy", "benchmark": "arc_challenge", "scoring": "loglikelihood", "deviation": None,
         "shots": 25, "task_version": None, "n_answers": 240, "min_questions": 8, "max_questions": 10},
    ])
    files = write_report(synthetic(scoring=scoring), tmp_path / "r")
    md = files.markdown.read_text()
    basis = ("Accuracy is the unweighted mean of: arc_challenge, 25-shot, scored as lm-eval's acc (the choice of highest "
             "summed log-likelihood), task version not recorded, 8-10 questions per run; mmlu, 5-shot, scored as "
             "lm-eval's acc (the choice of highest summed log-likelihood), task v1, 20 questions per run.")
    assert md.count(basis) >= 3  # the group's text, the results table and the Pareto table
    pareto = next(f for f in files.figures if f.name.startswith("pareto") and f.suffix == ".svg")
    assert "Accuracy (mean of arc_challenge 25-shot, 8-10 q, mmlu 5-shot, 20 q; acc)" in pareto.read_text()


def test_a_frontier_of_one_configuration_is_marked_not_promised_as_a_line(tmp_path):
    front = synthetic().pareto_frontier
    best = front.sort("j_per_token").row(0, named=True)["config_id"]
    one = front.with_columns(on_frontier=pl.col("config_id") == best)
    text = plots.pareto_plot(one, tmp_path / "one", model="toy")[1].read_text()
    assert "Pareto frontier (a single configuration)" in text
    many = plots.pareto_plot(front, tmp_path / "many", model="toy")[1].read_text()
    assert front["on_frontier"].sum() > 1 and "a single configuration" not in many and "Pareto frontier" in many
