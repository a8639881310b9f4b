"""``lake compact`` and ``lake vacuum``: fewer, larger files without losing history.

Compaction rewrites the small files of a partition (model, config_id) into files of about a
target size and commits them as one new table version that adds the new files and removes
the old ones with ``dataChange = false`` (the rows are the same: the append-only tables allow
it). Every row is kept as it was (duplicates included; readers de-duplicate by event id), the
commit records the producer, each new file's sha256, rows and runs, and which files it
replaces, and the old files stay on storage, readable by time travel (``Lake.at``, ``mqepi
sql --as-of``), until a user runs ``lake vacuum`` with a retention they state.

Files are merged only with files of the same columns: a file written under an older schema
version keeps its own columns, since its event ids hash exactly those (``lake verify``
re-checks them). mqepi writes the files itself rather than through delta-rs'
``optimize.compact`` because the commit must carry each new file's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from mqepi.errors import LakeError
from mqepi.lake import delta, events
from mqepi.lake.index import SEED_VALUE
from mqepi.lake.locks import holder_record
from mqepi.lake.store import _File, _partition_rel
from mqepi.lake.verify import COMPACT_PREFIX
from mqepi.schemas import EVENT_TYPES, spec_for

#: Files smaller than this are small; a partition with at least ``MIN_FILES`` of them is
#: rewritten into files of about ``TARGET_BYTES``.
SMALL_BYTES = 16 * 2**20
TARGET_BYTES = 128 * 2**20
MIN_FILES = 2


@dataclass
class CompactResult:
    """What :func:`compact` did to one table."""

    event_type: str
    version: int | None  # the table version after it (None: nothing to compact)
    files_before: int
    files_after: int
    partitions: int


def compact(lake, event_types: list[str] | None = None, *, small_bytes: int = SMALL_BYTES, min_files: int = MIN_FILES,
            target_bytes: int = TARGET_BYTES, writer: str = "lake compact") -> list[CompactResult]:
    """Compact each table of ``event_types`` (default: all): every partition with at least
    ``min_files`` files under ``small_bytes`` (of one column set) is rewritten into files of
    about ``target_bytes``."""
    lake._writable()
    out = []
    for event_type in event_types or list(EVENT_TYPES):
        spec_for(event_type)
        with lake.transaction(writer):  # the commit lock of a local lake; nothing else is written in it
            log = lake.log(event_type)
            before = len(log.active)
            groups = _groups(lake, event_type, log, small_bytes, max(2, min_files))
            if not groups:
                out.append(CompactResult(event_type, None, before, before, 0))
                continue
            files, removes = [], []
            for (partition, _), entries in sorted(groups.items()):
                for chunk in _chunks(entries, target_bytes):
                    table = _read(lake, event_type, chunk)
                    name = f"{COMPACT_PREFIX}{events.batch_id(table.column('event_id').to_pylist())}.parquet"
                    runs = tuple(sorted({r for e in chunk for r in e.runs}))
                    size, sha = lake._write_file(f"{lake.table_dir(event_type)}/{_partition_rel(partition)}", name, table)
                    files.append(_File(f"{_partition_rel(partition)}/{name}", table.num_rows, size, sha, partition, runs))
                    removes += chunk
            actions = [delta.add_action(f.rel, f.bytes, f.partition, f.rows, data_change=False) for f in files]
            actions += [delta.remove_action(e) for e in removes]
            meta = {"producer": holder_record(writer=writer), "operation": "compact",
                    "files": {f.rel: {"sha256": f.sha256, "rows": f.rows, "runs": list(f.runs)} for f in files},
                    "replaces": sorted(e.path for e in removes)}
            delta.commit(lake._table(event_type), actions, meta, None)
            log = lake.log(event_type)
            out.append(CompactResult(event_type, log.version, before, len(log.active), len({p for p, _ in groups})))
    return out


def _groups(lake, event_type: str, log: delta.TableLog, small_bytes: int, min_files: int) -> dict:
    """(partition, column names) -> its small files, where there are at least ``min_files``."""
    by_partition: dict[tuple[str, str], list[delta.DataFile]] = {}
    for entry in log.active.values():
        if entry.partition[0] != SEED_VALUE and entry.bytes < small_bytes:
            by_partition.setdefault(entry.partition, []).append(entry)
    groups: dict[tuple, list[delta.DataFile]] = {}
    for partition, entries in by_partition.items():
        if len(entries) < min_files:
            continue
        for entry in sorted(entries, key=lambda e: e.path):
            path = f"{lake.table_dir(event_type)}/{entry.path}"
            try:
                columns = tuple(pq.read_schema(path, filesystem=lake.fs).names)
            except (OSError, pa.ArrowException) as exc:
                raise LakeError(f"cannot read {path} to compact it: {exc}") from exc
            groups.setdefault((partition, columns), []).append(entry)
    return {k: v for k, v in groups.items() if len(v) >= min_files}


def _read(lake, event_type: str, entries: list[delta.DataFile]) -> pa.Table:
    """The rows of ``entries`` (one partition, one column set) as one table, in file order;
    sample streams in host-time order (a stable sort), as their schema's stream checks
    require of every file."""
    parts = []
    for entry in entries:
        path = f"{lake.table_dir(event_type)}/{entry.path}"
        try:
            parts.append(pq.read_table(path, filesystem=lake.fs))
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"cannot read {path} to compact it: {exc}") from exc
    table = pa.concat_tables(parts)
    return table.sort_by("host_time_ns") if "host_time_ns" in table.column_names else table


def _chunks(entries: list[delta.DataFile], target_bytes: int) -> list[list[delta.DataFile]]:
    """Consecutive groups of about ``target_bytes`` (at least two files each)."""
    out: list[list[delta.DataFile]] = [[]]
    total = 0
    for entry in entries:
        if out[-1] and total + entry.bytes > target_bytes:
            out.append([])
            total = 0
        out[-1].append(entry)
        total += entry.bytes
    return [c for c in out if len(c) >= 2]


def vacuum(lake, retention_hours: int, *, dry_run: bool = False) -> dict[str, list[str]]:
    """Delete the files no version newer than ``retention_hours`` ago needs (files compaction
    removed before then): the one operation that deletes data files, run only when a user asks
    with a retention they state. Time travel to versions older than the retention is lost.
    Returns, per table, the files deleted (or, ``dry_run``, that would be)."""
    lake._writable()
    if retention_hours < 0:
        raise LakeError(f"vacuum retention must be >= 0 hours, got {retention_hours}")
    out = {}
    for event_type in EVENT_TYPES:
        if not lake.log(event_type).exists():
            continue
        uri = lake.table_uri(event_type)
        try:
            dt = DeltaTable(uri, storage_options=delta.storage_options(uri))
            out[event_type] = dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)
        except Exception as exc:  # noqa: BLE001 - delta-rs raises several types; one message
            raise LakeError(f"vacuum of table {uri} failed: {delta._one_line(exc)}") from exc
    return out
