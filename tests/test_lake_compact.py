"""Compaction without losing history, time travel by table versions (Lake.at, sql --as-of),
vacuum only when asked, and the log as the source of what changed."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from factories import answer_row, batch, record_measured_run
from typer.testing import CliRunner

from mqepi.cli import app
from mqepi.errors import LakeError
from mqepi.lake.compact import compact, vacuum
from mqepi.lake.store import Lake
from mqepi.results import sql
from mqepi.results.snapshots import as_of_versions, recompute

runner = CliRunner()


def _small_appends(lake: Lake, n: int = 12) -> pl.DataFrame:
    for i in range(n):
        lake.append(batch("phase", 3, start=10 * i, run_id=f"run-{i % 3}"))
        lake.append(batch("power_sample", 5, start=10 * i, run_id=f"run-{i % 3}"))
    return lake.read("phase").sort("event_id")


def test_compaction_merges_small_files_as_a_new_version_and_keeps_every_row(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    before = _small_appends(lake)
    files_before, version_before = lake.files("phase"), lake.versions()["phase"]
    assert len(files_before) == 1 + 12  # the seed and one file per append
    results = {r.event_type: r for r in compact(lake, ["phase", "power_sample"])}
    assert results["phase"].files_before == 13 and results["phase"].files_after == 2  # seed + one compacted file
    assert results["phase"].version == version_before + 1
    assert [Path(f).name[:3] for f in lake.files("phase") if "_seed" not in f] == ["cp-"]
    assert Lake(lake.root).files("phase") == lake.files("phase")  # a reader replaying the log sees the same
    # the same rows, the same ids; runs still found through the log (the commit records them)
    assert lake.read("phase").sort("event_id").equals(before)
    assert lake.read("phase", run_id="run-1").height == 12
    assert lake.verify().ok  # the replaced files are history, not strays
    # the commit says what it did: no data change, what it replaced, each new file's sha256
    commit = lake.log("phase").commits[-1]
    assert commit.meta["operation"] == "compact" and len(commit.meta["replaces"]) == 12
    assert all(len(f["sha256"]) == 64 for f in commit.meta["files"].values())
    # the old files are still on storage and readable by time travel
    assert all(Path(f).exists() for f in files_before)
    old = lake.at({"phase": version_before})
    assert old.files("phase") == files_before and old.read("phase").sort("event_id").equals(before)
    assert compact(lake, ["phase"])[0].version is None  # nothing small left


def test_sql_views_and_time_travel_agree_after_compaction(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    _small_appends(lake, 6)
    versions = lake.versions()
    lake.append(batch("phase", 4, start=500, run_id="late"))
    compact(lake)
    con = sql.connect(Lake(lake.root))
    assert con.execute("SELECT count(*), count(DISTINCT event_id) FROM phase").fetchone() == (22, 22)
    then = sql.connect(lake.at(versions))
    assert then.execute("SELECT count(*) FROM phase").fetchone() == (18,)
    with pytest.raises(LakeError, match="read only"):
        lake.at(versions).append(batch("phase", 1, start=900))


def test_sql_as_of_a_snapshot_queries_the_versions_it_read(tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")
    lake.init()
    record_measured_run(lake, "smollm2-135m", "uniform_q8", 0, [answer_row("mmlu", "q1", 1, 1)])
    snap = recompute(lake, tmp_path / "derived")
    meta = json.loads((snap.path / "snapshot.json").read_text())
    assert meta["table_versions"] == lake.versions()
    record_measured_run(lake, "smollm2-135m", "uniform_q8", 1, [answer_row("mmlu", "q1", 1, 1)])
    assert as_of_versions(lake, str(snap.path)) == meta["table_versions"]
    args = ["--lake", str(lake.root), "sql", "SELECT count(*) AS n FROM run WHERE status = 'finished'", "-f", "json"]
    now = runner.invoke(app, args)
    then = runner.invoke(app, [*args, "--as-of", str(snap.path)])
    assert now.exit_code == 0 and then.exit_code == 0, then.output
    assert json.loads(now.output)[0]["n"] == 2 and json.loads(then.output)[0]["n"] == 1
    bad = runner.invoke(app, [*args, "--as-of", "run=x"])
    assert bad.exit_code != 0 and "TYPE=VERSION" in bad.output


def test_vacuum_deletes_only_replaced_files_and_only_when_asked(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    before = _small_appends(lake, 4)
    replaced = [f for f in lake.files("phase") if "_seed" not in f]
    compact(lake, ["phase"])
    assert all(Path(f).exists() for f in replaced)  # compaction deletes nothing
    result = runner.invoke(app, ["--lake", str(lake.root), "lake", "vacuum"])
    assert result.exit_code != 0 and "retain-hours" in result.output  # no default retention
    assert sorted(Path(p).name for p in vacuum(lake, 0, dry_run=True)["phase"]) == sorted(Path(f).name for f in replaced)
    assert all(Path(f).exists() for f in replaced)
    vacuum(lake, 0)
    assert not any(Path(f).exists() for f in replaced)
    assert lake.read("phase").sort("event_id").equals(before) and lake.verify().ok


def test_lake_compact_command_reports_what_it_did(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    _small_appends(lake, 3)
    result = runner.invoke(app, ["--lake", str(lake.root), "lake", "compact", "--type", "phase"])
    assert result.exit_code == 0, result.output
    assert "phase: 4 -> 2 active files in 1 partitions" in result.output
    stats = runner.invoke(app, ["--lake", str(lake.root), "lake", "stats"])
    assert stats.exit_code == 0 and "version" in stats.output
