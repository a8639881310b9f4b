"""The planner's power analysis (mqepi.sweep.power): closed forms and a simulation as
references, the variance measured from a hand-built lake, and `mqepi plan`'s output."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from factories import T0, sha
from scipy import optimize, stats
from typer.testing import CliRunner

from mqepi.cli import app
from mqepi.lake.store import Lake
from mqepi.results import sql
from mqepi.sweep import power as pw

S = 1_000_000_000
ZA, ZB = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
K = ZA + ZB


# ------------------------------------------------------------------ accuracy: closed forms


def connor_mdd_by_hand(n: int, psi: float) -> float:
    """Connor's n(d) = (za sqrt(psi) + zb sqrt(psi - d^2))^2 / d^2 = n solved as a quadratic in
    s = sqrt(psi - d^2): (n + zb^2) s^2 + 2 a zb s + a^2 - n psi = 0, a = za sqrt(psi); where
    the root has d > psi, psi = d instead: with u = sqrt(1 - d), (n + zb^2) u^2 + 2 za zb u + za^2 - n = 0."""
    a = ZA * math.sqrt(psi)
    s = (-a * ZB + math.sqrt(a * a * ZB * ZB - (n + ZB * ZB) * (a * a - n * psi))) / (n + ZB * ZB)
    d = math.sqrt(psi - s * s)
    if 0 < d <= psi:
        return d
    u = (-ZA * ZB + math.sqrt(ZA * ZA * ZB * ZB - (n + ZB * ZB) * (ZA * ZA - n))) / (n + ZB * ZB)
    return 1 - u * u


@pytest.mark.parametrize("n, psi", [(200, 0.3), (1000, 0.05), (50, 0.5), (10, 0.3), (8, 0.0)])
def test_paired_mdd_is_connors_formula_solved_in_closed_form(n, psi):
    var = pw.AccuracyVariance("mmlu", 0.6, discordance=psi, n_config_pairs=1, n_paired_answers=n)
    assert pw.accuracy_mdd(n, var) == pytest.approx(connor_mdd_by_hand(n, psi), rel=1e-9)


def test_paired_questions_needed_round_up_connors_n():
    var = pw.AccuracyVariance("mmlu", 0.6, discordance=0.3, n_config_pairs=1, n_paired_answers=100)
    d = 0.1
    n = (ZA * math.sqrt(0.3) + ZB * math.sqrt(0.3 - d * d)) ** 2 / (d * d)
    assert pw.questions_needed(d, var) == math.ceil(n)
    # the MDD of that many questions is at most d, of one question fewer above it
    assert pw.accuracy_mdd(math.ceil(n), var) <= d < pw.accuracy_mdd(math.ceil(n) - 1, var)


def test_independent_mdd_and_questions_are_the_normal_closed_form():
    var = pw.AccuracyVariance("arc_challenge", 0.6)
    assert not var.paired
    assert pw.accuracy_mdd(100, var) == pytest.approx(K * math.sqrt(2 * 0.6 * 0.4 / 100), rel=1e-12)
    assert pw.questions_needed(0.1, var) == math.ceil(2 * K * K * 0.6 * 0.4 / 0.01)
    assert pw.accuracy_mdd(3, pw.AccuracyVariance("mmlu", 0.5, assumed=True)) is None  # above 1: nothing detectable
    assert pw.accuracy_mdd(3, pw.AccuracyVariance("mmlu", 0.5, discordance=0.3)) is None  # below za^2 questions


def test_paired_mdd_has_the_stated_power_in_a_simulation():
    """McNemar's z test, (b - c) / sqrt(b + c) beyond z(0.975), on simulated paired answers
    with discordance psi and difference d = the MDD: rejected in about 80% of trials."""
    n, psi = 400, 0.3
    d = pw.accuracy_mdd(n, pw.AccuracyVariance("mmlu", 0.6, discordance=psi))
    rng = np.random.default_rng(20250101)
    counts = rng.multinomial(n, [(psi + d) / 2, (psi - d) / 2, 1 - psi], size=20_000)
    b, c = counts[:, 0], counts[:, 1]
    z = (b - c) / np.sqrt(np.maximum(b + c, 1))
    assert np.mean(np.abs(z) > ZA) == pytest.approx(0.8, abs=0.015)


# ------------------------------------------------------------------ J/token and EPI


def t_power_by_hand(effect: float, r: int) -> float:
    """Power of the two-sided two-sample t test, r per group, from scipy's noncentral t."""
    df = 2 * r - 2
    crit = stats.t.ppf(0.975, df)
    nc = effect * math.sqrt(r / 2)
    lower = stats.nct.cdf(-crit, df, nc)  # the wrong tail: negligible here, NaN in scipy at some nc
    return stats.nct.sf(crit, df, nc) + (0.0 if math.isnan(lower) else lower)


