"""Materialised derived tables (mqepi/results/snapshots.py, listing.py, engine.py): a snapshot
equals the live SQL views, a second recompute of an unchanged lake is reused, an incremental
recompute after new events equals a recompute from scratch, the lake is never written, the
cache never rewritten, and every base view follows the file lists the snapshots set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from factories import T0, sha
from polars.testing import assert_frame_equal

from mqepi.errors import QueryError
from mqepi.lake.store import Lake
from mqepi.results import engine, sql
from mqepi.results import snapshots as derived
from mqepi.schemas import EVENT_TYPES, RUN_BOUND

MODEL_A, MODEL_B = "smollm2-135m", "qwen-0.5b"
STEP_NS = 50_000_000  # a 20 Hz simulated meter
WINDOWS = {"idle_baseline": (0.5, 2.5), "mmlu": (3.0, 5.0), "arc_challenge": (5.5, 7.5), "pp": (8.0, 9.0),
           "tg": (9.5, 11.0)}
CONFIGS = {  # kind, benchmark power W, skill, perplexity
    "uniform_q4km": ("uniform", 5.0, 0.55, 20.0), "mix_a": ("mixed", 4.6, 0.60, 20.2),
    "uniform_q8": ("uniform", 6.5, 0.70, 15.0), "mix_b": ("mixed", 6.0, 0.65, 15.3),
}
BOOT = {"bootstrap": 200}


def record_run(lake: Lake, model: str, config: str, repeat: int, *, statuses=("started", "finished"),
               origin: str = "lab", slot: int = 0, seed: int = 0) -> str:
    """One run: run events, five phase windows with power and thermal samples, 2 x 10
    answers, perplexity, kld and throughput (simulated power)."""
    rng = np.random.default_rng(seed)
    kind, power, skill, ppl = CONFIGS[config]
    run_id = f"{model[:4]}-{config}-{origin.split('/')[-1]}-r{repeat}"
    key = {"model": model, "config_id": config, "run_id": run_id}
    t0 = T0 + slot * 20 * 10**9
    lake.record("run", [{**key, "status": s, "repeat": repeat, "file_sha256": sha(f"{model}{config}"),
                         "power_source": "simulated", "host": "localhost", "provenance_json": "{}",
                         "message": None} for s in statuses], origin=origin)
    if "finished" not in statuses:
        return run_id
    lake.record("phase", [{**key, "phase": ph, "node": None, "start_ns": t0 + int(lo * 1e9),
                           "end_ns": t0 + int(hi * 1e9), "tokens": None} for ph, (lo, hi) in WINDOWS.items()],
                origin=origin)
    n = 240
    busy = [any(lo <= i * STEP_NS / 1e9 <= hi for ph, (lo, hi) in WINDOWS.items() if ph != "idle_baseline")
            for i in range(n)]
    lake.record("power_sample", {
        **{k: [v] * n for k, v in key.items()}, "power_source": ["simulated"] * n, "meter_id": ["sim0"] * n,
        "channel": [0] * n, "node": ["node0"] * n, "seq": list(range(n)),
        "meter_time_ns": [i * STEP_NS for i in range(n)], "host_time_ns": [t0 + i * STEP_NS for i in range(n)],
        "host_monotonic_ns": [i * STEP_NS for i in range(n)],
        "power_w": [(power if b else 3.0) + float(rng.normal(0, 0.05)) for b in busy],
        "voltage_v": [None] * n, "current_a": [None] * n, "power_factor": [None] * n, "frequency_hz": [None] * n,
        "energy_counter_j": [None] * n}, origin=origin)
    lake.record("thermal_sample", [{**key, "node": "node0", "sensor": "cpu-thermal", "host_time_ns": t0 + i * 10**9,
                                    "temperature_c": 50.0 + i, "throttled": False, "throttle_flags": 0}
                                   for i in range(12)], origin=origin)
    answers = []
    for bench in ("mmlu", "arc_challenge"):
        for q in range(10):
            ok = bool(rng.random() < skill)
            answers.append({**key, "benchmark": bench, "question_set_sha256": sha(bench), "question_id": f"q{q}",
                            "subject": None, "shots": 5, "prompt_sha256": sha(f"{bench}{q}"),
                            "predicted": 1 if ok else 0, "gold": 1, "correct": ok, "choice_scores": [-1.0, -2.0],
                            "tokens_evaluated": 300})
    lake.record("benchmark_answer", answers, origin=origin)
    lake.record("perplexity", [{**key, "text_sha256": sha("wiki"), "context": 512, "chunks": 8, "tokens": 4096,
                                "ppl": ppl + float(rng.normal(0, 0.05)), "ppl_stderr": 0.4}], origin=origin)
    lake.record("kld", [{**key, "base_sha256": sha("base"), "text_sha256": sha("wiki"), "context": 512, "chunks": 8,
                         "kld_mean": 0.01, "kld_mean_stderr": 0.001, "kld_median": 0.005, "kld_p99": 0.1,
                         "ppl_ratio": 1.01, "ppl_ratio_stderr": 0.001, "same_top_p": 0.9}], origin=origin)
    lake.record("throughput", [{**key, "test": t, "n_prompt": 64 if t == "pp" else 0, "n_gen": 32 if t == "tg" else 0,
                                "repetitions": 5, "n_threads": 4, "tokens_per_s": 100.0 if t == "pp" else 20.0,
                                "tokens_per_s_stddev": 0.5, "rpc_nodes": 0} for t in ("pp", "tg")], origin=origin)
    return run_id


def record_configs(lake: Lake, model: str) -> None:
    for config, (kind, *_) in CONFIGS.items():
        groups = [{"layers": [0], "name": "early", "quant": "Q6_K"}, {"layers": [1], "name": "late", "quant": "Q4_K"}]
        map_json = json.dumps({"layer_groups": groups}, separators=(",", ":"))
        lake.record("quant_config", [{"model": model, "config_id": config, "map_sha256": sha(map_json),
                                      "map_json": map_json, "n_layers": 2, "kind": kind}])
        lake.record("quantization", [{"model": model, "config_id": config, "map_sha256": sha(map_json),
                                      "base_sha256": sha("base"), "base_ftype": "Q8_0", "llama_cpp_commit": "b1",
                                      "file_sha256": sha(f"{model}{config}"), "effective_map_sha256": sha(config),
                                      "file_size_bytes": 100_000, "bits_per_weight": 4.5, "duration_s": 1.0,
                                      "host": "quant-host"}])


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory) -> Lake:
    """Two models x 4 configs x 3 repeats (lab), one community run, one failed run and one
    run that has only started."""
    lake = Lake(tmp_path_factory.mktemp("derived") / "lake")
    lake.init()
    slot = 0
    for model in (MODEL_A, MODEL_B):
        record_configs(lake, model)
        for config in CONFIGS:
            for rep in range(3):
                record_run(lake, model, config, rep, slot=slot, seed=slot)
                slot += 1
    record_run(lake, MODEL_A, "mix_a", 0, origin="community/alice", slot=slot, seed=slot)
    record_run(lake, MODEL_A, "mix_b", 3, statuses=("started", "failed"), slot=slot + 1)
    record_run(lake, MODEL_A, "uniform_q8", 3, statuses=("started",), slot=slot + 2)
    return lake


@pytest.fixture
def lake(base_lake, tmp_path) -> Lake:
    """A private copy of the base lake (tests append to it)."""
    import shutil

    shutil.copytree(base_lake.root, tmp_path / "lake")
    return Lake(tmp_path / "lake")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tables(snap: derived.Snapshot) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(path) for name, path in snap.tables.items()}


def assert_same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Equal: every column exactly, except floats within 1e-12 relative. DuckDB's parallel
    sums make the SQL views themselves reproducible only to the last bit or two (the same
    view queried twice over the same lake can differ by 1e-19 J/token), so no materialisation
    can promise more than that."""
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


