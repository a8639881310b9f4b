"""The Polars twin of ``analysis/flips.sql``: answer flips between configurations.

Written from the rules in docs/analysis.md ("Answer flips"), not from the SQL; tests compare
both on the same lake. Inputs are frames shaped like what the SQL reads:

    items:            the bootstrap's items (:func:`mqepi.analysis.twin_runs.boot_items`): every
                      valid run with g, ckey, model, origin, power_source, hardware_id, canonical_id,
                      config_id (the name it was measured under), repeat, run_id, run_key
    benchmark_answer: model, config_id, run_id, benchmark, question_set_sha256, question_id,
                      predicted, correct, choice_scores, scoring, recorded_at_ns, event_id
                      (scoring, choice_scores may be absent: version 1 rows)
    quant_config:     model, config_id, origin, kind, map_json, recorded_at_ns, event_id

:func:`answer_flips` returns the view's frame (columns of the contract); :func:`pair_flips`
the flip counts of any two configurations (matched_pairs).
"""

from __future__ import annotations

import json
import math

import polars as pl

from mqepi.analysis.contract import VIEWS
from mqepi.analysis.stats import DEFAULT_Z, wilson_interval

COLUMNS = list(VIEWS["answer_flips"])
#: Quant types that leave a tensor unquantized: a map of only these is the base.
FLOAT_TYPES = ("F32", "F16", "BF16")
_OPTIONAL = {"predicted": pl.Int32, "choice_scores": pl.List(pl.Float64), "scoring": pl.Utf8,
             "recorded_at_ns": pl.Int64, "event_id": pl.Utf8}


# --------------------------------------------------------------------------- building blocks


def choice_kl(p: list[float] | None, q: list[float] | None) -> float | None:
    """KL(softmax(p) || softmax(q)) in nats; None unless both are non-empty and equally long."""
    if p is None or q is None or len(p) == 0 or len(p) != len(q):
        return None
    lp, lq = _log_softmax(list(p)), _log_softmax(list(q))
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))


def _log_softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    lse = top + math.log(sum(math.exp(x - top) for x in xs))
    return [x - lse for x in xs]


def is_base_map(map_json: str | None) -> bool:
    """A map that quantizes nothing: every layer group's quant (and token_embd / output where
    named) is F32, F16 or BF16."""
    try:
        spec = json.loads(map_json) if map_json else None
    except ValueError:
        return False
    if not isinstance(spec, dict):
        return False
    groups = spec.get("layer_groups")
    if not isinstance(groups, list) or not groups:
        return False

    def unquantized(value) -> bool:
        return isinstance(value, str) and value.upper() in FLOAT_TYPES

    if not all(isinstance(g, dict) and unquantized(g.get("quant")) for g in groups):
        return False
    return all(spec.get(k) is None or unquantized(spec.get(k)) for k in ("token_embd", "output"))


def choose_answers(items: pl.DataFrame, benchmark_answer: pl.DataFrame) -> pl.DataFrame:
    """One answer per configuration (ckey) and question: of its valid runs that answered it,
    the engine-scored one first, then the smallest (repeat, run_id), then the earliest recorded."""
    ba = benchmark_answer.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in _OPTIONAL.items()
                                        if c not in benchmark_answer.columns])
    runs = items.select("g", "ckey", "model", "origin", "power_source", "hardware_id", pl.col("canonical_id").alias("_config"),
                        "repeat", "run_id", "run_key")
    joined = (ba.with_columns(run_key=pl.concat_str("model", "config_id", "run_id", separator="/"))
              .select("run_key", "benchmark", "question_set_sha256", "question_id", "predicted", "correct",
                      "choice_scores", "scoring", "recorded_at_ns", "event_id")
              .join(runs, on="run_key"))
    return (joined.with_columns(_v1=pl.col("scoring").is_null(),
                                qkey=pl.concat_str("benchmark", "question_set_sha256", "question_id", separator="/"))
            .sort(["_v1", "repeat", "run_id", "recorded_at_ns", "event_id"], nulls_last=True)
            .group_by("ckey", "qkey", maintain_order=True).first()
            .rename({"_config": "config_id"}))


def bases(items: pl.DataFrame, quant_config: pl.DataFrame, quantization: pl.DataFrame | None = None) -> dict[str, str]:
    """Family g -> the ckey of its reference: the base configuration, else (``quantization``
    given) the most precise quantized one (highest bits/weight, then the smallest name)."""
    configs = items.select("g", "ckey", "model", "origin", config_id=pl.col("canonical_id")).unique()
    qc = quant_config.select("model", "config_id", pl.col("origin").alias("_qorigin"), "kind", "map_json",
                             "recorded_at_ns", "event_id")
    chosen = (configs.join(qc, on=["model", "config_id"])
              .with_columns(_same=pl.col("_qorigin") == pl.col("origin"))
              .sort(["_same", "recorded_at_ns", "event_id"], descending=True)
              .group_by("ckey", maintain_order=True).first())
    out: dict[str, tuple] = {}
    for r in chosen.iter_rows(named=True):
        kind_base = r["kind"] == "base"
        if not (kind_base or is_base_map(r["map_json"])):
            continue
        rank = (not kind_base, r["config_id"])
        if r["g"] not in out or rank < out[r["g"]][0]:
            out[r["g"]] = (rank, r["ckey"])
    if quantization is not None and quantization.height:
        bpw = quantization.group_by("model", "config_id").agg(bpw=pl.col("bits_per_weight").max())
        fallback: dict[str, tuple] = {}
        for r in configs.join(bpw, on=["model", "config_id"]).iter_rows(named=True):
            if r["g"] in out:
                continue
            rank = (-r["bpw"], r["config_id"])
            if r["g"] not in fallback or rank < fallback[r["g"]][0]:
                fallback[r["g"]] = (rank, r["ckey"])
        out.update(fallback)
    return {g: ckey for g, (_, ckey) in out.items()}


