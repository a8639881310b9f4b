"""Quant maps: the paper's matrix, validation, llama.cpp's per-tensor rules (no binary needed)."""

from __future__ import annotations

import json

import pytest

from mqepi.quant import expansion, ggml, maps
from mqepi.quant.maps import MapError

PAPER_TABLE = {  # config_id: (early, middle, late), copied from the paper's section 6
    "uniform_q2k": ("Q2_K",) * 3, "uniform_q3ks": ("Q3_K_S",) * 3, "uniform_q4km": ("Q4_K_M",) * 3,
    "uniform_q5km": ("Q5_K_M",) * 3, "uniform_q6k": ("Q6_K",) * 3, "uniform_q8": ("Q8_0",) * 3,
    "mix_high_early": ("Q6_K", "Q4_K_M", "Q3_K_S"), "mix_high_late": ("Q3_K_S", "Q4_K_M", "Q6_K"),
    "mix_high_middle": ("Q3_K_S", "Q6_K", "Q3_K_S"), "mix_gradient_down": ("Q6_K", "Q5_K_M", "Q4_K_M"),
    "mix_gradient_up": ("Q4_K_M", "Q5_K_M", "Q6_K"), "mix_extreme_early": ("Q8_0", "Q4_K_M", "Q2_K"),
    "mix_extreme_late": ("Q2_K", "Q4_K_M", "Q8_0"), "mix_bookend_high": ("Q6_K", "Q3_K_S", "Q6_K"),
    "mix_bookend_low": ("Q3_K_S", "Q6_K", "Q3_K_S"), "mix_q5_q4": ("Q5_K_M", "Q4_K_M", "Q4_K_M"),
    "mix_q4_q5": ("Q4_K_M", "Q4_K_M", "Q5_K_M"), "mix_q6_q4_q4": ("Q6_K", "Q4_K_M", "Q4_K_M"),
    "mix_q4_q4_q6": ("Q4_K_M", "Q4_K_M", "Q6_K"), "mix_q4_q6_q4": ("Q4_K_M", "Q6_K", "Q4_K_M"),
    "mix_q5_q3_q5": ("Q5_K_M", "Q3_K_S", "Q5_K_M"), "mix_q3_q5_q3": ("Q3_K_S", "Q5_K_M", "Q3_K_S"),
    "mix_q6_q3_q4": ("Q6_K", "Q3_K_S", "Q4_K_M"), "mix_q4_q3_q6": ("Q4_K_M", "Q3_K_S", "Q6_K"),
}
PROFILES = ["llama-3.1-8b", "qwen3-30b-a3b", "smollm2-135m"]


@pytest.mark.parametrize("profile_id", PROFILES)
def test_generated_matrix_matches_paper_and_committed_maps(profile_id):
    profile = maps.load_profile(profile_id)
    generated = maps.paper_maps(profile)
    assert len(generated) == 24 and len({m.config_id for m in generated}) == 24
    assert {m.config_id: tuple(g.quant for g in m.groups) for m in generated} == PAPER_TABLE
    assert sum(m.kind == "uniform" for m in generated) == 6
    # the paper's 24, besides any map `mqepi search` wrote (search-*.json: valid maps of kind 'searched')
    committed = maps.load_maps(sorted(maps.maps_dir(profile_id).glob("*.json")), profile)
    paper = [m for m in committed if not m.config_id.startswith(maps.SEARCH_PREFIX)]
    assert {m.config_id: m.sha256 for m in paper} == {m.config_id: m.sha256 for m in generated}
    assert all(m.kind == "searched" for m in committed if m not in paper)
    # the paper lists one map twice under two names; nothing else repeats
    assert maps.identical_maps(generated) == [("mix_high_middle", "mix_bookend_low")]


@pytest.mark.parametrize("n,bounds", [(32, ((0, 8), (8, 24), (24, 32))), (30, ((0, 7), (7, 23), (23, 30))),
                                      (48, ((0, 12), (12, 36), (36, 48)))])
def test_group_bounds(n, bounds):
    assert tuple((r.start, r.stop) for r in maps.group_bounds(n)) == bounds


def test_more_bits_layers_match_llama_cpp():
    assert [i for i in range(32) if ggml.use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(48) if ggml.use_more_bits(i, 48)][:8] == [0, 1, 2, 3, 4, 5, 8, 11]


@pytest.mark.parametrize("config,bpw", [("uniform_q2k", 3.1593), ("uniform_q3ks", 3.6429), ("uniform_q4km", 4.8944),
                                        ("uniform_q5km", 5.7036), ("uniform_q6k", 6.5633), ("uniform_q8", 8.5008)])
