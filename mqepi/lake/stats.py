"""``lake stats``: events (distinct ids), active files, bytes and table version per event
type and origin."""

from __future__ import annotations

import polars as pl

from mqepi.lake.index import SEED_VALUE
from mqepi.schemas import EVENT_TYPES


def stats(lake) -> pl.DataFrame:
    """One row per (event type, origin): events (distinct ids), the table's active files
    (seeds not counted), their bytes and the table version read."""
    rows = []
    versions = lake.versions()
    for name in EVENT_TYPES:
        entries = [e for e in lake.log(name).active.values() if e.partition[0] != SEED_VALUE]
        base = {"event_type": name, "files": len(entries), "bytes": sum(e.bytes for e in entries),
                "version": versions[name]}
        df = lake.read(name, columns=["origin"])
        if df.height == 0:
            rows.append({**base, "origin": None, "events": 0})
            continue
        for origin, count in df.group_by("origin").len().sort("origin").iter_rows():
            rows.append({**base, "origin": origin, "events": count})
    schema = {"event_type": pl.Utf8, "origin": pl.Utf8, "events": pl.Int64, "files": pl.Int64, "bytes": pl.Int64,
              "version": pl.Int64}
    return pl.DataFrame(rows, schema=schema).select(list(schema))
