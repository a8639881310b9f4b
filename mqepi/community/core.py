"""Community submissions: the bundle format, strict validation, quarantine and ingest.

A *bundle* is a folder or a ``.zip`` holding ``manifest.json`` and one Parquet file per
event type (``<event_type>.parquet``, every column of the type's schema, partition columns
included). :func:`build_bundle` makes one from runs of a local lake (``mqepi submit``);
:func:`ingest` checks everything about a bundle before it writes anything, then appends it
through :meth:`mqepi.lake.Lake.append`, all events re-stamped ``origin =
community/<submitter>`` (``mqepi ingest``). A rejected bundle leaves the lake untouched and
yields a :class:`BundleReport` listing every problem (file, column, row, value); it can be
copied, with its report, to a quarantine folder outside the lake (:func:`quarantine`).
:func:`ingest_drop_folder` processes each bundle of a drop folder once.

Bundles are untrusted: nothing in one is unpickled or evaluated, Parquet is read only with
pyarrow/polars after its footer metadata passed the limits, zip entries are checked before
any is read and read with a bound, symlinks are never followed. docs/community.md lists
every check.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mqepi import __version__
from mqepi.errors import EventValidationError, MqepiError
from mqepi.lake import events
from mqepi.lake.store import Lake
from mqepi.quant import maps
from mqepi.schemas import EVENT_TYPES

FORMAT = "mqepi-community-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = json.loads(Path(__file__).with_name("manifest.schema.json").read_text())
LICENCES = tuple(MANIFEST_SCHEMA["properties"]["licence"]["enum"])
#: A submitter id: the origin's slug (schemas/events.py ORIGIN), so also a safe path component.
SUBMITTER_MAX_LEN = 64
SUBMITTER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CONFIG_TYPES = ("quant_config", "quantization", "tensor_inventory")
RUN_TYPES = tuple(name for name, spec in EVENT_TYPES.items() if "run_id" in spec.partition_by)
#: Quality event type -> the column naming the window (phase) that must cover it (None: a fixed name).
COVERING_WINDOW = {"benchmark_answer": "benchmark", "perplexity": None, "kld": None, "throughput": "test"}
#: Streams whose time column must never go backwards within a group (sensor or meter channel).
MONOTONIC = {
    "power_sample": ("host_time_ns", ("run_id", "meter_id", "channel")),
    "thermal_sample": ("host_time_ns", ("run_id", "node", "sensor")),
}
#: Rows per problem quoted in a report line; problems per report.
QUOTED_ROWS = 5
MAX_PROBLEMS = 200
#: Timestamps may lead the ingesting clock by this much (clock skew), not more.
FUTURE_SLACK_NS = 24 * 3600 * 10**9
#: A zip entry that inflates more than this ratio (and to more than 1 MiB) is a zip bomb.
MAX_ZIP_RATIO = 200


class CommunityError(MqepiError):
    """A bundle could not be built, or a drop folder or quarantine could not be used."""


class BundleRejected(CommunityError):
    """A bundle failed validation; ``report`` lists every problem. Nothing was written to the lake."""

    def __init__(self, report: BundleReport):
        self.report = report
        self.quarantined_to: Path | None = None
        n = len(report.problems)
        super().__init__(f"bundle {report.bundle} rejected: {n} problem{'s' if n != 1 else ''}; first: {report.problems[0]}")


@dataclass(frozen=True)
class Limits:
    """What a bundle may hold. The defaults fit a sweep of a few Pi 5 runs; tests pass smaller ones."""

    max_total_bytes: int = 2 * 1024**3  # all files together, uncompressed
    max_files: int = len(EVENT_TYPES)  # Parquet files (one per event type)
    max_entries: int = 64  # zip entries / folder entries, manifest and directories included
    max_manifest_bytes: int = 16 * 1024**2
    max_rows_per_file: int = 20_000_000
    max_row_groups: int = 10_000
    max_row_group_rows: int = 1_048_576
    max_row_group_bytes: int = 512 * 1024**2  # uncompressed, from the Parquet footer
    max_string_bytes: int = 65_536  # any one string value
    max_list_len: int = 64  # any one list value (choice_scores)


DEFAULT_LIMITS = Limits()


@dataclass
class Problem:
    """One reason a bundle is rejected."""

    check: str  # bundle | zip | manifest | file | parquet | limit | schema | identity | reference | physics | map | lake
    file: str | None
    detail: str
    column: str | None = None
    row: int | None = None
    value: object = None

    def __str__(self) -> str:
        where = [self.file or "bundle"]
        if self.column is not None:
            where.append(f"column {self.column}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.value is not None:
            where.append(f"value {_short(self.value)}")
        return f"{', '.join(where)}: {self.detail}"


@dataclass
class BundleReport:
    """Every problem found in one bundle."""

    bundle: str
    sha256: str | None = None  # content digest of the bundle (bundle_digest)
    submitter: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, file: str | None, detail: str, **where) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(check, file, detail, **where))
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append(Problem("bundle", None, f"more than {MAX_PROBLEMS} problems; the rest are not listed"))

    def text(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "sha256": self.sha256, "submitter": self.submitter, "accepted": self.ok,
                "problems": [{**asdict(p), "value": None if p.value is None else _short(p.value)} for p in self.problems]}


@dataclass
class CheckedBundle:
    """A bundle that passed every check: its manifest and one re-stamped frame per event type."""

    path: Path
    sha256: str
    manifest: dict
    frames: dict[str, pl.DataFrame]
    #: per event type, the ids of this bundle already in the lake (filled when a lake was given)
    present: dict[str, set[str]] = field(default_factory=dict)

    @property
    def submitter(self) -> str:
        return self.manifest["submitter"]["id"]

    @property
    def origin(self) -> str:
        return origin_for(self.submitter)

    @property
    def events(self) -> int:
        return sum(df.height for df in self.frames.values())

    @property
    def already_ingested(self) -> bool:
        return bool(self.present) and all(len(self.present.get(t, ())) == df.height for t, df in self.frames.items())


@dataclass
class IngestResult:
    """What :func:`ingest` did with one bundle."""

    bundle: str
    sha256: str
    submitter: str
    origin: str
    status: str  # ingested | already-ingested | valid (dry run)
    events: int
    rows_written: dict[str, int] = field(default_factory=dict)


def origin_for(submitter: str) -> str:
    """The origin stamped on a submitter's events."""
    return f"community/{submitter}"


def submitter_problems(value) -> list[str]:
    """Why ``value`` is not a safe submitter id (empty list if it is)."""
    if not isinstance(value, str):
        return [f"must be a string, not {type(value).__name__}"]
    out = []
    if "/" in value or "\\" in value:
        out.append("contains a path separator")
    if ".." in value:
        out.append("contains '..'")
    if len(value) > SUBMITTER_MAX_LEN:
        out.append(f"is {len(value)} characters, longer than {SUBMITTER_MAX_LEN}")
    if not out and not SUBMITTER_RE.match(value):
        out.append("is not a lowercase slug (a-z, 0-9, '_', '-'; starting with a letter or digit)")
    return out


# ================================================================== reading a bundle safely


