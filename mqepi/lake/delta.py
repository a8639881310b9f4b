"""One Delta table per event type: its transaction log read incrementally, commits of files
mqepi wrote itself, and the storage options of an object store.

mqepi writes each data file itself (a content-addressed name, its sha256 taken from the bytes
written) and commits the files with delta-rs (``DeltaTable.create_write_transaction``), so
that each commit carries, in its ``commitInfo``, the producer and the sha256, row count and
run ids of every file it adds (``commitInfo.mqepi``): ``lake verify`` re-hashes every active
file against it, and the run index (:mod:`mqepi.lake.index`) and incremental recomputation
read it from the log instead of listing folders. Each commit also carries an application
transaction (``txn``, Delta's own idempotence marker) keyed by the content hash of what it
adds, so a retried append whose commit already landed is a no-op.

Tables are created append-only (``delta.appendOnly``: no commit may remove data; compaction
removes files with ``dataChange = false``, which the protocol allows) and keep their whole
log (``delta.enableExpiredLogCleanup = false``), so every version stays reachable by time
travel and the log reader here can replay from version 0.

The log is the open format of the Delta protocol (one JSON object per line per action in
``_delta_log/<version:020>.json``); :class:`TableLog` reads it through a ``pyarrow.fs``
filesystem, a bounded read per version, and never decodes anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Field, Transaction
from deltalake.schema import Schema
from deltalake.transaction import AddAction, RemoveAction

from mqepi.errors import LakeError

LOG_DIR = "_delta_log"
#: Partition columns of every table: a query by model or configuration prunes to its folder;
#: runs are a column (one folder per configuration, never one per run).
PARTITION_BY = ("model", "config_id")
#: Table properties set at creation.
TABLE_CONFIG = {"delta.appendOnly": "true", "delta.enableExpiredLogCleanup": "false"}
#: Key of mqepi's record in a commit's ``commitInfo``.
META_KEY = "mqepi"
#: Largest log entry read (a commit names at most a few thousand files).
MAX_LOG_BYTES = 256 * 2**20


@dataclass(frozen=True)
class DataFile:
    """One file of a table: path relative to the table folder, what the commit said of it."""

    path: str
    rows: int
    bytes: int
    version: int  # the table version that added it
    partition: tuple[str, str]  # (model, config_id)
    sha256: str | None = None  # None: added by a writer that did not record it
    runs: tuple[str, ...] = ()  # run ids in the file (run-bound tables)
    producer: str | None = None


@dataclass
class Commit:
    """One version of a table as its log entry says."""

    version: int
    operation: str
    timestamp_ms: int
    meta: dict
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    app_ids: list[str] = field(default_factory=list)


def table_uri(lake_uri: str, event_type: str) -> str:
    """The URI of an event type's table under the lake root."""
    return f"{lake_uri.rstrip('/')}/{event_type}"


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs storage options for ``uri``: None for a local folder; for ``s3://``, the
    standard ``AWS_*`` variables of the environment (endpoint, keys, region) and
    ``conditional_put = etag`` (safe concurrent commits on S3-compatible stores; set
    ``MQEPI_S3_CONDITIONAL_PUT`` to override, e.g. to ``none`` with a locking provider)."""
    if not uri.startswith("s3://"):
        return None
    options = {k: v for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                              "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP", "AWS_S3_LOCKING_PROVIDER")
               if (v := os.environ.get(k))}
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options.setdefault("AWS_ALLOW_HTTP", "true")
    conditional = os.environ.get("MQEPI_S3_CONDITIONAL_PUT", "etag")
    if conditional != "none":
        options["conditional_put"] = conditional
    return options


#: S3 error codes of a conditional put that lost to another writer's put of the same name.
_EXISTS_CODES = {"PreconditionFailed", "412"}
#: ... and of one that raced a put still in progress (retried).
_CONFLICT_CODES = {"ConditionalRequestConflict", "409"}
_S3_CLIENTS: dict[tuple, object] = {}


def put_if_absent(path: str, data: bytes, attempts: int = 5) -> bool:
    """Put ``data`` as the object ``bucket/key`` of the environment's S3 endpoint unless an
    object of that name exists (``If-None-Match: *``, S3's conditional write; every store
    delta-rs commits to safely supports it): False if it exists, the object left as it was.
    ``MQEPI_S3_CONDITIONAL_PUT=none`` (a store without conditional writes) puts unconditionally."""
    import boto3  # boto3 is heavy (0.2 s): only a write to an object-store lake needs it
    from botocore.exceptions import BotoCoreError, ClientError  # botocore is heavy: comes with boto3

    bucket, _, key = path.partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    ident = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.getpid())
    if (client := _S3_CLIENTS.get(ident)) is None:
        client = _S3_CLIENTS[ident] = boto3.session.Session().client("s3", endpoint_url=endpoint)
    condition = {} if os.environ.get("MQEPI_S3_CONDITIONAL_PUT") == "none" else {"IfNoneMatch": "*"}
    for attempt in range(attempts):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _EXISTS_CODES:
                return False
            if code not in _CONFLICT_CODES or attempt == attempts - 1:
                raise OSError(f"put s3://{path}: {exc}") from exc
            time.sleep(0.05 * 2**attempt)
        except BotoCoreError as exc:
            raise OSError(f"put s3://{path}: {exc}") from exc
    return False


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) of a lake URI; ``s3://`` honours ``AWS_ENDPOINT_URL``."""
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            fs = pafs.S3FileSystem(endpoint_override=host.rstrip("/"), scheme=scheme or "https",
                                   access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                   secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                   session_token=os.environ.get("AWS_SESSION_TOKEN"),
                                   region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                                   allow_bucket_creation=False, allow_bucket_deletion=False)
            return fs, uri[len("s3://"):].rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def head(fs: pafs.FileSystem, table_dir: str) -> tuple[int, str]:
    """A table's latest version and the sha256 of that version's log entry, from one listing
    of its log folder and one read (no replay of the log): (-1, "") without a table. Equal
    heads mean the same table state (versions are immutable; the entry's commit time and
    content tell a table re-created with as many versions apart)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{table_dir}/{LOG_DIR}", allow_not_found=True))
    except OSError as exc:
        raise LakeError(f"cannot list the log of table {table_dir}: {exc}") from exc
    names = [i.base_name for i in infos if len(i.base_name) == 25 and i.base_name.endswith(".json")
             and i.base_name[:20].isdigit()]
    if not names:
        return -1, ""
    version = int(max(names)[:20])
    return version, entry_sha256(fs, table_dir, version) or ""


def entry_sha256(fs: pafs.FileSystem, table_dir: str, version: int) -> str | None:
    """sha256 of a table's log entry at ``version`` (its first MAX_LOG_BYTES + 1 bytes); None
    when it cannot be read."""
    try:
        with fs.open_input_stream(version_path(table_dir, version)) as fh:
            return hashlib.sha256(fh.read(MAX_LOG_BYTES + 1)).hexdigest()
    except OSError:
        return None


def version_path(table_dir: str, version: int) -> str:
    return f"{table_dir}/{LOG_DIR}/{version:020d}.json"


class TableLog:
    """The log of one table, read incrementally up to ``until`` (None: the latest version)."""

    def __init__(self, fs: pafs.FileSystem, table_dir: str, until: int | None = None):
        self.fs, self.dir, self.until = fs, table_dir, until
        self.version = -1
        self.active: dict[str, DataFile] = {}
        self.removed: dict[str, DataFile] = {}  # files a later version removed (compaction): history
        self.commits: list[Commit] = []
        self.app_ids: set[str] = set()
        self.problems: list[tuple[str, str]] = []

    def exists(self) -> bool:
        return self.fs.get_file_info(version_path(self.dir, 0)).type == pafs.FileType.File

    def resume(self, version: int, active: dict[str, DataFile]) -> None:
        """Start from a state read before (the active files as of ``version``, e.g. kept by a
        derived snapshot): the next :meth:`refresh` reads only the versions after it."""
        self.version, self.active = version, dict(active)
        self.removed, self.commits, self.app_ids, self.problems = {}, [], set(), []

    def refresh(self) -> tuple[list[DataFile], list[DataFile]]:
        """Read the versions committed since the last refresh; return the net change they
        made: (files active now that were not before, files active before that are not now)."""
        before = dict(self.active)
        start = self.version
        while self.until is None or self.version < self.until:
            path = version_path(self.dir, self.version + 1)
            try:
                with self.fs.open_input_stream(path) as fh:
                    data = fh.read(MAX_LOG_BYTES + 1)
            except FileNotFoundError:
                break
            except OSError as exc:
                if "not found" in str(exc).lower() or "NoSuchKey" in str(exc):
                    break
                raise LakeError(f"cannot read the log of table {self.dir}: {exc}") from exc
            if len(data) > MAX_LOG_BYTES:
                raise LakeError(f"{path}: log entry larger than {MAX_LOG_BYTES} bytes; refusing to read it")
            self.version += 1
            self._apply(self.version, data, path)
        if self.version == start:
            return [], []
        added = [e for p, e in self.active.items() if before.get(p) is not e]
        removed = [e for p, e in before.items() if self.active.get(p) is not e]
        return added, removed

    def _apply(self, version: int, data: bytes, where: str) -> None:
        actions = []
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                actions.append(json.loads(line))
            except ValueError as exc:
                self.problems.append((f"{where} line {number}", f"unreadable log action: {exc}"))
        info = next((a["commitInfo"] for a in actions if isinstance(a, dict) and "commitInfo" in a), {})
        meta = info.get(META_KEY) if isinstance(info.get(META_KEY), dict) else {}
        files_meta = meta.get("files") if isinstance(meta.get("files"), dict) else {}
        producer = meta.get("producer", {}).get("writer") if isinstance(meta.get("producer"), dict) else None
        commit = Commit(version, str(info.get("operation", "")), int(info.get("timestamp", 0) or 0), meta)
        for action in actions:
            if not isinstance(action, dict):
                continue
            if "add" in action:
                add = action["add"]
                path = str(add.get("path", ""))
                fm = files_meta.get(path, {}) if isinstance(files_meta.get(path), dict) else {}
                stats = _stats(add.get("stats"))
                pv = add.get("partitionValues") or {}
                entry = DataFile(path, int(fm.get("rows", stats.get("numRecords", -1))), int(add.get("size", -1)), version,
                                 (str(pv.get("model")), str(pv.get("config_id"))), fm.get("sha256"),
                                 tuple(fm.get("runs") or ()), producer)
                self.active[path] = entry
                self.removed.pop(path, None)
                commit.added.append(path)
            elif "remove" in action:
                path = str(action["remove"].get("path", ""))
                gone = self.active.pop(path, None)
                if gone is not None:
                    self.removed[path] = gone
                commit.removed.append(path)
            elif "txn" in action:
                commit.app_ids.append(str(action["txn"].get("appId")))
                self.app_ids.add(commit.app_ids[-1])
        self.commits.append(commit)


def _stats(text) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def add_action(path: str, size: int, partition: tuple[str, str], rows: int, data_change: bool = True):
    """A Delta ``add`` of a file mqepi wrote (stats: the row count)."""
    return AddAction(path, size, dict(zip(PARTITION_BY, partition)), int(time.time() * 1000), data_change,
                     json.dumps({"numRecords": rows}))


def remove_action(entry: DataFile):
    """A Delta ``remove`` of a file whose rows another file of the same commit holds
    (``dataChange = false``: compaction)."""
    return RemoveAction(entry.path, False, int(time.time() * 1000), entry.bytes, dict(zip(PARTITION_BY, entry.partition)))


def create(uri: str, schema: pa.Schema, producer: dict) -> None:
    """Create a table at ``uri`` (nothing if one exists there already)."""
    try:
        DeltaTable.create(uri, schema=schema, mode="ignore", partition_by=list(PARTITION_BY), configuration=TABLE_CONFIG,
                          storage_options=storage_options(uri),
                          commit_properties=CommitProperties(custom_metadata={META_KEY: {"producer": producer}}))
    except Exception as exc:  # noqa: BLE001 - delta-rs raises several exception types; one message
        raise LakeError(f"cannot create table {uri}: {_one_line(exc)}") from exc


def add_columns(uri: str, fields: list[pa.Field]) -> None:
    """Add nullable columns to a table's schema (a newer schema version of its event type)."""
    try:
        dt = DeltaTable(uri, storage_options=storage_options(uri))
        converted = Schema.from_arrow(pa.schema(fields)).fields
        dt.alter.add_columns([Field(f.name, f.type, nullable=True) for f in converted])
    except Exception as exc:  # noqa: BLE001
        raise LakeError(f"cannot add columns {[f.name for f in fields]} to table {uri}: {_one_line(exc)}") from exc


