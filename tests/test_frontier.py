"""matched_pairs and pareto_frontier (analysis/frontier.sql) against the Polars twin
(analysis/twin_frontier.py), a brute-force frontier and hand-computed values.

Most tests run the SQL on hand-made DuckDB TABLES named run_metrics, config_summary,
config_identity, benchmark_answer, perplexity and kld, with macros.sql, resamples.sql and
frontier.sql loaded on top, so they do not depend on runs.sql; the end-to-end test runs every
SQL file over a real lake.
"""

from __future__ import annotations

import hashlib
from itertools import product

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mqepi.analysis import FLIPS_SQL, FRONTIER_SQL, MACROS_SQL, RESAMPLES_SQL, bootstrap
from mqepi.analysis import twin_frontier as twin
from mqepi.analysis.contract import VIEWS

MATCHED_PAIRS_COLUMNS = [
    "model", "origin", "power_source", "hardware_id", "simulated", "config_a", "config_b", "ppl_a", "ppl_b", "ppl_stderr_a",
    "ppl_stderr_b", "ppl_diff", "match_rule", "ppl_test", "n_chunks", "log_ppl_ratio", "log_ppl_ratio_ci_low",
    "log_ppl_ratio_ci_high", "ppl_margin", "ppl_verdict", "kld_a", "kld_b", "kld_diff", "kld_diff_ci_low",
    "kld_diff_ci_high", "kld_margin", "kld_verdict", "matched", "j_per_token_a", "j_per_token_b", "j_per_token_diff",
    "j_per_token_diff_ci_low", "j_per_token_diff_ci_high", "accuracy_a", "accuracy_b", "accuracy_diff",
    "accuracy_diff_ci_low", "accuracy_diff_ci_high", "epi_a", "epi_b", "epi_diff", "epi_diff_ci_low",
    "epi_diff_ci_high", "n_paired_repeats", "n_questions_paired", "mcnemar_b", "mcnemar_c", "mcnemar_p",
    "n_flip_questions", "flip_share", "flip_share_low", "flip_share_high", "note",
]
PARETO_FRONTIER_COLUMNS = [
    "model", "origin", "power_source", "hardware_id", "simulated", "config_id", "kind", "accuracy", "j_per_token", "epi",
    "accuracy_ci_low", "accuracy_ci_high", "j_per_token_ci_low", "j_per_token_ci_high", "on_frontier",
    "frontier_probability", "uniform_dominated", "mixed_unmatched",
]

RM_SCHEMA = {"model": pl.Utf8, "config_id": pl.Utf8, "run_id": pl.Utf8, "origin": pl.Utf8, "repeat": pl.Int32,
             "power_source": pl.Utf8, "hardware_id": pl.Utf8, "simulated": pl.Boolean, "valid": pl.Boolean,
             "accuracy": pl.Float64,
             "j_per_token": pl.Float64, "epi": pl.Float64, "benchmark_energy_j": pl.Float64,
             "benchmark_energy_uncertainty_j": pl.Float64, "benchmark_tokens": pl.Int64}
CS_SCHEMA = {"model": pl.Utf8, "config_id": pl.Utf8, "origin": pl.Utf8, "power_source": pl.Utf8, "hardware_id": pl.Utf8,
             "simulated": pl.Boolean, "kind": pl.Utf8, "n_repeats": pl.Int64,
             "j_per_token": pl.Float64, "j_per_token_ci_low": pl.Float64, "j_per_token_ci_high": pl.Float64,
             "accuracy": pl.Float64, "accuracy_ci_low": pl.Float64, "accuracy_ci_high": pl.Float64,
             "epi": pl.Float64, "ppl": pl.Float64, "ppl_stderr": pl.Float64, "kld_mean": pl.Float64}
BA_SCHEMA = {"model": pl.Utf8, "config_id": pl.Utf8, "run_id": pl.Utf8, "origin": pl.Utf8, "benchmark": pl.Utf8,
             "question_set_sha256": pl.Utf8, "question_id": pl.Utf8, "correct": pl.Boolean, "predicted": pl.Int32,
             "scoring": pl.Utf8, "choice_scores": pl.List(pl.Float64), "recorded_at_ns": pl.Int64, "event_id": pl.Utf8}
QC_SCHEMA = {"model": pl.Utf8, "config_id": pl.Utf8, "origin": pl.Utf8, "kind": pl.Utf8, "map_json": pl.Utf8,
             "recorded_at_ns": pl.Int64, "event_id": pl.Utf8}
PPL_SCHEMA = {"model": pl.Utf8, "config_id": pl.Utf8, "run_id": pl.Utf8, "event_id": pl.Utf8, "recorded_at_ns": pl.Int64,
              "text_sha256": pl.Utf8, "context": pl.Int32, "chunk_nll": pl.List(pl.Float64)}
KLD_SCHEMA = {"model": pl.Utf8, "config_id": pl.Utf8, "run_id": pl.Utf8, "event_id": pl.Utf8, "recorded_at_ns": pl.Int64,
              "base_sha256": pl.Utf8, "text_sha256": pl.Utf8, "context": pl.Int32, "chunk_kld": pl.List(pl.Float64)}
BENCHMARK_OF = {hashlib.sha256(b"mmlu").hexdigest(): "mmlu", hashlib.sha256(b"arc").hexdigest(): "arc_challenge"}


def rm_row(**row) -> dict:
    """A run_metrics row with its energy columns derived: 1000 tokens, 1 % uncertainty (hardware
    'unknown' unless given)."""
    jpt = row.get("j_per_token")
    return {"hardware_id": "unknown", **row, "benchmark_tokens": 1000, "benchmark_energy_j": None if jpt is None else jpt * 1000,
            "benchmark_energy_uncertainty_j": None if jpt is None else jpt * 10}


def ba_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{**r, "benchmark": BENCHMARK_OF.get(r["question_set_sha256"], "mmlu")} for r in rows],
                        schema=BA_SCHEMA)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- data