class _Source:
    """The entries of a bundle (name -> size) and a bounded reader; folder or zip."""

    def __init__(self, kind: str, entries: dict[str, int], reader):
        self.kind, self.entries, self._reader = kind, entries, reader

    def read(self, name: str, limit: int) -> bytes:
        return self._reader(name, limit)

    def close(self) -> None:
        pass


def _open_bundle(path: Path, limits: Limits, report: BundleReport) -> _Source | None:
    if path.is_symlink():
        report.add("bundle", path.name, "the bundle path is a symlink; symlinks are never followed")
        return None
    if path.is_dir():
        return _folder_source(path, limits, report)
    if path.is_file():
        return _zip_source(path, limits, report)
    report.add("bundle", path.name, "not a folder or a .zip file" if path.exists() else "no such bundle")
    return None


def _folder_source(root: Path, limits: Limits, report: BundleReport) -> _Source | None:
    entries: dict[str, int] = {}
    with os.scandir(root) as it:
        listing = sorted(it, key=lambda e: e.name)
    if len(listing) > limits.max_entries:
        report.add("limit", None, f"the bundle folder has {len(listing)} entries, more than the limit {limits.max_entries}")
        return None
    for entry in listing:
        if entry.is_symlink():
            report.add("bundle", entry.name, "is a symlink; symlinks are never followed")
        elif entry.is_dir(follow_symlinks=False):
            report.add("bundle", entry.name + "/", "nested folder; a bundle folder holds only manifest.json and Parquet files")
        elif not entry.is_file(follow_symlinks=False):
            report.add("bundle", entry.name, "not a regular file")
        else:
            entries[entry.name] = entry.stat(follow_symlinks=False).st_size

    def reader(name: str, limit: int) -> bytes:
        # O_NOFOLLOW: a file swapped for a symlink after the listing is refused, not followed
        with _open_regular(root / name) as f:
            return f.read(limit + 1)

    return _Source("folder", entries, reader)


def _zip_source(path: Path, limits: Limits, report: BundleReport) -> _Source | None:
    name = path.name
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError, struct.error) as exc:
        report.add("zip", name, f"not a zip file: {exc}")
        return None
    if len(infos) > limits.max_entries:
        report.add("limit", name, f"the zip has {len(infos)} entries, more than the limit {limits.max_entries}")
        return None
    problems_before = len(report.problems)
    files: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    declared = 0
    for info in infos:
        raw = info.orig_filename
        if raw in seen:
            report.add("zip", raw, "entry appears twice in the zip")
            continue
        seen.add(raw)
        parts = raw.split("/")
        if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw):
            report.add("zip", raw, "absolute path: every entry must lie inside the bundle root")
            continue
        if "\\" in raw:
            report.add("zip", raw, "backslash in entry name (a Windows path separator)")
            continue
        if ".." in parts:
            report.add("zip", raw, "entry lies outside the bundle root ('..')")
            continue
        if any(p in ("", ".") for p in parts[:-1]) or "\x00" in raw:
            report.add("zip", raw, "entry name is not a normalised relative path")
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            report.add("zip", raw, "symlink entry; symlinks are never followed")
            continue
        if info.flag_bits & 0x1:
            report.add("zip", raw, "encrypted entry")
            continue
        if info.is_dir():
            continue
        if mode and not stat.S_ISREG(mode):
            report.add("zip", raw, "not a regular file")
            continue
        declared += info.file_size
        if info.file_size > (1 << 20) and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            report.add("zip", raw, f"inflates {info.compress_size} bytes to {info.file_size} "
                       f"(ratio above {MAX_ZIP_RATIO}): a zip bomb")
            continue
        files.append(info)
    if declared > limits.max_total_bytes:
        report.add("limit", name, f"total uncompressed size {declared} bytes is more than the limit {limits.max_total_bytes}")
    # entries at the root, or all under one top folder (as zipping a folder gives)
    tops = {i.orig_filename.split("/")[0] for i in files}
    depth = {len(i.orig_filename.split("/")) for i in files}
    prefix = ""
    if depth and depth != {1}:
        if depth == {2} and len(tops) == 1:
            prefix = tops.pop() + "/"
        else:
            for info in files:
                if len(info.orig_filename.split("/")) > 1:
                    report.add("zip", info.orig_filename, "nested path; entries must sit at the root or in one top folder")
    dirs = [i for i in infos if i.is_dir() and i.orig_filename not in ("", prefix) and ".." not in i.orig_filename.split("/")]
    for info in dirs:
        report.add("zip", info.orig_filename, "unexpected folder entry")
    if len(report.problems) > problems_before:
        zf.close()
        return None
    by_name = {i.orig_filename[len(prefix):]: i for i in files}

    def reader(entry: str, limit: int) -> bytes:
        info = by_name[entry]
        try:
            with zf.open(info) as f:
                data = f.read(min(limit, info.file_size) + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError, struct.error) as exc:
            raise _EntryError(f"corrupt zip entry: {exc}") from None
        if len(data) > info.file_size:
            raise _EntryError(f"inflates to more than its declared {info.file_size} bytes")
        return data

    source = _Source("zip", {k: i.file_size for k, i in by_name.items()}, reader)
    source.close = zf.close
    return source


class _EntryError(Exception):
    pass


def _read_entry(source: _Source, name: str, limit: int, report: BundleReport) -> bytes | None:
    try:
        data = source.read(name, limit)
    except _EntryError as exc:
        report.add("zip", name, str(exc))
        return None
    except OSError as exc:
        report.add("bundle", name, f"cannot read: {exc}")
        return None
    if len(data) > limit:
        report.add("limit", name, f"more than {limit} bytes")
        return None
    return data


