"""One model, several names: configurations whose effective per-tensor maps are identical.

On SmolLM2-135M, ``mix_high_middle`` and ``mix_bookend_low`` are the same map (the paper lists
both), and ``uniform_q2k`` and ``uniform_q3ks`` write the same tensor types (llama.cpp's shape
fallbacks at width 576). The ground truth is the real llama-quantize: both of a pair give
byte-identical tensors. A sweep measures one of each pair and records the other as a
``config_alias``; a rerun runs and records nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import gguf
import polars as pl
import pytest
from typer.testing import CliRunner

from mqepi import PRODUCER
from mqepi.cli import app
from mqepi.lake.store import Lake
from mqepi.quant import assets, expansion, maps, quantize, toolchain
from mqepi.schemas import EVENT_TYPES
from mqepi.sweep import forecast as plan
from mqepi.sweep import rig as rig_module
from mqepi.sweep.resume import plan_aliases, run_id_for
from mqepi.sweep.run import run_sweep
from mqepi.sweep.spec import SweepError, SweepSpec

MODEL = "smollm2-135m"
PAIRS = [("uniform_q2k", "uniform_q3ks"), ("mix_bookend_low", "mix_high_middle")]
TINY = dict(benchmarks={"mmlu": 2}, ppl_context=64, ppl_chunks=2, kld=False, n_prompt=16, n_gen=4,
            bench_repetitions=1, idle_s=1.0, settle_s=0.0, meter_rate_hz=20.0, repeats=1)


@pytest.fixture(scope="module")
def profile():
    return maps.load_profile(MODEL)


@pytest.fixture(scope="module")
def committed(profile):
    return {m.config_id: m for m in maps.load_maps(sorted(maps.maps_dir(MODEL).glob("*.json")), profile)}


def identities(committed, profile, names):
    return [(n, committed[n].sha256, expansion.expand(committed[n], profile).effective_sha256) for n in names]


# ------------------------------------------------------------------ prediction (no binary)


def test_expansion_finds_the_two_smollm2_pairs(committed, profile):
    assert expansion.effectively_identical(committed.values(), profile) == [
        ["mix_bookend_low", "mix_high_middle"], ["uniform_q2k", "uniform_q3ks"]]
    for a, b in PAIRS:
        ea, eb = expansion.expand(committed[a], profile), expansion.expand(committed[b], profile)
        assert ea.effective_sha256 == eb.effective_sha256
        assert [(t.name, t.effective_type) for t in ea.tensors] == [(t.name, t.effective_type) for t in eb.tensors]
    # q2k and q3ks differ in what they ask for; only the fallbacks make them one model
    q2k, q3ks = (expansion.expand(committed[c], profile) for c in PAIRS[0])
    assert [t.requested_type for t in q2k.tensors] != [t.requested_type for t in q3ks.tensors]
    # the 8B profile (width 4096) has no fallbacks: only the paper's duplicate is one model there
    llama = maps.load_profile("llama-3.1-8b")
    llama_maps = maps.load_maps(sorted(maps.maps_dir("llama-3.1-8b").glob("*.json")), llama)
    assert expansion.effectively_identical(llama_maps, llama) == [["mix_bookend_low", "mix_high_middle"]]


def test_maps_validate_and_show_name_the_same_models():
    runner = CliRunner()
    files = [str(p) for p in sorted(maps.maps_dir(MODEL).glob("*.json"))]
    result = runner.invoke(app, ["maps", "validate", *files])
    assert result.exit_code == 0, result.output
    assert ("uniform_q2k = uniform_q3ks on smollm2-135m (identical tensor types after llama.cpp's fallbacks)"
            in result.stderr)
    assert "mix_high_middle is the same map as mix_bookend_low" in result.stderr
    result = runner.invoke(app, ["maps", "show", "uniform_q3ks", "--model", MODEL])
    assert result.exit_code == 0, result.output
    assert "uniform_q3ks = uniform_q2k on smollm2-135m (identical tensor types" in result.stderr
    result = runner.invoke(app, ["maps", "show", "uniform_q8", "--model", MODEL])
    assert result.exit_code == 0 and "note" not in result.stderr


def _run_rows(spec: SweepSpec, config_id: str, statuses: list[str]) -> dict:
    run_id = run_id_for(spec.sweep_id, spec.model, config_id, 0, 1)
    n = len(statuses)
    return {"model": [spec.model] * n, "config_id": [config_id] * n, "run_id": [run_id] * n, "status": statuses,
            "repeat": [0] * n, "file_sha256": [None] * n, "power_source": ["simulated"] * n, "host": ["h"] * n,
            "provenance_json": [json.dumps({"sweep_id": spec.sweep_id})] * n, "message": [None] * n}


def test_which_one_is_measured(committed, profile, lake):
    base = "b" * 64
    spec = SweepSpec(**TINY, name="pick")
    names = ["uniform_q8", "uniform_q2k", "mix_bookend_low", "uniform_q3ks", "mix_high_middle"]
    got = plan_aliases(lake, spec, identities(committed, profile, names), base)
    assert {a: x.alias_of for a, x in got.items()} == {"uniform_q3ks": "uniform_q2k", "mix_high_middle": "mix_bookend_low"}
    a = got["uniform_q3ks"]
    assert (a.map_sha256, a.base_sha256) == (committed["uniform_q3ks"].sha256, base)
    assert a.effective_map_sha256 == expansion.expand(committed["uniform_q2k"], profile).effective_sha256
    # sweep order decides when nothing else does
    got = plan_aliases(lake, spec, identities(committed, profile, ["uniform_q3ks", "uniform_q2k"]), base)
    assert {a: x.alias_of for a, x in got.items()} == {"uniform_q2k": "uniform_q3ks"}
    # no pair, no alias; a config named twice is not its own alias
    assert plan_aliases(lake, spec, identities(committed, profile, ["uniform_q2k", "uniform_q2k", "uniform_q8"]),
                        base) == {}

    # a sweep over a subset measured uniform_q3ks: the full sweep keeps it and aliases uniform_q2k
    lake.record("run", _run_rows(spec, "uniform_q3ks", ["started", "finished"]), producer=PRODUCER)
    got = plan_aliases(lake, spec, identities(committed, profile, ["uniform_q2k", "uniform_q3ks"]), base)
    assert {a: x.alias_of for a, x in got.items()} == {"uniform_q2k": "uniform_q3ks"}
    other = SweepSpec(**TINY, name="other")  # another sweep's runs do not count
    got = plan_aliases(lake, other, identities(committed, profile, ["uniform_q2k", "uniform_q3ks"]), base)
    assert {a: x.alias_of for a, x in got.items()} == {"uniform_q3ks": "uniform_q2k"}

    # an alias the lake records already stands, whatever the order or the runs: never both directions
    lake.record("config_alias", got["uniform_q3ks"].row(MODEL), producer=PRODUCER)
    for order in (["uniform_q2k", "uniform_q3ks"], ["uniform_q3ks", "uniform_q2k"]):
        for s in (spec, other):
            got = plan_aliases(lake, s, identities(committed, profile, order), base)
            assert {a: x.alias_of for a, x in got.items()} == {"uniform_q3ks": "uniform_q2k"}, (order, s.name)
    # ... for that base only
    got = plan_aliases(lake, other, identities(committed, profile, ["uniform_q3ks", "uniform_q2k"]), "c" * 64)
    assert {a: x.alias_of for a, x in got.items()} == {"uniform_q2k": "uniform_q3ks"}


def test_config_alias_refuses_itself(lake):
    row = {"model": [MODEL], "config_id": ["a"], "alias_of": ["a"], "map_sha256": ["0" * 64],
           "base_sha256": ["1" * 64], "effective_map_sha256": ["2" * 64]}
    with pytest.raises(Exception, match="not_itself"):
        lake.record("config_alias", row, producer=PRODUCER)


# ------------------------------------------------------------------ ground truth: the real llama-quantize


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, committed, profile):
    """The four configurations quantized by the real llama-quantize, with their events in a lake."""
    tc = toolchain.ensure()
    base = assets.ensure_base_model()
    root = tmp_path_factory.mktemp("aliases")
    lake = Lake(root / "lake")
    lake.init()
    files = {c: quantize.quantize(committed[c], profile, base.path, base.sha256, tc.tool("llama-quantize"),
                                  tc.llama_cpp_commit, root / "gguf", lake=lake)
             for pair in PAIRS for c in pair}
    return files, lake, base, tc


def tensors_of(path: str) -> tuple[dict[str, tuple[str, int, str]], str]:
    """tensor -> (type, bytes, sha256 of its data), and the sha256 of the whole tensor-data section."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: (t.tensor_type.name, int(t.n_bytes), hashlib.sha256(t.data.tobytes()).hexdigest())
               for t in reader.tensors}
    with open(path, "rb") as fh:
        fh.seek(reader.data_offset)
        data = hashlib.sha256(fh.read()).hexdigest()
    return tensors, data


