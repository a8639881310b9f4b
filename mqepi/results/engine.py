"""The DuckDB engine of the derived snapshots: every SQL view of the contract over file lists.

One connection loads the SQL files as they are (the run stage's first, the configuration
stage's once run_metrics reads the cache: binding them is then cheap). Each base view reads its event type through the
table macro ``mqepi_events`` of ``macros.sql``, which reads the file list in the DuckDB
variable ``mqepi_files_<type>`` (VARCHAR[]) when it is set: :func:`set_file_lists` sets those
variables, so the engine points views at files and never rewrites SQL. DuckDB views bind at
query time, so pointing a list (or a view name) elsewhere redirects every view built on it.

**Run stage** (:meth:`Engine.compute_batch`): the lists hold one batch of runs' folders, the
configuration-bound files of their configurations and the zero-row seeds; each run-bound base
view is read once into a temporary table, then run_energy, run_accuracy and run_metrics are
computed and cached with the batch's de-duplicated benchmark_answer rows.

**Configuration stage** (:meth:`Engine.write_snapshot`): config_summary, matched_pairs and
pareto_frontier, per family (model, origin, power_source, hardware_id): no row of a family depends on
another family (the bootstrap draws depend on the seed, the resample and the group size only;
integer ids are internal). Unchanged families keep the previous snapshot's rows; the others
are recomputed from the cached run_metrics and benchmark_answer of their runs (``CREATE OR
REPLACE VIEW run_metrics AS ...`` over the cache) and the configuration-bound files of their
models. The families go through the views in chunks of about ``chunk_runs`` runs (memory), and
per chunk the bootstrap's resamples (:data:`SHARED_MACROS`) are drawn once into temporary
tables and the macros redefined to read them, so the three views share one draw (the same rows
each would draw). :func:`check_config_inputs` makes sure, with DuckDB's parser, that the
configuration views read nothing else run-bound.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from mqepi.analysis import RESAMPLES_SQL, RUNS_SQL, SQL_FILES
from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.analysis.contract import CONFIG_KEY, FAMILY_KEY
from mqepi.analysis.stats import DEFAULT_Z
from mqepi.errors import QueryError
from mqepi.lake.durable import TEMP_PREFIX, fsync_file, replacing
from mqepi.results.listing import LakeListing, family_fingerprints
from mqepi.results.sql import load_sql, nodes, register_lake_fs, relations, set_file_lists
from mqepi.schemas import CONFIG_BOUND, EVENT_TYPES, RUN_BOUND

#: Per-run tables cached per batch (benchmark_answer, perplexity, kld: the base views' rows, for
#: the bootstrap's questions and matched_pairs' chunks).
RUN_TABLES = ("run_energy", "run_accuracy", "run_metrics", "benchmark_answer", "perplexity", "kld")
#: Configuration tables, recomputed per family.
CONFIG_TABLES = ("config_summary", "matched_pairs", "pareto_frontier")
#: The run-bound views the configuration tables may read (from the cache).
CONFIG_INPUTS = ("run_metrics", "benchmark_answer", "perplexity", "kld")
#: Row order of the configuration tables: the views' ORDER BY (matched_pairs, pareto_frontier)
#: spelled as columns; config_summary has none: its key.
TABLE_ORDER = {
    "config_summary": ", ".join(CONFIG_KEY),
    "matched_pairs": ", ".join((*FAMILY_KEY, "config_a", "config_b")),
    "pareto_frontier": ", ".join((*FAMILY_KEY, "config_id")),
}
#: The SQL files of the run stage (macros, views, runs); the others (the bootstrap, flips,
#: summary, frontier) are loaded for the configuration stage, over the cached run_metrics.
RUN_SQL = SQL_FILES[:SQL_FILES.index(RUNS_SQL) + 1]
CONFIG_SQL = SQL_FILES[SQL_FILES.index(RUNS_SQL) + 1:]
#: The bootstrap's table macros (resamples.sql) materialised once per configuration stage and
#: shared by config_summary, matched_pairs and pareto_frontier (each would draw them again).
SHARED_MACROS = ("mqepi_run_resamples", "mqepi_config_resamples")
#: DuckDB's memory limit in the engine (its default is 80 % of the machine): beyond it, sorts,
#: joins and aggregates spill to the engine's temporary folder.
MEMORY_LIMIT = "3GB"
#: Runs per chunk of families in the configuration stage (about 1 KB per run and resample).
DEFAULT_CHUNK_RUNS = 1000
#: The table macro (macros.sql) each base view reads its event type through.
READERS = {t: "mqepi_run_events" if t in RUN_BOUND else "mqepi_config_events" for t in EVENT_TYPES}
#: Materialised per batch, in this order: each run-bound base view (its files read and
#: de-duplicated once, though several views read them), then run_energy and run_accuracy.
_BATCH_TABLES = (*RUN_BOUND, "run_energy", "run_accuracy")


@dataclass(frozen=True)
class Settings:
    """The SQL tunables of a snapshot (DuckDB variables of the contract)."""

    seed: int = DEFAULT_SEED
    bootstrap: int = DEFAULT_BOOTSTRAP
    ppl_margin: float | None = None
    z: float = DEFAULT_Z
    kld_margin: float | None = None

    def variables(self) -> dict[str, object]:
        out = {"mqepi_seed": int(self.seed), "mqepi_bootstrap": int(self.bootstrap), "mqepi_z": float(self.z)}
        if self.ppl_margin is not None:
            out["mqepi_ppl_margin"] = float(self.ppl_margin)
        if self.kld_margin is not None:
            out["mqepi_kld_margin"] = float(self.kld_margin)
        return out


# ---------------------------------------------------------------------------------- the views


def _view_sql(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Each user view's query, as DuckDB stores it."""
    out = {}
    for name, text in con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall():
        head = re.match(r"CREATE (?:OR REPLACE )?(?:TEMP(?:ORARY)? )?VIEW\s+(\"[^\"]+\"|\S+)\s+AS\s+", text, re.I)
        if head is None:
            raise QueryError(f"cannot read the definition of view {name}")
        out[name] = text[head.end():].rstrip().rstrip(";")
    return out