def bundle_digest(path: str | os.PathLike) -> str:
    """Content digest of a bundle: sha256 of a zip file, or of a folder's sorted
    (name, kind, content sha256) entries. Never follows symlinks; names quarantine copies
    and keys the drop folder's state."""
    path = Path(path)
    if path.is_file() and not path.is_symlink():
        return _sha256_file(path)
    h = hashlib.sha256(b"mqepi-bundle-folder\n")
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, path)
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    h.update(f"L {rel} {os.readlink(full)}\n".encode("utf-8", "surrogateescape"))
                elif stat.S_ISREG(st.st_mode):
                    h.update(f"F {rel} {_sha256_file(Path(full))}\n".encode("utf-8", "surrogateescape"))
                else:
                    h.update(f"O {rel}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _open_regular(path: Path):
    """Open a regular file for reading; refuse a symlink (O_NOFOLLOW) and never block on a FIFO."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with _open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ================================================================== manifest


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def parse_manifest(data: bytes, report: BundleReport) -> dict | None:
    """Decode and check ``manifest.json``; add every problem to ``report``; None if unusable."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add("manifest", MANIFEST, f"manifest.json is not UTF-8 text: {exc}")
        return None
    try:
        manifest = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        report.add("manifest", MANIFEST, f"key {exc.args[0]!r} appears twice in one object")
        return None
    except RecursionError:
        report.add("manifest", MANIFEST, "manifest.json is nested too deeply")
        return None
    except ValueError as exc:
        report.add("manifest", MANIFEST, f"manifest.json is not JSON: {exc}")
        return None
    if not isinstance(manifest, dict):
        report.add("manifest", MANIFEST, f"manifest.json must be a JSON object, not {type(manifest).__name__}")
        return None
    before = len(report.problems)
    submitter = manifest.get("submitter")
    sid = submitter.get("id") if isinstance(submitter, dict) else None
    id_flagged = False
    if isinstance(submitter, dict) and "id" in submitter:
        for why in submitter_problems(sid):
            report.add("identity", MANIFEST, f"submitter id {why}", column="submitter/id", value=sid)
            id_flagged = True
    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    for error in sorted(validator.iter_errors(manifest), key=lambda e: [str(p) for p in e.absolute_path]):
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        if id_flagged and path == "submitter/id":
            continue
        report.add("manifest", MANIFEST, f"field {path}: {_short(error.message, 300)}", column=None if path == "(top level)" else path)
    if len(report.problems) > before:
        return None
    nodes = [n["name"] for n in manifest["hardware"]["nodes"]]
    for name in sorted({n for n in nodes if nodes.count(n) > 1}):
        report.add("manifest", MANIFEST, f"hardware node {name!r} is listed twice", column="hardware/nodes")
    for k, node in enumerate(manifest["hardware"]["nodes"]):
        if node["power_min_w"] > node["power_max_w"]:
            report.add("manifest", MANIFEST, f"node {node['name']!r}: power_min_w {node['power_min_w']} > power_max_w {node['power_max_w']}",
                       column=f"hardware/nodes/{k}")
    keys = [(q["benchmark"], q["sha256"]) for q in manifest["question_sets"]]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        report.add("manifest", MANIFEST, f"question set {key[0]} {key[1][:12]}... is listed twice", column="question_sets")
    for k, qs in enumerate(manifest["question_sets"]):
        ids = qs["question_ids"]
        if len(set(ids)) != len(ids):
            report.add("manifest", MANIFEST, "question_ids repeat an id", column=f"question_sets/{k}/question_ids")
    paths = [f["path"] for f in manifest["files"]]
    types = [f["event_type"] for f in manifest["files"]]
    for k, f in enumerate(manifest["files"]):
        if f["path"] != f"{f['event_type']}.parquet":
            report.add("manifest", MANIFEST, f"file {f['path']!r} must be named {f['event_type']}.parquet", column=f"files/{k}/path")
    for dup in sorted({p for p in paths if paths.count(p) > 1} | {t for t in types if types.count(t) > 1}):
        report.add("manifest", MANIFEST, f"{dup!r} is listed twice in files", column="files")
    return None if len(report.problems) > before else manifest


# ================================================================== one Parquet file


def _read_parquet(name: str, data: bytes, spec, declared_rows: int, limits: Limits, report: BundleReport) -> pl.DataFrame | None:
    """Footer first (limits), then the table with exact columns and dtypes; None on any problem."""
    if len(data) < 12 or data[:4] != b"PAR1":
        report.add("parquet", name, "not a Parquet file (no 'PAR1' magic at the start)")
        return None
    if data[-4:] != b"PAR1":
        report.add("parquet", name, "truncated Parquet file (no 'PAR1' footer magic at the end)")
        return None
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), thrift_string_size_limit=16 * 1024**2, thrift_container_size_limit=100_000)
        md = pf.metadata
        arrow_schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        report.add("parquet", name, f"not a readable Parquet file: {_short(str(exc), 200)}")
        return None
    before = len(report.problems)
    if md.num_rows != declared_rows:
        report.add("file", name, f"has {md.num_rows} rows but manifest.json says {declared_rows}", value=md.num_rows)
    if md.num_rows > limits.max_rows_per_file:
        report.add("limit", name, f"{md.num_rows} rows, more than the limit {limits.max_rows_per_file} per file")
    if md.num_row_groups > limits.max_row_groups:
        report.add("limit", name, f"{md.num_row_groups} row groups, more than the limit {limits.max_row_groups}")
    else:
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            if rg.num_rows > limits.max_row_group_rows:
                report.add("limit", name, f"row group {i} has {rg.num_rows} rows, more than the limit {limits.max_row_group_rows}")
            if rg.total_byte_size > limits.max_row_group_bytes:
                report.add("limit", name, f"row group {i} is {rg.total_byte_size} bytes uncompressed, more than the limit {limits.max_row_group_bytes}")
    names = list(arrow_schema.names)
    for dup in sorted({n for n in names if names.count(n) > 1}):
        report.add("schema", name, "column appears twice", column=dup)
    expected = spec.polars_schema
    for column in expected:
        if column not in names:
            report.add("schema", name, f"missing column {column!r}", column=column)
    for column in names:
        if column not in expected:
            report.add("schema", name, f"unknown column {column!r} (strict schema: no extra columns)", column=column)
    if len(report.problems) > before:
        return None
    try:
        table = pf.read()
        # full validation: offsets, lengths and UTF-8 of every string (invalid UTF-8 would
        # otherwise reach polars, which cannot hand it to Python)
        table.validate(full=True)
        df = pl.from_arrow(table)
    except Exception as exc:  # pyarrow and polars raise many types on malformed data pages
        report.add("parquet", name, f"cannot read the data: {type(exc).__name__}: {_short(str(exc), 200)}")
        return None
    for column, dtype in expected.items():
        if df.schema[column] != dtype:
            report.add("schema", name, f"dtype {df.schema[column]}, expected {dtype} (exact dtypes, no coercion)", column=column)
    if len(report.problems) > before:
        return None
    return df.select(list(expected))


def _flag(report: BundleReport, check: str, name: str, bad: pl.DataFrame, column: str | None, detail: str) -> None:
    """One problem for the rows of ``bad`` (with a ``_row`` column): first row, first value, count."""
    if bad.height == 0:
        return
    rows = bad["_row"].head(QUOTED_ROWS).to_list()
    more = f" (+{bad.height - len(rows)} more)" if bad.height > len(rows) else ""
    first = bad.row(0, named=True)
    value = first.get(column) if column else None
    report.add(check, name, f"{detail} (rows {', '.join(map(str, rows))}{more})", column=column, row=rows[0],
               value=value)


def _check_file_values(name: str, spec, df: pl.DataFrame, submitter: str, limits: Limits, report: BundleReport) -> None:
    """Checks of one file on its own: schema values, ids, origin, limits on values."""
    ix = df.with_row_index("_row")
    _flag(report, "schema", name, ix.filter(pl.col("event_type") != spec.name), "event_type",
          f"event_type differs from the file's type {spec.name!r}")
    _flag(report, "schema", name, ix.filter(pl.col("schema_version") != spec.version), "schema_version",
          f"schema_version is not the current {spec.version}")
    for column, dtype in spec.polars_schema.items():
        if dtype == pl.Utf8:
            _flag(report, "limit", name, ix.filter(pl.col(column).str.len_bytes() > limits.max_string_bytes), None,
                  f"column {column}: string longer than {limits.max_string_bytes} bytes")
        elif isinstance(dtype, pl.List):
            _flag(report, "limit", name, ix.filter(pl.col(column).list.len() > limits.max_list_len), None,
                  f"column {column}: list longer than {limits.max_list_len}")
    try:
        events.validate(df, source=name, check_ids=False)
    except EventValidationError as exc:
        for failure in exc.failures:
            rows = f" ({failure['rows']} rows)" if failure.get("rows") else ""
            report.add("schema", name, f"failed {failure.get('check')}{rows}; first failing values {_short(failure.get('values'), 200)}",
                       column=failure.get("column"))
    # identity: origin, content ids, duplicates
    own = origin_for(submitter)
    _flag(report, "identity", name, ix.filter(pl.col("origin") == "lab"), "origin",
          "claims origin 'lab'; community events cannot be lab data")
    _flag(report, "identity", name, ix.filter((pl.col("origin") != "lab") & (pl.col("origin") != own)), "origin",
          f"claims an origin other than {own!r}")
    ids = ix.with_columns(events.content_ids(df).alias("_expected"))
    _flag(report, "identity", name, ids.filter(pl.col("event_id") != pl.col("_expected")), "event_id",
          "event_id does not equal the sha256 of the event's content")
    _flag(report, "identity", name, ix.filter(pl.col("event_id").is_duplicated()), "event_id",
          "duplicate event_id within the file")
    future = time.time_ns() + FUTURE_SLACK_NS
    _flag(report, "physics", name, ix.filter(pl.col("recorded_at_ns") > future), "recorded_at_ns",
          "recorded in the future")