def assert_same_tables(a: derived.Snapshot, b: derived.Snapshot) -> None:
    ta, tb = tables(a), tables(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert_same(ta[name], tb[name])


def live(lake: Lake, names, bootstrap: int = 200) -> dict[str, pl.DataFrame]:
    """The SQL views themselves (mqepi.sql.connect: globs over the lake)."""
    con = sql.connect(lake)
    con.execute(f"SET VARIABLE mqepi_bootstrap = {bootstrap}")
    return {name: pl.from_arrow(sql.query(con, f"SELECT * FROM {name}")) for name in names}


def test_snapshot_equals_the_live_views(lake, tmp_path):
    snap = derived.recompute(lake, tmp_path / "out", **BOOT)
    assert not snap.reused and snap.runs_new == snap.runs_total == 2 * 4 * 3 + 3
    got = tables(snap)
    assert set(got) == {"config_summary", "matched_pairs", "pareto_frontier", "run_metrics", "run_energy",
                        "run_accuracy"}
    assert got["config_summary"].height == 2 * 4 + 1 and got["matched_pairs"].height > 0
    views = live(lake, got)
    for name, frame in got.items():
        expected = views[name]
        assert frame.schema == expected.schema, name
        if name in ("matched_pairs", "pareto_frontier"):  # the views' own order
            assert_same(frame, expected)
        else:
            assert_same(frame, expected.sort(frame.columns, nulls_last=True))  # DuckDB: NULLS LAST
    # the lake state: sha256 over the sorted relative paths of every Parquet file, one a line
    paths = sorted(f[len(lake.root) + 1:] for t in EVENT_TYPES for f in lake.files(t))
    assert snap.lake_state_sha256 == hashlib.sha256("".join(p + "\n" for p in paths).encode()).hexdigest()
    assert snap.lake_files == len(paths)
    meta = json.loads((snap.path / "snapshot.json").read_text())
    assert meta["lake_state_sha256"] == snap.lake_state_sha256 and meta["lake_files"] == snap.lake_files
    assert meta["settings"]["bootstrap"] == 200 and meta["settings"]["seed"] == 1234
    assert meta["runs"] == {"total": snap.runs_total, "new": snap.runs_total, "cached": 0}


def test_incremental_recompute_equals_a_full_one(lake, tmp_path):
    out = tmp_path / "out"
    before = tree_digest(Path(lake.root))
    first = derived.recompute(lake, out, **BOOT)
    cache = tree_digest(out / "runs")

    # nothing new: reused, no new folder, the lake listing only
    again = derived.recompute(lake, out, **BOOT)
    assert again.reused and again.path == first.path and again.runs_new == 0
    assert len(list((out / "snapshots").iterdir())) == 1

    # a new run of model B, and the unfinished run of model A finishes
    record_run(lake, MODEL_B, "mix_a", 3, slot=90, seed=90)
    unfinished = record_run(lake, MODEL_A, "uniform_q8", 3, statuses=("finished",), slot=91)
    assert unfinished == "smol-uniform_q8-lab-r3"
    lines: list[str] = []
    third = derived.recompute(lake, out, progress=lines.append, **BOOT)
    assert not third.reused and third.path != first.path and third.runs_new == 2
    assert third.runs_total == first.runs_total + 1
    assert any("2 of 3 families recomputed" in line for line in lines), lines  # community family kept
    assert json.loads((out / "latest.json").read_text())["snapshot"] == f"snapshots/{third.path.name}"
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == sorted([first.path.name, third.path.name])

    fresh = derived.recompute(lake, tmp_path / "fresh", **BOOT)
    assert fresh.runs_new == fresh.runs_total == third.runs_total
    assert fresh.lake_state_sha256 == third.lake_state_sha256
    assert_same_tables(third, fresh)
    rm = pl.read_parquet(third.tables["run_metrics"])
    assert unfinished in rm["run_id"].to_list()

    # the lake was only read; cache files are never rewritten; snapshots are immutable
    record_state = tree_digest(Path(lake.root))
    derived.recompute(lake, out, **BOOT)
    assert tree_digest(Path(lake.root)) == record_state
    assert set(before) < set(record_state)
    assert all(tree_digest(out / "runs")[k] == v for k, v in cache.items())
    assert not [p for p in out.rglob(".tmp-*")]


def test_lake_is_never_written(lake, tmp_path):
    before = tree_digest(Path(lake.root))
    derived.recompute(lake, tmp_path / "out", **BOOT)
    derived.recompute(lake, tmp_path / "out", **BOOT)
    assert tree_digest(Path(lake.root)) == before


def test_new_settings_reuse_the_run_cache(lake, tmp_path):
    out = tmp_path / "out"
    first = derived.recompute(lake, out, **BOOT)
    other = derived.recompute(lake, out, bootstrap=200, seed=7)
    assert not other.reused and other.runs_new == 0
    assert_frame_equal(pl.read_parquet(first.tables["run_metrics"]), pl.read_parquet(other.tables["run_metrics"]),
                       check_exact=True)  # the very same cached rows
    a, b = (pl.read_parquet(s.tables["config_summary"]) for s in (first, other))
    assert a["j_per_token"].to_list() == b["j_per_token"].to_list()
    assert json.loads((other.path / "snapshot.json").read_text())["settings"]["seed"] == 7
    a, b = (pl.read_parquet(s.tables["pareto_frontier"]) for s in (first, other))
    assert a["frontier_probability"].to_list() != b["frontier_probability"].to_list()  # a new bootstrap
    assert_same_tables(other, derived.recompute(lake, tmp_path / "fresh", bootstrap=200, seed=7))


def test_a_lake_without_seeds_is_not_written_either(tmp_path):
    """A lake recorded without `lake init` lacks the seeds of the types never recorded:
    recompute brings its own (under out/seeds) rather than write them into the lake."""
    lake = Lake(tmp_path / "bare")
    record_configs(lake, MODEL_A)
    record_run(lake, MODEL_A, "mix_a", 0)
    record_run(lake, MODEL_A, "mix_a", 1, statuses=("started",))
    before = tree_digest(Path(lake.root))
    assert not (Path(lake.root) / "tensor_inventory").exists()
    snap = derived.recompute(lake, tmp_path / "out", **BOOT)
    assert tree_digest(Path(lake.root)) == before
    assert (tmp_path / "out" / "seeds" / "tensor_inventory").is_dir()
    assert snap.runs_total == 2 and pl.read_parquet(snap.tables["run_metrics"]).height == 1
    assert pl.read_parquet(snap.tables["config_summary"])["n_repeats"].to_list() == [1]


def test_config_tables_that_read_other_run_views_fail_loudly():
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE VIEW phase AS SELECT 1 AS x")
    con.execute("CREATE VIEW run_metrics AS SELECT 1 AS x")
    con.execute("CREATE VIEW config_summary AS WITH w AS (SELECT * FROM phase) SELECT * FROM run_metrics, w")
    with pytest.raises(QueryError, match="config_summary reads phase"):
        engine.check_config_inputs(con)
    con.execute("CREATE OR REPLACE VIEW config_summary AS SELECT * FROM run_metrics")
    engine.check_config_inputs(con)


def test_file_lists_redirect_every_base_view(lake):
    """The snapshots point each base view at a file list (a DuckDB variable read by the table
    macro of macros.sql) instead of the lake's glob: every event type's view honours it."""
    con = sql.connect(lake)
    engine.check_base_views(con)
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in EVENT_TYPES}
    assert counts["run"] > 0 and counts["quant_config"] > 0
    run_id = con.execute("SELECT min(run_id) FROM run").fetchall()[0][0]
    seeds = {t: [f for f in lake.files(t) if "=_seed/" in f] for t in EVENT_TYPES}
    engine.set_file_lists(con, seeds)  # the lake variable still names the lake: no view reads it now
    assert all(con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] == 0 for t in EVENT_TYPES)
    one_run = {t: seeds[t] + (lake.files(t, run_id=run_id) if t in RUN_BOUND else []) for t in EVENT_TYPES}
    engine.set_file_lists(con, one_run)
    assert con.execute("SELECT list(DISTINCT run_id) FROM run").fetchall()[0][0] == [run_id]
    with pytest.raises(QueryError, match="not even a seed"):
        engine.set_file_lists(con, {"run": []})
    con.execute("CREATE OR REPLACE VIEW run AS SELECT 1")
    with pytest.raises(QueryError, match="views.sql"):
        engine.check_base_views(con)