def _table_functions(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple[str, list]]:
    """(name, constant arguments) of each table function ``query`` reads from."""
    out = []
    for node in nodes(con, query):
        if node.get("type") == "TABLE_FUNCTION":
            function = node["function"]
            args = [a["expression"].get("literal", {}).get("text") for a in function.get("arguments", [])]
            out.append((function["function_name"], args))
    return out


def check_base_views(con: duckdb.DuckDBPyConnection) -> None:
    """Fail unless every base view reads its event type through the table macro of its lake
    layout (:data:`READERS`), the one that honours the file lists of :func:`set_file_lists`."""
    views = _view_sql(con)
    for event_type, reader in READERS.items():
        found = _table_functions(con, views[event_type]) if event_type in views else []
        if found != [(reader, [event_type])]:
            raise QueryError(f"views.sql: the base view {event_type} must be `FROM {reader}('{event_type}')` "
                             f"(found {found or 'no such view'}), or the snapshots cannot point it at file lists")


def check_config_inputs(con: duckdb.DuckDBPyConnection) -> None:
    """Fail unless the configuration views read, of everything run-bound, only CONFIG_INPUTS
    (the rest of what they read must be configuration-bound views)."""
    views = _view_sql(con)
    stops = set(CONFIG_INPUTS) | set(CONFIG_BOUND)
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
            raise QueryError(f"{root} reads {name}, which the snapshots do not cache per run; "
                             "add it to mqepi.results.engine.CONFIG_INPUTS")
        todo.extend((dep, root) for dep in relations(con, views[name]) if dep in views and dep not in seen)


# ---------------------------------------------------------------------------------- SQL helpers


def _quote(text: str) -> str:
    return text.replace("'", "''")


def copy_parquet(con: duckdb.DuckDBPyConnection, query: str, final: Path) -> None:
    """Write ``query`` as Parquet onto ``final`` atomically (:func:`mqepi.lake.durable.replacing`)."""
    with replacing(final) as temp:
        con.execute(f"COPY ({query}) TO '{_quote(str(temp))}' (FORMAT parquet, COMPRESSION zstd)")


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


def _count(con: duckdb.DuckDBPyConnection, relation: str) -> int:
    return con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]


# ---------------------------------------------------------------------------------- the engine


