"""Config kinds 'probe' / 'searched' and the kld_frontier view (analysis/kld_frontier.sql).

A real lake: one family of configurations measured with simulated power, KL divergence and
perplexity, among them a sensitivity probe of the per-layer search (``probe-...``) that would
beat every other configuration on both axes, and a map the search produced (``search-...``);
a second family (another origin) and a quality-only probe run (power_source 'none'). The view
must equal a brute-force Pareto computation over config_summary's rows, the probe left out,
the searched map in; matched_pairs, pareto_frontier (SQL and its Polars twin) and the report
leave the probe out while config_summary keeps it.
"""

from __future__ import annotations

import math

import polars as pl
import pytest
from factories import answer_row, record_measured_run, rows_for, sha
from polars.testing import assert_frame_equal

from mqepi.analysis import twin_frontier
from mqepi.analysis.contract import FAMILY_KEY, VIEWS
from mqepi.lake.store import Lake
from mqepi.quant.maps import PROBE_PREFIX, SEARCH_PREFIX, LayerGroup, QuantMap
from mqepi.results import sql
from mqepi.results.report.query import collect
from mqepi.results.snapshots import projection, snapshot_files

MODEL = "m"
PROBE = "probe-blk1-q4km"
SEARCHED = "search-b01"
#: config_id -> (early, middle, late types, benchmark power in W, kld_mean in nats); J/token
#: follows the power (>= 5 W: valid windows). The probe is the cheapest and the closest to the base.
CONFIGS = {
    "uniform_q8": (("Q8_0",) * 3, 6.6, 0.010),
    "mix_b": (("Q8_0", "Q6_K", "Q6_K"), 6.2, 0.020),
    SEARCHED: (("Q6_K", "Q4_K_M", "Q6_K"), 5.5, 0.050),
    "mix_c": (("Q5_K_M", "Q4_K_M", "Q5_K_M"), 5.9, 0.060),  # dominated by the searched map
    "uniform_q4km": (("Q4_K_M",) * 3, 5.3, 0.080),
    "mix_a": (("Q4_K_M", "Q3_K_S", "Q4_K_M"), 5.8, 0.100),  # dominated by uniform_q4km
    "uniform_q6k": (("Q6_K",) * 3, 6.4, None),  # no kld event: not in kld_frontier
    PROBE: (("Q8_0", "Q4_K_M", "Q8_0"), 5.0, 0.005),
}
#: The second family (origin community/alice): a tie on both axes and a dominated point.
COMMUNITY = {"uniform_q8": 6.6, "mix_b": 6.6, "uniform_q4km": 6.9}


def qmap(config_id: str) -> QuantMap:
    early, middle, late = CONFIGS[config_id][0]
    return QuantMap(config_id, MODEL, (LayerGroup("early", (0,), early), LayerGroup("middle", (1,), middle),
                                       LayerGroup("late", (2,), late)))


def _quality(lake, config_id: str, run_id: str, kld: float | None, origin: str) -> None:
    key = {"model": MODEL, "config_id": config_id, "run_id": run_id}
    lake.record("perplexity", [{**key, "text_sha256": sha("text"), "context": 512, "chunks": 8, "tokens": 4096,
                                "ppl": 20.0, "ppl_stderr": 0.5}], origin=origin)
    if kld is not None:
        row = {k: v[0] for k, v in rows_for("kld", 1, run_id=run_id, model=MODEL, config_id=config_id).items()}
        lake.record("kld", [{**row, "kld_mean": kld}], origin=origin)


