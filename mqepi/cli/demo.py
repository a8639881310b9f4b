"""``mqepi demo``: the embedded demo sweep, the README's main command.

A list of stages, each reporting what it did: the lake, the toolchain, the base model,
the 24 quantizations, a loopback cluster (SSH hosts on 127.0.0.1 with pinned host keys and
a quant host), two calibration runs, the planner's forecast of the rest, the sweep over
every configuration as a Prefect flow with the simulated meter, the materialised frontier
snapshot (tables printed), and the report with its plots. Every power figure is simulated
and says so.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from mqepi.cli._common import BENCH_HELP, cell, edge, lake, out, parse_bench, progress_lines, split_list
from mqepi.errors import MqepiError
from mqepi.flows import prefect_environment
from mqepi.lake.store import Lake
from mqepi.quality.tasks import TASKS, TaskDef
from mqepi.quant import expansion, maps, toolchain
from mqepi.quant.assets import ensure_base_model
from mqepi.quant.quantize import quantize_embedded
from mqepi.results import sql
from mqepi.results.report.labels import power_banner
from mqepi.results.report.write import build_report
from mqepi.results.snapshots import default_out_dir, recompute
from mqepi.rig.loopback import LoopbackCluster
from mqepi.schemas import EVENT_TYPES
from mqepi.sweep import forecast as plan
from mqepi.sweep import power
from mqepi.sweep.resume import plan_runs
from mqepi.sweep.run import run_sweep
from mqepi.sweep.spec import SweepSpec

app = typer.Typer()


@dataclass
class Stage:
    name: str
    run: Callable[[Lake, Callable[[str], None]], str]  # (lake, progress) -> summary
    forecast_s: Callable[[], float | None] = lambda: None  # the planner's forecast of the stage, once known


def _lake_ready(lake: Lake, progress: Callable[[str], None]) -> str:
    seeds = lake.init()
    report = lake.verify()
    if not report.ok:
        first = report.problems[0]
        raise RuntimeError(f"lake verify found {len(report.problems)} problems, first: {first.kind} {first.path}: {first.detail}")
    return f"{lake.uri}: {report.files_checked} files verified, {len(seeds)} seed files written"


def _views_loaded(lake: Lake, progress: Callable[[str], None]) -> str:
    con = sql.connect(lake)
    counts = {name: con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0] for name in EVENT_TYPES}
    total = sum(counts.values())
    return f"{len(counts)} event views loaded, {total} events in the lake"


def _toolchain(lake: Lake, progress: Callable[[str], None]) -> str:
    tc = toolchain.ensure(progress=_milestones(progress))
    toolchain.ensure_engine(progress=_milestones(progress))
    return f"llama.cpp {tc.llama_cpp_commit} from {tc.package} {tc.version} ({', '.join(tc.targets)})"


def _base_model(lake: Lake, progress: Callable[[str], None]) -> str:
    base = ensure_base_model(progress)
    return (f"{base.path} ({base.size_bytes:,d} bytes; F16 up-cast of the {base.source_type} in {base.package} "
            f"{base.package_version})")


def _milestones(progress: Callable[[str], None]) -> Callable[[str], None]:
    """Pass on tool output sparingly: build percentages in steps of 10, and mqepi's own lines."""
    last = [-10]

    def filtered(line: str) -> None:
        m = re.match(r"^\[\s*(\d+)%\]", line)
        if m:
            if int(m.group(1)) >= last[0] + 10:
                last[0] = int(m.group(1))
                progress(f"llama.cpp build {m.group(1)}%")
        elif line.startswith(("[", "downloading", "dequantizing", "base model", "toolchain", "extracting")) \
                and "%]" not in line:
            progress(line)

    return filtered


