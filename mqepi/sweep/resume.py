"""Resuming a sweep from the lake: which (configuration, repeat) pairs are finished, which
are still to run, and which runs started and never ended (a killed sweep). Those are marked
failed and redone under a new attempt number (``...-a2``), never continued."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mqepi import PRODUCER
from mqepi.sweep.spec import SweepSpec


@dataclass
class RunPlan:
    config_id: str
    repeat: int
    attempt: int
    run_id: str
    done: bool
    interrupted: list[str] = field(default_factory=list)  # run ids left started: to mark failed


def run_id_for(sweep_id: str, config_id: str, repeat: int, attempt: int) -> str:
    return f"{sweep_id}-{config_id}-r{repeat}-a{attempt}"


def plan_runs(lake, spec: SweepSpec, config_ids: list[str]) -> list[RunPlan]:
    """Which (configuration, repeat) pairs still need a run, from the lake's run events."""
    runs = lake.read("run", columns=["config_id", "run_id", "repeat", "status"], model=spec.model)
    prefix = f"{spec.sweep_id}-"
    runs = runs.filter(pl.col("run_id").str.starts_with(prefix) & pl.col("config_id").is_in(config_ids))
    status = (runs.group_by("config_id", "run_id", "repeat")
              .agg(finished=(pl.col("status") == "finished").any(), failed=(pl.col("status") == "failed").any()))
    plans = []
    for config_id in config_ids:
        for repeat in range(spec.repeats):
            mine = status.filter((pl.col("config_id") == config_id) & (pl.col("repeat") == repeat))
            attempts = [int(r.rsplit("-a", 1)[1]) for r in mine["run_id"] if r.rsplit("-a", 1)[-1].isdigit()]
            done = mine.filter(pl.col("finished") & ~pl.col("failed")).height > 0
            interrupted = sorted(mine.filter(~pl.col("finished") & ~pl.col("failed"))["run_id"].to_list())
            attempt = max(attempts, default=0) + 1
            plans.append(RunPlan(config_id, repeat, attempt, run_id_for(spec.sweep_id, config_id, repeat, attempt),
                                 done, interrupted))
    return plans


def mark_failed(lake, spec: SweepSpec, plan: RunPlan, stale_run_id: str) -> None:
    """Record ``failed`` for a run that started and never ended, copying its ``started`` event."""
    lake.record("run", _failed_row(lake, spec, plan, stale_run_id), producer=PRODUCER)


def _failed_row(lake, spec: SweepSpec, plan: RunPlan, stale_run_id: str) -> dict:
    started = lake.read("run", model=spec.model, config_id=plan.config_id, run_id=stale_run_id)
    first = started.sort("recorded_at_ns").row(0, named=True)
    return {"model": [spec.model], "config_id": [plan.config_id], "run_id": [stale_run_id], "status": ["failed"],
            "repeat": [first["repeat"]], "file_sha256": [first["file_sha256"]], "power_source": [first["power_source"]],
            "host": [first["host"]], "provenance_json": [first["provenance_json"]],
            "message": ["interrupted: started and never finished; marked failed when the sweep resumed"]}
