"""``mqepi serve``: the sweep, recompute-frontier and ingest-submissions flows as deployments."""

from __future__ import annotations

import os

import typer

from mqepi.cli._common import State, edge, say
from mqepi.errors import MqepiError

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
