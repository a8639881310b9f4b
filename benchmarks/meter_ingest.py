"""Benchmark: meter line ingest (check + decode + validate + spool + lake append) vs a bare JSON loop.

Phase 1, throughput: the same in-memory block of v1 lines (4 channels each) goes through
  (a) a bare ``json.loads`` loop of each line's payload (the baseline),
  (b) the reader's framing and bulk decoder alone (check value, JSON, range checks),
  (c) the whole reader into a temporary lake through the spool: stamps, sequence tracking,
      ``SpoolSink`` (Arrow IPC append + fsync per flush: the acknowledgement) and a
      ``Lake.record`` per commit (content ids, schema checks, Parquet write, fsync, publish),
      with the batching of a real run played at full speed: the port hands over 1 s of
      meter lines at a time, the reader flushes every 1 s of meter time (200 samples) and the
      spool commits every 10 s of meter time (2,000 samples; the spool's monotonic clock is
      the meter time of the lines read, so a 10 s commit is 10 s of samples however fast they
      are read); then with the batching of a backlog read as fast as it comes (catch-up:
      ``--batch`` samples per flush and per commit).
Phase 2, memory: a streamed 24-hour-equivalent run (4 channels x 50 Hz = 17.3 M samples by
default, real-run batching as in (c): 8,640 lake commits) generated on the fly and recorded
into a temporary lake through the spool, in a child process so its peak RSS is its own; the
lines are never held in memory. RSS is noted after the imports (before streaming: what the
libraries cost) and at every tenth of the stream.

Pinned to one core (``sched_setaffinity`` + ``POLARS_MAX_THREADS=1``). Goals:
>= 200k samples/s on one core; peak RSS < 150 MB over the 24-hour stream. Not a test.

    python benchmarks/meter_ingest.py [--lines 250000] [--hours 24] [--skip-stream] [--stream-batching catch-up]
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

CHANNELS = 4
RATE_HZ = 50


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; reset_peak_rss() starts it afresh)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """A forked child inherits its parent's peak RSS: start counting afresh (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class LineMaker:
    """Realistic v1 lines, fast: per-channel value blocks come from a pool of variants."""

    def __init__(self, seed: int = 1):
        import random

        rng = random.Random(seed)
        self.pool = []
        for _ in range(997):
            p = [rng.choice((3, 3, 4, 4, 5, 6, 8)) for _ in range(CHANNELS)]
            u = [round(230 + rng.gauss(0, 0.3), 2) for _ in range(CHANNELS)]
            pf = [round(0.55 + rng.random() * 0.07, 3) for _ in range(CHANNELS)]
            i = [round(pi / (ui * pfi), 3) for pi, ui, pfi in zip(p, u, pf)]
            f = [round(50 + rng.gauss(0, 0.01), 2) for _ in range(CHANNELS)]
            body = (f'"p":{json.dumps(p, separators=(",", ":"))},"u":{json.dumps(u, separators=(",", ":"))},'
                    f'"i":{json.dumps(i, separators=(",", ":"))},"pf":{json.dumps(pf, separators=(",", ":"))},'
                    f'"f":{json.dumps(f, separators=(",", ":"))},').encode()
            self.pool.append(body)

    def line(self, seq: int) -> bytes:
        e = seq // 200 * 360
        payload = b'{"v":1,"seq":%d,"t":%d,"sim":1,%s"e":[%d,%d,%d,%d]}' % (
            seq, 1_000_000 + seq * 20_000, self.pool[seq % 997], e, e, e, e)
        return payload + b"*%08X\n" % zlib.crc32(payload)


