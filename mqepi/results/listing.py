"""The lake as the derived snapshots see it: its active files, grouped by run and
configuration, the table versions, and the fingerprints that tell which cached results are
still current.

Everything comes from the tables' Delta logs (:meth:`mqepi.lake.store.Lake.index`), read
incrementally: the lake is never listed. A file's configuration is its partition; its runs
are what the commit that added it recorded.

**Lake state**: sha256 over the sorted relative paths (``<type>/model=M/config_id=C/<file>``)
of every active file of the lake, each followed by a newline. File names are content hashes,
so the paths name the content; ``versions`` (event type -> table version) say which versions
of the tables that state is (what ``mqepi sql --as-of`` reopens).

**Run fingerprint**: sha256 over the relative paths of the files holding a run's events
(whatever their model and configuration: the energy views join on ``run_id`` alone) and of
the configuration-bound files of its models and configurations, which ``run_metrics`` reads.
A compaction rewrites files, so it changes the fingerprints of the runs it touched (they are
recomputed once). **Family fingerprint** (model, origin, power_source, hardware_id): the settings, its
runs' fingerprints and its model's configuration-bound files. The lake is only read.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs

from mqepi.analysis.contract import FAMILY_KEY
from mqepi.errors import LakeError
from mqepi.lake.delta import DataFile, TableLog, entry_sha256
from mqepi.lake.store import SEED_VALUE, Lake
from mqepi.results.sql import duckdb_prefix
from mqepi.schemas import EVENT_TYPES, RUN_BOUND


@dataclass
class LakeListing:
    """Every Parquet file of a lake (relative paths) and its grouping by run and config."""

    uri: str
    relative: list[str]  # sorted
    state: str
    seeds: dict[str, list[str]]  # event type -> zero-row seed files
    run_files: dict[str, dict[str, list[str]]]  # run_id -> event type -> files
    run_configs: dict[str, set[tuple[str, str]]]  # run_id -> {(model, config_id)}
    config_files: dict[tuple[str, str], dict[str, list[str]]]  # (model, config_id) -> type -> files
    versions: dict[str, int]  # event type -> table version
    entries: list[tuple[str, DataFile]] = field(default_factory=list)  # (event type, file as its commit recorded it)

    def absolute(self, relative: Iterable[str]) -> list[str]:
        return [f"{self.uri}/{r}" for r in relative]

    def config_level(self, keys: Iterable[tuple[str, str]], event_type: str) -> list[str]:
        """Absolute configuration-bound files of ``event_type`` under the (model, config_id) ``keys``."""
        return self.absolute(sorted(f for k in set(keys) for f in self.config_files.get(k, {}).get(event_type, ())))


def digest(*parts: object) -> str:
    """sha256 (hex) of the parts, one a line."""
    return hashlib.sha256("\n".join(str(p) for p in parts).encode()).hexdigest()


#: A snapshot's copy of the listing it was computed from (:func:`save_listing`).
LISTING_FILE = "files.parquet"
_LISTING_SCHEMA = {"type": pl.Utf8, "path": pl.Utf8, "rows": pl.Int64, "bytes": pl.Int64, "version": pl.Int64,
                   "model": pl.Utf8, "config_id": pl.Utf8, "sha256": pl.Utf8, "runs": pl.List(pl.Utf8),
                   "producer": pl.Utf8}


def list_lake(lake: Lake, since: tuple[Path, dict[str, list]] | None = None) -> LakeListing:
    """The lake's active files from its tables' logs (never writing it) and its state hash.

    ``since`` (a snapshot's saved listing, :data:`LISTING_FILE`, and the table heads it was
    taken at, ``{type: [version, sha256 of that log entry]}``) resumes each table's log there:
    only the versions appended since are read. A table whose entry at that version is no
    longer the one recorded (a lake re-created in place) is read from its start.
    """
    if not lake.exists():
        raise LakeError(f"no lake at {lake.uri}: run `mqepi lake init` or pass --lake / set MQEPI_LAKE")
    if since is None or lake.pinned is not None or not since[0].is_file():
        index = lake.index()
        entries = [(_type_of(lake, path), entry) for path, entry in index.entries.items()]
        return _listing(lake, entries, lake.versions())
    saved = _read_listing(since[0])
    entries, versions = [], {}
    for event_type in EVENT_TYPES:
        log = TableLog(lake.fs, lake.table_dir(event_type))
        version, sha = (since[1].get(event_type) or [-1, ""])[:2]
        if version >= 0 and entry_sha256(lake.fs, lake.table_dir(event_type), version) == sha:
            log.resume(version, saved.get(event_type, {}))
        log.refresh()
        versions[event_type] = log.version
        entries.extend((event_type, entry) for entry in log.active.values())
    return _listing(lake, entries, versions)


def _type_of(lake: Lake, path: str) -> str:
    return path[len(lake.root) + 1:].split("/", 1)[0]


def _read_listing(path: Path) -> dict[str, dict[str, DataFile]]:
    out: dict[str, dict[str, DataFile]] = defaultdict(dict)
    for row in pl.read_parquet(path).iter_rows(named=True):
        out[row["type"]][row["path"]] = DataFile(row["path"], row["rows"], row["bytes"], row["version"],
                                                 (row["model"], row["config_id"]), row["sha256"],
                                                 tuple(row["runs"] or ()), row["producer"])
    return out


def save_listing(listing: LakeListing, path: Path) -> None:
    """Write the files of ``listing`` (with what their commits recorded) to ``path``."""
    rows = [{"type": t, "path": e.path, "rows": e.rows, "bytes": e.bytes, "version": e.version, "model": e.partition[0],
             "config_id": e.partition[1], "sha256": e.sha256, "runs": list(e.runs), "producer": e.producer}
            for t, e in listing.entries]
    pl.DataFrame(rows, schema=_LISTING_SCHEMA).write_parquet(path)


def _listing(lake: Lake, entries: list[tuple[str, DataFile]], versions: dict[str, int]) -> LakeListing:
    seeds: dict[str, list[str]] = defaultdict(list)
    run_files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    run_configs: dict[str, set[tuple[str, str]]] = defaultdict(set)
    config_files: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    relative = []
    for event_type, entry in entries:
        rel = f"{event_type}/{entry.path}"
        relative.append(rel)
        if entry.partition[0] == SEED_VALUE:
            seeds[event_type].append(rel)
        elif event_type in RUN_BOUND:
            for run in entry.runs:
                run_files[run][event_type].append(rel)
                run_configs[run].add(entry.partition)
        else:
            config_files[entry.partition][event_type].append(rel)
    relative.sort()
    for groups in (seeds, *run_files.values(), *config_files.values()):
        for files in groups.values():
            files.sort()
    state = hashlib.sha256("".join(f"{rel}\n" for rel in relative).encode()).hexdigest()
    return LakeListing(duckdb_prefix(lake.uri, lake.root), relative, state, dict(seeds), run_files, run_configs,
                       config_files, versions, entries)


def run_fingerprints(listing: LakeListing) -> dict[str, str]:
    """run_id -> sha256 of its files and of its configurations' configuration-bound files."""
    out = {}
    for run_id, by_type in listing.run_files.items():
        own = sorted(rel for files in by_type.values() for rel in files)
        keys = listing.run_configs[run_id]
        config = sorted(rel for k in keys for files in listing.config_files.get(k, {}).values() for rel in files)
        out[run_id] = digest(*own, "--", *config)
    return out


