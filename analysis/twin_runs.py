"""The Polars twin of ``analysis/runs.sql``: the same four results, computed without DuckDB.

Every headline number is computed twice (style lesson 11): the SQL views ``run_energy``,
``run_accuracy``, ``run_metrics`` and ``config_summary`` are the contract; this module reads
the lake with :meth:`mqepi.lake.Lake.read`, measures each window with the Python
implementation of the energy windows (:func:`mqepi.meter.windows.analyze_run`, not the SQL
``window_energy_total``), and derives the rest in Polars. Tests compare both on the same lake.
Each function returns a Polars frame with the view's columns, in the view's order, sorted by
its key. Definitions: ``docs/analysis.md``; the SQL file's comments say the same.

The seeded bootstrap is :mod:`mqepi.analysis.bootstrap`, shared with the SQL and the
frontier twin; the view columns come from :mod:`mqepi.analysis.contract`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl

from mqepi.analysis import bootstrap, hierarchical, twin_flips
from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.analysis.contract import CONFIG_KEY, UNKNOWN_HARDWARE, VIEWS
from mqepi.analysis.stats import DEFAULT_Z, wilson_interval
from mqepi.lake.store import Lake
from mqepi.meter.windows import IDLE_PHASE, Measurement, analyze_run
from mqepi.quality.tasks import BENCHMARK_PHASES
from mqepi.schemas import RUN_KEYS

WINDOW_KINDS = {IDLE_PHASE: "idle", **{b: "benchmark" for b in BENCHMARK_PHASES}, "perplexity": "perplexity",
                "kld": "kld", "pp": "prefill", "tg": "decode"}
GROUP_KEY = list(CONFIG_KEY)
RUN_KEY = list(RUN_KEYS)

#: The columns of each view, in its order (the contract).
RUN_ENERGY_COLUMNS = list(VIEWS["run_energy"])
RUN_ACCURACY_COLUMNS = list(VIEWS["run_accuracy"])
RUN_METRICS_COLUMNS = list(VIEWS["run_metrics"])
CONFIG_SUMMARY_COLUMNS = list(VIEWS["config_summary"])
#: Metrics of config_summary with a bootstrap interval.
BOOTSTRAPPED = ("j_per_token", "accuracy", "epi")
#: Metrics of config_summary that are plain medians over the valid runs.
MEDIANS = ("ppl", "ppl_stderr", "kld_mean", "file_size_bytes", "bits_per_weight", "decode_tokens_per_s",
           "prefill_j_per_token", "decode_j_per_token", "avg_power_w")


# --------------------------------------------------------------------------- runs


def run_info(lake: Lake) -> pl.DataFrame:
    """One row per run: model, config_id, run_id, origin, repeat, power_source, file_sha256,
    hardware_id (from the started event, else the earliest run event; 'unknown' without one)
    and run_status."""
    runs = lake.read("run")
    if "hardware_id" not in runs.columns:  # a lake of run schema 1 only
        runs = runs.with_columns(hardware_id=pl.lit(None, dtype=pl.Utf8))
    ordered = runs.with_columns(_late=pl.col("status") != "started").sort(["_late", "recorded_at_ns", "event_id"])
    return ordered.group_by(RUN_KEY, maintain_order=True).agg(
        pl.col("origin").first(), pl.col("repeat").first(), pl.col("power_source").first(),
        pl.col("file_sha256").first(), pl.col("hardware_id").first().fill_null(UNKNOWN_HARDWARE),
        run_status=pl.when((pl.col("status") == "failed").any()).then(pl.lit("failed"))
        .when((pl.col("status") == "finished").any()).then(pl.lit("finished")).otherwise(pl.lit("started")),
    )


#: Columns run_energy takes from the run (run_info) and derives, rather than from the window.
_RUN_COLUMNS = ("origin", "repeat", "run_status", "power_source", "hardware_id", "simulated", "window_kind")
#: The measured windows: the run key, the window's own run_energy columns, and whether its
#: samples were simulated.
_WINDOW_SCHEMA = {**{c: t for c, t in VIEWS["run_energy"].items() if c not in _RUN_COLUMNS},
                  "samples_simulated": pl.Boolean}


def _window_row(key: tuple, m: Measurement) -> dict:
    """One measured window as a row of _WINDOW_SCHEMA."""
    idle = [c.idle_power_w for c in m.channels]
    return {
        **dict(zip(RUN_KEY, key)), "samples_simulated": m.simulated, "phase": m.name, "node": m.node,
        "start_ns": m.start_ns, "end_ns": m.end_ns, "elapsed_s": m.elapsed_s, "energy_j": m.energy_j,
        "net_energy_j": m.net_energy_j, "idle_power_w": sum(idle) if idle and None not in idle else None,
        "avg_power_w": m.avg_power_w, "energy_uncertainty_j": m.energy_uncertainty_j, "tokens": m.tokens,
        "j_per_token": m.j_per_token, "net_j_per_token": m.net_j_per_token, "coverage": m.coverage,
        "valid": m.valid, "invalid_reasons": "; ".join(m.invalid_reasons) or None}


def _measured_windows(lake: Lake, phases: pl.DataFrame) -> pl.DataFrame:
    """Every phase window measured by the Python energy windows, one row each."""
    rows = []
    for key, ph in phases.partition_by(RUN_KEY, as_dict=True, maintain_order=True).items():
        measured: dict[tuple, list] = {}
        for m in analyze_run(lake, key[2], phases=ph):
            measured.setdefault((m.name, m.node, m.start_ns, m.end_ns), []).append(m)
        for p in ph.sort(["start_ns", "phase", "event_id"]).iter_rows(named=True):
            rows.append(_window_row(key, measured[(p["phase"], p["node"], p["start_ns"], p["end_ns"])].pop(0)))
    return pl.DataFrame(rows, schema=_WINDOW_SCHEMA)


def run_energy(lake: Lake, runs: pl.DataFrame | None = None) -> pl.DataFrame:
    """The view ``run_energy``: one row per run and phase window."""
    runs = run_info(lake) if runs is None else runs
    phases = lake.read("phase")
    # a window of a run without run events takes the origin of the run's first phase event
    phase_origin = phases.sort(["recorded_at_ns", "event_id"]).group_by(RUN_KEY, maintain_order=True).agg(
        phase_origin=pl.col("origin").first())
    kinds = pl.col("phase").replace_strict(WINDOW_KINDS, default="other", return_dtype=pl.Utf8)
    return (_measured_windows(lake, phases).join(runs, on=RUN_KEY, how="left").join(phase_origin, on=RUN_KEY, how="left")
            .with_columns(origin=pl.coalesce("origin", "phase_origin"), window_kind=kinds,
                          hardware_id=pl.col("hardware_id").fill_null(UNKNOWN_HARDWARE),
                          simulated=(pl.col("power_source") == "simulated").fill_null(False) | pl.col("samples_simulated"))
            .select(RUN_ENERGY_COLUMNS)
            .sort(["model", "config_id", "run_id", "start_ns", "phase", "node"], nulls_last=True))


# --------------------------------------------------------------------------- accuracy


def run_accuracy(lake: Lake, runs: pl.DataFrame | None = None, *, z: float = DEFAULT_Z) -> pl.DataFrame:
    """The view ``run_accuracy``: one row per run and benchmark, plus ``composite``."""
    runs = run_info(lake) if runs is None else runs
    answers = lake.read("benchmark_answer", columns=[
        "model", "config_id", "run_id", "benchmark", "question_set_sha256", "correct", "correct_norm", "origin",
        "recorded_at_ns", "event_id"]).sort(["recorded_at_ns", "event_id"])
    per = answers.group_by([*RUN_KEY, "benchmark"], maintain_order=True).agg(
        answer_origin=pl.col("origin").first(),
        question_set_sha256=pl.col("question_set_sha256").unique().sort().str.join(","),
        n_questions=pl.len().cast(pl.Int64), n_correct=pl.col("correct").sum().cast(pl.Int64),
        # acc_norm only where every answer has correct_norm
        n_correct_norm=pl.when(pl.col("correct_norm").null_count() == 0)
        .then(pl.col("correct_norm").sum().cast(pl.Int64)))
    bounds = [wilson_interval(k, n, z) for k, n in zip(per["n_correct"], per["n_questions"])]
    per = per.with_columns(
        accuracy=pl.col("n_correct") / pl.col("n_questions"),
        accuracy_ci_low=pl.Series([lo for lo, _ in bounds], dtype=pl.Float64),
        accuracy_ci_high=pl.Series([hi for _, hi in bounds], dtype=pl.Float64),
        accuracy_norm=pl.col("n_correct_norm") / pl.col("n_questions"))
    composite = per.sort("benchmark").group_by(RUN_KEY, maintain_order=True).agg(
        pl.col("answer_origin").first(), benchmark=pl.lit("composite"),
        question_set_sha256=pl.lit(None, dtype=pl.Utf8), n_questions=pl.col("n_questions").sum(),
        n_correct=pl.col("n_correct").sum(), accuracy=pl.col("accuracy").mean(),
        accuracy_ci_low=pl.col("accuracy_ci_low").mean(), accuracy_ci_high=pl.col("accuracy_ci_high").mean(),
        n_correct_norm=pl.when(pl.col("n_correct_norm").null_count() == 0).then(pl.col("n_correct_norm").sum()),
        accuracy_norm=pl.when(pl.col("accuracy_norm").null_count() == 0).then(pl.col("accuracy_norm").mean()))
    both = pl.concat([per, composite.select(per.columns)])
    return (both.join(runs, on=RUN_KEY, how="left")
            .with_columns(origin=pl.coalesce("origin", "answer_origin"),
                          hardware_id=pl.col("hardware_id").fill_null(UNKNOWN_HARDWARE))
            .select(RUN_ACCURACY_COLUMNS).sort([*RUN_KEY, "benchmark"]))


# --------------------------------------------------------------------------- per run


def _latest(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """The latest recorded event (then the greatest event id) per ``by``."""
    return df.sort(["recorded_at_ns", "event_id"], descending=True).group_by(by, maintain_order=True).first()


def _all_or_none(column: str, where: pl.Expr) -> pl.Expr:
    """Sum of ``column`` over the rows ``where``, None if one of them is None."""
    values = pl.col(column).filter(where)
    return pl.when((values.len() > 0) & (values.null_count() == 0)).then(values.sum()).otherwise(None)


def _ratio(num: str, den: str, where: pl.Expr) -> pl.Expr:
    den_sum = _all_or_none(den, where)
    return _all_or_none(num, where) / _nonzero(den_sum)


def _nonzero(expr: pl.Expr) -> pl.Expr:
    """``expr``, None where it is 0 (SQL ``nullif(x, 0)``)."""
    return pl.when(expr != 0).then(expr)


def _benchmark_windows(energy: pl.DataFrame) -> pl.DataFrame:
    """Per run: its benchmark windows' count, validity, energy, tokens and time, the J/token
    of each benchmark, of prefill and of decode, and the invalid windows' reasons."""
    bench = pl.col("window_kind") == "benchmark"
    invalid = energy.filter(bench & ~pl.col("valid")).sort(["start_ns", "phase", "node"], nulls_last=True)
    reasons = invalid.group_by(RUN_KEY, maintain_order=True).agg(
        window_reasons=pl.concat_str(pl.col("phase"), pl.lit(": "), pl.col("invalid_reasons").fill_null("invalid"))
        .str.join("; "))
    energy = energy.with_columns(_u2=pl.col("energy_uncertainty_j") * pl.col("energy_uncertainty_j"))
    return energy.group_by(RUN_KEY).agg(
        n_windows=bench.sum(),
        all_valid=pl.col("valid").filter(bench).all(),
        samples_simulated=pl.col("simulated").filter(bench).any(),
        benchmark_energy_j=_all_or_none("energy_j", bench),
        benchmark_energy_uncertainty_j=_all_or_none("_u2", bench).sqrt(),
        net_energy_j=_all_or_none("net_energy_j", bench),
        benchmark_tokens=_all_or_none("tokens", bench),
        benchmark_questions=_all_or_none("window_questions", bench),
        elapsed_s=pl.col("elapsed_s").filter(bench).sum(),
        **{f"jpt_{b}": _ratio("energy_j", "tokens", pl.col("phase") == b) for b in BENCHMARK_PHASES},
        prefill_j_per_token=_ratio("energy_j", "tokens", pl.col("window_kind") == "prefill"),
        decode_j_per_token=_ratio("energy_j", "tokens", pl.col("window_kind") == "decode"),
    ).join(reasons, on=RUN_KEY, how="left")


