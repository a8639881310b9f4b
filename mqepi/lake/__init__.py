"""The event lake: append-only, validated, content-addressed event files.

* :mod:`mqepi.lake.store`: :class:`~mqepi.lake.store.Lake` (append, read, verify, stats);
* :mod:`mqepi.lake.events`: building event batches, their content ids, validation, and the
  :class:`~mqepi.lake.events.RunKey` every run-bound producer writes under.
"""
