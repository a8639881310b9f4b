"""The checks across the files of a bundle, and against the lake.

Each check is one named function, run in the order docs/community.md's "Checks" section
lists them (:data:`CHECKS`): counts, base model, runs, configurations, maps, question sets
and answers, windows, streams. A bundle with more runs or configurations than the limits
stops after the counts, since the later checks are sized by them. They run once every file
has its exact columns and dtypes, even where values already failed, so the report lists
every reason. Each problem is tagged with
its kind (``reference``, ``map``, ``physics``). :func:`check_lake` then compares a bundle
that passed with what the lake already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import polars as pl

from mqepi.community.manifest import file_name
from mqepi.community.problems import DEFAULT_LIMITS, QUOTED_ROWS, BundleReport, Limits, short
from mqepi.lake.store import Lake
from mqepi.quant import maps
from mqepi.quant.expansion import Expansion, expand
from mqepi.schemas import CONFIG_BOUND, RUN_BOUND

#: Quality event type -> the column naming the window (phase) that must cover it (None: a fixed name).
COVERING_WINDOW = {"benchmark_answer": "benchmark", "perplexity": None, "kld": None, "throughput": "test"}
#: Streams whose time column must never go backwards within a group (sensor or meter channel).
MONOTONIC = {
    "power_sample": ("host_time_ns", ("run_id", "meter_id", "channel")),
    "thermal_sample": ("host_time_ns", ("run_id", "node", "sensor")),
}
NOT_A_NODE = "node is not in the manifest's hardware nodes"
#: Run statuses that end a run: a run has exactly one.
TERMINAL = ("finished", "failed")


@dataclass
class Frames:
    """A bundle's frames, each with ``_row`` (the row in its file), and its manifest."""

    ix: dict[str, pl.DataFrame]
    manifest: dict
    limits: Limits = field(default=DEFAULT_LIMITS)

    @property
    def nodes(self) -> dict[str, dict]:
        return {n["name"]: n for n in self.manifest["hardware"]["nodes"]}

    @cached_property
    def runs(self) -> pl.DataFrame | None:
        """One row per run, in file order: distinct models (m) and configs (c), the first of each, statuses, first row."""
        runs = self.ix.get("run")
        if runs is None:
            return None
        return runs.group_by("run_id").agg(
            pl.col("model").n_unique().alias("m"), pl.col("config_id").n_unique().alias("c"),
            pl.col("repeat").n_unique().alias("r"), pl.col("model").first(), pl.col("config_id").first(), pl.col("status"),
            pl.col("_row").min(),
        ).sort("_row")

    @cached_property
    def run_keys(self) -> dict[str, tuple[str, str]]:
        """Run id -> (model, config_id) of its run events."""
        return {} if self.runs is None else {r["run_id"]: (r["model"], r["config_id"]) for r in self.runs.iter_rows(named=True)}


def check_across_files(frames: dict[str, pl.DataFrame], manifest: dict, report: BundleReport,
                       limits: Limits = DEFAULT_LIMITS) -> None:
    """Every check of :data:`CHECKS`, in order, over the bundle's frames (none after the counts
    if those are past the limits)."""
    if not any(df.height for df in frames.values()):
        report.add("bundle", None, "the bundle holds no events")
        return
    if "run" not in frames or frames["run"].height == 0:
        report.add("reference", file_name("run"), "the bundle holds no run events; a submission is a set of runs")
    bundle = Frames({t: df.with_row_index("_row") for t, df in frames.items()}, manifest, limits)
    before = len(report.problems)
    check_counts(bundle, report)
    if len(report.problems) > before:
        return
    for check in CHECKS:
        check(bundle, report)


