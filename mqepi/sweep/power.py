"""Power analysis for the planner: which differences a sweep's questions and repeats can
detect, and how many of each a given difference needs, at the variance measured in the lake.

Every test is two-sided at ``alpha`` (0.05) with power ``power`` (0.8); ``k = z(1 - alpha/2)
+ z(power)`` (1.960 + 0.842 = 2.802), ``z`` the standard normal quantile.

**Accuracy** (one benchmark, ``n`` questions answered by both configurations):

* paired (McNemar), when two configurations of the model answered the same questions: the
  discordance rate ``psi`` = the share of (configuration pair, question) where one answered
  right and the other wrong (per configuration and question, ``c`` = the share of its runs
  that answered right; a pair discords with probability ``c_a (1 - c_b) + c_b (1 - c_a)``),
  averaged over every pair of configurations and every question both answered. Connor's
  (1987) sample size for McNemar's test detects a difference ``d`` with
  ``n(d) = (z(1 - alpha/2) sqrt(psi') + z(power) sqrt(psi' - d^2))^2 / d^2``, where
  ``psi' = max(psi, d)`` (a difference ``d`` needs at least ``d`` discordant answers). The
  minimum detectable difference (MDD) solves ``n(d) = n`` (``n(d)`` falls from infinity at
  0 to ``z(1 - alpha/2)^2`` at 1); the questions needed for ``d`` are ``ceil(n(d))``.
* otherwise independent answers at the measured mean accuracy ``p`` (0.5, the worst case,
  when the lake has none): ``Var(p_b - p_a) = 2 p (1 - p) / n``, so ``MDD = k sqrt(2 p (1 -
  p) / n)`` and ``n = ceil(2 k^2 p (1 - p) / d^2)``.

**J/token** (two configurations, ``r`` repeats each): the run-to-run coefficient of
variation ``CV`` of a configuration's J/token (valid finished runs, ``run_metrics``), pooled
over the configurations with at least 2 repeats: ``CV^2 = sum (n_c - 1) (s_c / m_c)^2 / sum
(n_c - 1)``. The relative MDD is the two-sample t test's (statsmodels ``TTestIndPower``,
noncentral t, ``df = 2r - 2``) effect size times ``CV``; the repeats needed for a relative
difference ``D`` are the smallest ``r >= 2`` whose MDD is at most ``D``. With fewer than 2
valid repeats of every configuration the variance is unknown and no number is given; then
only the meter's share is stated: the median over runs of the relative standard
uncertainty of a run's benchmark energy, ``u = sqrt(sum u_w^2) / sum E_w`` over its
benchmark windows (``run_energy.energy_uncertainty_j``, independent between windows and
runs), allows ``MDD = k sqrt(2 / r) u`` at best (a z test: the run-to-run variance adds).

**EPI** = J/token / accuracy, so (delta method, J/token and accuracy independent) its
relative variance is the sum of theirs. The relative EPI MDD is the root sum of squares of
the J/token MDD above and the accuracy part ``k sqrt(V) / p``, with ``V = sum_b v_b / n_b /
B^2`` the variance of the composite accuracy difference (the mean over ``B`` benchmarks; ``v_b
= psi_b`` paired, ``2 p_b (1 - p_b)`` independent) and ``p`` the mean accuracy. The accuracy
part does not shrink with repeats (the same questions are asked every repeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mqepi.analysis import MACROS_SQL, RUNS_SQL, VIEWS_SQL
from mqepi.results import sql

ALPHA = 0.05
POWER = 0.8
#: How the planner names a benchmark.
BENCH_NAMES = {"mmlu": "MMLU", "arc_challenge": "ARC-Challenge", "hellaswag": "HellaSwag"}


def bench_name(benchmark: str) -> str:
    return BENCH_NAMES.get(benchmark, benchmark)


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z(1 - alpha/2) + z(power)``."""
    from scipy.stats import norm  # heavy (scipy/statsmodels): only the planner's power analysis
    return float(norm.ppf(1.0 - alpha / 2.0) + norm.ppf(power))


# ------------------------------------------------------------------ what the lake measured


