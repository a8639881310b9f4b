"""Pandera (polars) models, one per lake event type.

Every event carries the common columns of :class:`Event`; each event type adds its own.
All models are strict (no unknown columns) and do not coerce (exact dtypes). Times are
integer nanoseconds: ``*_ns`` columns hold UTC nanoseconds since the Unix epoch, except
``host_monotonic_ns`` (the host's monotonic clock) and ``meter_time_ns`` (the meter's
own clock). Physical quantities carry their unit in the column name.

Partition columns (``model``, ``config_id``, ``run_id``) live in the lake path, not in the
Parquet files; they are still columns of every event and part of its content hash.

Importing this module needs pandera and polars only (no Prefect).
"""

from __future__ import annotations

import re

import pandera.polars as pa
import polars as pl

from mqepi.quality.tasks import BENCHMARKS
from mqepi.quant.ggml import GGML_TYPE_NAMES, QUANT_TYPE_NAMES

#: Version of a model below until it changes; a changed model's version is its EventSpec's
#: ``version`` (schemas/__init__.py): perplexity and kld are at 2 (their chunks).
SCHEMA_VERSION = 1

# The patterns below are checked by polars (Rust regex), where ``$`` matches only at the very
# end of the text: "c1\n" is refused. Python's ``re`` lets ``$`` match before a trailing
# newline, so Python code must use :func:`is_slug` / :func:`is_name` (``re.fullmatch``),
# never ``re.match`` with these strings.

#: A value that is also a path component of the lake: no separators, no leading dot.
SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: The name of a host, node or meter: a slug that may also hold ``:``, ``@``, ``%`` and
#: ``+`` (an executor is recorded as ``node:address``, e.g. ``pi0:192.168.1.20`` or ``head:::1``).
NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@%+-]{0,127}$"
#: Free text of one line shown to people (tensor names, question ids, producer ...): no control
#: character (C0, DEL, C1), so nothing stored can drive the terminal that prints it.
LABEL = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: lab, or community/<submitter> with a safe submitter slug.
ORIGIN = r"^(lab|community/[a-z0-9][a-z0-9_-]{0,63})$"
SHA256 = r"^[0-9a-f]{64}$"
#: A hardware profile's id (mqepi.rig.hardware.hardware_id): "hw-" and 12 hex digits.
HARDWARE_ID = r"^hw-[0-9a-f]{12}$"
#: Where a power reading came from. Anything but ``epi-meter``/``nvml`` is not a measurement.
POWER_SOURCES = ("epi-meter", "atm90e26", "nvml", "simulated", "replay")
RUN_STATUSES = ("started", "finished", "failed")
#: A run may measure no power at all (a quality-only evaluation): "none".
RUN_POWER_SOURCES = (*POWER_SOURCES, "none")
THROUGHPUT_TESTS = ("pp", "tg", "pg")


def is_slug(value: object) -> bool:
    """True if ``value`` is a string matching :data:`SLUG` as a whole (no trailing newline)."""
    return isinstance(value, str) and re.fullmatch(SLUG[1:-1], value) is not None


def is_label(value: object) -> bool:
    """True if ``value`` is a string with no control character (:data:`LABEL`)."""
    return isinstance(value, str) and re.fullmatch(LABEL[1:-1], value) is not None


def is_name(value: object) -> bool:
    """True if ``value`` is a string matching :data:`NAME` as a whole (no trailing newline)."""
    return isinstance(value, str) and re.fullmatch(NAME[1:-1], value) is not None


def _non_decreasing(column: str, by: list[str]):
    """Data frame check: ``column`` never decreases within each ``by`` group, in batch order."""

    def check(cls, data) -> pl.LazyFrame:
        diff = pl.col(column).diff().over(by)
        return data.lazyframe.select((diff.is_null() | (diff >= 0)).alias("ok"))

    check.__name__ = f"{column}_non_decreasing_per_{'_'.join(by)}"
    return check


def _finite(*columns: str):
    """Column check: every non-null value of ``columns`` is finite (no NaN, no infinity)."""

    def finite(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_finite() | pl.col(data.key).is_null())

    return pa.check(*columns, name="finite")(finite)


