"""Per-run results (analysis/runs.sql): hand-computed values on a small lake, the SQL views
against their Polars twin (analysis/twin_runs.py) on a sweep with invalid, failed, unfinished
and community runs, the seeded bootstrap, and what is excluded or never pooled."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict

import numpy as np
import polars as pl
import pytest
from factories import T0, sha

from mqepi.analysis import FLIPS_SQL, MACROS_SQL, RESAMPLES_SQL, RUNS_SQL, SUMMARY_SQL, VIEWS_SQL, bootstrap, twin_runs
from mqepi.lake.store import Lake
from mqepi.results import sql

MS, S = 1_000_000, 1_000_000_000
Z = 1.96


def connect(lake: Lake, **variables):
    """views.sql + runs.sql only (frontier.sql is another file's business)."""
    con = sql.connect(lake, [MACROS_SQL, VIEWS_SQL, RUNS_SQL, RESAMPLES_SQL, FLIPS_SQL, SUMMARY_SQL])
    for name, value in variables.items():
        con.execute(f"SET VARIABLE {name} = {value}")
    return con


def view(con, name: str, where: str = "") -> pl.DataFrame:
    return pl.from_arrow(con.sql(f"SELECT * FROM {name} {where}").to_arrow_table())


# --------------------------------------------------------------------------- building lakes


class Builder:
    """Collects event rows per (event type, origin, recorded_at) and records each batch once."""

    def __init__(self):
        self.batches: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))

    def add(self, event_type: str, origin: str = "lab", recorded_at_ns: int | None = None, **columns):
        batch = self.batches[(event_type, origin, recorded_at_ns)]
        n = max((len(v) for v in columns.values() if isinstance(v, (list, np.ndarray))), default=1)
        for key, value in columns.items():
            batch[key].extend(list(value) if isinstance(value, (list, np.ndarray)) else [value] * n)

    def write(self, lake: Lake) -> Lake:
        for (event_type, origin, recorded_at_ns), rows in self.batches.items():
            lake.record(event_type, dict(rows), origin=origin, recorded_at_ns=recorded_at_ns)
        return lake

    # -------------------------------------------------------------- one event kind each

    def run(self, key, statuses, *, repeat, source="simulated", file_sha=None, origin="lab", hardware_id=None):
        for status in statuses:
            self.add("run", origin, **key, status=status, repeat=repeat, file_sha256=file_sha, power_source=source,
                     host="pi-host", provenance_json="{}", message="boom" if status == "failed" else None,
                     hardware_id=hardware_id)

    def power(self, key, t_ns, p_w, *, channel=0, node="node0", source="simulated", meter_time_ns=None, origin="lab"):
        n = len(t_ns)
        self.add("power_sample", origin, **key, power_source=source, meter_id="m0", channel=channel, node=node,
                 seq=list(range(n)), meter_time_ns=meter_time_ns if meter_time_ns is not None else [None] * n,
                 host_time_ns=[int(t) for t in t_ns], host_monotonic_ns=[int(t - T0) for t in t_ns],
                 power_w=[float(p) for p in p_w], voltage_v=[None] * n, current_a=[None] * n,
                 power_factor=[None] * n, frequency_hz=[None] * n, energy_counter_j=[None] * n)

    def phases(self, key, windows, origin="lab"):
        """windows: (name, start_s, end_s, tokens or None)"""
        self.add("phase", origin, **key, phase=[w[0] for w in windows], node=[None] * len(windows),
                 start_ns=[T0 + round(w[1] * S) for w in windows], end_ns=[T0 + round(w[2] * S) for w in windows],
                 tokens=[w[3] for w in windows])

    def answers(self, key, benchmark, correct, tokens, origin="lab"):
        n = len(correct)
        tokens = tokens if isinstance(tokens, list) else [tokens] * n
        self.add("benchmark_answer", origin, **key, benchmark=benchmark, question_set_sha256=sha(benchmark),
                 question_id=[f"{benchmark}-{i}" for i in range(n)], subject=[None] * n, shots=5,
                 prompt_sha256=[sha(f"{benchmark}-{i}") for i in range(n)], gold=[1] * n,
                 predicted=[1 if c else 2 for c in correct], correct=list(correct), choice_scores=[None] * n,
                 tokens_evaluated=tokens)

    def quality(self, key, *, ppl, kld, pp_tps, tg_tps, origin="lab"):
        self.add("perplexity", origin, **key, text_sha256=sha("text"), context=512, chunks=4, tokens=2048,
                 ppl=ppl, ppl_stderr=0.5)
        self.add("kld", origin, **key, base_sha256=sha("base"), text_sha256=sha("text"), context=512, chunks=4,
                 kld_mean=kld, kld_mean_stderr=0.001, kld_median=kld / 2, kld_p99=kld * 10, ppl_ratio=1.01,
                 ppl_ratio_stderr=0.001, same_top_p=0.9)
        self.add("throughput", origin, **key, test=["pp", "tg", "pg"], n_prompt=[64, 0, 16], n_gen=[0, 32, 16],
                 repetitions=[5, 5, 1], n_threads=4, tokens_per_s=[pp_tps, tg_tps, 30.0],
                 tokens_per_s_stddev=0.5, rpc_nodes=0)

    def config(self, model, config_id, groups, *, kind, origin="lab", recorded_at_ns=None):
        layer_groups = [{"layers": [i], "name": name, "quant": quant} for i, (name, quant) in enumerate(groups)]
        map_json = json.dumps({"config_id": config_id, "layer_groups": layer_groups, "model": model},
                              sort_keys=True, separators=(",", ":"))
        self.add("quant_config", origin, recorded_at_ns, model=model, config_id=config_id, map_sha256=sha(map_json),
                 map_json=map_json, n_layers=len(groups), kind=kind)

    def quantization(self, model, config_id, file_sha, size, bpw, *, origin="lab", recorded_at_ns=None):
        self.add("quantization", origin, recorded_at_ns, model=model, config_id=config_id, map_sha256=sha(config_id),
                 base_sha256=sha("base"), base_ftype="Q8_0", llama_cpp_commit="b1234", file_sha256=file_sha,
                 effective_map_sha256=sha(file_sha), file_size_bytes=size, bits_per_weight=bpw, duration_s=1.0,
                 host="quant-host")


