"""The ``recompute-frontier`` flow: the derived tables, materialised, and a frontier
snapshot recording the lake state it was computed from (cheap when nothing is new)."""

from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


@task(name="recompute derived tables", cache_policy=NO_CACHE, persist_result=False)
def recompute_tables(lake: Optional[str], out: Optional[str]) -> dict:
    from mqepi.derived import default_out_dir, recompute
    from mqepi.lake import Lake

    lk = Lake(lake)
    snap = recompute(lk, out or default_out_dir(lk))
    return {"snapshot": str(snap.path), "lake_state_sha256": snap.lake_state_sha256, "lake_files": snap.lake_files,
            "runs_total": snap.runs_total, "runs_new": snap.runs_new, "reused": snap.reused,
            "seconds": round(snap.seconds, 3)}


@flow(name="recompute-frontier")
def recompute_frontier(lake: Optional[str] = None, out: Optional[str] = None) -> dict:
    """Rebuild the materialised tables (run_metrics, config_summary, matched_pairs,
    pareto_frontier) into a new snapshot under ``out`` (default: ``derived/`` beside the
    lake), or reuse the last snapshot when the lake has not changed."""
    result = recompute_tables(lake, out)
    get_run_logger().info(
        ("lake unchanged: snapshot reused " if result["reused"] else f"{result['runs_new']} new runs: snapshot ")
        + f"{result['snapshot']} (lake state {result['lake_state_sha256'][:12]}, {result['runs_total']} runs)")
    return result
