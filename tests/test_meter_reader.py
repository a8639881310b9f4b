"""The reader on real byte streams: a pty, pyserial's loop://, a real lake."""

from __future__ import annotations

import os
import pty
import time
import tty

import polars as pl
import pytest
import serial

from mqepi.errors import LakeError
from mqepi.lake.store import Lake
from mqepi.meter import MeterError, RunKey
from mqepi.meter.epimeter import MeterReader
from mqepi.meter.protocol import encode_line
from mqepi.meter.stream import LakeSink

RUN = RunKey("smollm2-135m", "uniform_q4km", "r-read")


def line(seq, power=(4, 3), t_us=None, **kw):
    return encode_line(seq, list(power), meter_time_us=t_us if t_us is not None else 1_000_000 + seq * 20_000, **kw)


class Pty:
    """A pty pair in raw mode: write to ``master``, the reader opens ``path``."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def tty_pair():
    pair = Pty()
    yield pair
    pair.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_reader_records_lines_from_a_pty_into_the_lake(lake, tty_pair):
    reader = MeterReader(tty_pair.path, LakeSink(lake, RUN), meter_id="m0", nodes={0: "pi0", 1: "pi1"}).start()
    wait_for(lambda: reader._port is not None)
    for seq in range(20):
        tty_pair.write(line(seq, power=(4 + seq % 3, 3), voltage_v=[230.1, 229.9]))
    wait_for(lambda: reader.lines >= 20)
    reader.stop()
    df = lake.read("power_sample", run_id="r-read").sort("host_time_ns", "channel")
    assert df.height == 40
    assert df["seq"].to_list() == [s for s in range(20) for _ in (0, 1)]
    assert df["node"].to_list()[:2] == ["pi0", "pi1"]
    assert set(df["power_source"]) == {"epi-meter"}
    assert df["meter_time_ns"][0] == 1_000_000_000
    assert df.filter(pl.col("channel") == 0)["power_w"].to_list()[:4] == [4.0, 5.0, 6.0, 4.0]
    # one strictly increasing arrival stamp per line, shared by its channels
    per_line = df.group_by("seq").agg(pl.col("host_time_ns").n_unique().alias("n"), pl.col("host_time_ns").first())
    assert per_line["n"].to_list() == [1] * 20
    stamps = per_line.sort("seq")["host_time_ns"].to_list()
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert reader.incident_counts == {}


def test_reader_resynchronises_and_records_every_fault(lake, tty_pair):
    reader = MeterReader(tty_pair.path, LakeSink(lake, RUN)).start()
    wait_for(lambda: reader._port is not None)
    good = line(1)
    corrupted = line(2).replace(b"[4,3]", b"[9,3]")  # check value no longer matches
    stream = b"".join([
        b"\x17\xfe{{partial garbage",  # a fragment, then
        line(0),  # a good line after garbage bytes on the same line
        good,
        corrupted,
        line(3),
        line(3),  # a duplicate
        b"\xff" * 1500 + b"\n",  # an over-long line
        line(7),  # 4-6 lost
        b'{"v":1,"seq":8,"p":[-1,3]}*' + b"%08X" % __import__("zlib").crc32(b'{"v":1,"seq":8,"p":[-1,3]}') + b"\n",
        line(0, t_us=50),  # the meter restarted
        line(1, t_us=20_050),
    ])
    for i in range(0, len(stream), 97):  # arbitrary chunking, like a UART
        tty_pair.write(stream[i:i + 97])
    wait_for(lambda: reader.lines >= 9)
    reader.stop()
    counts = reader.incident_counts
    assert counts["bad_check"] == 1
    assert counts["duplicate"] == 1
    assert counts["meter_reset"] == 1
    assert counts["invalid"] == 1  # negative power on channel 0 of line 8
    assert counts["garbage"] >= 2  # the prefix and the over-long line (its tail may count too)
    gaps = [(i.seq_from, i.seq_to) for i in reader.incidents if i.kind == "gap"]
    assert gaps == [(2, 2), (4, 6)]
    assert reader.missing_lines == 4
    df = lake.read("power_sample", run_id="r-read")
    assert sorted(df.filter(pl.col("channel") == 0)["seq"].to_list()) == [0, 0, 1, 1, 3, 7]
    assert df.filter(pl.col("seq") == 8)["channel"].to_list() == [1]  # the good channel of line 8
    details = [i.detail for i in reader.incidents if i.kind == "invalid"]
    assert "power_w = -1.0" in details[0]


def test_reader_over_a_loop_url_flushes_in_bounded_batches(lake):
    port = serial.serial_for_url("loop://", timeout=0.05)
    sink = LakeSink(lake, RUN)
    reader = MeterReader(port, sink, max_rows=400, flush_interval_s=60)
    reader.start()
    for seq in range(1000):
        port.write(line(seq))
    wait_for(lambda: reader.lines >= 1000)
    reader.stop()
    assert lake.read("power_sample", run_id="r-read").height == 2000
    assert reader.flushes >= 4  # flushed by size, not by the (60 s) clock
    assert reader.missing_lines == 0


def test_a_failed_lake_write_fails_the_reader(tmp_path, tty_pair):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    broken = Lake(blocker / "lake")  # cannot create folders under a file
    reader = MeterReader(tty_pair.path, LakeSink(broken, RUN), flush_interval_s=0.05).start()
    wait_for(lambda: reader._port is not None)
    tty_pair.write(line(0) + line(1))
    wait_for(lambda: reader.error is not None or reader._write_error is not None)
    with pytest.raises(LakeError, match="not-a-folder"):
        reader.stop()


def test_reader_reconnects_after_unplug(lake, tmp_path):
    link = tmp_path / "ttyMETER"
    first = Pty()
    os.symlink(first.path, link)
    reader = MeterReader(str(link), LakeSink(lake, RUN), backoff_initial_s=0.02).start()
    wait_for(lambda: reader._port is not None)
    first.write(line(0) + line(1))
    wait_for(lambda: reader.latest_host_time_ns > 0)
    first.close()  # unplugged
    os.unlink(link)
    wait_for(lambda: reader.disconnects >= 1)
    second = Pty()  # plugged in again, under the same stable name
    os.symlink(second.path, link)
    wait_for(lambda: reader.reconnects >= 1)
    second.write(line(5) + line(6))
    wait_for(lambda: reader.lines >= 4)
    reader.stop()
    second.close()
    kinds = [i.kind for i in reader.incidents]
    assert kinds.index("disconnect") < kinds.index("reconnect")
    assert [(i.seq_from, i.seq_to) for i in reader.incidents if i.kind == "gap"] == [(2, 4)]
    assert sorted(lake.read("power_sample", run_id="r-read")["seq"].unique().to_list()) == [0, 1, 5, 6]


def test_simulated_lines_are_recorded_as_simulated_whatever_the_setting(lake, tty_pair):
    reader = MeterReader(tty_pair.path, LakeSink(lake, RUN), power_source="epi-meter").start()
    wait_for(lambda: reader._port is not None)
    tty_pair.write(line(0, simulated=True) + line(1))
    wait_for(lambda: reader.lines >= 2)
    reader.stop()
    df = lake.read("power_sample", run_id="r-read").sort("seq")
    assert df["power_source"].to_list() == ["simulated", "simulated", "epi-meter", "epi-meter"]


def test_reader_rejects_bad_settings_and_unopenable_ports(lake):
    with pytest.raises(MeterError, match="power_source 'nvml'"):
        MeterReader("loop://", LakeSink(lake, RUN), power_source="nvml")
    with pytest.raises(MeterError, match="run_id 'bad/run'"):
        RunKey("m", "c", "bad/run")
    reader = MeterReader("/dev/does-not-exist", LakeSink(lake, RUN), reconnect=False)
    with pytest.raises(MeterError, match="cannot open meter port '/dev/does-not-exist'"):
        reader.run(duration_s=1)


def test_incident_log_is_written_as_json_lines(lake, tty_pair, tmp_path):
    log = tmp_path / "incidents.jsonl"
    reader = MeterReader(tty_pair.path, LakeSink(lake, RUN))
    reader.log_incidents_to(log)
    reader.start()
    wait_for(lambda: reader._port is not None)
    tty_pair.write(line(0) + line(3))
    wait_for(lambda: reader.lines >= 2)
    reader.stop()
    import json

    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert entries == [{"kind": "gap", "host_time_ns": entries[0]["host_time_ns"], "detail": "2 lines missing",
                        "seq_from": 1, "seq_to": 2}]
