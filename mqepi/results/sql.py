"""The SQL layer: DuckDB with the lake's views loaded.

The SQL files of ``analysis/`` (:data:`mqepi.analysis.SQL_FILES`, in load order) are the
contract: their views read the files named by the DuckDB variables ``mqepi_files_<type>``.
:func:`connect` sets them to exactly the active files of each event type's Delta table (what
its log names, what ``Lake.read`` reads) and runs the files; a user of the plain ``duckdb``
CLI does the same by hand (see ``docs/sql.md``).

A lake on an S3-compatible store is read through pyarrow's S3 filesystem, registered with
DuckDB under the protocol ``mqepis3://`` (DuckDB's own ``s3://`` needs the httpfs extension,
which installs from the network only).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow.fs import LocalFileSystem

from mqepi.analysis import SQL_FILES
from mqepi.errors import LakeError, QueryError
from mqepi.lake.delta import filesystem
from mqepi.lake.store import SEED_VALUE, Lake
from mqepi.schemas import EVENT_TYPES

#: The protocol under which DuckDB reads an object-store lake (:func:`register_lake_fs`).
S3_PROTOCOL = "mqepis3"


class _LakeFS(ArrowFSWrapper):
    """pyarrow's S3 filesystem as fsspec, for DuckDB, under :data:`S3_PROTOCOL`."""

    protocol = S3_PROTOCOL

    def __init__(self, fs, **kwargs):
        super().__init__(fs, **kwargs)
        self._infos: dict[str, dict] = {}

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return path.split("://", 1)[1] if "://" in path else path

    def info(self, path, **kwargs):
        # lake files are content-addressed and never change: one request per file, not per bind
        key = self._strip_protocol(path)
        if key not in self._infos:
            self._infos[key] = super().info(path, **kwargs)
        return self._infos[key]

    def glob(self, path, **kwargs):
        if not any(c in str(path) for c in "*?["):  # a file list, not a pattern: no listing
            return [self._strip_protocol(path)] if self.exists(path) else []
        return super().glob(path, **kwargs)


def duckdb_prefix(lake_uri: str, root: str) -> str:
    """How DuckDB names the files under a lake's ``root``: the path (local) or ``mqepis3://root``."""
    return f"{S3_PROTOCOL}://{root}" if lake_uri.startswith("s3://") else root


def register_lake_fs(con: duckdb.DuckDBPyConnection, prefix: str) -> None:
    """Let ``con`` read files named with ``prefix`` (:func:`duckdb_prefix`): registers the S3
    filesystem for an object-store lake; nothing for a local one."""
    if prefix.startswith(f"{S3_PROTOCOL}://") and S3_PROTOCOL not in con.list_filesystems():
        bucket = prefix.split("://", 1)[1].split("/", 1)[0]
        con.register_filesystem(_LakeFS(filesystem(f"s3://{bucket}")[0]))


#: Output formats of :func:`export`.
FORMATS = ("table", "csv", "json", "parquet")


@dataclass(frozen=True)
class ViewInfo:
    name: str
    columns: list[tuple[str, str]]  # (column, DuckDB type)