def check_counts(b: Frames, report: BundleReport) -> None:
    """At most ``max_runs`` runs (run ids of every run-bound file) and ``max_configs``
    configurations (of every config-bound file) and quant_config events."""
    limits = b.limits
    run_ids = [df.select("run_id") for t, df in b.ix.items() if t in RUN_BOUND]
    n_runs = pl.concat(run_ids)["run_id"].n_unique() if run_ids else 0
    if n_runs > limits.max_runs:
        report.add("limit", None, f"{n_runs} runs, more than the limit {limits.max_runs} per bundle", value=n_runs)
    keys = [df.select("model", "config_id") for t, df in b.ix.items() if t in CONFIG_BOUND or t in RUN_BOUND]
    n_configs = pl.concat(keys).n_unique() if keys else 0
    if n_configs > limits.max_configs:
        report.add("limit", None, f"{n_configs} configurations, more than the limit {limits.max_configs} per bundle",
                   value=n_configs)
    n_maps = b.ix["quant_config"].height if "quant_config" in b.ix else 0
    if n_maps > limits.max_configs:
        report.add("limit", file_name("quant_config"), f"{n_maps} quant_config events, more than the limit "
                   f"{limits.max_configs} per bundle", value=n_maps)


def check_base_model(b: Frames, report: BundleReport) -> None:
    """Every event is about the manifest's base model."""
    base = b.manifest["base_model"]["id"]
    for t, df in b.ix.items():
        report.flag("reference", file_name(t), df.filter(pl.col("model") != base), "model",
                    f"model is not the manifest's base model {base!r}")


def check_runs(b: Frames, report: BundleReport) -> None:
    """Each run finished, once, with one repeat; every run-bound event has its run in the bundle,
    with the same model and config."""
    for r in b.runs.iter_rows(named=True) if b.runs is not None else ():
        if r["m"] > 1 or r["c"] > 1:
            report.add("reference", file_name("run"), "run events disagree on model or config_id", column="run_id",
                       value=r["run_id"])
        if r["r"] > 1:
            report.add("physics", file_name("run"), "run events disagree on repeat", column="run_id", row=r["_row"],
                       value=r["run_id"])
        ends = [s for s in r["status"] if s in TERMINAL]
        if len(ends) > 1:
            report.add("physics", file_name("run"), f"run ended {len(ends)} times ({', '.join(ends)}); a run ends once",
                       column="run_id", row=r["_row"], value=r["run_id"])
        if "failed" in r["status"]:
            report.add("reference", file_name("run"), "run failed; submit only finished runs", column="run_id", row=r["_row"],
                       value=r["run_id"])
        elif "finished" not in r["status"]:
            report.add("reference", file_name("run"), "run never finished (no 'finished' event)", column="run_id",
                       row=r["_row"], value=r["run_id"])
    keys = pl.DataFrame({"run_id": list(b.run_keys), "_m": [v[0] for v in b.run_keys.values()],
                         "_c": [v[1] for v in b.run_keys.values()]}, schema={"run_id": pl.Utf8, "_m": pl.Utf8, "_c": pl.Utf8})
    for t in RUN_BOUND:
        if t == "run" or t not in b.ix:
            continue
        joined = b.ix[t].join(keys, on="run_id", how="left", maintain_order="left")
        orphans = joined.filter(pl.col("_m").is_null())
        # one problem per missing run, for the first few: the count of runs was bounded, not of problems
        for run_id in orphans["run_id"].unique(maintain_order=True).head(QUOTED_ROWS).to_list():
            report.flag("reference", file_name(t), orphans.filter(pl.col("run_id") == run_id), "run_id",
                        f"run {run_id!r} has no run event in the bundle")
        differ = pl.col("_m").is_not_null() & ((pl.col("model") != pl.col("_m")) | (pl.col("config_id") != pl.col("_c")))
        report.flag("reference", file_name(t), joined.filter(differ), "config_id", "model/config_id differ from the run's")


