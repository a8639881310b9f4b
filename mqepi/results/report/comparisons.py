"""RQ1, RQ2 and RQ4: configurations compared as the analysis views compare them.

* :func:`rq1_matched_pairs`: pairs shown equivalent in perplexity (TOST) whose EPI differs
  (paired bootstrap interval of the difference excluding 0) or whose accuracy differs (McNemar);
* :func:`rq2_frontier`: the Pareto frontier of accuracy vs J/token, uniform vs mixed;
* :func:`rq4_optimum`: the EPI-optimal configuration against ``uniform_q4km``.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mqepi.results.report.data import ReportData, group_filter
from mqepi.results.report.labels import ALPHA, CANNOT, REFERENCE_CONFIG, fmt, fmt_ci, gb
from mqepi.results.report.questions import Answer, GroupResult, no_energy

#: Paired repeats a matched pair needs before its EPI difference can be tested.
MIN_PAIRED_REPEATS = 2


# -- RQ1 -----------------------------------------------------------------


@dataclass
class Rq1Result(GroupResult):
    pairs: pl.DataFrame  # matched_pairs rows + epi_differs, j_per_token_differs, accuracy_differs, testable
    answer: Answer


def _interval_excludes_zero(prefix: str) -> pl.Expr:
    return ((pl.col(f"{prefix}_ci_low") > 0) | (pl.col(f"{prefix}_ci_high") < 0)).fill_null(False)


def flag_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` with ``testable`` (enough paired repeats), ``epi_differs``,
    ``j_per_token_differs`` (testable, 95% interval excludes 0) and ``accuracy_differs`` (McNemar)."""
    testable = pl.col("n_paired_repeats").fill_null(0) >= MIN_PAIRED_REPEATS
    return pairs.with_columns(
        testable=testable,
        epi_differs=testable & _interval_excludes_zero("epi_diff"),
        j_per_token_differs=testable & _interval_excludes_zero("j_per_token_diff"),
        accuracy_differs=(pl.col("mcnemar_p") < ALPHA).fill_null(False),
    )


def rq1_matched_pairs(data: ReportData) -> list[Rq1Result]:
    """RQ1 per group: pairs shown equivalent in perplexity (matched_pairs.matched: the TOST's
    90% interval inside the margin) whose EPI differs (paired hierarchical bootstrap 95%
    interval of the difference excluding 0, with at least 2 paired repeats) and whose accuracy
    differs on the paired questions (exact McNemar, p < 0.05). Inconclusive pairs are counted,
    never treated as matched."""
    results = []
    for origin, model, ps in data.groups():
        n_configs = group_filter(data.config_summary, origin, model, ps).filter(pl.col("ppl").is_not_null()).height
        candidates = group_filter(data.matched_pairs, origin, model, ps)
        pairs = flag_pairs(candidates.filter(pl.col("matched").fill_null(False)))
        n_inconclusive = candidates.height - pairs.height
        n_all = n_configs * (n_configs - 1) // 2
        rules = ", ".join(sorted(set(candidates["match_rule"].drop_nulls().to_list()))) or "the matched_pairs rule"
        evidence = (f"matched_pairs: of {n_all} pairs among {n_configs} configurations with a perplexity, {pairs.height} "
                    f"are shown equivalent in perplexity ({rules}), {n_inconclusive} are inconclusive and "
                    f"{n_all - candidates.height} differ by more than the margin; EPI and J/token differences by the paired "
                    f"hierarchical bootstrap over repeats, questions and the meter ({data.bootstrap} resamples), accuracy by "
                    "exact McNemar on the paired questions.")
        supported, text = _rq1_answer(pairs, no_energy(ps), n_inconclusive)
        results.append(Rq1Result(origin, model, ps, pairs, Answer("RQ1", origin, model, ps, text, evidence, supported)))
    return results