def fill(lake) -> None:
    answers = [answer_row("mmlu", f"q{i}", i % 2, 1) for i in range(6)] + [answer_row("arc_challenge", "a0", 0, 0)]
    slot = 0
    for i, (config_id, (_, power, kld)) in enumerate(CONFIGS.items()):
        m = qmap(config_id)
        lake.record("quant_config", [{"model": MODEL, "config_id": config_id, "map_sha256": m.sha256,
                                      "map_json": m.canonical_json(), "n_layers": 3, "kind": m.kind}])
        lake.record("quantization", {**rows_for("quantization", 1, model=MODEL, config_id=config_id, start=i),
                                     "bits_per_weight": [2.0 + power]})  # one effective map each
        for rep in range(2):
            run_id = record_measured_run(lake, MODEL, config_id, rep, answers, slot=slot, power_w=power + rep / 10)
            _quality(lake, config_id, run_id, kld, "lab")
            slot += 1
        if config_id in COMMUNITY:
            run_id = record_measured_run(lake, MODEL, config_id, 0, answers, slot=slot, power_w=COMMUNITY[config_id],
                                         origin="community/alice")
            _quality(lake, config_id, run_id, 0.03 if config_id == "mix_b" else kld, "community/alice")
            slot += 1
    # the probe as the search measures it: quality only, no power, no benchmark window
    key = {"model": MODEL, "config_id": PROBE, "run_id": "probe-quality"}
    lake.record("run", [{**key, "status": s, "repeat": 0, "file_sha256": None, "power_source": "none",
                         "host": "localhost", "provenance_json": "{}", "message": None} for s in ("started", "finished")])
    _quality(lake, PROBE, "probe-quality", 0.004, "lab")


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """The views over the lake with run_metrics and config_summary read from the lake's snapshot
    (as ``mqepi sql`` reads them; a live query would compute config_summary again each time);
    the views built on them (kld_frontier, pareto_frontier, matched_pairs) are live SQL."""
    lake = Lake(tmp_path_factory.mktemp("kld") / "lake")
    lake.init()
    fill(lake)
    snapshot = projection(lake)
    con = sql.connect(lake, projected={v: snapshot.tables[v] for v in ("run_metrics", "config_summary")},
                      files=snapshot_files(lake, snapshot))
    con.execute("SET VARIABLE mqepi_bootstrap = 40")
    return con


def frame(con, query: str) -> pl.DataFrame:
    return pl.from_arrow(sql.query(con, query))


def brute_force(cs: pl.DataFrame) -> pl.DataFrame:
    """kld_frontier by its definition, row by row, from config_summary's rows."""
    points = [r for r in cs.iter_rows(named=True) if r["kind"] != "probe" and r["kld_mean"] is not None
              and r["j_per_token"] is not None and math.isfinite(r["kld_mean"]) and math.isfinite(r["j_per_token"])]
    rows = []
    for y in points:
        same = [x for x in points if all(x[k] == y[k] for k in FAMILY_KEY)]
        dominated = any(x["kld_mean"] <= y["kld_mean"] and x["j_per_token"] <= y["j_per_token"]
                        and (x["kld_mean"] < y["kld_mean"] or x["j_per_token"] < y["j_per_token"]) for x in same)
        order = sorted(same, key=lambda x: (x["j_per_token"], x["kld_mean"], x["config_id"]))
        rank = 1 + [x["config_id"] for x in order].index(y["config_id"])
        rows.append({c: y[c] for c in VIEWS["kld_frontier"] if c in y} | {"on_frontier": not dominated, "rank": rank})
    return pl.DataFrame(rows, schema=VIEWS["kld_frontier"]).sort(*FAMILY_KEY, "rank")


def test_kinds_by_prefix():
    assert (PROBE_PREFIX, SEARCH_PREFIX) == ("probe-", "search-")
    assert qmap(PROBE).kind == "probe" and qmap(SEARCHED).kind == "searched"
    assert qmap("uniform_q8").kind == "uniform" and qmap("mix_a").kind == "mixed"
    # the prefix decides, whatever the types: a uniform map named as a probe is a probe
    uniform = qmap("uniform_q8")
    assert QuantMap("probe-x", MODEL, uniform.groups).kind == "probe"
    assert QuantMap("search-x", MODEL, uniform.groups).kind == "searched"
    assert QuantMap("my-probe-x", MODEL, uniform.groups).kind == "uniform"


def test_kld_frontier_equals_brute_force(con):
    cs = frame(con, "SELECT * FROM config_summary")
    got = frame(con, "SELECT * FROM kld_frontier")
    assert got.columns == list(VIEWS["kld_frontier"])
    # config_summary keeps the probe (both its families: measured, and quality only), and the
    # measured one beats every configuration on both axes
    probe = cs.filter(pl.col("config_id") == PROBE).sort("power_source")
    assert probe["power_source"].to_list() == ["none", "simulated"] and (probe["kind"] == "probe").all()
    assert probe["n_repeats"].to_list() == [0, 2] and probe["kld_mean"][1] == 0.005
    others = cs.filter(pl.col("origin") == "lab", pl.col("config_id") != PROBE)
    assert probe["j_per_token"][1] < others["j_per_token"].min()
    assert_frame_equal(got, brute_force(cs))
    lab = got.filter(pl.col("origin") == "lab")
    assert PROBE not in got["config_id"].to_list() and SEARCHED in lab["config_id"].to_list()
    assert lab.filter("on_frontier")["config_id"].to_list() == ["uniform_q4km", SEARCHED, "mix_b", "uniform_q8"]
    assert lab["kind"].to_list().count("searched") == 1 and lab["simulated"].all()
    assert "uniform_q6k" not in lab["config_id"].to_list()  # no KLD
    alice = got.filter(pl.col("origin") == "community/alice")
    assert alice.filter("on_frontier")["config_id"].to_list() == ["uniform_q8"]  # mix_b: same J/token, more KLD
    assert alice["rank"].to_list() == [1, 2, 3] and lab["rank"].to_list() == list(range(1, 7))


