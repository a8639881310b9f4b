"""mqepi: which per-layer quantization of an LLM gives the most intelligence per joule.

The library under the flows and the CLI. Importing it needs no Prefect and loads nothing
else: each name of the public API below is imported on first use.

    >>> from mqepi import Lake, connect, load_map, load_profile, expand
    >>> lake = Lake("lake")                                   # the event lake
    >>> connect(lake).sql("SELECT config_id, epi FROM config_summary").pl()
    >>> profile = load_profile("smollm2-135m")
    >>> expand(load_map("quant_maps/smollm2-135m/mix_high_early.json"), profile).bits_per_weight

Public API (the flows import nothing else):

* the lake: :class:`Lake`, :func:`connect` (DuckDB with every view loaded);
* quantization: :func:`load_profile`, :func:`load_map`, :func:`expand` (per-tensor types and
  bytes of a map), :func:`quantize`;
* measurement: :class:`SweepSpec`, :func:`run_sweep`, :func:`is_transient` (which errors a
  stage may retry); several clusters: :func:`plan_clusters` (who measures which pair),
  :func:`child_name` (a cluster's share's sweep id), :func:`finished_by`;
* results: :func:`recompute` (the materialised frontier snapshot), :func:`build_report`;
* the energy-aware search: :class:`ProbeSettings`, :func:`run_probes`, :class:`SearchSettings`,
  :func:`run_search` (probe, fit, optimise), :func:`write_maps`, :func:`paper_baselines` and
  :func:`sweep_name` (what the verification sweep measures, and its name), :func:`verdict`
  (measured vs predicted);
* community data: :func:`ingest`, :func:`ingest_drop_folder`;
* :class:`MqepiError`, the base of every error mqepi raises on purpose.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: What every event this process records names as its producer.
PRODUCER = f"mqepi/{__version__}"

#: Public name -> the module that defines it (imported lazily, so ``import mqepi`` stays fast).
API = {
    "Lake": "mqepi.lake.store",
    "compact": "mqepi.lake.compact",
    "connect": "mqepi.results.sql",
    "load_profile": "mqepi.quant.maps",
    "load_map": "mqepi.quant.maps",
    "expand": "mqepi.quant.expansion",
    "quantize": "mqepi.quant.quantize",
    "SweepSpec": "mqepi.sweep.spec",
    "run_sweep": "mqepi.sweep.run",
    "is_transient": "mqepi.sweep.run",
    "plan_clusters": "mqepi.sweep.clusters",
    "child_name": "mqepi.sweep.clusters",
    "finished_by": "mqepi.sweep.clusters",
    "recompute": "mqepi.results.snapshots",
    "build_report": "mqepi.results.report.write",
    "ProbeSettings": "mqepi.search.probes",
    "run_probes": "mqepi.search.probes",
    "SearchSettings": "mqepi.search.run",
    "run_search": "mqepi.search.run",
    "write_maps": "mqepi.search.run",
    "verdict": "mqepi.search.verify",
    "paper_baselines": "mqepi.search.verify",
    "sweep_name": "mqepi.search.verify",
    "ingest": "mqepi.community.ingest",
    "ingest_drop_folder": "mqepi.community.ingest",
    "MqepiError": "mqepi.errors",
}

__all__ = ["PRODUCER", "__version__", *API]


def __getattr__(name: str):
    module = API.get(name)
    if module is None:
        raise AttributeError(f"module 'mqepi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
