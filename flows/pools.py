"""Prefect work pools: one per cluster, the deployments bound to them (``mqepi deploy``).

Each cluster gets a work pool of type ``process`` with a concurrency limit of 1 (one flow run
measures a cluster at a time; a second waits in the pool's queue) and the deployment
``sweep/<cluster>`` with that cluster's config (and meter) as default parameters. A site runs
``prefect worker start --pool <cluster>`` beside its cluster; the worker runs the flow there
with the mqepi installed in its environment (deployments load the flows by module path, no
code is pulled). ``recompute-frontier/<name>`` and ``ingest-submissions/<name>`` go to a pool
of their own (``mqepi-lake`` by default), since they read the lake, not a cluster.

Creating is idempotent: an existing pool keeps its settings but gets the concurrency limit of
1 back; deployments are updated in place.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import WorkPoolStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from mqepi.flows.frontier import recompute_frontier
from mqepi.flows.ingest import ingest_submissions
from mqepi.flows.sweep import sweep

#: Work pool of the lake-level flows (recompute-frontier, ingest-submissions).
LAKE_POOL = "mqepi-lake"
#: A worker heard from within this many seconds counts as polling its pool.
WORKER_FRESH_S = 90.0


@dataclass
class Deployed:
    pool: str
    deployment: str  # flow/deployment
    pool_action: str  # created | limit restored | kept


def ensure_pool(client, name: str, limit: int | None = 1) -> str:
    """A ``process`` work pool named ``name`` with ``limit`` concurrent flow runs; what was done."""
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=limit,
                                               base_job_template=ProcessWorker.get_default_base_job_template(),
                                               description="mqepi: one cluster, one measured flow run at a time"
                                               if limit == 1 else "mqepi: lake-level flows"))
        return "created"
    if pool.concurrency_limit != limit:
        client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
        return "limit restored"
    return "kept"


def deploy(clusters: dict[str, str], *, lake: str | None = None, meters: dict[str, str] | None = None,
           name: str = "mqepi", lake_pool: str = LAKE_POOL, frontier_cron: str | None = "0 * * * *",
           drop: str = "submissions", ingest_cron: str | None = None) -> list[Deployed]:
    """Create the pools and deployments: ``sweep/<cluster>`` on pool ``<cluster>`` for each
    ``clusters`` entry (name -> cluster config path as the site's worker sees it), and the
    lake-level flows on ``lake_pool``."""
    meters = meters or {}
    out = []
    with get_client(sync_client=True) as client:
        for cluster, config in clusters.items():
            action = ensure_pool(client, cluster, 1)
            params = {"cluster": config, **({"lake": lake} if lake else {}),
                      **({"meter": meters[cluster]} if cluster in meters else {})}
            sweep.to_deployment(name=cluster, work_pool_name=cluster, parameters=params,
                                entrypoint_type=EntrypointType.MODULE_PATH,
                                description=f"the sweep on cluster {cluster} ({config})").apply()
            out.append(Deployed(cluster, f"sweep/{cluster}", action))
        action = ensure_pool(client, lake_pool, None)
        lake_param = {"lake": lake} if lake else {}
        recompute_frontier.to_deployment(name=name, work_pool_name=lake_pool, cron=frontier_cron, parameters=lake_param,
                                         entrypoint_type=EntrypointType.MODULE_PATH).apply()
        ingest_submissions.to_deployment(name=name, work_pool_name=lake_pool, cron=ingest_cron,
                                         parameters={"drop": drop, **lake_param},
                                         entrypoint_type=EntrypointType.MODULE_PATH).apply()
        out += [Deployed(lake_pool, f"recompute-frontier/{name}", action),
                Deployed(lake_pool, f"ingest-submissions/{name}", action)]
    return out


def pools_up(names: list[str]) -> dict[str, bool]:
    """Whether each pool exists, is not paused and has a worker heard from lately."""
    out = {}
    now = dt.datetime.now(dt.UTC)
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                out[name] = False
                continue
            workers = client.read_workers_for_work_pool(name)
            fresh = any(w.last_heartbeat_time and (now - w.last_heartbeat_time).total_seconds() < WORKER_FRESH_S
                        and str(getattr(w.status, "value", w.status)).upper() == "ONLINE" for w in workers)
            out[name] = pool.status != WorkPoolStatus.PAUSED and fresh
    return out


def deployment_parameters(deployment: str) -> dict:
    """The default parameters of ``flow/deployment`` (raises if there is no such deployment)."""
    with get_client(sync_client=True) as client:
        return dict(client.read_deployment_by_name(deployment).parameters or {})


def earlier_shares(children: dict[str, str]) -> dict[tuple[str, int], str]:
    """(configuration, repeat) -> cluster, from the ``pairs`` parameter of earlier flow runs of
    each cluster's share (cluster -> the share's flow run name, as :func:`run_deployment` named
    it); the latest run wins."""
    out: dict[tuple[str, int], str] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=list(children.values()))),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    cluster_of = {name: cluster for cluster, name in children.items()}
    for run in runs:
        cluster = cluster_of.get(run.name)
        for pair in (run.parameters or {}).get("pairs") or []:
            if cluster and isinstance(pair, list) and len(pair) == 2:
                out[(str(pair[0]), int(pair[1]))] = cluster
    return out


def wait_all(flow_runs: dict[str, object], progress: Callable[[str], None], poll_s: float = 3.0) -> dict[str, str]:
    """Wait for every flow run (cluster -> flow run id) to end; cluster -> final state name."""
    states: dict[str, str] = {}
    seen: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(flow_runs):
            for cluster, run_id in flow_runs.items():
                if cluster in states:
                    continue
                state = client.read_flow_run(run_id).state
                name = state.name if state else "Pending"
                if seen.get(cluster) != name:
                    progress(f"{cluster}: flow run {run_id} {name}")
                    seen[cluster] = name
                if state is not None and state.is_final():
                    states[cluster] = name
            if len(states) < len(flow_runs):
                time.sleep(poll_s)
    return states