@pytest.mark.slow
def test_identical_effective_maps_write_byte_identical_tensors(quantized, committed, profile):
    files, _, _, _ = quantized
    content = {c: tensors_of(q.path) for c, q in files.items()}
    for a, b in PAIRS:
        assert files[a].effective_map_sha256 == files[b].effective_map_sha256
        assert content[a][0] == content[b][0]  # every tensor: same type, same bytes, same data
        assert content[a][1] == content[b][1]  # the whole tensor-data section
    # and the two pairs are different models
    assert content["uniform_q2k"][1] != content["mix_high_middle"][1]
    # Q2_K and Q3_K_S files still differ in their header (general.file_type), not in their tensors
    assert files["uniform_q2k"].file_sha256 != files["uniform_q3ks"].file_sha256


@pytest.mark.slow
def test_a_written_map_other_than_predicted_is_an_error(quantized, committed, profile):
    files, lake, base, tc = quantized
    exp = expansion.expand(committed["uniform_q2k"], profile)
    written = rig_module.written_types(lake, exp, base.sha256, tc.llama_cpp_commit)
    assert list(written) == [files["uniform_q2k"].file_sha256]
    rig_module.check_written(exp, written, ["uniform_q3ks"])  # the real file holds the prediction
    assert exp.written_sha256(written[files["uniform_q2k"].file_sha256]) == exp.effective_sha256
    # an expansion that mispredicts a tensor the quantize step does not check (a norm's stored type)
    wrong = mispredicting(profile)
    bad = expansion.expand(committed["uniform_q2k"], wrong)
    assert bad.effective_sha256 != exp.effective_sha256
    with pytest.raises(SweepError, match=r"uniform_q2k: the quantized file .* has effective map .* but the expansion "
                                         r"predicted .*blk\.0\.attn_norm\.weight: predicted f16, written f32.*"
                                         r"not recording uniform_q3ks as the same model"):
        rig_module.check_written(bad, written, ["uniform_q3ks"])
    # another llama.cpp commit's or base's files are not this sweep's
    assert rig_module.written_types(lake, exp, base.sha256, "0" * 40) == {}
    assert rig_module.written_types(lake, exp, "0" * 64, tc.llama_cpp_commit) == {}


