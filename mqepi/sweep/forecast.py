"""The sweep planner: wall time and energy of a sweep, per configuration and in total,
forecast before it runs, from what earlier runs in the lake measured.

Per run, a sweep spends time in: the fixed waits of its spec (settle or stabilisation, the
idle window), the benchmark windows (multiple-choice scoring is prompt processing, so its
time follows the tokens the engine evaluates), the perplexity and KLD windows (their
tokens), the throughput windows, and an overhead (tool start-up and model loads, SSH, lake
writes, meter start). Each is measured per configuration from finished runs of the same
model: seconds per token for the windows, seconds per throughput window, overhead seconds
per tool invocation. A configuration without runs borrows from measured ones through a
straight line in its predicted file size (least squares over measured configurations; one
measured configuration: scaled in proportion to size). Between configurations, the sweep
looks up the quantized file and deploys it: the median gap between runs of different
configurations in earlier sweeps (1 s if none). Energy: each window kind's measured
average power (all channels) times its forecast time; the rest at the idle power. A
configuration that is the same model as another of the sweep (an alias,
:func:`mqepi.sweep.resume.plan_aliases`) is not run, so it costs nothing.

Token counts are those of the chosen questions (llama-tokenize, cached); for more than
``SAMPLE_LIMIT`` questions they are estimated from the characters of the prompts, at the
tokens per character measured on a seeded sample of them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mqepi.errors import MqepiError
from mqepi.quality import datasets, prompts, scoring
from mqepi.quality.tasks import BENCHMARK_PHASES, TaskDef
from mqepi.quant import assets, expansion, maps, toolchain
from mqepi.results import sql
from mqepi.sweep.resume import plan_aliases
from mqepi.sweep.spec import SweepSpec

SAMPLE_LIMIT = 300


class PlanError(MqepiError):
    """The lake holds nothing to forecast from, or the spec is unusable."""


@dataclass
class ConfigRates:
    config_id: str
    size_bytes: int
    measured_runs: int
    mc_s_per_token: float
    ppl_s_per_token: float
    throughput_s: float
    overhead_s: float
    power_w: dict[str, float] = field(default_factory=dict)  # window kind -> W (all channels)
    source: str = "measured"


@dataclass
class ConfigForecast:
    config_id: str
    runs: int
    seconds_per_run: float
    seconds: float
    energy_j: float | None
    source: str


@dataclass
class Forecast:
    sweep_id: str
    configs: list[ConfigForecast]
    setup_s: float
    tokens: dict[str, int]
    questions: dict[str, int]
    power_source: str | None

    @property
    def seconds(self) -> float:
        return self.setup_s + sum(c.seconds for c in self.configs)

    @property
    def energy_j(self) -> float | None:
        values = [c.energy_j for c in self.configs]
        return None if any(v is None for v in values) else sum(values)


def _kind(phase: str) -> str:
    if phase in BENCHMARK_PHASES:
        return "benchmark"
    return {"perplexity": "ppl", "kld": "ppl", "pp": "throughput", "tg": "throughput",
            "idle_baseline": "idle"}.get(phase, "other")


def run_spans(lake, model: str) -> pl.DataFrame:
    """One row per run of ``model``: config_id, run_id, finished, failed, start_ns (started
    event), end_ns (finished event), provenance (JSON), sweep (its sweep id, null if none)."""
    runs = lake.read("run", columns=["config_id", "run_id", "status", "recorded_at_ns", "provenance_json"], model=model)
    return runs.group_by("config_id", "run_id").agg(
        finished=(pl.col("status") == "finished").any(), failed=(pl.col("status") == "failed").any(),
        start_ns=pl.col("recorded_at_ns").filter(pl.col("status") == "started").min(),
        end_ns=pl.col("recorded_at_ns").filter(pl.col("status") == "finished").max(),
        provenance=pl.col("provenance_json").first(),
    ).with_columns(sweep=pl.col("provenance").str.json_path_match("$.sweep_id"))


def measured_rates(lake, model: str, spans: pl.DataFrame | None = None) -> dict[str, ConfigRates]:
    """Per configuration: rates measured by its finished runs in ``lake`` (``spans``: the
    :func:`run_spans` of ``model``, read here if not given)."""
    spans = run_spans(lake, model) if spans is None else spans
    ended = spans.filter(pl.col("finished") & ~pl.col("failed") & pl.col("start_ns").is_not_null())
    if ended.is_empty():
        return {}
    phases = lake.read("phase", columns=["run_id", "phase", "start_ns", "end_ns", "tokens"], model=model)
    phases = phases.filter(pl.col("run_id").is_in(ended["run_id"].to_list()))
    energy = _window_power(lake, ended["run_id"].to_list())
    sizes = lake.read("quantization", columns=["config_id", "file_size_bytes"], model=model)
    size_of = dict(zip(sizes["config_id"], sizes["file_size_bytes"]))
    out: dict[str, ConfigRates] = {}
    for config_id, group in ended.group_by("config_id"):
        config_id = config_id[0]
        per_run = []
        for run in group.iter_rows(named=True):
            spec = json.loads(run["provenance"] or "{}").get("sweep")
            if spec is None:
                continue  # not a sweep run (e.g. `mqepi evaluate`): no idle window, other settings
            ph = phases.filter(pl.col("run_id") == run["run_id"]).with_columns(
                secs=(pl.col("end_ns") - pl.col("start_ns")) / 1e9,
                kind=pl.col("phase").map_elements(_kind, return_dtype=pl.Utf8))
            by = {k: ph.filter(pl.col("kind") == k) for k in ("benchmark", "ppl", "throughput", "idle")}
            mc_tokens = by["benchmark"]["tokens"].sum() or 0
            ppl_tokens = by["ppl"]["tokens"].sum() or 0
            windows_s = float(ph["secs"].sum())
            wall_s = (run["end_ns"] - run["start_ns"]) / 1e9
            fixed = float(spec.get("settle_s", 0.0))
            per_run.append((
                float(by["benchmark"]["secs"].sum()) / mc_tokens if mc_tokens else 0.0,
                float(by["ppl"]["secs"].sum()) / ppl_tokens if ppl_tokens else 0.0,
                float(by["throughput"]["secs"].sum()),
                max(wall_s - windows_s - fixed, 0.0),
            ))
        if not per_run:
            continue
        med = [statistics.median(v[i] for v in per_run) for i in range(4)]
        power = {k: w for (cid, k), w in energy.items() if cid == config_id}
        out[config_id] = ConfigRates(config_id, int(size_of.get(config_id, 0)), len(per_run), *med, power_w=power)
    return out


def between_configs_s(lake, model: str, spans: pl.DataFrame | None = None) -> float | None:
    """Median gap between one sweep run's end and the next run's start when the next is
    another configuration (its quantize lookup and deployment), from sweeps in the lake."""
    spans = run_spans(lake, model) if spans is None else spans
    timed = spans.filter(pl.col("sweep").is_not_null() & pl.col("start_ns").is_not_null() & pl.col("end_ns").is_not_null())
    gaps = []
    for _, g in timed.group_by("sweep"):
        rows = g.sort("start_ns").to_dicts()
        for prev, cur in zip(rows, rows[1:]):
            if cur["config_id"] != prev["config_id"] and cur["start_ns"] >= prev["end_ns"]:
                gaps.append((cur["start_ns"] - prev["end_ns"]) / 1e9)
    return statistics.median(gaps) if gaps else None


def _window_power(lake, run_ids: list[str]) -> dict[tuple[str, str], float]:
    """(config, window kind) -> median average power over its windows (W, all channels)."""
    try:
        con = sql.connect(lake, sql.SQL_FILES[:2])
        rows = con.execute(
            "SELECT config_id, phase, avg_power_w FROM window_energy_total WHERE avg_power_w IS NOT NULL "
            "AND run_id IN (SELECT unnest(?::VARCHAR[]))", [run_ids]).fetchall()
    except MqepiError:
        return {}
    acc: dict[tuple[str, str], list[float]] = {}
    for config_id, phase, watts in rows:
        acc.setdefault((config_id, _kind(phase)), []).append(watts)
    return {k: statistics.median(v) for k, v in acc.items()}


def _fill(rates: dict[str, ConfigRates], wanted: dict[str, int]) -> dict[str, ConfigRates]:
    """Rates for every wanted config (config -> predicted size), borrowing from measured ones."""
    measured = [r for r in rates.values() if r.measured_runs > 0 and r.size_bytes > 0]
    if not measured:
        raise PlanError("nothing to forecast from: the lake has no finished run of this model "
                        "(run a short sweep first, e.g. `mqepi sweep --repeats 1 --configs uniform_q4km`)")
    out = {}
    for config_id, size in wanted.items():
        if config_id in rates and rates[config_id].measured_runs > 0:
            out[config_id] = rates[config_id]
            continue
        fields = ("mc_s_per_token", "ppl_s_per_token", "throughput_s", "overhead_s")
        values = {}
        xs = np.array([r.size_bytes for r in measured], dtype=float)
        for name in fields:
            ys = np.array([getattr(r, name) for r in measured], dtype=float)
            if len(measured) >= 2 and np.ptp(xs) > 0:
                slope, intercept = np.polyfit(xs, ys, 1)
                values[name] = max(float(intercept + slope * size), float(ys.min()) * 0.5)
            else:
                values[name] = float(ys.mean()) * (size / xs.mean() if name != "overhead_s" else 1.0)
        power: dict[str, float] = {}
        for kind in {k for r in measured for k in r.power_w}:
            power[kind] = statistics.median(r.power_w[kind] for r in measured if kind in r.power_w)
        source = f"from {len(measured)} measured config{'s' if len(measured) > 1 else ''} by size"
        out[config_id] = ConfigRates(config_id, size, 0, **values, power_w=power, source=source)
    return out


def question_tokens(spec: SweepSpec, cache, tokenize_tool, model_path, progress=lambda line: None) -> tuple[dict, dict]:
    """(benchmark -> tokens the engine evaluates, benchmark -> questions) for the spec."""
    tokens, questions = {}, {}
    for name, n in spec.benchmarks.items():
        task = TaskDef.load(name, spec.shots.get(name))
        data = datasets.load_dataset(name, cache)
        qset = prompts.select(data, task, n, spec.seed)
        questions[name] = len(qset.items)
        if len(qset.items) <= SAMPLE_LIMIT:
            counts = scoring.token_counts(qset, tokenize_tool, model_path, cache / "token_counts")
            tokens[name] = sum(c[0] for c in counts)
            continue
        sample = prompts.select(data, task, SAMPLE_LIMIT, spec.seed)
        progress(f"{name}: {len(qset.items)} questions; tokens estimated from characters "
                 f"(tokens per character of a {SAMPLE_LIMIT}-question sample)")
        counts = scoring.token_counts(sample, tokenize_tool, model_path, cache / "token_counts")
        chars = sum(len(i.prompt) + sum(len(a) for a in i.answers) for i in sample.items)
        per_char = sum(c[0] for c in counts) / chars
        tokens[name] = int(per_char * sum(len(i.prompt) + sum(len(a) for a in i.answers) for i in qset.items))
    return tokens, questions


def forecast(spec: SweepSpec, lake, *, progress=lambda line: None) -> Forecast:
    """Forecast the sweep ``spec``: per configuration and in total, time and energy."""
    tc = toolchain.ensure()
    cache = toolchain.cache_root()
    base = assets.ensure_base_model()
    profile = maps.load_profile(spec.model)
    folder = maps.maps_dir(spec.model)
    names = spec.configs or sorted(p.stem for p in folder.glob("*.json"))
    wanted, identities = {}, []
    for name in names:
        qmap = maps.load_map(folder / f"{name}.json", profile)
        exp = expansion.expand(qmap, profile)
        wanted[name] = exp.data_bytes
        identities.append((name, qmap.sha256, exp.effective_sha256))
    # the same model under two names is measured once: an alias costs nothing (run_sweep's rule)
    aliases = plan_aliases(lake, spec, identities, base.sha256)
    spans = run_spans(lake, spec.model)
    rates = measured_rates(lake, spec.model, spans)
    sizes = lake.read("quantization", columns=["config_id", "file_size_bytes"], model=spec.model)
    # compare like with like: measured rates carry file sizes, the wanted ones data bytes
    ratio = statistics.median([wanted[c] / s for c, s in zip(sizes["config_id"], sizes["file_size_bytes"])
                               if c in wanted and s]) if sizes.height else 1.0
    for r in rates.values():
        r.size_bytes = int(r.size_bytes * ratio)
    filled = _fill(rates, wanted)
    tokens, questions = question_tokens(spec, cache, tc.tool("llama-tokenize"), base.path, progress)
    mc_tokens = sum(tokens.values())
    ppl_tokens = spec.ppl_context * spec.ppl_chunks * (2 if spec.kld else 1)
    fixed = spec.settle_s + (spec.idle_s if spec.meter != "none" else 0.0)
    gap = between_configs_s(lake, spec.model, spans)
    gap = 1.0 if gap is None else gap
    out = []
    for name in names:
        if name in aliases:
            out.append(ConfigForecast(name, 0, 0.0, 0.0, 0.0, f"not run: the same model as {aliases[name].alias_of}"))
            continue
        r = filled[name]
        mc_s = mc_tokens * r.mc_s_per_token
        ppl_s = ppl_tokens * r.ppl_s_per_token / 2 * (2 if spec.kld else 1)
        tp_s = r.throughput_s if spec.throughput else 0.0
        per_run = fixed + mc_s + ppl_s + tp_s + r.overhead_s
        energy = None
        if r.power_w and "idle" in r.power_w:
            idle_w = r.power_w["idle"]
            energy = (mc_s * r.power_w.get("benchmark", idle_w) + ppl_s * r.power_w.get("ppl", idle_w)
                      + tp_s * r.power_w.get("throughput", idle_w) + (fixed + r.overhead_s) * idle_w) * spec.repeats
        out.append(ConfigForecast(name, spec.repeats, per_run, per_run * spec.repeats + gap, energy, r.source))
    sources = lake.read("run", columns=["power_source"], model=spec.model)["power_source"].unique().to_list()
    return Forecast(spec.sweep_id, out, 10.0 if spec.cluster is None else 20.0, tokens, questions,
                    ",".join(sorted(s for s in sources if s != "none")) or None)


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
