"""The ``sweep-clusters`` flow: one sweep spread over several clusters' work pools.

:func:`run_clusters` shares the sweep's (configuration, repeat) pairs among the clusters
(:func:`mqepi.plan_clusters`; the shares given by earlier calls are read back from Prefect,
the ``pairs`` of each share's flow runs, so they stay put), triggers one ``sweep/<cluster>`` deployment run per cluster that
is up and has work, waits for all of them, and reports per cluster from the lake. Needs a
Prefect server (``PREFECT_API_URL``) with the pools and deployments of ``mqepi deploy`` and a
worker on each cluster's pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from mqepi import Lake, MqepiError, SweepSpec, child_name, finished_by, plan_clusters
from mqepi.flows.pools import deployment_parameters, earlier_shares, pools_up, wait_all
from mqepi.flows.sweep import parameters

#: SweepSpec fields a cluster's deployment sets for its site (never sent by the parent).
SITE_FIELDS = ("cluster",)


@dataclass
class ClustersResult:
    sweep_id: str
    total: int
    unstarted: dict[str, int]  # cluster (down) -> pairs left unstarted
    states: dict[str, str] = field(default_factory=dict)  # cluster -> final flow run state
    finished: dict[str, int] = field(default_factory=dict)  # cluster -> pairs finished there, in all

    @property
    def complete(self) -> bool:
        return sum(self.finished.values()) == self.total

    def summary(self) -> dict:
        return {"sweep_id": self.sweep_id, "pairs": self.total, "states": self.states, "finished": self.finished,
                "unstarted": self.unstarted, "complete": self.complete}


def child_parameters(spec: SweepSpec, child: str, pairs: list, lake: str, site: dict) -> dict:
    """The ``sweep`` flow parameters of one cluster's share (the site's own defaults kept:
    its cluster config, and its meter when the deployment names one)."""
    params = parameters(spec)
    for key in (*SITE_FIELDS, *(k for k in ("meter",) if k in site)):
        params.pop(key, None)
    return {**params, "name": child, "pairs": [list(p) for p in pairs], "lake": lake}


def run_clusters(spec: SweepSpec, clusters: list[str], lake: Lake, *, rebalance: bool = False,
                 progress: Callable[[str], None] = print) -> ClustersResult:
    """Run ``spec`` over ``clusters`` (work pool names); see the module docstring."""
    before = earlier_shares({c: child_name(spec.sweep_id, c) for c in clusters})
    assignment = plan_clusters(spec, lake, clusters, pools_up(clusters), rebalance=rebalance, assigned=before,
                               progress=progress)
    result = ClustersResult(spec.sweep_id, assignment.total, {c: len(p) for c, p in assignment.unstarted.items()})
    flow_runs = {}
    for cluster, share in assignment.shares.items():
        if not share.up or not share.pairs:
            continue
        try:
            site = deployment_parameters(f"sweep/{cluster}")
        except Exception as exc:  # noqa: BLE001 - Prefect's lookup error, named in one line
            raise MqepiError(f"cluster {cluster}: no deployment sweep/{cluster} ({exc}); run `mqepi deploy`") from None
        child = child_name(spec.sweep_id, cluster)
        params = child_parameters(spec, child, share.pairs, lake.uri, site)
        flow_runs[cluster] = run_deployment(f"sweep/{cluster}", parameters=params, timeout=0, flow_run_name=child).id
    result.states = wait_all(flow_runs, progress) if flow_runs else {}
    result.finished = finished_by(lake, spec, clusters)
    for cluster in clusters:
        state = result.states.get(cluster, "not started" if assignment.shares[cluster].pairs else "nothing to do")
        progress(f"{cluster}: {state}; {result.finished[cluster]} runs of this sweep finished there in all")
    return result


@flow(name="sweep-clusters", log_prints=False)
def sweep_clusters(clusters: list[str], model: str = "smollm2-135m", configs: list[str] | None = None,
                   repeats: int = 3, benchmarks: dict[str, int | None] | None = None, meter: str = "simulated",
                   lake: str | None = None, name: str | None = None, settings: dict | None = None,
                   rebalance: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """One sweep over several clusters: each runs its share through its ``sweep/<cluster>``
    deployment (its own pool, worker, cluster config and hardware); rerunning resumes each
    cluster's share; ``rebalance`` moves the unstarted share of a cluster that is down.
    ``progress``: where progress lines go (default: the flow's log)."""
    spec = SweepSpec(model=model, configs=configs, repeats=repeats, benchmarks=benchmarks or {"mmlu": 20},
                     meter=meter, name=name, **(settings or {}))
    result = run_clusters(spec, clusters, Lake(lake), rebalance=rebalance, progress=progress or get_run_logger().info)
    return result.summary()