def check_configurations(b: Frames, report: BundleReport) -> None:
    """Every run's configuration has its quant_config, one map each; quantization and tensor
    inventory events belong to a configuration (and a quantized file) of the bundle."""
    config_maps = _config_maps(b.ix.get("quant_config"), report)
    for run_id, key in b.run_keys.items():
        if key not in config_maps:
            report.add("reference", file_name("run"),
                       f"run {run_id!r}: its configuration {key[1]!r} has no quant_config event in the bundle",
                       column="config_id", value=key[1])
    configs = pl.DataFrame({"model": [k[0] for k in config_maps], "config_id": [k[1] for k in config_maps],
                            "_map": list(config_maps.values())}, schema={"model": pl.Utf8, "config_id": pl.Utf8, "_map": pl.Utf8})
    quantization, inventory = b.ix.get("quantization"), b.ix.get("tensor_inventory")
    if quantization is not None:
        name = file_name("quantization")
        q = quantization.join(configs, on=["model", "config_id"], how="left", maintain_order="left")
        report.flag("reference", name, q.filter(pl.col("_map").is_null()), "config_id",
                    "quantization of a configuration without quant_config in the bundle")
        report.flag("reference", name, q.filter(pl.col("_map").is_not_null() & (pl.col("map_sha256") != pl.col("_map"))),
                    "map_sha256", "map_sha256 differs from the configuration's map")
        report.flag("reference", name, q.filter(pl.col("base_sha256") != b.manifest["base_model"]["sha256"]), "base_sha256",
                    "base_sha256 is not the manifest's base model sha256")
    if inventory is not None:
        _check_inventory_files(inventory, configs, quantization, report)


def _config_maps(configs: pl.DataFrame | None, report: BundleReport) -> dict[tuple[str, str], str]:
    """(model, config_id) -> map_sha256 of each configuration; a second, different map is a problem."""
    config_maps: dict[tuple[str, str], str] = {}
    for r in configs.iter_rows(named=True) if configs is not None else ():
        key = (r["model"], r["config_id"])
        if key in config_maps and config_maps[key] != r["map_sha256"]:
            report.add("reference", file_name("quant_config"), f"two different maps for config {key[1]!r}", column="map_sha256",
                       row=r["_row"], value=r["map_sha256"])
        config_maps.setdefault(key, r["map_sha256"])
    return config_maps


def _check_inventory_files(inventory: pl.DataFrame, configs: pl.DataFrame, quantization: pl.DataFrame | None,
                           report: BundleReport) -> None:
    name = file_name("tensor_inventory")
    inv = inventory.join(configs, on=["model", "config_id"], how="left", maintain_order="left")
    report.flag("reference", name, inv.filter(pl.col("_map").is_null()), "config_id",
                "tensor inventory of a configuration without quant_config in the bundle")
    if quantization is not None:
        files = quantization.select("model", "config_id", "file_sha256").unique().with_columns(_q=pl.lit(True))
        inv = inv.join(files, on=["model", "config_id", "file_sha256"], how="left", maintain_order="left")
        bad = inv.filter(pl.col("_q").is_null())
    else:
        bad = inv
    report.flag("reference", name, bad, "file_sha256", "tensor inventory of a file without a quantization event in the bundle")


def check_maps(b: Frames, report: BundleReport) -> None:
    """Every configuration's map parses, matches its event and (with a known profile) its inventory."""
    configs, inventory = b.ix.get("quant_config"), b.ix.get("tensor_inventory")
    for r in configs.iter_rows(named=True) if configs is not None else ():
        qmap = _parse_map(r, report)
        if qmap is None:
            continue
        for column, expected, actual in (("model", r["model"], qmap.model), ("config_id", r["config_id"], qmap.config_id),
                                         ("map_sha256", r["map_sha256"], qmap.sha256), ("kind", r["kind"], qmap.kind)):
            if expected != actual:
                report.add("map", file_name("quant_config"), f"{column} {expected!r} does not match the map's {actual!r}",
                           column=column, row=r["_row"], value=expected)
        inv = (inventory.filter((pl.col("model") == r["model"]) & (pl.col("config_id") == r["config_id"]))
               if inventory is not None else None)
        if r["n_layers"] > b.limits.max_layers:
            continue  # reported with the file's values; nothing is sized by it
        profile = _profile_for(r["model"])
        if profile is None:
            _check_map_without_profile(r, qmap, inv, report)
        else:
            _check_map_with_profile(r, qmap, profile, inv, report)


