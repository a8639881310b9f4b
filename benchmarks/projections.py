"""Benchmark: materialised derived tables (mqepi.results.snapshots.recompute) vs a bare DuckDB scan.

Builds a synthetic lake through ``Lake.record`` (real content ids, schema checks and the
lake's own file layout and names; chunks of runs per call): ``--runs`` runs of
``--repeats`` repeats x ``--configs`` configurations per model, each run with its run
events, ``--windows`` phase windows (idle, three benchmarks, prefill, decode, ...), its
share of ``--samples`` power samples (10 Hz), 12 thermal samples, ``--questions`` answers per
benchmark, perplexity, kld and throughput. Then, in this process, times:

* bare scan: ``SELECT sum(power_w)`` over the same power_sample files with DuckDB (the
  baseline; run twice, the second, warm, figure is used);
* listing: ``list_lake`` alone (the Delta logs read: the lake state, every run's files);
* full rebuild: ``recompute`` into an empty folder, in a child process (its peak RSS):
  every derived table materialised (run_energy, run_accuracy, run_metrics, config_summary,
  matched_pairs, pareto_frontier);
* unchanged: ``recompute`` again (reused); incremental: one new run recorded, then
  ``recompute`` into the same folder (``--rounds`` times, the median);
* interactive: ``SELECT * FROM config_summary`` / ``pareto_frontier`` as ``mqepi sql`` runs it
  (the snapshot check, a connection whose derived views read the snapshot, the query), in
  this process and as a new ``mqepi sql`` process (with the interpreter's start and imports);
* with ``--live``: ``SELECT count(*) FROM run_metrics`` over the live views (slow).

Every size of ``--runs`` (default 1,000 and 10,000, the same ``--samples``) is measured in
turn, then the growth exponent k of each figure (cost ~ runs^k) between the first and last.
Goals (issue 18): full rebuild <= 3x the bare scan (moonshot 1.5x); incremental <= 0.5 s
at 10^4 runs; ``mqepi sql`` of config_summary and pareto_frontier <= 1 s at 10^4 runs. The
lake is built through Lake.record (about 70 runs/s here); ``--dir D --keep`` keeps and
reuses it.

    python benchmarks/projections.py [--runs 1000,10000] [--samples 1e7] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from mqepi.lake.store import Lake
from mqepi.quality.tasks import BENCHMARK_PHASES, BENCHMARKS
from mqepi.results import snapshots as derived
from mqepi.results import sql
from mqepi.results.listing import list_lake
from mqepi.schemas import EVENT_TYPES

T0 = 1_764_000_000_000_000_000  # 2025-11-24 UTC, ns
HZ = 10
PHASES = ["idle_baseline", *BENCHMARK_PHASES, "pp", "tg"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def phases(n: int) -> list[str]:
    return PHASES[:n] + [f"other_{i}" for i in range(max(0, n - len(PHASES)))]


def record_runs(lake: Lake, runs: list[tuple[str, str, int, int]], *, samples_per_run: int, windows: int,
                questions: int, seed: int) -> None:
    """Record ``runs`` ((model, config_id, repeat, slot)) with one Lake.record per event type."""
    rng = np.random.default_rng(seed)
    names = phases(windows)
    n_runs = len(runs)
    model = np.array([r[0] for r in runs])
    config = np.array([r[1] for r in runs])
    repeat = np.array([r[2] for r in runs], dtype=np.int32)
    slot = np.array([r[3] for r in runs], dtype=np.int64)
    run_id = np.array([f"{m}-{c}-r{rep}-s{s}" for m, c, rep, s in runs])
    start = T0 + slot * 10**12  # 1000 s apart
    level = np.array([4.0 + (int(sha(c)[:8], 16) % 17) / 10 for c in config])
    key = {"model": model, "config_id": config, "run_id": run_id}

    def rep(a, k):
        return np.repeat(a, k)

    lake.record("run", pl.DataFrame({
        **{k: rep(v, 2) for k, v in key.items()}, "status": np.tile(["started", "finished"], n_runs),
        "repeat": rep(repeat, 2), "file_sha256": [None] * (2 * n_runs), "power_source": ["simulated"] * (2 * n_runs),
        "host": ["pi-host"] * (2 * n_runs), "provenance_json": ["{}"] * (2 * n_runs), "message": [None] * (2 * n_runs)}))
    # windows: the run's sample time line cut into equal windows with a 0.5 s gap between
    span_s = samples_per_run / HZ
    width_s = span_s / windows
    w = np.arange(windows)
    lake.record("phase", pl.DataFrame({
        **{k: rep(v, windows) for k, v in key.items()}, "phase": np.tile(names, n_runs), "node": [None] * (windows * n_runs),
        "start_ns": rep(start, windows) + np.tile((w * width_s + 0.25) * 1e9, n_runs).astype(np.int64),
        "end_ns": rep(start, windows) + np.tile(((w + 1) * width_s - 0.25) * 1e9, n_runs).astype(np.int64),
        "tokens": [None] * (windows * n_runs)}))
    k = np.tile(np.arange(samples_per_run, dtype=np.int64), n_runs)
    t_ns = k * (10**9 // HZ)
    busy = np.tile(np.arange(samples_per_run) >= samples_per_run // windows, n_runs)  # after the idle window
    n = samples_per_run * n_runs
    lake.record("power_sample", pl.DataFrame({
        **{c: rep(v, samples_per_run) for c, v in key.items()}, "power_source": ["simulated"] * n,
        "meter_id": ["sim0"] * n, "channel": np.zeros(n, dtype=np.int32), "node": ["node0"] * n, "seq": k,
        "meter_time_ns": t_ns, "host_time_ns": rep(start, samples_per_run) + t_ns, "host_monotonic_ns": t_ns,
        "power_w": np.where(busy, rep(level, samples_per_run), 3.0) + rng.normal(0, 0.05, n),
        "voltage_v": [None] * n, "current_a": [None] * n, "power_factor": [None] * n, "frequency_hz": [None] * n,
        "energy_counter_j": [None] * n}))
    lake.record("thermal_sample", pl.DataFrame({
        **{c: rep(v, 12) for c, v in key.items()}, "node": ["node0"] * (12 * n_runs),
        "sensor": ["cpu-thermal"] * (12 * n_runs),
        "host_time_ns": rep(start, 12) + np.tile(np.linspace(0, span_s, 12) * 1e9, n_runs).astype(np.int64),
        "temperature_c": 50.0 + rng.normal(0, 1, 12 * n_runs), "throttled": [False] * (12 * n_runs),
        "throttle_flags": np.zeros(12 * n_runs, dtype=np.int64)}))
    benches = [b for b in BENCHMARKS if b in names]
    per_run = questions * len(benches)
    if per_run:
        qid = np.tile([f"q{q}" for q in range(questions)], len(benches) * n_runs)
        bench = np.tile(np.repeat(benches, questions), n_runs)
        correct = rng.random(per_run * n_runs) < 0.5 + (repeat.repeat(per_run) % 3) / 10
        lake.record("benchmark_answer", pl.DataFrame({
            **{c: rep(v, per_run) for c, v in key.items()}, "benchmark": bench,
            "question_set_sha256": [sha(b) for b in bench], "question_id": qid, "subject": [None] * len(qid),
            "shots": np.full(len(qid), 5, dtype=np.int32), "prompt_sha256": [sha(q) for q in qid],
            "predicted": np.where(correct, 1, 0).astype(np.int32), "gold": np.ones(len(qid), dtype=np.int32),
            "correct": correct, "choice_scores": [None] * len(qid),
            "tokens_evaluated": np.full(len(qid), 300, dtype=np.int64)}))
    ppl = np.array([15.0 + (int(sha(c)[:8], 16) % 40) / 10 for c in config]) + rng.normal(0, 0.05, n_runs)
    lake.record("perplexity", pl.DataFrame({**key, "text_sha256": [sha("wiki")] * n_runs, "context": [512] * n_runs,
                                            "chunks": [8] * n_runs, "tokens": [4096] * n_runs, "ppl": ppl,
                                            "ppl_stderr": [0.3] * n_runs}))
    lake.record("kld", pl.DataFrame({**key, "base_sha256": [sha("base")] * n_runs, "text_sha256": [sha("wiki")] * n_runs,
                                     "context": [512] * n_runs, "chunks": [8] * n_runs, "kld_mean": [0.01] * n_runs,
                                     "kld_mean_stderr": [0.001] * n_runs, "kld_median": [0.005] * n_runs,
                                     "kld_p99": [0.1] * n_runs, "ppl_ratio": [1.01] * n_runs,
                                     "ppl_ratio_stderr": [0.001] * n_runs, "same_top_p": [0.9] * n_runs}))
    lake.record("throughput", pl.DataFrame({
        **{c: rep(v, 2) for c, v in key.items()}, "test": np.tile(["pp", "tg"], n_runs),
        "n_prompt": np.tile([64, 0], n_runs), "n_gen": np.tile([0, 32], n_runs), "repetitions": [5] * (2 * n_runs),
        "n_threads": [4] * (2 * n_runs), "tokens_per_s": np.tile([100.0, 20.0], n_runs),
        "tokens_per_s_stddev": [0.5] * (2 * n_runs), "rpc_nodes": [0] * (2 * n_runs)}))


def record_configs(lake: Lake, models: list[str], configs: int) -> None:
    rows_q, rows_c = [], []
    for m in models:
        for c in range(configs):
            cid = f"c{c:02d}"
            kind = "uniform" if c % 3 == 0 else "mixed"
            map_json = json.dumps({"layer_groups": [{"name": "early", "quant": "Q6_K"}, {"name": "late", "quant": "Q4_K"}]})
            rows_c.append({"model": m, "config_id": cid, "map_sha256": sha(map_json + cid), "map_json": map_json,
                           "n_layers": 30, "kind": kind})
            rows_q.append({"model": m, "config_id": cid, "map_sha256": sha(map_json + cid), "base_sha256": sha("base"),
                           "base_ftype": "Q8_0", "llama_cpp_commit": "b1", "file_sha256": sha(m + cid),
                           "effective_map_sha256": sha(cid), "file_size_bytes": 10**8 + c, "bits_per_weight": 4.5,
                           "duration_s": 1.0, "host": "quant-host"})
    lake.record("quant_config", rows_c)
    lake.record("quantization", rows_q)


def build_lake(root: Path, args) -> tuple[Lake, list[tuple[str, str, int, int]]]:
    lake = Lake(root)
    lake.init()
    per_model = args.configs * args.repeats
    n_models = math.ceil(args.runs / per_model)
    models = [f"model{m:03d}" for m in range(n_models)]
    record_configs(lake, models, args.configs)
    runs = [(models[i // per_model], f"c{(i % per_model) // args.repeats:02d}", i % args.repeats, i)
            for i in range(args.runs)]
    samples_per_run = max(args.windows * 4, int(args.samples) // args.runs)
    for lo in range(0, len(runs), args.chunk):
        record_runs(lake, runs[lo:lo + args.chunk], samples_per_run=samples_per_run, windows=args.windows,
                    questions=args.questions, seed=lo)
    return lake, runs


def models_of(lake: Lake) -> list[str]:
    return sorted({key[0] for key in list_lake(lake).config_files})


def bare_scan(lake: Lake) -> tuple[float, float]:
    con = duckdb.connect()
    t0 = time.perf_counter()
    total = con.execute(f"SELECT sum(power_w) FROM read_parquet('{lake.root}/power_sample/**/*.parquet')").fetchall()[0][0]
    seconds = time.perf_counter() - t0
    con.close()
    return seconds, total


FULL_CHILD = """
import json, resource, sys, time
from mqepi.lake.store import Lake
from mqepi.results import snapshots
lines = []
t0 = time.perf_counter()
snap = snapshots.recompute(Lake(sys.argv[1]), sys.argv[2], bootstrap=int(sys.argv[3]), batch_runs=int(sys.argv[4]),
                           progress=lambda s: lines.append(f"{time.perf_counter() - t0:8.2f} s  {s}"))