@dataclass(frozen=True)
class AccuracyVariance:
    """One benchmark's accuracy variance, as measured (or assumed)."""

    benchmark: str
    accuracy: float  # mean accuracy p over configurations (0.5 when assumed)
    discordance: float | None = None  # psi, None: no paired answers (independent answers assumed)
    n_config_pairs: int = 0
    n_paired_answers: int = 0  # (configuration pair, question) rows behind psi
    n_configs: int = 0
    assumed: bool = False  # p is the worst case 0.5, not a measurement

    @property
    def paired(self) -> bool:
        return self.discordance is not None

    def describe(self) -> str:
        if self.paired:
            return (f"paired, measured discordance {self.discordance:.2f} over {self.n_paired_answers} paired answers of "
                    f"{self.n_config_pairs} configuration pair{'s' * (self.n_config_pairs != 1)}")
        if self.assumed:
            return "independent answers assumed at accuracy 0.5, the worst case: no usable answers in the lake"
        return (f"independent answers assumed at the measured accuracy {self.accuracy:.2f} (variance 2p(1-p)/n): "
                "no two configurations answered the same questions")


@dataclass(frozen=True)
class EnergyVariance:
    """Run-to-run variation of J/token, as measured."""

    cv: float | None  # pooled coefficient of variation, None: unknown (no configuration with 2 valid repeats)
    n_configs: int = 0  # configurations with >= 2 valid repeats
    n_runs: int = 0  # their runs
    power_sources: tuple[str, ...] = ()
    meter_rel_uncertainty: float | None = None  # median relative standard uncertainty of a run's benchmark energy

    def describe(self) -> str:
        if self.cv is None:
            return "run-to-run variance unknown: no configuration has 2 valid repeats in the lake"
        sources = f", {'/'.join(self.power_sources)} power" if self.power_sources else ""
        return (f"measured CV {self.cv:.1%} over {self.n_runs} runs of {self.n_configs} "
                f"configuration{'s' * (self.n_configs != 1)}{sources}")


@dataclass(frozen=True)
class MeasuredVariance:
    model: str
    origin: str
    accuracy: dict[str, AccuracyVariance] = field(default_factory=dict)
    energy: EnergyVariance = field(default_factory=lambda: EnergyVariance(None))

    def for_benchmark(self, benchmark: str) -> AccuracyVariance:
        return self.accuracy.get(benchmark) or AccuracyVariance(benchmark, 0.5, assumed=True)


def measured_variance(lake, model: str, *, origin: str = "lab", benchmarks: list[str] | None = None) -> MeasuredVariance:
    """The accuracy and J/token variance of ``model``'s finished runs of ``origin`` in ``lake``
    (views ``run_metrics`` and ``run_energy``; answers from ``benchmark_answer``)."""
    con = sql.connect(lake, [MACROS_SQL, VIEWS_SQL, RUNS_SQL])
    runs = pl.from_arrow(con.sql('SELECT config_id, run_id, "valid", j_per_token, power_source FROM run_metrics '
                                 "WHERE model = $1 AND origin = $2", params=[model, origin]).to_arrow_table())
    energy = pl.from_arrow(con.sql("SELECT run_id, energy_j, energy_uncertainty_j FROM run_energy WHERE model = $1 "
                                   "AND origin = $2 AND window_kind = 'benchmark' AND run_status = 'finished'",
                                   params=[model, origin]).to_arrow_table())
    answers = lake.read("benchmark_answer", columns=["origin", "config_id", "run_id", "benchmark", "question_id", "correct"],
                        model=model)
    answers = answers.filter(pl.col("origin") == origin).join(runs.select("config_id", "run_id"), on=["config_id", "run_id"],
                                                              how="semi")
    names = benchmarks if benchmarks is not None else sorted(answers["benchmark"].unique().to_list())
    accuracy = {b: _accuracy_variance(b, answers.filter(pl.col("benchmark") == b)) for b in names}
    return MeasuredVariance(model, origin, accuracy, _energy_variance(runs, energy))


def _accuracy_variance(benchmark: str, answers: pl.DataFrame) -> AccuracyVariance:
    """Discordance between configurations over shared questions, and the mean accuracy."""
    per = answers.group_by("config_id", "question_id").agg(c=pl.col("correct").cast(pl.Float64).mean())
    if per.is_empty():
        return AccuracyVariance(benchmark, 0.5, assumed=True)
    p = float(per.group_by("config_id").agg(pl.col("c").mean())["c"].mean())
    n_configs = per["config_id"].n_unique()
    pairs = per.join(per, on="question_id", suffix="_b").filter(pl.col("config_id") < pl.col("config_id_b"))
    if pairs.is_empty():
        if p * (1 - p) == 0:
            return AccuracyVariance(benchmark, 0.5, n_configs=n_configs, assumed=True)
        return AccuracyVariance(benchmark, p, n_configs=n_configs)
    disc = pairs.select(pl.col("c") * (1 - pl.col("c_b")) + pl.col("c_b") * (1 - pl.col("c")))
    return AccuracyVariance(benchmark, p, float(disc.to_series().mean()), pairs.select("config_id", "config_id_b").n_unique(),
                            pairs.height, n_configs)


