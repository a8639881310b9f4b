"""The event lake: one append-only Delta table per event type of validated, content-addressed events.

* :mod:`mqepi.lake.store`: :class:`~mqepi.lake.store.Lake` (transactions, append, read, time travel);
* :mod:`mqepi.lake.delta`: each table's Delta log read incrementally, commits through delta-rs,
  object-store options; :mod:`mqepi.lake.index`: the active files by type, run and configuration;
* :mod:`mqepi.lake.verify`: ``lake verify``; :mod:`mqepi.lake.compact`: ``lake compact`` and
  ``lake vacuum``; :mod:`mqepi.lake.stats`: ``lake stats``;
* :mod:`mqepi.lake.migrate`, :mod:`mqepi.lake.legacy` and :mod:`mqepi.lake.log`: the layout
  before Delta Lake (read only) and ``lake migrate``;
* :mod:`mqepi.lake.locks`: exclusive locks that name their holder (commits, sweeps, nodes);
* :mod:`mqepi.lake.events`: building event batches, their content ids, validation, and the
  :class:`~mqepi.lake.events.RunKey` every run-bound producer writes under.
"""
