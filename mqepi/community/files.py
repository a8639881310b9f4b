"""The files of a bundle, one at a time (the "Files" and "Values of one file" checks of
docs/community.md).

Every file of the bundle is listed in the manifest and every listed file is present, with
the manifest's size and sha256. A Parquet file is opened footer first: its row count, row
groups and columns are checked against the manifest, the limits and the event schema before
any data page is read; then its data pages are read in batches of :data:`READ_BATCH_ROWS`
rows, string columns as dictionaries, and what each batch decodes to (per column, file and
bundle, and every string's length) is checked against the limits *before* the batch is
decoded, so a small file that decodes to gigabytes is stopped before it takes the memory.
Then its values are checked on their own (event schema, ids, origin, list sizes, times,
declared numbers).

A file may hold events of an older schema version of its type (1 .. current): such a file
lacks the columns added since (``EventSpec.added``), its ids hash the columns it has, and its
frame gets those columns as nulls once checked (:func:`mqepi.lake.verify.with_added_columns`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mqepi.community.bundle import Source, read_entry
from mqepi.community.manifest import MANIFEST, origin_for
from mqepi.community.problems import BundleReport, Limits, short
from mqepi.errors import EventValidationError
from mqepi.lake import events
from mqepi.lake.verify import version_checks, with_added_columns
from mqepi.meter.atm90e26 import ATM_BAUDRATES
from mqepi.meter.protocol import BAUDRATE, encode_line
from mqepi.meter.stream import MAX_RATE_HZ, POWER_RESOLUTION_W
from mqepi.schemas import EVENT_TYPES, EventSpec

#: Timestamps may lead the ingesting clock by this much (clock skew), not more.
FUTURE_SLACK_NS = 24 * 3600 * 10**9
#: Bounds on the thrift footer of a Parquet file (strings, containers), before anything else is read.
THRIFT_STRING_BYTES = 16 * 1024**2
THRIFT_CONTAINER_ITEMS = 100_000
#: Rows per batch read from a Parquet file: what one batch decodes to is checked before it is decoded.
READ_BATCH_ROWS = 65_536
#: Columns holding UTC nanoseconds (``host_monotonic_ns`` and ``meter_time_ns`` are other clocks).
UTC_TIME_COLUMNS = ("recorded_at_ns", "start_ns", "end_ns", "host_time_ns")
#: Sane upper bounds on the numbers a file declares (counts, sizes, indices), per event type and
#: column; ``None`` is :attr:`Limits.max_layers`. Checked with the file's values, before any
#: check across files is sized by them.
DECLARED_MAX: dict[str, dict[str, int | None]] = {
    "quant_config": {"n_layers": None},
    "tensor_inventory": {"layer": None, "n_elements": 1 << 40, "n_bytes": 1 << 42},
    "quantization": {"file_size_bytes": 1 << 42},
    "run": {"repeat": 1 << 16},
    "phase": {"tokens": 1 << 40},
    "benchmark_answer": {"tokens_evaluated": 1 << 24},
    "perplexity": {"context": 1 << 24, "chunks": 1 << 24, "tokens": 1 << 40, "chunk_tokens": 1 << 24},
    "kld": {"context": 1 << 24, "chunks": 1 << 24, "chunk_tokens": 1 << 24},
    "throughput": {"n_prompt": 1 << 24, "n_gen": 1 << 24, "repetitions": 1 << 16, "n_threads": 1 << 12, "rpc_nodes": 64},
}

#: UART bits per byte (8N1: start, 8 data, stop).
UART_BITS_PER_BYTE = 10
#: The fastest an ATM90E26 can be polled: six register reads of 6 bytes each (Urms, Irms, Pmean,
#: Freq, PowerF, APenergy: ``Atm90e26Source`` without the fine power bits) at its fastest baud rate.
ATM_POLL_BYTES = 6 * 6
#: The fastest rate (Hz) at which each power source delivers readings of one channel. epi-meter:
#: its UART carrying back to back its shortest possible line (one channel); atm90e26: the fastest
#: poll; NVML, the simulated meter and replayed traces: the fastest rate mqepi's sources accept.
MAX_SAMPLE_HZ = {
    "epi-meter": BAUDRATE / (UART_BITS_PER_BYTE * len(encode_line(0, [0]))),
    "atm90e26": max(ATM_BAUDRATES) / (UART_BITS_PER_BYTE * ATM_POLL_BYTES),
    "nvml": float(MAX_RATE_HZ), "simulated": float(MAX_RATE_HZ), "replay": float(MAX_RATE_HZ),
}
#: Readings arrive in bursts (lines read together get arrival stamps ns apart), so a channel's
#: readings are counted over its whole stream: at most the fastest rate times (span + this).
RATE_BURST_S = 1.0
#: The finest power step (W) each source can report: the ATM90E26 (and the epi-meter and the
#: emulated chip, made of it) with its LSB register gives 1/65536 W; NVML milliwatts; a replayed
#: trace no finer than the chip. Readings of one channel differing by less than half of it are not
#: a meter's.
ATM_FINE_STEP_W = 1 / 65536
FINEST_STEP_W = {"epi-meter": ATM_FINE_STEP_W, "atm90e26": ATM_FINE_STEP_W, "simulated": ATM_FINE_STEP_W,
                 "nvml": POWER_RESOLUTION_W["nvml"], "replay": ATM_FINE_STEP_W}


@dataclass
class DecodeBudget:
    """What the files of one bundle decoded to so far, against :attr:`Limits.max_decoded_bytes`."""

    limits: Limits
    decoded: int = 0
    exhausted: bool = False


def read_files(source: Source, manifest: dict, limits: Limits, report: BundleReport) -> tuple[dict[str, pl.DataFrame], int]:
    """One frame per event type whose file passed the file checks (values checked too), and how
    many listed files were missing, unreadable or of the wrong structure."""
    listed = {f["path"]: f for f in manifest["files"]}
    for name in source.entries:
        if name != MANIFEST and name not in listed:
            report.add("file", name, "not listed in manifest.json files")
    frames: dict[str, pl.DataFrame] = {}
    unusable = 0
    budget = DecodeBudget(limits)
    for name, entry in listed.items():
        df = None if budget.exhausted else _read_file(source, name, entry, budget, report)
        if df is None:
            unusable += 1
            continue
        spec = EVENT_TYPES[entry["event_type"]]
        check_values(name, spec, df, manifest["submitter"]["id"], limits, report)
        frames[spec.name] = with_added_columns(spec, df)
    return frames, unusable


def _read_file(source: Source, name: str, entry: dict, budget: DecodeBudget, report: BundleReport) -> pl.DataFrame | None:
    """The listed file ``name``: present, its size and sha256 as listed, a Parquet file of its event type."""
    limits = budget.limits
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
    return read_parquet(name, data, EVENT_TYPES[entry["event_type"]], entry["rows"], limits, report, budget)


# ------------------------------------------------------------------ one Parquet file


def read_parquet(name: str, data: bytes, spec: EventSpec, declared_rows: int, limits: Limits,
                 report: BundleReport, budget: DecodeBudget | None = None) -> pl.DataFrame | None:
    """Footer first (limits, exact columns and dtypes), then the data in bounded batches; None on any problem.

    The frame has the file's columns in schema order: every column of the schema but, in a file
    of an older schema version, the columns added since (``spec.added``).
    ``budget`` carries what the bundle's other files decoded to (a fresh one when not given)."""
    opened = _open_parquet(name, data, report)
    if opened is None:
        return None
    pf, md, names = opened
    before = len(report.problems)
    _check_footer(name, md, declared_rows, limits, report)
    _check_columns(name, names, spec, report)
    if len(report.problems) == before:
        _check_lists(name, md, limits, report)
        try:
            empty = pl.from_arrow(pf.schema_arrow.empty_table())
        except Exception as exc:  # a type polars cannot represent
            report.add("schema", name, f"unsupported column types: {type(exc).__name__}: {short(str(exc), 200)}")
        else:
            _check_dtypes(name, empty.schema, spec, report)
    if len(report.problems) > before:
        return None
    df = _read_batches(name, data, pf.schema_arrow, budget or DecodeBudget(limits), report)
    if df is None:
        return None
    _check_dtypes(name, df.schema, spec, report)
    if len(report.problems) > before:
        return None
    return df.select([c for c in spec.polars_schema if c in df.columns])