@pytest.mark.parametrize("r", [2, 3, 5, 12])
def test_j_per_token_mdd_has_power_08_by_the_noncentral_t(r):
    cv = 0.023
    mdd = pw.j_per_token_mdd_rel(r, cv)
    effect = optimize.brentq(lambda e: t_power_by_hand(e, r) - 0.8, 0.01, 15)
    assert mdd == pytest.approx(effect * cv, rel=1e-4)


def test_repeats_needed_is_the_first_count_with_power_08():
    cv, rel = 0.023, 0.03
    r = pw.repeats_needed(rel, cv)
    assert t_power_by_hand(rel / cv, r) >= 0.8 - 1e-9 > t_power_by_hand(rel / cv, r - 1)
    assert pw.repeats_needed(1.0, cv) == 2  # a huge difference: the minimum of a t test
    assert pw.j_per_token_mdd_rel(1, cv) is None and pw.j_per_token_mdd_rel(3, None) is None


def test_epi_mdd_is_the_root_sum_of_squares_of_its_parts():
    mv = pw.MeasuredVariance("m", "lab", {"mmlu": pw.AccuracyVariance("mmlu", 0.6, discordance=0.3),
                                          "hellaswag": pw.AccuracyVariance("hellaswag", 0.4)},
                             pw.EnergyVariance(0.1, 3, 9))
    questions = {"mmlu": 100, "hellaswag": 50}
    p = (0.6 + 0.4) / 2
    acc = K * math.sqrt((0.3 / 100 + 2 * 0.4 * 0.6 / 50) / 4) / p
    assert pw.epi_accuracy_part(questions, mv) == pytest.approx(acc, rel=1e-12)
    assert pw.epi_mdd_rel(3, questions, mv) == pytest.approx(math.hypot(pw.j_per_token_mdd_rel(3, 0.1), acc), rel=1e-12)
    r = pw.epi_repeats_needed(0.4, questions, mv)
    assert r > 2 and pw.epi_mdd_rel(r, questions, mv) <= 0.4 < pw.epi_mdd_rel(r - 1, questions, mv)
    assert pw.epi_repeats_needed(acc * 0.99, questions, mv) is None  # the accuracy part alone is too big
    lines = pw.detect_epi_sentences(acc * 0.99, questions, mv)
    assert "cannot be detected with these questions however many repeats" in lines[1]


# ------------------------------------------------------------------ a hand-built lake

MODEL = "smollm2-135m"
# per configuration: power during the mmlu window per repeat (W), answers per repeat (8 questions)
POWER_W = {"uniform_q8": [6.0, 6.3, 5.7], "uniform_q4km": [5.0, 5.2, 4.9], "uniform_q2k": [4.5, 4.5, 4.6]}
RIGHT = {"uniform_q8": [1, 1, 1, 0, 1, 1, 0, 1], "uniform_q4km": [1, 0, 1, 0, 1, 1, 1, 1],
         "uniform_q2k": [0, 0, 1, 0, 1, 0, 1, 1]}