def _energy_variance(runs: pl.DataFrame, energy: pl.DataFrame) -> EnergyVariance:
    """Pooled run-to-run CV of J/token over configurations with >= 2 valid repeats, and the
    meter's relative uncertainty of a run's benchmark energy."""
    valid = runs.filter(pl.col("valid") & (pl.col("j_per_token") > 0))
    stats = valid.group_by("config_id").agg(n=pl.len(), m=pl.col("j_per_token").mean(), s=pl.col("j_per_token").std(ddof=1),
                                            sources=pl.col("power_source").unique()).filter(pl.col("n") >= 2)
    u = None
    per_run = energy.filter(pl.col("energy_j").is_not_null()).group_by("run_id").agg(
        e=pl.col("energy_j").sum(), u2=(pl.col("energy_uncertainty_j") ** 2).sum(),
        complete=pl.col("energy_uncertainty_j").is_not_null().all())
    per_run = per_run.filter(pl.col("complete") & (pl.col("e") > 0))
    if per_run.height:
        u = float(np.median(np.sqrt(per_run["u2"].to_numpy()) / per_run["e"].to_numpy()))
    if stats.is_empty():
        return EnergyVariance(None, meter_rel_uncertainty=u)
    df = (stats["n"] - 1).to_numpy()
    rel2 = (stats["s"] / stats["m"]).to_numpy() ** 2
    sources = tuple(sorted({s for row in stats["sources"].to_list() for s in row if s}))
    return EnergyVariance(float(math.sqrt(float(np.sum(df * rel2) / np.sum(df)))), stats.height, int(stats["n"].sum()),
                          sources, u)


# ------------------------------------------------------------------ accuracy


