"""An independent Polars/numpy twin of ``analysis/frontier.sql`` (matched_pairs, pareto_frontier).

Written from the rules in docs/frontier.md, not from the SQL: tests compute both views both
ways on the same data and compare them (style lesson 11). Inputs are Polars frames shaped
like the views the SQL reads: ``run_metrics`` and ``config_summary`` (runs.sql) and
``benchmark_answer`` (views.sql); only the columns named below are used, so tests can build
them by hand.

    run_metrics:      model, config_id, run_id, origin, repeat, power_source, hardware_id, valid,
                      accuracy, j_per_token, epi
    config_summary:   model, config_id, origin, power_source, hardware_id, simulated, kind, accuracy,
                      j_per_token, epi, accuracy_ci_low, accuracy_ci_high,
                      j_per_token_ci_low, j_per_token_ci_high, ppl, ppl_stderr
    benchmark_answer: model, config_id, origin, run_id, question_set_sha256, question_id,
                      correct; for the flip columns also benchmark, predicted, scoring,
                      recorded_at_ns, event_id (absent: null, i.e. no prediction known)

The draws, medians and intervals are the shared seeded bootstrap
(:mod:`mqepi.analysis.bootstrap`); the output columns are the contract's
(:mod:`mqepi.analysis.contract`). Missing values (null) are carried as NaN inside and ignored
by medians and quantiles, as SQL ignores NULL.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import polars as pl

from mqepi.analysis import MACROS_SQL, bootstrap, hierarchical, twin_flips
from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.analysis.contract import CONFIG_KEY, FAMILY_KEY, VIEWS
from mqepi.analysis.stats import DEFAULT_Z
from mqepi.analysis.twin_runs import boot_items

GROUP = list(FAMILY_KEY)
CONFIG = list(CONFIG_KEY)
PAIR = [*GROUP, "config_a", "config_b"]
#: What each side of a pair takes from config_summary (suffixed _a / _b).
SIDE = ("config_id", "ppl", "ppl_stderr", "j_per_token", "epi")


# --------------------------------------------------------------------------- building blocks


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p: min(1, 2 * P(X <= min(b, c))), X ~ Bin(b + c, 1/2); 1 when b + c = 0.

    Exact rational arithmetic, rounded once.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    term = tail = 1  # C(m, 0)
    for i in range(1, min(b, c) + 1):
        term = term * (m - i + 1) // i  # C(m, i), exact
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def _as_points(acc, jpt) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(acc, dtype=float)
    j = np.asarray(jpt, dtype=float)
    if a.shape != j.shape or a.ndim != 1:
        raise ValueError(f"accuracy and J/token must be 1-d arrays of one length, got {a.shape} and {j.shape}")
    return a, j


def pareto_mask(acc, jpt) -> np.ndarray:
    """True where the point (accuracy up, J/token down) is not dominated; O(n log n).

    x dominates y when acc_x >= acc_y and jpt_x <= jpt_y with at least one strict, so an exact
    duplicate does not dominate its twin. A non-finite (or None) coordinate makes no point:
    False, and it dominates nothing.
    """
    a, j = _as_points(acc, jpt)
    mask = np.zeros(a.shape, dtype=bool)
    ok = np.flatnonzero(np.isfinite(a) & np.isfinite(j))
    if ok.size == 0:
        return mask
    order = ok[np.lexsort((j[ok], -a[ok]))]  # accuracy descending, J/token ascending
    sa, sj = a[order], j[order]
    starts = np.flatnonzero(np.r_[True, sa[1:] != sa[:-1]])  # first index of each accuracy level
    level = np.cumsum(np.r_[True, sa[1:] != sa[:-1]]) - 1
    level_min = sj[starts]  # sorted ascending within a level
    better_min = np.r_[np.inf, np.minimum.accumulate(level_min)[:-1]]  # over strictly higher accuracy
    dominated = (level_min[level] < sj) | (better_min[level] <= sj)
    mask[order] = ~dominated
    return mask


def pareto_bruteforce(acc, jpt) -> np.ndarray:
    """The same as :func:`pareto_mask` by comparing every pair, O(n^2): the test oracle."""
    a, j = _as_points(acc, jpt)
    finite = np.isfinite(a) & np.isfinite(j)
    mask = np.zeros(a.shape, dtype=bool)
    for y in range(a.size):
        if not finite[y]:
            continue
        mask[y] = not any(
            finite[x] and a[x] >= a[y] and j[x] <= j[y] and (a[x] > a[y] or j[x] < j[y]) for x in range(a.size)
        )
    return mask


def _float(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()



# --------------------------------------------------------------------------- matched_pairs

#: One-sided 5 % normal quantile (the unpaired test) and Student's t (the paired one).
Z95 = 1.6448536269514722


def t95(df: int) -> float:
    """The 95 % quantile of Student's t (macros.sql mqepi_t95): the table for df <= 100, the
    Cornish-Fisher expansion above."""
    if df <= 100:
        return T95_TABLE[df - 1]
    v, z = float(df), Z95
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v * v)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * v ** 4))


def _t_table() -> list[float]:
    """The table of macros.sql (read from it: one copy of the numbers)."""
    text = MACROS_SQL.read_text()
    body = text[text.index("WHEN df <= 100 THEN ["):]
    body = body[:body.index("]")]
    return [float(x) for x in re.findall(r"\d+\.\d+", body)]


T95_TABLE = _t_table()


def _chunks(events: pl.DataFrame | None, column: str, key_cols: list[str], items: pl.DataFrame) -> dict[str, dict]:
    """Per configuration (ckey): its chunks of the variant (text, context, n) measured by most
    runs, each chunk the mean over those runs of the latest event of each valid run."""
    if events is None or events.is_empty() or column not in events.columns:
        return {}
    latest = (events.filter(pl.col(column).is_not_null() & (pl.col(column).list.len() > 0))
              .with_columns(run_key=pl.concat_str("model", "config_id", "run_id", separator="/"),
                            text=pl.concat_str(key_cols, separator="/"))
              .sort(["recorded_at_ns", "event_id"], descending=True)
              .unique("run_key", keep="first")
              .join(items.select("run_key", "ckey"), on="run_key"))
    out: dict[str, dict] = {}
    for (ckey,), rows in latest.group_by("ckey", maintain_order=True):
        variants = {}
        for r in rows.sort("run_key").iter_rows(named=True):
            xs = r[column]
            variants.setdefault((r["text"], r["context"], len(xs)), []).append(xs)
        best = max(variants, key=lambda v: (len(variants[v]), v))
        runs = variants[best]
        out[ckey] = {"text": best[0], "context": best[1], "n": best[2],
                     "xs": [sum(run[k] for run in runs) / len(runs) for k in range(best[2])]}
    return out


def _paired_test(a: dict | None, b: dict | None) -> tuple[int, float, float | None] | None:
    """(n, mean difference b - a, half width of the 90 % t interval or None) over the same
    chunks, or None when the two do not share text, context and chunk count."""
    if a is None or b is None or (a["text"], a["context"], a["n"]) != (b["text"], b["context"], b["n"]):
        return None
    d = np.array(b["xs"]) - np.array(a["xs"])
    n = d.size
    half = t95(n - 1) * float(np.std(d, ddof=1)) / math.sqrt(n) if n >= 2 else None
    return n, float(np.mean(d)), half


def _verdict(centre: float | None, half: float | None, limit: float) -> str:
    if centre is None or half is None:
        return "inconclusive"
    if centre - half >= -limit and centre + half <= limit:
        return "matched"
    if centre - half > limit or centre + half < -limit:
        return "different"
    return "inconclusive"


def _answers_by_run(benchmark_answer: pl.DataFrame) -> dict[tuple, dict]:
    """(model, origin, config_id, run_id) -> {(question_set, question_id): right}; a question
    answered twice in one run is right only if every answer is."""
    out: dict[tuple, dict] = {}
    agg = (benchmark_answer.group_by("model", "config_id", "origin", "run_id", "question_set_sha256", "question_id")
           .agg(pl.col("correct").all()))
    for r in agg.iter_rows(named=True):
        out.setdefault((r["model"], r["origin"], r["config_id"], r["run_id"]), {})[
            (r["question_set_sha256"], r["question_id"])] = r["correct"]
    return out


def _results(config_summary: pl.DataFrame) -> pl.DataFrame:
    """config_summary without the per-layer search's sensitivity probes (kind 'probe'): no results."""
    return config_summary.filter(pl.col("kind").ne_missing("probe"))