def _parse_map(r: dict, report: BundleReport) -> maps.QuantMap | None:
    name = file_name("quant_config")
    where = f"{name} row {r['_row']} map_json"
    try:
        data = maps.decode_json(r["map_json"], where)  # strict: no key twice, bounded size and depth
    except maps.MapError as exc:
        report.add("map", name, f"map_json is not JSON (strict: {short(str(exc), 160)})", column="map_json", row=r["_row"])
        return None
    try:
        return maps.parse_map(data, where)
    except maps.MapError as exc:
        report.add("map", name, f"map_json does not parse: {exc}", column="map_json", row=r["_row"])
        return None


def _profile_for(model: str) -> maps.ModelProfile | None:
    # only a profile id of the repository: never a path taken from the bundle
    path = maps.PROFILES_DIR / f"{model}.json"
    return maps.load_profile(path) if maps.SLUG.match(model) and path.is_file() else None


def _check_map_without_profile(r: dict, qmap: maps.QuantMap, inv: pl.DataFrame | None, report: BundleReport) -> None:
    """The map's layers cover 0..n_layers-1 exactly once; each inventory row's group is its layer's group in the map.

    Compared without building ``range(n_layers)``: the map's layers are distinct (``parse_map``)
    non-negative integers, so they are exactly 0..n-1 when there are n of them and the largest is n-1."""
    layers = [layer for g in qmap.groups for layer in g.layers]
    if len(layers) != r["n_layers"] or max(layers, default=-1) != r["n_layers"] - 1:
        report.add("map", file_name("quant_config"), f"map's layers do not cover 0-{r['n_layers'] - 1} exactly once",
                   column="n_layers", row=r["_row"], value=r["n_layers"])
        return
    if inv is None:
        return
    group = {layer: g.name for g in qmap.groups for layer in g.layers}
    bad = inv.filter(pl.col("layer").is_not_null()).with_columns(
        _group=pl.col("layer").replace_strict(group, default=None, return_dtype=pl.Utf8))
    wrong = pl.col("_group").is_null() | (pl.col("group") != pl.col("_group"))
    report.flag("map", file_name("tensor_inventory"), bad.filter(wrong), "group", f"group does not match map {r['config_id']!r}")


def _check_map_with_profile(r: dict, qmap: maps.QuantMap, profile: maps.ModelProfile, inv: pl.DataFrame | None,
                            report: BundleReport) -> None:
    """n_layers is the model's, the map expands over the profile, and the inventory is the expansion."""
    name = file_name("quant_config")
    if r["n_layers"] != profile.n_layers:
        report.add("map", name, f"n_layers {r['n_layers']} but model {profile.id} has {profile.n_layers}", column="n_layers",
                   row=r["_row"], value=r["n_layers"])
        return
    try:
        expansion = expand(qmap, profile)
    except maps.MapError as exc:
        report.add("map", name, f"map does not fit model {profile.id}: {exc}", column="map_json", row=r["_row"])
        return
    if inv is not None and inv.height:
        _check_inventory_plan(r, profile, expansion, inv, report)


def _check_inventory_plan(r: dict, profile: maps.ModelProfile, expansion: Expansion, inv: pl.DataFrame,
                          report: BundleReport) -> None:
    """Every inventory row is a tensor of the model with the map's requested type; each file lists every tensor."""
    name = file_name("tensor_inventory")
    plan = pl.DataFrame({"tensor": [t.name for t in expansion.tensors], "_req": [t.requested_type for t in expansion.tensors]},
                        schema={"tensor": pl.Utf8, "_req": pl.Utf8}).with_columns(_known=pl.lit(True))
    j = inv.join(plan, on="tensor", how="left", maintain_order="left")
    report.flag("map", name, j.filter(pl.col("_known").is_null()), "tensor", f"tensor is not in model {profile.id}")
    mismatch = j.filter(pl.col("_known").is_not_null() & ~pl.col("requested_type").eq_missing(pl.col("_req")))
    if mismatch.height:
        first = mismatch.row(0, named=True)
        report.flag("map", name, mismatch, "requested_type", f"requested_type does not match map {r['config_id']!r} "
                    f"(e.g. {first['tensor']}: the map gives {first['_req']!r})")
    names = set(plan["tensor"].to_list())
    # files short of the model's tensors counted in polars; only the first few are looked into
    known = pl.col("tensor").filter(pl.col("tensor").is_in(list(names))).n_unique()
    short_files = inv.group_by("file_sha256", maintain_order=True).agg(known.alias("_n")).filter(pl.col("_n") < len(names))
    for file_sha in short_files["file_sha256"].head(QUOTED_ROWS).to_list():
        missing = sorted(names - set(inv.filter(pl.col("file_sha256") == file_sha)["tensor"].to_list()))
        if missing:
            report.add("map", name, f"inventory of file {file_sha[:12]}... lacks {len(missing)} tensors of {profile.id} "
                       f"(e.g. {missing[0]})", column="tensor", value=file_sha)


