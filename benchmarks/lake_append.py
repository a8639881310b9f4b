"""Benchmark: validated lake appends of power samples vs a bare Parquet write.

Records N power samples in batches of 10k rows through ``Lake.record`` (content ids,
schema checks, Parquet write, fsync, publish; the path the meter reader uses) and, in the same process, writes the
same batches with a bare ``pyarrow.parquet.write_table``. Pinned to one core
(``sched_setaffinity`` + ``POLARS_MAX_THREADS=1``). Prints samples/s, the ratio to the bare
write, and peak RSS. Goal: >= 200k validated samples/s, >= 0.5x the bare write.

    python benchmarks/lake_append.py [--samples 1000000] [--batch 10000]
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import factories  # noqa: E402

from mqepi.lake import events  # noqa: E402
from mqepi.lake.store import PARQUET_COMPRESSION, Lake  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    n_batches = args.samples // args.batch
    samples = n_batches * args.batch
    # One template of the event-specific columns; each batch shifts seq and the clocks.
    template = pl.DataFrame(factories.rows_for("power_sample", args.batch))

    def rows(i: int) -> pl.DataFrame:
        shift = i * args.batch
        return template.with_columns(
            pl.col("seq") + shift,
            pl.col("host_time_ns") + shift * 20_000_000,
            pl.col("host_monotonic_ns") + shift * 20_000_000,
            pl.col("meter_time_ns") + shift * 20_000_000,
        )

    with tempfile.TemporaryDirectory() as tmp:
        bare_dir = Path(tmp, "bare")
        bare_dir.mkdir()
        bare_s = 0.0
        for i in range(n_batches):
            batch = events.build("power_sample", rows(i))  # the same events the lake stores
            t0 = time.perf_counter()
            pq.write_table(batch.to_arrow(), bare_dir / f"{i}.parquet", compression=PARQUET_COMPRESSION)
            bare_s += time.perf_counter() - t0

        lake = Lake(Path(tmp, "lake"))
        lake.init()
        record_s = 0.0
        for i in range(n_batches):
            batch = rows(i)
            t0 = time.perf_counter()
            lake.record("power_sample", batch)  # build (content ids) + validate + write
            record_s += time.perf_counter() - t0

        built = [events.build("power_sample", rows(i)) for i in range(min(n_batches, 20))]
        check_lake = Lake(Path(tmp, "lake2"))
        check_lake.init()
        t0 = time.perf_counter()
        for batch in built:
            check_lake.append(batch)  # untrusted path: ids re-verified
        append_rate = len(built) * args.batch / (time.perf_counter() - t0)
        assert lake.read("power_sample", columns=["event_id"]).height == samples

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"samples               {samples:>12,d} in {n_batches} batches of {args.batch:,d} (one core)")
    print(f"bare write_table      {samples / bare_s:>12,.0f} samples/s")
    print(f"Lake.record           {samples / record_s:>12,.0f} samples/s   (goal >= 200,000; build + ids + checks + write)")
    print(f"record / bare         {bare_s / record_s:>12.2f} x           (goal >= 0.5)")
    print(f"Lake.append (untrusted, ids re-checked) {append_rate:>10,.0f} samples/s")
    print(f"peak RSS              {peak_mb:>12.0f} MB")

if __name__ == "__main__":
    main()
