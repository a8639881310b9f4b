"""Resuming a sweep from the lake: which (configuration, repeat) pairs are finished, which
are still to run, and which runs started and never ended (a killed sweep). Those are marked
failed and redone under a new attempt number (``...-a2``), never continued.

Run ids are ``<sweep>-<model>-<config>-r<repeat>-a<attempt>``: the model is part of the id, so
one sweep name used for two models gives two sets of runs. A ``<sweep>-<model>-<config>`` longer
than :data:`HEAD_MAX` is cut and ends in a hash of the whole, keeping ids within the schema's
128-character slug. Runs of the older form ``<sweep>-<config>-r<repeat>-a<attempt>`` (no model)
are still recognised, so a lake written before resumes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import polars as pl

from mqepi import PRODUCER
from mqepi.sweep.spec import SweepSpec

#: Longest ``<sweep>-<model>-<config>`` kept as it is in a run id; longer ones end in a hash.
HEAD_MAX = 100


@dataclass
class RunPlan:
    config_id: str
    repeat: int
    attempt: int
    run_id: str
    done: bool
    interrupted: list[str] = field(default_factory=list)  # run ids left started: to mark failed


def run_id_for(sweep_id: str, model: str, config_id: str, repeat: int, attempt: int) -> str:
    """The run id of one attempt at (configuration, repeat) of ``model`` in sweep ``sweep_id``."""
    return f"{_run_prefix(sweep_id, model, config_id, repeat)}{attempt}"


def _run_prefix(sweep_id: str, model: str, config_id: str, repeat: int) -> str:
    """Every attempt's run id of that (sweep, model, configuration, repeat) is this + the attempt."""
    head = f"{sweep_id}-{model}-{config_id}"
    if len(head) > HEAD_MAX:
        head = f"{head[:HEAD_MAX - 13]}-{hashlib.sha256(head.encode()).hexdigest()[:12]}"
    return f"{head}-r{repeat}-a"


def attempt_of(run_id: str, sweep_id: str, model: str, config_id: str, repeat: int) -> int | None:
    """The attempt number of ``run_id`` if it is a run of that (sweep, model, configuration,
    repeat) - in the current form or the older one without the model - else None."""
    for prefix in (_run_prefix(sweep_id, model, config_id, repeat), f"{sweep_id}-{config_id}-r{repeat}-a"):
        rest = run_id[len(prefix):]
        if run_id.startswith(prefix) and rest.isdigit():
            return int(rest)
    return None


def plan_runs(lake, spec: SweepSpec, config_ids: list[str]) -> list[RunPlan]:
    """Which (configuration, repeat) pairs still need a run, from the lake's run events: those
    of this model whose provenance names this sweep and whose run id has the form above."""
    runs = lake.read("run", columns=["config_id", "run_id", "repeat", "status", "provenance_json"], model=spec.model)
    sweep = pl.col("provenance_json").str.json_path_match("$.sweep_id")
    runs = runs.filter((sweep == spec.sweep_id) & pl.col("config_id").is_in(config_ids))
    status = (runs.group_by("config_id", "run_id", "repeat")
              .agg(finished=(pl.col("status") == "finished").any(), failed=(pl.col("status") == "failed").any()))
    plans = []
    for config_id in config_ids:
        for repeat in range(spec.repeats):
            mine = status.filter((pl.col("config_id") == config_id) & (pl.col("repeat") == repeat))
            attempts = {r: attempt_of(r, spec.sweep_id, spec.model, config_id, repeat) for r in mine["run_id"]}
            mine = mine.filter(pl.col("run_id").is_in([r for r, a in attempts.items() if a is not None]))
            done = mine.filter(pl.col("finished") & ~pl.col("failed")).height > 0
            interrupted = sorted(mine.filter(~pl.col("finished") & ~pl.col("failed"))["run_id"].to_list())
            attempt = max((a for a in attempts.values() if a is not None), default=0) + 1
            run_id = run_id_for(spec.sweep_id, spec.model, config_id, repeat, attempt)
            plans.append(RunPlan(config_id, repeat, attempt, run_id, done, interrupted))
    return plans


def mark_failed(lake, spec: SweepSpec, plan: RunPlan, stale_run_id: str, held) -> None:
    """Record ``failed`` for a run that started and never ended, copying its ``started`` event.

    ``held``: the sweep's locks (:class:`mqepi.sweep.exclusive.HeldSweep`), which must be held
    now: only then is a run that never ended surely not one a live process is measuring."""
    held.require(spec, lake)
    lake.record("run", _failed_row(lake, spec, plan, stale_run_id), producer=PRODUCER)


def _failed_row(lake, spec: SweepSpec, plan: RunPlan, stale_run_id: str) -> dict:
    started = lake.read("run", model=spec.model, config_id=plan.config_id, run_id=stale_run_id)
    first = started.sort("recorded_at_ns").row(0, named=True)
    return {"model": [spec.model], "config_id": [plan.config_id], "run_id": [stale_run_id], "status": ["failed"],
            "repeat": [first["repeat"]], "file_sha256": [first["file_sha256"]], "power_source": [first["power_source"]],
            "host": [first["host"]], "provenance_json": [first["provenance_json"]],
            "message": ["interrupted: started and never finished; marked failed when the sweep resumed"]}
