"""The rows of the report's tables, as strings: each function takes the frames or results
of one section and returns ``(headers, rows)`` for :meth:`Document.table`."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from mqepi.results.report.comparisons import Rq2Result
from mqepi.results.report.data import ReportData
from mqepi.results.report.labels import LAYER_GROUPS, fmt, fmt_ci, fmt_pm, gb, power_label, without_local_path
from mqepi.results.report.regressions import Rq3Result, Rq5Result

Table = tuple[list[str], list[list[str]]]

RESULTS_HEADERS = ["Config", "Kind", "Early", "Middle", "Late", "Size (GB)", "Bits/weight", "Perplexity",
                   "J/Token (95% CI)", "Accuracy (95% CI)", "EPI (95% CI)", "n repeats", "n questions", "Intervals"]
PAIRS_HEADERS = ["Config A", "Config B", "Perplexity A", "Perplexity B", "ln(PPL B / PPL A) (90% CI)", "Verdict",
                 "EPI A", "EPI B", "Delta EPI (B-A) (95% CI)", "Delta J/token (B-A) (95% CI)", "McNemar b/c, p",
                 "n paired repeats", "EPI differs"]
FLIPS_HEADERS = ["Config", "Against", "Flip share (95% Wilson)", "Flips", "Right -> wrong", "Wrong -> right",
                 "Choice KL (nats)", "Accuracy", "Accuracy of the base"]
#: What the report calls each scoring rule (benchmark_answer.scoring).
SCORING_RULES = {
    "loglikelihood": "acc = argmax of each choice's summed log-likelihood (lm-evaluation-harness acc, comparable to "
                     "lm-eval's numbers); acc_norm (per character) shown beside it where recorded",
    None: "llama-perplexity --multiple-choice (schema version 1): mean token log-probability per choice, not "
          "lm-eval's acc",
}
#: Provenance keys of run.provenance_json left out of the report (per-host or shown elsewhere).
_PROVENANCE_SKIP = ("host", "model_file", "question_sets", "settings", "text.sources")


def _ppl(value, stderr) -> str:
    """A perplexity with its standard error, to the digits the error supports."""
    return fmt_pm(value, stderr)


def results_rows(cs: pl.DataFrame) -> list[list[str]]:
    """The paper's results table: Config, Early, Middle, Late, Size (GB), Perplexity,
    J/Token, Accuracy, EPI (medians, bootstrap 95% intervals) and repeats."""
    order = cs.with_columns(_u=(pl.col("kind") != "uniform")).sort("_u", "bits_per_weight", "config_id", nulls_last=True)
    rows = []
    for r in order.iter_rows(named=True):
        names = r.get("config_ids") or [r["config_id"]]
        name = " = ".join([r["config_id"], *[n for n in names if n != r["config_id"]]])
        rows.append([name, r["kind"] or "-", r["early_type"] or "-", r["middle_type"] or "-", r["late_type"] or "-",
                     fmt(gb(r["file_size_bytes"])), fmt(r["bits_per_weight"], 3),
                     "-" if r["ppl"] is None else _ppl(r["ppl"], r["ppl_stderr"]),
                     fmt_ci(r["j_per_token"], r["j_per_token_ci_low"], r["j_per_token_ci_high"]),
                     fmt_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"], 3),
                     fmt_ci(r["epi"], r["epi_ci_low"], r["epi_ci_high"]),
                     f"{fmt(r['n_repeats'])} (+{fmt(r['n_excluded'])} excluded)" if r["n_excluded"] else fmt(r["n_repeats"]),
                     fmt(r.get("n_questions")), r.get("interval_note") or "repeats, questions and meter"])
    return rows


def flips_rows(flips: pl.DataFrame, cs: pl.DataFrame) -> list[list[str]]:
    """Answer flips against the base (answer_flips, every benchmark pooled), one row per
    configuration, with the accuracies they leave unchanged or not."""
    acc = dict(zip(cs["config_id"].to_list(), cs["accuracy"].to_list()))
    rows = []
    for r in flips.filter(pl.col("benchmark") == "all").sort("config_id").iter_rows(named=True):
        rows.append([r["config_id"], r["reference_config_id"],
                     fmt_ci(r["flip_share"], r["flip_share_low"], r["flip_share_high"], 3),
                     f"{fmt(r['n_flipped'])} of {fmt(r['n_questions'])}", fmt(r["n_right_to_wrong"]),
                     fmt(r["n_wrong_to_right"]), fmt(r["choice_kl_nats"], 3), fmt(acc.get(r["config_id"]), 3),
                     fmt(acc.get(r["reference_config_id"]), 3)])
    return rows


def scoring_lines(scoring: pl.DataFrame, origin: str, model: str) -> list[str]:
    """One line per benchmark of a model: its scoring rule(s) and, once, its deviations from
    lm-evaluation-harness (benchmark_answer.deviation)."""
    mine = scoring.filter((pl.col("origin") == origin) & (pl.col("model") == model))
    lines = []
    for (bench,), part in mine.sort("benchmark").group_by("benchmark", maintain_order=True):
        counts: dict = {}
        for rule, n in zip(part["scoring"].to_list(), part["n_answers"].to_list()):
            counts[rule] = counts.get(rule, 0) + (n or 0)
        rules = sorted(counts, key=lambda x: (x is None, x or ""))
        text = f"{bench}: " + "; ".join(f"{SCORING_RULES.get(r, f'scoring {r!r}')} ({fmt(counts[r])} answers)"
                                        for r in rules)
        deviations = sorted(d for d in set(part["deviation"].to_list()) if d)
        if deviations:
            text += ". Deviations from lm-evaluation-harness: " + "; ".join(d.rstrip(".") for d in deviations) + "."
        else:
            text += ". No deviation from lm-evaluation-harness recorded." if "loglikelihood" in rules else "."
        lines.append(text)
    return lines


#: What the accuracy basis calls each scoring rule, in a few words.
_RULE_WORDS = {"loglikelihood": "scored as lm-eval's acc (the choice of highest summed log-likelihood)",
               None: "scored by llama-perplexity's mean token log-prob (not lm-eval's acc)"}


def accuracy_basis(scoring: pl.DataFrame, origin: str, model: str) -> tuple[str, str]:
    """(sentence, axis label) naming what a model's composite accuracy is made of: per benchmark
    its shots, scoring rule, task version and questions per run; the composite is the
    unweighted mean of the benchmarks' accuracies. ("", "Accuracy") when nothing was scored."""
    mine = scoring.filter((pl.col("origin") == origin) & (pl.col("model") == model))
    if mine.is_empty():
        return "", "Accuracy"
    long, short = [], []
    for (bench,), part in mine.sort("benchmark").group_by("benchmark", maintain_order=True):
        shots = "/".join(str(n) for n in sorted(set(part["shots"].drop_nulls().to_list()))) or "?"
        rules = sorted(set(part["scoring"].to_list()), key=lambda r: (r is None, r or ""))
        versions = sorted(set(part["task_version"].drop_nulls().to_list()))
        lo, hi = part["min_questions"].min(), part["max_questions"].max()
        questions = f"{fmt(lo)}" if lo == hi else f"{fmt(lo)}-{fmt(hi)}"
        version = ("task v" + "/v".join(versions)) if versions else "task version not recorded"
        long.append(f"{bench}, {shots}-shot, {' and '.join(_RULE_WORDS.get(r, f'scoring {r!r}') for r in rules)}, "
                    f"{version}, {questions} questions per run")
        short.append(f"{bench} {shots}-shot, {questions} q")
    what = long[0] if len(long) == 1 else "the unweighted mean of: " + "; ".join(long)
    rule = "acc" if set(mine["scoring"].to_list()) == {"loglikelihood"} else "mixed scoring"
    label = (f"Accuracy ({short[0]}; {rule})" if len(short) == 1 else
             f"Accuracy (mean of {', '.join(short)}; {rule})")
    return f"Accuracy is {what}.", label