def _accuracies(accuracy: pl.DataFrame) -> pl.DataFrame:
    """Per run: benchmarks answered, the composite accuracy and each benchmark's."""
    return accuracy.group_by(RUN_KEY).agg(
        n_benchmarks=(pl.col("benchmark") != "composite").sum().cast(pl.Int64),
        accuracy=pl.col("accuracy").filter(pl.col("benchmark") == "composite").first(),
        accuracy_norm=pl.col("accuracy_norm").filter(pl.col("benchmark") == "composite").first(),
        **{f"acc_{b}": pl.col("accuracy").filter(pl.col("benchmark") == b).first() for b in BENCHMARK_PHASES})


def _quality(lake: Lake) -> list[pl.DataFrame]:
    """Per run: its latest perplexity, kld and prefill / decode throughput."""
    ppl = _latest(lake.read("perplexity"), RUN_KEY).select(*RUN_KEY, "ppl", "ppl_stderr")
    kld = _latest(lake.read("kld"), RUN_KEY).select(*RUN_KEY, "kld_mean", "same_top_p")
    tput = _latest(lake.read("throughput").filter(pl.col("test").is_in(["pp", "tg"])), [*RUN_KEY, "test"])
    tput = tput.group_by(RUN_KEY).agg(
        prefill_tokens_per_s=pl.col("tokens_per_s").filter(pl.col("test") == "pp").first(),
        decode_tokens_per_s=pl.col("tokens_per_s").filter(pl.col("test") == "tg").first())
    return [ppl, kld, tput]