def summarise(run_metrics: pl.DataFrame, configs: list[dict]) -> pl.DataFrame:
    """A config_summary-shaped frame: medians over valid repeats (what runs.sql provides)."""
    rows = []
    for cfg in configs:
        key = {k: cfg[k] for k in ("model", "config_id", "origin", "power_source")} | {
            "hardware_id": cfg.get("hardware_id", "unknown")}
        runs = run_metrics.filter(pl.col("valid"), *[pl.col(k) == v for k, v in key.items()])

        def med(col, runs=runs):
            v = runs[col].drop_nulls().to_numpy()
            return float(np.median(v)) if v.size else None

        acc, jpt, epi = med("accuracy"), med("j_per_token"), med("epi")
        rows.append({**key, "simulated": cfg["power_source"] == "simulated", "kind": cfg["kind"],
                     "n_repeats": runs.height, "j_per_token": jpt,
                     "j_per_token_ci_low": None if jpt is None else jpt * 0.9,
                     "j_per_token_ci_high": None if jpt is None else jpt * 1.1,
                     "accuracy": acc, "accuracy_ci_low": None if acc is None else acc - 0.05,
                     "accuracy_ci_high": None if acc is None else acc + 0.05, "epi": epi,
                     "ppl": cfg.get("ppl") if runs.height else None,
                     "ppl_stderr": cfg.get("ppl_stderr") if runs.height else None,
                     "kld_mean": cfg.get("kld") if runs.height else None})
    return pl.DataFrame(rows, schema=CS_SCHEMA)


def synthetic(seed: int, *, models=("m1",), origins=("lab", "community/alice"), sources=("simulated",),
              n_configs=6, n_repeats=3, n_questions=16, hardware=("unknown",)):
    """Random run_metrics / config_summary / benchmark_answer frames with the awkward cases:
    invalid runs, a repeat measured twice, missing repeats, accuracy 0 (EPI NULL), a config
    without any valid run, one without perplexity, one without kind (n_configs > 6),
    accuracies on a grid (ties)."""
    rng = np.random.default_rng(seed)
    runs, answers, configs, chunks = [], [], [], []
    qsets = [sha("mmlu"), sha("arc")]
    for model, origin, source, hw in product(models, origins, sources, hardware):
        for c in range(n_configs):
            config_id = f"cfg{c:02d}"
            skill = 0.0 if c == 3 and seed % 2 else rng.uniform(0.25, 0.8)
            cost = rng.uniform(0.5, 2.0)
            cfg = {"model": model, "config_id": config_id, "origin": origin, "power_source": source, "hardware_id": hw,
                   "kind": None if c == 6 else "uniform" if c % 2 == 0 else "mixed",
                   "ppl": None if c == 5 else 10.0 + 0.4 * c + rng.normal(0, 0.2), "ppl_stderr": 0.35}
            configs.append(cfg)
            repeats = [r for r in range(n_repeats + 1) if rng.random() > 0.2] or [0]
            if rng.random() < 0.3:
                repeats.append(repeats[0])  # the same repeat number measured twice
            for k, rep in enumerate(repeats):
                run_id = f"{model}-{origin.replace('/', '-')}-{source}-{hw}-{config_id}-{rep}-{k}"
                right = rng.random(n_questions) < skill
                acc = float(right.mean())
                jpt = round(cost * rng.uniform(0.8, 1.2), 2)  # rounding gives ties
                valid = not (c == 4 and seed % 3 == 0) and rng.random() > 0.15
                runs.append(rm_row(model=model, config_id=config_id, run_id=run_id, origin=origin,
                                   repeat=rep, power_source=source, hardware_id=hw, simulated=source == "simulated",
                                   valid=valid, accuracy=acc, j_per_token=jpt,
                                   epi=jpt / acc if acc > 0 else None))
                if cfg["ppl"] is not None and c % 3 != 1:  # chunks for most configurations
                    nll = [np.log(cfg["ppl"]) + rng.normal(0, 0.05) + 0.1 * np.sin(k) for k in range(8)]
                    chunks.append({"model": model, "config_id": config_id, "run_id": run_id, "event_id": sha(run_id),
                                   "recorded_at_ns": 1, "text_sha256": sha("text"), "context": 256, "chunk_nll": nll})
                for q in range(n_questions):
                    if rng.random() < 0.1:
                        continue  # not every question answered by every run
                    answers.append({"model": model, "config_id": config_id, "run_id": run_id, "origin": origin,
                                    "question_set_sha256": qsets[q % 2], "question_id": f"q{q // 2}",
                                    "correct": bool(right[q]),  # gold 0; wrong answers spread over 1..3
                                    "predicted": 0 if right[q] else 1 + (q + k) % 3})
    rm = pl.DataFrame(runs, schema=RM_SCHEMA)
    SYNTHETIC_CHUNKS[seed] = pl.DataFrame(chunks, schema=PPL_SCHEMA)
    return rm, summarise(rm, configs), ba_frame(answers)


#: The perplexity events of each synthetic() seed (chunks of 8, for the paired tests).
SYNTHETIC_CHUNKS: dict[int, pl.DataFrame] = {}


def connect_tables(run_metrics, config_summary, benchmark_answer=None, *, perplexity=None, kld=None, identity=None,
                   seed=None, n_boot=None, margin=None, kld_margin=None):
    """A DuckDB connection with the inputs as TABLES and resamples.sql + flips.sql + frontier.sql on top."""
    con = duckdb.connect()
    frames = {"run_metrics": run_metrics, "config_summary": config_summary,
              "benchmark_answer": pl.DataFrame(schema=BA_SCHEMA) if benchmark_answer is None else benchmark_answer,
              "perplexity": pl.DataFrame(schema=PPL_SCHEMA) if perplexity is None else perplexity,
              "kld": pl.DataFrame(schema=KLD_SCHEMA) if kld is None else kld,
              "config_identity": pl.DataFrame(schema=VIEWS["config_identity"]) if identity is None else identity,
              "quant_config": pl.DataFrame(schema=QC_SCHEMA),
              "quantization": pl.DataFrame(schema={"model": pl.Utf8, "config_id": pl.Utf8, "bits_per_weight": pl.Float64})}
    for name, frame in frames.items():
        con.register("frame", frame)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
        con.unregister("frame")
    for var, value in (("mqepi_seed", seed), ("mqepi_bootstrap", n_boot), ("mqepi_ppl_margin", margin),
                       ("mqepi_kld_margin", kld_margin)):
        if value is not None:
            con.execute(f"SET VARIABLE {var} = {value!r}")
    con.execute(MACROS_SQL.read_text())
    con.execute(RESAMPLES_SQL.read_text())
    con.execute(FLIPS_SQL.read_text())
    con.execute(FRONTIER_SQL.read_text())
    return con


def twin_pairs_of(rm, cs, ba, *, perplexity=None, kld=None, identity=None, margin=None, kld_margin=None, **kw):
    return twin.matched_pairs(rm, cs, ba, perplexity=perplexity, kld=kld, identity=identity,
                              ppl_margin=0.01 if margin is None else margin, kld_margin=kld_margin, **kw)


def view(con, name: str) -> pl.DataFrame:
    return con.sql(f"SELECT * FROM {name}").pl()


