"""Materialised derived tables, recomputed incrementally (the ``recompute-frontier`` flow).

The SQL views (``analysis/*.sql``) stay the contract; :func:`recompute` writes their results
as Parquet snapshots and reruns only what new events can change. Output folder (``out_dir``;
by default ``derived/`` beside the lake, :func:`default_out_dir`)::

    latest.json                          the newest snapshot (replaced atomically)
    snapshots/<UTC time>-<state[:12]>/   one immutable folder per recompute:
        config_summary.parquet  matched_pairs.parquet  pareto_frontier.parquet
        run_metrics.parquet  run_energy.parquet  run_accuracy.parquet
        run_index.parquet    run_id -> input fingerprint -> cache batch
        families.parquet     (model, origin, power_source) -> input fingerprint
        snapshot.json        lake state, counts, settings, SQL hashes, seconds
    runs/<batch>.<table>.parquet         per-run cache: content-addressed, never modified
    seeds/                               zero-row schema files, only for event types of which
                                         the lake lacks the current seed (the lake is never written)

**Lake state**: sha256 over the sorted relative paths of every Parquet file of the lake, each
followed by a newline. File names are content hashes, so the paths name the content. When
``latest.json`` names a snapshot of the same state and settings, it is returned as reused
(a listing, no DuckDB).

**Per-run cache.** Its unit is a ``run_id`` (every ``run_id=R`` folder, whatever its model and
configuration: the energy views join on ``run_id`` alone). A run's fingerprint is sha256
over the relative paths of its files and of the config-level files (quant_config,
quantization, tensor_inventory) of its model and configuration, which ``run_metrics`` reads.
A run whose fingerprint and cache batch are in the previous snapshot's index is not
recomputed: a finished run whose events are all in never changes; an unfinished one gets a
new fingerprint with its next event. The others are computed in batches. (This assumes what
the SQL does today: per-run views read a run's own events and config-level events of its own
model and configuration only; tests/test_derived.py compares with the live views.)

**One DuckDB connection** loads every SQL file with the base views of ``views.sql``
rewritten to read explicit file lists (DuckDB variables ``mqepi_files_<type>``, VARCHAR[];
the rewrite fails loudly if ``views.sql`` changes shape) instead of globs. DuckDB views bind
at query time, so pointing a list (or a view name) elsewhere redirects every view built on
it. For a batch of runs the lists hold only those runs' folders, the config-level files of
their configurations and the zero-row seeds; each run-bound base view is read once into a
temporary table, then run_energy, run_accuracy and run_metrics are computed and cached with
the batch's de-duplicated benchmark_answer rows. A batch's name hashes its runs'
fingerprints and the run-level SQL, so a cache file is never rewritten.

**Configuration tables** (config_summary, matched_pairs, pareto_frontier) are formed per
family (model, origin, power_source): no row of a family depends on another family (the
bootstrap draws depend on the seed, the resample and the group size only; integer ids are
internal). A family's fingerprint hashes the settings, its runs' fingerprints and its
model's config-level files. Unchanged families keep the previous snapshot's rows; the others
are recomputed from the cached run_metrics and benchmark_answer of their runs (``CREATE OR
REPLACE VIEW run_metrics AS ...`` over the cache) and the config-level files of their models.
:func:`check_config_inputs` makes sure, with DuckDB's parser, that the configuration views
read nothing else run-bound. Results equal a recompute into an empty folder
(tests/test_derived.py) up to DuckDB's own last-bit float noise: the views queried twice
over the same lake can differ by an ulp (parallel sums).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.fs as pafs

from mqepi import __version__
from mqepi.analysis import SQL_FILES, VIEWS_SQL
from mqepi.errors import LakeError, QueryError
from mqepi.lake.store import SEED_VALUE, Lake
from mqepi.schemas import EVENT_TYPES

#: Version of the cache and snapshot layout; a change recomputes every run.
CACHE_FORMAT = 1
RUNS_SQL = VIEWS_SQL.parent / "runs.sql"
#: Per-run tables cached per batch (benchmark_answer: the base view's rows, for matched_pairs).
RUN_TABLES = ("run_energy", "run_accuracy", "run_metrics", "benchmark_answer")
#: Configuration tables, recomputed per family.
CONFIG_TABLES = ("config_summary", "matched_pairs", "pareto_frontier")
#: Tables of a snapshot (Snapshot.tables keys).
SNAPSHOT_TABLES = (*CONFIG_TABLES, "run_metrics", "run_energy", "run_accuracy")
#: The run-bound views the configuration tables may read (from the cache).
CONFIG_INPUTS = ("run_metrics", "benchmark_answer")
#: Row order of the configuration tables: the views' ORDER BY (matched_pairs, pareto_frontier)
#: spelled as columns; config_summary has none: its key.
TABLE_ORDER = {
    "config_summary": "model, config_id, origin, power_source",
    "matched_pairs": "model, origin, power_source, config_a, config_b",
    "pareto_frontier": "model, origin, power_source, config_id",
}
FAMILY = ("model", "origin", "power_source")
#: At most this many runs, and (beyond the first run) this many bytes of their Parquet
#: files, per DuckDB pass of the run stage (memory: about 10x the bytes).
DEFAULT_BATCH_RUNS = 2000
DEFAULT_BATCH_BYTES = 256 * 2**20
LATEST = "latest.json"
TEMP_PREFIX = ".tmp-"

RUN_BOUND = tuple(name for name, spec in EVENT_TYPES.items() if "run_id" in spec.partition_by)
if any(EVENT_TYPES[t].partition_by != ("model", "config_id", "run_id") for t in RUN_BOUND) or any(
        EVENT_TYPES[t].partition_by not in (("model",), ("model", "config_id")) for t in EVENT_TYPES if t not in RUN_BOUND):
    raise ImportError("mqepi.derived expects the lake layout model[/config_id[/run_id]]; follow schemas/__init__.py")
NOT_RUN_BOUND = tuple(name for name in EVENT_TYPES if name not in RUN_BOUND)
#: Materialised per batch, in this order: each run-bound base view (its files read and
#: de-duplicated once, though several views read them), then run_energy and run_accuracy.
_BATCH_TABLES = (*RUN_BOUND, "run_energy", "run_accuracy")

_GLOB = re.compile(r"getvariable\('mqepi_lake'\)\s*\|\|\s*'/([a-z_]+)/[^']*\*\.parquet'")


@dataclass
class Snapshot:
    """One materialised snapshot of the derived tables."""

    path: Path
    lake_state_sha256: str
    lake_files: int
    runs_total: int  # run ids in the lake (run-bound folders), finished or not
    runs_new: int  # run ids computed by this call (0 when reused)
    reused: bool
    seconds: float  # this call's wall time
    tables: dict[str, Path] = field(default_factory=dict)  # name -> Parquet file


@dataclass(frozen=True)
class Settings:
    """The SQL tunables of a snapshot (DuckDB variables of the contract)."""

    seed: int = 1234
    bootstrap: int = 1000
    ppl_tolerance: float | None = None
    z: float = 1.96

    def variables(self) -> dict[str, object]:
        out = {"mqepi_seed": int(self.seed), "mqepi_bootstrap": int(self.bootstrap), "mqepi_z": float(self.z)}
        if self.ppl_tolerance is not None:
            out["mqepi_ppl_tolerance"] = float(self.ppl_tolerance)
        return out


def default_out_dir(lake: Lake) -> Path:
    """``derived/`` beside a local lake's root folder."""
    if "://" in lake.uri:
        raise LakeError(f"{lake.uri} is not a local folder: pass an output folder for the derived tables")
    return Path(lake.root).parent / "derived"


