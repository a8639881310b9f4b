"""The files of a bundle, one at a time (the "Files" and "Values of one file" checks of
docs/community.md).

Every file of the bundle is listed in the manifest and every listed file is present, with
the manifest's size and sha256. A Parquet file is opened footer first: its row count, row
groups and columns are checked against the manifest, the limits and the event schema before
any data page is read; then its values are checked on their own (event schema, ids, origin,
string and list sizes, times).
"""

from __future__ import annotations

import hashlib
import time

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mqepi.community.bundle import Source, read_entry
from mqepi.community.manifest import MANIFEST, origin_for
from mqepi.community.problems import BundleReport, Limits, short
from mqepi.errors import EventValidationError
from mqepi.lake import events
from mqepi.schemas import EVENT_TYPES, EventSpec

#: Timestamps may lead the ingesting clock by this much (clock skew), not more.
FUTURE_SLACK_NS = 24 * 3600 * 10**9
#: Bounds on the thrift footer of a Parquet file (strings, containers), before anything else is read.
THRIFT_STRING_BYTES = 16 * 1024**2
THRIFT_CONTAINER_ITEMS = 100_000


def read_files(source: Source, manifest: dict, limits: Limits, report: BundleReport) -> tuple[dict[str, pl.DataFrame], int]:
    """One frame per event type whose file passed the file checks (values checked too), and how
    many listed files were missing, unreadable or of the wrong structure."""
    listed = {f["path"]: f for f in manifest["files"]}
    for name in source.entries:
        if name != MANIFEST and name not in listed:
            report.add("file", name, "not listed in manifest.json files")
    frames: dict[str, pl.DataFrame] = {}
    unusable = 0
    for name, entry in listed.items():
        df = _read_file(source, name, entry, limits, report)
        if df is None:
            unusable += 1
            continue
        spec = EVENT_TYPES[entry["event_type"]]
        check_values(name, spec, df, manifest["submitter"]["id"], limits, report)
        frames[spec.name] = df
    return frames, unusable


def _read_file(source: Source, name: str, entry: dict, limits: Limits, report: BundleReport) -> pl.DataFrame | None:
    """The listed file ``name``: present, its size and sha256 as listed, a Parquet file of its event type."""
    if name not in source.entries:
        report.add("file", name, "listed in manifest.json but missing from the bundle")
        return None
    data = read_entry(source, name, limits.max_total_bytes, report)
    if data is None:
        return None
    if len(data) != entry["bytes"]:
        report.add("file", name, f"is {len(data)} bytes but manifest.json says {entry['bytes']}", value=len(data))
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        report.add("file", name, f"sha256 mismatch: file has {digest}, manifest.json says {entry['sha256']}")
    return read_parquet(name, data, EVENT_TYPES[entry["event_type"]], entry["rows"], limits, report)


# ------------------------------------------------------------------ one Parquet file


def read_parquet(name: str, data: bytes, spec: EventSpec, declared_rows: int, limits: Limits,
                 report: BundleReport) -> pl.DataFrame | None:
    """Footer first (limits), then the table with exact columns and dtypes; None on any problem."""
    opened = _open_parquet(name, data, report)
    if opened is None:
        return None
    pf, md, names = opened
    before = len(report.problems)
    _check_footer(name, md, declared_rows, limits, report)
    _check_columns(name, names, spec, report)
    if len(report.problems) > before:
        return None
    try:
        table = pf.read()
        # full validation: offsets, lengths and UTF-8 of every string (invalid UTF-8 would
        # otherwise reach polars, which cannot hand it to Python)
        table.validate(full=True)
        df = pl.from_arrow(table)
    except Exception as exc:  # pyarrow and polars raise many types on malformed data pages
        report.add("parquet", name, f"cannot read the data: {type(exc).__name__}: {short(str(exc), 200)}")
        return None
    for column, dtype in spec.polars_schema.items():
        if df.schema[column] != dtype:
            report.add("schema", name, f"dtype {df.schema[column]}, expected {dtype} (exact dtypes, no coercion)", column=column)
    if len(report.problems) > before:
        return None
    return df.select(list(spec.polars_schema))


def _open_parquet(name: str, data: bytes, report: BundleReport) -> tuple[pq.ParquetFile, pq.FileMetaData, list[str]] | None:
    """The file, its footer and its column names (thrift read with bounds), if it has Parquet magic at both ends."""
    if len(data) < 12 or data[:4] != b"PAR1":
        report.add("parquet", name, "not a Parquet file (no 'PAR1' magic at the start)")
        return None
    if data[-4:] != b"PAR1":
        report.add("parquet", name, "truncated Parquet file (no 'PAR1' footer magic at the end)")
        return None
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), thrift_string_size_limit=THRIFT_STRING_BYTES,
                            thrift_container_size_limit=THRIFT_CONTAINER_ITEMS)
        md = pf.metadata
        names = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        report.add("parquet", name, f"not a readable Parquet file: {short(str(exc), 200)}")
        return None
    return pf, md, names


