"""Benchmark: what checking a bundle against the lake costs as the lake grows.

Builds a small community bundle (two finished runs, the community tests' lab data) and lakes
holding ``--runs`` unrelated lab runs (run, phase and power events each, written through
``Lake.record``), then times ``ingest(bundle, lake, dry_run=True)`` (every check, the lake's
included) against an empty lake and against the grown one, and a real ingest into the grown
one. The checks against the lake look runs and configurations up in the lake's index of
committed files (``mqepi.lake.index``), so the ratio should stay near 1 however many runs the
lake holds (the review measured 21 s for a dry run against a lake grown by 1,000 runs).

    python benchmarks/ingest_lake_size.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import factories  # noqa: E402
from test_community import RUNS, fill  # noqa: E402

from mqepi.community.ingest import ingest  # noqa: E402
from mqepi.community.submit import build_bundle  # noqa: E402
from mqepi.lake.store import Lake  # noqa: E402


def grow(lake: Lake, runs: int) -> None:
    """``runs`` unrelated lab runs, a few events of three types each, in one transaction per 100 runs."""
    lake.init()
    for start in range(0, runs, 100):
        with lake.transaction("benchmark"):
            for k in range(start, min(runs, start + 100)):
                for t in ("run", "phase", "power_sample"):
                    lake.append(factories.batch(t, 3, run_id=f"lab-{k}", config_id="uniform_q2k"))


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = fill(Lake(tmp / "source"))
        bundle = build_bundle(source, list(RUNS), tmp / "bundle", submitter="alice", contact="alice@example.org",
                              meter_calibration="none: simulated meter")
        empty, grown = Lake(tmp / "empty"), Lake(tmp / "grown")
        empty.init()
        t0 = time.perf_counter()
        grow(grown, args.runs)
        built = time.perf_counter() - t0
        files = grown.index().count
        small = timed(lambda: ingest(bundle, Lake(empty.root), dry_run=True))
        large = timed(lambda: ingest(bundle, Lake(grown.root), dry_run=True))
        t0 = time.perf_counter()
        status = ingest(bundle, Lake(grown.root)).status
        real = time.perf_counter() - t0
    print(f"grown lake          {args.runs:>8,} runs, {files:,} committed files (built in {built:.1f} s)")
    print(f"dry run, empty lake {small:>8.3f} s")
    print(f"dry run, grown lake {large:>8.3f} s   ratio {large / small:.2f} x  (goal: about 1)")
    print(f"ingest, grown lake  {real:>8.3f} s   ({status})")


if __name__ == "__main__":
    main()