def cli_frame(lake: Lake, query: str, *extra: str) -> tuple[pl.DataFrame, str]:
    """``mqepi sql QUERY -f json`` (and ``extra`` options): the rows and the stderr."""
    from typer.testing import CliRunner

    from mqepi.cli import app

    result = CliRunner().invoke(app, ["--lake", lake.root, "sql", query, "-f", "json", *extra])
    assert result.exit_code == 0, result.output
    return pl.read_json(result.stdout.encode()), result.stderr


def test_mqepi_sql_reads_the_snapshot_and_answers_as_the_live_views(lake):
    """`mqepi sql` over a derived view reads the snapshot of the lake's current state (computing
    it when missing, incrementally when the lake moved on); --live evaluates the SQL from the
    raw events; the rows are the same."""
    out = derived.default_out_dir(lake)
    query = "SELECT * FROM {} ORDER BY ALL"
    for view in ("config_summary", "pareto_frontier"):
        projected, _ = cli_frame(lake, query.format(view))
        assert (out / "latest.json").is_file()  # the first query made the snapshot
        live_rows, _ = cli_frame(lake, query.format(view), "--live")
        assert projected.height > 0
        assert_same(projected, live_rows)
    first = json.loads((out / "latest.json").read_text())["snapshot"]
    cli_frame(lake, "SELECT count(*) FROM matched_pairs")
    assert json.loads((out / "latest.json").read_text())["snapshot"] == first  # reused: the lake did not change
    cli_frame(lake, "SELECT count(*) FROM run")  # no derived view: no snapshot work at all
    # a new run: the next query recomputes that run only, and still answers as the live views
    record_run(lake, MODEL_B, "mix_b", 3, slot=95, seed=95)
    projected, err = cli_frame(lake, query.format("config_summary"))
    assert "1 runs recomputed" in err
    assert json.loads((out / "latest.json").read_text())["snapshot"] != first
    assert_same(projected, cli_frame(lake, query.format("config_summary"), "--live")[0])
    assert not sql.reads("SELECT * FROM run", derived.PROJECTED_VIEWS)
    assert sql.reads("WITH x AS (SELECT * FROM Config_Summary) SELECT * FROM x", derived.PROJECTED_VIEWS)