def _rq1_answer(pairs: pl.DataFrame, no_energy_why: str | None, n_inconclusive: int = 0) -> tuple[bool, str]:
    """(supported, answer) of RQ1 from a group's flagged matched pairs."""
    m = pairs.height
    n_testable = int(pairs["testable"].sum()) if m else 0
    n_epi = int(pairs["epi_differs"].sum()) if m else 0
    n_acc = int(pairs["accuracy_differs"].sum()) if m else 0
    if m == 0:
        why = (f" ({n_inconclusive} pairs are inconclusive: their perplexity intervals are too wide to show equivalence)"
               if n_inconclusive else "")
        return False, (f"No pair of configurations is shown to have the same perplexity{why}, so {CANNOT} about RQ1 "
                       "here.")
    if no_energy_why:
        return False, f"{m} perplexity-matched pairs, but {no_energy_why}. {n_acc} of them differ in accuracy (McNemar p < 0.05)."
    if n_testable == 0:
        return False, (f"{CANNOT.capitalize()}: {m} perplexity-matched pairs, none with {MIN_PAIRED_REPEATS} or more paired "
                       f"repeats, so no EPI difference can be tested. {n_acc} differ in accuracy (McNemar p < 0.05).")
    if n_epi == 0:
        return False, (f"No evidence: none of {n_testable} testable perplexity-matched pairs has an EPI difference whose 95% "
                       f"interval excludes 0; {CANNOT} that matched perplexity hides an EPI difference at this number of "
                       f"repeats and questions. {n_acc} of {m} pairs differ in accuracy (McNemar p < 0.05).")
    top = pairs.filter(pl.col("epi_differs")).sort(pl.col("epi_diff").abs(), descending=True).row(0, named=True)
    return True, (f"Yes: {n_epi} of {n_testable} testable perplexity-matched pairs differ in EPI (95% interval of the "
                  f"paired difference excludes 0; about {0.05 * n_testable:.1f} would be expected by chance). Largest: "
                  f"{top['config_b']} - {top['config_a']} (perplexity {fmt(top['ppl_b'])} vs {fmt(top['ppl_a'])}), "
                  f"EPI difference {fmt_ci(top['epi_diff'], top['epi_diff_ci_low'], top['epi_diff_ci_high'])}, "
                  "J/token difference "
                  f"{fmt_ci(top['j_per_token_diff'], top['j_per_token_diff_ci_low'], top['j_per_token_diff_ci_high'])}. "
                  f"{n_acc} of {m} pairs differ in accuracy (McNemar p < 0.05).")


# -- RQ2 -----------------------------------------------------------------


@dataclass
class Rq2Result(GroupResult):
    frontier: pl.DataFrame  # the group's pareto_frontier rows, by accuracy
    answer: Answer


def rq2_frontier(data: ReportData) -> list[Rq2Result]:
    """RQ2 per group: which configurations are on the frontier, how many uniform and mixed,
    which mixed ones no uniform configuration reaches, and how robust membership is."""
    results = []
    for origin, model, ps in data.groups():
        rows = group_filter(data.pareto_frontier, origin, model, ps).sort("accuracy", "j_per_token", nulls_last=True)
        evidence = (f"pareto_frontier: {rows.height} configurations, frontier membership from the medians over repeats, "
                    f"frontier probability = share of {data.bootstrap} bootstrap resamples in which a configuration is on "
                    "the frontier.")
        supported, text = _rq2_answer(rows, no_energy(ps))
        results.append(Rq2Result(origin, model, ps, rows, Answer("RQ2", origin, model, ps, text, evidence, supported)))
    return results


def _rq2_answer(rows: pl.DataFrame, no_energy_why: str | None) -> tuple[bool, str]:
    """(supported, answer) of RQ2 from a group's frontier rows."""
    if no_energy_why or rows.filter(pl.col("j_per_token").is_not_null()).is_empty():
        return False, f"No frontier: {no_energy_why or 'no configuration of this group has a J/token'}."
    on = rows.filter(pl.col("on_frontier").fill_null(False) & pl.col("j_per_token").is_not_null())
    if on.is_empty():
        return False, "The pareto_frontier view marks no configuration as on the frontier."
    n_u = on.filter(pl.col("kind") == "uniform").height
    n_m = on.filter(pl.col("kind") == "mixed").height
    n_s = on.filter(pl.col("kind") == "searched").height  # maps of the per-layer search
    lo, hi = on.row(0, named=True), on.row(on.height - 1, named=True)
    points = ", ".join(f"{r['config_id']} ({r['kind']}, p={fmt(r['frontier_probability'], 2)})" for r in on.iter_rows(named=True))
    unmatched = on.filter(pl.col("mixed_unmatched").fill_null(False))["config_id"].to_list()
    shaky = on.filter(pl.col("frontier_probability").fill_null(0) < 0.95)["config_id"].to_list()
    slope = ""
    if on.height >= 2 and hi["accuracy"] != lo["accuracy"]:
        if _overlap(lo, hi, "accuracy") is False:
            cost = (hi["j_per_token"] - lo["j_per_token"]) / (hi["accuracy"] - lo["accuracy"])
            slope = f" Along it, J/token rises {fmt(cost * 0.01, 3)} per accuracy point (0.01)."
        else:
            slope = (f" The accuracy intervals of its two ends overlap: {CANNOT} that accuracy rises along it, nor about "
                     "its cost per accuracy point.")
    return True, (
        f"{on.height} of {rows.height} configurations are on the frontier ({n_u} uniform, {n_m} mixed"
        f"{f', {n_s} searched' if n_s else ''}), from "
        f"{lo['config_id']} (accuracy {_acc(lo)}, {fmt(lo['j_per_token'])} J/token) to "
        f"{hi['config_id']} (accuracy {_acc(hi)}, {fmt(hi['j_per_token'])} J/token): {points}.{slope} "
        + (f"Mixed configurations on the frontier that no uniform configuration reaches: {', '.join(unmatched)}. "
           if unmatched else "No mixed configuration reaches a point that no uniform configuration reaches. ")
        + (f"Uncertain members (on the frontier in fewer than 95% of resamples): {', '.join(shaky)}." if shaky
           else "Every member is on the frontier in at least 95% of resamples."))


# -- RQ4 -----------------------------------------------------------------