def _run_files(lake: Lake, finished: pl.DataFrame) -> pl.DataFrame:
    """Per run: size and bits per weight of its file's quantization (of its origin first, then
    the latest; a run without a file hash takes its configuration's)."""
    quant = lake.read("quantization").select("model", "config_id", "file_sha256", "origin", "recorded_at_ns",
                                             "event_id", "file_size_bytes", "bits_per_weight")
    return (finished.select(*RUN_KEY, "origin", run_file="file_sha256")
            .join(quant, on=["model", "config_id"], how="inner", suffix="_q")
            .filter(pl.col("run_file").is_null() | (pl.col("run_file") == pl.col("file_sha256")))
            .with_columns(same_origin=pl.col("origin_q") == pl.col("origin"))
            .sort(["same_origin", "recorded_at_ns", "event_id"], descending=True)
            .group_by(RUN_KEY, maintain_order=True).first()
            .select(*RUN_KEY, "file_size_bytes", "bits_per_weight"))


def run_metrics(lake: Lake, *, z: float = DEFAULT_Z, runs: pl.DataFrame | None = None,
                energy: pl.DataFrame | None = None, accuracy: pl.DataFrame | None = None) -> pl.DataFrame:
    """The view ``run_metrics``: one row per finished run (finished, never failed)."""
    runs = run_info(lake) if runs is None else runs
    energy = run_energy(lake, runs) if energy is None else energy
    accuracy = run_accuracy(lake, runs, z=z) if accuracy is None else accuracy
    finished = runs.filter(pl.col("run_status") == "finished")
    answered = accuracy.filter(pl.col("benchmark") != "composite").select(
        *RUN_KEY, phase=pl.col("benchmark"), window_questions=pl.col("n_questions"))
    energy = energy.join(answered, on=[*RUN_KEY, "phase"], how="left")
    out = finished
    for part in (_benchmark_windows(energy), _accuracies(accuracy), *_quality(lake), _run_files(lake, finished)):
        out = out.join(part, on=RUN_KEY, how="left")
    jpt = pl.col("benchmark_energy_j") / _nonzero(pl.col("benchmark_tokens"))
    return out.with_columns(
        simulated=(pl.col("power_source") == "simulated") | pl.col("samples_simulated").fill_null(False),
        valid=((pl.col("n_windows") > 0) & pl.col("all_valid")).fill_null(False),
        n_benchmarks=pl.col("n_benchmarks").fill_null(0),
        benchmark_tokens=pl.col("benchmark_tokens").cast(pl.Int64),
        benchmark_questions=pl.col("benchmark_questions").cast(pl.Int64),
        j_per_token=jpt,
        j_per_question=pl.col("benchmark_energy_j") / _nonzero(pl.col("benchmark_questions")),
        net_j_per_token=pl.col("net_energy_j") / _nonzero(pl.col("benchmark_tokens")),
        epi=jpt / _nonzero(pl.col("accuracy")),
        **{f"epi_{b}": pl.col(f"jpt_{b}") / _nonzero(pl.col(f"acc_{b}")) for b in BENCHMARK_PHASES},
        avg_power_w=pl.col("benchmark_energy_j") / _nonzero(pl.col("elapsed_s")),
        idle_power_w=(pl.col("benchmark_energy_j") - pl.col("net_energy_j")) / _nonzero(pl.col("elapsed_s")),
        invalid_reasons=pl.when(pl.col("n_windows").fill_null(0) == 0).then(pl.lit("no benchmark window"))
        .otherwise(pl.col("window_reasons")),
    ).select(RUN_METRICS_COLUMNS).sort(RUN_KEY)


