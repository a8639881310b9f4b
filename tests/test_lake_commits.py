"""The lake's commits (Delta table versions): atomic transactions, one writer at a time for
check-then-write, verify that notices loss, readers and SQL views that see exactly the active
files, and run ids that cannot collide across models."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from factories import batch
from test_community import RUNS, fill

from mqepi.community.ingest import ingest
from mqepi.community.submit import build_bundle
from mqepi.errors import LakeError, QueryError
from mqepi.lake import delta
from mqepi.lake.store import Lake
from mqepi.results import sql

INGEST = Path(__file__).parent / "ingest_proc.py"


def counts(lake: Lake) -> dict[str, int]:
    """Events per type as Lake.read sees them, and as the SQL views see them (must agree)."""
    con = sql.connect(lake)
    out = {}
    for t in ("run", "phase", "power_sample", "benchmark_answer"):
        n = lake.read(t).height
        assert con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == n, t
        out[t] = n
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """The same two runs bundled by two submitters (the same run ids, different origins)."""
    source = fill(Lake(tmp_path_factory.mktemp("source") / "lake"))
    out = tmp_path_factory.mktemp("bundles")
    return {who: build_bundle(source, list(RUNS), out / who, submitter=who, contact=f"{who}@example.org",
                              meter_calibration="none: simulated meter") for who in ("alice", "bob")}


def start(lake: Lake, bundle: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(INGEST), lake.root, str(bundle), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


# ------------------------------------------------------------------ transactions


def test_a_transaction_commits_all_its_files_or_none(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    with pytest.raises(RuntimeError), lake.transaction("test"):
        lake.append(batch("run", 2, run_id="r1"))
        lake.append(batch("phase", 3, run_id="r1"))
        assert lake.read("run").height == 0  # not visible before the commit, even to its writer
        raise RuntimeError("the stage failed")
    assert lake.read("run").height == 0 and lake.read("phase").height == 0
    assert {p.kind for p in lake.verify().problems} == {"uncommitted"}
    with lake.transaction("retry"):
        lake.append(batch("run", 2, run_id="r1"))
        lake.append(batch("phase", 3, run_id="r1"))
    assert lake.read("run").height == 2 and lake.read("phase").height == 3
    assert lake.verify().ok  # the retry adopted the complete files the failed one had left


def test_a_disk_error_half_way_through_an_ingest_leaves_nothing_visible(tmp_path, bundles, monkeypatch):
    lake = Lake(tmp_path / "lake")
    lake.init()
    before = counts(lake)
    write, calls = Lake._write_file, []

    def failing_write(self, directory, name, table):  # the disk fills up on the 4th file
        calls.append(name)
        if len(calls) == 4:
            raise LakeError(f"lake write failed for {directory}/{name}: [Errno 28] No space left on device")
        return write(self, directory, name, table)

    monkeypatch.setattr(Lake, "_write_file", failing_write)
    with pytest.raises(LakeError, match="No space left"):
        ingest(bundles["alice"], lake)
    assert counts(lake) == before
    monkeypatch.setattr(Lake, "_write_file", write)
    assert ingest(bundles["alice"], lake).status == "ingested"
    assert counts(lake)["run"] == 4 and lake.verify().ok


def test_a_killed_ingest_leaves_nothing_visible_and_verify_says_so(tmp_path, bundles):
    lake = Lake(tmp_path / "lake")
    lake.init()
    before = counts(lake)
    proc = start(lake, bundles["alice"], "5")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    try:
        assert proc.stdout.readline().strip() == "WROTE"  # five files written, no commit yet
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lake = Lake(lake.root)
    assert counts(lake) == before  # no run appears finished without its windows
    report = lake.verify()
    assert not report.ok and {p.kind for p in report.problems} <= {"uncommitted", "stray-temp"}
    assert sum(p.kind == "uncommitted" for p in report.problems) >= 4
    assert ingest(bundles["alice"], lake).status == "ingested"
    assert lake.verify().ok


def test_concurrent_ingests_of_one_run_accept_exactly_one(tmp_path, bundles):
    for attempt in range(3):
        lake = Lake(tmp_path / f"lake{attempt}")
        lake.init()
        procs = [start(lake, bundles[who]) for who in ("alice", "bob")]
        for proc in procs:  # both are past start-up: release them together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = sorted(proc.communicate(timeout=300)[0].split()[0] for proc in procs)
        assert outcomes == ["INGESTED", "REJECTED"], attempt
        origins = lake.read("run", columns=["run_id", "origin"]).group_by("run_id").agg(pl.col("origin").n_unique())
        assert origins["origin"].to_list() == [1, 1]
        assert lake.verify().ok


def test_threads_of_one_process_append_without_losing_anything(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()

    def worker(k: int) -> None:
        for i in range(10):
            lake.append(batch("benchmark_answer", 3, start=100 * k + 3 * i, run_id=f"run-{k}"))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lake.read("benchmark_answer").height == 90 and lake.verify().ok


# ------------------------------------------------------------------ verify notices loss


def test_verify_reports_every_way_a_committed_file_can_disappear(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    files = [Path(lake.append(batch("phase", 4, run_id=f"run-{k}")).files_written[0]) for k in range(4)]
    assert lake.verify().ok and counts(lake)["phase"] == 16
    deleted, as_temp, hidden, kept = files
    deleted.unlink()
    as_temp.rename(as_temp.with_name(f".tmp-0123-{as_temp.name}.partial"))
    hidden.rename(hidden.with_name("." + hidden.name))
    report = lake.verify()
    missing = sorted(Path(p.path).name for p in report.problems if p.kind == "missing")
    assert missing == sorted(f.name for f in (deleted, as_temp, hidden))
    # the temporary-looking file is reported as a temp file too, never as the only problem
    assert {p.kind for p in report.problems} == {"missing", "stray-temp", "unexpected"}
    # readers and the SQL views read the same files: both fail loudly on the lost one (a number
    # computed without it would be wrong), naming it
    with pytest.raises(LakeError, match="phase"):
        lake.read("phase")
    with pytest.raises(QueryError, match=r"ev-[0-9a-f]{64}\.parquet"):
        sql.connect(lake).execute("SELECT count(*) FROM phase")
    assert kept.exists()


def test_a_file_no_commit_names_is_not_data_for_readers_or_views(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    committed = Path(lake.append(batch("phase", 4, run_id="run-1")).files_written[0])
    other = Lake(tmp_path / "other")
    other.init()
    stray = Path(other.append(batch("phase", 3, run_id="run-1", start=50)).files_written[0])
    shutil.copy(stray, committed.parent / stray.name)  # a valid data file, never committed here
    assert counts(lake)["phase"] == 4
    assert [p.kind for p in lake.verify().problems] == ["uncommitted"]


def test_a_transaction_killed_between_its_table_commits_is_reported_and_completed_by_a_retry(tmp_path, bundles):
    lake = Lake(tmp_path / "lake")
    lake.init()
    proc = start(lake, bundles["alice"], "c2")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    try:
        assert proc.stdout.readline().strip() == "COMMITTED"  # two of its tables committed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lake = Lake(lake.root)
    assert lake.read("run").height == 0  # `run` commits last: no run is listed without its events
    report = lake.verify()
    # the tables not yet committed hold files no version names
    assert {p.kind for p in report.problems} == {"incomplete", "uncommitted"}, report.problems
    incomplete = [p for p in report.problems if p.kind == "incomplete"]
    assert len(incomplete) == 1 and "re-run" in incomplete[0].detail and "run" in incomplete[0].detail
    assert ingest(bundles["alice"], lake).status == "ingested"
    assert lake.verify().ok and counts(Lake(lake.root))["run"] == 4


def test_a_retried_commit_is_a_no_op_by_its_application_transaction(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    df = batch("phase", 4, run_id="run-1")
    lake.append(df)
    version = lake.versions()["phase"]
    app_ids = lake.log("phase").commits[-1].app_ids
    assert len(app_ids) == 1 and app_ids[0].startswith("mqepi-")
    again = Lake(lake.root)  # another writer that missed the first commit retries the same batch
    assert again.append(df).rows_written == 0
    assert again.versions()["phase"] == version and again.read("phase").height == 4


# ------------------------------------------------------------------ run ids


def test_a_run_id_of_another_model_or_config_is_refused_at_write_time(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    lake.append(batch("run", 2, run_id="shared-name-r0", model="smollm2-135m", config_id="uniform_q4km"))
    for other in ({"model": "llama-3.1-8b", "config_id": "uniform_q4km"},
                  {"model": "smollm2-135m", "config_id": "uniform_q8"}):
        with pytest.raises(LakeError, match="already in the lake under model 'smollm2-135m'"):
            lake.append(batch("phase", 2, run_id="shared-name-r0", **other))
    # within one write too
    two = pl.concat([batch("run", 1, run_id="r9", config_id="uniform_q8"), batch("run", 1, run_id="r9", start=5)])
    with pytest.raises(LakeError, match="two"):
        lake.append(two)
    assert lake.read("phase").height == 0 and lake.verify().ok


def test_verify_reports_run_ids_that_collided_before_the_check(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    lake.append(batch("run", 2, run_id="r1", model="smollm2-135m"))
    other = Lake(tmp_path / "other")
    other.init()
    written = Path(other.append(batch("run", 2, run_id="r1", model="llama-3.1-8b", start=7)).files_written[0])
    target = Path(lake.root) / written.relative_to(other.root)
    target.parent.mkdir(parents=True)
    shutil.copy(written, target)
    rel = str(target.relative_to(Path(lake.root) / "run"))
    entry = other.log("run").active[rel]  # committed by hand, as a writer without the check would
    delta.commit(lake._table("run"), [delta.add_action(rel, entry.bytes, entry.partition, entry.rows)],
                 {"files": {rel: {"sha256": entry.sha256, "rows": entry.rows, "runs": list(entry.runs)}}}, None)
    report = Lake(lake.root).verify()
    assert [p.kind for p in report.problems] == ["collision"]
    assert "llama-3.1-8b" in report.problems[0].detail and "smollm2-135m" in report.problems[0].detail


def test_lock_files_and_the_log_are_not_event_data(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    lake.append(batch("run", 2))
    names = {p.name for p in (tmp_path / "lake").rglob("*") if p.is_file()}
    assert {"00000000000000000000.json", "commit.lock"} <= names
    assert lake.verify().ok and os.path.exists(lake.lock_path("commit"))
    assert sum(pq.read_metadata(f).num_rows for f in lake.files("run")) == 2