def mispredicting(profile: maps.ModelProfile) -> maps.ModelProfile:
    """The profile with one norm declared f16 (the file holds f32): its expansion mispredicts."""
    tensors = tuple(dataclasses.replace(t, type="f16") if t.name == "blk.0.attn_norm.weight" else t
                    for t in profile.tensors)
    return dataclasses.replace(profile, tensors=tensors)


# ------------------------------------------------------------------ the sweep


def snapshot(lake: Lake) -> dict[str, list[str]]:
    return {t: sorted(lake.files(t)) for t in EVENT_TYPES}


@pytest.mark.slow
def test_sweep_measures_an_identical_pair_once_and_resumes(tmp_path):
    lake = Lake(tmp_path / "lake")
    spec = SweepSpec(**TINY, configs=["uniform_q2k", "uniform_q3ks"], name="alias")
    lines: list[str] = []
    result = run_sweep(spec, lake, progress=lines.append)
    assert result.finished == ["alias-smollm2-135m-uniform_q2k-r0-a1"]
    assert result.aliases == {"uniform_q3ks": "uniform_q2k"} and result.skipped == []
    assert result.summary()["aliases"] == {"uniform_q3ks": "uniform_q2k"}
    assert ("uniform_q3ks: the same model as uniform_q2k (identical tensor types); measured once, "
            "recorded as an alias") in lines

    alias = lake.read("config_alias")
    assert alias.height == 1
    row = alias.row(0, named=True)
    made = lake.read("quantization").row(0, named=True)
    profile = maps.load_profile(MODEL)
    q3ks = maps.load_map(maps.maps_dir(MODEL) / "uniform_q3ks.json", profile)
    assert {k: row[k] for k in ("model", "config_id", "alias_of", "map_sha256", "base_sha256",
                                "effective_map_sha256")} == {
        "model": MODEL, "config_id": "uniform_q3ks", "alias_of": "uniform_q2k", "map_sha256": q3ks.sha256,
        "base_sha256": made["base_sha256"], "effective_map_sha256": made["effective_map_sha256"]}
    # the alias is never quantized nor run; its map is described like every other
    assert lake.read("quantization")["config_id"].to_list() == ["uniform_q2k"]
    assert set(lake.read("tensor_inventory")["config_id"]) == {"uniform_q2k"}
    assert set(lake.read("run")["config_id"]) == {"uniform_q2k"}
    qc = lake.read("quant_config").sort("config_id")
    assert qc["config_id"].to_list() == ["uniform_q2k", "uniform_q3ks"]
    assert qc.filter(pl.col("config_id") == "uniform_q3ks")["map_json"][0] == q3ks.canonical_json()

    # a rerun (resume) runs nothing and records nothing
    before = snapshot(lake)
    lines.clear()
    again = run_sweep(spec, lake, progress=lines.append)
    assert again.finished == [] and again.skipped == [("uniform_q2k", 0)]
    assert "uniform_q3ks: the same model as uniform_q2k (identical tensor types); measured once, an alias recorded " \
           "before" in lines
    assert again.aliases == {"uniform_q3ks": "uniform_q2k"}
    assert snapshot(lake) == before
    assert lake.verify().ok

    # the planner skips the alias like the sweep does
    f = plan.forecast(spec, lake)
    by = {c.config_id: c for c in f.configs}
    assert by["uniform_q3ks"].runs == 0 and by["uniform_q3ks"].seconds == 0
    assert "the same model as uniform_q2k" in by["uniform_q3ks"].source
    assert by["uniform_q2k"].runs == 1 and by["uniform_q2k"].source == "measured"


@pytest.mark.slow
def test_sweep_refuses_an_alias_the_written_file_contradicts(tmp_path, monkeypatch):
    """If the expansion the grouping used mispredicts what llama-quantize writes, the sweep stops
    before recording the alias or running anything."""
    real = rig_module.expand
    monkeypatch.setattr(rig_module, "expand", lambda qmap, profile: real(qmap, mispredicting(profile)))
    lake = Lake(tmp_path / "lake")
    spec = SweepSpec(**TINY, configs=["uniform_q2k", "uniform_q3ks"], name="wrong")
    with pytest.raises(SweepError, match="not recording uniform_q3ks as the same model"):
        run_sweep(spec, lake)
    assert lake.read("config_alias").is_empty() and lake.read("run").is_empty()
    assert lake.read("quantization")["config_id"].to_list() == ["uniform_q2k"]
