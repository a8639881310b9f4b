"""Answer flips (analysis/flips.sql, analysis/twin_flips.py): a hand-built lake with known
answers; flips, Wilson bounds and choice KL computed here by hand from their definitions; the
SQL and the Polars twin equal them (and each other); version 1 rows (predicted NULL where
wrong, no choice_scores) do not break the view; config_summary and matched_pairs show the flip
share; J/question and acc_norm in run_metrics / run_accuracy / config_summary."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from factories import answer_row, record_measured_run, rows_for, sha
from polars.testing import assert_frame_equal

from mqepi.analysis import twin_flips, twin_frontier, twin_runs
from mqepi.analysis.contract import VIEWS
from mqepi.lake.store import Lake
from mqepi.results import sql

Z = 1.96
DUCKDB = {pl.Utf8: "VARCHAR", pl.Int64: "BIGINT", pl.Float64: "DOUBLE"}

# (question, gold, base's answer, q4's answer): mmlu and arc_challenge of model "m"
MMLU = [("q0", 1, 1, 1),  # both right
        ("q1", 1, 1, 2),  # flip, right -> wrong
        ("q2", 0, 3, 0),  # flip, wrong -> right
        ("q3", 2, 3, 2),  # flip, wrong -> right
        ("q4", 2, 2, 2),  # both right
        ("q5", 0, 0, 3),  # flip, right -> wrong
        ("q6", 0, 1, 2)]  # flip, wrong -> wrong: a flip without a change of correctness
ARC = [("a0", 0, 0, 0), ("a1", 1, 1, 1), ("a2", 2, 3, 3)]  # no flip


def base_scores(p: int) -> list[float]:
    return [-1.0 if j == p else -2.0 - 0.25 * j for j in range(4)]


def q4_scores(p: int) -> list[float]:
    return [-1.2 if j == p else -1.8 - 0.1 * j for j in range(4)]


def kl_by_hand(p_scores: list[float], q_scores: list[float]) -> float:
    """KL(P || Q), P and Q the softmax of the scores, from the definition."""
    p = [math.exp(s) / sum(math.exp(t) for t in p_scores) for s in p_scores]
    q = [math.exp(s) / sum(math.exp(t) for t in q_scores) for s in q_scores]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def wilson_by_hand(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval from its definition: the p with |p_hat - p| = z sqrt(p (1 - p) / n)."""
    p_hat = k / n
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def quant_config(lake: Lake, model: str, config_id: str, quant: str) -> None:
    groups = [{"layers": [0], "name": "early", "quant": quant}, {"layers": [1], "name": "late", "quant": quant}]
    map_json = json.dumps({"layer_groups": groups}, separators=(",", ":"))
    lake.record("quant_config", [{"model": model, "config_id": config_id, "map_sha256": sha(map_json),
                                  "map_json": map_json, "n_layers": 2, "kind": "uniform"}])