# --------------------------------------------------------------------------- per configuration


def _layer_types(map_json: str | None) -> dict[str, str | None]:
    """Quant type of the map's groups named early / middle / late (None where absent)."""
    out = {"early_type": None, "middle_type": None, "late_type": None}
    try:
        groups = json.loads(map_json).get("layer_groups") if map_json else None
    except (ValueError, AttributeError):
        return out
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return out
    for name in ("early", "middle", "late"):
        match = [g.get("quant") for g in groups if g.get("name") == name]
        out[f"{name}_type"] = None if not match or match[0] is None else str(match[0])
    return out


def config_identity(lake: Lake, metrics: pl.DataFrame) -> pl.DataFrame:
    """The view ``config_identity``: per (model, origin, config_id) its effective model."""
    keyed = [lake.read(t).select("model", "origin", "config_id", "recorded_at_ns", "event_id",
                                 effective_key=pl.concat_str("base_sha256", "effective_map_sha256", separator="/"))
             for t in ("quantization", "config_alias")]
    latest = (pl.concat(keyed).sort(["recorded_at_ns", "event_id"], descending=True)
              .group_by("model", "origin", "config_id", maintain_order=True).first()
              .select("model", "origin", "config_id", "effective_key"))
    ran = metrics.group_by("model", "origin", "config_id").agg(measured=pl.lit(True))
    configs = (latest.join(ran, on=["model", "origin", "config_id"], how="full", coalesce=True)
               .with_columns(measured=pl.col("measured").fill_null(False),
                             _model_key=pl.coalesce("effective_key", pl.lit("config:") + pl.col("config_id"))))
    over = ["model", "origin", "_model_key"]
    named = ~pl.col("config_id").str.starts_with("probe-")  # a sensitivity probe's name last
    return (configs.with_columns(
        canonical_id=pl.coalesce(pl.col("config_id").filter(pl.col("measured") & named).min().over(over),
                                 pl.col("config_id").filter(named).min().over(over),
                                 pl.col("config_id").filter(pl.col("measured")).min().over(over),
                                 pl.col("config_id").min().over(over)),
        config_ids=pl.col("config_id").sort().implode().over(over))
        .select(list(VIEWS["config_identity"])).sort(["model", "origin", "config_id"]))


