"""Benchmark: meter line ingest (check + decode + validate + lake append) vs a bare JSON loop.

Phase 1, throughput: the same in-memory block of v1 lines (4 channels each) goes through
  (a) a bare ``json.loads`` loop of each line's payload (the baseline),
  (b) the reader's framing and bulk decoder alone (check value, JSON, range checks),
  (c) the whole reader into a temporary lake: stamps, sequence tracking, ``Lake.record``
      (content ids, schema checks, Parquet write, fsync, publish) in 50k-sample batches.
Phase 2, memory: a streamed 24-hour-equivalent run (4 channels x 50 Hz = 17.3 M samples by
default) generated on the fly and recorded into a temporary lake, in a child process so its
peak RSS is its own; the lines are never held in memory.

Pinned to one core (``sched_setaffinity`` + ``POLARS_MAX_THREADS=1``). Goals:
>= 200k samples/s on one core; peak RSS < 150 MB over the 24-hour stream. Not a test.

    python benchmarks/meter_ingest.py [--lines 250000] [--hours 24] [--skip-stream]
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
    """A port object over an iterator of byte chunks; at the end it stops the reader."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.in_waiting = 1 << 16
        self.reader = None

    def read(self, n: int) -> bytes:
        chunk = next(self.chunks, b"")
        if not chunk:
            self.reader.request_stop()
        return chunk


def chunked(blob: bytes, size: int = 1 << 16):
    for i in range(0, len(blob), size):
        yield blob[i:i + size]


def streamed(maker: LineMaker, n_lines: int, rss_log: list, lines_per_chunk: int = 320):
    """Lines generated on the fly; RSS noted at every tenth of the stream."""
    step = max(n_lines // 10, 1)
    for start in range(0, n_lines, lines_per_chunk):
        if start // step != (start + lines_per_chunk) // step:
            rss_log.append(rss_mb())
        yield b"".join(maker.line(s) for s in range(start, min(start + lines_per_chunk, n_lines)))


def record(chunks, root: str, batch: int):
    from mqepi.lake.store import Lake
    from mqepi.meter import RunKey
    from mqepi.meter.epimeter import MeterReader
    from mqepi.meter.stream import LakeSink

    lake = Lake(root)
    lake.init()
    port = MemoryPort(chunks)
    reader = MeterReader(port, LakeSink(lake, RunKey("bench", "bench", "bench")), power_source="simulated",
                         max_rows=batch, flush_interval_s=3600)
    port.reader = reader
    t0 = time.perf_counter()
    reader.run()
    return reader, time.perf_counter() - t0


def throughput(n_lines: int, batch: int) -> None:
    from mqepi.meter.protocol import JsonLineDecoder

    maker = LineMaker()
    lines = [maker.line(s) for s in range(n_lines)]
    blob = b"".join(lines)
    samples = n_lines * CHANNELS
    print(f"lines                  {n_lines:>12,d} x {CHANNELS} channels = {samples:,d} samples, "
          f"{len(blob) / n_lines:.0f} bytes/line")

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

    tmp = tempfile.mkdtemp(prefix="mqepi-bench-")
    try:
        reader, ingest_s = record(chunked(blob), os.path.join(tmp, "lake"), batch)
        assert reader.rows_flushed == samples, reader.summary()
    finally:
        shutil.rmtree(tmp)
    print(f"bare json.loads loop   {samples / bare_s:>12,.0f} samples/s")
    print(f"check + bulk decode    {samples / decode_s:>12,.0f} samples/s   (CRC-32, JSON, range checks)")
    print(f"reader -> lake         {samples / ingest_s:>12,.0f} samples/s   (goal >= 200,000: stamps, sequence, "
          f"decode, Lake.record in {batch:,d}-sample batches)")
    print(f"reader -> lake / bare  {bare_s / ingest_s:>12.2f} x")
    print(f"peak RSS (phase 1)     {peak_rss_mb():>12.0f} MB   (holds the {len(blob) / 2**20:.0f} MB line block)")


def stream(hours: float, batch: int) -> None:
    import mqepi.meter.epimeter  # noqa: F401
    from mqepi.lake.store import Lake  # noqa: F401 - imported first so the baseline includes the stack

    reset_peak_rss()
    baseline = rss_mb()
    n_lines = int(hours * 3600 * RATE_HZ)
    samples = n_lines * CHANNELS
    tmp = tempfile.mkdtemp(prefix="mqepi-bench-")
    rss_log: list[float] = []
    try:
        reader, seconds = record(streamed(LineMaker(), n_lines, rss_log), os.path.join(tmp, "lake"), batch)
        assert reader.rows_flushed == samples, reader.summary()
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    finally:
        shutil.rmtree(tmp)
    print(f"stream                 {hours:g} h at {CHANNELS} ch x {RATE_HZ} Hz = {samples:,d} samples, generated "
          f"on the fly, {reader.flushes} batches, {disk / 2**20:,.0f} MB of Parquet")
    print(f"stream throughput      {samples / seconds:>12,.0f} samples/s   (includes generating the lines)")
    print(f"RSS after imports      {baseline:>12.0f} MB   (python + polars + pyarrow + pandera + mqepi)")
    print(f"peak RSS (stream)      {peak_rss_mb():>12.0f} MB   (goal < 150 MB)")
    print(f"RSS at each 10 %       {' '.join(f'{x:.0f}' for x in rss_log)} MB   (flat: bounded however long the run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=250_000, help="lines for the throughput phase")
    parser.add_argument("--hours", type=float, default=24.0, help="length of the streamed run")
    parser.add_argument("--batch", type=int, default=50_000, help="samples per lake append")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores to run on (the goal is for one)")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--only-stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))

    if args.only_stream:
        stream(args.hours, args.batch)
        return
    print(f"one process pinned to {args.cores} core(s) of {os.cpu_count()}")
    throughput(args.lines, args.batch)
    if not args.skip_stream:
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--only-stream", "--hours", str(args.hours), "--batch",
                        str(args.batch), "--cores", str(args.cores)], check=True)


if __name__ == "__main__":
    main()