def schema_names(uri: str) -> list[str]:
    """The column names of a table's current schema."""
    try:
        return [f.name for f in DeltaTable(uri, storage_options=storage_options(uri)).schema().fields]
    except Exception as exc:  # noqa: BLE001
        raise LakeError(f"cannot read the schema of table {uri}: {_one_line(exc)}") from exc


def open_table(uri: str):
    """The delta-rs handle of the table at ``uri`` (kept by the lake between commits)."""
    try:
        return DeltaTable(uri, storage_options=storage_options(uri))
    except Exception as exc:  # noqa: BLE001
        raise LakeError(f"cannot open table {uri}: {_one_line(exc)}") from exc


def commit(table, actions: list, meta: dict, app_id: str | None) -> None:
    """Commit ``actions`` to ``table`` (a handle of :func:`open_table`, brought up to date
    first; delta-rs retries after versions that land meanwhile, which only append) as one
    version with ``meta`` under ``commitInfo.mqepi`` and, with ``app_id``, Delta's
    application transaction marker (its idempotence key: the caller skips ids the log holds)."""
    try:
        props = CommitProperties(custom_metadata={META_KEY: meta}, max_commit_retries=10_000,
                                 app_transactions=[Transaction(app_id, 1)] if app_id else None)
        table.update_incremental()
        table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=list(PARTITION_BY),
                                       commit_properties=props)
    except Exception as exc:  # noqa: BLE001
        raise LakeError(f"commit to table {table.table_uri} failed: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