def test_llama_8b_bits_per_weight_equal_llama_cpp_published_figures(config, bpw):
    profile = maps.load_profile("llama-3.1-8b")
    qmap = next(m for m in maps.paper_maps(profile) if m.config_id == config)
    assert round(expansion.expand(qmap, profile).bits_per_weight, 4) == bpw


def types_of(config, profile_id):
    profile = maps.load_profile(profile_id)
    qmap = next(m for m in maps.paper_maps(profile) if m.config_id == config)
    return {t.name: (t.requested_type, t.effective_type) for t in expansion.expand(qmap, profile).tensors}


def test_mixed_map_uses_global_layer_index_for_more_bits():
    types = types_of("mix_gradient_up", "llama-3.1-8b")  # Q4_K_M early (0-7), Q5_K_M middle, Q6_K late
    assert types["blk.6.attn_v.weight"][0] == "q6_K"   # more-bits layer 6 of 32
    assert types["blk.7.attn_v.weight"][0] == "q4_K"   # not a more-bits layer
    assert types["blk.9.ffn_down.weight"][0] == "q6_K"  # Q5_K_M middle, layer 9 is more-bits
    assert types["blk.10.ffn_down.weight"][0] == "q5_K"
    assert types["blk.30.attn_q.weight"][0] == "q6_K"
    assert types["output.weight"][0] == "q6_K" and types["token_embd.weight"][0] == "q4_K"


def test_moe_rules_and_router_left_alone():
    types = types_of("uniform_q4km", "qwen3-30b-a3b")
    assert types["blk.0.ffn_down_exps.weight"][0] == "q6_K" and types["blk.6.ffn_down_exps.weight"][0] == "q4_K"
    assert types["blk.0.ffn_gate_inp.weight"][0] is None
    assert types["blk.0.attn_norm.weight"][0] is None
    q2 = types_of("uniform_q2k", "qwen3-30b-a3b")
    assert q2["blk.3.attn_v.weight"][0] == "q4_K"  # 32 / 4 heads: GQA 8
    assert q2["blk.3.attn_output.weight"][0] == "q3_K" and q2["blk.3.ffn_down_exps.weight"][0] == "q3_K"


def test_shape_fallback_on_smollm2():
    types = types_of("uniform_q2k", "smollm2-135m")
    assert types["blk.0.attn_v.weight"] == ("q3_K", "q4_0")  # GQA 3 -> q3_K; width 576 -> q4_0
    assert types["blk.0.ffn_down.weight"] == ("q3_K", "q3_K")  # rows of 1536 = 6 x 256
    assert types["token_embd.weight"] == ("q6_K", "q8_0")  # tied: follows output
    q4 = types_of("uniform_q4km", "smollm2-135m")
    assert q4["blk.3.attn_q.weight"] == ("q4_K", "q5_0") and q4["blk.2.ffn_down.weight"] == ("q6_K", "q6_K")


def test_uniform_q2k_and_q3ks_write_the_same_tensors_on_smollm2():
    profile = maps.load_profile("smollm2-135m")
    by_id = {m.config_id: expansion.expand(m, profile) for m in maps.paper_maps(profile)}
    assert by_id["uniform_q2k"].effective_sha256 == by_id["uniform_q3ks"].effective_sha256
    assert by_id["uniform_q4km"].effective_sha256 != by_id["uniform_q3ks"].effective_sha256


def test_recipe_anchors_every_quantizable_tensor():
    profile = maps.load_profile("smollm2-135m")
    exp = expansion.expand(maps.paper_maps(profile)[6], profile)
    lines = exp.recipe().splitlines()
    assert len(lines) == sum(t.quantizable for t in profile.tensors) == 211
    assert r"^blk\.0\.attn_output\.weight$=q6_K" in lines
    assert all(line.startswith("^") and "$=" in line for line in lines)
    assert exp.base_ftype in ggml.FILE_TYPES and ggml.FTYPE_BASE[exp.base_ftype] != "f16"


def test_explicit_embedding_and_output_types():
    profile = maps.load_profile("llama-3.1-8b")
    data = json.loads(maps.maps_dir("llama-3.1-8b").joinpath("uniform_q4km.json").read_text())
    data.update(config_id="custom", token_embd="q8_0", output="Q8_0")
    exp = expansion.expand(maps.parse_map(data, "custom", profile), profile)
    types = {t.name: t.requested_type for t in exp.tensors}
    assert types["token_embd.weight"] == "q8_0" and types["output.weight"] == "q8_0"