def _quantize_all(lake: Lake, progress: Callable[[str], None]) -> str:
    results = []
    for q in quantize_embedded(None, "smollm2-135m", lake, progress=_milestones(progress)):
        results.append(q)
        progress(f"{q.config_id}: {q.file_size_bytes:,d} bytes, {q.bits_per_weight:.3f} bits/weight"
                 f"{' (cached file)' if q.reused else f' in {q.duration_s:.1f} s'}")
    exact = sum(q.actual_data_bytes == q.predicted_data_bytes for q in results)
    made = sum(not q.reused for q in results)
    groups: dict[str, list[str]] = {}
    for q in results:
        groups.setdefault(q.effective_map_sha256, []).append(q.config_id)
    same = [ids for ids in groups.values() if len(ids) > 1]
    note = "; identical tensors: " + "; ".join(" = ".join(ids) for ids in same) if same else ""
    return (f"{len(results)} configs ({made} quantized, {len(results) - made} reused), predicted sizes exact for "
            f"{exact}/{len(results)}, {len(groups)} distinct effective maps{note}")


@dataclass
class DemoSettings:
    """The reduced sweep the demo runs (flags of ``mqepi demo``)."""

    repeats: int = 1
    bench: dict[str, int | None] = field(default_factory=lambda: {"mmlu": 10})  # benchmark -> questions (None: all)
    workers: int = 0  # RPC workers besides the head (0: the head runs every layer)
    configs: list[str] | None = None
    prefect: bool = True
    ppl_context: int = 128
    ppl_chunks: int = 8
    idle_s: float = 5.0
    out: str = "report"

    def spec(self, cluster: str | None, configs: list[str] | None = None):
        return SweepSpec(model="smollm2-135m", configs=configs, repeats=self.repeats,
                         benchmarks=dict(self.bench), ppl_context=self.ppl_context, ppl_chunks=self.ppl_chunks,
                         n_prompt=128, n_gen=32, bench_repetitions=2, idle_s=self.idle_s, settle_s=1.0,
                         meter="simulated", meter_rate_hz=50.0, rpc=self.workers > 0, cluster=cluster,
                         name=self.sweep_name())

    def sweep_name(self) -> str:
        """``demo-q10-w0`` for MMLU alone (as before: an earlier demo's lake resumes), else the
        benchmarks and counts, e.g. ``demo-mmlu10-arc_challenge20-w0``."""
        if list(self.bench) == ["mmlu"] and self.bench["mmlu"] is not None:
            return f"demo-q{self.bench['mmlu']}-w{self.workers}"
        return "demo-" + "-".join(f"{b}{'all' if n is None else n}" for b, n in self.bench.items()) + f"-w{self.workers}"


class DemoState:
    """What the demo's stages hand each other."""

    def __init__(self, settings: DemoSettings):
        self.settings = settings
        self.cluster = None
        self.forecast = None
        self.snapshot = None
        self.timings: dict[str, float] = {}
        self.sweep_wall_s: float | None = None

    def configs(self) -> list[str]:
        return self.settings.configs or sorted(p.stem for p in maps.maps_dir("smollm2-135m").glob("*.json"))

    def spec(self, configs: list[str] | None = None):
        return self.settings.spec(str(self.cluster.config_path), configs)

    def node_pids(self) -> dict:
        lc = self.cluster
        return {n.name: (lambda name=n.name: lc.pids(name)) for n in lc.nodes if n.name != "quant"}


def _run_sweep(state: DemoState, spec: SweepSpec, lake: Lake, progress) -> dict:
    """The sweep as the ``sweep`` flow (the same flow ``mqepi sweep`` runs), or directly; its
    summary (:meth:`mqepi.sweep.run.SweepResult.summary`)."""
    if not state.settings.prefect:
        return run_sweep(spec, lake, progress=progress, node_pids=state.node_pids()).summary()
    prefect_environment()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the demo prints its own progress
    from mqepi.flows.sweep import run_flow  # Prefect is heavy: imported only when a flow runs

    return run_flow(spec, lake.uri, node_pids=state.node_pids(), progress=progress)