def test_small_batches_and_family_chunks_give_the_same_tables(lake, tmp_path):
    """The run stage in batches of 5 runs and the configuration stage in chunks of about 4 runs
    of families (each family alone here; the bootstrap's resamples drawn per chunk) give the
    tables of one pass; and the incremental path through chunks too."""
    one = derived.recompute(lake, tmp_path / "one", **BOOT)
    lines: list[str] = []
    chunked = derived.recompute(lake, tmp_path / "chunked", batch_runs=5, chunk_runs=4, progress=lines.append, **BOOT)
    assert sum("batch " in line for line in lines) >= 5
    assert_same_tables(one, chunked)
    record_run(lake, MODEL_A, "mix_b", 3, slot=97, seed=97)
    again = derived.recompute(lake, tmp_path / "chunked", batch_runs=5, chunk_runs=4, **BOOT)
    assert again.runs_new == 1
    assert_same_tables(again, derived.recompute(lake, tmp_path / "fresh", **BOOT))


def test_an_unchanged_lake_is_told_by_its_tables_heads(lake, tmp_path):
    """Reuse is decided from each table's latest log entry (a listing and one read per table),
    without reading the logs through; a new commit to any table moves its head."""
    out = tmp_path / "out"
    first = derived.recompute(lake, out, **BOOT)
    heads = json.loads((first.path / "snapshot.json").read_text())["table_heads"]
    assert heads == derived.lake_heads(lake) and set(heads) == set(EVENT_TYPES)
    assert all(v[0] == lake.versions()[t] for t, v in heads.items())
    lines: list[str] = []
    again = derived.recompute(lake, out, progress=lines.append, **BOOT)
    assert again.reused and any("every table at the version it read" in line for line in lines)
    lake.record("thermal_sample", [{"model": MODEL_A, "config_id": "mix_a", "run_id": "smol-mix_a-lab-r0",
                                    "node": "node0", "sensor": "cpu-thermal", "host_time_ns": T0 + 123,
                                    "temperature_c": 51.0, "throttled": False, "throttle_flags": 0}])
    assert derived.lake_heads(lake)["thermal_sample"] != heads["thermal_sample"]
    moved = derived.recompute(lake, out, **BOOT)
    assert not moved.reused and moved.runs_new == 1
    assert derived.lake_heads(Lake(lake.root).at(lake.versions())) is None  # time travel: the logs tell


