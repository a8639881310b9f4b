"""The energy-aware search: probe maps, the additive KLD model and its check, unit bytes, and
the probe -> search -> map pipeline on the embedded model with the real llama-quantize and
llama-perplexity (tiny settings: two layer blocks, one candidate type, 2 chunks of 128 tokens)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mqepi.lake.store import Lake
from mqepi.quant import assets, maps, quantize, toolchain
from mqepi.quant.expansion import expand
from mqepi.search import models, optimise
from mqepi.search import probes as pr
from mqepi.search import run as sr

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def profile():
    return maps.load_profile(MODEL)


def synthetic(profile, deltas: dict[tuple[str, str], float], ref_kld: float = 0.1) -> pr.ProbeSet:
    settings = pr.ProbeSettings(reference="Q4_K_M", candidates=("Q3_K_S", "Q8_0"))
    unit_list = pr.units(profile)
    ps = pr.ProbeSet(settings, unit_list, pr.ProbeResult("ref", "reference", "Q4_K_M", ref_kld))
    for u in unit_list:
        for t in settings.candidates:
            ps.results[(u.name, t)] = pr.ProbeResult(f"p-{u.name}-{t}", u.name, t, ref_kld + deltas.get((u.name, t), 0.0))
    return ps


def test_probe_maps_lower_one_unit_and_pin_the_global_tensors(profile):
    reference, unit_list, probes = pr.plan(profile, pr.ProbeSettings(reference="Q4_K_M", candidates=("Q3_K_S", "Q5_K_M")))
    assert [u.name for u in unit_list] == [f"L{i:02d}" for i in range(30)] + ["output"]  # SmolLM2 ties its embeddings
    ref = {t.name: t.effective_type for t in expand(reference, profile).tensors}
    for p in probes:
        assert p.qmap.kind == "probe"
        assert maps.parse_map(p.qmap.to_dict(), profile=profile).canonical_json() == p.qmap.canonical_json()
        types = {t.name: t.effective_type for t in expand(p.qmap, profile).tensors}
        changed = {n for n in types if types[n] != ref[n]}
        own = ({"token_embd.weight"} if p.unit.tensor else
               {t.name for t in profile.tensors if t.layer in p.unit.layers})
        assert changed <= own  # nothing outside the probed unit moves (layer 0 / 29 keep the globals)
        assert p.free == (not changed)
    free = {(p.unit.name, p.qtype) for p in probes if p.free}
    assert ("output", "Q5_K_M") in free and ("output", "Q3_K_S") in free  # q6_K under every K ftype
    assert not any(p.free for p in probes if p.unit.tensor is None)


def test_the_additive_model_predicts_the_sum_of_the_probe_effects(profile):
    deltas = {("L00", "Q3_K_S"): 0.02, ("L05", "Q3_K_S"): 0.01, ("L05", "Q8_0"): -0.004, ("L29", "Q8_0"): -0.001}
    ps = synthetic(profile, deltas)
    qmap = pr.assigned_map(profile, "x", {"L00": "Q3_K_S", "L05": "Q8_0", "L29": "Q8_0"}, ps.units, "Q4_K_M")
    assert models.predict_kld(ps, qmap) == pytest.approx(0.1 + 0.02 - 0.004 - 0.001)
    # a paper-style map: groups of layers; the block's share of each type counts
    paper = maps.load_map(maps.maps_dir(MODEL) / "uniform_q3ks.json", profile)
    assert models.predict_kld(ps, paper) == pytest.approx(0.1 + 0.02 + 0.01)
    with pytest.raises(pr.SearchError, match="no probe of unit L00 at Q6_K"):
        models.predict_kld(ps, maps.load_map(maps.maps_dir(MODEL) / "uniform_q6k.json", profile))


def test_the_quality_check_reports_rank_error_and_interactions(profile):
    deltas = {(f"L{i:02d}", "Q3_K_S"): 0.001 * (i + 1) for i in range(30)}
    ps = synthetic(profile, deltas)
    maps_ = [pr.assigned_map(profile, f"m{k}", {f"L{i:02d}": "Q3_K_S" for i in range(k)}, ps.units, "Q4_K_M")
             for k in (2, 5, 9, 20)]
    exact = [(m.config_id, json.dumps(m.to_dict()), models.predict_kld(ps, m)) for m in maps_]
    check = models.check_quality(ps, profile, exact)
    assert check.n == 4 and check.spearman == pytest.approx(1.0) and check.median_relative_error == pytest.approx(0, abs=1e-12)
    assert "interactions small" in check.describe()
    compounding = [(c, j, k * 1.5) for c, j, k in exact]
    assert "super-additive" in models.check_quality(ps, profile, compounding).describe()


def test_the_calibration_is_the_searched_maps_measured_over_predicted_change(profile):
    deltas = {(f"L{i:02d}", "Q3_K_S"): 0.001 * (i + 1) for i in range(30)}
    ps = synthetic(profile, deltas)

    def measured(config_id, k, factor):
        m = pr.assigned_map(profile, config_id, {f"L{i:02d}": "Q3_K_S" for i in range(k)}, ps.units, "Q4_K_M")
        return config_id, json.dumps(m.to_dict()), 0.1 + factor * (models.predict_kld(ps, m) - 0.1)

    rows = [measured("search-aaaa", 3, 1.5), measured("search-bbbb", 6, 1.4), measured("search-kldonly-cccc", 9, 1.6),
            measured("search-random-dddd", 12, 9.0), measured("mix_paper", 15, 0.5)]
    mine = {"reference": "Q4_K_M", "group": 1, "text": {"context": 128, "chunks": 8}}
    prov = {c: mine for c, *_ in rows} | {"search-bbbb": {**mine, "reference": "Q8_0"}}  # another search's pick
    rows.append(measured("search-eeee", 4, 1.3))  # no provenance (no map file): not known to be this search's
    cal = models.calibrate(ps, profile, rows, prov)
    assert cal.n == 2 and cal.ratio == pytest.approx(1.55)  # the median; random, paper and other maps left out
    assert cal.config_ids == ["search-aaaa", "search-kldonly-cccc"] and "1.550" in cal.describe()
    assert models.calibrate(ps, profile, rows[3:], prov) is None
    qmap = pr.assigned_map(profile, "x", {"L00": "Q3_K_S", "L01": "Q3_K_S"}, ps.units, "Q4_K_M")
    assert models.predict_kld(ps, qmap, cal.ratio) == pytest.approx(0.1 + 1.55 * 0.003)


def test_unit_bytes_add_up_to_the_expansion(profile):
    unit_list = pr.units(profile, group=4)
    nbytes = models.unit_bytes(profile, unit_list, ["Q4_K_M", "Q8_0"])
    for t in ("Q4_K_M", "Q8_0"):
        total = sum(nbytes[(u.name, t)] for u in unit_list) + nbytes[("rest", t)]
        qmap = pr.assigned_map(profile, "u", {u.name: t for u in unit_list}, unit_list, t)
        assert total == expand(qmap, profile).data_bytes
    assert nbytes[("L00-03", "Q8_0")] > nbytes[("L00-03", "Q4_K_M")]


def test_the_kld_only_baseline_ignores_bytes_and_meets_the_budget():
    units = [[optimise.Option("cheap", 1, 0.05, 1), optimise.Option("dear", 9, 0.0, 9)],
             [optimise.Option("cheap", 1, 0.02, 1), optimise.Option("dear", 2, 0.0, 2)]]
    assert sr.kld_only(units, 0.03) == ("dear", "cheap")  # the largest KLD gain first
    assert optimise.minimise(units, 0.03).labels == ("dear", "cheap")
    assert optimise.minimise(units, 0.05).labels == ("cheap", "dear")  # energy-aware: the cheaper fix
    assert sr.kld_only(units, 0.05) == ("dear", "cheap")


@pytest.mark.slow
def test_probes_then_search_on_the_embedded_model(tmp_path, profile):
    toolchain.ensure()
    assets.ensure_base_model()
    lake = Lake(tmp_path / "lake")
    lake.init()
    settings = pr.ProbeSettings(MODEL, "Q4_K_M", ("Q8_0",), group=15, ppl_context=128, ppl_chunks=2)
    lines: list[str] = []
    done = pr.run_probes(lake, settings, lines.append)
    assert sorted(done.results) == [("L00-14", "Q8_0"), ("L15-29", "Q8_0"), ("output", "Q8_0")]
    blocks = [done.results[(u, "Q8_0")] for u in ("L00-14", "L15-29")]
    assert all(r.measured_now and r.kld_mean >= 0 for r in blocks) and done.reference.measured_now
    # SmolLM2's tied token_embd has 576-wide rows: q6_K falls back to q8_0, so the output probe
    # writes the reference's tensors: known (effect 0), not measured
    assert not done.results[("output", "Q8_0")].measured_now and done.delta("output", "Q8_0") == 0
    assert done.delta("L00-14", "Q8_0") < 0  # more bits, closer to the base
    kinds = lake.read("quant_config").select("config_id", "kind")
    assert set(kinds["kind"]) == {"probe"} and kinds.height == 3
    assert not list((toolchain.cache_root() / "search" / "probes").rglob("probe-q4km-L00-14-q80*.gguf"))
    again = pr.run_probes(lake, settings, lines.append)  # resumed: everything from the lake
    assert not any(r.measured_now for r in again.results.values()) and not again.reference.measured_now
    assert lake.read("quant_config").height == 3
    result = sr.run_search(lake, sr.SearchSettings(settings, budget_kld=(done.reference.kld_mean
                                                                     + done.delta("L00-14", "Q8_0") / 2), verify=2),
                       lines.append)
    assert not result.cost.measured and "no J/token predicted" in result.cost.describe()
    best = result.written[0]
    assert best.role == "searched" and best.predicted_kld <= result.budget_kld + 1e-12
    paths = sr.write_maps(result, tmp_path / "maps")
    for path in paths:
        qmap = maps.load_map(path, profile)
        assert qmap.kind == "searched" and json.loads(path.read_text())["provenance"]["tool"] == "mqepi search"
    tc, base = toolchain.ensure(), assets.ensure_base_model()
    searched = maps.load_map(paths[0], profile)
    q = quantize.quantize(searched, profile, base.path, base.sha256, tc.tool("llama-quantize"), tc.llama_cpp_commit,
                          tmp_path / "gguf", lake=lake)
    assert q.actual_data_bytes == q.predicted_data_bytes == best.data_bytes  # quantizes to its predicted types
    inv = lake.read("tensor_inventory").filter(pl.col("config_id") == searched.config_id)
    assert dict(zip(inv["tensor"], inv["effective_type"])) == {t.name: t.effective_type
                                                                for t in expand(searched, profile).tensors}


def test_the_cost_model_is_not_used_when_the_data_do_not_show_energy_rising_with_bytes(profile):
    paper = maps.load_maps(sorted(maps.maps_dir(MODEL).glob("uniform_*.json")), profile)
    size = {m.config_id: expand(m, profile).data_bytes for m in paper}

    def rows(j_of_bytes):
        return pl.DataFrame([{"config_id": m.config_id, "origin": "lab", "power_source": "simulated", "hardware_id": "hw",
                              "map_json": json.dumps(m.to_dict()), "j_per_token": j_of_bytes(size[m.config_id])}
                             for m in paper])

    rising = models.fit_cost(rows(lambda b: 0.02 + 3e-10 * b + (b % 7) * 1e-6), profile)
    assert rising.measured and rising.j_per_byte == pytest.approx(3e-10, rel=0.05) and rising.j_per_byte_ci[0] > 0
    falling = models.fit_cost(rows(lambda b: 0.2 - 3e-10 * b + (b % 7) * 1e-6), profile)  # e.g. loads pooled
    assert not falling.measured and falling.j_per_token(1e8) is None and falling.j_per_byte == 1.0
    assert "not shown positive" in falling.describe() and "bytes stand in" in falling.describe()