TOKENS = 250  # per question
# by hand: q8 vs q4km differ at questions 1 and 6 (2); q2k answers question 0 right in repeat 2 only
# (c = 1/3), so q8 vs q2k: 2/3 + 1 (q1) + 1 (q5) + 1 (q6); q4km vs q2k: 2/3 + 1 (q5)
PSI = (2 + (2 / 3 + 3) + (2 / 3 + 1)) / (3 * 8)
P_MEAN = (6 / 8 + 6 / 8 + (4 + 1 / 3) / 8) / 3


def knots(p_w: float) -> list[tuple[float, float]]:
    # idle 4 W 0-10 s, mmlu window 11-17 s at p_w, perplexity 18-22 s at 5 W
    return [(0, 4.0), (10, 4.0), (11, p_w), (17, p_w), (18, 5.0), (22, 5.0), (23, 4.0)]


def record_run(lake: Lake, config_id: str, repeat: int, p_w: float, right: list[int], *, status="finished",
               origin="lab", t0: int = T0) -> None:
    run_id = f"{'s1' if origin == 'lab' else 'alice'}-{MODEL}-{config_id}-r{repeat}-a1"
    key = {"model": MODEL, "config_id": config_id, "run_id": run_id}
    prov = json.dumps({"sweep_id": "s1", "sweep": {"settle_s": 0.0, "idle_s": 10.0}})
    for k, st in enumerate(("started", status)):
        lake.record("run", {**{c: [v] for c, v in key.items()}, "status": [st], "repeat": [repeat], "file_sha256": [None],
                            "power_source": ["simulated"], "host": ["localhost"], "provenance_json": [prov],
                            "message": ["boom" if st == "failed" else None]},
                    origin=origin, recorded_at_ns=t0 + k * 24 * S)
    windows = [("idle_baseline", 0, 10, None), ("mmlu", 11, 17, None), ("perplexity", 18, 22, 256)]
    n = len(windows)
    lake.record("phase", {**{c: [v] * n for c, v in key.items()}, "phase": [w[0] for w in windows], "node": [None] * n,
                          "start_ns": [t0 + w[1] * S for w in windows], "end_ns": [t0 + w[2] * S for w in windows],
                          "tokens": [w[3] for w in windows]}, origin=origin)
    k = np.arange(0, 231)  # 10 Hz over 23 s
    kn = knots(p_w)
    p = np.interp(k / 10, [a for a, _ in kn], [b for _, b in kn])
    m = k.size
    lake.record("power_sample", {**{c: [v] * m for c, v in key.items()}, "power_source": ["simulated"] * m,
                                 "meter_id": ["m0"] * m, "channel": [0] * m, "node": ["node0"] * m, "seq": list(range(m)),
                                 "meter_time_ns": [None] * m, "host_time_ns": [int(t0 + x * S // 10) for x in k],
                                 "host_monotonic_ns": [int(x * S // 10) for x in k], "power_w": [float(x) for x in p],
                                 "voltage_v": [None] * m, "current_a": [None] * m, "power_factor": [None] * m,
                                 "frequency_hz": [None] * m, "energy_counter_j": [None] * m}, origin=origin)
    q = len(right)
    lake.record("benchmark_answer", {**{c: [v] * q for c, v in key.items()}, "benchmark": ["mmlu"] * q,
                                     "question_set_sha256": [sha("mmlu")] * q, "question_id": [f"q{i}" for i in range(q)],
                                     "subject": [None] * q, "shots": [5] * q, "prompt_sha256": [sha(f"q{i}") for i in range(q)],
                                     "gold": [1] * q, "predicted": [1 if c else 2 for c in right],
                                     "correct": [bool(c) for c in right], "choice_scores": [None] * q,
                                     "tokens_evaluated": [TOKENS] * q}, origin=origin)


def build_lake(root, repeats: int) -> Lake:
    lake = Lake(root)
    lake.init()
    for j, (cid, powers) in enumerate(POWER_W.items()):
        lake.record("quantization", {"model": [MODEL], "config_id": [cid], "map_sha256": [sha(cid)],
                                     "base_sha256": [sha("base")], "base_ftype": ["Q8_0"], "llama_cpp_commit": ["b1"],
                                     "file_sha256": [sha(f"f-{cid}")], "effective_map_sha256": [sha(f"e-{cid}")],
                                     "file_size_bytes": [(3 - j) * 50_000_000], "bits_per_weight": [8.5 - 2 * j],
                                     "duration_s": [1.0], "host": ["localhost"]})
        for r in range(repeats):
            right = list(RIGHT[cid])
            if cid == "uniform_q2k" and r == 2:
                right[0] = 1
            record_run(lake, cid, r, powers[r], right, t0=T0 + (10 * j + r) * 30 * S)
    # not counted: a failed run (every answer right) and a community run of another rig
    record_run(lake, "uniform_q2k", 7, 9.0, [1] * 8, status="failed", t0=T0 + 200 * 30 * S)
    record_run(lake, "uniform_q8", 0, 20.0, [0] * 8, origin="community/alice", t0=T0 + 300 * 30 * S)
    return lake


@pytest.fixture(scope="module")
def three_repeats(tmp_path_factory):
    return build_lake(tmp_path_factory.mktemp("power") / "lake", 3)


def pooled_cv_by_hand() -> float:
    # J/token = p_w x 6 s / (8 x 250 tokens): the constant cancels in each CV
    rel2 = [np.var(v, ddof=1) / np.mean(v) ** 2 for v in POWER_W.values()]
    return math.sqrt(sum(2 * x for x in rel2) / 6)


def test_the_lake_gives_the_hand_computed_variances(three_repeats):
    mv = pw.measured_variance(three_repeats, MODEL, benchmarks=["mmlu"])
    acc = mv.accuracy["mmlu"]
    assert acc.paired and acc.discordance == pytest.approx(PSI, rel=1e-12)
    assert acc.accuracy == pytest.approx(P_MEAN, rel=1e-12)
    assert (acc.n_config_pairs, acc.n_paired_answers, acc.n_configs) == (3, 24, 3)
    # the J/token the views measured are the hand values (constant power over 6 s, 2000 tokens)
    con = sql.connect(three_repeats)
    jpt = pl.from_arrow(con.sql("SELECT config_id, \"repeat\", j_per_token FROM run_metrics "
                                "WHERE origin = 'lab' AND \"valid\"").to_arrow_table())
    assert jpt.height == 9
    for row in jpt.iter_rows(named=True):
        assert row["j_per_token"] == pytest.approx(POWER_W[row["config_id"]][row["repeat"]] * 6 / 2000, rel=1e-9)
    assert mv.energy.cv == pytest.approx(pooled_cv_by_hand(), rel=1e-9)
    assert (mv.energy.n_configs, mv.energy.n_runs, mv.energy.power_sources) == (3, 9, ("simulated",))


def test_one_repeat_leaves_the_variance_unknown_and_states_the_meter_bound(tmp_path):
    lake = build_lake(tmp_path / "lake", 1)
    mv = pw.measured_variance(lake, MODEL, benchmarks=["mmlu"])
    assert mv.energy.cv is None
    # the meter's relative uncertainty of each run's benchmark energy, from run_energy
    rows = pl.from_arrow(sql.connect(lake).sql(
        "SELECT run_id, energy_j, energy_uncertainty_j FROM run_energy WHERE origin = 'lab' "
        "AND window_kind = 'benchmark' AND run_status = 'finished'").to_arrow_table())
    assert rows.height == 3
    u = float(np.median(rows["energy_uncertainty_j"].to_numpy() / rows["energy_j"].to_numpy()))  # one window per run
    assert 0 < u < 0.05 and mv.energy.meter_rel_uncertainty == pytest.approx(u, rel=1e-12)
    line = pw.j_per_token_sentence(3, mv.energy)
    assert line.startswith("J/token: run-to-run variance unknown: no configuration has 2 valid repeats")
    assert "no repeat count is computed" in line
    assert f"above {K * math.sqrt(2 / 3) * u:.2%} at best" in line
    assert pw.epi_mdd_rel(3, {"mmlu": 8}, mv) is None
    (detect,) = pw.detect_epi_sentences(0.01, {"mmlu": 8}, mv)
    assert detect.endswith(f"would allow it with {math.ceil(2 * (K * u / 0.01) ** 2)} repeats, at best")
    assert pw.j_per_token_mdd_rel(3, mv.energy.cv) is None


def test_without_paired_answers_the_independent_assumption_is_stated(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    record_run(lake, "uniform_q8", 0, 6.0, [1, 1, 1, 0, 1, 1, 0, 1])
    var = pw.measured_variance(lake, MODEL, benchmarks=["mmlu", "hellaswag"])
    mmlu, hella = var.accuracy["mmlu"], var.accuracy["hellaswag"]
    assert not mmlu.paired and mmlu.accuracy == 0.75 and "measured accuracy 0.75" in mmlu.describe()
    assert hella.assumed and hella.accuracy == 0.5 and "worst case" in hella.describe()
    assert pw.accuracy_mdd(40, mmlu) == pytest.approx(K * math.sqrt(2 * 0.75 * 0.25 / 40), rel=1e-12)


# ------------------------------------------------------------------ mqepi plan


@pytest.mark.slow
def test_plan_prints_the_power_analysis(three_repeats):
    runner = CliRunner()
    args = ["--lake", str(three_repeats.root), "plan", "--configs", "uniform_q8,uniform_q4km", "--bench", "mmlu=8",
            "--repeats", "3", "--set", "settle_s=0", "--detect-accuracy", "0.2", "--detect-epi", "0.05"]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    mdd = connor_mdd_by_hand(8, PSI)
    assert (f"8 MMLU questions per configuration detect accuracy differences above {mdd:.2f} (alpha 0.05, power 0.8; "
            f"paired, measured discordance {PSI:.2f} over 24 paired answers of 3 configuration pairs)") in text
    cv = pooled_cv_by_hand()
    effect = optimize.brentq(lambda e: t_power_by_hand(e, 3) - 0.8, 0.01, 15)
    assert (f"3 repeats detect J/token differences above {effect * cv:.1%} (two-sample t, alpha 0.05, power 0.8; "
            f"measured CV {cv:.1%} over 9 runs of 3 configurations, simulated power)") in text
    n_needed = math.ceil((ZA * math.sqrt(PSI) + ZB * math.sqrt(PSI - 0.04)) ** 2 / 0.04)
    assert f"MMLU accuracy differences of 0.20 need {n_needed} questions per configuration" in text
    assert "J/token differences of 5.0% need" in text and "EPI differences of 5.0%" in text
    bad = runner.invoke(app, args[:-4] + ["--detect-accuracy", "1.5"])
    assert bad.exit_code == 1 and "--detect-accuracy 1.5" in bad.stderr


def test_power_lines_name_every_part_of_the_setting(three_repeats):
    mv = pw.measured_variance(three_repeats, MODEL, benchmarks=["mmlu"])
    lines = pw.plan_lines(mv, {"mmlu": 8}, 1, detect_accuracy=0.2)
    assert lines[0].startswith("8 MMLU questions per configuration detect accuracy differences above")
    assert lines[1].startswith("1 repeat per configuration cannot test J/token differences")
    assert lines[-1].startswith("MMLU accuracy differences of 0.20 need")
    assert not any(line.startswith("1 repeats") for line in lines)
    assert pl.Series(lines).str.contains("EPI").sum() == 0  # one repeat: no J/token part, no EPI number