# ================================================================== the whole bundle


def _check_references_and_physics(frames: dict[str, pl.DataFrame], manifest: dict, report: BundleReport) -> None:
    if not any(df.height for df in frames.values()):
        report.add("bundle", None, "the bundle holds no events")
        return
    if "run" not in frames or frames["run"].height == 0:
        report.add("reference", "run.parquet", "the bundle holds no run events; a submission is a set of runs")
    base = manifest["base_model"]
    nodes = {n["name"]: n for n in manifest["hardware"]["nodes"]}
    f = lambda t: f"{t}.parquet"  # noqa: E731
    ix = {t: df.with_row_index("_row") for t, df in frames.items()}

    # every event is about the manifest's base model
    for t, df in ix.items():
        _flag(report, "reference", f(t), df.filter(pl.col("model") != base["id"]), "model",
              f"model is not the manifest's base model {base['id']!r}")

    # runs: each run-bound event has its run in the bundle, with the same model and config
    runs = ix.get("run")
    run_keys: dict[str, tuple[str, str]] = {}
    if runs is not None:
        per = runs.group_by("run_id").agg(pl.col("model").n_unique().alias("m"), pl.col("config_id").n_unique().alias("c"),
                                           pl.col("model").first(), pl.col("config_id").first(), pl.col("status"), pl.col("_row").min())
        for r in per.sort("_row").iter_rows(named=True):
            if r["m"] > 1 or r["c"] > 1:
                report.add("reference", f("run"), "run events disagree on model or config_id", column="run_id", value=r["run_id"])
            run_keys[r["run_id"]] = (r["model"], r["config_id"])
            if "failed" in r["status"]:
                report.add("reference", f("run"), "run failed; submit only finished runs", column="run_id", row=r["_row"], value=r["run_id"])
            elif "finished" not in r["status"]:
                report.add("reference", f("run"), "run never finished (no 'finished' event)", column="run_id", row=r["_row"], value=r["run_id"])
    keys = pl.DataFrame({"run_id": list(run_keys), "_m": [v[0] for v in run_keys.values()], "_c": [v[1] for v in run_keys.values()]},
                        schema={"run_id": pl.Utf8, "_m": pl.Utf8, "_c": pl.Utf8})
    for t in RUN_TYPES:
        if t == "run" or t not in ix:
            continue
        joined = ix[t].join(keys, on="run_id", how="left", maintain_order="left")
        for run_id in joined.filter(pl.col("_m").is_null())["run_id"].unique(maintain_order=True).to_list():
            bad = joined.filter(pl.col("run_id") == run_id)
            _flag(report, "reference", f(t), bad, "run_id", f"run {run_id!r} has no run event in the bundle")
        _flag(report, "reference", f(t), joined.filter(pl.col("_m").is_not_null() & ((pl.col("model") != pl.col("_m")) | (pl.col("config_id") != pl.col("_c")))),
              "config_id", "model/config_id differ from the run's")

    # configurations: every run's config is in the bundle; one map per config
    configs = ix.get("quant_config")
    config_maps: dict[tuple[str, str], str] = {}
    if configs is not None:
        for r in configs.iter_rows(named=True):
            key = (r["model"], r["config_id"])
            if key in config_maps and config_maps[key] != r["map_sha256"]:
                report.add("reference", f("quant_config"), f"two different maps for config {key[1]!r}", column="map_sha256", row=r["_row"], value=r["map_sha256"])
            config_maps.setdefault(key, r["map_sha256"])
    for run_id, key in run_keys.items():
        if key not in config_maps:
            report.add("reference", f("run"), f"run {run_id!r}: its configuration {key[1]!r} has no quant_config event in the bundle",
                       column="config_id", value=key[1])
    cfg_keys = pl.DataFrame({"model": [k[0] for k in config_maps], "config_id": [k[1] for k in config_maps], "_map": list(config_maps.values())},
                            schema={"model": pl.Utf8, "config_id": pl.Utf8, "_map": pl.Utf8})
    quantization = ix.get("quantization")
    if quantization is not None:
        q = quantization.join(cfg_keys, on=["model", "config_id"], how="left", maintain_order="left")
        _flag(report, "reference", f("quantization"), q.filter(pl.col("_map").is_null()), "config_id", "quantization of a configuration without quant_config in the bundle")
        _flag(report, "reference", f("quantization"), q.filter(pl.col("_map").is_not_null() & (pl.col("map_sha256") != pl.col("_map"))),
              "map_sha256", "map_sha256 differs from the configuration's map")
        _flag(report, "reference", f("quantization"), q.filter(pl.col("base_sha256") != base["sha256"]), "base_sha256",
              "base_sha256 is not the manifest's base model sha256")
    inventory = ix.get("tensor_inventory")
    if inventory is not None:
        files = quantization.select("model", "config_id", "file_sha256").unique().with_columns(_q=pl.lit(True)) if quantization is not None else None
        inv = inventory.join(cfg_keys, on=["model", "config_id"], how="left", maintain_order="left")
        _flag(report, "reference", f("tensor_inventory"), inv.filter(pl.col("_map").is_null()), "config_id", "tensor inventory of a configuration without quant_config in the bundle")
        if files is not None:
            inv = inv.join(files, on=["model", "config_id", "file_sha256"], how="left", maintain_order="left")
            bad = inv.filter(pl.col("_q").is_null())
        else:
            bad = inv
        _flag(report, "reference", f("tensor_inventory"), bad, "file_sha256", "tensor inventory of a file without a quantization event in the bundle")
    if configs is not None:
        _check_maps(configs, inventory, report)

    # question sets: every answer's question is in a set the manifest records
    answers = ix.get("benchmark_answer")
    if answers is not None:
        qsets = pl.DataFrame(
            [{"benchmark": q["benchmark"], "question_set_sha256": q["sha256"], "question_id": i}
             for q in manifest["question_sets"] for i in q["question_ids"]],
            schema={"benchmark": pl.Utf8, "question_set_sha256": pl.Utf8, "question_id": pl.Utf8},
        ).with_columns(_known=pl.lit(True))
        sets = qsets.select("benchmark", "question_set_sha256").unique().with_columns(_set=pl.lit(True))
        a = answers.join(sets, on=["benchmark", "question_set_sha256"], how="left", maintain_order="left")
        a = a.join(qsets, on=["benchmark", "question_set_sha256", "question_id"], how="left", maintain_order="left")
        _flag(report, "reference", f("benchmark_answer"), a.filter(pl.col("_set").is_null()), "question_set_sha256",
              "question set not recorded in manifest.json question_sets")
        _flag(report, "reference", f("benchmark_answer"), a.filter(pl.col("_set").is_not_null() & pl.col("_known").is_null()), "question_id",
              "question_id is not in its recorded question set")
        _flag(report, "physics", f("benchmark_answer"), answers.filter(pl.struct("run_id", "benchmark", "question_id").is_duplicated()),
              "question_id", "question answered more than once in one run")
        n_choices = pl.col("choice_scores").list.len()
        _flag(report, "physics", f("benchmark_answer"), answers.filter(pl.col("choice_scores").is_not_null() & ((pl.col("gold") >= n_choices) | (pl.col("predicted") >= n_choices))),
              "gold", "gold or predicted answer index beyond the choices scored")
        accuracy = answers.group_by("run_id", "benchmark").agg(pl.col("correct").mean().alias("acc"), pl.col("_row").min())
        _flag(report, "physics", f("benchmark_answer"), accuracy.filter(~pl.col("acc").is_between(0, 1)), "acc", "accuracy outside [0, 1]")

    # windows cover the quality measurements of their run
    phases = frames.get("phase")
    have = set(phases.select("run_id", "phase").iter_rows()) if phases is not None else set()
    for t, column in COVERING_WINDOW.items():
        if t not in ix:
            continue
        window = pl.col(column) if column else pl.lit(t)
        need = ix[t].with_columns(_window=window).group_by("run_id", "_window", maintain_order=True).agg(pl.col("_row").min())
        for run_id, name, row in need.iter_rows():
            if (run_id, name) not in have:
                report.add("physics", f(t), f"no {name!r} window (phase event) in run {run_id!r} covers these events", column="run_id", row=row, value=run_id)

    # physics of the streams
    if "phase" in ix:
        p = ix["phase"]
        _flag(report, "physics", f("phase"), p.filter(pl.col("tokens") <= 0), "tokens", "tokens must be positive (or null where a window has none)")
        _flag(report, "reference", f("phase"), p.filter(pl.col("node").is_not_null() & ~pl.col("node").is_in(list(nodes))), "node",
              "node is not in the manifest's hardware nodes")
    if "throughput" in ix:
        _flag(report, "physics", f("throughput"), ix["throughput"].filter(pl.col("n_prompt") + pl.col("n_gen") <= 0), "n_prompt",
              "a throughput test must process tokens (n_prompt + n_gen > 0)")
    if "thermal_sample" in ix:
        _flag(report, "reference", f("thermal_sample"), ix["thermal_sample"].filter(~pl.col("node").is_in(list(nodes))), "node",
              "node is not in the manifest's hardware nodes")
    if "power_sample" in ix:
        _check_power(ix["power_sample"], manifest, nodes, report)
    for t, (column, by) in MONOTONIC.items():
        if t in ix:
            back = ix[t].filter(pl.col(column).diff().over(list(by)) < 0)
            _flag(report, "physics", f(t), back, column, f"{column} goes backwards within a {'/'.join(by)} stream")


