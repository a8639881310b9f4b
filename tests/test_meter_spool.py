"""The meter spool (:mod:`mqepi.meter.spool`) on real files, real lakes and a real killed
process: few lake commits, every acknowledged sample in the lake exactly once after a kill,
torn tails dropped, replay idempotent. Only the clock is faked."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tty
import warnings
from collections import Counter

import polars as pl
import pytest

from mqepi.errors import LakeError
from mqepi.lake.store import Lake
from mqepi.meter import RunKey
from mqepi.meter.epimeter import MeterReader
from mqepi.meter.protocol import encode_line
from mqepi.meter.spool import (
    SegmentWriter,
    SpoolError,
    SpoolSink,
    SpoolWarning,
    commit_segment,
    replay,
    segments,
    spool_dir_for,
)
from mqepi.meter.stream import SAMPLE_COLUMNS
from mqepi.meter.windows import EnergyMonitor

RUN = RunKey("smollm2-135m", "uniform_q4km", "r-spool")
CHANNELS = 4
RATE_HZ = 50
T0 = 1_764_000_000_000_000_000


class CountingLake(Lake):
    """A real lake that counts its ``record`` calls (one call = one lake commit)."""

    def __init__(self, root):
        super().__init__(root)
        self.calls: Counter[str] = Counter()

    def record(self, event_type, rows, **kwargs):
        self.calls[event_type] += 1
        return super().record(event_type, rows, **kwargs)


class DownLake(Lake):
    """A lake whose appends fail, like a full disk or a lost mount."""

    def record(self, event_type, rows, **kwargs):
        raise LakeError(f"lake write failed for {event_type}: the lake is down")


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frame(first_line: int, lines: int, channels: int = CHANNELS) -> pl.DataFrame:
    """``lines`` meter lines from ``first_line`` on, ``channels`` samples each, 50 Hz."""
    seq = [first_line + i // channels for i in range(lines * channels)]
    n = len(seq)
    return pl.DataFrame({
        "power_source": ["simulated"] * n, "meter_id": ["sim0"] * n, "channel": [i % channels for i in range(n)],
        "node": [f"node{i % channels}" for i in range(n)], "seq": seq, "meter_time_ns": [s * 20_000_000 for s in seq],
        "host_time_ns": [T0 + s * 20_000_000 for s in seq], "host_monotonic_ns": [s * 20_000_000 for s in seq],
        "power_w": [3.0 + (s % 7) * 0.5 for s in seq], "voltage_v": [230.0] * n, "current_a": [0.02] * n,
        "power_factor": [0.9] * n, "frequency_hz": [50.0] * n, "energy_counter_j": [float(s) for s in seq],
    }, schema=SAMPLE_COLUMNS)


@pytest.fixture
def counting(tmp_path) -> CountingLake:
    lake = CountingLake(tmp_path / "lake")
    lake.init()
    return lake


def keys(lake: Lake) -> pl.DataFrame:
    return lake.read("power_sample", run_id=RUN.run_id, columns=["event_id", "channel", "seq"])


def assert_lines_once(df: pl.DataFrame, lines: int) -> None:
    """Every sample of lines 0 .. lines-1 is there once, and nothing else."""
    assert df["event_id"].n_unique() == df.height
    assert df.select("channel", "seq").n_unique() == df.height
    assert df.height == lines * CHANNELS
    assert sorted(set(df["seq"].to_list())) == list(range(lines))


# --------------------------------------------------------------------------- commit policy


def test_a_minute_at_50_hz_is_six_lake_commits_not_sixty(counting, tmp_path):
    clock = FakeClock()
    sink = SpoolSink(counting, RUN, tmp_path / "spool", commit_interval_s=10.0, monotonic=clock)
    for second in range(60):  # the stream flushes once a second: 50 lines x 4 channels
        clock.now = second + 1.0
        sink.write(frame(second * RATE_HZ, RATE_HZ))
    assert counting.calls["power_sample"] == 6 and sink.commits == 6
    sink.close()
    assert counting.calls["power_sample"] == 6  # nothing was left for the close
    assert_lines_once(keys(counting), 60 * RATE_HZ)
    assert sink.rows_spooled == sink.rows_committed == sink.rows_written == 60 * RATE_HZ * CHANNELS
    assert not (tmp_path / "spool").exists()  # scratch: nothing left once all is committed


def test_commit_makes_what_was_spooled_visible_at_once(counting, tmp_path):
    clock = FakeClock()
    sink = SpoolSink(counting, RUN, tmp_path / "spool", monotonic=clock)
    for i in range(3):
        sink.write(frame(i * RATE_HZ, RATE_HZ))
    assert keys(counting).height == 0 and counting.calls["power_sample"] == 0
    assert sink.commit() == 3 * RATE_HZ * CHANNELS  # a window end
    assert counting.calls["power_sample"] == 1
    assert_lines_once(keys(counting), 3 * RATE_HZ)
    assert sink.commit() == 0 and counting.calls["power_sample"] == 1  # nothing new: no lake commit
    sink.close()


def test_max_rows_bounds_a_commit(counting, tmp_path):
    sink = SpoolSink(counting, RUN, tmp_path / "spool", max_rows=1000, monotonic=FakeClock())
    for i in range(10):  # 200 samples a write
        sink.write(frame(i * RATE_HZ, RATE_HZ))
    assert counting.calls["power_sample"] == 2
    sink.close()
    assert counting.calls["power_sample"] == 2
    assert_lines_once(keys(counting), 10 * RATE_HZ)


def test_a_failed_lake_append_keeps_the_segment_for_replay(tmp_path):
    down = DownLake(tmp_path / "lake")
    down.init()
    sink = SpoolSink(down, RUN, tmp_path / "spool", monotonic=FakeClock())
    sink.write(frame(0, RATE_HZ))
    with pytest.raises(LakeError, match="the lake is down") as failed:
        sink.commit()
    assert any("kept for a later commit or replay" in note for note in failed.value.__notes__)
    sink.close(commit=False)
    assert len(segments(sink.folder)) == 1  # deleted only after an append that returned
    lake = Lake(tmp_path / "lake")
    result = replay(lake, tmp_path / "spool")
    assert (result.segments, result.rows) == (1, RATE_HZ * CHANNELS)
    assert_lines_once(keys(lake), RATE_HZ)


def test_one_reader_per_run_and_replay_skips_a_live_one(counting, tmp_path):
    sink = SpoolSink(counting, RUN, tmp_path / "spool", monotonic=FakeClock())
    sink.write(frame(0, RATE_HZ))
    with pytest.raises(SpoolError, match=f"in use by another reader \\(pid {os.getpid()}\\)"):
        SpoolSink(counting, RUN, tmp_path / "spool")
    result = replay(counting, tmp_path / "spool")
    assert result.busy == [sink.folder] and result.segments == 0
    assert keys(counting).height == 0
    sink.close()
    assert_lines_once(keys(counting), RATE_HZ)


def test_a_new_reader_of_the_run_commits_what_a_stopped_one_left(counting, tmp_path):
    first = SpoolSink(counting, RUN, tmp_path / "spool", monotonic=FakeClock())
    first.write(frame(0, RATE_HZ))
    first.close(commit=False)  # stopped before committing: the spool keeps the samples
    second = SpoolSink(counting, RUN, tmp_path / "spool", monotonic=FakeClock())
    assert second.recovered_segments == 1
    second.write(frame(RATE_HZ, RATE_HZ))
    assert second.commit() == 2 * RATE_HZ * CHANNELS
    second.close()
    assert_lines_once(keys(counting), 2 * RATE_HZ)


def test_the_default_spool_folder_is_per_lake(tmp_path, monkeypatch):
    monkeypatch.setenv("MQEPI_CACHE", str(tmp_path / "cache"))
    a, b = Lake(tmp_path / "a"), Lake(tmp_path / "b")
    assert spool_dir_for(a).parent == tmp_path / "cache" / "spool"
    assert spool_dir_for(a) != spool_dir_for(b) and spool_dir_for(a) == spool_dir_for(Lake(tmp_path / "a"))


# --------------------------------------------------------------------------- a killed reader

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path

    import polars as pl

    from mqepi.lake.store import Lake
    from mqepi.meter import RunKey
    from mqepi.meter.spool import SpoolSink
    from mqepi.meter.stream import SAMPLE_COLUMNS

    lake_root, spool, max_rows = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    lake = Lake(lake_root)
    sink = SpoolSink(lake, RunKey("smollm2-135m", "uniform_q4km", "r-spool"), spool, commit_interval_s=1e9,
                     max_rows=max_rows)
    lines = 0
    while True:
        seq = [lines + i // 4 for i in range(200)]
        n = len(seq)
        sink.write(pl.DataFrame({
            "power_source": ["simulated"] * n, "meter_id": ["sim0"] * n, "channel": [i % 4 for i in range(n)],
            "node": [f"node{i % 4}" for i in range(n)], "seq": seq, "meter_time_ns": [s * 20_000_000 for s in seq],
            "host_time_ns": [1_764_000_000_000_000_000 + s * 20_000_000 for s in seq],
            "host_monotonic_ns": [s * 20_000_000 for s in seq], "power_w": [3.0 + (s % 7) * 0.5 for s in seq],
            "voltage_v": [230.0] * n, "current_a": [0.02] * n, "power_factor": [0.9] * n,
            "frequency_hz": [50.0] * n, "energy_counter_j": [float(s) for s in seq]}, schema=SAMPLE_COLUMNS))
        lines += 50
        print(f"acked {lines}", flush=True)
""")