def perplexity(lake: Lake, model: str, config_id: str, run_id: str) -> None:
    lake.record("perplexity", [{"model": model, "config_id": config_id, "run_id": run_id, "text_sha256": sha("wiki"),
                                "context": 256, "chunks": 4, "tokens": 1024, "ppl": 10.0, "ppl_stderr": 0.1,
                                "chunk_nll": [2.30, 2.31, 2.29, 2.30]}])


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("flips") / "lake")
    lake.init()
    for model in ("m", "m2"):
        quant_config(lake, model, "base_f16", "F16")
        quant_config(lake, model, "q4", "Q4_K_M")
    quant_config(lake, "m3", "q4", "Q4_K_M")
    quant_config(lake, "m3", "q8", "Q8_0")

    # model m: engine-scored (version 2) answers
    base = [answer_row("mmlu", q, b, g, scores=base_scores(b), norm=0 if q == "q6" else None) for q, g, b, _ in MMLU]
    base += [answer_row("mmlu", "q7", 1, 1, scores=base_scores(1))]  # q4 answers q7 with version 1: not compared
    base += [answer_row("arc_challenge", q, b, g, scores=base_scores(b)) for q, g, b, _ in ARC]
    base += [answer_row("arc_challenge", "a3", 0, 0, scores=base_scores(0))]  # q4 never answers a3
    q4 = [answer_row("mmlu", q, c, g, scores=q4_scores(c)) for q, g, _, c in MMLU]
    q4 += [answer_row("mmlu", "q7", None, 1)]
    q4 += [answer_row("arc_challenge", q, c, g, scores=q4_scores(c)) for q, g, _, c in ARC]
    q4 += [answer_row("arc_challenge", "a4", 0, 1, scores=q4_scores(0))]
    # the base's second repeat: q1 answered differently (ignored: repeat 0 answered it) and a4,
    # which repeat 0 did not answer (taken from repeat 1: right there, so right -> wrong)
    base_r1 = [answer_row("mmlu", "q1", 2, 1, scores=base_scores(2)),
               answer_row("arc_challenge", "a4", 1, 1, scores=base_scores(1))]
    runs = {"base": record_measured_run(lake, "m", "base_f16", 0, base, slot=0),
            "base_r1": record_measured_run(lake, "m", "base_f16", 1, base_r1, slot=1),
            "q4": record_measured_run(lake, "m", "q4", 0, q4, slot=2, power_w=6.0)}
    perplexity(lake, "m", "base_f16", runs["base"])
    perplexity(lake, "m", "base_f16", runs["base_r1"])
    perplexity(lake, "m", "q4", runs["q4"])

    # model m2: version 1 answers only (predicted NULL where wrong, no choice_scores)
    v1 = {"base_f16": [("q0", 1, 1), ("q1", 1, None), ("q2", 0, 0), ("q3", 2, 2), ("q4", 3, None)],
          "q4": [("q0", 1, None), ("q1", 1, None), ("q2", 0, 0), ("q3", 2, 2), ("q4", 3, 3)]}
    for slot, (config, answers) in enumerate(v1.items(), start=3):
        rows = [answer_row("mmlu", q, p, g) for q, g, p in answers] + [answer_row("arc_challenge", "a0", 0, 0)]
        record_measured_run(lake, "m2", config, 0, rows, slot=slot, run_id=f"m2-{config}")

    # model m3: no base; q4 against q8 only on request
    for slot, (config, answers) in enumerate({"q8": [1, 2, 3], "q4": [1, 0, 3]}.items(), start=5):
        rows = [answer_row("mmlu", f"q{i}", p, 1, scores=q4_scores(p)) for i, p in enumerate(answers)]
        rows += [answer_row("arc_challenge", "a0", 0, 0, scores=q4_scores(0))]
        record_measured_run(lake, "m3", config, 0, rows, slot=slot, run_id=f"m3-{config}")
    # m3's quantizations: without a base, its most precise configuration (q8) is the reference
    for i, (config, bpw) in enumerate((("q4", 4.85), ("q8", 8.5))):  # different files and effective maps
        lake.record("quantization", {**rows_for("quantization", 1, model="m3", config_id=config, start=i),
                                     "bits_per_weight": [bpw]})
    return lake


@pytest.fixture(scope="module")
def con(lake):
    con = sql.connect(lake)
    con.execute("SET VARIABLE mqepi_bootstrap = 50")
    return con


@pytest.fixture(scope="module")
def twin_inputs(lake):
    metrics = twin_runs.run_metrics(lake)
    identity = twin_runs.config_identity(lake, metrics)
    return (metrics, identity, twin_runs.boot_items(metrics, identity), lake.read("benchmark_answer"),
            lake.read("quant_config"))


def frame(con, query: str) -> pl.DataFrame:
    return con.sql(query).pl()


def expected_m() -> dict[str, dict]:
    """model m, q4 against base_f16, by hand from MMLU / ARC (+ a4 from the base's repeat 1)."""
    base_of = {q: (g, b, base_scores(b)) for q, g, b, _ in MMLU + ARC}
    q4_of = {q: (c, q4_scores(c)) for q, _, _, c in MMLU + ARC}
    base_of["a4"], q4_of["a4"] = (1, 1, base_scores(1)), (0, q4_scores(0))
    out = {}
    for bench, names in (("mmlu", [q for q, *_ in MMLU]), ("arc_challenge", [q for q, *_ in ARC] + ["a4"])):
        rows = [(base_of[q], q4_of[q]) for q in names]
        out[bench] = rows
    out["all"] = out["mmlu"] + out["arc_challenge"]
    expected = {}
    for bench, rows in out.items():
        n = len(rows)
        flipped = sum(b[1] != c[0] for b, c in rows)
        expected[bench] = {"n_questions": n, "n_flipped": flipped,
                           "n_right_to_wrong": sum(b[1] == b[0] and c[0] != b[0] for b, c in rows),
                           "n_wrong_to_right": sum(b[1] != b[0] and c[0] == b[0] for b, c in rows),
                           "flip_share": flipped / n, "wilson": wilson_by_hand(flipped, n),
                           "kl": sum(kl_by_hand(b[2], c[1]) for b, c in rows) / n, "n_kl": n}
    return expected