def _check_power(ps: pl.DataFrame, manifest: dict, nodes: dict, report: BundleReport) -> None:
    name = "power_sample.parquet"
    power = pl.col("power_w")
    _flag(report, "physics", name, ps.filter(~power.is_finite()), "power_w", "power is not finite")
    _flag(report, "physics", name, ps.filter(power.is_finite() & (power < 0)), "power_w", "negative power")
    ranges = pl.DataFrame({"node": list(nodes), "_min": [float(n["power_min_w"]) for n in nodes.values()],
                           "_max": [float(n["power_max_w"]) for n in nodes.values()]},
                          schema={"node": pl.Utf8, "_min": pl.Float64, "_max": pl.Float64})
    # a reading of no node is the whole cluster: at most the sum of the nodes' maxima
    cluster = (min(float(n["power_min_w"]) for n in nodes.values()), sum(float(n["power_max_w"]) for n in nodes.values()))
    j = ps.join(ranges, on="node", how="left", maintain_order="left").with_columns(
        _min=pl.when(pl.col("node").is_null()).then(pl.lit(cluster[0])).otherwise(pl.col("_min")),
        _max=pl.when(pl.col("node").is_null()).then(pl.lit(cluster[1])).otherwise(pl.col("_max")),
    )
    _flag(report, "reference", name, j.filter(pl.col("_max").is_null()), "node", "node is not in the manifest's hardware nodes")
    ok = power.is_finite() & (power >= 0) & pl.col("_max").is_not_null()
    _flag(report, "physics", name, j.filter(ok & (power > pl.col("_max"))), "power_w", "power above the node's stated power_max_w")
    _flag(report, "physics", name, j.filter(ok & (power < pl.col("_min"))), "power_w", "power below the node's stated power_min_w")
    energy = pl.col("energy_counter_j")
    _flag(report, "physics", name, ps.filter(energy.is_not_null() & (~energy.is_finite() | (energy < 0))), "energy_counter_j",
          "energy must be finite and non-negative")
    meter = manifest["meter"]["type"]
    _flag(report, "reference", name, ps.filter(pl.col("power_source") != meter), "power_source",
          f"power_source differs from the manifest's meter type {meter!r}")


def _profile_for(model: str) -> maps.ModelProfile | None:
    # only a profile id of the repository: never a path taken from the bundle
    path = maps.PROFILES_DIR / f"{model}.json"
    return maps.load_profile(path) if maps.SLUG.match(model) and path.is_file() else None


