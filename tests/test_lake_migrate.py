"""``mqepi lake migrate``: a real lake of the old layout (tests/fixtures/old_lake, written by
mqepi at b652016) converted into a Delta lake, every event, id and origin preserved."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from factories import batch
from typer.testing import CliRunner

from mqepi.cli import app
from mqepi.errors import LakeError
from mqepi.lake import events
from mqepi.lake.legacy import LegacyLake
from mqepi.lake.log import CommitLog
from mqepi.lake.migrate import migrate
from mqepi.lake.store import Lake
from mqepi.results import sql
from mqepi.schemas import EVENT_TYPES

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_lake"
#: What the fixture holds (see its README): distinct events per type, from committed files.
EXPECTED = {"quant_config": 4, "quantization": 4, "config_alias": 1, "tensor_inventory": 4, "run": 6, "phase": 9,
            "power_sample": 492, "thermal_sample": 4, "benchmark_answer": 17, "perplexity": 4, "kld": 4, "throughput": 4}
runner = CliRunner()


@pytest.fixture
def old(tmp_path) -> Path:
    """A copy of the fixture (a migration only reads it; the copy keeps the repository clean)."""
    shutil.copytree(FIXTURE, tmp_path / "old")
    return tmp_path / "old"


def old_reader_view(rows: pl.DataFrame) -> pl.DataFrame:
    """What the old readers returned: one row per event id, the earliest recorded."""
    return rows.sort("recorded_at_ns", maintain_order=True).unique("event_id", keep="first", maintain_order=True)


def assert_same_events(old: Path, new: Path) -> None:
    legacy, lake = LegacyLake(old), Lake(new)
    for t in EVENT_TYPES:
        want = old_reader_view(legacy.read(t)).sort("event_id")
        got = lake.read(t).sort("event_id")
        assert got.columns == want.columns, t
        assert got.equals(want), t  # every column: ids, origins, recording times, values


def test_the_fixture_is_a_lake_of_the_old_layout():
    legacy = LegacyLake(FIXTURE)
    state = legacy.state()
    assert state.logged and not state.missing and len(state.log_problems) == 1  # the torn commit line
    assert [Path(p).relative_to(FIXTURE).parts[0] for p in state.uncommitted] == ["perplexity"]
    assert {t: legacy.read(t)["event_id"].n_unique() for t in EVENT_TYPES} == EXPECTED
    power = legacy.read("power_sample")
    assert power.height == 495 and power.columns == list(EVENT_TYPES["power_sample"].polars_schema)
    assert legacy.delta_tables() == []


def test_migrate_preserves_every_event_id_and_origin(old, tmp_path):
    new = tmp_path / "new"
    lines: list[str] = []
    report = migrate(old, new, progress=lines.append)
    assert report.ok and report.verify_ok and report.old_logged
    legacy, lake = LegacyLake(old), Lake(new)
    for t in EVENT_TYPES:
        rows = legacy.read(t, columns=["event_id", "origin"])
        r = report.types[t]
        assert (r.rows_read, r.distinct_ids, r.rows_written) == (rows.height, EXPECTED[t], EXPECTED[t]), t
        assert r.duplicates_dropped == rows.height - EXPECTED[t] and r.already_present == 0 and r.verified
        got = lake.read(t, columns=["event_id", "origin"])
        assert got.height == r.events_new == r.rows_new == EXPECTED[t]
        assert set(got["event_id"]) == set(rows["event_id"])
        assert sorted(got.rows()) == sorted(rows.unique().rows())  # (event id, origin) pairs
        assert dict(got.group_by("origin").len().iter_rows()) == r.origins
    assert report.types["power_sample"].duplicates_dropped == 3
    assert report.types["run"].origins == {"lab": 4, "community/alice": 2}
    assert_same_events(old, new)  # the duplicates kept as the old readers read them (earliest recorded)
    assert lake.verify().ok
    assert any(line.startswith("power_sample smollm2-135m/uniform_q4km: 3 files") for line in lines)

    # the file no commit named is not data in the old lake, nor in the new one
    assert len(report.uncommitted) == 1 and report.types["perplexity"].uncommitted_files == 1
    orphan = pl.read_parquet(report.uncommitted[0])["event_id"]
    assert orphan.len() == 1 and orphan[0] not in set(lake.read("perplexity")["event_id"])

    # the SQL views over the new lake agree
    con = sql.connect(Lake(new))
    assert con.execute("SELECT count(*) FROM run").fetchone()[0] == 6
    for t, n in EXPECTED.items():
        assert con.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {t}").fetchone() == (n, n), t


def test_a_second_run_is_a_no_op_and_an_interrupted_one_completes(old, tmp_path):
    new = tmp_path / "new"

    class Stop(Exception):
        pass

    def stop_at_power(line: str) -> None:
        if line.startswith("power_sample smollm2-135m/uniform_q4km"):
            raise Stop(line)  # killed after the first configuration of power_sample committed

    with pytest.raises(Stop):
        migrate(old, new, progress=stop_at_power)
    half = Lake(new)
    assert half.read("power_sample").height == 170 and half.read("run").height == 0
    report = migrate(old, new)
    assert report.ok
    assert report.types["power_sample"].already_present == 170 and report.types["power_sample"].rows_written == 322
    assert report.types["quant_config"].rows_written == 0 and report.types["run"].rows_written == 6
    assert_same_events(old, new)

    versions = Lake(new).versions()
    again = migrate(old, new)
    assert again.ok and Lake(new).versions() == versions
    assert all(r.rows_written == 0 and r.already_present == EXPECTED[t] for t, r in again.types.items())
    with pytest.raises(LakeError, match="already a lake of the Delta layout"):
        migrate(new, tmp_path / "other")


def test_a_new_lake_that_lost_events_fails_the_check(old, tmp_path):
    migrate(old, tmp_path / "new")
    lake = Lake(tmp_path / "new")
    path = lake.files("power_sample", model="smollm2-135m", config_id="uniform_q8")[0]
    table = pq.read_table(path)
    lost = table.column("event_id")[0].as_py()
    pq.write_table(table.slice(1), path)  # a file of the new lake altered: one event gone
    with pytest.raises(LakeError, match=f"power_sample model smollm2-135m config uniform_q8: 1 events of the old "
                                        f"lake are not in the new one \\(first: {lost}"):
        migrate(old, tmp_path / "new")


def test_a_new_lake_holding_other_events_is_refused(old, tmp_path):
    lake = Lake(tmp_path / "new")
    lake.init()
    lake.append(batch("perplexity", 2, run_id="elsewhere-r0", config_id="uniform_q8"))
    versions = lake.versions()
    with pytest.raises(LakeError, match=r"already holds 2 perplexity events that are not in .*different lake"):
        migrate(old, tmp_path / "new")
    assert Lake(tmp_path / "new").versions() == versions  # nothing written
    shutil.copytree(old, tmp_path / "copy")  # a lake of the old layout is no place to migrate into
    with pytest.raises(LakeError, match=r"holds what is not a Delta lake's \(first: .*/_log\)"):
        migrate(old, tmp_path / "copy")
    with pytest.raises(LakeError, match="same folder"):
        migrate(old, old)
    with pytest.raises(LakeError, match="no lake at"):
        migrate(tmp_path / "nowhere", tmp_path / "x")


def test_a_lake_without_commit_log_reads_every_data_file(old, tmp_path):
    shutil.rmtree(old / "_log")
    report = migrate(old, tmp_path / "new")
    assert report.ok and not report.old_logged and report.uncommitted == []
    # the file the log never committed is data in a lake without a log
    assert report.types["perplexity"].distinct_ids == report.types["perplexity"].events_new == 5
    assert all(report.types[t].events_new == n for t, n in EXPECTED.items() if t != "perplexity")
    assert_same_events(old, tmp_path / "new")


def test_a_file_of_an_older_schema_version_keeps_its_columns_and_ids(old, tmp_path):
    """A perplexity file written at schema version 1 (no chunk columns; ids over the columns it has)."""
    legacy = LegacyLake(old)
    spec = EVENT_TYPES["perplexity"]
    first = legacy.files("perplexity")[0]
    rows = legacy.read_file(first).drop(list(spec.added)).with_columns(schema_version=pl.lit(1, pl.Int32),
                                                                       ppl=pl.col("ppl") + 100)
    rows = rows.with_columns(events.content_ids(rows))
    rel = f"{first.rel.rsplit('/', 1)[0]}/ev-{events.batch_id(rows['event_id'])}.parquet"
    pq.write_table(rows.drop("model", "config_id", "run_id").to_arrow(), old / rel)
    log = CommitLog(legacy.fs, legacy.root)
    log.refresh()
    log.commit([(rel, rows.height, os.path.getsize(old / rel))], {"writer": "mqepi before schema version 2"})

    report = migrate(old, tmp_path / "new")
    assert report.ok and report.types["perplexity"].events_new == 6
    lake = Lake(tmp_path / "new")
    got = lake.read("perplexity").filter(pl.col("schema_version") == 1).sort("event_id")
    assert got["event_id"].to_list() == sorted(rows["event_id"]) and got["chunk_nll"].null_count() == 2
    stored = [pq.read_schema(p).names for p in lake.files("perplexity") if "chunk_nll" not in pq.read_schema(p).names]
    assert len(stored) == 1  # written with the columns it had
    assert_same_events(old, tmp_path / "new")


def test_cli_migrate(old, tmp_path):
    new = tmp_path / "new"
    result = runner.invoke(app, ["lake", "migrate", str(old), str(new)])
    assert result.exit_code == 0, result.output
    assert "power_sample" in result.stdout and "community/alice" in result.stdout
    assert "ok: 553 events migrated" in result.stdout and "1 uncommitted files" in result.stdout
    assert "benchmark_answer: 17 events in both lakes" in result.stderr  # progress on stderr
    assert Lake(new).read("benchmark_answer").height == 17
    refused = runner.invoke(app, ["lake", "migrate", str(new), str(tmp_path / "again")])
    assert refused.exit_code == 1 and refused.stderr.startswith("error: lake migrate:")
    assert "Delta layout" in refused.stderr and "Traceback" not in refused.output