def test_flips_against_the_base_equal_the_hand_computation(con):
    flips = frame(con, "SELECT * FROM answer_flips")
    # m: q4 against its base; m2: version 1 against version 1; m3 has no base: against its most
    # precise quantized configuration (q8, 8.5 bits/weight), as answer_flips_vs('q8') gives
    assert sorted(set(flips.select("model", "config_id", "reference_config_id").rows())) == [
        ("m", "q4", "base_f16"), ("m2", "q4", "base_f16"), ("m3", "q4", "q8")]
    assert_frame_equal(flips.filter(pl.col("model") == "m3"), frame(con, "SELECT * FROM answer_flips_vs('q8')"))
    m = {r["benchmark"]: r for r in flips.filter(pl.col("model") == "m").iter_rows(named=True)}
    assert list(m) == ["arc_challenge", "mmlu", "all"]
    expected = expected_m()
    assert (expected["mmlu"]["n_questions"], expected["mmlu"]["n_flipped"]) == (7, 5)
    assert (expected["all"]["n_questions"], expected["all"]["n_flipped"], expected["all"]["n_right_to_wrong"],
            expected["all"]["n_wrong_to_right"]) == (11, 6, 3, 2)
    for bench, e in expected.items():
        r = m[bench]
        assert (r["n_questions"], r["n_flipped"], r["n_right_to_wrong"], r["n_wrong_to_right"], r["n_kl_questions"]) \
            == (e["n_questions"], e["n_flipped"], e["n_right_to_wrong"], e["n_wrong_to_right"], e["n_kl"]), bench
        assert r["flip_share"] == pytest.approx(e["flip_share"], rel=1e-12)
        assert (r["flip_share_low"], r["flip_share_high"]) == pytest.approx(e["wilson"], rel=1e-12, abs=1e-15)
        assert r["choice_kl_nats"] == pytest.approx(e["kl"], rel=1e-9)
    # mmlu: accuracy 4/7 on both sides, yet 5 of 7 answers differ
    acc = frame(con, "SELECT config_id, n_correct FROM run_accuracy WHERE model = 'm' AND benchmark = 'mmlu' "
                     "AND run_id IN ('base_f16-lab-r0', 'q4-lab-r0') ORDER BY config_id")
    assert acc["n_correct"].to_list() == [5, 4]  # q7 (right for the base) is not compared

    # version 1: only q2 and q3 (mmlu) and a0 have both predictions: 3 compared, none flipped, no KL
    m2 = flips.filter((pl.col("model") == "m2") & (pl.col("benchmark") == "all")).row(0, named=True)
    assert (m2["n_questions"], m2["n_flipped"], m2["n_kl_questions"], m2["choice_kl_nats"]) == (3, 0, 0, None)
    assert m2["flip_share"] == 0.0
    assert (m2["flip_share_low"], m2["flip_share_high"]) == pytest.approx(wilson_by_hand(0, 3), abs=1e-15)


def test_flips_against_a_chosen_reference(con):
    vs = frame(con, "SELECT * FROM answer_flips_vs('q8')")
    assert vs.select("model", "config_id", "reference_config_id", "benchmark").rows() == [
        ("m3", "q4", "q8", "arc_challenge"), ("m3", "q4", "q8", "mmlu"), ("m3", "q4", "q8", "all")]
    mmlu = vs.filter(pl.col("benchmark") == "mmlu").row(0, named=True)
    assert (mmlu["n_questions"], mmlu["n_flipped"], mmlu["n_right_to_wrong"], mmlu["n_wrong_to_right"]) == (3, 1, 0, 0)
    assert mmlu["choice_kl_nats"] == pytest.approx(kl_by_hand(q4_scores(2), q4_scores(0)) / 3, rel=1e-9)
    # the base as a chosen reference gives the view's rows, direction included
    base = frame(con, "SELECT * FROM answer_flips_vs('base_f16')")
    assert_frame_equal(base, frame(con, "SELECT * FROM answer_flips WHERE model <> 'm3'"))  # m3: against q8
    back = frame(con, "SELECT * FROM answer_flips_vs('q4') WHERE model = 'm' AND benchmark = 'all'").row(0, named=True)
    e = expected_m()["all"]
    assert (back["config_id"], back["n_flipped"], back["n_right_to_wrong"], back["n_wrong_to_right"]) == \
        ("base_f16", e["n_flipped"], e["n_wrong_to_right"], e["n_right_to_wrong"])
    assert frame(con, "SELECT * FROM answer_flips_vs('nope')").is_empty()


def test_sql_equals_the_polars_twin(con, twin_inputs):
    _metrics, _identity, items, answers, configs = twin_inputs
    for query, reference in (("SELECT * FROM answer_flips", None), ("FROM answer_flips_vs('q8')", "q8"),
                             ("FROM answer_flips_vs('q4')", "q4"), ("FROM answer_flips_vs('base_f16')", "base_f16")):
        got = frame(con, query)
        twin = twin_flips.answer_flips(items, answers, configs, reference=reference,
                                       quantization=twin_inputs_quantization(con))
        assert_frame_equal(got, twin, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)