print(json.dumps({"seconds": snap.seconds, "lines": lines,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def full_rebuild(lake: Lake, out: Path, args) -> dict:
    """The full rebuild in a child process (its own peak RSS): seconds, progress lines, peak MB."""
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", FULL_CHILD, lake.root, str(out), str(args.bootstrap),
                           str(args.batch_runs)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def interactive(lake: Lake, out: Path, view: str) -> float:
    """In this process: the snapshot check (recompute: a reuse when current), a connection
    with the projected views, ``SELECT * FROM view``; seconds."""
    t0 = time.perf_counter()
    lake = Lake(lake.root)  # a new handle: its logs read from the start, as in a new process
    snap = derived.projection(lake, out)
    con = sql.connect(lake, projected={v: snap.tables[v] for v in derived.PROJECTED_VIEWS},
                      files=derived.snapshot_files(lake, snap))
    con.sql(f"SELECT * FROM {view}").fetchall()
    con.close()
    return time.perf_counter() - t0


def cli_seconds(lake: Lake, out: Path, query: str) -> float:
    """``mqepi sql QUERY`` as a user runs it (a new interpreter: its imports included)."""
    env = {**os.environ, "MQEPI_LAKE": lake.root}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mqepi", "sql", query, "--format", "csv"], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"mqepi sql failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def measure(work: Path, runs: int, args) -> dict:
    """Every figure of one lake size."""
    args.runs = runs
    root = work / str(runs) / "lake"
    t0 = time.perf_counter()
    if args.keep and (root / "run").is_dir():
        lake = Lake(root)
        print(f"reusing the lake in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        lake, _ = build_lake(root, args)
    build_s = time.perf_counter() - t0
    n_files = sum(len(lake.files(t)) for t in EVENT_TYPES)
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    samples = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{lake.root}/power_sample/**/*.parquet')"
                                       ).fetchall()[0][0]
    print(f"lake        {runs:,d} runs, {samples:,d} power samples, {args.windows} windows/run, "
          f"{n_files:,d} files, {size / 1e6:,.0f} MB; built in {build_s:.0f} s")
    bare_scan(lake)  # warm the page cache
    bare_s, total = bare_scan(lake)
    print(f"bare scan   {bare_s:8.2f} s   SELECT sum(power_w) over the power_sample files ({total:,.0f} W summed)")
    t0 = time.perf_counter()
    list_lake(lake)
    list_s = time.perf_counter() - t0
    print(f"listing     {list_s:8.2f} s   {list_s / bare_s:6.2f}x bare   (list_lake from the Delta logs)")
    out = derived.default_out_dir(lake)  # where `mqepi sql` looks
    full = full_rebuild(lake, out, args)
    print(f"full        {full['seconds']:8.2f} s   {full['seconds'] / bare_s:6.2f}x bare   (goal <= 3x, moonshot 1.5x); "
          f"peak RSS {full['peak_mb']:,.0f} MB")
    print("\n".join(f"    {line}" for line in full["lines"]))
    kw = {"bootstrap": args.bootstrap, "batch_runs": args.batch_runs}
    unchanged, incremental = [], []
    samples_per_run = max(args.windows * 4, int(args.samples) // runs)
    for i in range(args.rounds):
        same = derived.recompute(lake, out, **kw)
        assert same.reused
        unchanged.append(same.seconds)
        slot = len(list_lake(lake).run_files) + 1  # a run id not in the lake yet
        record_runs(lake, [(f"model{i % len(models_of(lake)):03d}", "c00", args.repeats, slot)],
                    samples_per_run=samples_per_run, windows=args.windows, questions=args.questions, seed=slot)
        lines: list[str] = []
        stamp = time.perf_counter()
        inc = derived.recompute(lake, out, progress=lambda s, lines=lines, stamp=stamp:
                                lines.append(f"{time.perf_counter() - stamp:7.2f} s  {s}"), **kw)
        assert inc.runs_new == 1 and not inc.reused, (inc.runs_new, inc.reused)
        incremental.append(inc.seconds)
        print(f"round {i + 1}: unchanged {same.seconds:.2f} s, incremental {inc.seconds:.2f} s")
        print("\n".join(f"    {line}" for line in lines))
    same_s, inc_s = statistics.median(unchanged), statistics.median(incremental)
    print(f"unchanged   {same_s:8.2f} s   (reused: the log read; median of {args.rounds})")
    print(f"incremental {inc_s:8.2f} s   (goal <= 0.5 s; one new run among {inc.runs_total:,d}; median of {args.rounds})")
    figures = {"bare": bare_s, "full": full["seconds"], "incremental": inc_s, "peak_mb": full["peak_mb"]}
    for view in ("config_summary", "pareto_frontier"):
        interactive(lake, out, view)  # warm
        figures[view] = statistics.median(interactive(lake, out, view) for _ in range(3))
        figures[f"cli_{view}"] = cli_seconds(lake, out, f"SELECT * FROM {view}")
        print(f"sql {view:16s} {figures[view]:6.2f} s in process (goal <= 1 s); `mqepi sql` "
              f"{figures[f'cli_{view}']:.2f} s with the interpreter's start")
    if args.live:
        con = sql.connect(lake)
        con.execute(f"SET VARIABLE mqepi_bootstrap = {args.bootstrap}")
        t0 = time.perf_counter()
        n = con.execute("SELECT count(*) FROM run_metrics").fetchall()[0][0]
        print(f"live view   {time.perf_counter() - t0:8.2f} s   (SELECT count(*) FROM run_metrics, live: {n:,d} rows)")
        con.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="1000,10000", help="lake sizes in runs, comma-separated")
    parser.add_argument("--samples", type=float, default=1e7, help="power samples in all, per lake (1e8 optional)")
    parser.add_argument("--windows", type=int, default=6, help="phase windows per run")
    parser.add_argument("--questions", type=int, default=20, help="answers per benchmark and run")
    parser.add_argument("--configs", type=int, default=24, help="configurations per model")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per configuration")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-runs", type=int, default=derived.DEFAULT_BATCH_RUNS)
    parser.add_argument("--chunk", type=int, default=500, help="runs per Lake.record call while building")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the lakes (with --dir: reuse them if present)")
    parser.add_argument("--rounds", type=int, default=3, help="unchanged + incremental rounds")
    parser.add_argument("--live", action="store_true", help="also time run_metrics through the live views (slow)")
    args = parser.parse_args()
    sizes = [int(float(x)) for x in args.runs.split(",") if x.strip()]
    work = args.dir or Path(tempfile.mkdtemp(prefix="mqepi-projections-"))
    try:
        results = {n: measure(work, n, args) for n in sizes}
        if len(sizes) >= 2:
            lo, hi = sizes[0], sizes[-1]
            print(f"\ngrowth from {lo:,d} to {hi:,d} runs: cost ~ runs^k")
            for key in ("bare", "full", "incremental", "config_summary", "pareto_frontier"):
                a, b = results[lo][key], results[hi][key]
                print(f"  {key:16s} {a:8.2f} s -> {b:8.2f} s   k = {math.log(b / a) / math.log(hi / lo):5.2f}")
        print(f"cores {len(os.sched_getaffinity(0))}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