def pairs_rows(pairs: pl.DataFrame) -> list[list[str]]:
    """The matched-pairs table (RQ1), one row per flagged pair."""
    rows = []
    for r in pairs.iter_rows(named=True):
        mc = "-" if r["mcnemar_p"] is None else f"{fmt(r['mcnemar_b'])}/{fmt(r['mcnemar_c'])}, p = {fmt(r['mcnemar_p'], 3)}"
        rows.append([r["config_a"], r["config_b"], _ppl(r["ppl_a"], r["ppl_stderr_a"]), _ppl(r["ppl_b"], r["ppl_stderr_b"]),
                     fmt_ci(r.get("log_ppl_ratio"), r.get("log_ppl_ratio_ci_low"), r.get("log_ppl_ratio_ci_high"), 3),
                     r.get("ppl_verdict") or "-", fmt(r["epi_a"]), fmt(r["epi_b"]),
                     fmt_ci(r["epi_diff"], r["epi_diff_ci_low"], r["epi_diff_ci_high"]),
                     fmt_ci(r["j_per_token_diff"], r["j_per_token_diff_ci_low"], r["j_per_token_diff_ci_high"]),
                     mc, fmt(r["n_paired_repeats"]),
                     "yes" if r.get("epi_differs") else ("untestable" if not r.get("testable") else "no")])
    return rows


def frontier_table(rq2: Rq2Result) -> Table:
    """The Pareto analysis (RQ2)."""
    return (["Config", "Kind", "Accuracy (95% CI)", "J/Token (95% CI)", "EPI", "On frontier", "Frontier probability",
             "Mixed, beyond every uniform"],
            [[r["config_id"], r["kind"] or "-", fmt_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"], 3),
              fmt_ci(r["j_per_token"], r["j_per_token_ci_low"], r["j_per_token_ci_high"]), fmt(r["epi"]),
              "yes" if r["on_frontier"] else "no", fmt(r["frontier_probability"], 2),
              "yes" if r["mixed_unmatched"] else ""] for r in rq2.frontier.iter_rows(named=True)])