def _check_footer(name: str, md: pq.FileMetaData, declared_rows: int, limits: Limits, report: BundleReport) -> None:
    """Row count as the manifest says; rows, row groups and row group sizes within the limits."""
    if md.num_rows != declared_rows:
        report.add("file", name, f"has {md.num_rows} rows but manifest.json says {declared_rows}", value=md.num_rows)
    if md.num_rows > limits.max_rows_per_file:
        report.add("limit", name, f"{md.num_rows} rows, more than the limit {limits.max_rows_per_file} per file")
    if md.num_row_groups > limits.max_row_groups:
        report.add("limit", name, f"{md.num_row_groups} row groups, more than the limit {limits.max_row_groups}")
        return
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        if rg.num_rows > limits.max_row_group_rows:
            report.add("limit", name, f"row group {i} has {rg.num_rows} rows, more than the limit {limits.max_row_group_rows}")
        if rg.total_byte_size > limits.max_row_group_bytes:
            report.add("limit", name, f"row group {i} is {rg.total_byte_size} bytes uncompressed, "
                       f"more than the limit {limits.max_row_group_bytes}")


def _check_columns(name: str, names: list[str], spec: EventSpec, report: BundleReport) -> None:
    """Exactly the schema's columns: none twice, none missing, none unknown."""
    for dup in sorted({n for n in names if names.count(n) > 1}):
        report.add("schema", name, "column appears twice", column=dup)
    expected = spec.polars_schema
    for column in expected:
        if column not in names:
            report.add("schema", name, f"missing column {column!r}", column=column)
    for column in names:
        if column not in expected:
            report.add("schema", name, f"unknown column {column!r} (strict schema: no extra columns)", column=column)


# ------------------------------------------------------------------ the values of one file


def check_values(name: str, spec: EventSpec, df: pl.DataFrame, submitter: str, limits: Limits, report: BundleReport) -> None:
    """Checks of one file on its own: schema values, ids, origin, limits on values."""
    ix = df.with_row_index("_row")
    _check_type_and_sizes(name, spec, ix, limits, report)
    try:
        events.validate(df, source=name, check_ids=False)
    except EventValidationError as exc:
        for failure in exc.failures:
            rows = f" ({failure['rows']} rows)" if failure.get("rows") else ""
            report.add("schema", name, f"failed {failure.get('check')}{rows}; first failing values "
                       f"{short(failure.get('values'), 200)}", column=failure.get("column"))
    _check_identity(name, df, ix, submitter, report)
    future = time.time_ns() + FUTURE_SLACK_NS
    report.flag("physics", name, ix.filter(pl.col("recorded_at_ns") > future), "recorded_at_ns", "recorded in the future")


def _check_type_and_sizes(name: str, spec: EventSpec, ix: pl.DataFrame, limits: Limits, report: BundleReport) -> None:
    report.flag("schema", name, ix.filter(pl.col("event_type") != spec.name), "event_type",
                f"event_type differs from the file's type {spec.name!r}")
    report.flag("schema", name, ix.filter(pl.col("schema_version") != spec.version), "schema_version",
                f"schema_version is not the current {spec.version}")
    for column, dtype in spec.polars_schema.items():
        if dtype == pl.Utf8:
            report.flag("limit", name, ix.filter(pl.col(column).str.len_bytes() > limits.max_string_bytes), None,
                        f"column {column}: string longer than {limits.max_string_bytes} bytes")
        elif isinstance(dtype, pl.List):
            report.flag("limit", name, ix.filter(pl.col(column).list.len() > limits.max_list_len), None,
                        f"column {column}: list longer than {limits.max_list_len}")


def _check_identity(name: str, df: pl.DataFrame, ix: pl.DataFrame, submitter: str, report: BundleReport) -> None:
    """Origin (the submitter's own, never lab), content ids, no id twice."""
    own = origin_for(submitter)
    report.flag("identity", name, ix.filter(pl.col("origin") == "lab"), "origin",
                "claims origin 'lab'; community events cannot be lab data")
    report.flag("identity", name, ix.filter((pl.col("origin") != "lab") & (pl.col("origin") != own)), "origin",
                f"claims an origin other than {own!r}")
    ids = ix.with_columns(events.content_ids(df).alias("_expected"))
    report.flag("identity", name, ids.filter(pl.col("event_id") != pl.col("_expected")), "event_id",
                "event_id does not equal the sha256 of the event's content")
    report.flag("identity", name, ix.filter(pl.col("event_id").is_duplicated()), "event_id",
                "duplicate event_id within the file")