def check_question_sets(b: Frames, report: BundleReport) -> None:
    """Every answer's question is in a set the manifest records; each answered once per run, with a
    scored choice; accuracy in [0, 1]."""
    answers = b.ix.get("benchmark_answer")
    if answers is None:
        return
    name = file_name("benchmark_answer")
    recorded = b.manifest["question_sets"]
    qsets = pl.DataFrame({
        "benchmark": [q["benchmark"] for q in recorded for _ in q["question_ids"]],
        "question_set_sha256": [q["sha256"] for q in recorded for _ in q["question_ids"]],
        "question_id": [i for q in recorded for i in q["question_ids"]],
    }, schema={"benchmark": pl.Utf8, "question_set_sha256": pl.Utf8, "question_id": pl.Utf8}).with_columns(_known=pl.lit(True))
    sets = qsets.select("benchmark", "question_set_sha256").unique().with_columns(_set=pl.lit(True))
    a = answers.join(sets, on=["benchmark", "question_set_sha256"], how="left", maintain_order="left")
    a = a.join(qsets, on=["benchmark", "question_set_sha256", "question_id"], how="left", maintain_order="left")
    report.flag("reference", name, a.filter(pl.col("_set").is_null()), "question_set_sha256",
                "question set not recorded in manifest.json question_sets")
    report.flag("reference", name, a.filter(pl.col("_set").is_not_null() & pl.col("_known").is_null()), "question_id",
                "question_id is not in its recorded question set")
    report.flag("physics", name, answers.filter(pl.struct("run_id", "benchmark", "question_id").is_duplicated()),
                "question_id", "question answered more than once in one run")
    n_choices = pl.col("choice_scores").list.len()
    beyond = pl.col("choice_scores").is_not_null() & ((pl.col("gold") >= n_choices) | (pl.col("predicted") >= n_choices))
    report.flag("physics", name, answers.filter(beyond), "gold", "gold or predicted answer index beyond the choices scored")
    accuracy = answers.group_by("run_id", "benchmark").agg(pl.col("correct").mean().alias("acc"), pl.col("_row").min())
    report.flag("physics", name, accuracy.filter(~pl.col("acc").is_between(0, 1)), "acc", "accuracy outside [0, 1]")


def check_windows(b: Frames, report: BundleReport) -> None:
    """The quality measurements of a run are covered by a window (phase) of that run named like them."""
    phases = b.ix.get("phase")
    have = set(phases.select("run_id", "phase").iter_rows()) if phases is not None else set()
    for t, column in COVERING_WINDOW.items():
        if t not in b.ix:
            continue
        window = pl.col(column) if column else pl.lit(t)
        need = b.ix[t].with_columns(_window=window).group_by("run_id", "_window", maintain_order=True).agg(pl.col("_row").min())
        for run_id, name, row in need.iter_rows():
            if (run_id, name) not in have:
                report.add("physics", file_name(t), f"no {name!r} window (phase event) in run {run_id!r} covers these events",
                           column="run_id", row=row, value=run_id)


