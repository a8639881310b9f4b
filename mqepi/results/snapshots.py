"""Materialised derived tables, recomputed incrementally (the ``recompute-frontier`` flow).

The SQL views (``analysis/*.sql``) stay the contract; :func:`recompute` writes their results
as Parquet snapshots and reruns only what new events can change. Output folder (``out_dir``;
by default ``derived/`` beside the lake, :func:`default_out_dir`)::

    latest.json                          the newest snapshot (replaced atomically)
    snapshots/<UTC time>-<state[:12]>/   one immutable folder per recompute:
        config_summary.parquet  matched_pairs.parquet  pareto_frontier.parquet
        run_metrics.parquet  run_energy.parquet  run_accuracy.parquet
        run_index.parquet    run_id -> input fingerprint -> cache batch
        files.parquet        the lake's active files it read (the next recompute reads the logs
                             from its table_heads on: only what was appended since)
        families.parquet     (model, origin, power_source, hardware_id) -> input fingerprint
        snapshot.json        lake state, counts, settings, SQL hashes, seconds
    runs/<batch>.<table>.parquet         per-run cache: content-addressed, never modified
    seeds/                               zero-row schema files, only for event types of which
                                         the lake lacks the current seed (the lake is never written)

When ``latest.json`` names a snapshot of the same lake state and settings
(:mod:`mqepi.results.listing`), it is returned as reused (a listing, no DuckDB).

**Per-run cache.** Its unit is a ``run_id``. A run whose fingerprint and cache batch are in
the previous snapshot's index is not recomputed: a finished run whose events are all in never
changes; an unfinished one gets a new fingerprint with its next event. The others are
computed in batches (:class:`mqepi.results.engine.Engine`); a batch's name hashes its runs'
fingerprints and the run-level SQL, so a cache file is never rewritten. (This assumes what
the SQL does today: per-run views read a run's own events and configuration-bound events of
its own model and configuration only; tests/test_derived.py compares with the live views.)

**Configuration tables** are recomputed per family (model, origin, power_source, hardware_id) whose
fingerprint changed. Results equal a recompute into an empty folder (tests/test_derived.py)
up to DuckDB's own last-bit float noise: the views queried twice over the same lake can
differ by an ulp (parallel sums).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mqepi import __version__
from mqepi.analysis import RUNS_SQL, SQL_FILES
from mqepi.analysis.bootstrap import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from mqepi.analysis.stats import DEFAULT_Z
from mqepi.errors import LakeError
from mqepi.lake.delta import head
from mqepi.lake.durable import TEMP_PREFIX, fsync_dir, fsync_file, write_atomic
from mqepi.lake.store import Lake
from mqepi.results.engine import CONFIG_TABLES, DEFAULT_CHUNK_RUNS, RUN_TABLES, Engine, Settings
from mqepi.results.listing import LISTING_FILE, LakeListing, batches, digest, list_lake, run_fingerprints, save_listing
from mqepi.results.sql import duckdb_prefix
from mqepi.schemas import EVENT_TYPES

#: Version of the cache and snapshot layout; a change recomputes every run.
CACHE_FORMAT = 1
#: Tables of a snapshot (Snapshot.tables keys).
SNAPSHOT_TABLES = (*CONFIG_TABLES, "run_metrics", "run_energy", "run_accuracy")
#: At most this many runs, and (beyond the first run) this many bytes of their Parquet
#: files, per DuckDB pass of the run stage (memory: about 10x the bytes).
DEFAULT_BATCH_RUNS = 2000
DEFAULT_BATCH_BYTES = 256 * 2**20
LATEST = "latest.json"
#: The derived views a snapshot materialises: ``mqepi sql`` reads them from it (projections).
PROJECTED_VIEWS = SNAPSHOT_TABLES


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
class _Keys:
    """What a snapshot's results depend on besides the lake."""

    settings: Settings
    sql_sha: dict[str, str]  # SQL file name -> sha256 of its text
    settings_key: str  # every setting and every SQL file: the configuration tables
    run_key: str  # z and the SQL files up to runs.sql: the per-run cache


