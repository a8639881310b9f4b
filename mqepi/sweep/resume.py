"""Resuming a sweep from the lake: which (configuration, repeat) pairs are finished, which
are still to run, and which runs started and never ended (a killed sweep). Those are marked
failed and redone under a new attempt number (``...-a2``), never continued.

Run ids are ``<sweep>-<model>-<config>-r<repeat>-a<attempt>``: the model is part of the id, so
one sweep name used for two models gives two sets of runs. A ``<sweep>-<model>-<config>`` longer
than :data:`HEAD_MAX` is cut and ends in a hash of the whole, keeping ids within the schema's
128-character slug. Runs of the older form ``<sweep>-<config>-r<repeat>-a<attempt>`` (no model)
are still recognised, so a lake written before resumes.

Aliases (:func:`plan_aliases`): configurations of the sweep whose effective per-tensor maps are
identical (same base, same ``effective_map_sha256``) are one model; one of them is measured,
every other is an alias that is never to run.
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


@dataclass(frozen=True)
class Alias:
    """A configuration not measured: the same model as ``alias_of`` (same base, identical
    effective per-tensor types), which the sweep measures in its place."""

    config_id: str
    alias_of: str
    map_sha256: str  # this configuration's map
    base_sha256: str
    effective_map_sha256: str  # shared with alias_of

    def row(self, model: str) -> dict[str, list]:
        """The ``config_alias`` event's columns."""
        return {"model": [model], "config_id": [self.config_id], "alias_of": [self.alias_of],
                "map_sha256": [self.map_sha256], "base_sha256": [self.base_sha256],
                "effective_map_sha256": [self.effective_map_sha256]}


def plan_aliases(lake, spec: SweepSpec, identities: list[tuple[str, str, str]], base_sha256: str,
                 plans: list[RunPlan] | None = None) -> dict[str, Alias]:
    """Which of the sweep's configurations are aliases (config id -> :class:`Alias`).

    ``identities``: (config id, map sha256, effective map sha256) of each configuration in
    sweep order, the effective hash from :func:`mqepi.quant.expansion.expand` (what the
    quantize step checks the written file against). Configurations with the same base and
    effective hash form a group; one is measured, the others are its aliases. The measured
    one is, in this order of preference: one the lake already records as measured in place of
    another of the group (``config_alias.alias_of``: an earlier sweep's choice stands, so the
    lake never holds both directions), one with the most finished repeats in this sweep (a
    sweep over a subset measured it before), the first in sweep order. ``plans``: this
    sweep's :func:`plan_runs` (read here if not given)."""
    identities = list({cid: (cid, m, e) for cid, m, e in identities}.values())  # a config named twice counts once
    groups: dict[str, list[tuple[int, str, str]]] = {}
    for index, (config_id, map_sha, effective) in enumerate(identities):
        groups.setdefault(effective, []).append((index, config_id, map_sha))
    groups = {e: members for e, members in groups.items() if len(members) > 1}
    if not groups:
        return {}
    known = lake.read("config_alias", columns=["alias_of", "base_sha256", "effective_map_sha256"], model=spec.model)
    known = known.filter(pl.col("base_sha256") == base_sha256)
    measured_before = set(zip(known["effective_map_sha256"], known["alias_of"]))
    if plans is None:
        plans = plan_runs(lake, spec, [cid for _, cid, _ in (m for ms in groups.values() for m in ms)])
    finished: dict[str, int] = {}
    for p in plans:
        finished[p.config_id] = finished.get(p.config_id, 0) + p.done
    aliases = []
    for effective, members in groups.items():
        _, measured, _ = min(members, key=lambda m: ((effective, m[1]) not in measured_before,
                                                     -finished.get(m[1], 0), m[0]))
        aliases += [(index, Alias(config_id, measured, map_sha, base_sha256, effective))
                    for index, config_id, map_sha in members if config_id != measured]
    return {a.config_id: a for _, a in sorted(aliases, key=lambda ia: ia[0])}


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
            "message": ["interrupted: started and never finished; marked failed when the sweep resumed"],
            "hardware_id": [first.get("hardware_id")]}
