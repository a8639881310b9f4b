"""Prefect flows: thin wiring over the ``mqepi`` library (installed as ``mqepi.flows``).

Each task calls one ``mqepi`` function; flows only pass parameters. The sweep, demo,
recompute-frontier and ingest-submissions flows land here (issue 7).
"""