def check_streams(b: Frames, report: BundleReport) -> None:
    """Windows, throughput tests, thermal and power samples are physically possible, on the manifest's nodes, in time order."""
    nodes = list(b.nodes)
    if "phase" in b.ix:
        p = b.ix["phase"]
        report.flag("physics", file_name("phase"), p.filter(pl.col("tokens") <= 0), "tokens",
                    "tokens must be positive (or null where a window has none)")
        report.flag("reference", file_name("phase"), p.filter(pl.col("node").is_not_null() & ~pl.col("node").is_in(nodes)),
                    "node", NOT_A_NODE)
    if "throughput" in b.ix:
        report.flag("physics", file_name("throughput"), b.ix["throughput"].filter(pl.col("n_prompt") + pl.col("n_gen") <= 0),
                    "n_prompt", "a throughput test must process tokens (n_prompt + n_gen > 0)")
    if "thermal_sample" in b.ix:
        report.flag("reference", file_name("thermal_sample"), b.ix["thermal_sample"].filter(~pl.col("node").is_in(nodes)),
                    "node", NOT_A_NODE)
    if "power_sample" in b.ix:
        _check_power(b.ix["power_sample"], b, report)
    _check_sample_times(b, report)
    for t, (column, by) in MONOTONIC.items():
        if t in b.ix:
            back = b.ix[t].filter(pl.col(column).diff().over(list(by)) < 0)
            report.flag("physics", file_name(t), back, column, f"{column} goes backwards within a {'/'.join(by)} stream")


def _check_power(ps: pl.DataFrame, b: Frames, report: BundleReport) -> None:
    """Power finite, non-negative, within its node's stated range; energy sane; the manifest's meter."""
    name, nodes = file_name("power_sample"), b.nodes
    power = pl.col("power_w")
    report.flag("physics", name, ps.filter(~power.is_finite()), "power_w", "power is not finite")
    report.flag("physics", name, ps.filter(power.is_finite() & (power < 0)), "power_w", "negative power")
    ranges = pl.DataFrame({"node": list(nodes), "_min": [float(n["power_min_w"]) for n in nodes.values()],
                           "_max": [float(n["power_max_w"]) for n in nodes.values()]},
                          schema={"node": pl.Utf8, "_min": pl.Float64, "_max": pl.Float64})
    # a reading of no node is the whole cluster: at most the sum of the nodes' maxima
    cluster = (min(float(n["power_min_w"]) for n in nodes.values()), sum(float(n["power_max_w"]) for n in nodes.values()))
    j = ps.join(ranges, on="node", how="left", maintain_order="left").with_columns(
        _min=pl.when(pl.col("node").is_null()).then(pl.lit(cluster[0])).otherwise(pl.col("_min")),
        _max=pl.when(pl.col("node").is_null()).then(pl.lit(cluster[1])).otherwise(pl.col("_max")),
    )
    report.flag("reference", name, j.filter(pl.col("_max").is_null()), "node", NOT_A_NODE)
    ok = power.is_finite() & (power >= 0) & pl.col("_max").is_not_null()
    report.flag("physics", name, j.filter(ok & (power > pl.col("_max"))), "power_w", "power above the node's stated power_max_w")
    report.flag("physics", name, j.filter(ok & (power < pl.col("_min"))), "power_w", "power below the node's stated power_min_w")
    energy = pl.col("energy_counter_j")
    report.flag("physics", name, ps.filter(energy.is_not_null() & (~energy.is_finite() | (energy < 0))), "energy_counter_j",
                "energy must be finite and non-negative")
    meter = b.manifest["meter"]["type"]
    report.flag("reference", name, ps.filter(pl.col("power_source") != meter), "power_source",
                f"power_source differs from the manifest's meter type {meter!r}")


