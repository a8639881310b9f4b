"""A read-only reader of a lake in the layout before Delta Lake (mqepi up to b652016), for
``mqepi lake migrate`` (:mod:`mqepi.lake.migrate`).

That layout (hive partitions; the partition columns live in the path, not in the files)::

    <root>/<event_type>/model=<m>/config_id=<c>/ev-<sha256>.parquet             configuration-bound types
    <root>/<event_type>/model=<m>/config_id=<c>/run_id=<r>/ev-<sha256>.parquet  run-bound types
    <root>/<event_type>/model=_seed/config_id=_seed[/run_id=_seed]/schema-v<N>.parquet   zero-row seeds
    <root>/_log/commits.jsonl                                                   the commit log

A file is data once an intact line of the commit log names it (:mod:`mqepi.lake.log`: a line
that fails its checksum was torn by a crash, and the files it named are not data). A lake
written before the log existed has no ``_log`` folder: every ``ev-*.parquet`` under the event
folders is data. Seeds hold no events and are skipped.

Reading returns every row of every data file (no de-duplication: the old readers dropped a
repeated event id at read time, a migration accounts for each), with the partition columns
from the path, in the current schema's column order and dtypes, and the columns an older
schema version lacks as null (:func:`mqepi.lake.verify.with_added_columns`) unless asked not to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mqepi.errors import LakeError
from mqepi.lake import delta
from mqepi.lake.index import SEED_VALUE
from mqepi.lake.log import CommitLog, LogProblem
from mqepi.lake.verify import DATA_PREFIX, with_added_columns
from mqepi.schemas import CONFIG_KEYS, EVENT_TYPES, RUN_BOUND, RUN_KEYS, EventSpec, spec_for


def partition_keys(event_type: str) -> tuple[str, ...]:
    """The folder keys of ``event_type`` in the old layout: (model, config_id[, run_id])."""
    return RUN_KEYS if event_type in RUN_BOUND else CONFIG_KEYS


def parse(rel: str) -> tuple[str, tuple[str, ...]] | None:
    """(event type, partition values) of a file's path under the old root, else None (the old
    layout's ``mqepi.lake.index.parse``)."""
    parts = rel.split("/")
    if parts[0] not in EVENT_TYPES:
        return None
    keys = partition_keys(parts[0])
    if len(parts) != len(keys) + 2:
        return None
    values = []
    for key, part in zip(keys, parts[1:-1]):
        if not part.startswith(f"{key}="):
            return None
        values.append(part[len(key) + 1:])
    return parts[0], tuple(values)


@dataclass(frozen=True)
class LegacyFile:
    """One data file of the old lake."""

    event_type: str
    rel: str  # path under the root
    path: str  # full path on the filesystem
    partition: tuple[str, ...]  # (model, config_id[, run_id]) from the path
    rows: int  # as the commit log recorded it (-1: no log)
    bytes: int

    @property
    def keys(self) -> dict[str, str]:
        return dict(zip(partition_keys(self.event_type), self.partition))

    @property
    def config(self) -> tuple[str, str]:
        """(model, config_id): the file's partition in the new layout."""
        return self.partition[0], self.partition[1]


@dataclass
class LegacyState:
    """What the old lake holds: its data files per event type, and what is not data."""

    logged: bool  # the lake has a commit log
    files: dict[str, list[LegacyFile]] = field(default_factory=dict)  # event type -> data files, by path
    uncommitted: list[str] = field(default_factory=list)  # ev-*.parquet files no intact commit names
    missing: list[str] = field(default_factory=list)  # committed files that are gone
    log_problems: list[LogProblem] = field(default_factory=list)  # torn or damaged commit lines


