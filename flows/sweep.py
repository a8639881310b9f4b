"""The ``sweep`` flow: :func:`mqepi.sweep.run_sweep` with every stage a Prefect task."""

from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger

from mqepi.flows.stages import PrefectStages


@flow(name="sweep", log_prints=False)
def sweep(model: str = "smollm2-135m", configs: Optional[list[str]] = None, repeats: int = 3,
          benchmarks: Optional[dict[str, Optional[int]]] = None, cluster: Optional[str] = None,
          meter: str = "simulated", lake: Optional[str] = None, name: Optional[str] = None,
          settings: Optional[dict] = None) -> dict:
    """Measure every (configuration, repeat) of ``model`` not yet finished in the lake.

    ``benchmarks`` maps a benchmark to its number of questions (null: all), default
    ``{"mmlu": 20}``; ``cluster`` is a cluster TOML (none: this machine); ``settings`` holds
    any other :class:`mqepi.sweep.SweepSpec` field (ppl_context, idle_s, rpc, ...).
    Rerunning the same parameters resumes the sweep."""
    from mqepi.lake import Lake
    from mqepi.sweep import SweepSpec, run_sweep

    logger = get_run_logger()
    spec = SweepSpec(model=model, configs=configs, repeats=repeats, benchmarks=benchmarks or {"mmlu": 20},
                     cluster=cluster, meter=meter, name=name, **(settings or {}))
    result = run_sweep(spec, Lake(lake), stages=PrefectStages(), progress=logger.info)
    logger.info(f"sweep {result.sweep_id}: {len(result.finished)} runs finished, {len(result.skipped)} skipped "
                f"(finished before), {len(result.marked_failed)} interrupted runs marked failed")
    return {"sweep_id": result.sweep_id, "finished": result.finished, "skipped": len(result.skipped),
            "marked_failed": result.marked_failed, "wall_s": round(result.wall_s, 1),
            "seconds": {k: round(v, 2) for k, v in result.seconds.items()}}
