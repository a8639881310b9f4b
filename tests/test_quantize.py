"""The quantize step on the real llama-quantize build and real GGUF files."""

from __future__ import annotations

import subprocess

import polars as pl
import pytest
from tiny_model import make_tiny_llama

from mqepi.lake.store import Lake
from mqepi.quant import assets, expansion, maps, quantize, toolchain
from mqepi.results import sql


@pytest.fixture(scope="session")
def tools():
    return toolchain.ensure()  # builds once into the cache (minutes), then instant


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    path = make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf")
    profile = maps.profile_from_gguf(path, "tiny-llama")
    return path, profile


@pytest.fixture(scope="session")
def smollm2():
    return assets.ensure_base_model()


def uniform(profile, ftype):
    bounds = maps.group_bounds(profile.n_layers)
    return maps.QuantMap(f"u_{ftype.lower()}", profile.id, tuple(
        maps.LayerGroup(name, tuple(r), ftype) for name, r in zip(("early", "middle", "late"), bounds)))


def test_profile_from_gguf_header(tiny):
    _, profile = tiny
    assert (profile.n_layers, profile.n_head, profile.n_head_kv, profile.tied_embeddings) == (32, 8, 2, False)
    assert len(profile.tensors) == 3 + 32 * 9


@pytest.mark.parametrize("ftype", ["Q2_K", "Q3_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
def test_recipe_reproduces_plain_llama_quantize(tools, tiny, tmp_path, ftype):
    path, profile = tiny
    plain = tmp_path / "plain.gguf"
    subprocess.run([str(tools.tool("llama-quantize")), str(path), str(plain), ftype], check=True, capture_output=True)
    q = quantize.quantize(uniform(profile, ftype), profile, path, "0" * 64, tools.tool("llama-quantize"),
                          tools.llama_cpp_commit, tmp_path / "out")
    ours, theirs = quantize.read_types(plain), quantize.read_types(q.path)
    assert ours == theirs  # same type and bytes for every tensor
    assert q.fallbacks == 0 and q.predicted_data_bytes == q.actual_data_bytes


def test_mixed_maps_give_exactly_their_predicted_types(tools, tiny, tmp_path):
    path, profile = tiny
    generated = [m for m in maps.paper_maps(profile) if m.kind == "mixed"]
    for qmap in generated[:6]:
        exp = expansion.expand(qmap, profile)
        q = quantize.quantize(qmap, profile, path, "0" * 64, tools.tool("llama-quantize"), tools.llama_cpp_commit,
                              tmp_path / "out")
        written = quantize.read_types(q.path)
        assert {t.name: t.effective_type for t in exp.tensors} == {n: ty for n, (ty, _) in written.items()}, qmap.config_id


def test_unexplained_type_is_an_error(tiny):
    _, profile = tiny
    exp = expansion.expand(uniform(profile, "Q4_K_M"), profile)
    actual = {t.name: (t.effective_type, t.n_bytes) for t in exp.tensors}
    actual["blk.5.attn_q.weight"] = ("q8_0", 1)
    with pytest.raises(quantize.QuantizeError, match=r"blk\.5\.attn_q\.weight was written as q8_0, but the map requested q4_K"):
        quantize.check_types(exp, actual, "x.gguf")


@pytest.mark.slow
def test_all_24_smollm2_configs_predicted_to_the_byte(tools, smollm2, tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    profile = maps.load_profile("smollm2-135m")
    results = {}
    for qmap in maps.load_maps(sorted(maps.maps_dir("smollm2-135m").glob("*.json")), profile):
        q = quantize.quantize(qmap, profile, smollm2.path, smollm2.sha256, tools.tool("llama-quantize"),
                              tools.llama_cpp_commit, tmp_path / "gguf", lake=lake)
        assert q.actual_data_bytes == q.predicted_data_bytes, qmap.config_id
        assert q.file_size_bytes == q.predicted_file_bytes, qmap.config_id
        results[qmap.config_id] = q
    # every file is its tensor data plus one and the same header (the tokenizer and metadata)
    headers = {q.file_size_bytes - q.actual_data_bytes for q in results.values()}
    assert len(headers) == 1 and 1_000_000 < headers.pop() < 2_000_000
    # Q2_K and Q3_K_S write the same tensors here (fallbacks); only general.file_type differs
    q2k, q3ks = results["uniform_q2k"], results["uniform_q3ks"]
    assert q2k.effective_map_sha256 == q3ks.effective_map_sha256 and q2k.file_size_bytes == q3ks.file_size_bytes
    assert quantize.read_types(q2k.path) == quantize.read_types(q3ks.path)
    assert all(q.fallbacks > 0 for q in results.values() if q.config_id != "uniform_q8")
    # events are in the lake and visible through the views
    con = sql.connect(lake)
    n = sql.query(con, "SELECT count(DISTINCT config_id) AS n FROM quantization").to_pylist()[0]["n"]
    assert n == len(list(maps.maps_dir("smollm2-135m").glob("*.json")))  # the paper's 24 and any committed search-*
    inv = pl.from_arrow(sql.query(con, "SELECT config_id, sum(n_bytes) AS b FROM tensor_inventory GROUP BY ALL"))
    assert dict(inv.iter_rows()) == {c: q.actual_data_bytes for c, q in results.items()}
    assert lake.verify().ok
    # same base + map + commit: the file is reused and no event is added
    before = lake.files("quantization")
    again = quantize.quantize(maps.load_map(maps.maps_dir("smollm2-135m") / "uniform_q8.json"), profile, smollm2.path,
                              smollm2.sha256, tools.tool("llama-quantize"), tools.llama_cpp_commit, tmp_path / "gguf",
                              lake=lake)
    assert again.reused and lake.files("quantization") == before