class MemoryPort:
    """A port object over an iterator of byte chunks (one chunk a read); at the end it stops
    the reader. ``meter_s`` is the meter time of the lines handed over so far: the spool's
    clock in a real-run replay."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.in_waiting = 1 << 16
        self.reader = None
        self.lines = 0

    def read(self, n: int) -> bytes:
        chunk = next(self.chunks, b"")
        if not chunk:
            self.reader.request_stop()
        self.lines += chunk.count(b"\n")
        return chunk

    def meter_s(self) -> float:
        return self.lines / RATE_HZ


def by_lines(lines: list[bytes], per_chunk: int):
    for i in range(0, len(lines), per_chunk):
        yield b"".join(lines[i:i + per_chunk])


def streamed(maker: LineMaker, n_lines: int, rss_log: list, lines_per_chunk: int):
    """Lines generated on the fly; RSS noted at every tenth of the stream."""
    step = max(n_lines // 10, 1)
    for start in range(0, n_lines, lines_per_chunk):
        if start // step != (start + lines_per_chunk) // step:
            rss_log.append(rss_mb())
        yield b"".join(maker.line(s) for s in range(start, min(start + lines_per_chunk, n_lines)))


@dataclass(frozen=True)
class Batching:
    """How a run is cut: lines per port read, samples per reader flush (= spool write),
    samples per lake commit at most, and whether the 10 s commit clock is meter time."""

    name: str
    lines_per_read: int
    flush_rows: int
    commit_rows: int
    meter_clock: bool


#: A real run: the port delivers ~1 s of lines at a time, the reader flushes every second,
#: the spool commits every 10 s (meter time).
REAL_RUN = Batching("real-run", RATE_HZ, RATE_HZ * CHANNELS, 10**9, True)


def catch_up(batch: int) -> Batching:
    """A backlog read as fast as it comes: big reads, ``batch`` samples per flush and commit."""
    return Batching("catch-up", 320, batch, batch, False)


def record(chunks, root: str, batching: Batching):
    """Run a reader over ``chunks`` into a lake under ``root`` through a spool; returns the
    reader, the sink and the seconds it took (the final commit included)."""
    from mqepi.lake.store import Lake
    from mqepi.meter import RunKey
    from mqepi.meter.epimeter import MeterReader
    from mqepi.meter.spool import COMMIT_INTERVAL_S, SpoolSink

    lake = Lake(os.path.join(root, "lake"))
    lake.init()
    port = MemoryPort(chunks)
    sink = SpoolSink(lake, RunKey("bench", "bench", "bench"), Path(root) / "spool", commit_interval_s=COMMIT_INTERVAL_S,
                     max_rows=batching.commit_rows, monotonic=port.meter_s if batching.meter_clock else time.monotonic)
    reader = MeterReader(port, sink, power_source="simulated", max_rows=batching.flush_rows, flush_interval_s=3600)
    port.reader = reader
    t0 = time.perf_counter()
    reader.run()
    return reader, sink, time.perf_counter() - t0


def ingest(lines: list[bytes], batching: Batching) -> tuple[float, object, object]:
    tmp = tempfile.mkdtemp(prefix="mqepi-bench-")
    try:
        reader, sink, seconds = record(by_lines(lines, batching.lines_per_read), tmp, batching)
        assert reader.rows_flushed == sink.rows_written == len(lines) * CHANNELS, (reader.summary(), sink.rows_written)
    finally:
        shutil.rmtree(tmp)
    return seconds, reader, sink


def throughput(n_lines: int, batch: int) -> None:
    from mqepi.meter.protocol import JsonLineDecoder

    maker = LineMaker()
    lines = [maker.line(s) for s in range(n_lines)]
    samples = n_lines * CHANNELS
    print(f"lines                  {n_lines:>12,d} x {CHANNELS} channels = {samples:,d} samples, "
          f"{sum(map(len, lines)) / n_lines:.0f} bytes/line")

    t0 = time.perf_counter()
    for line in lines:
        json.loads(line[:line.rindex(b"*")])
    bare_s = time.perf_counter() - t0

    decoder = JsonLineDecoder()
    t0 = time.perf_counter()
    decoded = 0
    for start in range(0, n_lines, batch // CHANNELS):
        payloads = [decoder.check(line[:-1])[0] for line in lines[start:start + batch // CHANNELS]]
        frame, issues = decoder.decode(payloads)
        decoded += frame.height
    decode_s = time.perf_counter() - t0
    assert decoded == samples
    print(f"bare json.loads loop   {samples / bare_s:>12,.0f} samples/s")
    print(f"check + bulk decode    {samples / decode_s:>12,.0f} samples/s   (CRC-32, JSON, range checks)")
    for batching in (REAL_RUN, catch_up(batch)):
        seconds, reader, sink = ingest(lines, batching)
        print(f"reader -> spool -> lake {samples / seconds:>11,.0f} samples/s   ({batching.name}: {reader.flushes:,d} "
              f"spool writes, {sink.commits:,d} lake commits of {samples / max(sink.commits, 1):,.0f} samples; "
              f"goal >= 200,000)")
        print(f"  / bare json.loads    {bare_s / seconds:>12.2f} x")
        if batching.meter_clock:
            rate = CHANNELS * RATE_HZ
            print(f"  at the meter's rate  {100 * rate / (samples / seconds):>12.2f} % of one core   "
                  f"({rate} samples/s; {samples / seconds / rate:,.0f} x real time)")
    print(f"peak RSS (phase 1)     {peak_rss_mb():>12.0f} MB   (holds the {sum(map(len, lines)) / 2**20:.0f} MB "
          "of lines)")


def rss_split() -> str:
    """Anonymous vs file-backed (shared library pages, shared and evictable) RSS."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                fields[line.split(":")[0]] = int(line.split()[1]) / 1024
    return f"{fields.get('RssAnon', 0):.0f} MB anonymous + {fields.get('RssFile', 0):.0f} MB library pages"


