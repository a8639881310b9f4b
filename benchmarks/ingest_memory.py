"""Benchmark: peak memory of ``mqepi ingest`` (a dry run) on a hostile and a large valid bundle.

Builds, in a temporary folder, a lab lake with one finished run of ``--samples`` power
samples per channel (two channels, 20 Hz) and its configuration, and writes it as a bundle
with ``build_bundle`` (``mqepi submit``). From that bundle it derives the dictionary bomb of
the security review: ``power_sample.parquet`` replaced by 20,000 rows whose ``producer`` is
one dictionary-encoded 60 KB string (a file of a few KB that decodes to 1.2 GB; footer sizes
within every limit; the manifest's hashes, bytes and rows updated to match).

Each measurement runs in a fresh child process of the same interpreter, and its peak RSS is
read from the kernel when the child is reaped (``os.wait4``, the per-child figure of
``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Linux carries a process's RSS high-water mark
across fork and exec, so the measuring parent imports nothing but the standard library and
the bundles are built in a child of their own:

* baseline: ``import mqepi.community.ingest`` (the interpreter, polars, pyarrow, mqepi);
* bomb: ``ingest(bomb, lake, dry_run=True)`` (rejected: its decoded size passes a limit
  before the string is decoded);
* bomb in the drop folder's sandbox: ``validate_isolated`` (its validator child's peak RSS from
  ``getrusage(RUSAGE_CHILDREN)`` and its status);
* valid: ``ingest(bundle, lake, dry_run=True)`` on the large valid bundle, with the bytes it
  decodes to (polars' estimate of its checked frames); then ``ingest`` for real into an empty
  lake (adds ``Lake.append``: its id re-check and writes).

Goal: the bomb costs about the baseline; the valid bundle costs the baseline plus a small
multiple of what it decodes to (docs/community.md states the bound).

    python benchmarks/ingest_memory.py [--samples 500000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL, CONFIG, RUN = "smollm2-135m", "uniform_q4km", "bench-run"
T0 = 1_764_000_000_000_000_000
BOMB_ROWS, BOMB_STRING_BYTES = 20_000, 60_000


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ building the bundles


def build_lake(root: Path, samples: int):
    """A lab lake with one configuration and one finished run of ``samples`` readings per channel (2 channels)."""
    # imported here (and below), in the building child only: the measuring parent stays small
    import numpy as np

    from mqepi.lake.store import Lake
    from mqepi.quant import maps
    from mqepi.quant.expansion import expand
    from mqepi.quant.quantize import Quantized, record

    lake = Lake(root)
    lake.init()
    profile = maps.load_profile(MODEL)
    exp = expand(maps.load_map(maps.maps_dir(MODEL) / f"{CONFIG}.json", profile), profile)
    q = Quantized(config_id=CONFIG, model=MODEL, path="/tmp/bench.gguf", file_sha256=sha("file"), file_size_bytes=10**8,
                  predicted_data_bytes=1, predicted_file_bytes=1, actual_data_bytes=1, bits_per_weight=exp.bits_per_weight,
                  fallbacks=0, duration_s=1.0, reused=False, effective_map_sha256=exp.effective_sha256)
    record(lake, exp, q, {t.name: (t.effective_type, t.n_bytes) for t in exp.tensors}, sha("base"), "b6543", "bench")
    key = lambda n: {"model": [MODEL] * n, "config_id": [CONFIG] * n, "run_id": [RUN] * n}  # noqa: E731
    run = {**key(1), "repeat": [0], "file_sha256": [sha("file")], "power_source": ["simulated"], "host": ["pi"],
           "provenance_json": ["{}"], "message": [None]}
    step, end = 50_000_000, T0 + samples * 50_000_000
    lake.record("run", {**run, "status": ["started"]}, recorded_at_ns=T0)
    lake.record("phase", {**key(1), "phase": ["idle_baseline"], "node": [None], "start_ns": [T0], "end_ns": [end],
                          "tokens": [None]})
    chunk = 250_000
    for channel in (0, 1):
        for lo in range(0, samples, chunk):
            i = np.arange(lo, min(lo + chunk, samples), dtype=np.int64)
            n = len(i)
            lake.record("power_sample", {
                **key(n), "power_source": ["simulated"] * n, "meter_id": ["sim0"] * n, "channel": [channel] * n,
                "node": [f"node{channel}"] * n, "seq": i, "meter_time_ns": i * step, "host_time_ns": T0 + i * step + channel,
                "host_monotonic_ns": i * step, "power_w": 3.0 + (i % 5), "voltage_v": [5.1] * n, "current_a": [0.8] * n,
                "power_factor": [None] * n, "frequency_hz": [None] * n, "energy_counter_j": i.astype(np.float64),
            })
    lake.record("run", {**run, "status": ["finished"]}, recorded_at_ns=end)
    return lake


def dictionary_bomb(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose power_sample.parquet is 20,000 rows of one row, its ``producer`` a
    60 KB string, written dictionary-encoded without an Arrow schema (the reader sees plain strings)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir()
    for f in bundle.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    row = pq.read_table(bundle / "power_sample.parquet").slice(0, 1)
    zeros = pa.array(np.zeros(BOMB_ROWS, dtype=np.int32))
    columns = []
    for field in row.schema:
        value = "x" * BOMB_STRING_BYTES if field.name == "producer" else row.column(field.name)[0].as_py()
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            columns.append(pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string())))
        else:
            columns.append(pa.array([value] * BOMB_ROWS, field.type))
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, names=row.schema.names), buf, compression="zstd", store_schema=False)
    data = buf.getvalue()
    (out / "power_sample.parquet").write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "power_sample.parquet":
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=BOMB_ROWS)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


# ------------------------------------------------------------------ the measurements (each in a child)


CHILD = {
    "baseline": "import mqepi.community.ingest\nprint('imported')",
    "ingest": """