def _identity_or_own(identity: pl.DataFrame | None) -> pl.DataFrame:
    return pl.DataFrame(schema=VIEWS["config_identity"]) if identity is None else identity


def _finite_epi(values: np.ndarray) -> np.ndarray:
    """An infinite EPI (accuracy 0) gives no EPI difference: NaN."""
    return np.where(values >= hierarchical.INFINITE_FROM, np.nan, values)


def _difference_interval(resampled: dict[str, np.ndarray], keys_a: list[str], keys_b: list[str], seed: int,
                         n_boot: int) -> tuple[float | None, float | None, bool]:
    d = [_finite_epi(resampled[b]) - _finite_epi(resampled[a]) for a, b in zip(keys_a, keys_b)]
    stats = hierarchical.pick_medians(d, seed, n_boot)
    return hierarchical.interval(stats)


def matched_pairs(run_metrics: pl.DataFrame, config_summary: pl.DataFrame, benchmark_answer: pl.DataFrame, *,
                  identity: pl.DataFrame | None = None, perplexity: pl.DataFrame | None = None,
                  kld: pl.DataFrame | None = None, seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP,
                  ppl_margin: float = 0.01, kld_margin: float | None = None, z: float = DEFAULT_Z) -> pl.DataFrame:
    """The matched_pairs view: every pair of a family with perplexities, their equivalence
    tests, and the paired hierarchical bootstrap of their differences."""
    bootstrap.check_params(seed, n_boot)
    if ppl_margin is None or ppl_margin <= 0:
        raise ValueError(f"mqepi_ppl_margin must be > 0, got {ppl_margin}")
    if kld_margin is not None and kld_margin <= 0:
        raise ValueError(f"mqepi_kld_margin must be > 0, got {kld_margin}")
    items = boot_items(run_metrics, _identity_or_own(identity))
    resampled = hierarchical.run_resamples(items, benchmark_answer, seed, n_boot)
    ppl_chunks = _chunks(perplexity, "chunk_nll", ["text_sha256"], items)
    kld_chunks = _chunks(kld, "chunk_kld", ["base_sha256", "text_sha256"], items)
    answers = _answers_by_run(benchmark_answer)
    flip_answers = twin_flips.choose_answers(items, benchmark_answer)
    reps: dict[str, dict[int, dict]] = {}
    for r in items.sort("run_id").iter_rows(named=True):
        reps.setdefault(r["ckey"], {}).setdefault(r["repeat"], r)
    cs = _results(config_summary).sort(CONFIG)
    rule = f"TOST at 90%: perplexity ratio within 1 +/- {ppl_margin * 100:g}%" + (
        f", KLD difference within +/- {kld_margin:g} nats" if kld_margin is not None else "")
    limit = math.log(1 + ppl_margin)
    rows = []
    for _, group in cs.group_by(GROUP, maintain_order=True):
        group = group.filter(pl.col("ppl").is_not_null())
        recs = list(group.iter_rows(named=True))
        for x, a in enumerate(recs):
            for b in recs[x + 1:]:
                tests = _tests(a, b, limit, kld_margin, ppl_chunks, kld_chunks)
                if tests["ppl_verdict"] == "different" or tests["kld_verdict"] == "different":
                    continue  # shown to differ: no candidate for a matched pair
                row = _pair_row(a, b, rule, tests, ppl_margin, kld_margin, reps, resampled, answers, seed, n_boot)
                rows.append(row | twin_flips.pair_flips(flip_answers, _ckey(a), _ckey(b), z))
    return pl.DataFrame(rows, schema=VIEWS["matched_pairs"])