def compare(ref: dict[str, dict], other: dict[str, dict]) -> dict[str, dict]:
    """Per benchmark (and 'all'): the counts and KL of ``other`` against ``ref`` over the
    questions both answered under the same scoring (qkey -> answer row)."""
    out: dict[str, dict] = {}
    for qkey in sorted(set(ref) & set(other)):
        r, c = ref[qkey], other[qkey]
        if r["scoring"] != c["scoring"]:
            continue
        known = r["predicted"] is not None and c["predicted"] is not None
        kl = choice_kl(r["choice_scores"], c["choice_scores"])
        for bench in (r["benchmark"], "all"):
            s = out.setdefault(bench, {"n": 0, "flipped": 0, "r2w": 0, "w2r": 0, "kl": []})
            if known:
                s["n"] += 1
                s["flipped"] += r["predicted"] != c["predicted"]
                s["r2w"] += bool(r["correct"] and not c["correct"])
                s["w2r"] += bool(not r["correct"] and c["correct"])
            if kl is not None:
                s["kl"].append(kl)
    return out


def _by_config(answers: pl.DataFrame) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in answers.iter_rows(named=True):
        out.setdefault(r["ckey"], {})[r["qkey"]] = r
    return out


def _share(k: int, n: int, z: float) -> tuple[float | None, float | None, float | None]:
    if n == 0:
        return None, None, None
    low, high = wilson_interval(k, n, z)
    return k / n, low, high


# --------------------------------------------------------------------------- the view


def answer_flips(items: pl.DataFrame, benchmark_answer: pl.DataFrame, quant_config: pl.DataFrame, *,
                 reference: str | None = None, z: float = DEFAULT_Z,
                 quantization: pl.DataFrame | None = None) -> pl.DataFrame:
    """The view ``answer_flips`` (``reference`` None: against each family's base) or
    ``answer_flips_vs(reference)``."""
    answers = choose_answers(items, benchmark_answer)
    by_config = _by_config(answers)
    names = {r["ckey"]: r for r in items.select("g", "ckey", "model", "origin", "power_source", "hardware_id",
                                                config_id=pl.col("canonical_id")).unique().iter_rows(named=True)}
    if reference is None:
        refs = bases(items, quant_config, quantization)
    else:
        hits = items.filter((pl.col("canonical_id") == reference) | (pl.col("config_id") == reference))
        refs = {}
        for g, ckey in hits.select("g", "ckey").unique().sort("ckey").iter_rows():
            refs.setdefault(g, []).append(ckey)
    rows = []
    for g, ref_keys in refs.items():
        for ref_key in [ref_keys] if isinstance(ref_keys, str) else ref_keys:
            for ckey, name in names.items():
                if name["g"] != g or ckey == ref_key:
                    continue
                stats = compare(by_config.get(ref_key, {}), by_config.get(ckey, {}))
                for bench, s in stats.items():
                    share, low, high = _share(s["flipped"], s["n"], z)
                    rows.append({k: name[k] for k in ("model", "origin", "power_source", "hardware_id", "config_id")}
                                | {"reference_config_id": names[ref_key]["config_id"], "benchmark": bench,
                                   "n_questions": s["n"], "n_flipped": s["flipped"], "flip_share": share,
                                   "flip_share_low": low, "flip_share_high": high, "n_right_to_wrong": s["r2w"],
                                   "n_wrong_to_right": s["w2r"], "n_kl_questions": len(s["kl"]),
                                   "choice_kl_nats": sum(s["kl"]) / len(s["kl"]) if s["kl"] else None})
    frame = pl.DataFrame(rows, schema=VIEWS["answer_flips"])
    return (frame.with_columns(_all=pl.col("benchmark") == "all")
            .sort(["model", "origin", "power_source", "hardware_id", "config_id", "reference_config_id", "_all",
                   "benchmark"])
            .drop("_all"))


def pair_flips(answers: pl.DataFrame, ckey_a: str, ckey_b: str, z: float = DEFAULT_Z) -> dict:
    """matched_pairs' flip columns of two configurations (every benchmark pooled) from
    :func:`choose_answers`' frame: n_flip_questions, flip_share, flip_share_low, flip_share_high."""
    a = answers.filter(pl.col("ckey") == ckey_a)
    b = answers.filter(pl.col("ckey") == ckey_b)
    s = compare(_by_config(a).get(ckey_a, {}), _by_config(b).get(ckey_b, {})).get("all", {"n": 0, "flipped": 0})
    share, low, high = _share(s["flipped"], s["n"], z)
    return {"n_flip_questions": s["n"], "flip_share": share, "flip_share_low": low, "flip_share_high": high}