def as_of_versions(lake: Lake, ref: str, out_dir: Path | None = None) -> dict[str, int]:
    """The table versions a snapshot read (``mqepi sql --as-of``): ``ref`` is a snapshot folder
    or its snapshot.json, ``latest`` (the newest snapshot of ``out_dir``, by default the
    lake's :func:`default_out_dir`), or explicit versions ``type=V,type=V`` (tables not named:
    their latest version)."""
    if ref == "latest":
        out = out_dir or default_out_dir(lake)
        latest = _read_json(out / LATEST)
        if latest is None:
            raise LakeError(f"--as-of latest: no snapshot in {out} (run `mqepi results recompute` first)")
        ref = str(out / latest["snapshot"])
    if "=" in ref and not Path(ref).exists():
        versions = {}
        for part in ref.split(","):
            name, _, value = part.partition("=")
            if name.strip() not in EVENT_TYPES or not value.strip().isdigit():
                raise LakeError(f"--as-of: {part!r} is not TYPE=VERSION with a known event type ({', '.join(EVENT_TYPES)})")
            versions[name.strip()] = int(value)
        return versions
    path = Path(ref)
    meta = _read_json(path / "snapshot.json" if path.is_dir() else path)
    if meta is None or not isinstance(meta.get("table_versions"), dict):
        raise LakeError(f"--as-of: {ref} is not a snapshot folder or snapshot.json with table_versions "
                        "(snapshots record them since the lake moved to Delta tables)")
    return {t: int(v) for t, v in meta["table_versions"].items() if t in EVENT_TYPES}


def default_out_dir(lake: Lake) -> Path:
    """``derived/`` beside a local lake's root folder; for an object-store lake, a local folder
    per lake URI under the cache (``$MQEPI_CACHE/derived/<sha256 of the URI>[:16]``): the
    derived tables are projections, rebuilt from the lake wherever they are lost."""
    if "://" in lake.uri:
        cache = Path(os.environ.get("MQEPI_CACHE") or Path.home() / ".cache" / "mqepi")
        return cache / "derived" / digest(lake.uri)[:16]
    return Path(lake.root).parent / "derived"


def lake_heads(lake: Lake) -> dict[str, list] | None:
    """Per event type, [latest version, sha256 of its log entry] (:func:`mqepi.lake.delta.head`):
    the lake's state told without reading the logs through; None for a lake pinned at past
    versions (time travel), whose state only the logs tell."""
    if lake.pinned is not None:
        return None
    return {t: list(head(lake.fs, lake.table_dir(t))) for t in EVENT_TYPES}


def _keys(settings: Settings) -> _Keys:
    sql_sha = {path.name: digest(path.read_text()) for path in SQL_FILES}
    settings_key = digest(CACHE_FORMAT, json.dumps(settings.__dict__, sort_keys=True), json.dumps(sql_sha, sort_keys=True))
    run_sql = SQL_FILES[:SQL_FILES.index(RUNS_SQL) + 1]  # macros, views, runs
    run_key = digest(CACHE_FORMAT, float(settings.z), *(f"{p.name}:{sql_sha[p.name]}" for p in run_sql))
    return _Keys(settings, sql_sha, settings_key, run_key)