def connect(lake: Lake, views: Path | list[Path] | None = None, projected: dict[str, Path] | None = None,
            files: dict[str, list[str]] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every view of ``views`` over ``lake``.

    The lake must exist; its seed files are written if missing (zero-row files that give
    every view its columns before the first event of its type). ``projected`` (view name ->
    Parquet file of a snapshot, :mod:`mqepi.results.snapshots`) replaces those views by their
    materialised rows: their definitions are skipped, and the views built on them read the
    file (the other views stay live SQL over the lake). ``files`` (event type -> paths as DuckDB
    opens them) gives the active files instead of the tables' logs, e.g. those a snapshot read
    (:func:`mqepi.results.snapshots.snapshot_files`), so base and derived views are one state.

    The views are created over the seed files only and then pointed at the lake's files:
    DuckDB binds a view when it is created, and binding over the real file lists would read
    every file's footer once per view (seconds at a few thousand files); queries bind again
    over the real lists.
    """
    if not lake.exists():
        raise LakeError(f"no lake at {lake.uri}: run `mqepi lake init` or pass --lake / set MQEPI_LAKE")
    if lake.pinned is None and not (files is not None and all(
            any(f.endswith(f"/schema-v{spec.version}.parquet") for f in files.get(t, ()))
            for t, spec in EVENT_TYPES.items())):  # the lists name every current seed: nothing to write
        lake.init()
    con = duckdb.connect()
    register_lake_fs(con, duckdb_prefix(lake.uri, lake.root))
    con.execute("SET VARIABLE mqepi_lake = ?", [lake.uri])
    con.execute("SET parquet_metadata_cache = true")  # files are content-addressed, never changed
    files = files if files is not None else committed_files(lake)
    if isinstance(lake.fs, LocalFileSystem):  # a lost file fails here, named (the views bind at query time)
        missing = next((f for paths in files.values() for f in paths if not os.path.exists(f)), None)
        if missing is not None:
            raise QueryError(f"{missing}: a file the lake's log names is missing (see `mqepi lake verify`)")
    set_file_lists(con, {t: [f for f in paths if f"/model={SEED_VALUE}/" in f] or paths for t, paths in files.items()})
    for name, path in (projected or {}).items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS FROM read_parquet('{_quote(str(path))}')")
    load_sql(con, SQL_FILES if views is None else [views] if isinstance(views, Path) else list(views),
             skip=set(projected or ()))
    set_file_lists(con, files)
    return con


_VIEW_HEAD = re.compile(r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?VIEW\s+(\w+)", re.I | re.M)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def load_sql(con: duckdb.DuckDBPyConnection, files: list[Path], skip: set[str] = frozenset()) -> None:
    """Run each SQL file's statements in order, leaving out the definitions of the views in
    ``skip`` (replaced by their projections); a missing file is left out."""
    for path in files:
        if not path.is_file():
            continue
        try:
            for statement in con.extract_statements(path.read_text()):
                text = "\n".join(line for line in statement.query.splitlines() if not line.lstrip().startswith("--"))
                head = _VIEW_HEAD.match(text)
                if head is None or head.group(1) not in skip:
                    con.execute(statement.query)
        except duckdb.Error as exc:
            raise QueryError(f"{path}: {exc}") from exc


def nodes(con: duckdb.DuckDBPyConnection, query: str) -> list[dict]:
    """Every node of ``query``'s syntax tree, by DuckDB's own parser."""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    if tree.get("error"):
        raise QueryError(f"cannot parse a view definition: {tree.get('error_message')}")
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            nodes.append(node)
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return nodes


def relations(con: duckdb.DuckDBPyConnection, query: str) -> set[str]:
    """Names in FROM/JOIN position in ``query`` (CTE names too)."""
    return {n["table_name"] for n in nodes(con, query) if n.get("type") == "BASE_TABLE" and "table_name" in n}


def reads(query: str, names: set[str] | tuple[str, ...]) -> bool:
    """Whether ``query`` names one of ``names`` in a FROM or JOIN, by DuckDB's parser (True
    when it cannot tell: several statements, or not a query)."""
    con = duckdb.connect()
    try:
        return bool({r.lower() for r in relations(con, query)} & {n.lower() for n in names})
    except (duckdb.Error, QueryError):
        return True
    finally:
        con.close()


def committed_files(lake: Lake) -> dict[str, list[str]]:
    """Per event type, the active files of its table (what ``Lake.read`` reads), as paths
    DuckDB opens (:func:`duckdb_prefix`)."""
    prefix = duckdb_prefix(lake.uri, lake.root)
    cut = len(lake.root)
    return {t: [prefix + path[cut:] for path in lake.files(t)] for t in EVENT_TYPES}


def set_file_lists(con: duckdb.DuckDBPyConnection, files: dict[str, list[str]]) -> None:
    """Point base views at their files (absolute paths; at least a seed each): the DuckDB
    variables ``mqepi_files_<event_type>`` that the table macro ``mqepi_events`` reads."""
    for event_type, paths in files.items():
        if not paths:
            raise QueryError(f"no file (not even a seed) for {event_type}")
        con.execute(f"SET VARIABLE mqepi_files_{event_type} = ?", [list(paths)])


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    """Run ``sql`` (``?`` placeholders bound to ``params``); the whole result as an Arrow table."""
    try:
        return con.sql(sql, params=params or None).to_arrow_table() if sql.strip() else pa.table({})
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc


def views(con: duckdb.DuckDBPyConnection) -> list[ViewInfo]:
    """Every view with its columns and types, in name order."""
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_name IN (SELECT view_name FROM duckdb_views() WHERE NOT internal) "
        "ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for view, column, dtype in rows:
        out.setdefault(view, []).append((column, dtype))
    return [ViewInfo(name, cols) for name, cols in out.items()]


def flat(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` for CSV: list and struct columns as JSON text (CSV has no nested values)."""
    nested = [c for c, t in df.schema.items() if t.is_nested()]
    return df.with_columns(pl.Series(c, [None if v is None else json.dumps(v) for v in df[c].to_list()], pl.Utf8)
                           for c in nested)


def export(table: pa.Table, fmt: str, output: Path) -> None:
    """Write a query result as CSV (nested values as JSON text), JSON (records) or Parquet."""
    df = pl.from_arrow(table)
    try:
        if fmt == "csv":
            flat(df).write_csv(output)
        elif fmt == "json":
            df.write_json(output)
        elif fmt == "parquet":
            df.write_parquet(output)
        else:
            raise QueryError(f"cannot write format {fmt!r} to a file; choose one of csv, json, parquet")
    except OSError as exc:
        raise QueryError(f"cannot write {output}: {exc}") from exc