def _canonical(metrics: pl.DataFrame, identity: pl.DataFrame) -> pl.DataFrame:
    """run_metrics with each run's effective model: canonical_id and config_ids."""
    ident = identity.select("model", "origin", "config_id", "canonical_id", "config_ids")
    return (metrics.join(ident, on=["model", "origin", "config_id"], how="left")
            .with_columns(canonical_id=pl.coalesce("canonical_id", "config_id"),
                          config_ids=pl.coalesce("config_ids", pl.concat_list("config_id"))))


def boot_items(metrics: pl.DataFrame, identity: pl.DataFrame) -> pl.DataFrame:
    """The bootstrap's items (runs.sql mqepi_boot_items): every valid run with its family g,
    configuration key ckey, run_key, item index i and item count n."""
    return (_canonical(metrics, identity).filter(pl.col("valid"))
            .with_columns(g=pl.concat_str("model", "origin", "power_source", "hardware_id", separator="/"),
                          ckey=pl.concat_str("model", "origin", "power_source", "hardware_id", "canonical_id",
                                             separator="/"),
                          run_key=pl.concat_str("model", "config_id", "run_id", separator="/"))
            .sort(["ckey", "repeat", "run_id"])
            .with_columns(i=pl.int_range(pl.len()).over("ckey"), n=pl.len().over("ckey")))