class Event(pa.DataFrameModel):
    """Columns every event has."""

    event_id: pl.Utf8 = pa.Field(str_matches=SHA256, description="sha256 of the canonical content")
    event_type: pl.Utf8 = pa.Field(description="the event type, equal to the model's name")
    schema_version: pl.Int32 = pa.Field(ge=1, description="version of this event type's schema")
    run_id: pl.Utf8 = pa.Field(nullable=True, str_matches=SLUG, description="run, null if not run-bound")
    recorded_at_ns: pl.Int64 = pa.Field(gt=0, description="when the event was recorded, UTC ns")
    origin: pl.Utf8 = pa.Field(str_matches=ORIGIN, description="lab or community/<submitter>")
    producer: pl.Utf8 = pa.Field(str_length={"min_value": 1, "max_value": 200}, str_matches=LABEL, description="tool/version")

    class Config:
        strict = True
        coerce = False


class ModelBound(Event):
    model: pl.Utf8 = pa.Field(str_matches=SLUG, description="model profile id")


class ConfigBound(ModelBound):
    config_id: pl.Utf8 = pa.Field(str_matches=SLUG, description="quant configuration id")


class RunBound(ConfigBound):
    run_id: pl.Utf8 = pa.Field(nullable=False, str_matches=SLUG, description="the run")


# --------------------------------------------------------------------------- configs


class QuantConfig(ConfigBound):
    """A registered quant map."""

    map_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    map_json: pl.Utf8 = pa.Field(str_length={"min_value": 2}, description="canonical JSON of the map")
    n_layers: pl.Int32 = pa.Field(ge=1)
    kind: pl.Utf8 = pa.Field(isin=["uniform", "mixed", "probe", "searched"],
                             description="mqepi.quant.maps.QuantMap.kind (docs/quant_maps.md, Kinds)")


class ConfigAlias(ConfigBound):
    """A configuration not measured because its effective per-tensor map equals another's: the
    sweep measured ``alias_of`` in its place (same base, same tensor types: the same model)."""

    alias_of: pl.Utf8 = pa.Field(str_matches=SLUG, description="the configuration measured in its place")
    map_sha256: pl.Utf8 = pa.Field(str_matches=SHA256, description="this configuration's map")
    base_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    effective_map_sha256: pl.Utf8 = pa.Field(str_matches=SHA256, description="hash of the per-tensor types, shared")

    @pa.dataframe_check
    def not_itself(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("alias_of") != pl.col("config_id"))


class Quantization(ConfigBound):
    """One GGUF made from a base model and a map."""

    map_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    base_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    base_ftype: pl.Utf8 = pa.Field(isin=sorted(QUANT_TYPE_NAMES), description="FTYPE given to llama-quantize")
    llama_cpp_commit: pl.Utf8 = pa.Field(str_length={"min_value": 1, "max_value": 64}, str_matches=LABEL)
    file_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    effective_map_sha256: pl.Utf8 = pa.Field(str_matches=SHA256, description="hash of the per-tensor types written")
    file_size_bytes: pl.Int64 = pa.Field(gt=0)
    bits_per_weight: pl.Float64 = pa.Field(gt=0, le=64)
    duration_s: pl.Float64 = pa.Field(ge=0)
    host: pl.Utf8 = pa.Field(str_matches=NAME, description="where llama-quantize ran")

    _finite = _finite("bits_per_weight", "duration_s")


class TensorInventory(ConfigBound):
    """One tensor of a quantized file: requested vs effective type."""

    file_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    tensor: pl.Utf8 = pa.Field(str_length={"min_value": 1, "max_value": 256}, str_matches=LABEL)
    layer: pl.Int32 = pa.Field(nullable=True, ge=0, description="block index, null for global tensors")
    group: pl.Utf8 = pa.Field(nullable=True, str_length={"min_value": 1, "max_value": 128}, str_matches=LABEL,
                              description="layer group of the map")
    requested_type: pl.Utf8 = pa.Field(nullable=True, isin=sorted(GGML_TYPE_NAMES), description="null if not quantizable")
    effective_type: pl.Utf8 = pa.Field(isin=sorted(GGML_TYPE_NAMES))
    fallback: pl.Boolean = pa.Field(description="effective differs from requested by llama.cpp's shape fallback")
    n_elements: pl.Int64 = pa.Field(gt=0)
    n_bytes: pl.Int64 = pa.Field(gt=0)