def _ckey(r: dict) -> str:
    return "/".join([r["model"], r["origin"], r["power_source"], r["hardware_id"], r["config_id"]])


def _tests(a: dict, b: dict, limit: float, kld_margin: float | None, ppl_chunks: dict, kld_chunks: dict) -> dict:
    """The pair's equivalence tests: perplexity (paired over chunks, else unpaired) and KLD."""
    ka, kb = _ckey(a), _ckey(b)
    test = _paired_test(ppl_chunks.get(ka), ppl_chunks.get(kb)) if ppl_chunks else None
    if test is not None:
        n_chunks, centre, half = test
        ppl_test = f"paired t over {n_chunks} chunks"
    else:
        n_chunks, ppl_test = None, "unpaired normal (no chunks recorded)"
        centre = math.log(b["ppl"]) - math.log(a["ppl"])
        sa, sb = a["ppl_stderr"], b["ppl_stderr"]
        half = (Z95 * math.sqrt((sa / a["ppl"]) ** 2 + (sb / b["ppl"]) ** 2)
                if sa is not None and sb is not None and sa + sb > 0 else None)
    ktest = _paired_test(kld_chunks.get(ka), kld_chunks.get(kb)) if kld_chunks else None
    kld_diff, kld_half = (ktest[1], ktest[2]) if ktest else (None, None)
    return {"n_chunks": n_chunks, "ppl_test": ppl_test, "centre": centre, "half": half,
            "ppl_verdict": _verdict(centre, half, limit), "kld_diff": kld_diff, "kld_half": kld_half,
            "kld_verdict": None if kld_margin is None else _verdict(kld_diff, kld_half, kld_margin)}