def _interval_note(n_repeats: int, meter: bool, flat: dict[str, bool], acc: float | None, n_questions: int,
                   epi_infinite_share: float | None = None, epi_unbounded: bool = False) -> str | None:
    notes = []
    if n_repeats == 1 and meter and not flat["j_per_token"]:
        notes.append("one repeat: the J/token interval covers the meter's uncertainty only, not run-to-run variation")
    elif n_repeats == 1:
        notes.append("one repeat: run-to-run variation is not in any interval")
    if flat["accuracy"]:
        notes.append(f"accuracy: no interval, every resample gives {acc:.4g} ({n_questions} questions, "
                     f"{n_repeats} repeat{'' if n_repeats == 1 else 's'})")
    if flat["j_per_token"]:
        notes.append("J/token: no interval, every resample gives the same value (no repeat or meter variation)")
    if flat["epi"] and epi_infinite_share == 1.0:
        notes.append("EPI: infinite in every resample (accuracy 0)")
    elif flat["epi"]:
        notes.append("EPI: no interval, every resample gives the same value")
    elif epi_unbounded:
        notes.append(f"EPI: no upper bound, accuracy is 0 in {100 * epi_infinite_share:.0f}% of resamples")
    return "; ".join(notes) or None


def _group_medians(runs: pl.DataFrame, items: pl.DataFrame, resampled: hierarchical.RunResamples,
                   n_questions: int, seed: int, n_boot: int) -> dict:
    """config_summary's counts, medians and hierarchical bootstrap intervals over one
    effective model's runs."""
    valid = runs.filter(pl.col("valid"))
    row = {"simulated": bool(runs["simulated"].any()), "n_repeats": valid.height, "n_excluded": runs.height - valid.height,
           "n_questions": n_questions}
    keys = items["run_key"].to_list()
    flat = {}
    share, unbounded = None, False
    for name in BOOTSTRAPPED:
        row[name] = valid[name].cast(pl.Float64).median()
        low = high = None
        flat[name] = False
        if keys:
            stats = hierarchical.pick_medians([getattr(resampled, name)[k] for k in keys], seed, n_boot)
            low, high, flat[name] = hierarchical.interval(stats)
            if flat[name]:
                row[f"_{name}_flat"] = float(np.nanmin(stats))
            if name == "epi":
                finite = stats[~np.isnan(stats)]
                share = float((finite >= hierarchical.INFINITE_FROM).sum() / finite.size) if finite.size else None
                low, high = hierarchical.unbounded(low), hierarchical.unbounded(high)
                unbounded = high == math.inf
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
    meter = bool(((valid["benchmark_energy_uncertainty_j"].fill_null(0)) > 0).any())
    row["interval_note"] = _interval_note(valid.height, meter, flat, row.pop("_accuracy_flat", None), n_questions,
                                          share, unbounded)
    row.pop("_j_per_token_flat", None)
    row.pop("_epi_flat", None)
    for name in MEDIANS:
        row[name] = valid[name].cast(pl.Float64).median()
    row["accuracy_norm"] = valid["accuracy_norm"].cast(pl.Float64).median()
    row["j_per_question"] = valid["j_per_question"].cast(pl.Float64).median()
    row["j_per_question_ci_low"] = row["j_per_question_ci_high"] = None
    if keys:
        low, high, _flat = hierarchical.interval(hierarchical.pick_medians(
            _question_energy_resamples(items, valid, seed, n_boot), seed, n_boot))
        row["j_per_question_ci_low"], row["j_per_question_ci_high"] = low, high
    return row


def _question_energy_resamples(items: pl.DataFrame, valid: pl.DataFrame, seed: int, n_boot: int) -> list[np.ndarray]:
    """Per item run (in item order): its J/question in each resample, the meter's noise drawn
    as for J/token (resamples.sql), over the questions answered in its benchmark windows."""
    questions = dict(zip(valid["run_id"].to_list(), valid["benchmark_questions"].to_list()))
    keys = items["run_key"].to_list()
    noise = bootstrap.normal_matrix(seed, n_boot, [bootstrap.run_hash(k) for k in keys])
    out = []
    for col, row in enumerate(items.iter_rows(named=True)):
        energy, unc, n = row["benchmark_energy_j"], row["benchmark_energy_uncertainty_j"], questions.get(row["run_id"])
        if energy is None or not n:
            out.append(np.full(n_boot, np.nan))
        else:
            out.append((energy + (unc or 0.0) * noise[:, col]) / n)
    return out


def _group_config(configs: pl.DataFrame, group: dict) -> dict:
    """The group's quant_config (of its origin first, then the latest): kind and layer types."""
    chosen = (configs.filter((pl.col("model") == group["model"]) & (pl.col("config_id") == group["config_id"]))
              .with_columns(same_origin=pl.col("origin") == group["origin"])
              .sort(["same_origin", "recorded_at_ns", "event_id"], descending=True))
    return {"kind": chosen["kind"][0] if chosen.height else None,
            **_layer_types(chosen["map_json"][0] if chosen.height else None)}