def stream(hours: float, batch: int, batching_name: str) -> None:
    import mqepi.meter.epimeter  # noqa: F401
    import mqepi.meter.spool  # noqa: F401
    from mqepi.lake.store import Lake  # noqa: F401 - imported first so the baseline includes the stack

    reset_peak_rss()
    baseline, baseline_split = rss_mb(), rss_split()
    batching = REAL_RUN if batching_name == REAL_RUN.name else catch_up(batch)
    n_lines = int(hours * 3600 * RATE_HZ)
    samples = n_lines * CHANNELS
    tmp = tempfile.mkdtemp(prefix="mqepi-bench-")
    rss_log: list[float] = []
    try:
        reader, sink, seconds = record(streamed(LineMaker(), n_lines, rss_log, batching.lines_per_read), tmp, batching)
        end_split = rss_split()
        assert reader.rows_flushed == sink.rows_written == samples, reader.summary()
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    finally:
        shutil.rmtree(tmp)
    print(f"stream                 {hours:g} h at {CHANNELS} ch x {RATE_HZ} Hz = {samples:,d} samples, generated "
          f"on the fly ({batching.name}): {reader.flushes:,d} spool writes, {sink.commits:,d} lake commits, "
          f"{disk / 2**20:,.0f} MB of Parquet")
    print(f"stream throughput      {samples / seconds:>12,.0f} samples/s   (includes generating the lines)")
    print(f"RSS after imports      {baseline:>12.0f} MB   (python + polars + pyarrow + pandera + mqepi: {baseline_split})")
    print(f"peak RSS (stream)      {peak_rss_mb():>12.0f} MB   (goal < 150 MB; {peak_rss_mb() - baseline:.0f} MB over the "
          "imports)")
    drift = f"{rss_log[-1] - rss_log[0]:+.0f} MB from the first tenth to the last" if rss_log else ""
    print(f"RSS at each 10 %       {' '.join(f'{x:.0f}' for x in rss_log)} MB   ({drift}; flat = bounded however "
          "long the run)")
    print(f"RSS at the end         {rss_mb():>12.0f} MB   ({end_split})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=250_000, help="lines for the throughput phase")
    parser.add_argument("--hours", type=float, default=24.0, help="length of the streamed run")
    parser.add_argument("--batch", type=int, default=50_000, help="samples per flush and per commit, catch-up batching")
    parser.add_argument("--stream-batching", choices=("real-run", "catch-up"), default="real-run")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores to run on (the goal is for one)")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--only-stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))

    if args.only_stream:
        stream(args.hours, args.batch, args.stream_batching)
        return
    print(f"one process pinned to {args.cores} core(s) of {os.cpu_count()}")
    throughput(args.lines, args.batch)
    if not args.skip_stream:
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--only-stream", "--hours", str(args.hours), "--batch",
                        str(args.batch), "--cores", str(args.cores), "--stream-batching", args.stream_batching],
                       check=True)


if __name__ == "__main__":
    main()