def piecewise(knots, end_s, hz=10):
    """Samples every 1/hz s from 0 to end_s of the piecewise-linear power through ``knots``."""
    k = np.arange(0, end_s * hz + 1)
    t_ns = T0 + k * (S // hz)
    p = np.interp(k / hz, [t for t, _ in knots], [p for _, p in knots])
    return t_ns, p


# --------------------------------------------------------------------------- 1. by hand

HAND = {"model": "tiny", "config_id": "hand_q4"}
HAND_FILE = sha("hand-file")
# power (W) against time (s): idle 4 W, mmlu 6 W, arc_challenge a ramp 5 -> 7 W, pp 7 W, tg 5 W
HAND_KNOTS = [(0, 4), (10, 4), (11, 6), (22, 6), (24, 5), (34, 7), (40, 7), (41, 5), (47, 5)]
HAND_WINDOWS = [("idle_baseline", 0, 10, None), ("mmlu", 12, 22, None), ("arc_challenge", 24, 34, None),
                ("pp", 35, 40, None), ("tg", 41, 46, None)]
# correct answers per repeat: mmlu of 4 (250 tokens each), arc of 5 (200 tokens each)
HAND_CORRECT = {0: (3, 2), 1: (4, 2), 2: (2, 3), 3: (1, 1), 4: (4, 5), 5: (4, 5)}


def hand_scale(repeat: int) -> float:
    return 1 + 0.1 * repeat  # every power of repeat r is (1 + r/10) x the knots


@pytest.fixture(scope="module")
def hand_lake(tmp_path_factory):
    """tiny/hand_q4: repeats 0-2 valid, 3 finished with lost lines in mmlu (invalid), 4 failed,
    5 never finished."""
    lake = Lake(tmp_path_factory.mktemp("hand") / "lake")
    lake.init()
    b = Builder()
    b.config("tiny", "hand_q4", [("early", "Q6_K"), ("middle", "Q4_K_M"), ("late", "Q3_K_M")], kind="mixed")
    b.quantization("tiny", "hand_q4", HAND_FILE, 1_000_000, 4.5, recorded_at_ns=T0)
    # a later, bigger file of the same configuration that the runs did not use
    b.quantization("tiny", "hand_q4", sha("other-file"), 2_000_000, 8.5, recorded_at_ns=T0 + S)
    statuses = {0: ["started", "finished"], 1: ["started", "finished"], 2: ["started", "finished"],
                3: ["started", "finished"], 4: ["started", "failed"], 5: ["started"]}
    for r, status in statuses.items():
        key = {**HAND, "run_id": f"hand-r{r}"}
        t, p = piecewise(HAND_KNOTS, 47)
        if r == 3:
            keep = (t < T0 + 14 * S) | (t > T0 + 18 * S)
            t, p = t[keep], p[keep]
        b.run(key, status, repeat=r, file_sha=HAND_FILE)
        b.power(key, t, p * hand_scale(r))
        b.phases(key, HAND_WINDOWS)
        mmlu, arc = HAND_CORRECT[r]
        b.answers(key, "mmlu", [i < mmlu for i in range(4)], 250)
        b.answers(key, "arc_challenge", [i < arc for i in range(5)], 200)
        b.quality(key, ppl=20.0 + r, kld=0.01 * (r + 1), pp_tps=100.0 + r, tg_tps=20.0 + r)
    return b.write(lake)


def wilson(k, n, z=Z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_hand_run_energy(hand_lake):
    rows = view(connect(hand_lake), "run_energy", "WHERE run_id = 'hand-r1' ORDER BY start_ns")
    assert rows["phase"].to_list() == ["idle_baseline", "mmlu", "arc_challenge", "pp", "tg"]
    assert rows["window_kind"].to_list() == ["idle", "benchmark", "benchmark", "prefill", "decode"]
    k = hand_scale(1)
    w = {r["phase"]: r for r in rows.iter_rows(named=True)}
    assert w["mmlu"]["origin"] == "lab" and w["mmlu"]["repeat"] == 1 and w["mmlu"]["run_status"] == "finished"
    assert w["mmlu"]["simulated"] and w["mmlu"]["power_source"] == "simulated"
    idle = w["idle_baseline"]
    assert idle["energy_j"] == approx(4 * k * 10) and idle["avg_power_w"] == approx(4 * k)
    assert idle["net_energy_j"] is None and idle["idle_power_w"] is None  # no idle window before it
    mmlu = w["mmlu"]
    assert mmlu["elapsed_s"] == 10.0 and mmlu["energy_j"] == approx(6 * k * 10)
    assert mmlu["idle_power_w"] == approx(4 * k) and mmlu["net_energy_j"] == approx(6 * k * 10 - 4 * k * 10)
    assert mmlu["tokens"] == 4 * 250 and mmlu["j_per_token"] == approx(60 * k / 1000)
    assert mmlu["net_j_per_token"] == approx(20 * k / 1000)
    # 1 % accuracy class, 1 W resolution over 100 readings, no sampling error on a constant
    assert mmlu["energy_uncertainty_j"] == approx(math.sqrt((0.01 * 60 * k) ** 2 + (1 / math.sqrt(12) * 10 / 10) ** 2))
    assert mmlu["coverage"] == approx(1.0) and mmlu["valid"] and mmlu["invalid_reasons"] is None
    arc = w["arc_challenge"]  # the ramp: trapezoid exact; hold falls short by the rise x 0.1 s / 2
    assert arc["energy_j"] == approx((5 + 7) / 2 * k * 10) and arc["tokens"] == 5 * 200
    sampling = 2 * k * 0.1 / 2
    assert arc["energy_uncertainty_j"] == approx(math.sqrt((0.01 * 60 * k) ** 2 + (1 / math.sqrt(12)) ** 2 + sampling**2))
    assert w["pp"]["tokens"] == 64 * 5 and w["pp"]["j_per_token"] == approx(7 * k * 5 / 320)
    assert w["tg"]["tokens"] == 32 * 5 and w["tg"]["j_per_token"] == approx(5 * k * 5 / 160)
    gap = view(connect(hand_lake), "run_energy", "WHERE run_id = 'hand-r3' AND phase = 'mmlu'").row(0, named=True)
    # readings 14.0-18.0 s lost: the 13.9-18.1 s stretch counts one 0.1 s period
    assert gap["coverage"] == approx((10 - 4.2 + 0.1) / 10)
    assert not gap["valid"] and gap["invalid_reasons"] == "ch0: coverage 0.590 < 0.95"


def test_hand_run_accuracy(hand_lake):
    rows = view(connect(hand_lake), "run_accuracy", "WHERE run_id = 'hand-r0'")
    a = {r["benchmark"]: r for r in rows.iter_rows(named=True)}
    assert set(a) == {"mmlu", "arc_challenge", "composite"}
    assert (a["mmlu"]["n_questions"], a["mmlu"]["n_correct"], a["mmlu"]["accuracy"]) == (4, 3, 0.75)
    assert a["mmlu"]["question_set_sha256"] == sha("mmlu") and a["composite"]["question_set_sha256"] is None
    assert (a["mmlu"]["accuracy_ci_low"], a["mmlu"]["accuracy_ci_high"]) == tuple(map(approx, wilson(3, 4)))
    assert (a["arc_challenge"]["accuracy_ci_low"], a["arc_challenge"]["accuracy_ci_high"]) == tuple(map(approx, wilson(2, 5)))
    c = a["composite"]
    assert (c["n_questions"], c["n_correct"]) == (9, 5) and c["accuracy"] == approx((0.75 + 0.4) / 2)
    assert c["accuracy_ci_low"] == approx((wilson(3, 4)[0] + wilson(2, 5)[0]) / 2)
    assert c["accuracy_ci_high"] == approx((wilson(3, 4)[1] + wilson(2, 5)[1]) / 2)
    # the z of the interval is a variable
    wide = view(connect(hand_lake, mqepi_z=2.576), "run_accuracy", "WHERE run_id = 'hand-r0' AND benchmark = 'mmlu'")
    assert wide["accuracy_ci_low"][0] == approx(wilson(3, 4, 2.576)[0])
    # failed and unfinished runs still have their answers listed
    assert set(view(connect(hand_lake), "run_accuracy")["run_id"]) == {f"hand-r{r}" for r in range(6)}


def hand_run(r):
    """run_metrics of hand repeat r, by hand."""
    k = hand_scale(r)
    mmlu, arc = HAND_CORRECT[r]
    acc = (mmlu / 4 + arc / 5) / 2
    jpt = (60 * k + 60 * k) / 2000
    return {"j_per_token": jpt, "net_j_per_token": (20 * k + 20 * k) / 2000, "accuracy": acc, "epi": jpt / acc,
            "epi_mmlu": (60 * k / 1000) / (mmlu / 4), "epi_arc_challenge": (60 * k / 1000) / (arc / 5),
            "prefill_j_per_token": 35 * k / 320, "decode_j_per_token": 25 * k / 160, "avg_power_w": 6 * k,
            "idle_power_w": 4 * k, "benchmark_energy_j": 120 * k, "ppl": 20.0 + r, "kld_mean": 0.01 * (r + 1),
            "decode_tokens_per_s": 20.0 + r, "prefill_tokens_per_s": 100.0 + r}


def test_hand_run_metrics(hand_lake):
    rows = view(connect(hand_lake), "run_metrics", "ORDER BY run_id")
    assert rows["run_id"].to_list() == ["hand-r0", "hand-r1", "hand-r2", "hand-r3"]  # failed, unfinished: out
    assert rows["valid"].to_list() == [True, True, True, False]
    for row in rows.iter_rows(named=True):
        r = row["repeat"]
        expected = hand_run(r)
        if r == 3:
            assert row["invalid_reasons"] == "mmlu: ch0: coverage 0.590 < 0.95"
            continue
        assert row["invalid_reasons"] is None and row["n_benchmarks"] == 2 and row["benchmark_tokens"] == 2000
        for column, value in expected.items():
            assert row[column] == approx(value), (r, column)
        assert row["epi_hellaswag"] is None and row["simulated"] and row["same_top_p"] == 0.9
        # the run's own file (by file_sha256), not the later quantization of the config
        assert (row["file_size_bytes"], row["bits_per_weight"]) == (1_000_000, 4.5)


def bootstrap_by_hand(values, seed=1234, n_boot=1000):
    """The contract's scheme written out with Python integers and the statistics module."""
    n = len(values)
    medians = []
    for b in range(1, n_boot + 1):
        draws = []
        for j in range(n):
            x = (seed * 1000003 + b * 10007 + j * 101) % 2147483647
            x = (x * 48271) % 2147483647
            x ^= x >> 13
            x = (x * 48271) % 2147483647
            x ^= x >> 13
            draws.append(values[x % n])
        medians.append(statistics.median(draws))
    medians.sort()

    def quantile(q):  # linear interpolation between closest ranks
        pos = q * (len(medians) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(medians) - 1)
        return medians[lo] + (medians[hi] - medians[lo]) * (pos - lo)

    return quantile(0.025), quantile(0.975)


def _draw(seed, stream, b, j, n):
    """macros.sql mqepi_bootstrap_draw, with Python integers."""
    x = (seed * 1000003 + stream * 999999937 + b * 10007 + j * 101) % 2147483647
    for _ in range(2):
        x = (x * 48271) % 2147483647
        x ^= x >> 13
    return x % n


def _quantile(values, q):  # linear interpolation between closest ranks; infinite where it reaches inf
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    if values[lo] == math.inf or (values[hi] == math.inf and pos > lo):
        return math.inf
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def hierarchical_by_hand(runs, questions, seed=1234, n_boot=1000):
    """The hierarchical bootstrap (docs/analysis.md, "Uncertainty") written out with Python
    integers, math and statistics, for one configuration's valid runs in item order. ``runs``:
    dicts with run_key, energy_j, energy_u, tokens and answers {benchmark: {question: correct}};
    ``questions``: {benchmark: sorted question keys of the family}. Returns
    {metric: (low, high)} and the resample medians."""
    streams = {"mmlu": 1, "arc_challenge": 2, "hellaswag": 3}
    medians = {"j_per_token": [], "accuracy": [], "epi": []}
    n = len(runs)
    for b in range(1, n_boot + 1):
        drawn_q = {k: [qs[_draw(seed, streams[k], b, j, len(qs))] for j in range(len(qs))] for k, qs in questions.items()}
        values = []
        for run in runs:
            h = int(hashlib.md5(run["run_key"].encode()).hexdigest()[:7], 16)
            u1 = (_draw(seed, 101, b, h, 2147483647) + 0.5) / 2147483647
            u2 = (_draw(seed, 102, b, h, 2147483647) + 0.5) / 2147483647
            z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
            jpt = (run["energy_j"] + run["energy_u"] * z) / run["tokens"]
            accs = []
            for k in sorted(run["answers"]):
                picked = [q for q in drawn_q[k] if q in run["answers"][k]]
                accs.append(sum(run["answers"][k][q] for q in picked) / len(picked))
            acc = sum(accs) / len(accs)
            values.append((jpt, acc, jpt / acc if acc else math.inf))  # no right answer: infinite EPI
        picks = [values[_draw(seed, 0, b, j, n)] for j in range(n)]
        for m, col in (("j_per_token", 0), ("accuracy", 1), ("epi", 2)):
            vals = [v[col] for v in picks if v[col] is not None]
            medians[m].append(statistics.median(vals) if vals else None)
    out = {}
    for m, ms in medians.items():
        ms = [x for x in ms if x is not None]
        out[m] = (_quantile(ms, 0.025), _quantile(ms, 0.975))
    return out, medians


def hand_items(con, run_ids):
    """The hand lake's runs as hierarchical_by_hand wants them (energies and their
    uncertainty as run_metrics states them; answers as the Builder wrote them)."""
    rm = view(con, "run_metrics").filter(pl.col("run_id").is_in(run_ids)).sort("repeat")
    runs = []
    for row in rm.iter_rows(named=True):
        mmlu, arc = HAND_CORRECT[row["repeat"]]
        answers = {"mmlu": {f"{sha('mmlu')}/mmlu-{i}": i < mmlu for i in range(4)},
                   "arc_challenge": {f"{sha('arc_challenge')}/arc_challenge-{i}": i < arc for i in range(5)}}
        runs.append({"run_key": f"tiny/hand_q4/{row['run_id']}", "energy_j": row["benchmark_energy_j"],
                     "energy_u": row["benchmark_energy_uncertainty_j"], "tokens": row["benchmark_tokens"],
                     "answers": answers})
    questions = {k: sorted({q for r in runs for q in r["answers"][k]}) for k in ("mmlu", "arc_challenge")}
    return runs, questions


def test_hand_config_summary(hand_lake):
    rows = view(connect(hand_lake), "config_summary")
    assert rows.height == 1
    s = rows.row(0, named=True)
    assert (s["model"], s["config_id"], s["origin"], s["power_source"], s["simulated"]) == (
        "tiny", "hand_q4", "lab", "simulated", True)
    assert (s["kind"], s["early_type"], s["middle_type"], s["late_type"]) == ("mixed", "Q6_K", "Q4_K_M", "Q3_K_M")
    assert (s["n_repeats"], s["n_excluded"]) == (3, 1)  # repeat 3 invalid; the failed/unfinished not counted
    runs = [hand_run(r) for r in (0, 1, 2)]  # items in repeat order
    for column in ("j_per_token", "accuracy", "epi", "ppl", "kld_mean", "decode_tokens_per_s",
                   "prefill_j_per_token", "decode_j_per_token", "avg_power_w"):
        assert s[column] == approx(statistics.median(r[column] for r in runs)), column
    assert s["j_per_token"] == approx(0.066) and s["accuracy"] == approx(0.575)
    assert s["epi"] == approx(0.06 / 0.575)  # the median of the runs' EPI (repeat 0), not a ratio of medians
    assert (s["ppl_stderr"], s["file_size_bytes"], s["bits_per_weight"]) == (0.5, 1_000_000, 4.5)
    assert s["n_questions"] == 9 and s["config_ids"] == ["hand_q4"] and s["interval_note"] is None
    items, questions = hand_items(connect(hand_lake), ["hand-r0", "hand-r1", "hand-r2"])
    assert all(r["energy_u"] > 0 for r in items)
    by_hand, _ = hierarchical_by_hand(items, questions)
    for column in ("j_per_token", "accuracy", "epi"):
        low, high = by_hand[column]
        assert (s[f"{column}_ci_low"], s[f"{column}_ci_high"]) == (approx(low), approx(high)), column
        assert s[f"{column}_ci_low"] <= s[column] <= s[f"{column}_ci_high"]
    # questions and the meter widen the intervals beyond what the three repeats alone give
    for column in ("j_per_token", "accuracy"):
        low, high = bootstrap_by_hand([r[column] for r in runs])
        assert s[f"{column}_ci_high"] - s[f"{column}_ci_low"] > high - low, column


def test_columns_are_the_contract(hand_lake):
    views = {v.name: [c for c, _ in v.columns] for v in sql.views(connect(hand_lake))}
    assert views["run_energy"] == twin_runs.RUN_ENERGY_COLUMNS
    assert views["run_accuracy"] == twin_runs.RUN_ACCURACY_COLUMNS
    assert views["run_metrics"] == twin_runs.RUN_METRICS_COLUMNS
    assert views["config_summary"] == twin_runs.CONFIG_SUMMARY_COLUMNS
    assert twin_runs.CONFIG_SUMMARY_COLUMNS[:13] == [
        "model", "config_id", "origin", "power_source", "hardware_id", "config_ids", "simulated", "kind", "early_type",
        "middle_type", "late_type", "n_repeats", "n_excluded"]


# --------------------------------------------------------------------------- 2. SQL = Polars on a sweep

SWEEP_WINDOWS = [("idle_baseline", 10), ("mmlu", 6), ("arc_challenge", 6), ("hellaswag", 6), ("perplexity", 4),
                 ("kld", 4), ("pp", 4), ("tg", 4), ("pg", 4)]


def sweep_run(b: Builder, rng, *, model, config_id, run_id, repeat, origin="lab", source="simulated", level=7.0,
              acc=0.6, statuses=("started", "finished"), file_sha=None, channels=1, meter_clock=False, gap=None,
              all_wrong=(), one_right=(), hardware_id=None):
    key = {"model": model, "config_id": config_id, "run_id": run_id}
    windows, t = [], 0.0
    for name, length in SWEEP_WINDOWS:
        windows.append((name, t, t + length, None))
        t += length + 1
    b.run(key, statuses, repeat=repeat, source=source, file_sha=file_sha, origin=origin, hardware_id=hardware_id)
    b.phases(key, windows, origin=origin)
    k = np.arange(0, int(t * 10) + 1)
    host = T0 + k * 100 * MS + (rng.integers(1, 3, k.size) * MS if meter_clock else 0)
    busy = np.zeros(k.size, bool)
    for _, start, end, _ in windows[1:]:
        busy |= (k >= start * 10) & (k <= end * 10)
    keep = np.ones(k.size, bool) if gap is None else ~((k >= gap[0] * 10) & (k <= gap[1] * 10))
    meter = [int(x) for x in (k * 100 * MS * (1 + 100e-6) + 3 * S)[keep]] if meter_clock else None
    for ch in range(channels):
        base = (4.0, 3.6)[ch]
        p = np.where(busy, level - ch, base) + rng.normal(0, 0.2, k.size)
        b.power(key, host[keep], np.maximum(p, 0.0)[keep], channel=ch, node=f"node{ch}", source=source,
                meter_time_ns=meter, origin=origin)
    for bench in ("mmlu", "arc_challenge", "hellaswag"):
        correct = ([False] * 12 if bench in all_wrong else [True] + [False] * 11 if bench in one_right
                   else [bool(x) for x in rng.random(12) < acc])
        b.answers(key, bench, correct, [int(x) for x in rng.integers(150, 300, 12)], origin=origin)
    b.quality(key, ppl=float(20 + rng.random()), kld=float(0.05 * rng.random()), pp_tps=float(90 + rng.random() * 20),
              tg_tps=float(15 + rng.random() * 5), origin=origin)


@pytest.fixture(scope="module")
def sweep_lake(tmp_path_factory):
    lake = Lake(tmp_path_factory.mktemp("sweep") / "lake")
    lake.init()
    rng = np.random.default_rng(8)
    b = Builder()
    uniform = [("early", "Q4_K_M"), ("middle", "Q4_K_M"), ("late", "Q4_K_M")]
    b.config("m1", "uniform_q4", uniform, kind="uniform")
    b.config("m1", "uniform_q4", uniform, kind="uniform", origin="community/alice")
    b.config("m1", "mix_a", [("early", "Q6_K"), ("middle", "Q4_K_M"), ("late", "Q3_K")], kind="mixed")
    b.config("m1", "uniform_q8", [("g0", "Q8_0")], kind="uniform")  # no early/middle/late names
    b.quantization("m1", "uniform_q4", sha("q4"), 80_000_000, 4.8)
    b.quantization("m1", "uniform_q4", sha("q4-alice"), 81_000_000, 4.85, origin="community/alice")
    b.quantization("m1", "mix_a", sha("mix-old"), 90_000_000, 5.1, recorded_at_ns=T0)
    b.quantization("m1", "mix_a", sha("mix-new"), 91_000_000, 5.2, recorded_at_ns=T0 + S)  # runs name no file
    b.quantization("m1", "uniform_q8", sha("q8"), 140_000_000, 8.5)
    for r in range(4):  # lab uniform_q4: repeat 3 lost lines in hellaswag
        sweep_run(b, rng, model="m1", config_id="uniform_q4", run_id=f"q4-r{r}", repeat=r, level=6.5, acc=0.55,
                  file_sha=sha("q4"), meter_clock=True, gap=(27.5, 31.0) if r == 3 else None)
    for r in range(3):  # the same configuration measured by a community submitter
        sweep_run(b, rng, model="m1", config_id="uniform_q4", run_id=f"alice-q4-r{r}", repeat=r,
                  origin="community/alice", level=7.5, acc=0.5, file_sha=sha("q4-alice"))
    for r, statuses in enumerate([("started", "finished")] * 3 + [("started", "failed"), ("started",)]):
        sweep_run(b, rng, model="m1", config_id="mix_a", run_id=f"mix-r{r}", repeat=r, source="replay", level=7.0,
                  acc=0.6, channels=2, statuses=statuses)
    # the same effective model as mix_a under another name (its latest file's tensors), measured
    # twice: pooled into mix_a's row; and an alias of uniform_q4 the sweep did not measure
    b.quantization("m1", "mix_b", sha("mix-new"), 91_000_000, 5.2)
    for r in range(2):
        sweep_run(b, rng, model="m1", config_id="mix_b", run_id=f"mixb-r{r}", repeat=r, source="replay", level=7.1,
                  acc=0.6, channels=2)
    b.add("config_alias", "lab", model="m1", config_id="uniform_q4_twin", alias_of="uniform_q4",
          map_sha256=sha("uniform_q4_twin"), base_sha256=sha("base"), effective_map_sha256=sha(sha("q4")))
    for r in range(8):
        sweep_run(b, rng, model="m1", config_id="uniform_q8", run_id=f"q8-r{r}", repeat=r, level=8.0, acc=0.65,
                  file_sha=sha("q8"), all_wrong=("mmlu",) if r == 7 else ())
    return b.write(lake)


@pytest.fixture(scope="module")
def sweep(sweep_lake):
    """(SQL views, Polars twin) of the sweep lake."""
    con = connect(sweep_lake)
    via_sql = {name: view(con, name) for name in ("run_energy", "run_accuracy", "run_metrics", "config_identity",
                                                  "config_summary")}
    return via_sql, twin_runs.all_views(sweep_lake)


KEYS = {"run_energy": ["model", "config_id", "run_id", "start_ns", "phase"],
        "run_accuracy": ["model", "config_id", "run_id", "benchmark"],
        "run_metrics": ["model", "config_id", "run_id"],
        "config_identity": ["model", "origin", "config_id"],
        "config_summary": ["model", "config_id", "origin", "power_source", "hardware_id"]}


def assert_frames_agree(a: pl.DataFrame, b: pl.DataFrame, key: list[str], what: str):
    assert a.columns == b.columns, what
    assert a.height == b.height > 0, what
    a, b = a.sort(key), b.sort(key)
    for column in a.columns:
        x, y = a[column].to_list(), b[column].to_list()
        for i, (u, v) in enumerate(zip(x, y)):
            row = a.row(i, named=True)
            where = (what, column, row[key[-1]], row["run_id" if "run_id" in key else "config_id"])
            assert (u is None) == (v is None), (*where, u, v)
            if isinstance(u, float):
                assert u == pytest.approx(v, rel=1e-9, abs=1e-12), (*where, u, v)
            else:
                assert u == v, (*where, u, v)


SWEEP_ROWS = {"run_energy": 22 * len(SWEEP_WINDOWS), "run_accuracy": 22 * 4, "run_metrics": 20, "config_identity": 6,
              "config_summary": 4}


@pytest.mark.parametrize("name", list(KEYS))
def test_sql_and_polars_twin_agree(sweep, name):
    via_sql, via_polars = sweep
    assert via_sql[name].height == SWEEP_ROWS[name]  # every window, run, group: none lost
    assert_frames_agree(via_sql[name], via_polars[name], KEYS[name], name)


@pytest.mark.parametrize("name, where", [
    ("run_energy", "run_id = 'q4-r0'"), ("run_energy", "model = 'm1' AND config_id = 'mix_a'"),
    ("run_accuracy", "run_id = 'mix-r0'"), ("run_metrics", "run_id = 'q8-r0'"),
    ("run_metrics", "config_id = 'uniform_q4' AND origin = 'lab'"), ("config_summary", "origin = 'lab'"),
    ("config_summary", "model = 'm1' AND config_id = 'uniform_q4'")])
def test_filtered_queries_see_the_same_rows(sweep, sweep_lake, name, where):
    """A WHERE on a view (pushed into the Parquet scans) returns exactly its rows of the whole view."""
    filtered = view(connect(sweep_lake), name, f"WHERE {where}")
    expected = pl.SQLContext(whole=sweep[0][name]).execute(f"SELECT * FROM whole WHERE {where}", eager=True)
    assert filtered.height == expected.height > 0
    assert_frames_agree(filtered, expected, KEYS[name], f"{name} WHERE {where}")


def test_sweep_says_what_happened(sweep):
    metrics = sweep[0]["run_metrics"]
    runs = {r["run_id"]: r for r in metrics.iter_rows(named=True)}
    assert not runs["q4-r3"]["valid"] and runs["q4-r3"]["invalid_reasons"].startswith("hellaswag: ch0: coverage")
    assert runs["mix-r0"]["valid"] and not runs["mix-r0"]["simulated"]  # replay: not simulated, two channels
    assert (runs["mix-r0"]["file_size_bytes"], runs["mix-r0"]["bits_per_weight"]) == (91_000_000, 5.2)  # latest
    assert runs["alice-q4-r0"]["file_size_bytes"] == 81_000_000  # its own file, by sha
    assert runs["q8-r7"]["epi_mmlu"] is None and runs["q8-r7"]["epi"] is not None  # mmlu accuracy 0
    energy = sweep[0]["run_energy"]
    kinds = dict(energy.filter(pl.col("run_id") == "mix-r0").select("phase", "window_kind").iter_rows())
    assert kinds == {"idle_baseline": "idle", "mmlu": "benchmark", "arc_challenge": "benchmark",
                     "hellaswag": "benchmark", "perplexity": "perplexity", "kld": "kld", "pp": "prefill",
                     "tg": "decode", "pg": "other"}
    summary = {(r["config_id"], r["origin"]): r for r in sweep[0]["config_summary"].iter_rows(named=True)}
    assert summary[("uniform_q8", "lab")]["early_type"] is None and summary[("uniform_q8", "lab")]["kind"] == "uniform"
    assert summary[("mix_a", "lab")]["late_type"] == "Q3_K" and summary[("mix_a", "lab")]["power_source"] == "replay"


# --------------------------------------------------------------------------- 3. the seeded bootstrap


def test_bootstrap_indices_follow_the_contract():
    for seed, b, n in ((1234, 1, 3), (0, 7, 5), (2147483647, 1000, 11)):
        expected = []
        for j in range(n):
            x = (seed * 1000003 + b * 10007 + j * 101) % 2147483647
            x = x * 48271 % 2147483647
            x ^= x >> 13
            x = x * 48271 % 2147483647
            x ^= x >> 13
            expected.append(x % n)
        assert bootstrap.resample_indices(seed, b, n).tolist() == expected
    matrix = bootstrap.index_matrix(1234, 4, 5)
    assert [row.tolist() for row in matrix] == [bootstrap.resample_indices(1234, b, 4).tolist() for b in range(1, 6)]
    with pytest.raises(ValueError, match="mqepi_seed"):
        bootstrap.resample_indices(-1, 1, 3)


def test_bootstrap_is_seeded(sweep_lake):
    where = "WHERE config_id = 'uniform_q8' ORDER BY ALL"
    columns = "j_per_token_ci_low, j_per_token_ci_high, accuracy_ci_low, accuracy_ci_high, epi_ci_low, epi_ci_high"
    # few resamples: with the contract's draw scheme, b = 1..B walks an evenly spread sequence,
    # so the quantiles of many resamples hardly depend on the seed
    con = connect(sweep_lake, mqepi_bootstrap=5)

    def intervals():
        rows = con.sql(f"SELECT {columns} FROM config_summary {where}").fetchall()
        assert len(rows) == 1
        return rows[0]

    first = intervals()
    # the same seed (the default, 1234) again: the same intervals. Only to 1e-12, because
    # window_energy_total's parallel sums may differ in the last bit between queries
    assert intervals() == tuple(pytest.approx(x, rel=1e-12) for x in first)
    con.execute("SET VARIABLE mqepi_seed = 1234")
    assert intervals() == tuple(pytest.approx(x, rel=1e-12) for x in first)
    con.execute("SET VARIABLE mqepi_seed = 99")
    other = intervals()
    assert other != tuple(pytest.approx(x, rel=1e-6) for x in first)
    # the twin draws the same resamples for each seed, and is bit-for-bit repeatable
    metrics = twin_runs.run_metrics(sweep_lake)
    for seed, got in ((1234, first), (99, other)):
        twin = twin_runs.config_summary(sweep_lake, seed=seed, n_boot=5, metrics=metrics)
        assert twin.equals(twin_runs.config_summary(sweep_lake, seed=seed, n_boot=5, metrics=metrics))
        twin = twin.filter(pl.col("config_id") == "uniform_q8").select(columns.split(", ")).rows()
        assert twin[0] == tuple(approx(x) for x in got)
    con.execute("SET VARIABLE mqepi_seed = -5")
    with pytest.raises(Exception, match="mqepi_seed must be"):
        intervals()


# --------------------------------------------------------------------------- 4. exclusions and origins


def test_failed_and_unfinished_runs_are_not_results(sweep):
    via_sql = sweep[0]
    assert {"mix-r3", "mix-r4"}.isdisjoint(via_sql["run_metrics"]["run_id"].to_list())
    status = dict(via_sql["run_energy"].select("run_id", "run_status").unique().iter_rows())
    assert (status["mix-r3"], status["mix-r4"], status["mix-r0"]) == ("failed", "started", "finished")
    mix = via_sql["config_summary"].filter(pl.col("config_id") == "mix_a").row(0, named=True)
    assert (mix["n_repeats"], mix["n_excluded"]) == (5, 0)  # mix_b's two runs are the same model's
    assert mix["config_ids"] == ["mix_a", "mix_b"]
    q4 = via_sql["config_summary"].filter((pl.col("config_id") == "uniform_q4") & (pl.col("origin") == "lab"))
    assert (q4["n_repeats"][0], q4["n_excluded"][0]) == (3, 1)


def test_lab_and_community_are_never_pooled(sweep):
    via_sql = sweep[0]
    q4 = via_sql["config_summary"].filter(pl.col("config_id") == "uniform_q4").sort("origin")
    assert q4["origin"].to_list() == ["community/alice", "lab"] and q4["n_repeats"].to_list() == [3, 3]
    metrics = via_sql["run_metrics"].filter((pl.col("config_id") == "uniform_q4") & pl.col("valid"))
    for origin in ("lab", "community/alice"):
        mine = metrics.filter(pl.col("origin") == origin)
        row = q4.filter(pl.col("origin") == origin).row(0, named=True)
        assert mine.height == 3 and set(mine["run_id"].str.starts_with("alice")) == {origin != "lab"}
        assert row["j_per_token"] == approx(statistics.median(mine["j_per_token"].to_list()))
        assert row["accuracy"] == approx(statistics.median(mine["accuracy"].to_list()))
    # every run-level row carries its origin; the community runs' windows say so too
    energy = via_sql["run_energy"]
    assert set(energy.filter(pl.col("run_id").str.starts_with("alice"))["origin"]) == {"community/alice"}
    assert energy["origin"].null_count() == 0 and via_sql["run_accuracy"]["origin"].null_count() == 0


# --------------------------------------------------------------------------- hardware


HW_A, HW_B = "hw-aaaaaaaaaaaa", "hw-bbbbbbbbbbbb"


@pytest.fixture(scope="module")
def hardware_lake(tmp_path_factory):
    """uniform_q4 measured on two hardware profiles (3 runs each) and by 2 runs written before
    runs carried a hardware_id (null)."""
    lake = Lake(tmp_path_factory.mktemp("hardware") / "lake")
    lake.init()
    rng = np.random.default_rng(19)
    b = Builder()
    b.config("m1", "uniform_q4", [("early", "Q4_K_M"), ("middle", "Q4_K_M"), ("late", "Q4_K_M")], kind="uniform")
    b.quantization("m1", "uniform_q4", sha("q4"), 80_000_000, 4.8)
    for hw, level, n in ((HW_A, 6.0, 3), (HW_B, 9.0, 3), (None, 7.0, 2)):
        for r in range(n):
            sweep_run(b, rng, model="m1", config_id="uniform_q4", run_id=f"{hw or 'old'}-r{r}", repeat=r, level=level,
                      file_sha=sha("q4"), hardware_id=hw)
    return b.write(lake)


def test_hardware_profiles_are_never_pooled(hardware_lake):
    con = connect(hardware_lake, mqepi_bootstrap=200)
    summary = view(con, "config_summary").sort("hardware_id")
    assert summary["hardware_id"].to_list() == [HW_A, HW_B, "unknown"]  # runs without one: a group of their own
    assert summary["n_repeats"].to_list() == [3, 3, 2]
    metrics = view(con, "run_metrics")
    for row in summary.iter_rows(named=True):
        mine = metrics.filter(pl.col("hardware_id") == row["hardware_id"])
        assert row["j_per_token"] == approx(statistics.median(mine["j_per_token"].to_list()))
    assert dict(metrics.select("run_id", "hardware_id").iter_rows())["old-r0"] == "unknown"
    for name in ("run_energy", "run_accuracy"):
        got = view(con, name).select("run_id", "hardware_id").unique()
        assert got["hardware_id"].null_count() == 0
        assert dict(got.iter_rows())[f"{HW_B}-r1"] == HW_B
    twin = twin_runs.all_views(hardware_lake, n_boot=200)
    for name in ("run_energy", "run_accuracy", "run_metrics", "config_summary"):
        assert_frames_agree(view(con, name), twin[name], KEYS[name], name)