def config_summary(lake: Lake, *, seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP, z: float = DEFAULT_Z,
                   metrics: pl.DataFrame | None = None, identity: pl.DataFrame | None = None) -> pl.DataFrame:
    """The view ``config_summary``: medians over the valid runs of each effective model and
    (model, origin, power_source, hardware_id), with the hierarchical bootstrap's intervals."""
    bootstrap.check_params(seed, n_boot)
    metrics = run_metrics(lake, z=z) if metrics is None else metrics
    identity = config_identity(lake, metrics) if identity is None else identity
    configs = lake.read("quant_config").select("model", "config_id", "origin", "recorded_at_ns", "event_id", "kind",
                                               "map_json")
    items = boot_items(metrics, identity)
    answers = lake.read("benchmark_answer")
    resampled = hierarchical.run_resamples(items, answers, seed, n_boot)
    answered = (answers.with_columns(run_key=pl.concat_str("model", "config_id", "run_id", separator="/"))
                .join(items.select("run_key", "ckey"), on="run_key")
                .group_by("ckey").agg(n=pl.struct("benchmark", "question_set_sha256", "question_id").n_unique()))
    n_questions = dict(zip(answered["ckey"].to_list(), answered["n"].to_list()))
    flips = _flips_vs_base(items, answers, configs, z, lake.read("quantization"))
    rows = []
    runs_by = _canonical(metrics, identity).with_columns(config_id=pl.col("canonical_id"))
    for key, runs in runs_by.partition_by(GROUP_KEY, as_dict=True, maintain_order=True).items():
        group = dict(zip(GROUP_KEY, key))
        ckey = "/".join([group["model"], group["origin"], group["power_source"], group["hardware_id"], group["config_id"]])
        mine = items.filter(pl.col("ckey") == ckey)
        rows.append({**group, "config_ids": runs["config_ids"][0].to_list(),
                     **_group_medians(runs, mine, resampled, n_questions.get(ckey, 0), seed, n_boot),
                     **_group_config(configs, group),
                     **flips.get(ckey, {"flip_reference_id": flips.get(_family(ckey))})})
    return pl.DataFrame(rows, schema=VIEWS["config_summary"]).sort(GROUP_KEY)


def _family(ckey: str) -> str:
    return ckey.rsplit("/", 1)[0]


def _flips_vs_base(items: pl.DataFrame, answers: pl.DataFrame, configs: pl.DataFrame, z: float,
                   quantization: pl.DataFrame | None = None) -> dict:
    """ckey -> config_summary's flip columns (answer_flips against the base, benchmark 'all');
    family g -> its base's name (for the base itself and configurations without a comparison)."""
    out: dict = {}
    for g, ckey in twin_flips.bases(items, configs, quantization).items():
        out[g] = ckey.rsplit("/", 1)[1]
    flips = twin_flips.answer_flips(items, answers, configs, z=z, quantization=quantization).filter(pl.col("benchmark") == "all")
    for r in flips.iter_rows(named=True):
        ckey = "/".join([r["model"], r["origin"], r["power_source"], r["hardware_id"], r["config_id"]])
        out[ckey] = {"flip_reference_id": r["reference_config_id"], "flip_share": r["flip_share"],
                     "flip_share_low": r["flip_share_low"], "flip_share_high": r["flip_share_high"]}
    return out


def all_views(lake: Lake, *, seed: int = DEFAULT_SEED, n_boot: int = DEFAULT_BOOTSTRAP,
              z: float = DEFAULT_Z) -> dict[str, pl.DataFrame]:
    """The four results at once, reading and measuring the lake once."""
    runs = run_info(lake)
    energy = run_energy(lake, runs)
    accuracy = run_accuracy(lake, runs, z=z)
    metrics = run_metrics(lake, z=z, runs=runs, energy=energy, accuracy=accuracy)
    identity = config_identity(lake, metrics)
    summary = config_summary(lake, seed=seed, n_boot=n_boot, z=z, metrics=metrics, identity=identity)
    return {"run_energy": energy, "run_accuracy": accuracy, "run_metrics": metrics, "config_identity": identity,
            "config_summary": summary}
