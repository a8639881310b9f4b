"""The ``recompute-frontier`` flow: compaction of tables that gathered many small files, then
the derived tables, materialised, and a frontier snapshot recording the lake state (table
versions) it was computed from (cheap when nothing is new)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mqepi import Lake, compact, recompute

#: Compact a table once one of its partitions holds this many small files.
COMPACT_AT_FILES = 64


@task(name="compact small files", cache_policy=NO_CACHE, persist_result=False)
def compact_tables(lake: str | None, at_files: int) -> list[dict]:
    done = compact(Lake(lake), min_files=at_files, writer="recompute-frontier")
    return [r.__dict__ for r in done if r.version is not None]


@task(name="recompute derived tables", cache_policy=NO_CACHE, persist_result=False)
def recompute_tables(lake: str | None, out: str | None) -> dict:
    snap = recompute(Lake(lake), out)
    return {"snapshot": str(snap.path), "lake_state_sha256": snap.lake_state_sha256, "lake_files": snap.lake_files,
            "runs_total": snap.runs_total, "runs_new": snap.runs_new, "reused": snap.reused,
            "seconds": round(snap.seconds, 3)}


@flow(name="recompute-frontier")
def recompute_frontier(lake: str | None = None, out: str | None = None, compact_at_files: int = COMPACT_AT_FILES) -> dict:
    """Compact the partitions that hold at least ``compact_at_files`` small files (a new table
    version; history kept; 0: never), then rebuild the materialised tables (run_metrics,
    config_summary, matched_pairs, pareto_frontier) into a new snapshot under ``out``
    (default: ``derived/`` beside the lake), or reuse the last snapshot when the lake has not
    changed."""
    if compact_at_files > 0:
        for r in compact_tables(lake, compact_at_files):
            get_run_logger().info(f"compacted {r['event_type']}: {r['files_before']} -> {r['files_after']} files "
                                  f"(version {r['version']})")
    result = recompute_tables(lake, out)
    get_run_logger().info(
        ("lake unchanged: snapshot reused " if result["reused"] else f"{result['runs_new']} new runs: snapshot ")
        + f"{result['snapshot']} (lake state {result['lake_state_sha256'][:12]}, {result['runs_total']} runs)")
    return result