def _json_bytes(content: dict) -> bytes:
    return (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _snapshot_from_json(path: Path, meta: dict, *, reused: bool, seconds: float) -> Snapshot:
    return Snapshot(path=path, lake_state_sha256=meta["lake_state_sha256"], lake_files=meta["lake_files"],
                    runs_total=meta["runs"]["total"], runs_new=0 if reused else meta["runs"]["new"], reused=reused,
                    seconds=seconds, tables={name: path / f"{name}.parquet" for name in meta["tables"]})


def _previous(out: Path) -> tuple[Path | None, dict | None]:
    """The folder and snapshot.json of the snapshot ``latest.json`` names (None, None: none)."""
    latest = _read_json(out / LATEST)
    if latest is None or not latest.get("snapshot"):
        return None, None
    previous_dir = out / latest["snapshot"]
    return previous_dir, _read_json(previous_dir / "snapshot.json")


def _reusable(previous_dir: Path | None, previous: dict | None, state: str, keys: _Keys) -> bool:
    """The previous snapshot is of this lake state and these settings, and complete."""
    return previous is not None and previous.get("lake_state_sha256") == state \
        and previous.get("settings_sha256") == keys.settings_key \
        and all((previous_dir / f"{t}.parquet").is_file() for t in previous.get("tables", ()))


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


def _cached_runs(previous_dir: Path | None, previous: dict | None, keys: _Keys, fingerprints: dict[str, str],
                 runs_dir: Path) -> dict[str, str]:
    """run_id -> batch of the runs cached under their current inputs (previous snapshot's index)."""
    assigned: dict[str, str] = {}
    if previous is None or previous.get("run_key") != keys.run_key or not (previous_dir / "run_index.parquet").is_file():
        return assigned
    present: dict[str, bool] = {}
    for run_id, fp, batch in pl.read_parquet(previous_dir / "run_index.parquet").iter_rows():
        if fingerprints.get(run_id) != fp:
            continue
        if batch not in present:
            present[batch] = all((runs_dir / f"{batch}.{t}.parquet").is_file() for t in RUN_TABLES)
        if present[batch]:
            assigned[run_id] = batch
    return assigned


def _compute_runs(engine: Engine, todo: list[list[str]], keys: _Keys, fingerprints: dict[str, str],
                  assigned: dict[str, str], progress: Callable[[str], None]) -> None:
    """Compute and cache each batch of runs (unless its cache files exist); record its batch."""
    for i, runs in enumerate(todo, 1):
        t1 = time.perf_counter()
        batch = digest(keys.run_key, *(f"{r} {fingerprints[r]}" for r in runs))
        if not all((engine.runs_dir / f"{batch}.{t}.parquet").is_file() for t in RUN_TABLES):
            engine.compute_batch(runs, batch)
        assigned.update((r, batch) for r in runs)
        progress(f"batch {i}/{len(todo)}: {len(runs)} runs, {time.perf_counter() - t1:.2f} s")


def _write_tables(engine: Engine, assigned: dict[str, str], fingerprints: dict[str, str], keys: _Keys,
                  snap_dir: Path, reuse_dir: Path | None, progress: Callable[[str], None]) -> dict[str, int]:
    """The snapshot's tables and run index into ``snap_dir``; the family counts."""
    t2 = time.perf_counter()
    index = pl.DataFrame({"run_id": list(assigned), "fingerprint": [fingerprints[r] for r in assigned],
                          "batch": list(assigned.values())},
                         schema={"run_id": pl.Utf8, "fingerprint": pl.Utf8, "batch": pl.Utf8}).sort("run_id")
    n_families, n_redo = engine.write_snapshot(index, fingerprints, keys.settings_key, snap_dir, reuse_dir)
    progress(f"configuration tables: {n_redo} of {n_families} families recomputed, {time.perf_counter() - t2:.2f} s")
    index.write_parquet(snap_dir / "run_index.parquet")
    fsync_file(snap_dir / "run_index.parquet")
    return {"total": n_families, "recomputed": n_redo}


def _meta(lake: Lake, listing: LakeListing, keys: _Keys, runs: dict[str, int], families: dict[str, int],
          t0: float) -> dict:
    """The content of snapshot.json."""
    return {
        "lake": lake.uri, "lake_state_sha256": listing.state, "lake_files": len(listing.relative),
        "table_versions": listing.versions, "runs": runs, "families": families,
        "computed_at": datetime.now(UTC).isoformat(), "mqepi": __version__,
        "settings": keys.settings.__dict__, "settings_sha256": keys.settings_key, "run_key": keys.run_key,
        "sql_sha256": keys.sql_sha, "seconds": round(time.perf_counter() - t0, 3), "tables": list(SNAPSHOT_TABLES),
    }


def _new_snapshot(lake: Lake, out: Path, listing: LakeListing, keys: _Keys, previous_dir: Path | None,
                  previous: dict | None, progress: Callable[[str], None], t0: float, batch_runs: int,
                  batch_bytes: int, chunk_runs: int, heads: dict | None) -> tuple[Path, dict]:
    """Compute the runs not cached, then the configuration tables into a new snapshot folder,
    published by a rename (a new name: never replacing a snapshot); its path and metadata."""
    runs_dir, snaps_dir = out / "runs", out / "snapshots"
    runs_dir.mkdir(parents=True, exist_ok=True)
    snaps_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = run_fingerprints(listing)
    assigned = _cached_runs(previous_dir, previous, keys, fingerprints, runs_dir)
    runs = {"total": len(fingerprints), "new": len(fingerprints) - len(assigned), "cached": len(assigned)}
    todo = batches(lake, listing, sorted(r for r in fingerprints if r not in assigned), batch_runs, batch_bytes)
    progress(f"runs: {runs['new']} to compute ({runs['cached']} cached), {len(todo)} batches")
    reuse_families = previous is not None and previous.get("settings_sha256") == keys.settings_key \
        and (previous_dir / "families.parquet").is_file()
    engine = Engine(listing, _seed_lists(listing, out), keys.settings, runs_dir, chunk_runs)
    try:
        _compute_runs(engine, todo, keys, fingerprints, assigned, progress)
        final = snaps_dir / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{listing.state[:12]}"
        temp_dir = snaps_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        temp_dir.mkdir()
        try:
            families = _write_tables(engine, assigned, fingerprints, keys, temp_dir,
                                     previous_dir if reuse_families else None, progress)
            meta = _meta(lake, listing, keys, runs, families, t0)
            if heads is not None and lake_heads(lake) == heads:  # nothing committed while computing
                meta["table_heads"] = heads  # the listing is of exactly these versions: the next one resumes it
                save_listing(listing, temp_dir / LISTING_FILE)
                fsync_file(temp_dir / LISTING_FILE)
            (temp_dir / "snapshot.json").write_bytes(_json_bytes(meta))
            fsync_file(temp_dir / "snapshot.json")
            os.rename(temp_dir, final)
        finally:
            if temp_dir.exists():
                shutil.rmtree(temp_dir)
    finally:
        engine.close()
    fsync_dir(snaps_dir)
    return final, meta


def recompute(lake: Lake, out_dir: str | os.PathLike | None = None, *, progress: Callable[[str], None] = lambda s: None,
              seed: int = DEFAULT_SEED, bootstrap: int = DEFAULT_BOOTSTRAP, ppl_margin: float | None = None,
              z: float = DEFAULT_Z, batch_runs: int = DEFAULT_BATCH_RUNS,
              batch_bytes: int = DEFAULT_BATCH_BYTES, chunk_runs: int = DEFAULT_CHUNK_RUNS) -> Snapshot:
    """Materialise the derived tables of ``lake`` into a new snapshot under ``out_dir``
    (default: ``derived/`` beside a local lake, :func:`default_out_dir`), or
    return the latest one, marked ``reused``, when neither the lake nor the settings changed.

    Per-run rows are computed only for runs not cached before (new, or changed since, as an
    unfinished run that got its next events); the configuration tables only for the families
    (model, origin, power_source, hardware_id) those runs or new config-level events touch. The result
    equals a recompute into an empty folder. The lake is only read. ``seed``, ``bootstrap``,
    ``ppl_margin`` and ``z`` are the SQL tunables ``mqepi_seed``, ``mqepi_bootstrap``,
    ``mqepi_ppl_margin``, ``mqepi_z``; ``batch_runs`` and ``batch_bytes`` (Parquet bytes
    of the runs' files) bound one DuckDB pass of the run stage, and so its memory;
    ``chunk_runs`` the runs of the families in one pass of the configuration stage.
    """
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else default_out_dir(lake)
    keys = _keys(Settings(seed, bootstrap, ppl_margin, z))
    previous_dir, previous = _previous(out)
    heads = lake_heads(lake) if lake.exists() else None
    if heads is not None and previous is not None and previous.get("table_heads") == heads \
            and _reusable(previous_dir, previous, previous.get("lake_state_sha256"), keys):
        progress(f"lake unchanged since {previous_dir.name} (every table at the version it read): reused")
        return _snapshot_from_json(previous_dir, previous, reused=True, seconds=time.perf_counter() - t0)
    since = None
    if previous is not None and isinstance(previous.get("table_heads"), dict):  # read the logs from there on
        since = (previous_dir / LISTING_FILE, previous["table_heads"])
    listing = list_lake(lake, since)
    progress(f"lake {lake.uri}: {len(listing.relative)} files, state {listing.state[:12]}, "
             f"{len(listing.run_files)} runs ({time.perf_counter() - t0:.2f} s)")
    if _reusable(previous_dir, previous, listing.state, keys):
        progress(f"lake unchanged since {previous_dir.name}: reused")
        return _snapshot_from_json(previous_dir, previous, reused=True, seconds=time.perf_counter() - t0)
    final, meta = _new_snapshot(lake, out, listing, keys, previous_dir, previous, progress, t0, batch_runs,
                                batch_bytes, chunk_runs, heads)
    write_atomic(out / LATEST, _json_bytes({"snapshot": f"snapshots/{final.name}", "lake_state_sha256": listing.state,
                                            "settings_sha256": keys.settings_key, "computed_at": meta["computed_at"]}))
    progress(f"snapshot {final}")
    return _snapshot_from_json(final, meta, reused=False, seconds=time.perf_counter() - t0)


def projection(lake: Lake, out_dir: str | os.PathLike | None = None, *,
               progress: Callable[[str], None] = lambda s: None) -> Snapshot | None:
    """The snapshot whose tables stand for the derived views of ``mqepi sql`` (default
    settings): for a lake at its latest versions, the latest snapshot when it is of the lake's
    current state, else a new one, computed incrementally (:func:`recompute`); for a lake
    pinned at past versions (``--as-of``), an existing snapshot of exactly that state. None
    where there is none or the derived folder cannot be written: the caller evaluates the
    live views."""
    out = Path(out_dir) if out_dir is not None else default_out_dir(lake)
    if lake.pinned is None:
        try:
            return recompute(lake, out, progress=progress)
        except OSError as exc:
            progress(f"derived tables: cannot write {out} ({exc.strerror or exc}): evaluating the live views")
            return None
    keys = _keys(Settings())
    state = list_lake(lake).state
    for meta_path in sorted((out / "snapshots").glob("*/snapshot.json"), reverse=True):
        meta = _read_json(meta_path)
        if meta is not None and _reusable(meta_path.parent, meta, state, keys):
            return _snapshot_from_json(meta_path.parent, meta, reused=True, seconds=0.0)
    progress(f"no snapshot of the lake state {state[:12]} in {out}: evaluating the live views")
    return None


def snapshot_files(lake: Lake, snapshot: Snapshot) -> dict[str, list[str]] | None:
    """Per event type, the active files the snapshot was computed from (its listing, as paths
    DuckDB opens), or None when it kept none: what ``mqepi sql`` points the base views at, so
    that they and the derived views read one lake state without reading the logs again."""
    path = snapshot.path / LISTING_FILE
    if not path.is_file():
        return None
    prefix = duckdb_prefix(lake.uri, lake.root)
    out: dict[str, list[str]] = {t: [] for t in EVENT_TYPES}
    for event_type, rel in pl.read_parquet(path, columns=["type", "path"]).iter_rows():
        if event_type in out:
            out[event_type].append(f"{prefix}/{event_type}/{rel}")
    return {t: sorted(paths) for t, paths in out.items()}