def test_per_layer_partition_is_allowed():
    profile = maps.load_profile("smollm2-135m")
    data = {"config_id": "per_layer", "model": "smollm2-135m",
            "layer_groups": [{"layers": [i], "quant": ("Q8_0", "Q4_K_M")[i % 2]} for i in range(30)]}
    exp = expansion.expand(maps.parse_map(data, "per_layer", profile), profile)
    assert len({t.group for t in exp.tensors if t.group}) == 30


def base_map():
    return {"config_id": "c1", "model": "smollm2-135m", "layer_groups": [
        {"layers": list(range(0, 7)), "quant": "Q6_K"}, {"layers": list(range(7, 23)), "quant": "Q4_K_M"},
        {"layers": list(range(23, 30)), "quant": "Q3_K_S"}]}


def mutate(fn):
    data = base_map()
    fn(data)
    return data


MALFORMED = [
    ("not an object", lambda: [1, 2], "must be a JSON object"),
    ("missing config_id", lambda: mutate(lambda d: d.pop("config_id")), "'config_id' is a required property"),
    ("missing layer_groups", lambda: mutate(lambda d: d.pop("layer_groups")), "'layer_groups' is a required property"),
    ("unknown key", lambda: mutate(lambda d: d.update(layers_0_7="Q6_K")), "layers_0_7"),
    ("config id with a slash", lambda: mutate(lambda d: d.update(config_id="a/b")), "field config_id"),
    ("empty layer_groups", lambda: mutate(lambda d: d.update(layer_groups=[])), "field layer_groups"),
    ("group without quant", lambda: mutate(lambda d: d["layer_groups"][0].pop("quant")), "'quant' is a required property"),
    ("layers not a list", lambda: mutate(lambda d: d["layer_groups"][0].update(layers="0-6")), "field layer_groups/0/layers"),
    ("negative layer", lambda: mutate(lambda d: d["layer_groups"][0]["layers"].append(-1)), "layer_groups/0/layers/7"),
    ("layer as string", lambda: mutate(lambda d: d["layer_groups"][0]["layers"].append("7")), "layer_groups/0/layers/7"),
    ("empty layers", lambda: mutate(lambda d: d["layer_groups"][0].update(layers=[])), "field layer_groups/0/layers"),
    ("unknown quant", lambda: mutate(lambda d: d["layer_groups"][1].update(quant="Q4_K_X")), "unknown quant type 'Q4_K_X'"),
    ("lower-case ftype", lambda: mutate(lambda d: d["layer_groups"][1].update(quant="q4_k_m")), "unknown quant type 'q4_k_m'"),
    ("layer twice across groups", lambda: mutate(lambda d: d["layer_groups"][1]["layers"].append(3)), "layer 3 assigned twice"),
    ("layer twice in a group", lambda: mutate(lambda d: d["layer_groups"][2]["layers"].append(23)),
     "layer 23 assigned twice (also in the same group)"),
    ("layer beyond the model", lambda: mutate(lambda d: d["layer_groups"][2]["layers"].append(30)),
     "layer 30 is beyond the model"),
    ("layer missing", lambda: mutate(lambda d: d["layer_groups"][1]["layers"].remove(12)), "layers 12 are in no group"),
    ("wrong model", lambda: mutate(lambda d: d.update(model="llama-3.1-8b")), "does not match the profile 'smollm2-135m'"),
    ("bad output type", lambda: mutate(lambda d: d.update(output="q9_K")), "field output: unknown quant type 'q9_K'"),
    ("quant not a string", lambda: mutate(lambda d: d["layer_groups"][0].update(quant=6)), "field layer_groups/0/quant"),
    ("duplicate group names", lambda: mutate(lambda d: [g.update(name="x") for g in d["layer_groups"]]),
     "group name 'x' used twice"),
]


@pytest.mark.parametrize("name,make,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_maps_are_rejected_with_a_message(name, make, message):
    profile = maps.load_profile("smollm2-135m")
    with pytest.raises(MapError) as info:
        maps.parse_map(make(), "maps/c1.json", profile)
    assert str(info.value).startswith("maps/c1.json: ")
    assert message in str(info.value)


def test_not_json_and_duplicate_ids_across_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MapError, match="bad.json: not JSON"):
        maps.load_map(bad)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base_map()))
    b.write_text(json.dumps(base_map()))
    with pytest.raises(MapError, match=r"b.json: field config_id: 'c1' already defined in .*a.json"):
        maps.load_maps([a, b])


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(MapError, match="known: llama-3.1-8b, qwen3-30b-a3b, smollm2-135m"):
        maps.load_profile("gpt-5")