def test_probes_are_in_no_frontier_nor_pair(con):
    pareto = frame(con, "SELECT * FROM pareto_frontier")
    pairs = frame(con, "SELECT * FROM matched_pairs")
    assert PROBE not in pareto["config_id"].to_list() and SEARCHED in pareto["config_id"].to_list()
    assert pairs.height > 0 and SEARCHED in pairs["config_a"].to_list() + pairs["config_b"].to_list()
    assert PROBE not in pairs["config_a"].to_list() + pairs["config_b"].to_list()
    # the Polars twin leaves the probe out the same way
    rm, cs, ba, identity = (frame(con, f"SELECT * FROM {v}") for v in
                            ("run_metrics", "config_summary", "benchmark_answer", "config_identity"))
    assert_frame_equal(pareto, twin_frontier.pareto_frontier(rm, cs, ba, identity=identity, n_boot=40))


def test_the_report_shows_no_probe(con):
    data = collect(con)
    for name in ("config_summary", "pareto_frontier", "run_metrics", "runs", "quant_config", "quantization",
                 "inventory", "answer_flips"):
        assert PROBE not in getattr(data, name)["config_id"].to_list(), name
    assert PROBE not in data.matched_pairs["config_a"].to_list() + data.matched_pairs["config_b"].to_list()
    assert SEARCHED in data.config_summary["config_id"].to_list() and SEARCHED in data.runs["config_id"].to_list()
    assert "none" not in data.power_sources()


def test_a_searched_map_with_a_probes_tensors_keeps_its_name(tmp_path):
    """A search can write a map whose tensors equal a probe's (one layer away from the reference):
    the model is shown under the searched map's name, kind 'searched', in kld_frontier; the probe's
    quality-only run pools with it as one model (SQL and Polars twin alike)."""
    from mqepi.analysis import twin_runs

    lake = Lake(tmp_path / "lake")
    lake.init()
    answers = [answer_row("mmlu", f"q{i}", i % 2, 1) for i in range(6)] + [answer_row("arc_challenge", "a0", 0, 0)]
    for name in (PROBE, SEARCHED, "uniform_q8"):
        m = qmap(name)
        lake.record("quant_config", [{"model": MODEL, "config_id": name, "map_sha256": m.sha256,
                                      "map_json": m.canonical_json(), "n_layers": 3, "kind": m.kind}])
        same = 0 if name in (PROBE, SEARCHED) else 1  # the probe and the searched map: one effective map
        lake.record("quantization", rows_for("quantization", 1, model=MODEL, config_id=name, start=same))
    key = {"model": MODEL, "config_id": PROBE, "run_id": "probe-quality"}
    lake.record("run", [{**key, "status": s, "repeat": 0, "file_sha256": None, "power_source": "none",
                         "host": "localhost", "provenance_json": "{}", "message": None} for s in ("started", "finished")])
    _quality(lake, PROBE, "probe-quality", 0.07, "lab")
    for slot, (name, rep) in enumerate((n, r) for n in (SEARCHED, "uniform_q8") for r in range(2)):
        run_id = record_measured_run(lake, MODEL, name, rep, answers, slot=slot, power_w=5.5 if name == SEARCHED else 6.6)
        _quality(lake, name, run_id, 0.06 if name == SEARCHED else 0.01, "lab")
    con = sql.connect(lake)
    ident = frame(con, "SELECT config_id, canonical_id, config_ids FROM config_identity ORDER BY config_id")
    assert dict(zip(ident["config_id"], ident["canonical_id"])) == {PROBE: SEARCHED, SEARCHED: SEARCHED,
                                                                     "uniform_q8": "uniform_q8"}
    twin = twin_runs.config_identity(lake, twin_runs.run_metrics(lake)).sort("config_id")
    assert twin["canonical_id"].to_list() == ident["canonical_id"].to_list()
    kf = frame(con, "SELECT config_id, kind FROM kld_frontier")
    assert (SEARCHED, "searched") in kf.rows() and PROBE not in kf["config_id"].to_list()