def paired_questions(diff: float, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Connor's McNemar sample size ``n(d)`` (not rounded), with ``psi' = max(psi, d)``."""
    from scipy.stats import norm  # heavy (scipy/statsmodels): only the planner's power analysis
    psi = max(discordance, diff)
    za, zb = norm.ppf(1.0 - alpha / 2.0), norm.ppf(power)
    return float((za * math.sqrt(psi) + zb * math.sqrt(max(psi - diff * diff, 0.0))) ** 2 / (diff * diff))


def accuracy_mdd(n_questions: int, var: AccuracyVariance, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest accuracy difference ``n_questions`` per configuration detect; None when
    not even a difference of 1 is detectable."""
    from scipy import optimize  # heavy (scipy/statsmodels): only the planner's power analysis
    if n_questions <= 0:
        return None
    if var.paired:
        psi = float(var.discordance)
        if paired_questions(1.0, psi, alpha, power) > n_questions:
            return None
        return float(optimize.brentq(lambda d: paired_questions(d, psi, alpha, power) - n_questions, 1e-12, 1.0,
                                     xtol=1e-14, rtol=1e-12))
    mdd = z_sum(alpha, power) * math.sqrt(2.0 * var.accuracy * (1.0 - var.accuracy) / n_questions)
    return mdd if mdd <= 1.0 else None


def questions_needed(diff: float, var: AccuracyVariance, alpha: float = ALPHA, power: float = POWER) -> int:
    """Questions per configuration (answered by both) to detect an accuracy difference ``diff``."""
    if not 0.0 < diff <= 1.0:
        raise ValueError(f"an accuracy difference is in (0, 1], got {diff}")
    if var.paired:
        return math.ceil(paired_questions(diff, float(var.discordance), alpha, power) - 1e-9)
    return math.ceil(2.0 * z_sum(alpha, power) ** 2 * var.accuracy * (1.0 - var.accuracy) / diff**2 - 1e-9)


# ------------------------------------------------------------------ J/token


def j_per_token_mdd_rel(repeats: int, cv: float | None, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest relative J/token difference ``repeats`` per configuration detect (two-sample
    t); None without a measured ``cv`` or with fewer than 2 repeats."""
    from statsmodels.stats.power import TTestIndPower  # heavy (scipy/statsmodels): only the planner's power analysis
    if cv is None or repeats < 2:
        return None
    effect = TTestIndPower().solve_power(effect_size=None, nobs1=repeats, alpha=alpha, power=power, ratio=1.0)
    return float(effect) * cv


def repeats_needed(rel_diff: float, cv: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Repeats per configuration (at least 2) to detect a relative J/token difference ``rel_diff``."""
    from statsmodels.stats.power import TTestIndPower  # heavy (scipy/statsmodels): only the planner's power analysis
    if rel_diff <= 0:
        raise ValueError(f"a relative difference is > 0, got {rel_diff}")
    if j_per_token_mdd_rel(2, cv, alpha, power) <= rel_diff:
        return 2
    r = math.ceil(TTestIndPower().solve_power(effect_size=rel_diff / cv, nobs1=None, alpha=alpha, power=power, ratio=1.0))
    r = max(r - 1, 2)
    while j_per_token_mdd_rel(r, cv, alpha, power) > rel_diff:  # the root rounded up, checked
        r += 1
    return r


def meter_mdd_rel(repeats: int, rel_uncertainty: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """What the meter's relative standard uncertainty alone allows (z test, known variance)."""
    return z_sum(alpha, power) * math.sqrt(2.0 / repeats) * rel_uncertainty


def meter_repeats_needed(rel_diff: float, rel_uncertainty: float, alpha: float = ALPHA, power: float = POWER) -> int:
    return max(1, math.ceil(2.0 * (z_sum(alpha, power) * rel_uncertainty / rel_diff) ** 2 - 1e-9))


# ------------------------------------------------------------------ EPI


def epi_accuracy_part(questions: dict[str, int], mv: MeasuredVariance, alpha: float = ALPHA,
                      power: float = POWER) -> float | None:
    """The accuracy part of the relative EPI MDD: ``k sqrt(V) / p`` (see the module docstring)."""
    if not questions:
        return None
    vs = [mv.for_benchmark(b) for b in questions]
    p = sum(v.accuracy for v in vs) / len(vs)
    if p <= 0:
        return None
    var = sum((v.discordance if v.paired else 2.0 * v.accuracy * (1.0 - v.accuracy)) / n
              for v, n in zip(vs, questions.values())) / len(vs) ** 2
    return z_sum(alpha, power) * math.sqrt(var) / p


def epi_mdd_rel(repeats: int, questions: dict[str, int], mv: MeasuredVariance, alpha: float = ALPHA,
                power: float = POWER) -> float | None:
    """The smallest relative EPI difference the setting detects: root sum of squares of the
    J/token and accuracy parts; None when the J/token part is unknown."""
    j = j_per_token_mdd_rel(repeats, mv.energy.cv, alpha, power)
    a = epi_accuracy_part(questions, mv, alpha, power)
    return None if j is None or a is None else math.hypot(j, a)


def epi_repeats_needed(rel_diff: float, questions: dict[str, int], mv: MeasuredVariance, alpha: float = ALPHA,
                       power: float = POWER) -> int | None:
    """Repeats to detect a relative EPI difference ``rel_diff`` with these questions; None when
    the accuracy part alone reaches it (more questions are needed) or the J/token CV is unknown."""
    a = epi_accuracy_part(questions, mv, alpha, power)
    if mv.energy.cv is None or a is None or a >= rel_diff:
        return None
    return repeats_needed(math.sqrt(rel_diff**2 - a**2), mv.energy.cv, alpha, power)


# ------------------------------------------------------------------ sentences


def _setting(alpha: float, power: float) -> str:
    return f"alpha {alpha:g}, power {power:g}"


def accuracy_sentence(benchmark: str, n_questions: int, var: AccuracyVariance, alpha: float = ALPHA,
                      power: float = POWER) -> str:
    """'10 MMLU questions per configuration detect accuracy differences above 0.44 (...)'."""
    mdd = accuracy_mdd(n_questions, var, alpha, power)
    what = (f"detect accuracy differences above {mdd:.2f}" if mdd is not None
            else "cannot detect any accuracy difference")
    return (f"{n_questions} {bench_name(benchmark)} questions per configuration {what} "
            f"({_setting(alpha, power)}; {var.describe()})")


def j_per_token_sentence(repeats: int, ev: EnergyVariance, alpha: float = ALPHA, power: float = POWER) -> str:
    """'3 repeats detect J/token differences above 4.1% (...)', or why no number is given."""
    plural = "s" * (repeats != 1)
    if ev.cv is None:
        out = f"J/token: {ev.describe()}, so no repeat count is computed"
        if ev.meter_rel_uncertainty is not None:
            out += (f"; the meter's uncertainty alone ({ev.meter_rel_uncertainty:.2%} of a run's benchmark energy, one "
                    f"standard uncertainty) limits {repeats} repeat{plural} to J/token differences above "
                    f"{meter_mdd_rel(repeats, ev.meter_rel_uncertainty, alpha, power):.2%} at best")
        else:
            out += "; no meter uncertainty is recorded either"
        return out
    if repeats < 2:
        return (f"{repeats} repeat per configuration cannot test J/token differences (a two-sample t test needs 2); "
                f"{ev.describe()}")
    mdd = j_per_token_mdd_rel(repeats, ev.cv, alpha, power)
    return (f"{repeats} repeats detect J/token differences above {mdd:.1%} "
            f"(two-sample t, {_setting(alpha, power)}; {ev.describe()})")


def epi_sentence(repeats: int, questions: dict[str, int], mv: MeasuredVariance, alpha: float = ALPHA,
                 power: float = POWER) -> str | None:
    """The relative EPI MDD of the setting with its two parts; None when unknown."""
    mdd = epi_mdd_rel(repeats, questions, mv, alpha, power)
    if mdd is None:
        return None
    j = j_per_token_mdd_rel(repeats, mv.energy.cv, alpha, power)
    a = epi_accuracy_part(questions, mv, alpha, power)
    return (f"{repeats} repeats with these questions detect EPI differences above {mdd:.1%} "
            f"(root sum of squares of the J/token part {j:.1%} and the accuracy part {a:.1%})")


def detect_accuracy_sentences(diff: float, questions: dict[str, int], mv: MeasuredVariance, alpha: float = ALPHA,
                              power: float = POWER) -> list[str]:
    """Per benchmark, the questions an accuracy difference ``diff`` needs."""
    out = []
    for b in questions:
        var = mv.for_benchmark(b)
        n = questions_needed(diff, var, alpha, power)
        out.append(f"{bench_name(b)} accuracy differences of {diff:.2f} need {n} questions per configuration "
                   f"({_setting(alpha, power)}; {var.describe()})")
    return out


def detect_epi_sentences(rel_diff: float, questions: dict[str, int], mv: MeasuredVariance, alpha: float = ALPHA,
                         power: float = POWER) -> list[str]:
    """The repeats a relative J/token and a relative EPI difference ``rel_diff`` need."""
    ev = mv.energy
    if ev.cv is None:
        out = [f"J/token or EPI differences of {rel_diff:.1%}: {ev.describe()}, so no repeat count is computed"]
        if ev.meter_rel_uncertainty is not None:
            r = meter_repeats_needed(rel_diff, ev.meter_rel_uncertainty, alpha, power)
            out[0] += f"; the meter's uncertainty alone would allow it with {r} repeat{'s' * (r != 1)}, at best"
        return out
    out = [f"J/token differences of {rel_diff:.1%} need {repeats_needed(rel_diff, ev.cv, alpha, power)} repeats "
           f"(two-sample t, {_setting(alpha, power)}; {ev.describe()})"]
    r = epi_repeats_needed(rel_diff, questions, mv, alpha, power)
    a = epi_accuracy_part(questions, mv, alpha, power)
    if r is not None:
        out.append(f"EPI differences of {rel_diff:.1%} need {r} repeats with these questions "
                   f"(the accuracy part is {a:.1%})")
    elif a is not None:
        out.append(f"EPI differences of {rel_diff:.1%} cannot be detected with these questions however many repeats: "
                   f"the accuracy part alone is {a:.1%}; more than {(a / rel_diff) ** 2:.1f} times as many questions "
                   "are needed")
    return out


def plan_lines(mv: MeasuredVariance, questions: dict[str, int], repeats: int, *, detect_accuracy: float | None = None,
               detect_epi: float | None = None, alpha: float = ALPHA, power: float = POWER) -> list[str]:
    """The planner's power analysis of a setting (``questions`` per benchmark, ``repeats``)."""
    lines = [accuracy_sentence(b, n, mv.for_benchmark(b), alpha, power) for b, n in questions.items()]
    lines.append(j_per_token_sentence(repeats, mv.energy, alpha, power))
    epi = epi_sentence(repeats, questions, mv, alpha, power)
    if epi:
        lines.append(epi)
    if detect_accuracy is not None:
        lines += detect_accuracy_sentences(detect_accuracy, questions, mv, alpha, power)
    if detect_epi is not None:
        lines += detect_epi_sentences(detect_epi, questions, mv, alpha, power)
    return lines
