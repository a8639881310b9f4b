"""Build, identify and validate event batches.

An event batch is a polars DataFrame holding events of one type. :func:`build` fills the
common columns and the content hash; :func:`validate` is the gate every batch passes before
it reaches the lake (and every file passes when ``lake verify`` re-reads it).

Content hash (``event_id``)
    sha256 (hex) of the event's canonical text: the JSON object of every column except
    ``event_id`` and ``recorded_at_ns``, keys sorted, as polars' ``struct.json_encode``
    writes it (integers in decimal, floats in shortest round-trip form, null as ``null``,
    strings JSON-escaped, lists as arrays). Re-recording the same content later gives the
    same id, so a retried stage cannot duplicate an event.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence

import pandera.polars as pa
import polars as pl
from pandera.api.function_dispatch import Dispatcher
from pandera.api.polars.types import PolarsData
from pandera.backends.polars import builtin_checks

from mqepi import PRODUCER
from mqepi.errors import EventValidationError
from mqepi.schemas import EVENT_TYPES, HASH_EXCLUDED, EventSpec

#: How many failing values an error message quotes per failing check.
QUOTED_VALUES = 5


def now_ns() -> int:
    """Current UTC time in integer nanoseconds."""
    return time.time_ns()


#: Rows whose canonical texts :func:`content_ids` holds at once.
ID_CHUNK_ROWS = 50_000


def content_ids(df: pl.DataFrame) -> pl.Series:
    """The ``event_id`` of every row of ``df`` (see the module docstring), computed
    :data:`ID_CHUNK_ROWS` rows at a time, so that only one chunk's canonical texts are held
    at once (the memory of an ingest stays a small multiple of the data's)."""
    columns = sorted(c for c in df.columns if c not in HASH_EXCLUDED)
    if df.height == 0:
        return pl.Series("event_id", [], dtype=pl.Utf8)
    sha = hashlib.sha256
    ids: list[str] = []
    for start in range(0, df.height, ID_CHUNK_ROWS):
        chunk = df.slice(start, ID_CHUNK_ROWS).select(pl.struct(columns).struct.json_encode().cast(pl.Binary))
        ids.extend(sha(text).hexdigest() for text in chunk.to_series().to_list())
    return pl.Series("event_id", ids, dtype=pl.Utf8)


def batch_id(event_ids: Sequence[str] | pl.Series) -> str:
    """Content hash of a set of events: sha256 over their sorted ids. Names lake files."""
    ids = sorted(event_ids.to_list() if isinstance(event_ids, pl.Series) else event_ids)
    return hashlib.sha256("".join(ids).encode()).hexdigest()


def build(
    event_type: str,
    rows: pl.DataFrame | Mapping[str, Sequence] | Sequence[Mapping],
    *,
    origin: str = "lab",
    producer: str = PRODUCER,
    recorded_at_ns: int | None = None,
) -> pl.DataFrame:
    """Make an event batch of ``event_type`` from the type's own columns.

    ``rows`` holds the event-specific columns (and ``run_id`` where run-bound). The common
    columns are filled in, every known column is cast to its schema dtype (a lossy cast is an
    error naming the column), and ``event_id`` is computed. The result is not yet validated:
    :meth:`mqepi.lake.Lake.append` validates.
    """
    spec = _spec(event_type)
    df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)
    n = df.height
    fill = {
        "event_type": pl.repeat(event_type, n, eager=True, dtype=pl.Utf8),
        "schema_version": pl.repeat(spec.version, n, eager=True, dtype=pl.Int32),
        "recorded_at_ns": pl.repeat(recorded_at_ns or now_ns(), n, eager=True, dtype=pl.Int64),
        "origin": pl.repeat(origin, n, eager=True, dtype=pl.Utf8),
        "producer": pl.repeat(producer, n, eager=True, dtype=pl.Utf8),
    }
    if "run_id" not in df.columns:
        fill["run_id"] = pl.repeat(None, n, eager=True, dtype=pl.Utf8)
    for column in spec.added:
        if column not in df.columns:
            fill[column] = pl.repeat(None, n, eager=True, dtype=spec.polars_schema[column])
    df = df.with_columns(**fill)
    casts = [
        pl.col(column).cast(dtype, strict=True)
        for column, dtype in spec.polars_schema.items()
        if column in df.columns and df.schema[column] != dtype
    ]
    if casts:
        try:
            df = df.with_columns(casts)
        except Exception:  # polars raises several error types for bad casts; find the column
            _raise_cast_error(event_type, spec, df)
    known = [c for c in spec.polars_schema if c in df.columns and c != "event_id"]
    extra = [c for c in df.columns if c not in spec.polars_schema]
    df = df.select(known + extra)
    return df.with_columns(content_ids(df)).select(
        [c for c in spec.polars_schema if c in df.columns or c == "event_id"] + extra
    )


def _raise_cast_error(event_type: str, spec: EventSpec, df: pl.DataFrame) -> None:
    for column, dtype in spec.polars_schema.items():
        if column in df.columns and df.schema[column] != dtype:
            try:
                df.select(pl.col(column).cast(dtype, strict=True))
            except Exception as exc:
                raise EventValidationError(
                    event_type,
                    [{"column": column, "check": f"dtype({dtype})", "values": _first_values(df[column]),
                      "detail": str(exc).splitlines()[0]}],
                ) from None
    raise AssertionError("a cast failed but no single column cast fails")  # pragma: no cover


