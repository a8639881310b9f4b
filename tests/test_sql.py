"""The DuckDB views against an independent Polars read of the same files."""

from __future__ import annotations

import polars as pl
import pytest
from factories import batch

from mqepi.analysis import contract
from mqepi.errors import LakeError, QueryError
from mqepi.lake.store import Lake
from mqepi.meter.stream import POWER_ACCURACY_REL, POWER_RESOLUTION_W
from mqepi.results import sql
from mqepi.schemas import EVENT_TYPES

DUCKDB_TYPES = {pl.Utf8: "VARCHAR", pl.Int32: "INTEGER", pl.Int64: "BIGINT", pl.Float64: "DOUBLE",
                pl.Boolean: "BOOLEAN", pl.List(pl.Float64): "DOUBLE[]", pl.List(pl.Utf8): "VARCHAR[]",
                pl.List(pl.Int32): "INTEGER[]"}


@pytest.fixture
def filled(lake):
    for event_type in EVENT_TYPES:
        lake.append(batch(event_type, 4, run_id="r1"))
        lake.append(batch(event_type, 3, run_id="r2", config_id="mix_high_early", start=50))
        # an overlapping re-append in another file: both readers must count it once
        lake.append(pl.concat([batch(event_type, 2, run_id="r1"), batch(event_type, 1, run_id="r1", start=90)]))
    return lake


def polars_read(lake: Lake, event_type: str) -> pl.DataFrame:
    """Independent of mqepi.lake: polars' own hive reader over the same glob."""
    spec = EVENT_TYPES[event_type]
    depth = "/".join(f"{k}=*" for k in spec.partition_by)
    df = pl.read_parquet(f"{lake.root}/{event_type}/{depth}/*.parquet", hive_partitioning=True,
                         hive_schema={k: pl.Utf8 for k in spec.partition_by}, missing_columns="insert")
    return df.sort("recorded_at_ns").unique("event_id", keep="first").select(list(spec.polars_schema))


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_views_return_exactly_what_polars_reads(filled, event_type):
    con = sql.connect(filled)
    via_duckdb = pl.from_arrow(sql.query(con, f"SELECT * FROM {event_type}"))
    via_polars = polars_read(filled, event_type)
    assert via_duckdb.height == via_polars.height == 8
    assert via_duckdb.select(via_polars.columns).sort("event_id").equals(via_polars.sort("event_id"))
    assert filled.read(event_type).sort("event_id").equals(via_polars.sort("event_id"))


def test_every_event_type_has_a_view_with_its_columns_and_types(lake):
    con = sql.connect(lake)
    views = {v.name: dict(v.columns) for v in sql.views(con)}
    for name, spec in EVENT_TYPES.items():
        assert views[name] == {c: DUCKDB_TYPES[t] for c, t in spec.polars_schema.items()}, name


def test_partition_filter_reads_one_run(filled):
    con = sql.connect(filled)
    rows = sql.query(con, "SELECT run_id, count(*) AS n FROM power_sample GROUP BY run_id ORDER BY run_id").to_pylist()
    assert rows == [{"run_id": "r1", "n": 5}, {"run_id": "r2", "n": 3}]


def test_query_errors_are_query_errors(lake):
    con = sql.connect(lake)
    with pytest.raises(QueryError, match="nope"):
        sql.query(con, "SELECT * FROM nope")


def test_missing_lake_is_a_clear_error(tmp_path):
    with pytest.raises(LakeError, match="no lake at"):
        sql.connect(Lake(tmp_path / "absent"))


def test_view_contract_states_what_the_views_return(lake):
    """analysis/contract.py (what Python readers expect) equals DuckDB's description of each view."""
    con = sql.connect(lake)
    for view, columns in contract.VIEWS.items():
        described = [(c[0], c[1]) for c in con.execute(f"DESCRIBE SELECT * FROM {view}").fetchall()]
        assert described == [(c, DUCKDB_TYPES[t]) for c, t in columns.items()], view


def test_power_source_figures_equal_the_python_table(lake):
    """Resolution and accuracy per power source are stated in SQL (for plain-duckdb users) and in
    mqepi.meter.stream (for the Python windows): the two must agree."""
    rows = sql.connect(lake).execute("SELECT power_source, resolution_w::DOUBLE, accuracy_rel::DOUBLE "
                                     "FROM power_source_figures").fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        s: (POWER_RESOLUTION_W[s], POWER_ACCURACY_REL[s]) for s in POWER_RESOLUTION_W}
