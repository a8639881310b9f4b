"""``mqepi serve``: the three flows as deployments of one long-running process.

``sweep`` (run on demand: ``prefect deployment run 'sweep/<name>' -p ...``),
``recompute-frontier`` (on a cron schedule, hourly by default) and ``ingest-submissions``
(on demand, or every ``ingest_cron``). Needs a Prefect server (``PREFECT_API_URL``).

The sweep deployment runs one flow run at a time (a deployment concurrency limit of 1): a
second run, scheduled or triggered by hand, waits in the queue until the first ends, then
resumes the sweep. The sweep's own locks refuse anything that still gets past (a CLI run).
"""

from __future__ import annotations

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from mqepi.flows.frontier import recompute_frontier
from mqepi.flows.ingest import ingest_submissions
from mqepi.flows.sweep import sweep

DEFAULT_FRONTIER_CRON = "0 * * * *"
#: One sweep flow run at a time; another waits (ENQUEUE) rather than being cancelled.
SWEEP_CONCURRENCY = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def deployments(name: str = "mqepi", *, lake: str | None = None, frontier_cron: str = DEFAULT_FRONTIER_CRON,
                drop: str = "submissions", ingest_cron: str | None = None, cluster: str | None = None) -> list:
    """The three deployments (not yet served)."""
    sweep_params = {"lake": lake, "cluster": cluster}
    return [
        sweep.to_deployment(name=name, parameters={k: v for k, v in sweep_params.items() if v is not None},
                            concurrency_limit=SWEEP_CONCURRENCY),
        recompute_frontier.to_deployment(name=name, cron=frontier_cron,
                                         parameters={"lake": lake} if lake else {}),
        ingest_submissions.to_deployment(name=name, cron=ingest_cron,
                                         parameters={"drop": drop, **({"lake": lake} if lake else {})}),
    ]


def serve_all(name: str = "mqepi", **kwargs) -> None:
    """Serve the deployments until interrupted (Ctrl-C)."""
    serve(*deployments(name, **kwargs))
