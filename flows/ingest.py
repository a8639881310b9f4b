"""The ``ingest-submissions`` flow: community bundles from a drop folder, each once."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mqepi import Lake, ingest_drop_folder


@task(name="ingest drop folder", cache_policy=NO_CACHE, persist_result=False)
def ingest_folder(drop: str, lake: str | None, quarantine: str, state: str) -> list[dict]:
    return [o.__dict__ for o in ingest_drop_folder(drop, Lake(lake), quarantine, state)]


@flow(name="ingest-submissions")
def ingest_submissions(drop: str = "submissions", lake: str | None = None, quarantine: str | None = None,
                       state: str | None = None) -> list[dict]:
    """Validate and ingest every new bundle (folder or .zip) in ``drop``; rejected bundles go
    to ``quarantine`` (default ``<drop>/../quarantine``) with their report; ``state`` (default
    ``<drop>/../ingested.jsonl``) remembers what was processed."""
    drop_path = Path(drop)
    quarantine = quarantine or str(drop_path.parent / "quarantine")
    state = state or str(drop_path.parent / "ingested.jsonl")
    outcomes = ingest_folder(drop, lake, quarantine, state)
    logger = get_run_logger()
    for o in outcomes:
        logger.info(f"{o['bundle']}: {o['status']}" + (f", {o['events']} events" if o["events"] else "")
                    + (f", {o['problems']} problems, quarantined to {o['quarantined_to']}" if o["problems"] else ""))
    if not outcomes:
        logger.info(f"{drop}: no new bundles")
    return outcomes
