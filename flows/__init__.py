"""Prefect flows: thin wiring over the ``mqepi`` library (installed as ``mqepi.flows``).

Each task calls one ``mqepi`` function; flows only pass parameters:

* ``sweep`` (:mod:`mqepi.flows.sweep`): the measurement sweep, resumable;
* ``recompute-frontier`` (:mod:`mqepi.flows.frontier`): the derived tables, materialised;
* ``ingest-submissions`` (:mod:`mqepi.flows.ingest`): community bundles from a drop folder;
* :mod:`mqepi.flows.serve`: the three as deployments of one ``mqepi serve`` process.
"""