# ---------------------------------------------------------------------------------- listing


@dataclass
class LakeListing:
    """Every Parquet file of a lake (relative paths) and its grouping by run and config."""

    uri: str
    relative: list[str]  # sorted
    state: str
    seeds: dict[str, list[str]]  # event type -> zero-row seed files
    run_files: dict[str, dict[str, list[str]]]  # run_id -> event type -> files
    run_configs: dict[str, set[tuple[str, str]]]  # run_id -> {(model, config_id)}
    config_files: dict[tuple, dict[str, list[str]]]  # (model, config_id or None) -> type -> files

    def absolute(self, relative: Iterable[str]) -> list[str]:
        return [f"{self.uri}/{r}" for r in relative]

    def config_level(self, keys: Iterable[tuple], event_type: str) -> list[str]:
        """Absolute config-level files of ``event_type`` under the (model, config_id) ``keys``
        (a key's model-level files, config_id None, included)."""
        wanted = set(keys) | {(m, None) for m, _ in keys}
        return self.absolute(sorted(f for k in wanted for f in self.config_files.get(k, {}).get(event_type, ())))


def _list_files(lake: Lake) -> list[str]:
    """Relative paths of every committed Parquet file, as ``Lake.files`` lists them."""
    prefix = lake.root.rstrip("/") + "/"
    if not isinstance(lake.fs, pafs.LocalFileSystem):
        return [path[len(prefix):] for name in EVENT_TYPES for path in lake.files(name)]
    out: list[str] = []

    def walk(directory: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_dir():
                walk(entry.path)
            elif entry.name.endswith(".parquet") and not entry.name.startswith(".") and entry.is_file():
                out.append(entry.path[len(prefix):])

    for name in EVENT_TYPES:
        walk(prefix + name)
    return out


def list_lake(lake: Lake) -> LakeListing:
    """List the lake (never writing it) and compute its state hash."""
    if not lake.exists():
        raise LakeError(f"no lake at {lake.uri}: run `mqepi lake init` or pass --lake / set MQEPI_LAKE")
    relative = sorted(_list_files(lake))
    state = hashlib.sha256("".join(f"{rel}\n" for rel in relative).encode()).hexdigest()
    seeds: dict[str, list[str]] = defaultdict(list)
    run_files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    run_configs: dict[str, set[tuple[str, str]]] = defaultdict(set)
    config_files: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    depth = {name: len(spec.partition_by) + 2 for name, spec in EVENT_TYPES.items()}
    for rel in relative:
        # only what the views' globs match: <type>/model=M/config_id=C[/run_id=R]/<file>
        parts = rel.split("/")
        event_type = parts[0]
        if depth.get(event_type) != len(parts) or not parts[1].startswith("model="):
            continue
        model = parts[1][6:]
        config = parts[2][10:] if parts[2].startswith("config_id=") else None
        if len(parts) == 5:
            run = parts[3][7:] if parts[3].startswith("run_id=") else None
            if config is None or run is None:
                continue
            if model == config == run == SEED_VALUE:
                seeds[event_type].append(rel)
            else:
                run_files[run][event_type].append(rel)
                run_configs[run].add((model, config))
        elif len(parts) == 4:
            if config is None:
                continue
            if model == config == SEED_VALUE:
                seeds[event_type].append(rel)
            else:
                config_files[(model, config)][event_type].append(rel)
        elif model == SEED_VALUE:  # model-level: <type>/model=M/<file>
            seeds[event_type].append(rel)
        else:
            config_files[(model, None)][event_type].append(rel)
    return LakeListing(lake.uri.rstrip("/"), relative, state, dict(seeds), run_files, run_configs, config_files)


def _sha(*parts: object) -> str:
    return hashlib.sha256("\n".join(str(p) for p in parts).encode()).hexdigest()


def _run_fingerprints(listing: LakeListing) -> dict[str, str]:
    """run_id -> sha256 of its files and of its configurations' config-level files."""
    out = {}
    for run_id, by_type in listing.run_files.items():
        own = sorted(rel for files in by_type.values() for rel in files)
        keys = listing.run_configs[run_id]
        wanted = keys | {(m, None) for m, _ in keys}
        config = sorted(rel for k in wanted for files in listing.config_files.get(k, {}).values() for rel in files)
        out[run_id] = _sha(*own, "--", *config)
    return out


def _family_fingerprints(members: pl.DataFrame, fingerprints: dict[str, str], listing: LakeListing,
                         settings_key: str) -> pl.DataFrame:
    """(model, origin, power_source) -> sha256 of the settings, the family's runs (those in
    run_metrics) and its model's config-level files."""
    by_model: dict[str, list[str]] = defaultdict(list)
    for (model, _), files in listing.config_files.items():
        by_model[model].extend(rel for rels in files.values() for rel in rels)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for model, origin, power_source, run_id in members.iter_rows():
        groups[(model, origin, power_source)].append(f"{run_id} {fingerprints[run_id]}")
    rows = [(*key, _sha(settings_key, *sorted(runs), "--", *sorted(by_model.get(key[0], ()))))
            for key, runs in groups.items()]
    schema = {"model": pl.Utf8, "origin": pl.Utf8, "power_source": pl.Utf8, "fingerprint": pl.Utf8}
    return pl.DataFrame(rows, schema=schema, orient="row").sort(FAMILY, nulls_last=True)


# ---------------------------------------------------------------------------------- SQL helpers


def file_list_views_sql(views_sql: str) -> str:
    """``views.sql`` with every base view reading the file list in the DuckDB variable
    ``mqepi_files_<type>`` (VARCHAR[]) instead of its glob under ``mqepi_lake``."""
    found: list[str] = []

    def replace(match: re.Match) -> str:
        found.append(match.group(1))
        return f"getvariable('mqepi_files_{match.group(1)}')"

    rewritten = _GLOB.sub(replace, views_sql)
    if sorted(found) != sorted(EVENT_TYPES) or "getvariable('mqepi_lake')" in rewritten:
        raise QueryError(
            f"views.sql no longer has one glob per event type in the expected form (found {sorted(found)}); "
            "mqepi.derived.file_list_views_sql must follow it")
    return rewritten


def set_file_lists(con: duckdb.DuckDBPyConnection, files: dict[str, list[str]]) -> None:
    """Point base views at their files (absolute paths; at least a seed each)."""
    for event_type, paths in files.items():
        if not paths:
            raise QueryError(f"no file (not even a seed) for {event_type}")
        con.execute(f"SET VARIABLE mqepi_files_{event_type} = ?", [list(paths)])


def _view_sql(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Each user view's query, as DuckDB stores it."""
    out = {}
    for name, text in con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall():
        head = re.match(r"CREATE (?:OR REPLACE )?(?:TEMP(?:ORARY)? )?VIEW\s+(\"[^\"]+\"|\S+)\s+AS\s+", text, re.I)
        if head is None:
            raise QueryError(f"cannot read the definition of view {name}")
        out[name] = text[head.end():].rstrip().rstrip(";")
    return out


def _relations(con: duckdb.DuckDBPyConnection, query: str) -> set[str]:
    """Names in FROM/JOIN position in ``query`` (CTE names too), by DuckDB's own parser."""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    if tree.get("error"):
        raise QueryError(f"cannot parse a view definition: {tree.get('error_message')}")
    names: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and "table_name" in node:
                names.add(node["table_name"])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return names


def check_config_inputs(con: duckdb.DuckDBPyConnection) -> None:
    """Fail unless the configuration views read, of everything run-bound, only CONFIG_INPUTS
    (the rest of what they read must be config-level views)."""
    views = _view_sql(con)
    stops = set(CONFIG_INPUTS) | set(NOT_RUN_BOUND)
    seen: set[str] = set()
    todo = [(t, t) for t in CONFIG_TABLES if t in views]
    while todo:
        name, root = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in stops:
            continue
        if name in RUN_BOUND:
            raise QueryError(f"{root} reads {name}, which mqepi.derived does not cache per run; "
                             "add it to mqepi.derived.CONFIG_INPUTS")
        todo.extend((dep, root) for dep in _relations(con, views[name]) if dep in views and dep not in seen)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(con: duckdb.DuckDBPyConnection, query: str, final: Path) -> None:
    """Write ``query`` as Parquet under a temporary name beside ``final``, fsync, rename."""
    temp = final.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{final.name}")
    try:
        con.execute(f"COPY ({query}) TO '{_quote(str(temp))}' (FORMAT parquet, COMPRESSION zstd)")
        _fsync(temp)
        os.replace(temp, final)
    finally:
        if temp.exists():
            temp.unlink()


def _typed_select(con: duckdb.DuckDBPyConnection, relation: str) -> str:
    """``CAST(c AS <type>) AS c, ...`` for every column of ``relation``, in its order."""
    cols = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t, *_ in cols)


def _same(a: str, b: str, columns: Iterable[str]) -> str:
    return " AND ".join(f"{a}.{c} IS NOT DISTINCT FROM {b}.{c}" for c in columns)


def _register(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    con.register(f"{name}_df", frame.to_arrow())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_df")
    con.unregister(f"{name}_df")


# ---------------------------------------------------------------------------------- the engine


class _Engine:
    """One DuckDB connection with every SQL file loaded over file lists (seeds at first)."""

    def __init__(self, listing: LakeListing, seeds: dict[str, list[str]], settings: Settings, runs_dir: Path):
        self.listing, self.seeds, self.runs_dir = listing, seeds, runs_dir
        self.spill = runs_dir.parent / f"{TEMP_PREFIX}duckdb-{uuid.uuid4().hex}"  # DuckDB's spill folder
        self.con = con = duckdb.connect(config={"temp_directory": str(self.spill)})
        try:
            for name, value in settings.variables().items():
                con.execute(f"SET VARIABLE {name} = ?", [value])
            set_file_lists(con, seeds)
            for path in SQL_FILES:  # in the contract's order, views.sql over file lists
                if path.is_file():
                    text = path.read_text()
                    con.execute(file_list_views_sql(text) if path == VIEWS_SQL else text)
            check_config_inputs(con)
            self.typed = {t: _typed_select(con, t) for t in RUN_TABLES}
            for table in _BATCH_TABLES:
                con.execute(f"ALTER VIEW {table} RENAME TO _mq_sql_{table}")
                con.execute(f"CREATE TEMP TABLE _mq_t_{table} AS SELECT * FROM _mq_sql_{table} LIMIT 0")
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM _mq_t_{table}")
        except duckdb.Error as exc:
            con.close()
            raise QueryError(f"loading the SQL views: {exc}") from exc

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill, ignore_errors=True)

    # ---- run stage

    def compute_batch(self, runs: list[str], batch: str) -> None:
        """Compute and cache run_energy, run_accuracy, run_metrics and benchmark_answer of ``runs``."""
        listing, con = self.listing, self.con
        files = {t: list(self.seeds[t]) for t in EVENT_TYPES}
        keys: set[tuple[str, str]] = set()
        for run_id in runs:
            for t, rels in listing.run_files[run_id].items():
                files[t].extend(listing.absolute(rels))
            keys |= listing.run_configs[run_id]
        for t in NOT_RUN_BOUND:
            files[t].extend(listing.config_level(keys, t))
        try:
            set_file_lists(con, files)
            for table in _BATCH_TABLES:
                con.execute(f"DELETE FROM _mq_t_{table}")
                con.execute(f"INSERT INTO _mq_t_{table} SELECT * FROM _mq_sql_{table}")
            for table in RUN_TABLES:
                source = "run_metrics" if table == "run_metrics" else f"_mq_t_{table}"
                _copy(con, f"SELECT * FROM {source}", self.runs_dir / f"{batch}.{table}.parquet")
        except duckdb.Error as exc:
            raise QueryError(f"computing per-run tables: {exc}") from exc

    # ---- configuration stage

    def _cached(self, table: str, batches: list[str], runs: str) -> str:
        """The cached rows of ``table`` for the (run_id, batch) pairs of the table ``runs``,
        typed as the view (a recomputed run's old rows stay in its old batch file)."""
        if not batches:
            return f"SELECT * FROM _mq_sql_{table} LIMIT 0"
        prefix = _quote(str(self.runs_dir.resolve()))
        files = ", ".join(f"'{prefix}/{_quote(b)}.{table}.parquet'" for b in batches)
        return (f"SELECT {self.typed[table]} FROM read_parquet([{files}], union_by_name = true, filename = true) x "
                f"SEMI JOIN {runs} i ON x.run_id = i.run_id "
                f"AND x.filename = '{prefix}/' || i.batch || '.{table}.parquet'")

    def write_snapshot(self, index: pl.DataFrame, fingerprints: dict[str, str], settings_key: str,
                       snap_dir: Path, previous_dir: Path | None) -> tuple[int, int]:
        """Write the snapshot's tables into ``snap_dir``; return (families, recomputed)."""
        listing, con = self.listing, self.con
        try:
            set_file_lists(con, self.seeds)
            for table in RUN_BOUND:  # nothing of the last batch stays visible
                con.execute(f"DELETE FROM _mq_t_{table}")
            _register(con, "_mq_index", index.select("run_id", "batch"))
            all_batches = sorted(set(index["batch"].to_list()))
            con.execute("ALTER VIEW run_metrics RENAME TO _mq_sql_run_metrics")
            con.execute("CREATE TEMP TABLE _mq_cached_run_metrics AS "
                        + self._cached("run_metrics", all_batches, "_mq_index"))

            # families, and which to recompute
            members = pl.from_arrow(con.sql(
                "SELECT DISTINCT model, origin, power_source, run_id FROM _mq_cached_run_metrics").to_arrow_table())
            families = _family_fingerprints(members, fingerprints, listing, settings_key)
            _register(con, "_mq_families", families)
            if previous_dir is not None:
                old = _quote(str(previous_dir / "families.parquet"))
                con.execute(f"""CREATE TEMP TABLE _mq_redo AS
                    SELECT f.model, f.origin, f.power_source FROM _mq_families f
                    ANTI JOIN read_parquet('{old}') p ON {_same('f', 'p', (*FAMILY, 'fingerprint'))}""")
            else:
                con.execute("CREATE TEMP TABLE _mq_redo AS SELECT model, origin, power_source FROM _mq_families")
            n_redo = con.execute("SELECT count(*) FROM _mq_redo").fetchall()[0][0]

            # the configuration views see the families to redo only: their runs' metrics and
            # answers, their models' config-level files
            con.execute(f"""CREATE VIEW run_metrics AS SELECT m.* FROM _mq_cached_run_metrics m
                SEMI JOIN _mq_redo r ON {_same('m', 'r', FAMILY)}""")
            con.execute("CREATE TEMP TABLE _mq_redo_runs AS SELECT * FROM _mq_index "
                        "WHERE run_id IN (SELECT run_id FROM run_metrics)")
            redo_batches = sorted(b for (b,) in con.execute("SELECT DISTINCT batch FROM _mq_redo_runs").fetchall())
            con.execute("DELETE FROM _mq_t_benchmark_answer")
            con.execute("INSERT INTO _mq_t_benchmark_answer "
                        + self._cached("benchmark_answer", redo_batches, "_mq_redo_runs"))
            models = {m for (m,) in con.execute("SELECT DISTINCT model FROM _mq_redo").fetchall()}
            keys = [k for k in listing.config_files if k[0] in models]
            set_file_lists(con, {t: self.seeds[t] + listing.config_level(keys, t) for t in NOT_RUN_BOUND})

            con.execute("CREATE TEMP TABLE _mq_t_config_summary AS SELECT * FROM config_summary")
            con.execute("ALTER VIEW config_summary RENAME TO _mq_sql_config_summary")
            con.execute("CREATE VIEW config_summary AS SELECT * FROM _mq_t_config_summary")
            for table in CONFIG_TABLES:
                query = f"SELECT * FROM {table}"
                if previous_dir is not None:  # the unchanged families' rows, as they were
                    old = _quote(str(previous_dir / f"{table}.parquet"))
                    query += (f" UNION ALL SELECT {_typed_select(con, table)} FROM read_parquet('{old}') p "
                              f"SEMI JOIN _mq_families f ON {_same('p', 'f', FAMILY)} "
                              f"ANTI JOIN _mq_redo r ON {_same('p', 'r', FAMILY)}")
                _copy(con, f"SELECT * FROM ({query}) ORDER BY {TABLE_ORDER[table]}", snap_dir / f"{table}.parquet")
            _copy(con, "SELECT * FROM _mq_cached_run_metrics ORDER BY ALL", snap_dir / "run_metrics.parquet")
            for table in ("run_energy", "run_accuracy"):
                source = self._cached(table, all_batches, "_mq_index")
                _copy(con, f"SELECT * FROM ({source}) ORDER BY ALL", snap_dir / f"{table}.parquet")
        except duckdb.Error as exc:
            raise QueryError(f"computing the configuration tables: {exc}") from exc
        families.write_parquet(snap_dir / "families.parquet")
        _fsync(snap_dir / "families.parquet")
        return families.height, n_redo


# ---------------------------------------------------------------------------------- recompute


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _snapshot_from_json(path: Path, meta: dict, *, reused: bool, seconds: float) -> Snapshot:
    return Snapshot(path=path, lake_state_sha256=meta["lake_state_sha256"], lake_files=meta["lake_files"],
                    runs_total=meta["runs"]["total"], runs_new=0 if reused else meta["runs"]["new"], reused=reused,
                    seconds=seconds, tables={name: path / f"{name}.parquet" for name in meta["tables"]})


def recompute(lake: Lake, out_dir: str | os.PathLike | None = None, *, progress: Callable[[str], None] = lambda s: None,
              seed: int = 1234, bootstrap: int = 1000, ppl_tolerance: float | None = None, z: float = 1.96,
              batch_runs: int = DEFAULT_BATCH_RUNS, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Snapshot:
    """Materialise the derived tables of ``lake`` into a new snapshot under ``out_dir``
    (default: ``derived/`` beside a local lake, :func:`default_out_dir`), or
    return the latest one, marked ``reused``, when neither the lake nor the settings changed.

    Per-run rows are computed only for runs not cached before (new, or changed since, as an
    unfinished run that got its next events); the configuration tables only for the families
    (model, origin, power_source) those runs or new config-level events touch. The result
    equals a recompute into an empty folder. The lake is only read. ``seed``, ``bootstrap``,
    ``ppl_tolerance`` and ``z`` are the SQL tunables ``mqepi_seed``, ``mqepi_bootstrap``,
    ``mqepi_ppl_tolerance``, ``mqepi_z``; ``batch_runs`` and ``batch_bytes`` (Parquet bytes
    of the runs' files) bound one DuckDB pass of the run stage, and so its memory.
    """
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else default_out_dir(lake)
    settings = Settings(seed, bootstrap, ppl_tolerance, z)
    texts = {path.name: path.read_text() for path in SQL_FILES if path.is_file()}
    sql_sha = {name: _sha(text) for name, text in texts.items()}
    settings_key = _sha(CACHE_FORMAT, json.dumps(settings.__dict__, sort_keys=True), json.dumps(sql_sha, sort_keys=True))
    # the per-run cache depends on the SQL files up to runs.sql (macros, views, runs) and z
    run_sql = SQL_FILES[:SQL_FILES.index(RUNS_SQL) + 1] if RUNS_SQL in SQL_FILES else SQL_FILES
    run_key = _sha(CACHE_FORMAT, float(settings.z), *(f"{p.name}:{sql_sha.get(p.name)}" for p in run_sql))

    listing = list_lake(lake)
    progress(f"lake {lake.uri}: {len(listing.relative)} files, state {listing.state[:12]}, "
             f"{len(listing.run_files)} runs ({time.perf_counter() - t0:.2f} s)")

    latest = _read_json(out / LATEST)
    previous_dir = previous = None
    if latest is not None and latest.get("snapshot"):
        previous_dir = out / latest["snapshot"]
        previous = _read_json(previous_dir / "snapshot.json")
    if previous is not None and previous.get("lake_state_sha256") == listing.state \
            and previous.get("settings_sha256") == settings_key \
            and all((previous_dir / f"{t}.parquet").is_file() for t in previous.get("tables", ())):
        progress(f"lake unchanged since {previous_dir.name}: reused")
        return _snapshot_from_json(previous_dir, previous, reused=True, seconds=time.perf_counter() - t0)

    runs_dir, snaps_dir = out / "runs", out / "snapshots"
    runs_dir.mkdir(parents=True, exist_ok=True)
    snaps_dir.mkdir(parents=True, exist_ok=True)
    seeds = _seed_lists(listing, out)

    # which runs are cached under their current inputs
    fingerprints = _run_fingerprints(listing)
    assigned: dict[str, str] = {}  # run_id -> batch
    if previous is not None and previous.get("run_key") == run_key and (previous_dir / "run_index.parquet").is_file():
        present: dict[str, bool] = {}
        for run_id, fp, batch in pl.read_parquet(previous_dir / "run_index.parquet").iter_rows():
            if fingerprints.get(run_id) != fp:
                continue
            if batch not in present:
                present[batch] = all((runs_dir / f"{batch}.{t}.parquet").is_file() for t in RUN_TABLES)
            if present[batch]:
                assigned[run_id] = batch
    n_cached = len(assigned)
    new_runs = sorted(r for r in fingerprints if r not in assigned)
    batches = _batches(lake, listing, new_runs, batch_runs, batch_bytes)
    progress(f"runs: {len(new_runs)} to compute ({n_cached} cached), {len(batches)} batches")

    engine = _Engine(listing, seeds, settings, runs_dir)
    try:
        for i, runs in enumerate(batches, 1):
            t1 = time.perf_counter()
            batch = _sha(run_key, *(f"{r} {fingerprints[r]}" for r in runs))
            if not all((runs_dir / f"{batch}.{t}.parquet").is_file() for t in RUN_TABLES):
                engine.compute_batch(runs, batch)
            assigned.update((r, batch) for r in runs)
            progress(f"batch {i}/{len(batches)}: {len(runs)} runs, {time.perf_counter() - t1:.2f} s")

        # the configuration tables into a new snapshot folder, published by a rename
        t2 = time.perf_counter()
        index = pl.DataFrame({"run_id": list(assigned), "fingerprint": [fingerprints[r] for r in assigned],
                              "batch": list(assigned.values())},
                             schema={"run_id": pl.Utf8, "fingerprint": pl.Utf8, "batch": pl.Utf8}).sort("run_id")
        reuse_families = previous is not None and previous.get("settings_sha256") == settings_key \
            and (previous_dir / "families.parquet").is_file()
        name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{listing.state[:12]}"
        temp_dir = snaps_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        temp_dir.mkdir()
        try:
            n_families, n_redo = engine.write_snapshot(index, fingerprints, settings_key, temp_dir,
                                                       previous_dir if reuse_families else None)
            progress(f"configuration tables: {n_redo} of {n_families} families recomputed, "
                     f"{time.perf_counter() - t2:.2f} s")
            index.write_parquet(temp_dir / "run_index.parquet")
            _fsync(temp_dir / "run_index.parquet")
            meta = {
                "lake": lake.uri, "lake_state_sha256": listing.state, "lake_files": len(listing.relative),
                "runs": {"total": len(fingerprints), "new": len(new_runs), "cached": n_cached},
                "families": {"total": n_families, "recomputed": n_redo},
                "computed_at": datetime.now(UTC).isoformat(), "mqepi": __version__,
                "settings": settings.__dict__, "settings_sha256": settings_key, "run_key": run_key,
                "sql_sha256": sql_sha, "seconds": round(time.perf_counter() - t0, 3), "tables": list(SNAPSHOT_TABLES),
            }
            (temp_dir / "snapshot.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            _fsync(temp_dir / "snapshot.json")
            final = snaps_dir / name
            os.rename(temp_dir, final)  # a new name: never replaces a snapshot
        finally:
            if temp_dir.exists():
                shutil.rmtree(temp_dir)
    finally:
        engine.close()
    _fsync_dir(snaps_dir)
    _write_latest(out, {"snapshot": f"snapshots/{name}", "lake_state_sha256": listing.state,
                        "settings_sha256": settings_key, "computed_at": meta["computed_at"]})
    progress(f"snapshot {final}")
    return _snapshot_from_json(final, meta, reused=False, seconds=time.perf_counter() - t0)


def _batches(lake: Lake, listing: LakeListing, runs: list[str], max_runs: int, max_bytes: int) -> list[list[str]]:
    """``runs`` cut into batches of at most ``max_runs`` runs and ``max_bytes`` file bytes."""
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_latest(out: Path, content: dict) -> None:
    """Replace ``latest.json`` atomically (temporary file, fsync, rename)."""
    temp = out / f"{TEMP_PREFIX}{uuid.uuid4().hex}-{LATEST}"
    try:
        temp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        _fsync(temp)
        os.replace(temp, out / LATEST)
    finally:
        if temp.exists():
            temp.unlink()
    _fsync_dir(out)


def _seed_lists(listing: LakeListing, out: Path) -> dict[str, list[str]]:
    """Per event type, its zero-row seed files (absolute): the lake's, plus ours under
    ``out/seeds`` for a type of which the lake lacks the current version's seed (so every
    view has its current columns, as after ``mqepi lake init``)."""
    seeds = {t: listing.absolute(listing.seeds.get(t, ())) for t in EVENT_TYPES}
    missing = [t for t, spec in EVENT_TYPES.items()
               if not any(s.endswith(f"/schema-v{spec.version}.parquet") for s in seeds[t])]
    if missing:
        own = Lake(out / "seeds")
        own.init()
        for t in missing:
            seeds[t] = seeds[t] + own.files(t)
    return seeds
