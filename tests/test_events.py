"""Event building, hashing and the schema gate."""

from __future__ import annotations

import math

import polars as pl
import pytest
from factories import batch, rows_for

from mqepi.errors import EventValidationError
from mqepi.lake import events
from mqepi.schemas import EVENT_TYPES


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_built_batches_validate_with_exact_schema(event_type):
    df = batch(event_type, 4)
    spec, checked = events.validate(df)
    assert spec.name == event_type
    assert checked.schema == spec.polars_schema
    assert df["event_id"].n_unique() == 4
    assert set(df["event_type"]) == {event_type}


def test_event_id_is_content_hash_independent_of_recording_time():
    rows = rows_for("perplexity", 2)
    a = events.build("perplexity", rows, recorded_at_ns=1)
    b = events.build("perplexity", rows, recorded_at_ns=2)
    assert a["event_id"].to_list() == b["event_id"].to_list()
    c = events.build("perplexity", {**rows, "ppl": [99.0, 98.0]})
    assert set(c["event_id"]).isdisjoint(a["event_id"])
    d = events.build("perplexity", rows, origin="community/alice")
    assert set(d["event_id"]).isdisjoint(a["event_id"])


def test_event_id_matches_documented_canonical_form():
    import hashlib
    import json

    df = batch("thermal_sample", 1)
    row = df.row(0, named=True)
    content = {k: v for k, v in row.items() if k not in ("event_id", "recorded_at_ns")}
    text = json.dumps(dict(sorted(content.items())), separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == row["event_id"]


def test_build_rejects_lossy_cast_naming_column():
    rows = rows_for("power_sample", 2)
    rows["channel"] = [0, 2**40]
    with pytest.raises(EventValidationError) as info:
        events.build("power_sample", rows)
    assert "channel" in str(info.value) and "power_sample" in str(info.value)


def _set(column, values):
    return lambda df: df.with_columns(pl.Series(column, values, dtype=df.schema[column]))


BAD = [
    ("power_sample", _set("power_w", [3.0, -1.0, 3.0]), "power_w", "greater_than_or_equal_to", "-1.0"),
    ("power_sample", _set("power_w", [3.0, math.nan, 3.0]), "power_w", "finite", "NaN"),
    ("power_sample", _set("power_w", [3.0, math.inf, 3.0]), "power_w", "finite", "inf"),
    ("power_sample", _set("host_time_ns", [3, 2, 4]), None, "host_time_ns_non_decreasing", "row 1"),
    ("power_sample", _set("power_source", ["simulated", "guess", "simulated"]), "power_source", "isin", "guess"),
    ("power_sample", _set("power_factor", [0.9, 1.5, 0.9]), "power_factor", "less_than_or_equal_to", "1.5"),
    ("power_sample", lambda df: df.with_columns(pl.col("channel").cast(pl.Int64)), "channel", "dtype('Int32')", "Int64"),
    ("power_sample", lambda df: df.with_columns(pl.lit(1).alias("watts_extra")), "watts_extra", "column_in_schema",
     "watts_extra"),
    ("power_sample", lambda df: df.drop("power_w"), "power_w", "column_in_dataframe", "power_w"),
    ("thermal_sample", _set("temperature_c", [40.0, 400.0, 41.0]), "temperature_c", "less_than_or_equal_to", "400.0"),
    ("tensor_inventory", _set("effective_type", ["q8_0", "q4_X", "q8_0"]), "effective_type", "isin", "q4_X"),
    ("quantization", _set("base_ftype", ["Q4_K_M", "Q4_K_Z", "Q4_K_M"]), "base_ftype", "isin", "Q4_K_Z"),
    ("run", _set("origin", ["lab", "LAB", "lab"]), "origin", "str_matches", "LAB"),
    ("run", _set("origin", ["lab", "community/../lab", "lab"]), "origin", "str_matches", "community/../lab"),
    ("run", _set("model", ["m", "../etc", "m"]), "model", "str_matches", "../etc"),
    ("run", _set("status", ["started", "running", "started"]), "status", "isin", "running"),
    ("run", _set("run_id", ["r1", None, "r1"]), "run_id", "not_nullable", "None"),
    ("phase", _set("end_ns", [1, 1, 10**19 // 10]), None, "end_not_before_start", "row 0"),
    ("benchmark_answer", _set("correct", [True, True, True]), None, "correct_is_predicted_eq_gold", "row 0"),
    ("benchmark_answer", _set("choice_scores", [[-1.0], [math.nan], [-2.0]]), "choice_scores", "finite", "null"),
    ("kld", _set("same_top_p", [0.9, 1.5, 0.9]), "same_top_p", "less_than_or_equal_to", "1.5"),
    ("perplexity", _set("ppl", [22.0, 0.5, 23.0]), "ppl", "greater_than_or_equal_to", "0.5"),
    ("throughput", _set("tokens_per_s", [1.0, 0.0, 2.0]), "tokens_per_s", "greater_than", "0.0"),
    ("quant_config", _set("kind", ["uniform", "weird", "mixed"]), "kind", "isin", "weird"),
]


@pytest.mark.parametrize("event_type,mutate,column,check,value", BAD, ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_events_name_type_column_check_and_value(event_type, mutate, column, check, value):
    df = mutate(batch(event_type, 3))
    with pytest.raises(EventValidationError) as info:
        events.validate(df, check_ids=False)
    message = str(info.value)
    assert message.startswith(f"invalid {event_type} events")
    failing = [f for f in info.value.failures if check in str(f["check"])]
    assert failing, info.value.failures
    assert failing[0]["column"] == column
    assert any(value.lower() in str(v).lower() for v in failing[0]["values"]), failing


def test_tampered_event_id_is_rejected():
    df = batch("kld", 2)
    tampered = pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("0" * 64)).otherwise(pl.col("event_id"))
    df = df.with_columns(tampered.alias("event_id"))
    with pytest.raises(EventValidationError) as info:
        events.validate(df)
    assert "event_id" in str(info.value) and "0" * 64 in str(info.value)


def test_content_change_without_new_id_is_rejected():
    df = batch("kld", 2).with_columns(pl.lit(0.5).alias("kld_mean"))
    with pytest.raises(EventValidationError, match="sha256"):
        events.validate(df)


def test_one_event_type_per_batch():
    mixed = pl.concat([batch("run", 1), batch("run", 1).with_columns(pl.lit("phase").alias("event_type"))])
    with pytest.raises(EventValidationError, match="one event type per batch"):
        events.validate(mixed)


def test_unknown_event_type():
    with pytest.raises(EventValidationError, match="bogus"):
        events.build("bogus", {"x": [1]})


def test_nan_in_a_nullable_float_column_is_rejected():
    df = batch("power_sample", 3).with_columns(pl.Series("voltage_v", [230.0, math.nan, None]))
    with pytest.raises(EventValidationError):
        events.validate(df, check_ids=False)


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_combined_checks_agree_with_pandera_on_valid_and_invalid_batches(event_type):
    from mqepi.lake.events import passes_all_checks
    from mqepi.schemas import spec_for

    spec = spec_for(event_type)
    good = batch(event_type, 5)
    assert passes_all_checks(spec, good)
    spec.schema.validate(good)
    for mutate, *_ in [(m, c) for t, m, c, *_ in BAD if t == event_type]:
        assert not passes_all_checks(spec, mutate(batch(event_type, 3)))


def test_unknown_prediction_must_be_wrong():
    df = batch("benchmark_answer", 3)
    ok = df.with_columns(pl.Series("predicted", [None, 1, None], dtype=pl.Int32),
                         pl.Series("correct", [False, True, False]))
    events.validate(ok, check_ids=False)
    bad = ok.with_columns(pl.Series("correct", [True, True, False]))
    with pytest.raises(EventValidationError, match="correct_is_predicted_eq_gold"):
        events.validate(bad, check_ids=False)