def family_fingerprints(members: pl.DataFrame, fingerprints: dict[str, str], listing: LakeListing,
                        settings_key: str) -> pl.DataFrame:
    """A family (FAMILY_KEY: model, origin, power_source, hardware_id) -> sha256 of the settings,
    the family's runs (``members``: FAMILY_KEY and run_id of run_metrics) and its model's
    configuration-bound files."""
    by_model: dict[str, list[str]] = defaultdict(list)
    for (model, _), files in listing.config_files.items():
        by_model[model].extend(rel for rels in files.values() for rel in rels)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for *key, run_id in members.select(*FAMILY_KEY, "run_id").iter_rows():
        groups[tuple(key)].append(f"{run_id} {fingerprints[run_id]}")
    rows = [(*key, digest(settings_key, *sorted(runs), "--", *sorted(by_model.get(key[0], ()))))
            for key, runs in groups.items()]
    schema = {**{c: pl.Utf8 for c in FAMILY_KEY}, "fingerprint": pl.Utf8}
    return pl.DataFrame(rows, schema=schema, orient="row").sort(FAMILY_KEY, nulls_last=True)


def batches(lake: Lake, listing: LakeListing, runs: list[str], max_runs: int, max_bytes: int) -> list[list[str]]:
    """``runs`` cut into batches of at most ``max_runs`` runs and ``max_bytes`` file bytes
    (a run bigger than ``max_bytes`` makes a batch of its own)."""
    if not runs:
        return []
    files = [listing.absolute(r for rels in listing.run_files[run].values() for r in rels) for run in runs]
    if isinstance(lake.fs, pafs.LocalFileSystem):
        sizes = [sum(os.stat(f).st_size for f in fs) for fs in files]
    else:
        prefix = len(listing.uri) + 1
        sizes = [sum(i.size for i in lake.fs.get_file_info([f"{lake.root}/{f[prefix:]}" for f in fs])) for fs in files]
    out: list[list[str]] = [[]]
    total = 0
    for run, size in zip(runs, sizes):
        if out[-1] and (len(out[-1]) >= max(1, max_runs) or total + size > max_bytes):
            out.append([])
            total = 0
        out[-1].append(run)
        total += size
    return out