def _check_sample_times(b: Frames, report: BundleReport) -> None:
    """Power and thermal samples lie within the span of their run's windows, give or take
    ``window_slack_s`` (the meter runs from the run's start through thermal stabilisation to
    its end); a run with samples has windows."""
    phases = b.ix.get("phase")
    slack = int(b.limits.window_slack_s * 1e9)
    spans = (phases.group_by("run_id").agg(_lo=pl.col("start_ns").min(), _hi=pl.col("end_ns").max())
             if phases is not None else pl.DataFrame(schema={"run_id": pl.Utf8, "_lo": pl.Int64, "_hi": pl.Int64}))
    for t in ("power_sample", "thermal_sample"):
        if t not in b.ix:
            continue
        j = b.ix[t].join(spans, on="run_id", how="left", maintain_order="left")
        outside = (pl.col("_lo").is_null() | (pl.col("host_time_ns") < pl.col("_lo") - slack)
                   | (pl.col("host_time_ns") > pl.col("_hi") + slack))
        report.flag("physics", file_name(t), j.filter(outside), "host_time_ns",
                    f"sample outside its run's windows (first start to last end, +-{b.limits.window_slack_s:g} s)")


#: The checks across files, in the order docs/community.md lists them.
CHECKS = (check_base_model, check_runs, check_configurations, check_maps, check_question_sets, check_windows, check_streams)


# ------------------------------------------------------------------ against the lake


def check_lake(frames: dict[str, pl.DataFrame], lake: Lake, report: BundleReport) -> dict[str, set[str]]:
    """Compare a re-stamped bundle with what the lake holds: runs and configs must not collide.
    Returns, per event type, the ids of the bundle the lake already holds."""
    present: dict[str, set[str]] = {t: set() for t in frames}
    run_ids = frames["run"]["run_id"].unique(maintain_order=True).to_list() if "run" in frames else []
    for run_id in run_ids:
        _run_against_lake(run_id, frames, lake, present, report)
    for t in CONFIG_BOUND:
        if t not in frames:
            continue
        for model, config_id in frames[t].select("model", "config_id").unique(maintain_order=True).iter_rows():
            _config_against_lake(t, model, config_id, frames[t], lake, present, report)
    return present


def _run_against_lake(run_id: str, frames: dict[str, pl.DataFrame], lake: Lake, present: dict[str, set[str]],
                      report: BundleReport) -> None:
    """A run id may be in the lake only with this bundle's own events."""
    lake_ids: set[str] = set()
    origins: set[str] = set()
    mine: set[str] = set()
    for t in RUN_BOUND:
        ids = set(frames[t].filter(pl.col("run_id") == run_id)["event_id"].to_list()) if t in frames else set()
        mine |= ids
        held = lake.read(t, columns=["event_id", "origin"], run_id=run_id)
        if held.height:
            lake_ids |= set(held["event_id"].to_list())
            origins |= set(held["origin"].to_list())
            if t in frames:
                present[t] |= ids & lake_ids
    foreign = lake_ids - mine
    if foreign:
        dup = len(mine & lake_ids)
        report.add("lake", file_name("run"), f"run_id {run_id!r} is already in the lake with {len(foreign)} events not in "
                   f"this bundle (origin {', '.join(sorted(origins))}); {dup} of this bundle's events duplicate lake events",
                   column="run_id", value=run_id)


def _config_against_lake(t: str, model: str, config_id: str, frame: pl.DataFrame, lake: Lake, present: dict[str, set[str]],
                         report: BundleReport) -> None:
    """A configuration in the lake has the bundle's map."""
    columns = ["event_id", "origin"] + (["map_sha256"] if t == "quant_config" else [])
    held = lake.read(t, columns=columns, model=model, config_id=config_id)
    if not held.height:
        return
    mine = frame.filter((pl.col("model") == model) & (pl.col("config_id") == config_id))
    present[t] |= set(mine["event_id"].to_list()) & set(held["event_id"].to_list())
    if t != "quant_config":
        return
    maps_here = set(mine["map_sha256"].to_list())
    other = held.filter(~pl.col("map_sha256").is_in(list(maps_here)))
    if other.height:
        report.add("lake", file_name("quant_config"), f"config {config_id!r} of {model!r} is already in the lake with a "
                   f"different map (map_sha256 {other['map_sha256'][0]}, origin {other['origin'][0]})", column="map_sha256",
                   value=next(iter(maps_here)))
