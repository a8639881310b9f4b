"""Prefect flows: thin wiring over the ``mqepi`` library (installed as ``mqepi.flows``).

Each task calls one function of mqepi's public API (``from mqepi import ...``); flows only
pass parameters:

* ``sweep`` (:mod:`mqepi.flows.sweep`): the measurement sweep, resumable;
* ``recompute-frontier`` (:mod:`mqepi.flows.frontier`): the derived tables, materialised;
* ``ingest-submissions`` (:mod:`mqepi.flows.ingest`): community bundles from a drop folder;
* :mod:`mqepi.flows.serve`: the three as deployments of one ``mqepi serve`` process.

Importing this package does not import Prefect; call :func:`prefect_environment` before
importing a flow module to run a flow without a server.
"""

import os


def prefect_environment() -> None:
    """Defaults for a Prefect run without a server: a temporary local one that starts in time
    on a slow machine and sends no analytics (explicit settings win). Prefect reads them when
    it is first imported."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