def _check_maps(configs: pl.DataFrame, inventory: pl.DataFrame | None, report: BundleReport) -> None:
    """Every configuration's map parses, matches its event and (with a known profile) its inventory."""
    name = "quant_config.parquet"
    for r in configs.iter_rows(named=True):
        where = f"{name} row {r['_row']} map_json"
        try:
            data = json.loads(r["map_json"])
        except (ValueError, RecursionError) as exc:
            report.add("map", name, f"map_json is not JSON: {_short(str(exc), 120)}", column="map_json", row=r["_row"])
            continue
        try:
            qmap = maps.parse_map(data, where)
        except maps.MapError as exc:
            report.add("map", name, f"map_json does not parse: {exc}", column="map_json", row=r["_row"])
            continue
        for column, expected, actual in (("model", r["model"], qmap.model), ("config_id", r["config_id"], qmap.config_id),
                                         ("map_sha256", r["map_sha256"], qmap.sha256), ("kind", r["kind"], qmap.kind)):
            if expected != actual:
                report.add("map", name, f"{column} {expected!r} does not match the map's {actual!r}", column=column, row=r["_row"], value=expected)
        inv = (inventory.filter((pl.col("model") == r["model"]) & (pl.col("config_id") == r["config_id"]))
               if inventory is not None else None)
        layers = {layer for g in qmap.groups for layer in g.layers}
        profile = _profile_for(r["model"])
        if profile is None:
            if layers != set(range(r["n_layers"])):
                report.add("map", name, f"map's layers do not cover 0-{r['n_layers'] - 1} exactly once", column="n_layers", row=r["_row"], value=r["n_layers"])
                continue
            if inv is not None:
                group = {layer: g.name for g in qmap.groups for layer in g.layers}
                bad = inv.filter(pl.col("layer").is_not_null()).with_columns(
                    _group=pl.col("layer").replace_strict(group, default=None, return_dtype=pl.Utf8))
                _flag(report, "map", "tensor_inventory.parquet", bad.filter(pl.col("_group").is_null() | (pl.col("group") != pl.col("_group"))),
                      "group", f"group does not match map {r['config_id']!r}")
            continue
        if r["n_layers"] != profile.n_layers:
            report.add("map", name, f"n_layers {r['n_layers']} but model {profile.id} has {profile.n_layers}", column="n_layers", row=r["_row"], value=r["n_layers"])
            continue
        try:
            expansion = maps.expand(qmap, profile)
        except maps.MapError as exc:
            report.add("map", name, f"map does not fit model {profile.id}: {exc}", column="map_json", row=r["_row"])
            continue
        if inv is None or inv.height == 0:
            continue
        plan = pl.DataFrame({"tensor": [t.name for t in expansion.tensors], "_req": [t.requested_type for t in expansion.tensors]},
                            schema={"tensor": pl.Utf8, "_req": pl.Utf8}).with_columns(_known=pl.lit(True))
        j = inv.join(plan, on="tensor", how="left", maintain_order="left")
        _flag(report, "map", "tensor_inventory.parquet", j.filter(pl.col("_known").is_null()), "tensor",
              f"tensor is not in model {profile.id}")
        mismatch = j.filter(pl.col("_known").is_not_null() & ~pl.col("requested_type").eq_missing(pl.col("_req")))
        if mismatch.height:
            first = mismatch.row(0, named=True)
            _flag(report, "map", "tensor_inventory.parquet", mismatch, "requested_type",
                  f"requested_type does not match map {r['config_id']!r} (e.g. {first['tensor']}: the map gives {first['_req']!r})")
        names = set(plan["tensor"].to_list())
        for file_sha, got in inv.group_by("file_sha256", maintain_order=True).agg(pl.col("tensor")).iter_rows():
            missing = sorted(names - set(got))
            if missing:
                report.add("map", "tensor_inventory.parquet", f"inventory of file {file_sha[:12]}... lacks {len(missing)} tensors of {profile.id} (e.g. {missing[0]})",
                           column="tensor", value=file_sha)


def _check_lake(checked: CheckedBundle, lake: Lake, report: BundleReport) -> None:
    """Compare with what the lake holds: runs and configs must not collide; fill ``present``."""
    frames = checked.frames
    present: dict[str, set[str]] = {t: set() for t in frames}
    run_ids = frames["run"]["run_id"].unique(maintain_order=True).to_list() if "run" in frames else []
    for run_id in run_ids:
        lake_ids: set[str] = set()
        origins: set[str] = set()
        mine: set[str] = set()
        for t in RUN_TYPES:
            ids = set(frames[t].filter(pl.col("run_id") == run_id)["event_id"].to_list()) if t in frames else set()
            mine |= ids
            held = lake.read(t, columns=["event_id", "origin"], run_id=run_id)
            if held.height:
                lake_ids |= set(held["event_id"].to_list())
                origins |= set(held["origin"].to_list())
                if t in frames:
                    present[t] |= ids & lake_ids
        foreign = lake_ids - mine
        if foreign:
            dup = len(mine & lake_ids)
            report.add("lake", "run.parquet", f"run_id {run_id!r} is already in the lake with {len(foreign)} events not in this bundle "
                       f"(origin {', '.join(sorted(origins))}); {dup} of this bundle's events duplicate lake events",
                       column="run_id", value=run_id)
    for t in CONFIG_TYPES:
        if t not in frames:
            continue
        for model, config_id in frames[t].select("model", "config_id").unique(maintain_order=True).iter_rows():
            columns = ["event_id", "origin"] + (["map_sha256"] if t == "quant_config" else [])
            held = lake.read(t, columns=columns, model=model, config_id=config_id)
            if not held.height:
                continue
            ids = set(frames[t].filter((pl.col("model") == model) & (pl.col("config_id") == config_id))["event_id"].to_list())
            present[t] |= ids & set(held["event_id"].to_list())
            if t == "quant_config":
                mine = set(frames[t].filter((pl.col("model") == model) & (pl.col("config_id") == config_id))["map_sha256"].to_list())
                other = held.filter(~pl.col("map_sha256").is_in(list(mine)))
                if other.height:
                    report.add("lake", "quant_config.parquet", f"config {config_id!r} of {model!r} is already in the lake with a different map "
                               f"(map_sha256 {other['map_sha256'][0]}, origin {other['origin'][0]})", column="map_sha256", value=next(iter(mine)))
    checked.present = present


def validate_bundle(bundle: str | os.PathLike, lake: Lake | None = None, *, limits: Limits = DEFAULT_LIMITS) -> CheckedBundle:
    """Check everything about ``bundle``; return it re-stamped, or raise :class:`BundleRejected`.

    With ``lake``, also check it against the lake (runs and configurations already there)
    and note which of its events the lake already holds. Reads only; writes nothing.
    """
    path = Path(bundle)
    report = BundleReport(path.name)
    source = _open_bundle(path, limits, report)
    if source is None:
        _reject(report, path)
    try:
        return _validate(path, source, lake, limits, report)
    finally:
        source.close()


def _reject(report: BundleReport, path: Path):
    if report.sha256 is None:
        try:
            report.sha256 = bundle_digest(path)
        except OSError:
            pass
    raise BundleRejected(report)


def _validate(path: Path, source: _Source, lake: Lake | None, limits: Limits, report: BundleReport) -> CheckedBundle:
    entries = source.entries
    if not entries:
        report.add("bundle", None, "empty bundle: no manifest.json and no event files")
        _reject(report, path)
    data_files = [n for n in entries if n != MANIFEST]
    if len(data_files) > limits.max_files:
        report.add("limit", None, f"{len(data_files)} files, more than the limit {limits.max_files}")
    total = sum(entries.values())
    if total > limits.max_total_bytes:
        report.add("limit", None, f"{total} bytes in all, more than the limit {limits.max_total_bytes}")
    if MANIFEST not in entries:
        report.add("manifest", MANIFEST, "manifest.json is missing")
        _reject(report, path)
    if report.problems:
        _reject(report, path)
    raw = _read_entry(source, MANIFEST, limits.max_manifest_bytes, report)
    manifest = parse_manifest(raw, report) if raw is not None else None
    if manifest is None:
        _reject(report, path)
    report.submitter = manifest["submitter"]["id"]
    listed = {f["path"]: f for f in manifest["files"]}
    for name in data_files:
        if name not in listed:
            report.add("file", name, "not listed in manifest.json files")
    frames: dict[str, pl.DataFrame] = {}
    unusable = 0  # files missing, unreadable or of the wrong structure
    for name, entry in listed.items():
        if name not in entries:
            report.add("file", name, "listed in manifest.json but missing from the bundle")
            unusable += 1
            continue
        data = _read_entry(source, name, limits.max_total_bytes, report)
        if data is None:
            unusable += 1
            continue
        if len(data) != entry["bytes"]:
            report.add("file", name, f"is {len(data)} bytes but manifest.json says {entry['bytes']}", value=len(data))
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            report.add("file", name, f"sha256 mismatch: file has {digest}, manifest.json says {entry['sha256']}")
        spec = EVENT_TYPES[entry["event_type"]]
        df = _read_parquet(name, data, spec, entry["rows"], limits, report)
        if df is None:
            unusable += 1
            continue
        _check_file_values(name, spec, df, manifest["submitter"]["id"], limits, report)
        frames[spec.name] = df
    if not unusable:
        # every file has its exact columns and dtypes: the cross-file checks can run (and
        # report too) even where values already failed, so the report lists every reason
        _check_references_and_physics(frames, manifest, report)
    if report.problems:
        _reject(report, path)
    report.sha256 = bundle_digest(path)
    origin = origin_for(manifest["submitter"]["id"])
    frames = {t: restamp(frames[t], origin) for t in EVENT_TYPES if t in frames and frames[t].height}
    checked = CheckedBundle(path, report.sha256, manifest, frames)
    if lake is not None:
        _check_lake(checked, lake, report)
        if report.problems:
            _reject(report, path)
    return checked