def run_and_kill(tmp_path, max_rows: int, acks: int, delay_s: float) -> int:
    """Run the child until it acknowledged ``acks`` writes, let it go on for ``delay_s``,
    SIGKILL it (mid-write, mid-commit, wherever it is); returns the lines it acknowledged."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "lake"), str(tmp_path / "spool"),
                             str(max_rows)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    acked, seen, buffer = 0, 0, b""
    deadline = time.monotonic() + 120
    try:
        while seen < acks:
            assert time.monotonic() < deadline, "the child acknowledged too little in time"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"the child ended: {proc.stderr.read().decode()[-2000:]}"
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for line in done:
                acked = int(line.split()[1])
                seen += 1
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        rest = proc.stdout.read()  # acknowledgements printed before the kill landed
        acked = max([acked] + [int(line.split()[1]) for line in (buffer + rest).split(b"\n") if line.strip()])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("delay_s", [0.0, 0.013, 0.037])
@pytest.mark.parametrize(("max_rows", "acks"), [(10**9, 12), (600, 25)], ids=["spool-only", "committing"])
def test_every_acknowledged_sample_is_in_the_lake_once_after_a_kill(tmp_path, max_rows, acks, delay_s):
    lake = Lake(tmp_path / "lake")
    lake.init()
    acked = run_and_kill(tmp_path, max_rows, acks, delay_s)
    assert acked >= acks * RATE_HZ
    with warnings.catch_warnings(record=True) as caught:  # a torn tail, if the kill cut a write, says so
        warnings.simplefilter("always")
        result = replay(lake, tmp_path / "spool")
    assert all(issubclass(w.category, SpoolWarning) for w in caught), [str(w.message) for w in caught]
    assert result.torn == len(caught)
    df = keys(lake)
    lines = df["seq"].max() + 1
    assert lines >= acked  # every acknowledged line; at most the write the kill cut more
    assert_lines_once(df, lines)
    assert result.busy == [] and not segments(tmp_path / "spool" / RUN.model / RUN.config_id / RUN.run_id)
    again = replay(lake, tmp_path / "spool")
    assert (again.segments, again.rows) == (0, 0)
    assert keys(lake).height == df.height


def test_replaying_a_segment_the_lake_already_has_adds_nothing(counting, tmp_path):
    sink = SpoolSink(counting, RUN, tmp_path / "spool", monotonic=FakeClock())
    for i in range(3):
        sink.write(frame(i * RATE_HZ, RATE_HZ))
    sink.close(commit=False)
    (path,) = segments(sink.folder)
    saved = path.read_bytes()
    first = commit_segment(counting, path)  # committed; the reader dies before the next step ...
    path.write_bytes(saved)  # ... as if the file had never been deleted
    result = replay(counting, tmp_path / "spool")
    assert (result.segments, result.rows, result.rows_written) == (1, first.rows, 0)
    assert_lines_once(keys(counting), 3 * RATE_HZ)


# --------------------------------------------------------------------------- torn segments


def torn_spool(lake, tmp_path, writes: int, cut: int):
    """A spool as a reader killed in the middle of its last write leaves it: ``writes``
    acknowledged frames, the last ``cut`` bytes missing."""
    sink = SpoolSink(lake, RUN, tmp_path / "spool", monotonic=FakeClock())
    for i in range(writes):
        sink.write(frame(i * RATE_HZ, RATE_HZ))
    sink.close(commit=False)
    (path,) = segments(sink.folder)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - cut)
    return path


def test_a_torn_tail_is_dropped_with_a_warning_and_the_rest_committed(counting, tmp_path):
    path = torn_spool(counting, tmp_path, writes=4, cut=8 + 100)  # the end marker and part of write 4
    with pytest.warns(SpoolWarning, match=f"spool segment {path}: dropped a torn, unacknowledged tail"):
        result = replay(counting, tmp_path / "spool")
    assert (result.segments, result.torn, result.rows) == (1, 1, 3 * RATE_HZ * CHANNELS)
    assert_lines_once(keys(counting), 3 * RATE_HZ)
    assert not path.exists() and counting.calls["power_sample"] == 1


def test_a_segment_without_a_whole_schema_holds_nothing_acknowledged(counting, tmp_path):
    folder = tmp_path / "spool" / RUN.model / RUN.config_id / RUN.run_id
    folder.mkdir(parents=True)
    (folder / "seg-00000000.arrows").write_bytes(b"\xff\xff\xff")
    with pytest.warns(SpoolWarning, match="after 0 complete rows"):
        result = replay(counting, tmp_path / "spool")
    assert (result.segments, result.rows, result.torn) == (1, 0, 1)
    assert counting.calls["power_sample"] == 0 and not (tmp_path / "spool").exists()


def test_a_segment_over_the_size_limit_is_refused_and_kept(counting, tmp_path):
    path = torn_spool(counting, tmp_path, writes=2, cut=0)
    with pytest.raises(SpoolError, match=f"spool segment {path} is \\d+ bytes, over the 1000-byte limit"):
        replay(counting, tmp_path / "spool", max_segment_bytes=1000)
    assert path.exists() and counting.calls["power_sample"] == 0


def test_a_segment_of_another_lake_is_refused(counting, tmp_path):
    other = Lake(tmp_path / "other")
    other.init()
    path = torn_spool(other, tmp_path, writes=1, cut=0)
    with pytest.raises(SpoolError, match="was spooled for lake"):
        replay(counting, tmp_path / "spool")
    assert path.exists()


def test_segment_writer_acknowledges_only_whole_fsynced_writes(tmp_path):
    table = frame(0, RATE_HZ).to_arrow()
    path = tmp_path / "seg-00000000.arrows"
    writer = SegmentWriter(path, table.schema)
    writer.append(table)
    size = path.stat().st_size  # on disk when append returned, before any close
    writer.append(table)
    assert path.stat().st_size > size and writer.rows == 2 * table.num_rows
    writer.close()


# --------------------------------------------------------------------------- with a live reader


def test_a_window_end_commits_the_readers_samples(counting, tmp_path):
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def meter():  # a line every 20 ms, 2 channels, until stopped
        seq = 0
        while not stop.is_set():
            os.write(master, encode_line(seq, [4, 3], meter_time_us=1_000_000 + seq * 20_000))
            seq += 1
            time.sleep(0.02)

    sink = SpoolSink(counting, RUN, tmp_path / "spool", commit_interval_s=3600)
    reader = MeterReader(os.ttyname(slave), sink, flush_interval_s=0.05)
    feeder = threading.Thread(target=meter, daemon=True)
    try:
        reader.start()
        feeder.start()
        assert reader.wait_past(time.time_ns(), timeout_s=5.0)
        monitor = EnergyMonitor(counting, RUN, reader=reader)
        monitor.begin_window("work")
        time.sleep(0.5)
        assert counting.calls["power_sample"] == 0  # spooled, not yet committed
        measurement = monitor.end_window("work")
        assert counting.calls["power_sample"] == 1
        assert measurement.channels and all(c.n_samples >= 15 for c in measurement.channels)
    finally:
        stop.set()
        feeder.join(5)
        reader.stop()
        for fd in (master, slave):
            os.close(fd)
    assert counting.calls["power_sample"] == 2  # and the rest at the reader's stop
    assert keys(counting).height == reader.samples
    assert not (tmp_path / "spool").exists()


def test_a_failed_final_commit_fails_the_reader_and_keeps_the_spool(tmp_path):
    master, slave = pty.openpty()
    tty.setraw(slave)
    down = DownLake(tmp_path / "lake")
    down.init()
    reader = MeterReader(os.ttyname(slave), SpoolSink(down, RUN, tmp_path / "spool"), flush_interval_s=0.05)
    try:
        reader.start()
        seq, deadline = 0, time.monotonic() + 10
        while reader.rows_flushed < 20:  # lines until some are spooled (the port may open late)
            assert time.monotonic() < deadline, "the reader spooled nothing"
            os.write(master, encode_line(seq, [4, 3], meter_time_us=1_000_000 + seq * 20_000))
            seq += 1
            time.sleep(0.02)
        with pytest.raises(LakeError, match="the lake is down"):
            reader.stop()
    finally:
        for fd in (master, slave):
            os.close(fd)
    lake = Lake(tmp_path / "lake")
    result = replay(lake, tmp_path / "spool")
    assert result.rows == reader.rows_flushed == keys(lake).height >= 20