def _check_dtypes(name: str, schema: pl.Schema, spec: EventSpec, report: BundleReport) -> None:
    """Exactly the schema's dtypes (no coercion), column by column (a missing column is reported by
    :func:`_check_columns`)."""
    for column, dtype in spec.polars_schema.items():
        if column in schema and schema[column] != dtype:
            report.add("schema", name, f"dtype {schema[column]}, expected {dtype} (exact dtypes, no coercion)", column=column)


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
    declared = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    if declared > limits.max_file_decoded_bytes:
        report.add("limit", name, f"declares {declared} bytes of uncompressed data, more than the limit "
                   f"{limits.max_file_decoded_bytes} per file")
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        if rg.num_rows > limits.max_row_group_rows:
            report.add("limit", name, f"row group {i} has {rg.num_rows} rows, more than the limit {limits.max_row_group_rows}")
        if rg.total_byte_size > limits.max_row_group_bytes:
            report.add("limit", name, f"row group {i} is {rg.total_byte_size} bytes uncompressed, "
                       f"more than the limit {limits.max_row_group_bytes}")


def _check_lists(name: str, md: pq.FileMetaData, limits: Limits, report: BundleReport) -> None:
    """A list column's values per row group (footer) at most ``max_list_len`` per row: checked
    before a list is read, as a list's values are decoded whole."""
    lists = [j for j in range(md.num_columns) if md.schema.column(j).max_repetition_level > 0]
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for j in lists:
            values = rg.column(j).num_values
            if values > rg.num_rows * (limits.max_list_len + 1):
                report.add("limit", name, f"row group {i} declares {values} list values for {rg.num_rows} rows, more than "
                           f"{limits.max_list_len} per row", column=md.schema.column(j).path.split(".")[0], value=values)
                return