# --------------------------------------------------------------------------- runs


class Run(RunBound):
    """A run's lifecycle: one event when it starts, one when it finishes or fails.

    Version 2 adds ``hardware_id`` (the hash of the hardware profile, which itself is in
    ``provenance_json["hardware"]``); version 1 rows read with it null."""

    status: pl.Utf8 = pa.Field(isin=list(RUN_STATUSES))
    repeat: pl.Int32 = pa.Field(ge=0)
    file_sha256: pl.Utf8 = pa.Field(nullable=True, str_matches=SHA256)
    power_source: pl.Utf8 = pa.Field(isin=list(RUN_POWER_SOURCES))
    host: pl.Utf8 = pa.Field(str_matches=NAME, description="the head node or this machine")
    provenance_json: pl.Utf8 = pa.Field(description="versions, hashes, settings as JSON")
    message: pl.Utf8 = pa.Field(nullable=True, description="why a run failed")
    # schema 2: what the run was measured on
    hardware_id: pl.Utf8 = pa.Field(nullable=True, str_matches=HARDWARE_ID,
                                    description="mqepi.rig.hardware.hardware_id of the hardware profile "
                                                "(null: written before schema 2)")


class Phase(RunBound):
    """A named measurement window, bracketing exactly the work it measures."""

    phase: pl.Utf8 = pa.Field(str_matches=SLUG, description="idle_baseline, mmlu, perplexity, pp, tg ...")
    node: pl.Utf8 = pa.Field(nullable=True, str_matches=NAME, description="node the window is about, null for the cluster")
    start_ns: pl.Int64 = pa.Field(gt=0)
    end_ns: pl.Int64 = pa.Field(gt=0)
    tokens: pl.Int64 = pa.Field(nullable=True, ge=0, description="tokens processed inside the window")

    @pa.dataframe_check
    def end_not_before_start(cls, data) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("end_ns") >= pl.col("start_ns")).alias("ok"))


class PowerSample(RunBound):
    """One reading of one meter channel."""

    power_source: pl.Utf8 = pa.Field(isin=list(POWER_SOURCES))
    meter_id: pl.Utf8 = pa.Field(str_matches=NAME)
    channel: pl.Int32 = pa.Field(ge=0, le=63)
    node: pl.Utf8 = pa.Field(nullable=True, str_matches=NAME)
    seq: pl.Int64 = pa.Field(ge=0, description="meter sequence number")
    meter_time_ns: pl.Int64 = pa.Field(nullable=True, description="meter clock")
    host_time_ns: pl.Int64 = pa.Field(gt=0, description="host UTC time on arrival")
    host_monotonic_ns: pl.Int64 = pa.Field(ge=0, description="host monotonic clock on arrival")
    power_w: pl.Float64 = pa.Field(ge=0, le=1e6, description="active power, finite")
    voltage_v: pl.Float64 = pa.Field(nullable=True, ge=0, le=1e4)
    current_a: pl.Float64 = pa.Field(nullable=True, ge=0, le=1e4)
    power_factor: pl.Float64 = pa.Field(nullable=True, ge=-1, le=1)
    frequency_hz: pl.Float64 = pa.Field(nullable=True, ge=0, le=1e3)
    energy_counter_j: pl.Float64 = pa.Field(nullable=True, ge=0, description="meter's own energy register")

    _finite = _finite("power_w", "voltage_v", "current_a", "power_factor", "frequency_hz", "energy_counter_j")

    _ts_check = pa.dataframe_check(_non_decreasing("host_time_ns", ["run_id", "meter_id", "channel"]))


class ThermalSample(RunBound):
    """One temperature reading of one node."""

    node: pl.Utf8 = pa.Field(str_matches=NAME)
    sensor: pl.Utf8 = pa.Field(str_length={"min_value": 1, "max_value": 128}, str_matches=LABEL,
                               description="thermal zone type, e.g. cpu-thermal (may hold spaces)")
    host_time_ns: pl.Int64 = pa.Field(gt=0)
    temperature_c: pl.Float64 = pa.Field(ge=-60, le=150)
    throttled: pl.Boolean = pa.Field()
    throttle_flags: pl.Int64 = pa.Field(nullable=True, ge=0, description="vcgencmd get_throttled bits")

    _finite = _finite("temperature_c")

    _ts_check = pa.dataframe_check(_non_decreasing("host_time_ns", ["run_id", "node", "sensor"]))


