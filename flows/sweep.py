"""The ``sweep`` flow: :func:`mqepi.run_sweep` with every stage a Prefect task."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from mqepi import Lake, SweepSpec, run_sweep
from mqepi.flows.stages import PrefectStages

#: SweepSpec fields that are flow parameters of their own (the rest travel in ``settings``).
OWN_PARAMETERS = ("model", "configs", "repeats", "benchmarks", "cluster", "meter", "name")


@flow(name="sweep", log_prints=False)
def sweep(model: str = "smollm2-135m", configs: list[str] | None = None, repeats: int = 3,
          benchmarks: dict[str, int | None] | None = None, cluster: str | None = None,
          meter: str = "simulated", lake: str | None = None, name: str | None = None,
          settings: dict | None = None, pairs: list[list] | None = None, node_pids: dict | None = None,
          progress: Callable[[str], None] | None = None) -> dict:
    """Measure every (configuration, repeat) of ``model`` not yet finished in the lake.

    ``benchmarks`` maps a benchmark to its number of questions (null: all), default
    ``{"mmlu": 20}``; ``cluster`` is a cluster TOML (none: this machine); ``settings`` holds
    any other :class:`mqepi.SweepSpec` field (ppl_context, idle_s, rpc, ...); ``pairs``, if
    given, the [configuration, repeat] pairs to measure now (a cluster's share).
    Rerunning the same parameters resumes the sweep. ``node_pids`` and ``progress`` are
    for a caller in the same process (the demo): the processes that drive each node's
    simulated power, and where progress lines go (default: the flow's log).
    One process per sweep id and node: a run started while another holds the sweep fails at
    once, naming the holder (its flow run among them)."""
    logger = get_run_logger()
    spec = SweepSpec(model=model, configs=configs, repeats=repeats, benchmarks=benchmarks or {"mmlu": 20},
                     cluster=cluster, meter=meter, name=name, pairs=pairs, **(settings or {}))
    owner = {"prefect_flow_run": str(flow_run.id) if flow_run.id else None,
             "prefect_flow_run_name": flow_run.name or None}
    result = run_sweep(spec, Lake(lake), stages=PrefectStages(), progress=progress or logger.info, node_pids=node_pids,
                       owner=owner)
    logger.info(f"sweep {result.sweep_id}: {len(result.finished)} runs finished, {len(result.skipped)} skipped "
                f"(finished before), {len(result.marked_failed)} interrupted runs marked failed")
    return result.summary()


def parameters(spec: SweepSpec) -> dict:
    """The flow parameters that run ``spec``."""
    fields = {"model": spec.model, "configs": spec.configs, "repeats": spec.repeats, "benchmarks": spec.benchmarks,
              "cluster": spec.cluster, "meter": spec.meter, "name": spec.name}
    return {**fields, "settings": {k: v for k, v in spec.identity().items() if k not in OWN_PARAMETERS}}


def run_flow(spec: SweepSpec, lake: str | None = None, *, node_pids: dict | None = None,
             progress: Callable[[str], None] | None = None) -> dict:
    """Run ``spec`` as the ``sweep`` flow in this process (the CLI's ``mqepi sweep`` and the demo)."""
    return sweep(**parameters(spec), lake=lake, node_pids=node_pids, progress=progress)