def _check_columns(name: str, names: list[str], spec: EventSpec, report: BundleReport) -> None:
    """Exactly the schema's columns: none twice, none missing, none unknown. A column added by a
    later schema version (``spec.added``) may be missing: the file then holds events of an older
    version (checked with its values, :func:`_check_type_and_sizes`)."""
    for dup in sorted({n for n in names if names.count(n) > 1}):
        report.add("schema", name, "column appears twice", column=dup)
    expected = spec.polars_schema
    for column in expected:
        if column not in names and column not in spec.added:
            report.add("schema", name, f"missing column {column!r}", column=column)
    for column in names:
        if column not in expected:
            report.add("schema", name, f"unknown column {column!r} (strict schema: no extra columns)", column=column)


# ------------------------------------------------------------------ bounded decoding


def _read_batches(name: str, data: bytes, schema: pa.Schema, budget: DecodeBudget, report: BundleReport) -> pl.DataFrame | None:
    """The file's rows, batch by batch: strings read as dictionaries, what a batch decodes to
    checked against the limits before it is decoded; None (with the problem) past a limit."""
    strings = [f.name for f in schema if _is_binary(f.type)]
    per_column = dict.fromkeys(schema.names, 0)
    frames: list[pl.DataFrame] = []
    row = 0
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings, thrift_string_size_limit=THRIFT_STRING_BYTES,
                            thrift_container_size_limit=THRIFT_CONTAINER_ITEMS)
        # row group by row group: a string column read as a dictionary memoizes its values,
        # and a fresh reader per row group bounds that memo by the row group's limits
        batches = (b for i in range(pf.num_row_groups)
                   for b in pf.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[i], use_threads=False))
        for batch in batches:
            # full validation: offsets, lengths, dictionary indices and UTF-8 of every string
            # (invalid UTF-8 would otherwise reach polars, which cannot hand it to Python)
            batch.validate(full=True)
            sizes = _decoded_sizes(name, batch, row, budget.limits, report)
            if sizes is None or not _within_limits(name, row + batch.num_rows, sizes, per_column, budget, report):
                return None
            frames.append(pl.from_arrow(_decode(batch)))
            row += batch.num_rows
    except MemoryError:
        raise  # the reader's memory, not the file: the drop folder's sandbox reports it as such
    except Exception as exc:  # pyarrow and polars raise many types on malformed data pages
        report.add("parquet", name, f"cannot read the data: {type(exc).__name__}: {short(str(exc), 200)}")
        return None
    return pl.concat(frames, how="vertical", rechunk=False) if frames else pl.from_arrow(schema.empty_table())