# --------------------------------------------------------------------------- quality


class BenchmarkAnswer(RunBound):
    """One multiple-choice question answered by one run.

    Version 2 (the scoring engine, :mod:`mqepi.quality.engine`) fills every choice's summed
    log-likelihood, token count and byte length, the answer under lm-eval's ``acc`` (``predicted``)
    and ``acc_norm`` (``predicted_norm``), the tokens truncated from the left and the protocol's
    deviation from lm-evaluation-harness. Version 1 rows (llama-perplexity --multiple-choice) read
    with those columns null, ``predicted`` null where the answer was wrong and ``scoring`` null.
    """

    benchmark: pl.Utf8 = pa.Field(isin=list(BENCHMARKS))
    question_set_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    question_id: pl.Utf8 = pa.Field(str_length={"min_value": 1, "max_value": 256}, str_matches=LABEL)
    subject: pl.Utf8 = pa.Field(nullable=True, str_length={"max_value": 256}, str_matches=LABEL)
    shots: pl.Int32 = pa.Field(ge=0, le=64)
    prompt_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    predicted: pl.Int32 = pa.Field(nullable=True, ge=0, le=63,
                                   description="answer with the highest summed log-likelihood (lm-eval acc); "
                                               "null only in version 1 rows whose answer was wrong")
    gold: pl.Int32 = pa.Field(ge=0, le=63)
    correct: pl.Boolean = pa.Field()
    choice_scores: pl.List(pl.Float64) = pa.Field(nullable=True,
                                                  description="summed log-likelihood of each choice's continuation, nats")
    tokens_evaluated: pl.Int64 = pa.Field(gt=0)
    scoring: pl.Utf8 = pa.Field(nullable=True, isin=["loglikelihood"],
                                description="'loglikelihood': lm-eval's acc/acc_norm from every choice's summed "
                                            "log-likelihood; null: version 1 (llama-perplexity mean token log-prob)")
    choice_tokens: pl.List(pl.Int32) = pa.Field(nullable=True, description="tokens of each choice's continuation")
    choice_bytes: pl.List(pl.Int32) = pa.Field(nullable=True, description="UTF-8 bytes of each choice's text")
    predicted_norm: pl.Int32 = pa.Field(nullable=True, ge=0, le=63,
                                        description="answer with the highest log-likelihood per character (lm-eval acc_norm)")
    correct_norm: pl.Boolean = pa.Field(nullable=True)
    prompt_tokens: pl.Int32 = pa.Field(nullable=True, ge=0, description="tokens of the prompt (context) as scored")
    truncated_tokens: pl.Int32 = pa.Field(nullable=True, ge=0,
                                          description="tokens cut from the left of the longest choice to fit the context")
    deviation: pl.Utf8 = pa.Field(nullable=True, str_length={"max_value": 2000}, str_matches=LABEL,
                                  description="how this task's protocol differs from lm-evaluation-harness; null: it does not")

    @pa.check("choice_scores", name="finite")
    def choice_scores_finite(cls, data) -> pl.LazyFrame:
        scores = pl.col("choice_scores")
        return data.lazyframe.select(scores.is_null() | scores.list.eval(pl.element().is_finite()).list.all())

    @pa.dataframe_check
    def correct_is_predicted_eq_gold(cls, data) -> pl.LazyFrame:
        known = pl.col("correct") == (pl.col("predicted") == pl.col("gold"))
        return data.lazyframe.select(
            pl.when(pl.col("predicted").is_not_null()).then(known).otherwise(~pl.col("correct")).alias("ok")
        )

    @pa.dataframe_check
    def engine_rows_complete(cls, data) -> pl.LazyFrame:
        """A version 2 row (scoring set) has a prediction under both rules, and one score, token
        count and byte length per choice; correct_norm agrees with predicted_norm."""
        n = pl.col("choice_scores").list.len()
        complete = (pl.col("predicted").is_not_null() & pl.col("predicted_norm").is_not_null()
                    & pl.col("correct_norm").is_not_null() & pl.col("choice_scores").is_not_null()
                    & (pl.col("choice_tokens").list.len() == n) & (pl.col("choice_bytes").list.len() == n)
                    & (pl.col("predicted") < n) & (pl.col("predicted_norm") < n) & (pl.col("gold") < n)
                    & (pl.col("correct_norm") == (pl.col("predicted_norm") == pl.col("gold"))))
        return data.lazyframe.select(
            (pl.col("scoring").is_null() | complete.fill_null(False)).alias("ok"))