class Engine:
    """One DuckDB connection with the SQL files loaded over file lists (seeds at first)."""

    def __init__(self, listing: LakeListing, seeds: dict[str, list[str]], settings: Settings, runs_dir: Path,
                 chunk_runs: int = DEFAULT_CHUNK_RUNS):
        self.listing, self.seeds, self.runs_dir, self.chunk_runs = listing, seeds, runs_dir, chunk_runs
        self.spill = runs_dir.parent / f"{TEMP_PREFIX}duckdb-{uuid.uuid4().hex}"  # DuckDB's spill folder
        self.con = con = duckdb.connect(config={"temp_directory": str(self.spill)})
        con.execute("SET parquet_metadata_cache = true")  # lake files are content-addressed, never changed
        con.execute("SET memory_limit = ?", [MEMORY_LIMIT])  # beyond it DuckDB spills to self.spill
        try:
            register_lake_fs(con, listing.uri)
            for name, value in settings.variables().items():
                con.execute(f"SET VARIABLE {name} = ?", [value])
            set_file_lists(con, seeds)
            load_sql(con, RUN_SQL)  # the rest once run_metrics reads the cache (_point_at_chunk)
            check_base_views(con)
            self.typed = {t: _typed_select(con, t) for t in RUN_TABLES}
            for table in _BATCH_TABLES:
                con.execute(f"ALTER VIEW {table} RENAME TO _mq_sql_{table}")
                con.execute(f"CREATE TEMP TABLE _mq_t_{table} AS SELECT * FROM _mq_sql_{table} LIMIT 0")
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM _mq_t_{table}")
        except duckdb.Error as exc:
            con.close()
            raise QueryError(f"loading the SQL views: {exc}") from exc
        except QueryError:
            con.close()
            raise

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
        for t in CONFIG_BOUND:
            files[t].extend(listing.config_level(keys, t))
        try:
            set_file_lists(con, files)
            for table in _BATCH_TABLES:
                con.execute(f"DELETE FROM _mq_t_{table}")
                con.execute(f"INSERT INTO _mq_t_{table} SELECT * FROM _mq_sql_{table}")
            for table in RUN_TABLES:
                source = "run_metrics" if table == "run_metrics" else f"_mq_t_{table}"
                copy_parquet(con, f"SELECT * FROM {source}", self.runs_dir / f"{batch}.{table}.parquet")
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

    def _families_to_redo(self, fingerprints: dict[str, str], settings_key: str,
                          previous_dir: Path | None) -> pl.DataFrame:
        """Every family's fingerprint (table _mq_families); those to recompute: _mq_redo."""
        con = self.con
        members = pl.from_arrow(con.sql(
            f"SELECT DISTINCT {', '.join(FAMILY_KEY)}, run_id FROM _mq_cached_run_metrics").to_arrow_table())
        families = family_fingerprints(members, fingerprints, self.listing, settings_key)
        _register(con, "_mq_families", families)
        source = "_mq_families f"
        if previous_dir is not None:  # unchanged: the same fingerprint in the previous snapshot
            old = _quote(str(previous_dir / "families.parquet"))
            source += f" ANTI JOIN read_parquet('{old}') p ON {_same('f', 'p', (*FAMILY_KEY, 'fingerprint'))}"
        con.execute(f"CREATE TEMP TABLE _mq_redo AS SELECT {', '.join(f'f.{c}' for c in FAMILY_KEY)} FROM {source}")
        return families

    def _point_at_chunk(self, families: pl.DataFrame, first: bool) -> None:
        """The configuration views see the ``families`` (FAMILY_KEY rows) only: their runs'
        metrics and answers (from the cache), their models' configuration-bound files; the
        bootstrap's resamples drawn once for them (:data:`SHARED_MACROS`)."""
        con = self.con
        _register(con, "_mq_chunk", families)
        if first:
            con.execute(f"""CREATE VIEW run_metrics AS SELECT m.* FROM _mq_cached_run_metrics m
                SEMI JOIN _mq_chunk r ON {_same('m', 'r', FAMILY_KEY)}""")
        con.execute("CREATE OR REPLACE TEMP TABLE _mq_redo_runs AS SELECT * FROM _mq_index "
                    "WHERE run_id IN (SELECT run_id FROM run_metrics)")
        redo_batches = sorted(b for (b,) in con.execute("SELECT DISTINCT batch FROM _mq_redo_runs").fetchall())
        for table in ("benchmark_answer", "perplexity", "kld"):
            con.execute(f"DELETE FROM _mq_t_{table}")
            con.execute(f"INSERT INTO _mq_t_{table} " + self._cached(table, redo_batches, "_mq_redo_runs"))
        models = set(families["model"].to_list())
        keys = [k for k in self.listing.config_files if k[0] in models]
        set_file_lists(con, {t: self.seeds[t] + self.listing.config_level(keys, t) for t in CONFIG_BOUND})
        if first:
            load_sql(con, CONFIG_SQL)
            check_config_inputs(con)
        else:
            load_sql(con, [RESAMPLES_SQL])  # the bootstrap's macros as written, drawn again below
        for macro in SHARED_MACROS:  # in this order: the second reads the first
            con.execute(f"CREATE OR REPLACE TEMP TABLE _mq_{macro} AS FROM {macro}()")
            con.execute(f"CREATE OR REPLACE MACRO {macro}() AS TABLE FROM _mq_{macro}")

    def _compute_chunk(self, first: bool) -> None:
        """The configuration tables' rows of the chunk's families, into _mq_out_<table>."""
        con = self.con
        if first:
            con.execute("CREATE TEMP TABLE _mq_t_config_summary AS SELECT * FROM config_summary")
            con.execute("ALTER VIEW config_summary RENAME TO _mq_sql_config_summary")
            con.execute("CREATE VIEW config_summary AS SELECT * FROM _mq_t_config_summary")
        else:
            con.execute("DELETE FROM _mq_t_config_summary")
            con.execute("INSERT INTO _mq_t_config_summary SELECT * FROM _mq_sql_config_summary")
        for table in CONFIG_TABLES:
            if first:
                con.execute(f"CREATE TEMP TABLE _mq_out_{table} AS SELECT * FROM {table}")
            else:
                con.execute(f"INSERT INTO _mq_out_{table} SELECT * FROM {table}")

    def _write_config_tables(self, snap_dir: Path, previous_dir: Path | None) -> None:
        """The configuration tables: the redone families' rows, plus the unchanged families'
        rows of the previous snapshot, as they were."""
        con = self.con
        for table in CONFIG_TABLES:
            query = f"SELECT * FROM _mq_out_{table}"
            if previous_dir is not None:
                old = _quote(str(previous_dir / f"{table}.parquet"))
                query += (f" UNION ALL SELECT {_typed_select(con, table)} FROM read_parquet('{old}') p "
                          f"SEMI JOIN _mq_families f ON {_same('p', 'f', FAMILY_KEY)} "
                          f"ANTI JOIN _mq_redo r ON {_same('p', 'r', FAMILY_KEY)}")
            copy_parquet(con, f"SELECT * FROM ({query}) ORDER BY {TABLE_ORDER[table]}", snap_dir / f"{table}.parquet")

    def _chunks(self, max_runs: int) -> list[pl.DataFrame]:
        """The families to redo in chunks of about ``max_runs`` runs (a bigger family: alone)."""
        sizes = pl.from_arrow(self.con.sql(
            f"SELECT {', '.join(f'r.{c}' for c in FAMILY_KEY)}, count(m.run_id) AS runs FROM _mq_redo r "
            f"LEFT JOIN _mq_cached_run_metrics m ON {_same('m', 'r', FAMILY_KEY)} "
            f"GROUP BY ALL ORDER BY ALL").to_arrow_table())
        chunks: list[list[int]] = []
        total = 0
        for i, runs in enumerate(sizes["runs"].to_list()):
            if not chunks or total + runs > max_runs:
                chunks.append([])
                total = 0
            chunks[-1].append(i)
            total += runs
        return [sizes[rows].select(FAMILY_KEY) for rows in chunks]

    def write_snapshot(self, index: pl.DataFrame, fingerprints: dict[str, str], settings_key: str,
                       snap_dir: Path, previous_dir: Path | None) -> tuple[int, int]:
        """Write the snapshot's tables into ``snap_dir``; return (families, recomputed). The
        families to recompute go through the configuration views in chunks of about
        ``self.chunk_runs`` runs (memory: the bootstrap holds runs x resamples rows)."""
        con = self.con
        try:
            set_file_lists(con, self.seeds)
            for table in RUN_BOUND:  # nothing of the last batch stays visible
                con.execute(f"DELETE FROM _mq_t_{table}")
            _register(con, "_mq_index", index.select("run_id", "batch"))
            all_batches = sorted(set(index["batch"].to_list()))
            con.execute("ALTER VIEW run_metrics RENAME TO _mq_sql_run_metrics")
            con.execute("CREATE TEMP TABLE _mq_cached_run_metrics AS " + self._cached("run_metrics", all_batches, "_mq_index"))
            families = self._families_to_redo(fingerprints, settings_key, previous_dir)
            n_redo = _count(con, "_mq_redo")
            chunks = self._chunks(self.chunk_runs) or [pl.DataFrame(schema={c: pl.Utf8 for c in FAMILY_KEY})]
            for i, chunk in enumerate(chunks):
                self._point_at_chunk(chunk, first=i == 0)
                self._compute_chunk(first=i == 0)
            self._write_config_tables(snap_dir, previous_dir)
            copy_parquet(con, "SELECT * FROM _mq_cached_run_metrics ORDER BY ALL", snap_dir / "run_metrics.parquet")
            for table in ("run_energy", "run_accuracy"):
                source = self._cached(table, all_batches, "_mq_index")
                copy_parquet(con, f"SELECT * FROM ({source}) ORDER BY ALL", snap_dir / f"{table}.parquet")
        except duckdb.Error as exc:
            raise QueryError(f"computing the configuration tables: {exc}") from exc
        families.write_parquet(snap_dir / "families.parquet")
        fsync_file(snap_dir / "families.parquet")
        return families.height, n_redo