def twin_inputs_quantization(con) -> pl.DataFrame:
    return frame(con, "SELECT model, config_id, bits_per_weight FROM quantization")


def test_the_contract_states_the_view_and_the_macro(con):
    columns = [(c, DUCKDB[t]) for c, t in VIEWS["answer_flips"].items()]
    assert [(c[0], c[1]) for c in con.execute("DESCRIBE SELECT * FROM answer_flips").fetchall()] == columns
    assert [(c[0], c[1]) for c in con.execute("DESCRIBE FROM answer_flips_vs('q4')").fetchall()] == columns


def test_config_summary_and_matched_pairs_show_the_flip_share(lake, con, twin_inputs):
    metrics, identity, _items, answers, _configs = twin_inputs
    cs = frame(con, "SELECT * FROM config_summary")
    by = {(r["model"], r["config_id"]): r for r in cs.iter_rows(named=True)}
    e = expected_m()["all"]
    assert by[("m", "q4")]["flip_reference_id"] == "base_f16"
    assert by[("m", "q4")]["flip_share"] == pytest.approx(6 / 11, rel=1e-12)
    assert (by[("m", "q4")]["flip_share_low"], by[("m", "q4")]["flip_share_high"]) == pytest.approx(e["wilson"])
    assert by[("m", "base_f16")]["flip_reference_id"] == "base_f16" and by[("m", "base_f16")]["flip_share"] is None
    assert by[("m3", "q4")]["flip_reference_id"] == "q8" and by[("m3", "q4")]["flip_share"] == pytest.approx(1 / 4)

    twin_cs = twin_runs.config_summary(lake, n_boot=50, metrics=metrics, identity=identity)
    assert_frame_equal(cs, twin_cs, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)

    pairs = frame(con, "SELECT * FROM matched_pairs")
    pair = pairs.filter(pl.col("model") == "m").row(0, named=True)
    assert (pair["config_a"], pair["config_b"], pair["n_flip_questions"]) == ("base_f16", "q4", 11)
    assert pair["flip_share"] == pytest.approx(6 / 11, rel=1e-12)
    assert (pair["flip_share_low"], pair["flip_share_high"]) == pytest.approx(e["wilson"])
    twin_pairs = twin_frontier.matched_pairs(frame(con, "SELECT * FROM run_metrics"), cs, answers, identity=identity,
                                             perplexity=frame(con, "SELECT * FROM perplexity"), n_boot=50)
    assert_frame_equal(pairs, twin_pairs, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)


def test_j_per_question_and_acc_norm(con):
    rm = frame(con, "SELECT * FROM run_metrics WHERE run_id = 'base_f16-lab-r0'").row(0, named=True)
    assert rm["benchmark_questions"] == 12  # 8 mmlu + 4 arc_challenge answers in the two windows
    assert rm["j_per_question"] == pytest.approx(rm["benchmark_energy_j"] / 12, rel=1e-12)
    acc = {r["benchmark"]: r for r in frame(con, "SELECT * FROM run_accuracy WHERE run_id = 'base_f16-lab-r0'")
           .iter_rows(named=True)}
    # acc_norm differs from acc on q6 only (its per-character choice is the gold one)
    assert (acc["mmlu"]["n_correct"], acc["mmlu"]["n_correct_norm"]) == (5, 6)
    assert acc["mmlu"]["accuracy_norm"] == pytest.approx(6 / 8)
    assert acc["composite"]["accuracy_norm"] == pytest.approx((6 / 8 + 3 / 4) / 2)
    assert acc["composite"]["accuracy"] == pytest.approx((5 / 8 + 3 / 4) / 2)  # acc unchanged
    # a version 1 row among the answers: no acc_norm for that benchmark, nor the composite
    q4 = {r["benchmark"]: r for r in frame(con, "SELECT * FROM run_accuracy WHERE run_id = 'q4-lab-r0'")
          .iter_rows(named=True)}
    assert q4["mmlu"]["accuracy_norm"] is None and q4["arc_challenge"]["accuracy_norm"] is not None
    assert q4["composite"]["accuracy_norm"] is None
    cs = frame(con, "SELECT * FROM config_summary WHERE model = 'm' AND config_id = 'base_f16'").row(0, named=True)
    # the median over its two runs: repeat 1 answered q1 wrong (acc_norm 0) and a4 right (1)
    assert cs["accuracy_norm"] == pytest.approx((0.75 + 0.5) / 2)
    assert cs["j_per_question_ci_low"] <= cs["j_per_question"] <= cs["j_per_question_ci_high"]