class LegacyLake:
    """A lake of the old layout at a local folder or a pyarrow filesystem URI (read only)."""

    def __init__(self, root: str | os.PathLike, filesystem: pafs.FileSystem | None = None):
        root = str(root)
        if filesystem is not None:
            self.fs, self.root = filesystem, root.rstrip("/")
        elif "://" in root:
            self.fs, self.root = delta.filesystem(root)  # as the lake's: honours AWS_ENDPOINT_URL
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.uri = root.rstrip("/") if "://" in root else self.root
        self._state: LegacyState | None = None

    def __repr__(self) -> str:
        return f"LegacyLake({self.uri!r})"

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def delta_tables(self) -> list[str]:
        """Event types that have a Delta table here (a lake of the new layout, not the old one)."""
        infos = self.fs.get_file_info([f"{self.root}/{t}/{delta.LOG_DIR}" for t in EVENT_TYPES])
        return [t for t, info in zip(EVENT_TYPES, infos) if info.type == pafs.FileType.Directory]

    # ------------------------------------------------------------------ which files are data

    def state(self) -> LegacyState:
        """The data files (read once: the old lake is not written any more)."""
        if self._state is None:
            self._state = self._scan()
        return self._state

    def _scan(self) -> LegacyState:
        if not self.exists():
            raise LakeError(f"no lake at {self.uri}")
        on_disk: dict[str, int] = {}
        for event_type in EVENT_TYPES:
            selector = pafs.FileSelector(f"{self.root}/{event_type}", recursive=True, allow_not_found=True)
            try:
                infos = self.fs.get_file_info(selector)
            except OSError as exc:
                raise LakeError(f"cannot list {self.root}/{event_type}: {exc}") from exc
            for info in infos:
                if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") \
                        and not info.base_name.startswith("."):
                    on_disk[info.path[len(self.root) + 1:]] = info.size
        log = CommitLog(self.fs, self.root).refresh()
        state = LegacyState(logged=log.exists, log_problems=list(log.problems))
        found: dict[str, list[LegacyFile]] = {t: [] for t in EVENT_TYPES}
        if log.exists:
            for rel in log.order:
                parsed = parse(rel)
                if parsed is None or _is_seed(parsed[1]):
                    continue
                if rel not in on_disk:
                    state.missing.append(f"{self.root}/{rel}")
                    continue
                committed = log.files[rel]
                found[parsed[0]].append(LegacyFile(parsed[0], rel, f"{self.root}/{rel}", parsed[1], committed.rows,
                                                   on_disk[rel]))
        for rel, size in sorted(on_disk.items()):
            parsed = parse(rel)
            if parsed is None or _is_seed(parsed[1]) or not rel.rsplit("/", 1)[-1].startswith(DATA_PREFIX):
                continue
            if not log.exists:
                found[parsed[0]].append(LegacyFile(parsed[0], rel, f"{self.root}/{rel}", parsed[1], -1, size))
            elif rel not in log.files:
                state.uncommitted.append(f"{self.root}/{rel}")
        state.files = {t: sorted(files, key=lambda f: f.rel) for t, files in found.items()}
        return state

    def files(self, event_type: str) -> list[LegacyFile]:
        """The data files of ``event_type``, sorted by path (the old readers' order)."""
        spec_for(event_type)
        return self.state().files.get(event_type, [])

    def partitions(self, event_type: str) -> dict[tuple[str, ...], list[LegacyFile]]:
        """The data files of ``event_type`` by old partition (model, config_id[, run_id]), sorted."""
        out: dict[tuple[str, ...], list[LegacyFile]] = {}
        for f in self.files(event_type):
            out.setdefault(f.partition, []).append(f)
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ reading

    def file_columns(self, f: LegacyFile) -> list[str]:
        """The columns stored in ``f`` (its Parquet schema)."""
        try:
            return list(pq.read_schema(f.path, filesystem=self.fs).names)
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"cannot read the schema of {f.path}: {exc}") from exc

    def missing_added(self, f: LegacyFile) -> list[str]:
        """The columns of later schema versions ``f`` lacks (a file written by an older mqepi)."""
        present = set(self.file_columns(f))
        return [c for c in EVENT_TYPES[f.event_type].added if c not in present]

    def read_file(self, f: LegacyFile, columns: list[str] | None = None, *, added_as_null: bool = True) -> pl.DataFrame:
        """Every row of ``f``: the partition columns from its path, then its own columns, in the
        current schema's order and dtypes; the columns of later schema versions it lacks as
        null (``added_as_null=False``: left out, as the file's event ids hash only the columns
        it has). ``columns`` reads only those."""
        spec = EVENT_TYPES[f.event_type]
        unknown = [c for c in columns or () if c not in spec.polars_schema]
        if unknown:
            raise LakeError(f"{f.event_type} has no columns {unknown}")
        stored = self.file_columns(f)
        extra = [c for c in stored if c not in spec.polars_schema]
        if extra:
            raise LakeError(f"{f.path}: columns {extra} are not in the {f.event_type} schema")
        keys = f.keys
        wanted = [c for c in spec.polars_schema if columns is None or c in columns]
        from_file = [c for c in wanted if c in stored and c not in keys]
        try:
            table = pq.read_table(f.path, filesystem=self.fs, columns=from_file)
        except (OSError, pa.ArrowException) as exc:
            raise LakeError(f"cannot read {f.path}: {exc}") from exc
        if f.rows >= 0 and table.num_rows != f.rows:
            raise LakeError(f"{f.path} holds {table.num_rows} rows, its commit recorded {f.rows}: the file was changed")
        n = table.num_rows
        path_columns = [pl.repeat(v, n, dtype=pl.Utf8, eager=True).alias(k) for k, v in keys.items() if k in wanted]
        df = pl.from_arrow(table).hstack(path_columns) if from_file else pl.DataFrame(path_columns)
        df = _cast(spec, df.select([c for c in spec.polars_schema if c in df.columns]), f.path)
        if added_as_null:
            df = with_added_columns(spec, df) if columns is None else _added_subset(spec, df, wanted)
        return df

    def iter_files(self, event_type: str, columns: list[str] | None = None) -> Iterator[tuple[LegacyFile, pl.DataFrame]]:
        """(file, its rows) of every data file of ``event_type``, one file at a time."""
        for f in self.files(event_type):
            yield f, self.read_file(f, columns)

    def read(self, event_type: str, columns: list[str] | None = None) -> pl.DataFrame:
        """Every row of every data file of ``event_type`` (not de-duplicated), in file order."""
        spec = spec_for(event_type)
        frames = [df for _, df in self.iter_files(event_type, columns)]
        if not frames:
            return pl.DataFrame(schema={c: t for c, t in spec.polars_schema.items() if columns is None or c in columns})
        return pl.concat(frames, how="vertical")


def _is_seed(values: tuple[str, ...]) -> bool:
    return all(v == SEED_VALUE for v in values)


def _cast(spec: EventSpec, df: pl.DataFrame, path: str) -> pl.DataFrame:
    wrong = {c: spec.polars_schema[c] for c in df.columns if df.schema[c] != spec.polars_schema[c]}
    if not wrong:
        return df
    try:
        return df.cast(wrong, strict=True)
    except Exception as exc:  # noqa: BLE001 - polars raises several error types for bad casts
        raise LakeError(f"{path}: columns {sorted(wrong)} do not cast to the {spec.name} schema: "
                        f"{str(exc).splitlines()[0]}") from exc


def _added_subset(spec: EventSpec, df: pl.DataFrame, wanted: list[str]) -> pl.DataFrame:
    missing = [c for c in spec.added if c in wanted and c not in df.columns]
    if missing:
        df = df.with_columns(pl.lit(None, dtype=spec.polars_schema[c]).alias(c) for c in missing)
    return df.select([c for c in spec.polars_schema if c in df.columns])
