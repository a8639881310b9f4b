"""``mqepi serve`` (the flows as deployments of one process) and ``mqepi deploy`` (work pools,
one per cluster, and deployments bound to them)."""

from __future__ import annotations

import os

import typer

from mqepi.cli._common import State, edge, lake, say
from mqepi.errors import MqepiError
from mqepi.sweep import clusters as multi

app = typer.Typer()


@app.command("serve")
@edge
def serve_command(
    name: str = typer.Option("mqepi", "--name", help="Deployment name of each flow."),
    frontier_cron: str = typer.Option("0 * * * *", "--frontier-cron", help="Schedule of recompute-frontier (cron)."),
    drop: str = typer.Option("submissions", "--drop", help="Drop folder of ingest-submissions."),
    ingest_cron: str | None = typer.Option(None, "--ingest-cron",
                                           help="Schedule of ingest-submissions (cron) [default: on demand]."),
    cluster: str | None = typer.Option(None, "--cluster", help="Default cluster config of the sweep deployment."),
) -> None:
    """Serve the sweep, recompute-frontier (hourly by default) and ingest-submissions flows as
    deployments against the Prefect server in PREFECT_API_URL, until Ctrl-C."""
    if not os.environ.get("PREFECT_API_URL"):
        raise MqepiError("PREFECT_API_URL is not set: start a server (`prefect server start`) and export "
                         "PREFECT_API_URL=http://127.0.0.1:4200/api")
    from mqepi.flows.serve import serve_all  # Prefect is heavy: imported only when serving

    say(f"serving sweep/{name} (one run at a time), recompute-frontier/{name} ({frontier_cron}), "
        f"ingest-submissions/{name} on {os.environ['PREFECT_API_URL']}")
    serve_all(name, lake=State.lake_root, frontier_cron=frontier_cron, drop=drop, ingest_cron=ingest_cron,
              cluster=cluster)


def parse_named(items: list[str], flag: str) -> dict[str, str]:
    """``["a=x.toml", "b=y.toml"]`` -> ``{"a": "x.toml", "b": "y.toml"}``, names checked."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise MqepiError(f"{flag} {item!r}: expected NAME=VALUE (e.g. {flag} lab-a=/etc/mqepi/lab-a.toml)")
        if name in out:
            raise MqepiError(f"{flag}: {name!r} is given twice")
        out[name] = value
    return out


@app.command("deploy")
@edge
def deploy_command(
    clusters: list[str] = typer.Option(..., "--cluster", help="NAME=CONFIG: a cluster's work pool and its config "
                                       "(TOML path as that site's worker sees it), repeatable."),
    meters: list[str] = typer.Option([], "--meter", help="NAME=METER: that cluster's meter (epi-meter:<port>, "
                                     "simulated, none), repeatable [default: the sweep's]."),
    name: str = typer.Option("mqepi", "--name", help="Deployment name of recompute-frontier and ingest-submissions."),
    lake_pool: str = typer.Option("mqepi-lake", "--lake-pool", help="Work pool of the lake-level flows."),
    frontier_cron: str = typer.Option("0 * * * *", "--frontier-cron", help="Schedule of recompute-frontier (cron)."),
    drop: str = typer.Option("submissions", "--drop", help="Drop folder of ingest-submissions."),
    ingest_cron: str | None = typer.Option(None, "--ingest-cron",
                                           help="Schedule of ingest-submissions (cron) [default: on demand]."),
) -> None:
    """Create (idempotently) one Prefect work pool per cluster (type process, one flow run at a
    time) with its sweep/<cluster> deployment, and the recompute-frontier and
    ingest-submissions deployments on the lake pool, on the server in PREFECT_API_URL. Then run
    `prefect worker start --pool <cluster>` on each site and `mqepi sweep --clusters ...`."""
    if not os.environ.get("PREFECT_API_URL"):
        raise MqepiError("PREFECT_API_URL is not set: point it at the shared Prefect server "
                         "(e.g. export PREFECT_API_URL=http://10.0.0.1:4200/api)")
    configs, site_meters = parse_named(clusters, "--cluster"), parse_named(meters, "--meter")
    for cluster in site_meters:
        if cluster not in configs:
            raise MqepiError(f"--meter {cluster}=...: no --cluster {cluster}=CONFIG")
    multi.check_clusters(list(configs))
    from mqepi.flows.pools import deploy  # Prefect is heavy: imported only when deploying

    done = deploy(configs, lake=lake().uri if State.lake_root else None, meters=site_meters, name=name, lake_pool=lake_pool,
                  frontier_cron=frontier_cron, drop=drop, ingest_cron=ingest_cron)
    for d in done:
        say(f"{d.deployment} on work pool {d.pool} ({d.pool_action})")
    say("next, on each site: prefect worker start --pool <cluster>; then: mqepi sweep --clusters "
        + ",".join(configs))
