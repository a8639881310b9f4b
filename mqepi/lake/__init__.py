"""The event lake: append-only, validated, content-addressed event files.

* :mod:`mqepi.lake.store`: :class:`~mqepi.lake.store.Lake` (transactions, append, read, stats);
* :mod:`mqepi.lake.log`: the commit log (which files are data); :mod:`mqepi.lake.index`: the
  committed files by type, run and configuration; :mod:`mqepi.lake.verify`: ``lake verify``;
* :mod:`mqepi.lake.locks`: exclusive locks that name their holder (commits, sweeps, nodes);
* :mod:`mqepi.lake.events`: building event batches, their content ids, validation, and the
  :class:`~mqepi.lake.events.RunKey` every run-bound producer writes under.
"""