def restamp(df: pl.DataFrame, origin: str) -> pl.DataFrame:
    """``df`` with ``origin`` set and every ``event_id`` recomputed (origin is hashed content)."""
    df = df.with_columns(pl.lit(origin, dtype=pl.Utf8).alias("origin"))
    return df.with_columns(events.content_ids(df))


# ================================================================== ingest, quarantine, drop folder


def ingest(bundle: str | os.PathLike, lake: Lake, *, limits: Limits = DEFAULT_LIMITS,
           quarantine_dir: str | os.PathLike | None = None, dry_run: bool = False) -> IngestResult:
    """Validate ``bundle`` completely, then append its events to ``lake`` with :meth:`Lake.append`.

    A bundle whose events the lake already holds is a no-op (``status = already-ingested``);
    one interrupted part-way is completed. A rejected bundle raises :class:`BundleRejected`
    (nothing written to the lake), after copying it and its report to ``quarantine_dir``
    when given. ``dry_run`` validates only.
    """
    if quarantine_dir is not None:
        _check_outside(Path(quarantine_dir), lake)
    try:
        checked = validate_bundle(bundle, lake, limits=limits)
    except BundleRejected as exc:
        if quarantine_dir is not None:
            exc.quarantined_to = quarantine(bundle, quarantine_dir, exc.report, lake=lake, limits=limits)
        raise
    result = IngestResult(Path(bundle).name, checked.sha256, checked.submitter, checked.origin, "valid", checked.events)
    if dry_run:
        return result
    if checked.already_ingested:
        result.status = "already-ingested"
        return result
    lake.init()
    for t, df in checked.frames.items():
        new = df.filter(~pl.col("event_id").is_in(list(checked.present.get(t, ())))) if checked.present.get(t) else df
        if new.height:
            written = lake.append(new, source=f"{result.bundle}/{t}.parquet")
            result.rows_written[t] = written.rows_written
    result.status = "ingested"
    return result


def _check_outside(folder: Path, lake: Lake | None) -> None:
    if lake is None or "://" in lake.uri:
        return
    root = Path(lake.root).resolve()
    target = folder.resolve()
    if target == root or root in target.parents:
        raise CommunityError(f"quarantine folder {folder} lies inside the lake {lake.root}; it must be outside")