@dataclass
class Rq4Result(GroupResult):
    best: dict | None
    best_mixed: dict | None
    reference: dict | None
    answer: Answer


def rq4_optimum(data: ReportData) -> list[Rq4Result]:
    """RQ4 per group: the lowest-EPI mixed configuration (and the lowest overall) against
    uniform_q4km in file size and bits/weight, with whether their EPI intervals overlap."""
    results = []
    for origin, model, ps in data.groups():
        cs = group_filter(data.config_summary, origin, model, ps)
        ranked = cs.filter(pl.col("epi").is_not_null()).sort("epi", "config_id")
        best = _first(ranked)
        best_mixed = _first(ranked.filter(pl.col("kind") == "mixed"))
        ref = _first(cs.filter(pl.col("config_id") == REFERENCE_CONFIG))
        evidence = (f"config_summary: EPI (median over repeats, 95% interval of the hierarchical bootstrap over repeats, "
                    f"questions and the meter) of {ranked.height} configurations; "
                    "file size and bits/weight from the quantization events.")
        supported, text = _rq4_answer(best, best_mixed, ref, no_energy(ps))
        results.append(Rq4Result(origin, model, ps, best, best_mixed, ref,
                                 Answer("RQ4", origin, model, ps, text, evidence, supported)))
    return results


def _acc(row: dict) -> str:
    return fmt_ci(row["accuracy"], row.get("accuracy_ci_low"), row.get("accuracy_ci_high"), 3)


def _first(rows: pl.DataFrame) -> dict | None:
    return rows.row(0, named=True) if rows.height else None


def _epi(row: dict) -> str:
    return fmt_ci(row["epi"], row["epi_ci_low"], row["epi_ci_high"])


def _rq4_answer(best: dict | None, best_mixed: dict | None, ref: dict | None, no_energy_why: str | None) -> tuple[bool, str]:
    """(supported, answer) of RQ4: supported only when the EPI intervals of the lowest-EPI mixed
    configuration and the reference both exist and do not overlap."""
    if no_energy_why or best is None:
        return False, f"{CANNOT.capitalize()}: {no_energy_why or 'no configuration of this group has an EPI'}."
    if best_mixed is None:
        return False, f"No mixed configuration has an EPI in this group; the lowest EPI is {best['config_id']}'s."
    if ref is None:
        return False, (f"The mixed configuration with the lowest EPI is {best_mixed['config_id']} (EPI {_epi(best_mixed)}, "
                       f"{fmt(gb(best_mixed['file_size_bytes']))} GB), but {REFERENCE_CONFIG} was not measured in this group, "
                       "so RQ4 cannot be answered.")
    overlap = _overlap(best_mixed, ref, "epi")
    return overlap is False, (
        f"The mixed configuration with the lowest EPI point estimate, {best_mixed['config_id']} (EPI {_epi(best_mixed)}; "
        f"{fmt(gb(best_mixed['file_size_bytes']))} GB, {fmt(best_mixed['bits_per_weight'], 3)} bits/weight), is "
        f"{_size_relation(best_mixed['file_size_bytes'], ref['file_size_bytes'])} {REFERENCE_CONFIG} "
        f"(EPI {_epi(ref)}; {fmt(gb(ref['file_size_bytes']))} GB, {fmt(ref['bits_per_weight'], 3)} bits/weight)."
        f"{_overlap_text(best_mixed, ref, overlap)} Lowest EPI point estimate overall: {best['config_id']} ({best['kind']}).")


def _size_relation(size_m: float | None, size_r: float | None) -> str:
    """How a file size relates to the reference's: 'smaller (-12.3% bytes) than', ..."""
    if size_m is None or size_r is None:
        return "of unknown size relative to"
    if size_m == size_r:
        return "the same size as"
    change = (size_m - size_r) / size_r * 100
    return f"{'smaller' if size_m < size_r else 'larger'} ({change:+.1f}% bytes) than"


def _overlap(a: dict, b: dict, key: str) -> bool | None:
    lo_a, hi_a, lo_b, hi_b = a.get(f"{key}_ci_low"), a.get(f"{key}_ci_high"), b.get(f"{key}_ci_low"), b.get(f"{key}_ci_high")
    if None in (lo_a, hi_a, lo_b, hi_b):
        return None
    return lo_a <= hi_b and lo_b <= hi_a


def _overlap_text(best_mixed: dict, ref: dict, overlap: bool | None) -> str:
    if best_mixed["config_id"] == ref["config_id"]:
        return ""
    if overlap is None:
        missing = [r["config_id"] for r in (best_mixed, ref) if r.get("epi_ci_low") is None or r.get("epi_ci_high") is None]
        return (f" {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no EPI interval, so {CANNOT} about which "
                "has the lower EPI.")
    if overlap:
        return f" Their EPI intervals overlap: {CANNOT} about which has the lower EPI."
    lower = best_mixed["config_id"] if best_mixed["epi"] < ref["epi"] else REFERENCE_CONFIG
    return f" Their EPI intervals do not overlap: {lower} has the lower EPI."
