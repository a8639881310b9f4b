"""The ``recompute-frontier`` flow: the derived tables, materialised, and a frontier
snapshot recording the lake state it was computed from (cheap when nothing is new)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mqepi import Lake, recompute


@task(name="recompute derived tables", cache_policy=NO_CACHE, persist_result=False)
def recompute_tables(lake: str | None, out: str | None) -> dict:
    snap = recompute(Lake(lake), out)
    return {"snapshot": str(snap.path), "lake_state_sha256": snap.lake_state_sha256, "lake_files": snap.lake_files,
            "runs_total": snap.runs_total, "runs_new": snap.runs_new, "reused": snap.reused,
            "seconds": round(snap.seconds, 3)}


@flow(name="recompute-frontier")
def recompute_frontier(lake: str | None = None, out: str | None = None) -> dict:
    """Rebuild the materialised tables (run_metrics, config_summary, matched_pairs,
    pareto_frontier) into a new snapshot under ``out`` (default: ``derived/`` beside the
    lake), or reuse the last snapshot when the lake has not changed."""
    result = recompute_tables(lake, out)
    get_run_logger().info(
        ("lake unchanged: snapshot reused " if result["reused"] else f"{result['runs_new']} new runs: snapshot ")
        + f"{result['snapshot']} (lake state {result['lake_state_sha256'][:12]}, {result['runs_total']} runs)")
    return result