def _is_binary(t: pa.DataType) -> bool:
    """A string or binary type: read as a dictionary, so its decoded size is known first."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _decoded_sizes(name: str, batch: pa.RecordBatch, row: int, limits: Limits, report: BundleReport) -> dict[str, int] | None:
    """Bytes each column of ``batch`` decodes to, computed without decoding: a dictionary
    column's value lengths taken by its indices. None (with the problem) where a string is
    longer than ``max_string_bytes``."""
    sizes: dict[str, int] = {}
    for column, arr in zip(batch.schema.names, batch.columns, strict=True):
        if not pa.types.is_dictionary(arr.type):
            sizes[column] = arr.nbytes
            continue
        lengths = pc.binary_length(arr.dictionary).take(arr.indices)
        long = pc.indices_nonzero(pc.fill_null(pc.greater(lengths, limits.max_string_bytes), False))
        if len(long):
            rows = pl.DataFrame({"_row": (long.to_numpy() + row).tolist()})
            report.flag("limit", name, rows, None, f"column {column}: string longer than {limits.max_string_bytes} bytes")
            return None
        sizes[column] = int(pc.sum(lengths).as_py() or 0) + arr.indices.nbytes
    return sizes


def _within_limits(name: str, rows: int, sizes: dict[str, int], per_column: dict[str, int], budget: DecodeBudget,
                   report: BundleReport) -> bool:
    """Add the sizes of one batch (ending at row ``rows``) to the column, file and bundle totals;
    False (with the problem) past a limit."""
    limits = budget.limits
    for column, n in sizes.items():
        per_column[column] += n
        if per_column[column] > limits.max_column_decoded_bytes:
            report.add("limit", name, f"decodes to more than the limit {limits.max_column_decoded_bytes} "
                       f"bytes per column (in its first {rows} rows)", column=column)
            return False
    total = sum(per_column.values())
    if total > limits.max_file_decoded_bytes:
        report.add("limit", name, f"decodes to more than the limit {limits.max_file_decoded_bytes} bytes per file "
                   f"(in its first {rows} rows)")
        return False
    budget.decoded += sum(sizes.values())
    if budget.decoded > limits.max_decoded_bytes:
        report.add("limit", name, f"the bundle decodes to more than the limit {limits.max_decoded_bytes} bytes; "
                   "reading stopped at this file")
        budget.exhausted = True
        return False
    return True


def _decode(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with its dictionary columns decoded (once their size is known to be within the limits)."""
    columns = [a.dictionary_decode() if pa.types.is_dictionary(a.type) else a for a in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


# ------------------------------------------------------------------ the values of one file


def check_values(name: str, spec: EventSpec, df: pl.DataFrame, submitter: str, limits: Limits, report: BundleReport) -> None:
    """Checks of one file on its own: schema values, ids, origin, limits on values. ``df`` has the
    file's columns (an older version's lack those added since, which are checked as nulls; the
    ids hash the columns the file has)."""
    ix = df.with_row_index("_row")
    _check_type_and_sizes(name, spec, ix, limits, report)
    try:
        events.validate(with_added_columns(spec, df), source=name, check_ids=False)
    except EventValidationError as exc:
        for failure in exc.failures:
            rows = f" ({failure['rows']} rows)" if failure.get("rows") else ""
            report.add("schema", name, f"failed {failure.get('check')}{rows}; first failing values "
                       f"{short(failure.get('values'), 200)}", column=failure.get("column"))
    _check_identity(name, df, ix, submitter, report)
    _check_times(name, spec, ix, report)
    if spec.name == "phase":
        report.flag("physics", name, ix.filter(pl.col("end_ns") <= pl.col("start_ns")), "end_ns",
                    "window does not end after it starts (zero-length or reversed)")
    elif spec.name == "power_sample":
        _check_power_streams(name, ix, report)


def _check_power_streams(name: str, ix: pl.DataFrame, report: BundleReport) -> None:
    """Per meter channel (run, meter, channel, source): readings no faster than the source's
    fastest rate (:data:`MAX_SAMPLE_HZ`, counted over the stream) and power steps no finer than
    half its finest step (:data:`FINEST_STEP_W`)."""
    power, host, stream = pl.col("power_w"), pl.col("host_time_ns"), pl.col("_g")
    # one integer per channel, then per channel: readings, their span, the smallest step between
    # distinct readings (sorted by value: consecutive values of one channel differ by a step)
    g = ix.select(pl.struct("run_id", "meter_id", "channel", "power_source").rank("dense").alias("_g"), "power_source",
                  "power_w", "host_time_ns", "_row")
    steps = (g.select("_g", "power_w").filter(power.is_finite()).sort("_g", "power_w")
             .with_columns(_d=power.diff(), _same=stream.diff() == 0)
             .filter(pl.col("_same") & (pl.col("_d") > 0)).group_by("_g").agg(_step=pl.col("_d").min()))
    streams = g.group_by("_g").agg(pl.col("power_source").first(), _n=pl.len(), _span=(host.max() - host.min()) / 1e9,
                                   _row=pl.col("_row").min()).join(steps, on="_g", how="left").sort("_row")
    for source, hz in MAX_SAMPLE_HZ.items():
        mine = streams.filter(pl.col("power_source") == source)
        fast = mine.filter(pl.col("_n") - 1 > hz * (pl.col("_span") + RATE_BURST_S))
        if fast.height:
            n, span = fast["_n"][0], fast["_span"][0]
            report.flag("physics", name, fast, "power_source", f"readings of one meter channel faster than {source}'s "
                        f"fastest rate {hz:.4g} Hz (e.g. {n} within {span:.3g} s)")
        fine = mine.filter(pl.col("_step") < FINEST_STEP_W[source] / 2)
        if fine.height:
            report.flag("physics", name, fine, "power_source", f"power readings of one meter channel step by "
                        f"{fine['_step'][0]:.3g} W, finer than {source} can resolve ({FINEST_STEP_W[source]:.3g} W)")


def _check_times(name: str, spec: EventSpec, ix: pl.DataFrame, report: BundleReport) -> None:
    """No UTC time (any of :data:`UTC_TIME_COLUMNS`) more than :data:`FUTURE_SLACK_NS` ahead of now."""
    future = time.time_ns() + FUTURE_SLACK_NS
    for column in UTC_TIME_COLUMNS:
        if column in spec.polars_schema:
            what = "recorded in the future" if column == "recorded_at_ns" else "time in the future"
            report.flag("physics", name, ix.filter(pl.col(column) > future), column, f"{what} (more than a day ahead)")


def _check_type_and_sizes(name: str, spec: EventSpec, ix: pl.DataFrame, limits: Limits, report: BundleReport) -> None:
    """Type and version of every event (a version 1 .. current of the type, the columns the file
    has as that version has them: :func:`mqepi.lake.verify.version_checks`); lists within
    ``max_list_len`` (strings were bounded while reading); every number the file declares within
    :data:`DECLARED_MAX`."""
    report.flag("schema", name, ix.filter(pl.col("event_type") != spec.name), "event_type",
                f"event_type differs from the file's type {spec.name!r}")
    for column, bad, detail in version_checks(spec, ix.columns):
        report.flag("schema", name, ix.filter(bad), column, detail)
    for column, dtype in spec.polars_schema.items():
        if isinstance(dtype, pl.List) and column in ix.columns:
            report.flag("limit", name, ix.filter(pl.col(column).list.len() > limits.max_list_len), None,
                        f"column {column}: list longer than {limits.max_list_len}")
    for column, bound in DECLARED_MAX.get(spec.name, {}).items():
        if column not in ix.columns:  # a column added after the file's schema version
            continue
        bound = limits.max_layers if bound is None else bound
        report.flag("limit", name, ix.filter(pl.col(column) > bound), column, f"{column} above the sane bound {bound}")


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