def _pair_row(a: dict, b: dict, rule: str, tests: dict, ppl_margin: float, kld_margin: float | None, reps: dict,
              resampled, answers: dict, seed: int, n_boot: int) -> dict:
    ka, kb = _ckey(a), _ckey(b)
    n_chunks, ppl_test, centre, half = tests["n_chunks"], tests["ppl_test"], tests["centre"], tests["half"]
    ppl_verdict, kld_verdict = tests["ppl_verdict"], tests["kld_verdict"]
    kld_diff, kld_half = tests["kld_diff"], tests["kld_half"]
    matched = ppl_verdict == "matched" and (kld_margin is None or kld_verdict == "matched")

    ra, rb = reps.get(ka, {}), reps.get(kb, {})
    common = sorted((rep, ra[rep]["run_id"]) for rep in ra if rep in rb)
    pairs = [(ra[rep], rb[rep]) for rep, _ in common]
    keys_a = [x["run_key"] for x, _ in pairs]
    keys_b = [y["run_key"] for _, y in pairs]
    row = {k: a[k] for k in (*GROUP, "simulated")}
    row.update(config_a=a["config_id"], config_b=b["config_id"], ppl_a=a["ppl"], ppl_b=b["ppl"],
               ppl_stderr_a=a["ppl_stderr"], ppl_stderr_b=b["ppl_stderr"], ppl_diff=b["ppl"] - a["ppl"],
               match_rule=rule, ppl_test=ppl_test, n_chunks=n_chunks, log_ppl_ratio=centre,
               log_ppl_ratio_ci_low=None if half is None else centre - half,
               log_ppl_ratio_ci_high=None if half is None else centre + half,
               ppl_margin=ppl_margin, ppl_verdict=ppl_verdict, kld_a=a["kld_mean"], kld_b=b["kld_mean"],
               kld_diff=kld_diff, kld_diff_ci_low=None if kld_half is None else kld_diff - kld_half,
               kld_diff_ci_high=None if kld_half is None else kld_diff + kld_half,
               kld_margin=kld_margin, kld_verdict=kld_verdict, matched=matched)
    notes = []
    if n_chunks == 1:
        notes.append("one chunk: no interval for the perplexity ratio")
    if n_chunks is None and half is None:
        notes.append("no chunks and no perplexity uncertainty: no interval")
    if not pairs:
        notes.append("no paired repeats: no differences")
    labels = {"j_per_token": "J/token", "accuracy": "accuracy", "epi": "EPI"}
    for name in ("j_per_token", "accuracy", "epi"):
        row[f"{name}_a"], row[f"{name}_b"] = a[name], b[name]
        point = np.array([np.nan if y[name] is None or x[name] is None else y[name] - x[name] for x, y in pairs])
        row[f"{name}_diff"] = _median(point) if pairs else None
        low = high = None
        if pairs:
            low, high, flat = _difference_interval(getattr(resampled, name), keys_a, keys_b, seed, n_boot)
            if flat:
                notes.append(f"{labels[name]} difference: every resample gives the same value")
        row[f"{name}_diff_ci_low"], row[f"{name}_diff_ci_high"] = low, high
    nq = mb = mc = 0
    for x, y in pairs:
        xa = answers.get((x["model"], x["origin"], x["config_id"], x["run_id"]), {})
        xb = answers.get((y["model"], y["origin"], y["config_id"], y["run_id"]), {})
        for q, right_a in xa.items():
            if q in xb:
                nq += 1
                mb += bool(right_a and not xb[q])
                mc += bool(not right_a and xb[q])
    row.update(n_paired_repeats=len(pairs), n_questions_paired=nq, mcnemar_b=mb, mcnemar_c=mc,
               mcnemar_p=mcnemar_p(mb, mc) if nq else None, note="; ".join(notes) or None)
    return row


