"""Benchmark: where the derived views spend their time (DuckDB's profiler, view by view).

Builds (or reuses, ``--dir D --keep``) the synthetic lake of ``benchmarks/projections.py`` and
loads the SQL contract over it (:func:`mqepi.results.sql.connect`). Then each view, in load
order, is materialised once with DuckDB's JSON profiler on, every view it reads already
materialised before it (a view is renamed and a temporary table of its rows takes its name), so
each line is the view's own cost: its wall time, rows, and its most expensive operators
(DuckDB's ``operator_timing``, summed over the plan by operator name). A bare
``SELECT sum(power_w)`` over the power samples' files is the baseline, as in
projections.py. The table goes into docs/performance.md.

    python benchmarks/profile_views.py [--runs 1000] [--samples 1e6] [--views run_energy,...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).parent))
import projections  # noqa: E402  (the synthetic lake)

from mqepi.analysis import SQL_FILES  # noqa: E402
from mqepi.lake.store import Lake  # noqa: E402
from mqepi.results import sql  # noqa: E402
from mqepi.schemas import EVENT_TYPES  # noqa: E402

#: Views of the contract in load order (names created by CREATE OR REPLACE VIEW).
VIEW_RE = re.compile(r"CREATE OR REPLACE VIEW\s+(\w+)\s+AS", re.I)


def contract_views() -> list[str]:
    return [m.group(1) for path in SQL_FILES for m in VIEW_RE.finditer(path.read_text())]


def operators(profile: dict) -> dict[str, float]:
    """Seconds per operator name over a DuckDB JSON profile's tree."""
    out: dict[str, float] = defaultdict(float)
    todo = list(profile.get("operator") or profile.get("children") or [])
    while todo:
        node = todo.pop()
        name = node.get("name") or node.get("operator_name") or "?"
        out[name.strip()] += float(node.get("timing", node.get("operator_timing", 0.0)))
        todo.extend(node.get("children", []))
    return out


def materialise(con: duckdb.DuckDBPyConnection, view: str, profile_path: Path) -> tuple[float, int, dict[str, float]]:
    """Replace ``view`` by a temporary table of its rows; (seconds, rows, operator seconds)."""
    con.execute(f"ALTER VIEW {view} RENAME TO _prof_sql_{view}")
    con.execute("SET enable_profiling = 'json'")
    con.execute(f"SET profiling_output = '{profile_path}'")
    t0 = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE {view} AS SELECT * FROM _prof_sql_{view}")
    seconds = time.perf_counter() - t0
    con.execute("SET enable_profiling = 'no_output'")
    con.execute("PRAGMA disable_profiling")
    rows = con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0]
    try:
        ops = operators(json.loads(profile_path.read_text()))
    except (OSError, ValueError):
        ops = {}
    return seconds, rows, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--samples", type=float, default=1e6)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--views", default="", help="comma-separated views to profile (default: every view)")
    parser.add_argument("--top", type=int, default=4, help="operators shown per view")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="mqepi-profile-"))
    root = work / "lake"
    try:
        if args.keep and (root / "run").is_dir():
            lake = Lake(root)
        else:
            lake, _ = projections.build_lake(root, args)
        files = sum(len(lake.files(t)) for t in EVENT_TYPES)
        projections.bare_scan(lake)
        bare_s, _ = projections.bare_scan(lake)
        print(f"lake: {args.runs:,d} runs, {int(args.samples):,d} samples, {files:,d} files; bare scan {bare_s:.3f} s")
        con = sql.connect(lake)
        con.execute(f"SET VARIABLE mqepi_bootstrap = {args.bootstrap}")
        wanted = [v for v in args.views.split(",") if v] or None
        total = 0.0
        print("| view | s | x bare | rows | top operators (s) |\n|---|---:|---:|---:|---|")
        for view in contract_views():
            if view in ("power_source_figures",):
                continue
            seconds, rows, ops = materialise(con, view, work / "profile.json")
            total += seconds
            if wanted and view not in wanted:
                continue
            top = ", ".join(f"{name} {s:.2f}" for name, s in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top])
            print(f"| {view} | {seconds:.2f} | {seconds / bare_s:.1f} | {rows:,d} | {top} |", flush=True)
        print(f"| **all views** | {total:.2f} | {total / bare_s:.1f} | | |")
        con.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