def quarantine(bundle: str | os.PathLike, quarantine_dir: str | os.PathLike, report: BundleReport, *,
               lake: Lake | None = None, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Copy a rejected bundle (regular files only, never following symlinks, at most twice
    the byte limit) and ``report.json`` to ``<quarantine_dir>/<digest[:16]>-<name>/``."""
    src, root = Path(bundle), Path(quarantine_dir)
    _check_outside(root, lake)
    digest = report.sha256 or bundle_digest(src)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", src.name)[:80].lstrip(".") or "bundle"
    target = root / f"{digest[:16]}-{safe}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        skipped: list[str] = []
        budget = 2 * limits.max_total_bytes
        if src.is_file() and not src.is_symlink():
            if src.stat().st_size <= budget:
                shutil.copyfile(src, target / "bundle.zip")
            else:
                skipped.append(src.name)
        elif src.is_dir() and not src.is_symlink():
            dest = target / "bundle"
            dest.mkdir(exist_ok=True)
            for entry in sorted(os.scandir(src), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size <= budget:
                    budget -= entry.stat(follow_symlinks=False).st_size
                    shutil.copyfile(entry.path, dest / entry.name, follow_symlinks=False)
                else:
                    skipped.append(entry.name)
        data = report.to_dict() | {"quarantined_at": datetime.now(UTC).isoformat(), "not_copied": skipped}
        (target / "report.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    except OSError as exc:
        raise CommunityError(f"cannot quarantine {src} in {root}: {exc}") from exc
    return target


@dataclass
class DropOutcome:
    bundle: str
    sha256: str
    status: str  # ingested | already-ingested | rejected
    events: int = 0
    problems: int = 0
    quarantined_to: str | None = None


def ingest_drop_folder(drop_dir: str | os.PathLike, lake: Lake, quarantine_dir: str | os.PathLike,
                       processed_state: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> list[DropOutcome]:
    """Ingest each bundle (folder or ``.zip``) of ``drop_dir`` once.

    ``processed_state`` is an append-only JSON-lines file, one line per bundle processed
    (its content digest and outcome); a bundle whose digest it holds is skipped. Names
    starting with ``.`` or ending in ``.partial``/``.tmp`` are uploads in progress and are
    left for a later pass. A lake write error (:class:`~mqepi.errors.LakeError`) propagates
    without recording the bundle, so the next pass retries it.
    """
    drop, state = Path(drop_dir), Path(processed_state)
    if not drop.is_dir():
        raise CommunityError(f"drop folder {drop} does not exist")
    done: set[str] = set()
    if state.exists():
        for k, line in enumerate(state.read_text().splitlines()):
            try:
                done.add(json.loads(line)["sha256"])
            except (ValueError, KeyError, TypeError):
                raise CommunityError(f"{state}: line {k + 1} is not a processed-bundle record") from None
    outcomes = []
    for entry in sorted(drop.iterdir()):
        name = entry.name
        if name.startswith(".") or name.endswith((".partial", ".tmp")):
            continue
        digest = bundle_digest(entry)
        if digest in done:
            continue
        try:
            result = ingest(entry, lake, limits=limits, quarantine_dir=quarantine_dir)
            outcome = DropOutcome(name, digest, result.status, result.events)
        except BundleRejected as exc:
            outcome = DropOutcome(name, digest, "rejected", problems=len(exc.report.problems),
                                  quarantined_to=str(exc.quarantined_to) if exc.quarantined_to else None)
        _append_line(state, {**asdict(outcome), "at": datetime.now(UTC).isoformat()})
        done.add(digest)
        outcomes.append(outcome)
    return outcomes


def _append_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ================================================================== submit


def build_bundle(lake: Lake, run_ids: list[str], out: str | os.PathLike, *, submitter: str, contact: str,
                 licence: str = "CC-BY-4.0", submitter_name: str | None = None, hardware: dict | None = None,
                 meter_calibration: str = "not stated", node_max_w: float = 50.0,
                 llama_cpp_commit: str | None = None, base_sha256: str | None = None,
                 row_group_rows: int = 262_144) -> Path:
    """Write a bundle of ``run_ids`` from ``lake`` to ``out`` (a folder, or a ``.zip`` file).

    Includes every run-bound event of those runs and the quant_config, quantization and
    tensor_inventory events of their configurations, all re-stamped ``origin =
    community/<submitter>``. ``hardware`` is ``{"nodes": [{name, description, power_min_w,
    power_max_w}]}``; without it every node named in the data gets ``0..node_max_w`` W.
    The bundle is validated before this returns; ``out`` must not exist.
    """
    why = submitter_problems(submitter)
    if why:
        raise CommunityError(f"--submitter {submitter!r} {why[0]}")
    if licence not in LICENCES:
        raise CommunityError(f"--licence {licence!r} is not one of {', '.join(LICENCES)}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise CommunityError(f"{out} exists; a bundle is never written over anything")
    runs = [r.strip() for r in run_ids if r.strip()]
    if not runs:
        raise CommunityError("no runs given")
    origin = origin_for(submitter)
    parts: dict[str, list[pl.DataFrame]] = {t: [] for t in EVENT_TYPES}
    configs: set[tuple[str, str]] = set()
    for run_id in dict.fromkeys(runs):
        run = lake.read("run", run_id=run_id)
        if run.height == 0:
            raise CommunityError(f"no run {run_id!r} in the lake {lake.uri}")
        for t in RUN_TYPES:
            df = run if t == "run" else lake.read(t, run_id=run_id)
            foreign = df.filter(pl.col("origin") != "lab")
            if foreign.height:
                raise CommunityError(f"run {run_id!r}: {foreign.height} {t} events have origin {foreign['origin'][0]!r}; "
                                     "submit only your own (lab) runs")
            parts[t].append(df)
        configs |= set(run.select("model", "config_id").iter_rows())
    for model, config_id in sorted(configs):
        for t in CONFIG_TYPES:
            parts[t].append(lake.read(t, model=model, config_id=config_id).filter(pl.col("origin") == "lab"))
    frames = {}
    for t, dfs in parts.items():
        df = pl.concat(dfs) if dfs else pl.DataFrame(schema=EVENT_TYPES[t].polars_schema)
        if df.height:
            frames[t] = df
    for t, (column, by) in MONOTONIC.items():
        if t in frames:
            frames[t] = frames[t].sort([*by, column], maintain_order=True)
    frames = {t: restamp(df, origin) for t, df in frames.items()}

    models = sorted(set().union(*(set(df["model"].to_list()) for df in frames.values())))
    if len(models) != 1:
        raise CommunityError(f"the runs use {len(models)} models ({', '.join(models)}); a bundle holds one base model")
    quant = frames.get("quantization")
    if base_sha256 is None:
        found = sorted(set(quant["base_sha256"].to_list())) if quant is not None else []
        if len(found) != 1:
            raise CommunityError(f"cannot tell the base model's sha256 from the lake ({len(found)} values); pass --base-sha256")
        base_sha256 = found[0]
    if llama_cpp_commit is None:
        found = sorted(set(quant["llama_cpp_commit"].to_list())) if quant is not None else []
        if len(found) != 1:
            raise CommunityError(f"cannot tell the llama.cpp commit from the lake ({len(found)} values); pass --llama-cpp-commit")
        llama_cpp_commit = found[0]
    if hardware is None:
        names: set[str] = set()
        for t in ("power_sample", "thermal_sample", "phase"):
            if t in frames:
                names |= {n for n in frames[t]["node"].to_list() if n is not None}
        if not names:
            names = set(frames["run"]["host"].to_list())
        hardware = {"nodes": [{"name": n, "description": "not stated", "power_min_w": 0.0, "power_max_w": float(node_max_w)}
                              for n in sorted(names)]}
    sources = sorted(set(frames["power_sample"]["power_source"].to_list())) if "power_sample" in frames else []
    if len(sources) > 1:
        raise CommunityError(f"the runs mix power sources {sources}; a bundle states one meter")
    if not sources:
        sources = sorted(set(frames["run"]["power_source"].to_list()) - {"none"})[:1] or ["none"]
    question_sets = []
    if "benchmark_answer" in frames:
        for (bench, qs), group in frames["benchmark_answer"].group_by("benchmark", "question_set_sha256", maintain_order=True):
            question_sets.append({"benchmark": bench, "sha256": qs, "question_ids": sorted(set(group["question_id"].to_list()))})

    files: dict[str, bytes] = {}
    entries = []
    for t, df in frames.items():
        buf = io.BytesIO()
        df.select(list(EVENT_TYPES[t].polars_schema)).write_parquet(buf, compression="zstd", row_group_size=row_group_rows)
        data = buf.getvalue()
        files[f"{t}.parquet"] = data
        entries.append({"path": f"{t}.parquet", "event_type": t, "sha256": hashlib.sha256(data).hexdigest(),
                        "rows": df.height, "bytes": len(data)})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "submitter": {"id": submitter, **({"name": submitter_name} if submitter_name else {}), "contact": contact},
        "licence": licence,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mqepi_version": __version__, "llama_cpp_commit": llama_cpp_commit,
        "base_model": {"id": models[0], "sha256": base_sha256},
        "hardware": hardware,
        "meter": {"type": sources[0], "calibration": meter_calibration},
        "question_sets": question_sets,
        "files": entries,
    }
    report = BundleReport(out.name)
    if parse_manifest(json.dumps(manifest).encode(), report) is None:
        raise CommunityError(f"the manifest for {out} is invalid: {report.problems[0]}")
    files[MANIFEST] = (json.dumps(manifest, indent=1) + "\n").encode()
    _write_bundle(out, files)
    try:
        validate_bundle(out)
    except BundleRejected as exc:
        raise CommunityError(f"the bundle written to {out} does not pass ingest checks: {exc.report.problems[0]}") from exc
    return out


def _write_bundle(out: Path, files: dict[str, bytes]) -> None:
    """Write under a temporary name beside ``out``, then rename (no partial bundle is visible)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        if out.suffix == ".zip":
            with zipfile.ZipFile(temp, "w") as zf:
                for name, data in files.items():
                    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    info.compress_type = zipfile.ZIP_DEFLATED if name == MANIFEST else zipfile.ZIP_STORED
                    zf.writestr(info, data)
        else:
            temp.mkdir()
            for name, data in files.items():
                (temp / name).write_bytes(data)
        if out.exists():
            raise CommunityError(f"{out} appeared while the bundle was written")
        os.rename(temp, out)
    except OSError as exc:
        raise CommunityError(f"cannot write bundle {out}: {exc}") from exc
    finally:
        if temp.is_dir():
            shutil.rmtree(temp)
        elif temp.exists():
            temp.unlink()


def _short(value, n: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, float) and math.isnan(value):
        text = "nan"
    return text if len(text) <= n else text[: n - 3] + "..."