import sys
from mqepi.community.ingest import ingest
from mqepi.community.problems import BundleRejected
from mqepi.lake.store import Lake
try:
    r = ingest(sys.argv[1], Lake(sys.argv[2]), dry_run=True)
    print(f"{r.status}: {r.events} events")
except BundleRejected as exc:
    print(f"rejected: {exc.report.problems[0]}")
""",
    "sandbox": """
import resource, sys
from mqepi.community.sandbox import validate_isolated
r = validate_isolated(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"validator child peak RSS {peak:.0f} MiB; {r.status}: {r.report.problems[0] if r.report.problems else ''}")
""",
    "append": """
import sys
from mqepi.community.ingest import ingest
from mqepi.lake.store import Lake
r = ingest(sys.argv[1], Lake(sys.argv[2]))
print(f"{r.status}: {sum(r.rows_written.values())} events written")
""",
    "decoded": """
import sys
from mqepi.community.validate import validate_bundle
b = validate_bundle(sys.argv[1])
print(sum(df.estimated_size() for df in b.frames.values()), b.events)
""",
}


def measure(mode: str, *args: str) -> tuple[float, float, str]:
    """Peak RSS (MiB) and wall time (s) of a fresh child running ``CHILD[mode]``, and its last output line."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD[mode], *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed ({proc.returncode}):\n{out}")
    lines = out.strip().splitlines()
    return usage.ru_maxrss / 1024, time.perf_counter() - t, lines[-1] if lines else ""


def build(tmp: Path, samples: int) -> None:
    """The lab lake, the valid bundle ``tmp/valid`` and the bomb ``tmp/bomb`` (in the building child)."""
    from mqepi.community.submit import build_bundle

    lake = build_lake(tmp / "lab", samples)
    bundle = build_bundle(lake, [RUN], tmp / "valid", submitter="bench", contact="bench@example.org")
    dictionary_bomb(bundle, tmp / "bomb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500_000, help="power samples per channel of the valid bundle")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the building child
    args = parser.parse_args()
    if args.build:
        build(args.build, args.samples)
        return
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="mqepi-ingest-memory-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        run(tmp, args.samples)
    finally:
        if not args.keep:
            shutil.rmtree(tmp)


def run(tmp: Path, samples: int) -> None:
    """Build (unless ``tmp`` has the bundles) and measure; print one line per measurement."""
    bundle, bomb = tmp / "valid", tmp / "bomb"
    t = time.perf_counter()
    if not (bundle.is_dir() and bomb.is_dir()):
        subprocess.run([sys.executable, __file__, "--build", str(tmp), "--samples", str(samples)], check=True)
    print(f"built in {time.perf_counter() - t:.0f} s: valid bundle {sum(f.stat().st_size for f in bundle.iterdir())} bytes; "
          f"bomb bundle {sum(f.stat().st_size for f in bomb.iterdir())} bytes, power_sample.parquet "
          f"{(bomb / 'power_sample.parquet').stat().st_size} bytes decoding to {BOMB_ROWS * BOMB_STRING_BYTES} bytes")
    target = str(tmp / "target-lake")
    base, base_s, _ = measure("baseline")
    print(f"{'baseline (import mqepi)':32} peak RSS {base:8.0f} MiB  {base_s:6.1f} s")
    rss = {}
    for label, mode, path in (("bomb: ingest --dry-run", "ingest", bomb), ("bomb: drop-folder sandbox", "sandbox", bomb),
                              ("valid: ingest --dry-run", "ingest", bundle), ("valid: drop-folder sandbox", "sandbox", bundle),
                              ("valid: ingest (appends)", "append", bundle)):
        rss[label], seconds, said = measure(mode, str(path), f"{target}-{mode}")
        print(f"{label:32} peak RSS {rss[label]:8.0f} MiB  {seconds:6.1f} s  (+{rss[label] - base:.0f} MiB)  {said[:150]}")
    decoded, n_events = measure("decoded", str(bundle))[2].split()
    mib = int(decoded) / 2**20
    print(f"valid bundle: {n_events} events, {mib:.0f} MiB decoded (polars estimated_size of the checked frames); "
          f"its peak RSS minus the baseline = {(rss['valid: ingest --dry-run'] - base) / mib:.1f} x decoded")


if __name__ == "__main__":
    main()
