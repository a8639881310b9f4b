"""The lake writer and reader against real files and real processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from factories import batch

from mqepi.errors import EventValidationError, LakeError
from mqepi.lake.store import Lake
from mqepi.schemas import EVENT_TYPES

WRITER = Path(__file__).with_name("writer_proc.py")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, except lock files' (they hold the last holder's record, not data)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "_locks"}


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_round_trip_every_event_type(lake, event_type):
    df = batch(event_type, 7)
    result = lake.append(df)
    assert result.rows_written == 7 and len(result.files_written) == 1
    back = lake.read(event_type)
    assert back.schema == df.schema
    assert back.sort("event_id").equals(df.sort("event_id"))
    # the partition columns are in the path, not in the file
    path = Path(result.files_written[0])
    assert "model=smollm2-135m" in str(path) and "config_id=uniform_q4km" in str(path)
    assert "model" not in pq.read_schema(path).names


def test_reappending_the_same_batch_is_a_no_op(lake):
    df = batch("power_sample", 20)
    first = lake.append(df)
    before = snapshot(Path(lake.root))
    second = lake.append(df)
    assert second.rows_written == 0 and second.files_already_present == 1
    assert snapshot(Path(lake.root)) == before
    assert lake.read("power_sample").height == 20
    assert Path(first.files_written[0]).name.startswith("ev-")


def test_known_events_are_not_written_again_in_their_partition(lake):
    lake.append(batch("benchmark_answer", 10))
    retry = lake.append(batch("benchmark_answer", 15))  # a retried stage: 10 known + 5 new
    assert retry.rows_written == 5 and retry.duplicate_rows_dropped == 10
    assert lake.read("benchmark_answer").height == 15
    assert lake.verify().ok


def test_batch_spanning_partitions_writes_one_file_per_partition(lake):
    # partitions are (model, config_id): two runs of one configuration share a file, another
    # configuration gets its own; the commit records each file's runs
    df = pl.concat([batch("phase", 2, run_id="r1"), batch("phase", 3, run_id="r2", start=10),
                    batch("phase", 2, run_id="r3", config_id="mix_a", start=20)])
    result = lake.append(df)
    assert len(result.files_written) == 2
    assert lake.read("phase", run_id="r2").height == 3
    assert lake.files("phase", run_id="r1") == lake.files("phase", run_id="r2")
    assert lake.files("phase", run_id="r3") == lake.files("phase", config_id="mix_a")
    assert [Path(f).parent.name for f in lake.files("phase", run_id="r3")] == ["config_id=mix_a"]
    assert lake.versions()["phase"] == 2  # created, seeded, one append


def test_invalid_batch_writes_nothing(lake):
    before = snapshot(Path(lake.root))
    df = batch("power_sample", 5).with_columns(pl.lit(-2.0).alias("power_w"))
    with pytest.raises(EventValidationError, match="power_w"):
        lake.append(df)
    assert snapshot(Path(lake.root)) == before


def test_failed_write_fails_loudly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    lake = Lake(blocker / "lake")
    with pytest.raises(LakeError, match="lake"):
        lake.append(batch("run", 1))


def test_reader_dedups_by_event_id_across_files(lake):
    df = batch("power_sample", 6)
    lake.append(df)
    lake.append(pl.concat([df.head(3), batch("power_sample", 2, start=100)]))  # overlaps the first
    assert lake.read("power_sample").height == 8
    report = lake.verify()
    assert {p.kind for p in report.problems} == {"duplicate"}
    assert len(report.problems) == 3


def test_verify_catches_corruption(lake):
    root = Path(lake.root)
    good = Path(lake.append(batch("kld", 4)).files_written[0])
    truncated = Path(lake.append(batch("perplexity", 4)).files_written[0])
    forged = Path(lake.append(batch("throughput", 3)).files_written[0])
    renamed = Path(lake.append(batch("run", 2)).files_written[0])
    assert lake.verify().ok
    # a file's bytes changed under the same size: only the sha256 the commit recorded tells
    flipped = Path(lake.append(batch("phase", 3)).files_written[0])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    table = pq.read_table(forged)  # content changed, id and name kept: a forged file
    pq.write_table(table.set_column(table.schema.get_field_index("tokens_per_s"), "tokens_per_s",
                                    [[999.0] * table.num_rows]), forged)
    renamed.rename(renamed.with_name("ev-" + "0" * 64 + ".parquet"))
    (good.parent / ".tmp-dead-ev-x.parquet.partial").write_bytes(b"PAR1 half")
    (root / "notes.txt").write_text("stray")
    report = lake.verify()
    kinds = sorted((p.kind, Path(p.path).parent.parent.name or Path(p.path).name) for p in report.problems)
    by_kind = {p.kind: p for p in report.problems}
    # renamed: the committed name is missing (lost) and the new name is no commit's file
    assert set(by_kind) == {"unreadable", "changed", "hash", "missing", "uncommitted", "stray-temp", "unexpected"}, kinds
    assert "perplexity" in by_kind["unreadable"].path
    assert {Path(p.path).parents[2].name for p in report.problems if p.kind == "changed"} == {"perplexity", "throughput",
                                                                                              "phase"}
    assert "throughput" in by_kind["hash"].path and "sha256" in by_kind["hash"].detail
    assert "/run/" in by_kind["missing"].path and "/run/" in by_kind["uncommitted"].path
    # the reader never treats the temporary file as data
    assert lake.read("kld").height == 4


def test_written_files_stay_unchanged_by_later_appends(lake):
    first = Path(lake.append(batch("phase", 3)).files_written[0])
    content = first.read_bytes()
    for i in range(5):
        lake.append(batch("phase", 3, start=10 * (i + 1)))
    assert first.read_bytes() == content
    assert lake.read("phase").height == 18


def test_killed_writer_never_leaves_a_visible_partial_file(tmp_path):
    root = tmp_path / "lake"
    Lake(root).init()
    rng = random.Random(20261126)
    for _attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(root), "pause", "0.05"],
                                stdout=subprocess.PIPE, text=True)
        try:
            # wait for k publishes, then kill at a random moment (often inside the pause
            # between the temporary file and its publication)
            for _ in range(rng.randint(1, 4)):
                assert proc.stdout.readline().strip() == "PUBLISH"
            time.sleep(rng.uniform(0, 0.06))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        lake = Lake(root)
        report = lake.verify()
        # killed before publishing (a temporary file) or before committing (an uncommitted file)
        assert {p.kind for p in report.problems} <= {"stray-temp", "uncommitted"}, report.problems
        df = lake.read("benchmark_answer")
        assert df.height % 50 == 0  # only whole batches are visible
    assert df.height > 0


@pytest.mark.slow
def test_two_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    root = tmp_path / "lake"
    Lake(root).init()
    procs = [
        subprocess.Popen([sys.executable, str(WRITER), str(root), "loop", "1000"],
                         env={**os.environ, "WRITER_TAG": tag}, stdout=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "DONE" in out
    lake = Lake(root)
    df = lake.read("power_sample")
    per_run = dict(df.group_by("run_id").len().iter_rows())
    # 900 own batches x 5 rows per writer; 100 shared batches written once
    assert per_run == {"run-a": 4500, "run-b": 4500, "shared": 500}
    files = lake.files("power_sample")
    assert len(files) == 1 + 900 + 900 + 100  # seed + own + shared
    assert pl.concat([pl.read_parquet(f, columns=["event_id"]) for f in files]).height == df.height
    assert lake.verify().ok
