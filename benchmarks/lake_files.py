"""Benchmark: small files on the Delta lake, before and after ``lake compact``, vs the old layout.

Writes ``--runs`` runs of power samples (``--samples`` in all, 10 Hz) over ``--configs``
configurations of one model, one append per run (the way a sweep writes them):

* **old layout** (before Delta Lake): one Parquet file per run in hive folders
  ``model=/config_id=/run_id=``, written with ``pyarrow.parquet.write_table`` (the same bytes
  the old lake wrote, without its log);
* **Delta lake**: ``Lake.record`` per run (one commit each: files per configuration partition),
  then ``mqepi.lake.compact.compact``.

For each, a bare DuckDB ``SELECT count(*), sum(power_w)`` over the files (the lake's active
files from its log; warm, best of three) and the number of files. Goals (issue 17): after
compaction at most a few files per (event type, partition), and the scan >= 5x faster than
over the old layout. Not a test.

    python benchmarks/lake_files.py [--runs 10000] [--samples 1e7] [--configs 24]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mqepi.lake import events  # noqa: E402
from mqepi.lake.compact import compact  # noqa: E402
from mqepi.lake.store import Lake  # noqa: E402
from mqepi.results.sql import committed_files  # noqa: E402

T0 = 1_764_000_000_000_000_000
MODEL = "bench-model"


def run_rows(config: str, run_id: str, n: int, offset: int) -> pl.DataFrame:
    step = 100_000_000  # 10 Hz
    t = T0 + offset * step + np.arange(n, dtype=np.int64) * step
    return pl.DataFrame({
        "model": MODEL, "config_id": config, "run_id": run_id, "power_source": "simulated", "meter_id": "sim0",
        "channel": pl.Series(np.zeros(n, dtype=np.int32)), "node": "node0",
        "seq": pl.Series(np.arange(n, dtype=np.int64)), "meter_time_ns": pl.Series(t - T0),
        "host_time_ns": pl.Series(t), "host_monotonic_ns": pl.Series(t - T0),
        "power_w": pl.Series(5.0 + (np.arange(n) % 7) * 0.5), "voltage_v": None, "current_a": None,
        "power_factor": None, "frequency_hz": None, "energy_counter_j": None,
    })


def scan(files: list[str]) -> float:
    con = duckdb.connect()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        con.execute("SELECT count(*), sum(power_w) FROM read_parquet(?, hive_partitioning = true, "
                    "union_by_name = true)", [files]).fetchall()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--samples", type=float, default=1e7)
    parser.add_argument("--configs", type=int, default=24)
    args = parser.parse_args()
    per_run = max(1, int(args.samples) // args.runs)
    runs = [(f"cfg{i % args.configs:02d}", f"run{i:05d}") for i in range(args.runs)]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp, "old")
        lake = Lake(Path(tmp, "lake"))
        lake.init()
        t_old = t_lake = 0.0
        for i, (config, run_id) in enumerate(runs):
            rows = run_rows(config, run_id, per_run, i * per_run)
            built = events.build("power_sample", rows)
            folder = old / "power_sample" / f"model={MODEL}" / f"config_id={config}" / f"run_id={run_id}"
            t0 = time.perf_counter()
            folder.mkdir(parents=True)
            pq.write_table(built.drop("model", "config_id", "run_id").to_arrow(),
                           folder / f"ev-{events.batch_id(built['event_id'])}.parquet", compression="zstd")
            t_old += time.perf_counter() - t0
            t0 = time.perf_counter()
            lake.record("power_sample", rows)
            t_lake += time.perf_counter() - t0
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} runs written", file=sys.stderr, flush=True)
        old_files = sorted(str(p) for p in old.rglob("*.parquet"))
        before = committed_files(lake)["power_sample"]
        t0 = time.perf_counter()
        result = compact(lake, ["power_sample"])[0]
        t_compact = time.perf_counter() - t0
        after = committed_files(Lake(lake.root))["power_sample"]
        partitions = len({Path(f).parent for f in after})
        s_old, s_before, s_after = scan(old_files), scan(before), scan(after)
        rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    print(f"runs {args.runs:,d}, samples {per_run * args.runs:,d} ({per_run} per run), configurations {args.configs}")
    print(f"old layout      {len(old_files):>7,d} files   scan {s_old:7.3f} s   (write {t_old:6.1f} s)")
    print(f"delta, appended {len(before):>7,d} files   scan {s_before:7.3f} s   (Lake.record {t_lake:6.1f} s, "
          f"{args.runs / t_lake:.0f} runs/s)")
    print(f"delta, compact  {len(after):>7,d} files   scan {s_after:7.3f} s   (compact {t_compact:6.1f} s, "
          f"version {result.version}; {len(after) / partitions:.1f} files per partition incl. the seed's)")
    print(f"scan: old layout / compacted = {s_old / s_after:.1f}x   (goal >= 5x)")
    print(f"RSS now {rss:.0f} MB")


if __name__ == "__main__":
    main()