# --------------------------------------------------------------------------- pareto_frontier


def _uniform_flags(acc: np.ndarray, jpt: np.ndarray, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per configuration of a group: a uniform one at least as good in both (weakly matched),
    and one that dominates it."""
    finite = np.isfinite(acc) & np.isfinite(jpt)
    uniform = finite & uniform
    weakly = np.zeros(acc.size, dtype=bool)
    dominated = np.zeros(acc.size, dtype=bool)
    for k in np.flatnonzero(finite):
        weak = uniform & (acc >= acc[k]) & (jpt <= jpt[k])
        weakly[k] = weak.any()
        dominated[k] = (weak & ((acc > acc[k]) | (jpt < jpt[k]))).any()
    return weakly, dominated


def _frontier_probability(group: pl.DataFrame, by_config: dict, resampled, seed: int, n_boot: int) -> list[float | None]:
    """Per configuration of a group: the share of resamples in which it is on the frontier
    (None without a valid repeat). In resample b each configuration's point is its point in
    config_summary's resample b (the hierarchical bootstrap)."""
    boot_acc = np.full((n_boot, group.height), np.nan)
    boot_jpt = np.full((n_boot, group.height), np.nan)
    has = np.zeros(group.height, dtype=bool)
    for k, row in enumerate(group.iter_rows(named=True)):
        keys = by_config.get(_ckey(row))
        if not keys:
            continue
        has[k] = True
        boot_acc[:, k] = hierarchical.pick_medians([resampled.accuracy[x] for x in keys], seed, n_boot)
        boot_jpt[:, k] = hierarchical.pick_medians([resampled.j_per_token[x] for x in keys], seed, n_boot)
    hits = np.zeros(group.height, dtype=np.int64)
    for r in range(n_boot):
        hits += pareto_mask(boot_acc[r], boot_jpt[r])
    return [hits[k] / n_boot if has[k] else None for k in range(group.height)]


def pareto_frontier(run_metrics: pl.DataFrame, config_summary: pl.DataFrame, benchmark_answer: pl.DataFrame | None = None,
                    *, identity: pl.DataFrame | None = None, seed: int = DEFAULT_SEED,
                    n_boot: int = DEFAULT_BOOTSTRAP) -> pl.DataFrame:
    """The pareto_frontier view: one row per config_summary row (kind 'probe' left out)."""
    bootstrap.check_params(seed, n_boot)
    cs = _results(config_summary).sort(CONFIG).with_row_index("_row")
    items = boot_items(run_metrics, _identity_or_own(identity))
    answers = benchmark_answer if benchmark_answer is not None else pl.DataFrame(
        schema={"model": pl.Utf8, "config_id": pl.Utf8, "run_id": pl.Utf8, "benchmark": pl.Utf8,
                "question_set_sha256": pl.Utf8, "question_id": pl.Utf8, "correct": pl.Boolean})
    resampled = hierarchical.run_resamples(items, answers, seed, n_boot)
    by_config = {ckey: frame["run_key"].to_list()
                 for (ckey,), frame in items.sort(["ckey", "i"]).group_by("ckey", maintain_order=True)}

    on_frontier = np.zeros(cs.height, dtype=bool)
    probability: list[float | None] = [None] * cs.height
    uniform_dominated = np.zeros(cs.height, dtype=bool)
    weakly_matched = np.zeros(cs.height, dtype=bool)
    for _, group in cs.group_by(GROUP, maintain_order=True):
        rows = group["_row"].to_numpy()
        acc, jpt = _float(group["accuracy"]), _float(group["j_per_token"])
        on_frontier[rows] = pareto_mask(acc, jpt)
        uniform = (group["kind"] == "uniform").fill_null(False).to_numpy()
        weakly_matched[rows], uniform_dominated[rows] = _uniform_flags(acc, jpt, uniform)
        for row, p in zip(rows, _frontier_probability(group, by_config, resampled, seed, n_boot)):
            probability[row] = p

    kind_mixed = (cs["kind"] == "mixed").fill_null(False).to_numpy()
    return cs.with_columns(
        on_frontier=pl.Series(on_frontier),
        frontier_probability=pl.Series(probability, dtype=pl.Float64),
        uniform_dominated=pl.Series(uniform_dominated),
        mixed_unmatched=pl.Series(kind_mixed & on_frontier & ~weakly_matched),
    ).select(list(VIEWS["pareto_frontier"])).sort(GROUP + ["config_id"])