class Perplexity(RunBound):
    text_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    context: pl.Int32 = pa.Field(gt=0)
    chunks: pl.Int32 = pa.Field(gt=0)
    tokens: pl.Int64 = pa.Field(gt=0)
    ppl: pl.Float64 = pa.Field(ge=1, le=1e9)
    ppl_stderr: pl.Float64 = pa.Field(ge=0, le=1e9)
    # schema 2: the chunks, for paired tests between configurations on the same text
    chunk_nll: pl.List(pl.Float64) = pa.Field(
        nullable=True, description="mean negative log-likelihood per scored token of each chunk, nats, in text order "
                                   "(null: not recorded, schema 1)")
    chunk_tokens: pl.Int32 = pa.Field(nullable=True, gt=0, description="tokens scored in each chunk")

    _finite = _finite("ppl", "ppl_stderr")

    @pa.check("chunk_nll", name="finite")
    def chunk_nll_finite(cls, data) -> pl.LazyFrame:
        v = pl.col("chunk_nll")
        return data.lazyframe.select(v.is_null() | v.list.eval(pl.element().is_finite()).list.all())


class Kld(RunBound):
    base_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    text_sha256: pl.Utf8 = pa.Field(str_matches=SHA256)
    context: pl.Int32 = pa.Field(gt=0)
    chunks: pl.Int32 = pa.Field(gt=0)
    kld_mean: pl.Float64 = pa.Field(ge=0, le=1e6)
    kld_mean_stderr: pl.Float64 = pa.Field(nullable=True, ge=0)
    kld_median: pl.Float64 = pa.Field(ge=0, le=1e6)
    kld_p99: pl.Float64 = pa.Field(ge=0, le=1e6)
    ppl_ratio: pl.Float64 = pa.Field(gt=0, le=1e6)
    ppl_ratio_stderr: pl.Float64 = pa.Field(nullable=True, ge=0)
    same_top_p: pl.Float64 = pa.Field(ge=0, le=1, description="share of tokens whose argmax agrees")
    # schema 2: the chunks, for paired tests between configurations on the same text
    chunk_kld: pl.List(pl.Float64) = pa.Field(
        nullable=True, description="mean KL divergence per scored token of each chunk, nats, in text order "
                                   "(null: not recorded, schema 1)")
    chunk_tokens: pl.Int32 = pa.Field(nullable=True, gt=0, description="tokens scored in each chunk")

    _finite = _finite(
        "kld_mean", "kld_mean_stderr", "kld_median", "kld_p99", "ppl_ratio", "ppl_ratio_stderr", "same_top_p"
    )

    @pa.check("chunk_kld", name="finite")
    def chunk_kld_finite(cls, data) -> pl.LazyFrame:
        v = pl.col("chunk_kld")
        return data.lazyframe.select(v.is_null() | v.list.eval(pl.element().is_finite()).list.all())


class Throughput(RunBound):
    test: pl.Utf8 = pa.Field(isin=list(THROUGHPUT_TESTS))
    n_prompt: pl.Int32 = pa.Field(ge=0)
    n_gen: pl.Int32 = pa.Field(ge=0)
    repetitions: pl.Int32 = pa.Field(ge=1)
    n_threads: pl.Int32 = pa.Field(ge=1)
    tokens_per_s: pl.Float64 = pa.Field(gt=0, le=1e7)
    tokens_per_s_stddev: pl.Float64 = pa.Field(ge=0)
    rpc_nodes: pl.Int32 = pa.Field(ge=0, description="RPC workers used, 0 for a local run")

    _finite = _finite("tokens_per_s", "tokens_per_s_stddev")