def _cluster_up(state: DemoState):
    def stage(lake: Lake, progress: Callable[[str], None]) -> str:
        tc = toolchain.ensure()
        state.cluster = LoopbackCluster(1 + state.settings.workers, tc.bin_dir).start()
        names = [n.name for n in state.cluster.nodes]
        work = (f"RPC over {state.settings.workers} workers" if state.settings.workers
                else "the head runs every layer (--workers N adds RPC workers)")
        return f"{len(names)} SSH hosts on 127.0.0.1 ({', '.join(names)}), host keys pinned; {work}"
    return stage


def _calibrate(state: DemoState):
    def stage(lake: Lake, progress: Callable[[str], None]) -> str:
        profile = maps.load_profile("smollm2-135m")
        folder = maps.maps_dir("smollm2-135m")
        size = {c: expansion.expand(maps.load_map(folder / f"{c}.json", profile), profile).data_bytes for c in state.configs()}
        picks = list(dict.fromkeys([min(size, key=size.get), max(size, key=size.get)]))
        result = _run_sweep(state, state.spec(picks), lake, progress)
        return (f"{len(result['finished'])} runs ({', '.join(picks)}: the smallest and the largest), "
                f"{result['skipped']} finished before; {result['wall_s']:.0f} s")
    return stage


def _plan(state: DemoState):
    def stage(lake: Lake, progress: Callable[[str], None]) -> str:
        spec = state.spec()
        todo = list(dict.fromkeys(p.config_id for p in plan_runs(lake, spec, state.configs()) if not p.done))
        if not todo:
            return "every configuration is measured already: nothing to forecast"
        spec.configs = todo
        state.forecast = f = plan.forecast(spec, lake, progress=progress)
        energy = f"{f.energy_j / 3600:.2f} Wh (simulated power)" if f.energy_j is not None else "energy unknown"
        variance = power.measured_variance(lake, spec.model, benchmarks=list(spec.benchmarks))
        accuracy = "; ".join(power.accuracy_sentence(b, f.questions[b], variance.for_benchmark(b)) for b in spec.benchmarks)
        scored = ", ".join(f"{b} {TASKS[b].shots}-shot {f.questions.get(b)} questions ({f.tokens.get(b) or 0:,d} tokens "
                           "per run)" for b in spec.benchmarks)
        return (f"{len(todo)} configs x {spec.repeats} repeat(s), {scored}: {plan.human_duration(f.seconds)}, {energy}; "
                f"{accuracy}")
    return stage