def cloud(rng, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Random points: continuous, on a coarse grid (many ties), or with exact duplicates."""
    if kind == "continuous":
        return rng.random(n), rng.random(n)
    if kind == "grid":
        return rng.integers(0, 5, n) / 4, rng.integers(0, 5, n) / 2
    acc, jpt = rng.random(n), rng.random(n)
    dup = rng.integers(0, n, n // 2)
    acc[: n // 2], jpt[: n // 2] = acc[dup], jpt[dup]
    return acc, jpt


# --------------------------------------------------------------------------- frontier rules


@pytest.mark.parametrize("kind", ["continuous", "grid", "duplicates"])
@pytest.mark.parametrize("seed", range(12))
def test_pareto_mask_equals_brute_force_on_random_clouds(seed, kind):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    acc, jpt = cloud(rng, n, kind)
    if seed % 4 == 0:  # missing coordinates are no point
        acc[rng.integers(0, n)] = np.nan
    assert np.array_equal(twin.pareto_mask(acc, jpt), twin.pareto_bruteforce(acc, jpt))


def test_pareto_hand_built_cases():
    # a duplicate pair does not dominate itself: both stay on the frontier
    assert twin.pareto_mask([0.5, 0.5], [1.0, 1.0]).tolist() == [True, True]
    # equal accuracy, lower J/token dominates; equal J/token, higher accuracy dominates
    assert twin.pareto_mask([0.5, 0.5, 0.6], [1.0, 2.0, 3.0]).tolist() == [True, False, True]
    assert twin.pareto_mask([0.5, 0.6], [1.0, 1.0]).tolist() == [False, True]
    # a duplicate pair is dominated together by a strictly better point
    assert twin.pareto_mask([0.5, 0.5, 0.6], [1.0, 1.0, 1.0]).tolist() == [False, False, True]
    # a staircase: all on the frontier; a point inside it is not
    acc, jpt = [0.3, 0.5, 0.7, 0.4], [1.0, 2.0, 3.0, 2.5]
    assert twin.pareto_mask(acc, jpt).tolist() == [True, True, True, False]
    assert twin.pareto_mask([np.nan, 0.2], [1.0, 5.0]).tolist() == [False, True]
    assert twin.pareto_mask([], []).tolist() == []


@pytest.mark.parametrize("kind", ["continuous", "grid", "duplicates"])
def test_sql_frontier_equals_brute_force(kind):
    rng = np.random.default_rng(7)
    rows = []
    for g in range(8):
        n = int(rng.integers(1, 30))
        acc, jpt = cloud(rng, n, kind)
        for i in range(n):
            missing = g == 0 and i == 0
            rows.append({"model": f"m{g % 2}", "config_id": f"c{i:03d}", "origin": "lab" if g < 4 else "community/bob",
                         "power_source": "simulated" if g % 4 < 2 else "epi-meter",
                         "simulated": g % 4 < 2, "kind": "uniform" if i % 3 == 0 else "mixed",
                         "accuracy": None if missing else float(acc[i]), "j_per_token": float(jpt[i])})
    cs = pl.DataFrame(rows, schema={k: CS_SCHEMA[k] for k in rows[0]}).with_columns(
        *[pl.lit("unknown" if k == "hardware_id" else None, CS_SCHEMA[k]).alias(k) for k in CS_SCHEMA if k not in rows[0]])
    con = connect_tables(pl.DataFrame(schema=RM_SCHEMA), cs, n_boot=10)
    got = view(con, "pareto_frontier")
    assert got.columns == PARETO_FRONTIER_COLUMNS
    assert got.height == cs.height
    for _, group in got.group_by(["model", "origin", "power_source"]):
        expected = twin.pareto_bruteforce(group["accuracy"].fill_null(np.nan).to_numpy(),
                                          group["j_per_token"].to_numpy())
        assert group["on_frontier"].to_list() == expected.tolist()
    # no valid repeat: no bootstrap, no probability
    assert got["frontier_probability"].null_count() == got.height


def test_uniform_dominated_and_mixed_unmatched_hand_built():
    pts = [  # config, kind, accuracy, J/token
        ("u1", "uniform", 0.50, 1.0),
        ("u2", "uniform", 0.60, 2.0),
        ("m1", "mixed", 0.55, 1.0),   # beats u1 on accuracy, same J/token: on the frontier, unmatched
        ("m2", "mixed", 0.60, 2.0),   # equals u2 exactly: on the frontier, but matched by u2
        ("m3", "mixed", 0.40, 3.0),   # dominated by u1 and u2
        ("m4", "mixed", 0.52, 1.5),   # dominated by m1 only, not by a uniform one
    ]
    cs = pl.DataFrame([{"model": "m", "config_id": c, "origin": "lab", "power_source": "epi-meter",
                        "simulated": False, "kind": k, "accuracy": a, "j_per_token": j} for c, k, a, j in pts])
    cs = cs.with_columns(*[pl.lit("unknown" if k == "hardware_id" else None, CS_SCHEMA[k]).alias(k)
                           for k in CS_SCHEMA if k not in cs.columns])
    got = view(connect_tables(pl.DataFrame(schema=RM_SCHEMA), cs), "pareto_frontier")
    flags = {r["config_id"]: (r["on_frontier"], r["uniform_dominated"], r["mixed_unmatched"])
             for r in got.iter_rows(named=True)}
    assert flags == {
        "u1": (False, False, False), "u2": (True, False, False), "m1": (True, False, True),
        "m2": (True, False, False), "m3": (False, True, False), "m4": (False, False, False),
    }
    twin_flags = twin.pareto_frontier(pl.DataFrame(schema=RM_SCHEMA), cs)
    assert_frame_equal(got, twin_flags)


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize("b, c, p", [
    (5, 0, 0.0625), (0, 5, 0.0625), (3, 3, 1.0), (0, 0, 1.0), (1, 0, 1.0),
    (6, 1, 16 / 128),             # 2 * (1 + 7) / 2^7
    (10, 2, 2 * 79 / 4096),       # 2 * (1 + 12 + 66) / 2^12
    (9, 1, 2 * 11 / 1024),        # 2 * (1 + 10) / 2^10
])
def test_mcnemar_p_hand_computed(b, c, p):
    assert twin.mcnemar_p(b, c) == p
    con = duckdb.connect()
    con.execute(MACROS_SQL.read_text())
    con.execute(FRONTIER_SQL.read_text().split("-- ----")[0])  # the macros only
    assert con.execute("SELECT frontier_mcnemar_p(?::BIGINT, ?::BIGINT)", [b, c]).fetchall()[0][0] == pytest.approx(
        p, rel=1e-12)


def test_mcnemar_p_large_counts_sql_equals_exact():
    con = duckdb.connect()
    con.execute(MACROS_SQL.read_text())
    con.execute(FRONTIER_SQL.read_text().split("-- ----")[0])
    for b, c in [(4000, 4300), (120, 75), (2500, 2500), (30000, 1)]:
        got = con.execute("SELECT frontier_mcnemar_p(?::BIGINT, ?::BIGINT)", [b, c]).fetchall()[0][0]
        assert got == pytest.approx(twin.mcnemar_p(b, c), rel=1e-9, abs=1e-300)


def test_mcnemar_pairs_answers_by_question_set_question_and_repeat():
    """Config a right on q0..q4 where b is wrong: b=5, c=0, p=0.0625; answers that do not pair up
    (other question set, question answered by one side, another repeat) are not counted."""
    rm = pl.DataFrame([
        rm_row(model="m", config_id=c, run_id=f"{c}-r{r}", origin="lab", repeat=r, power_source="epi-meter",
               simulated=False, valid=True, accuracy=0.5, j_per_token=1.0, epi=2.0)
        for c, r in (("a", 0), ("b", 0), ("a", 1), ("b", 2))], schema=RM_SCHEMA)
    cfgs = [{"model": "m", "config_id": c, "origin": "lab", "power_source": "epi-meter", "kind": "uniform",
             "ppl": 10.0, "ppl_stderr": 0.1} for c in ("a", "b")]
    cs = summarise(rm, cfgs)
    qs, other = sha("mmlu"), sha("arc")
    ans = [("a", qs, f"q{i}", True) for i in range(5)] + [("b", qs, f"q{i}", False) for i in range(5)]
    ans += [("a", qs, "q5", False), ("b", qs, "q5", False)]  # concordant
    ans += [("a", qs, "q6", True), ("b", other, "q6", False)]  # different question sets
    ans += [("a", qs, "q7", True)]  # only a answered
    ans = [(c, 0, s, q, ok) for c, s, q, ok in ans]
    ans += [("a", 1, qs, f"q{i}", True) for i in range(8)]  # repeats 1 (a) and 2 (b) do not pair
    ans += [("b", 2, qs, f"q{i}", False) for i in range(8)]
    ba = ba_frame([{"model": "m", "config_id": c, "run_id": f"{c}-r{r}", "origin": "lab",
                    "question_set_sha256": s, "question_id": q, "correct": ok} for c, r, s, q, ok in ans])
    got = view(connect_tables(rm, cs, ba), "matched_pairs")
    assert got.select("n_paired_repeats", "n_questions_paired", "mcnemar_b", "mcnemar_c", "mcnemar_p").row(0) == (
        1, 6, 5, 0, 0.0625)
    # equal perplexities 10 +/- 0.1, no chunks: the unpaired interval is wider than 1 %
    assert got.select("ppl_test", "ppl_verdict", "matched").row(0) == (
        "unpaired normal (no chunks recorded)", "inconclusive", False)
    assert_frame_equal(got, twin.matched_pairs(rm, cs, ba))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_indices_follow_the_contract_in_sql_and_polars():
    def by_hand(seed, b, j, n):
        x = (seed * 1000003 + b * 10007 + j * 101) % 2147483647
        x = (x * 48271) % 2147483647
        x ^= x >> 13
        x = (x * 48271) % 2147483647
        x ^= x >> 13
        return x % n

    con = duckdb.connect()
    con.execute(MACROS_SQL.read_text())
    for seed, n in [(1234, 1), (1234, 3), (7, 10), (2**31 - 1, 17)]:
        idx = bootstrap.index_matrix(seed, n, 50)
        assert idx.shape == (50, n)
        assert all(idx[b - 1, j] == by_hand(seed, b, j, n) for b in range(1, 51) for j in range(n))
        sql_idx = con.execute("SELECT b, j, mqepi_bootstrap_index(?, b, j, ?) FROM range(1, 51) t(b), range(?) u(j)",
                              [seed, n, n]).fetchall()
        assert all(idx[b - 1, j] == i for b, j, i in sql_idx)


def test_paired_bootstrap_pairs_repeats_by_number_hand_built():
    """a has repeats 0, 1, 2 (1 invalid), b has 1, 2, 3: only repeat 2 pairs. One paired repeat:
    its J/token difference moves only with the two runs' meter uncertainty (1 % of each energy),
    so the interval is that of (E_b + u_b z_b - E_a - u_a z_a) / T; without answers the accuracy
    and EPI differences have no resamples. c has no repeat in common with a: NULL differences."""
    def run(config, rep, jpt, acc=0.5, valid=True):
        return rm_row(model="m", config_id=config, run_id=f"{config}-{rep}", origin="lab", repeat=rep,
                      power_source="epi-meter", simulated=False, valid=valid, accuracy=acc, j_per_token=jpt,
                      epi=jpt / acc)
    rm = pl.DataFrame([run("a", 0, 1.0), run("a", 1, 1.1, valid=False), run("a", 2, 1.2),
                       run("b", 1, 2.0), run("b", 2, 2.5), run("b", 3, 2.25), run("c", 5, 3.0)], schema=RM_SCHEMA)
    cfgs = [{"model": "m", "config_id": c, "origin": "lab", "power_source": "epi-meter", "kind": "mixed",
             "ppl": 10.0, "ppl_stderr": 0.5} for c in "abc"]
    cs = summarise(rm, cfgs)
    got = view(connect_tables(rm, cs, n_boot=50), "matched_pairs")
    ab = got.filter(pl.col("config_a") == "a", pl.col("config_b") == "b").row(0, named=True)
    assert ab["n_paired_repeats"] == 1
    assert ab["j_per_token_diff"] == pytest.approx(2.5 - 1.2) and ab["epi_diff"] == pytest.approx(5.0 - 2.4)
    z = bootstrap.normal_matrix(1234, 50, [bootstrap.run_hash("m/a/a-2"), bootstrap.run_hash("m/b/b-2")])
    d = (2500 + 25 * z[:, 1] - 1200 - 12 * z[:, 0]) / 1000
    low, high = bootstrap.percentile_interval(d)
    assert (ab["j_per_token_diff_ci_low"], ab["j_per_token_diff_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert ab["accuracy_diff_ci_low"] is None and ab["epi_diff_ci_low"] is None
    assert ab["j_per_token_b"] == 2.25 and ab["j_per_token_a"] == 1.1  # config medians, not the paired ones
    ac = got.filter(pl.col("config_a") == "a", pl.col("config_b") == "c").row(0, named=True)
    assert ac["n_paired_repeats"] == 0 and ac["j_per_token_diff"] is None and ac["epi_diff_ci_low"] is None
    assert ac["n_questions_paired"] == 0 and ac["mcnemar_p"] is None and "no paired repeats" in ac["note"]
    assert_frame_equal(got, twin.matched_pairs(rm, cs, pl.DataFrame(schema=BA_SCHEMA), n_boot=50))


def test_bootstrap_is_identical_for_the_same_seed_and_moves_with_it():
    rm, cs, ba = synthetic(11, n_repeats=25)
    first = connect_tables(rm, cs, ba, seed=99, n_boot=200)
    again = connect_tables(rm, cs, ba, seed=99, n_boot=200)
    other = connect_tables(rm, cs, ba, seed=100, n_boot=200)
    for name in ("matched_pairs", "pareto_frontier"):
        assert view(first, name).equals(view(again, name))
        assert view(first, name).equals(view(first, name))
    assert not view(first, "matched_pairs").equals(view(other, "matched_pairs"))
    assert not view(first, "pareto_frontier").equals(view(other, "pareto_frontier"))
    t1 = twin.pareto_frontier(rm, cs, seed=99, n_boot=200)
    assert t1.equals(twin.pareto_frontier(rm, cs, seed=99, n_boot=200))


@pytest.mark.parametrize("variable, value, message", [
    ("mqepi_seed", -1, "mqepi_seed must be in 0 .. 2147483647"),
    ("mqepi_bootstrap", 0, "mqepi_bootstrap must be >= 1"),
    ("mqepi_ppl_margin", 0, "mqepi_ppl_margin must be > 0"),
    ("mqepi_kld_margin", -0.1, "mqepi_kld_margin must be > 0"),
])
def test_tunables_out_of_range_fail_with_their_name(variable, value, message):
    rm, cs, ba = synthetic(4)
    con = connect_tables(rm, cs, ba)
    con.execute(f"SET VARIABLE {variable} = {value}")
    views = ["matched_pairs"] if "margin" in variable else ["matched_pairs", "pareto_frontier"]
    for name in views:
        with pytest.raises(duckdb.Error, match=message):
            view(con, name)
    kwargs = {"seed": value} if variable == "mqepi_seed" else {"n_boot": value} if variable == "mqepi_bootstrap" \
        else {"ppl_margin": value} if variable == "mqepi_ppl_margin" else {"kld_margin": value}
    with pytest.raises(ValueError, match=message):
        twin.matched_pairs(rm, cs, ba, **kwargs)


# --------------------------------------------------------------------------- matching


def tost_lake(chunks: dict[str, list[float]], *, origins=("lab",), kld: dict[str, list[float]] | None = None):
    """One run per configuration and origin, with the given per-chunk NLL (and KLD)."""
    rm_rows, cfgs, ppl_rows, kld_rows = [], [], [], []
    for (c, nll), origin in product(chunks.items(), origins):
        run_id = f"{c}-{origin[:3]}"
        rm_rows.append(rm_row(model="m", config_id=c, run_id=run_id, origin=origin, repeat=0, power_source="epi-meter",
                              simulated=False, valid=True, accuracy=0.5, j_per_token=1.0, epi=2.0))
        cfgs.append({"model": "m", "config_id": c, "origin": origin, "power_source": "epi-meter", "kind": "uniform",
                     "ppl": float(np.exp(np.mean(nll))), "ppl_stderr": 0.5, "kld": 0.1})
        ppl_rows.append({"model": "m", "config_id": c, "run_id": run_id, "event_id": sha(run_id), "recorded_at_ns": 1,
                         "text_sha256": sha("text"), "context": 256, "chunk_nll": nll})
        if kld is not None:
            kld_rows.append({"model": "m", "config_id": c, "run_id": run_id, "event_id": sha(run_id), "recorded_at_ns": 1,
                             "base_sha256": sha("base"), "text_sha256": sha("text"), "context": 256, "chunk_kld": kld[c]})
    rm = pl.DataFrame(rm_rows, schema=RM_SCHEMA)
    return rm, summarise(rm, cfgs), pl.DataFrame(ppl_rows, schema=PPL_SCHEMA), pl.DataFrame(kld_rows, schema=KLD_SCHEMA)


def tost_by_hand(a: list[float], b: list[float], margin: float = 0.01) -> tuple[float, float, float, str]:
    """The paired TOST written with scipy's t quantile: (mean, low, high, verdict)."""
    from scipy import stats

    d = np.array(b) - np.array(a)
    half = stats.t.ppf(0.95, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    lo, hi, limit = d.mean() - half, d.mean() + half, np.log(1 + margin)
    verdict = "matched" if lo >= -limit and hi <= limit else "different" if lo > limit or hi < -limit else "inconclusive"
    return float(d.mean()), float(lo), float(hi), verdict


def test_tost_matched_different_inconclusive_and_origins_never_pooled():
    """Eight chunks of text; b differs from a by 0.3 % +/- 0.1 % a chunk (matched within 1 %),
    c by 3 % (different), d by 0.9 % +/- 1.5 % (inconclusive: the interval crosses the margin).
    A pair shown to differ is not a row; lab and community are never paired."""
    rng = np.random.default_rng(3)
    text = list(np.log(20) + rng.normal(0, 0.3, 8))  # the text's own difficulty, shared
    chunks = {"a": text,
              "b": [x + 0.003 + e for x, e in zip(text, rng.normal(0, 0.001, 8))],
              "c": [x + 0.03 + e for x, e in zip(text, rng.normal(0, 0.001, 8))],
              "d": [x + 0.009 + e for x, e in zip(text, rng.normal(0, 0.015, 8))]}
    rm, cs, ppl, _ = tost_lake(chunks, origins=("lab", "community/eve"))
    got = view(connect_tables(rm, cs, perplexity=ppl), "matched_pairs")
    assert_frame_equal(got, twin_pairs_of(rm, cs, pl.DataFrame(schema=BA_SCHEMA), perplexity=ppl))
    rows = {(r["origin"], r["config_a"], r["config_b"]): r for r in got.iter_rows(named=True)}
    verdicts = {}
    for x, y in product("abcd", repeat=2):
        if x < y:
            verdicts[(x, y)] = tost_by_hand(chunks[x], chunks[y])
    assert verdicts[("a", "b")][3] == "matched" and verdicts[("a", "c")][3] == "different"
    assert verdicts[("a", "d")][3] == "inconclusive"
    kept = {k for k, v in verdicts.items() if v[3] != "different"}
    assert set(rows) == {(o, x, y) for o in ("lab", "community/eve") for x, y in kept}
    for (_origin, x, y), row in rows.items():
        mean, lo, hi, verdict = verdicts[(x, y)]
        assert row["ppl_test"] == "paired t over 8 chunks" and row["n_chunks"] == 8
        assert (row["log_ppl_ratio"], row["log_ppl_ratio_ci_low"], row["log_ppl_ratio_ci_high"]) == (
            pytest.approx(mean), pytest.approx(lo), pytest.approx(hi))
        assert row["ppl_verdict"] == verdict and row["matched"] == (verdict == "matched")
        assert row["ppl_margin"] == 0.01 and "1 +/- 1%" in row["match_rule"]
    # a wider margin matches more; a stated margin is part of the rule
    wide = view(connect_tables(rm, cs, perplexity=ppl, margin=0.05), "matched_pairs")
    assert wide.filter(pl.col("matched")).height > got.filter(pl.col("matched")).height
    assert "1 +/- 5%" in wide["match_rule"][0]


def test_tost_one_chunk_is_inconclusive_and_kld_matching():
    """One chunk: no interval, the pair is inconclusive and the note says why. KLD matching:
    equal perplexity, but c's KLD per chunk is 0.05 nats above a's: with a 0.01 margin the
    pair a-c is not matched even where perplexity is."""
    one, _, ppl1, _ = tost_lake({"a": [3.0], "b": [3.0005]})
    cs1 = summarise(one, [{"model": "m", "config_id": c, "origin": "lab", "power_source": "epi-meter",
                           "kind": "uniform", "ppl": 20.0, "ppl_stderr": 0.0} for c in "ab"])
    row = view(connect_tables(one, cs1, perplexity=ppl1), "matched_pairs").row(0, named=True)
    assert row["n_chunks"] == 1 and row["log_ppl_ratio_ci_low"] is None and row["ppl_verdict"] == "inconclusive"
    assert "one chunk" in row["note"]
    rng = np.random.default_rng(9)
    text = list(np.log(20) + rng.normal(0, 0.3, 8))
    nll = {c: [x + e for x, e in zip(text, rng.normal(0, 0.0005, 8))] for c in "abc"}
    kl = {"a": list(0.1 + rng.normal(0, 0.002, 8)), "b": list(0.1 + rng.normal(0, 0.002, 8)),
          "c": list(0.15 + rng.normal(0, 0.002, 8))}
    rm, cs, ppl, kld = tost_lake(nll, kld=kl)
    got = view(connect_tables(rm, cs, perplexity=ppl, kld=kld, kld_margin=0.01), "matched_pairs")
    assert_frame_equal(got, twin_pairs_of(rm, cs, pl.DataFrame(schema=BA_SCHEMA), perplexity=ppl, kld=kld,
                                          kld_margin=0.01))
    by = {(r["config_a"], r["config_b"]): r for r in got.iter_rows(named=True)}
    assert set(by) == {("a", "b")}  # a-c and b-c: KLD shown to differ by more than 0.01 nats
    assert by[("a", "b")]["kld_verdict"] == "matched" and by[("a", "b")]["matched"]
    off = view(connect_tables(rm, cs, perplexity=ppl, kld=kld), "matched_pairs")
    assert off.height == 3 and off["kld_verdict"].null_count() == 3 and off["kld_diff"].null_count() == 0


# --------------------------------------------------------------------------- SQL == Polars


@pytest.mark.parametrize("seed, margin", [(1, None), (2, 0.03), (3, None), (6, 0.1)])
def test_sql_equals_polars_twin(seed, margin):
    rm, cs, ba = synthetic(seed, models=("m1", "m2"), sources=("simulated", "epi-meter"), n_configs=7,
                           n_repeats=4)
    ppl = SYNTHETIC_CHUNKS[seed]
    con = connect_tables(rm, cs, ba, perplexity=ppl, seed=seed * 17, n_boot=150, margin=margin)
    pairs = view(con, "matched_pairs")
    frontier = view(con, "pareto_frontier")
    assert pairs.columns == MATCHED_PAIRS_COLUMNS
    assert frontier.columns == PARETO_FRONTIER_COLUMNS
    assert pairs.height > 5 and pairs["n_questions_paired"].sum() > 0 and pairs["mcnemar_p"].null_count() < pairs.height
    assert set(pairs["ppl_test"].str.slice(0, 6).to_list()) == {"paired", "unpair"}  # both tests exercised
    assert frontier["on_frontier"].any() and frontier["frontier_probability"].drop_nulls().len() > 0
    twin_pairs = twin_pairs_of(rm, cs, ba, perplexity=ppl, margin=margin, seed=seed * 17, n_boot=150)
    twin_frontier = twin.pareto_frontier(rm, cs, ba, seed=seed * 17, n_boot=150)
    # medians, counts, flags and probabilities exactly; interpolated quantiles to rounding
    ci = [c for c in MATCHED_PAIRS_COLUMNS if "_ci_" in c or c in ("log_ppl_ratio", "kld_diff")]
    assert_frame_equal(pairs.drop(ci), twin_pairs.drop(ci))
    assert_frame_equal(pairs.select(ci), twin_pairs.select(ci), check_exact=False, rel_tol=1e-9, abs_tol=1e-12)
    assert_frame_equal(frontier, twin_frontier)


def test_two_hardware_profiles_are_never_pooled():
    """The same configurations measured on two hardware profiles: one frontier and one set of
    pairs per hardware, each exactly what that hardware's runs alone give (no pair across
    hardware, no question universe or frontier shared); the twin agrees."""
    hw = ("hw-aaaaaaaaaaaa", "hw-bbbbbbbbbbbb")
    rm, cs, ba = synthetic(4, origins=("lab",), n_configs=6, n_repeats=3, hardware=hw)
    ppl = SYNTHETIC_CHUNKS[4]
    con = connect_tables(rm, cs, ba, perplexity=ppl, n_boot=60)
    pairs, frontier = view(con, "matched_pairs"), view(con, "pareto_frontier")
    assert sorted(set(frontier["hardware_id"])) == list(hw) and frontier.height == 2 * 6
    assert sorted(set(pairs["hardware_id"])) == list(hw)
    assert_frame_equal(frontier, twin.pareto_frontier(rm, cs, ba, n_boot=60))
    for h in hw:
        runs = rm.filter(pl.col("hardware_id") == h)
        ids = runs["run_id"].to_list()
        alone = connect_tables(runs, cs.filter(pl.col("hardware_id") == h), ba.filter(pl.col("run_id").is_in(ids)),
                               perplexity=ppl.filter(pl.col("run_id").is_in(ids)), n_boot=60)
        assert_frame_equal(view(alone, "pareto_frontier"), frontier.filter(pl.col("hardware_id") == h))
        assert_frame_equal(view(alone, "matched_pairs"), pairs.filter(pl.col("hardware_id") == h))


def test_frontier_probability_is_one_for_a_clear_winner():
    rows, answers = [], []
    for c, (acc, jpt) in {"best": (0.8, 1.0), "worse": (0.5, 2.0)}.items():
        for r in range(3):
            rows.append(rm_row(model="m", config_id=c, run_id=f"{c}{r}", origin="lab", repeat=r,
                               power_source="nvml", simulated=False, valid=True, accuracy=acc,
                               j_per_token=jpt + r / 100, epi=None))
            answers += [{"model": "m", "config_id": c, "run_id": f"{c}{r}", "origin": "lab",
                         "question_set_sha256": sha("mmlu"), "question_id": f"q{q}", "correct": q < acc * 100}
                        for q in range(100)]
    rm = pl.DataFrame(rows, schema=RM_SCHEMA)
    ba = ba_frame(answers)
    cs = summarise(rm, [{"model": "m", "config_id": c, "origin": "lab", "power_source": "nvml", "kind": "mixed"}
                        for c in ("best", "worse")])
    got = view(connect_tables(rm, cs, ba, n_boot=100), "pareto_frontier")
    assert_frame_equal(got, twin.pareto_frontier(rm, cs, ba, n_boot=100))
    assert got["frontier_probability"].to_list() == [1.0, 0.0]
    assert got["on_frontier"].to_list() == [True, False]


@pytest.mark.slow
def test_ten_thousand_runs_agree_with_polars():
    """10^4 runs (200 configs x 25 repeats in one group, 1666 configs x 3 repeats in another),
    200 resamples; perplexities 0.4 % apart (log steps of 0.004, stderr 0.05 or 0.15 %): each
    configuration is a candidate pair of its few nearest neighbours only, so the pairwise
    work stays small (its cost: benchmarks/, not a timed test)."""
    rng = np.random.default_rng(5)
    runs = []
    for model, n_configs, n_rep in (("big", 200, 25), ("wide", 1666, 3)):
        for c in range(n_configs):
            for r in range(n_rep):
                acc, jpt = rng.uniform(0.3, 0.7), rng.uniform(0.5, 2.0)
                runs.append(rm_row(model=model, config_id=f"c{c:04d}", run_id=f"{model}{c}-{r}", origin="lab",
                                   repeat=r, power_source="epi-meter", simulated=False, valid=True,
                                   accuracy=acc, j_per_token=jpt, epi=jpt / acc))
    rm = pl.DataFrame(runs, schema=RM_SCHEMA)
    assert rm.height == 200 * 25 + 1666 * 3 == 9998
    cs = duckdb.sql("SELECT model, config_id, origin, power_source, hardware_id, "
                    "power_source = 'simulated' AS simulated, "
                    "CASE WHEN config_id[-1:] IN ('0', '5') THEN 'uniform' ELSE 'mixed' END AS kind, "
                    "count(*) AS n_repeats, "
                    "median(accuracy) AS accuracy, median(j_per_token) AS j_per_token, median(epi) AS epi, "
                    "NULL::DOUBLE AS accuracy_ci_low, NULL::DOUBLE AS accuracy_ci_high, "
                    "NULL::DOUBLE AS j_per_token_ci_low, NULL::DOUBLE AS j_per_token_ci_high, "
                    "10 * exp(0.004 * CAST(config_id[2:] AS INT)) AS ppl, "
                    "0.0005 * (1 + 2 * (CAST(config_id[2:] AS INT) % 2)) * 10 * exp(0.004 * CAST(config_id[2:] AS INT)) "
                    "AS ppl_stderr, "
                    "NULL::DOUBLE AS kld_mean FROM rm GROUP BY ALL").pl()
    con = connect_tables(rm, cs, n_boot=200)
    frontier = view(con, "pareto_frontier")
    pairs = view(con, "matched_pairs")
    assert frontier.height == 1866 and 3000 < pairs.height < 4 * 1866
    assert pairs["matched"].sum() > 500 and (pairs["ppl_verdict"] == "inconclusive").sum() > 500
    ci = [c for c in MATCHED_PAIRS_COLUMNS if "_ci_" in c or c == "log_ppl_ratio"]
    twin_pairs = twin.matched_pairs(rm, cs, pl.DataFrame(schema=BA_SCHEMA), n_boot=200)
    assert_frame_equal(pairs.drop(ci), twin_pairs.drop(ci))
    assert_frame_equal(pairs.select(ci), twin_pairs.select(ci), check_exact=False, rel_tol=1e-9, abs_tol=1e-12)
    assert_frame_equal(frontier, twin.pareto_frontier(rm, cs, n_boot=200))


# --------------------------------------------------------------------------- end to end

T0 = 1_764_000_000_000_000_000  # 2025-11-24 UTC, ns
STEP_NS = 10_000_000  # the simulated meter reads at 100 Hz
WINDOWS = {"idle_baseline": (0.5, 2.5), "mmlu": (3.0, 5.0), "arc_challenge": (5.5, 7.5)}  # s into the run
QSETS = {"mmlu": sha("mmlu-questions"), "arc_challenge": sha("arc-questions")}
E2E_CONFIGS = {  # kind, benchmark power W, skill, perplexity
    "uniform_q4km": ("uniform", 5.0, 0.55, 20.0), "mix_a": ("mixed", 4.6, 0.60, 20.05),
    "uniform_q8": ("uniform", 6.5, 0.70, 15.0), "mix_b": ("mixed", 6.0, 0.65, 15.3),
}
#: The text's own difficulty per chunk (nats per token around ln 20), shared by every model.
E2E_TEXT = [0.31, -0.22, 0.05, 0.4, -0.35, 0.12, -0.08, -0.23]


def fill_lake(lake, seed: int = 3) -> dict:
    """A small real lake: 4 configs x 3 repeats in two origins, simulated power at 100 Hz,
    idle and benchmark windows, answers and perplexity; plus one failed run and one finished
    run whose mmlu window has a power gap (invalid). Returns the correctness of every answer."""
    rng = np.random.default_rng(seed)
    model, slot = "smollm2-135m", 0
    correct: dict[tuple[str, str, int, str, str], bool] = {}  # (origin, config, repeat, qset, qid)
    for origin in ("lab", "community/alice"):
        ev = {k: [] for k in ("run", "phase", "power_sample", "benchmark_answer", "perplexity")}
        runs = [(c, r, "ok") for c in E2E_CONFIGS for r in range(3)]
        if origin == "lab":
            runs += [("mix_b", 3, "gap"), ("uniform_q8", 3, "failed")]
        for config, rep, how in runs:
            kind, power, skill, ppl = E2E_CONFIGS[config]
            run_id = f"{config}-{origin.split('/')[-1]}-r{rep}"
            t0 = T0 + slot * 20 * 10**9
            slot += 1
            end = "failed" if how == "failed" else "finished"
            for status in ("started", end):
                ev["run"].append({"model": model, "config_id": config, "run_id": run_id, "status": status,
                                  "repeat": rep, "file_sha256": None, "power_source": "simulated",
                                  "host": "localhost", "provenance_json": "{}",
                                  "message": "oom" if status == "failed" else None})
            for phase, (lo, hi) in WINDOWS.items():
                ev["phase"].append({"model": model, "config_id": config, "run_id": run_id, "phase": phase,
                                    "node": None, "start_ns": t0 + int(lo * 1e9), "end_ns": t0 + int(hi * 1e9),
                                    "tokens": None})
            draw = rng.normal(0, 0.05)
            for i in range(900):
                t = i * STEP_NS / 1e9
                if how == "gap" and 3.5 <= t < 4.5:
                    continue
                busy = any(lo <= t <= hi for ph, (lo, hi) in WINDOWS.items() if ph != "idle_baseline")
                ev["power_sample"].append({
                    "model": model, "config_id": config, "run_id": run_id, "power_source": "simulated",
                    "meter_id": "sim0", "channel": 0, "node": "node0", "seq": i, "meter_time_ns": i * STEP_NS,
                    "host_time_ns": t0 + i * STEP_NS, "host_monotonic_ns": slot * 10**12 + i * STEP_NS,
                    "power_w": (power + draw if busy else 3.0) + float(rng.normal(0, 0.02)),
                    "voltage_v": None, "current_a": None, "power_factor": None, "frequency_hz": None,
                    "energy_counter_j": None})
            for bench, qset in QSETS.items():
                for q in range(20):
                    ok = bool(rng.random() < skill)
                    correct[(origin, config, rep, qset, f"q{q}")] = ok
                    ev["benchmark_answer"].append({
                        "model": model, "config_id": config, "run_id": run_id, "benchmark": bench,
                        "question_set_sha256": qset, "question_id": f"q{q}", "subject": None,
                        "shots": 5 if bench == "mmlu" else 25, "prompt_sha256": sha(f"{bench}{q}"),
                        "predicted": 1 if ok else 0, "gold": 1, "correct": ok, "choice_scores": None,
                        "tokens_evaluated": 300})
            nll = [float(np.log(ppl) + x + rng.normal(0, 0.001)) for x in E2E_TEXT]
            ev["perplexity"].append({"model": model, "config_id": config, "run_id": run_id,
                                     "text_sha256": sha("wiki"), "context": 512, "chunks": 8, "tokens": 4096,
                                     "ppl": float(np.exp(np.mean(nll))), "ppl_stderr": 0.4,
                                     "chunk_nll": nll, "chunk_tokens": 255})
        for event_type, rows in ev.items():
            lake.record(event_type, rows, origin=origin)
    lake.record("quant_config", [{"model": model, "config_id": c, "map_sha256": sha(c),
                                  "map_json": '{"layer_groups":[]}', "n_layers": 30, "kind": kind}
                                 for c, (kind, *_) in E2E_CONFIGS.items()])
    return correct


def test_end_to_end_on_a_real_lake(lake):
    from mqepi.results import sql

    correct = fill_lake(lake)
    con = sql.connect(lake)
    con.execute("SET VARIABLE mqepi_bootstrap = 200")

    def q(text):
        return pl.from_arrow(sql.query(con, text))

    pairs, frontier = q("SELECT * FROM matched_pairs"), q("SELECT * FROM pareto_frontier")
    rm, cs, ba = q("SELECT * FROM run_metrics"), q("SELECT * FROM config_summary"), q("SELECT * FROM benchmark_answer")
    assert pairs.columns == MATCHED_PAIRS_COLUMNS and frontier.columns == PARETO_FRONTIER_COLUMNS

    # the lake is what it should be: 3 valid repeats everywhere, the gap run excluded
    assert cs.height == frontier.height == 8
    assert cs["n_repeats"].to_list() == [3] * 8
    assert cs.filter(pl.col("origin") == "lab", pl.col("config_id") == "mix_b")["n_excluded"].item() == 1

    # perplexity-matched pairs by a paired TOST over the 8 chunks, never across origins:
    # mix_a is 0.25 % above uniform_q4km (matched within 1 %); mix_b 2 % above uniform_q8 and
    # the 15-vs-20 pairs are shown to differ (not rows)
    assert sorted(pairs.select("origin", "config_a", "config_b").rows()) == [
        ("community/alice", "mix_a", "uniform_q4km"), ("lab", "mix_a", "uniform_q4km")]
    assert pairs["simulated"].all() and (pairs["n_paired_repeats"] == 3).all()
    assert (pairs["ppl_test"] == "paired t over 8 chunks").all() and pairs["matched"].all()
    assert pairs["log_ppl_ratio"].is_between(-0.004, -0.001).all()  # ln(20 / 20.05) = -0.0025
    # mix_a draws 4.6 W against uniform_q4km's 5.0 W: b - a = uniform - mixed > 0, interval too
    mix_a = pairs.filter(pl.col("config_a") == "mix_a")
    assert (mix_a["j_per_token_diff"] > 0).all() and (mix_a["j_per_token_diff_ci_low"] > 0).all()

    # McNemar counts straight from the answers recorded
    for row in pairs.iter_rows(named=True):
        b = c = n = 0
        for (origin, config, rep, qset, qid), right_a in correct.items():
            if origin == row["origin"] and config == row["config_a"] and rep < 3:
                right_b = correct[(origin, row["config_b"], rep, qset, qid)]
                n += 1
                b += right_a and not right_b
                c += right_b and not right_a
        assert (row["n_questions_paired"], row["mcnemar_b"], row["mcnemar_c"]) == (n, b, c)
        assert row["mcnemar_p"] == pytest.approx(twin.mcnemar_p(b, c), rel=1e-12)

    # the frontier within each (model, origin, power_source) group equals the brute force
    for _, group in frontier.group_by("origin"):
        assert group["on_frontier"].to_list() == twin.pareto_bruteforce(
            group["accuracy"].to_numpy(), group["j_per_token"].to_numpy()).tolist()
    assert frontier["frontier_probability"].is_between(0, 1).all()

    # SQL == Polars twin over the views runs.sql built
    ci = [c for c in MATCHED_PAIRS_COLUMNS if "_ci_" in c or c == "log_ppl_ratio"]
    identity, ppl = q("SELECT * FROM config_identity"), q("SELECT * FROM perplexity")
    twin_pairs = twin.matched_pairs(rm, cs, ba, identity=identity, perplexity=ppl, n_boot=200)
    assert_frame_equal(pairs.drop(ci), twin_pairs.drop(ci))
    assert_frame_equal(pairs.select(ci), twin_pairs.select(ci), check_exact=False, rel_tol=1e-9, abs_tol=1e-12)
    assert_frame_equal(frontier, twin.pareto_frontier(rm, cs, ba, identity=identity, n_boot=200))