def validate(df: pl.DataFrame, *, source: str | None = None, check_ids: bool = True) -> tuple[EventSpec, pl.DataFrame]:
    """Check a batch against its event schema; return ``(spec, batch)`` or raise.

    Raises :class:`EventValidationError` naming the event type, the column, the check and
    the first failing values of every failing check. ``source`` (a file name) is quoted in
    the message. With ``check_ids`` every ``event_id`` must equal the content hash.
    """
    event_type = _single_event_type(df, source)
    spec = _spec(event_type)
    if not passes_all_checks(spec, df):
        _raise_detailed(spec, df, source)
    if check_ids and df.height:
        expected = content_ids(df)
        bad = df.select(pl.col("event_id"), expected.alias("expected")).filter(pl.col("event_id") != pl.col("expected"))
        if bad.height:
            raise EventValidationError(
                event_type,
                [{"column": "event_id", "check": "equals sha256 of content",
                  "values": bad["event_id"].head(QUOTED_VALUES).to_list(), "rows": bad.height}],
                source,
            )
    return spec, df


def passes_all_checks(spec: EventSpec, df: pl.DataFrame) -> bool:
    """True if ``df`` passes every check of ``spec``'s pandera schema.

    The same checks pandera runs (its own Check objects, through their public call), with
    the structural ones (columns, dtypes, nulls) done directly, evaluated together in one
    ``collect_all``. Much cheaper per batch than ``schema.validate``; on failure the full
    pandera validation runs to report the failure cases.
    """
    if dict(df.schema) != dict(spec.polars_schema):
        return False
    if df.height == 0:
        return True
    columns = spec.schema.columns
    required = [name for name, col in columns.items() if not col.nullable]
    nulls = df.select(pl.sum_horizontal(pl.col(required).null_count())).item()
    if nulls:
        return False
    lazy = df.lazy()
    results = [_check_all(check, lazy, name) for name, col in columns.items() for check in col.checks]
    results += [_check_all(check, lazy, None) for check in spec.schema.checks]
    return all(frame.item() is not False for frame in pl.collect_all(results))


def _check_all(check, lazy: pl.LazyFrame, key: str | None) -> pl.LazyFrame:
    """A lazy one-value frame: does ``check`` hold on every non-null row of ``key``?

    Calls the check's own polars function (pandera's built-in for built-in checks) with
    its statistics, as pandera's polars backend does, without pandera's per-check collects.
    """
    function = check._check_fn
    if isinstance(function, Dispatcher):  # a built-in check: pandera's polars implementation
        function = getattr(builtin_checks, check.name)
    out = function(PolarsData(lazy, key or "*"), **check.statistics)
    return out.select(pl.all_horizontal(pl.all().fill_null(True)).all())


def _raise_detailed(spec: EventSpec, df: pl.DataFrame, source: str | None) -> None:
    try:
        spec.schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise EventValidationError(spec.name, _failures(exc.failure_cases), source) from None
    except pa.errors.SchemaError as exc:  # raised eagerly for some structural problems
        raise EventValidationError(spec.name, [{"column": None, "check": "schema", "values": [str(exc)]}], source) from None
    # pandera accepts what the combined check refused: only a NaN in a nullable float
    # column can do that (pandera counts NaN as null); it is not a valid measurement either.
    raise EventValidationError(spec.name, [{"column": None, "check": "combined checks", "values": ["see pandera"]}], source)


def _spec(event_type: str) -> EventSpec:
    spec = EVENT_TYPES.get(event_type)
    if spec is None:
        raise EventValidationError(
            str(event_type),
            [{"column": "event_type", "check": f"isin({list(EVENT_TYPES)})", "values": [event_type]}],
        )
    return spec


def _single_event_type(df: pl.DataFrame, source: str | None) -> str:
    if "event_type" not in df.columns:
        raise EventValidationError("<unknown>", [{"column": "event_type", "check": "column present", "values": []}], source)
    types = df["event_type"].unique(maintain_order=True).to_list()
    if len(types) != 1:
        raise EventValidationError(
            "<mixed>", [{"column": "event_type", "check": "one event type per batch", "values": types[:QUOTED_VALUES]}], source
        )
    return types[0]


def _first_values(series: pl.Series) -> list:
    return series.head(QUOTED_VALUES).to_list()


def _failures(cases: pl.DataFrame) -> list[dict]:
    """pandera failure cases -> one dict per (column, check) with its first failing values."""
    out = []
    for (context, column, check), group in cases.group_by(["schema_context", "column", "check"], maintain_order=True):
        if check in ("column_in_schema", "column_in_dataframe"):
            # Structural checks: the failure case is the column itself.
            for name in group["failure_case"].to_list():
                out.append({"column": name, "check": check, "values": [name], "rows": None})
            continue
        out.append({
            # A data frame check spans several columns; its name says which.
            "column": None if context == "DataFrameSchema" else column,
            "check": check,
            "values": (
                [f"row {i}" for i in group["index"].head(QUOTED_VALUES).to_list()]
                if context == "DataFrameSchema"
                else group["failure_case"].head(QUOTED_VALUES).to_list()
            ),
            "rows": group.height,
        })
    return out