def sensitivity_tables(rq3: Rq3Result) -> tuple[Table, Table]:
    """RQ3: the slopes of each response's fit, and the bits/weight per layer group they were fitted on."""
    fits = (["Response", "n", "R^2", "Intercept", "Early (95% CI)", "Middle (95% CI)", "Late (95% CI)", "Verdict"],
            [[resp, fmt(f.n), fmt(f.r2, 3), fmt(f.coef.get("intercept")),
              *[fmt_ci(f.coef.get(f"{g}_bpw"), f.ci_low.get(f"{g}_bpw"), f.ci_high.get(f"{g}_bpw"), 3) for g in LAYER_GROUPS],
              f.verdict()] for resp, f in rq3.fits.items()])
    bits = (["Config", "Kind", "Early bits/weight", "Middle bits/weight", "Late bits/weight", "J/Token", "Accuracy"],
            [[r["config_id"], r["kind"] or "-", fmt(r["early_bpw"], 4), fmt(r["middle_bpw"], 4), fmt(r["late_bpw"], 4),
              fmt(r["j_per_token"]), fmt(r["accuracy"], 3)] for r in rq3.table.iter_rows(named=True)])
    return fits, bits


def attribution_table(rq5: Rq5Result) -> Table:
    """RQ5: bytes and time per token, decode J/token and the roofline fraction per configuration."""
    return (["Config", "Kind", "Bytes read per token", "Decode tokens/s", "ms per token", "Decode J/token", "Roofline fraction"],
            [[r["config_id"], r["kind"] or "-", fmt(r["bytes_per_token"]), fmt(r["decode_tokens_per_s"]),
              fmt(None if r["s_per_token"] is None else r["s_per_token"] * 1e3), fmt(r["decode_j_per_token"]),
              fmt(r["roofline_fraction"], 3) if rq5.bandwidth_gbs else "bandwidth unknown"]
             for r in rq5.table.iter_rows(named=True)])


def excluded_table(data: ReportData) -> Table:
    """Finished runs left out of every median (run_metrics.valid is false)."""
    bad = data.run_metrics.filter(~pl.col("valid").fill_null(False)).sort("origin", "model", "config_id", "run_id")
    return (["Origin", "Model", "Config", "Run", "Repeat", "Power", "Why"],
            [[r["origin"], r["model"], r["config_id"], r["run_id"], fmt(r["repeat"]), power_label(r["power_source"]),
              r["invalid_reasons"] or "-"] for r in bad.iter_rows(named=True)])


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        text = "null" if value is None else str(value)
        out[prefix] = text if len(text) <= 100 else text[:97] + "..."


def provenance_table(data: ReportData) -> Table:
    """Tool versions and settings from run.provenance_json: (origin, key, value) with their run counts."""
    counts: dict[tuple[str, str, str], int] = {}
    for origin, raw in data.runs.select("origin", "provenance_json").rows():
        try:
            prov = json.loads(raw) if raw else {}
        except ValueError:
            prov = {"provenance_json": "(not JSON)"}
        flat: dict[str, str] = {}
        _flatten("", prov, flat)
        for k, v in flat.items():
            if not any(k == s or k.startswith(s + ".") for s in _PROVENANCE_SKIP):
                v = without_local_path(v)
                counts[(origin, k, v)] = counts.get((origin, k, v), 0) + 1
    return ["Origin", "Key", "Value", "Runs"], [[o, k, v, str(n)] for (o, k, v), n in sorted(counts.items())]


def producers_table(data: ReportData) -> Table:
    """The programs that recorded the runs and quantizations."""
    pairs = set(data.runs.select("origin", "producer").rows()) | set(data.quantization.select("origin", "producer").rows())
    producers = sorted(pairs, key=lambda r: tuple("" if x is None else x for x in r))
    return ["Origin", "Producer"], [list(r) for r in producers]


def commits_table(data: ReportData) -> Table:
    """llama.cpp commits and base models of the quantization events."""
    q = data.quantization.group_by("origin", "llama_cpp_commit", "base_sha256").agg(
        pl.col("config_id").n_unique().alias("n")).sort("origin", "llama_cpp_commit", "base_sha256", nulls_last=True)
    return (["Origin", "llama.cpp commit", "Base model sha256", "Configurations"],
            [[r["origin"], r["llama_cpp_commit"], r["base_sha256"], str(r["n"])] for r in q.iter_rows(named=True)])


def question_sets_table(data: ReportData) -> Table:
    """The question sets of benchmark_answer, with their runs and questions."""
    return (["Origin", "Model", "Benchmark", "Question set sha256", "Runs", "Questions"],
            [[r["origin"], r["model"], r["benchmark"], r["question_set_sha256"], fmt(r["n_runs"]), fmt(r["n_questions"])]
             for r in data.question_sets.iter_rows(named=True)])