def _sweep(state: DemoState):
    def stage(lake: Lake, progress: Callable[[str], None]) -> str:
        result = _run_sweep(state, state.spec(state.configs()), lake, progress)
        state.sweep_wall_s, state.timings = result["wall_s"], result["seconds"]
        parts = [f"{len(result['finished'])} runs in {result['wall_s']:.0f} s, {result['skipped']} finished before"]
        if state.forecast is not None and result["finished"]:
            err = (state.forecast.seconds - result["wall_s"]) / result["wall_s"]
            parts.append(f"planner forecast {state.forecast.seconds:.0f} s (error {err:+.1%})")
        top = sorted(result["seconds"].items(), key=lambda kv: -kv[1])[:5]
        parts.append("by stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in top))
        return "; ".join(parts)
    return stage


def _frontier(state: DemoState, console: Console):
    def stage(lake: Lake, progress: Callable[[str], None]) -> str:
        state.snapshot = snap = recompute(lake, default_out_dir(lake), progress=progress)
        print_results(snap, console)
        return (f"{snap.path} ({snap.runs_total} runs, lake state {snap.lake_state_sha256[:12]}"
                f"{', reused' if snap.reused else ''})")
    return stage


def _ci(value, low, high, spec: str) -> str:
    """``value [low, high]``; the value alone where no interval could be estimated."""
    if value is None:
        return ""
    if low is None or high is None:
        return f"{value:{spec}} (no CI)"
    if high == float("inf"):
        return f"{value:{spec}} [{low:{spec}}, inf)"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def print_results(snap, console: Console) -> None:
    """The snapshot's results table, matched pairs and frontier (lab data)."""
    summary = pl.read_parquet(snap.tables["config_summary"]).sort("epi", nulls_last=True)
    sim = " - SIMULATED power, not measured" if summary["simulated"].any() else ""
    table = Table(title=f"Results per configuration, 95% intervals over repeats, questions and meter{sim}")
    for column in ("config", "kind", "size MB", "PPL", "J/token", "accuracy", "EPI", "n", "questions", "origin"):
        table.add_column(column)
    for r in summary.iter_rows(named=True):
        names = " = ".join([r["config_id"], *[n for n in (r.get("config_ids") or []) if n != r["config_id"]]])
        table.add_row(cell(names), cell(r["kind"]), f"{(r['file_size_bytes'] or 0) / 1e6:.1f}",
                      _fmt(r["ppl"], ".2f"), _ci(r["j_per_token"], r["j_per_token_ci_low"], r["j_per_token_ci_high"], ".4f"),
                      _ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"], ".2f"),
                      _ci(r["epi"], r["epi_ci_low"], r["epi_ci_high"], ".4f"), str(r["n_repeats"]),
                      str(r.get("n_questions") or 0), cell(r["origin"]))
    console.print(table)
    notes = sorted({n for n in summary["interval_note"].drop_nulls().to_list()})
    for note in notes:
        console.print(f"  note: {cell(note)}", highlight=False)
    pairs = pl.read_parquet(snap.tables["matched_pairs"])
    n_cfg = summary.filter(pl.col("ppl").is_not_null()).height
    matched = pairs.filter(pl.col("matched"))
    console.print(f"Perplexity equivalence (TOST, 90% interval of ln(PPL B / PPL A) within +/-1%) over "
                  f"{n_cfg * (n_cfg - 1) // 2} pairs: {matched.height} matched, {pairs.height - matched.height} "
                  f"inconclusive, the rest differ", highlight=False)
    table = Table(title=f"Perplexity-matched pairs{sim}")
    for column in ("config A", "config B", "PPL A", "PPL B", "ln(B/A) [90% CI]", "EPI B-A [95% CI]", "McNemar p"):
        table.add_column(column)
    for r in matched.sort("log_ppl_ratio").head(12).iter_rows(named=True):
        table.add_row(cell(r["config_a"]), cell(r["config_b"]), _fmt(r["ppl_a"], ".2f"), _fmt(r["ppl_b"], ".2f"),
                      _ci(r["log_ppl_ratio"], r["log_ppl_ratio_ci_low"], r["log_ppl_ratio_ci_high"], "+.4f"),
                      _ci(r["epi_diff"], r["epi_diff_ci_low"], r["epi_diff_ci_high"], "+.4f"),
                      _fmt(r["mcnemar_p"], ".3f"))
    console.print(table)
    front = pl.read_parquet(snap.tables["pareto_frontier"]).filter(pl.col("on_frontier")).sort("j_per_token")
    table = Table(title=f"Pareto frontier (accuracy up, J/token down){sim}")
    for column in ("config", "kind", "accuracy", "J/token", "P(on frontier)", "mixed, no uniform matches"):
        table.add_column(column)
    for r in front.iter_rows(named=True):
        table.add_row(cell(r["config_id"]), cell(r["kind"]), _fmt(r["accuracy"], ".2f"), _fmt(r["j_per_token"], ".4f"),
                      _fmt(r["frontier_probability"], ".2f"), "yes" if r["mixed_unmatched"] else "")
    console.print(table)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _report(state: DemoState):
    def stage(lake: Lake, progress: Callable[[str], None]) -> str:
        built = build_report(lake, state.settings.out)
        for line in built.summary.splitlines():
            progress(line)
        return (f"{built.files.html}, {built.files.markdown} and {len(built.files.figures)} figure files; "
                f"{power_banner(built.data.power_sources())[1]}")
    return stage


def stages(state: DemoState, console: Console) -> list[Stage]:
    return [
        Stage("event lake (init + verify)", _lake_ready),
        Stage("llama.cpp toolchain", _toolchain),
        Stage("embedded base model (SmolLM2-135M F16)", _base_model),
        Stage("24 quant maps -> quantization, checked per tensor", _quantize_all),
        Stage("loopback cluster: SSH hosts with pinned keys, quant host", _cluster_up(state)),
        Stage("calibration runs (sweep flow, simulated meter)", _calibrate(state)),
        Stage("planner: forecast of the rest of the sweep", _plan(state)),
        Stage("sweep over every configuration (Prefect flow)", _sweep(state),
              lambda: state.forecast.seconds if state.forecast is not None else None),
        Stage("recompute frontier (materialised snapshot)", _frontier(state, console)),
        Stage("SQL views", _views_loaded),
        Stage("report: tables, plots, RQ1-RQ5", _report(state)),
    ]


def run_demo(lake: Lake, console: Console, settings: DemoSettings | None = None) -> bool:
    """Run every stage in order, report each; False if a stage failed (the rest are skipped)."""
    state = DemoState(settings or DemoSettings())
    table = Table(title="mqepi demo")
    for column in ("stage", "status", "detail", "seconds"):
        table.add_column(column, overflow="fold")
    ok = True
    try:
        for stage in stages(state, console):
            if not ok:
                table.add_row(cell(stage.name), "[dim]skipped[/]", "an earlier stage failed", "")
                continue
            console.print(cell(">", "bold") + cell(f" {stage.name} ..."))
            start = time.perf_counter()
            try:
                with progress_lines(console, indent="  ", forecast_s=stage.forecast_s()) as progress:
                    detail = stage.run(lake, progress)
                table.add_row(cell(stage.name), "[green]done[/]", cell(detail), f"{time.perf_counter() - start:.1f}")
            except Exception as exc:  # reported as the stage's failure, and the demo fails
                ok = False
                table.add_row(cell(stage.name), "[bold red]failed[/]", cell(f"{type(exc).__name__}: {exc}"),
                              f"{time.perf_counter() - start:.1f}")
    finally:
        if state.cluster is not None:
            state.cluster.stop()
    console.print(table)
    return ok


#: The demo's question count is smaller than the other commands' (mmlu=20).
_BENCH_HELP = BENCH_HELP.replace("mmlu=20", "mmlu=10")


@app.command("demo")
@edge
def demo_command(
    repeats: int = typer.Option(1, "--repeats", help="Repeats per configuration."),
    bench: list[str] = typer.Option([], "--bench", "-b", help=_BENCH_HELP),
    questions: int | None = typer.Option(None, "--questions", hidden=True,
                                         help="Old spelling of --bench mmlu=N (kept so that old command lines work)."),
    workers: int = typer.Option(0, "--workers", help="Loopback RPC workers beside the head."),
    configs: list[str] = typer.Option([], "--configs", "-c", help="Only these configurations [default: all 24]."),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="Run the sweep as a Prefect flow."),
    out_dir: str = typer.Option("report", "--out", help="Folder for the report and its plots."),
) -> None:
    """Run the embedded demo end to end: toolchain, assets, 24 quantizations, a loopback
    cluster, a reduced sweep with the simulated meter (Prefect), the planner, the frontier
    and the report. Every power figure is simulated and labelled so."""
    if questions is not None and bench:
        raise MqepiError("give --bench or the old --questions, not both")
    chosen = parse_bench(bench) if bench else {"mmlu": 10 if questions is None else questions}
    for name in chosen:  # an unknown benchmark fails here, not after the toolchain and the quantizations
        TaskDef.load(name)
    settings = DemoSettings(repeats=repeats, bench=chosen, workers=workers, configs=split_list(configs) or None,
                            prefect=prefect, out=out_dir)
    if not run_demo(lake(), out, settings):
        raise typer.Exit(1)