def test_the_listing_resumes_from_the_snapshot_and_equals_a_full_read(lake, tmp_path):
    """A recompute reads the logs from the versions its previous snapshot recorded on (its
    files.parquet): the listing equals one read from the start, also after a compaction
    (files removed) and when the saved heads no longer match the log (read from the start)."""
    from mqepi.lake.compact import compact
    from mqepi.results.listing import LISTING_FILE, list_lake

    out = tmp_path / "out"
    snap = derived.recompute(lake, out, **BOOT)
    heads = json.loads((snap.path / "snapshot.json").read_text())["table_heads"]
    saved = snap.path / LISTING_FILE
    record_run(lake, MODEL_B, "mix_a", 3, slot=96, seed=96)
    assert any(r.files_after < r.files_before for r in compact(lake, min_files=2))  # files removed too

    def same(a, b):
        assert (a.state, a.versions, a.relative, a.seeds, a.config_files) == (b.state, b.versions, b.relative, b.seeds,
                                                                            b.config_files)
        assert {r: dict(t) for r, t in a.run_files.items()} == {r: dict(t) for r, t in b.run_files.items()}
        assert a.run_configs == b.run_configs

    full = list_lake(Lake(lake.root))
    same(list_lake(Lake(lake.root), (saved, heads)), full)
    stale = {t: [v, "0" * 64] for t, (v, _) in heads.items()}  # not the entries at those versions
    same(list_lake(Lake(lake.root), (saved, stale)), full)
    again = derived.recompute(lake, out, **BOOT)
    assert_same_tables(again, derived.recompute(lake, tmp_path / "fresh", **BOOT))
