"""``mqepi demo``, ``sweep``, ``plan``, ``recompute`` and ``serve``: the sweep and its flows.

Plain functions with typer signatures; :mod:`mqepi.cli` registers them wrapped in its
``edge`` (library errors become one-line messages and exit status 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _benchmarks(questions: list[str]) -> dict[str, Optional[int]]:
    from mqepi.sweep import SweepError

    out: dict[str, Optional[int]] = {}
    for item in questions:
        name, _, n = item.partition("=")
        if not name:
            raise SweepError(f"--bench {item!r}: expected NAME or NAME=QUESTIONS (e.g. mmlu=200, hellaswag=all)")
        if n in ("", "all"):
            out[name] = None
        elif n.isdigit() and int(n) > 0:
            out[name] = int(n)
        else:
            raise SweepError(f"--bench {item!r}: QUESTIONS must be a positive number or 'all', not {n!r}")
    return out


def _spec(model, configs, repeats, bench, cluster, meter, name, spec_file, settings):
    from mqepi.sweep import SweepError, SweepSpec, spec_from_json

    if spec_file is not None:
        return spec_from_json(spec_file)
    extra = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise SweepError(f"--set {item!r}: expected FIELD=VALUE (e.g. idle_s=20, rpc=false)")
        if key not in SweepSpec.__dataclass_fields__:
            raise SweepError(f"--set {item!r}: unknown field {key!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    ids = [c for item in configs for c in item.split(",") if c.strip()] or None
    return SweepSpec(model=model, configs=ids, repeats=repeats, benchmarks=_benchmarks(bench or ["mmlu=20"]),
                     cluster=str(cluster) if cluster else None, meter=meter, name=name, **extra)


_MODEL = typer.Option("smollm2-135m", "--model", help="Model profile id.")
_CONFIGS = typer.Option([], "--configs", "-c", help="Configurations (repeat or comma-separate) [default: all maps].")
_REPEATS = typer.Option(3, "--repeats", "-r", help="Repeats per configuration.")
_BENCH = typer.Option([], "--bench", "-b", help="NAME[=QUESTIONS|all], repeatable [default: mmlu=20].")
_CLUSTER = typer.Option(None, "--cluster", help="Cluster config (TOML) [default: this machine].")
_METER = typer.Option("simulated", "--meter", help="simulated | none | epi-meter:<serial port>.")
_NAME = typer.Option(None, "--name", help="Sweep id [default: a hash of the settings].")
_SPEC = typer.Option(None, "--spec", help="A JSON file with the SweepSpec fields (overrides the options).")
_SET = typer.Option([], "--set", help="Any other SweepSpec field, FIELD=VALUE (e.g. idle_s=20), repeatable.")


def demo_command(
    repeats: int = typer.Option(1, "--repeats", help="Repeats per configuration."),
    questions: int = typer.Option(10, "--questions", help="MMLU 5-shot questions per run."),
    workers: int = typer.Option(0, "--workers", help="Loopback RPC workers beside the head."),
    configs: list[str] = typer.Option([], "--configs", "-c", help="Only these configurations [default: all 24]."),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="Run the sweep as a Prefect flow."),
    out_dir: str = typer.Option("report", "--out", help="Folder for the report and its plots."),
) -> None:
    """Run the embedded demo end to end: toolchain, assets, 24 quantizations, a loopback
    cluster, a reduced sweep with the simulated meter (Prefect), the planner, the frontier
    and the report. Every power figure is simulated and labelled so."""
    from mqepi.cli import _lake, out
    from mqepi.demo import DemoSettings, run_demo

    ids = [c for item in configs for c in item.split(",") if c.strip()] or None
    settings = DemoSettings(repeats=repeats, questions=questions, workers=workers, configs=ids, prefect=prefect,
                            out=out_dir)
    if not run_demo(_lake(), out, settings):
        raise typer.Exit(1)


def sweep_command(
    model: str = _MODEL, configs: list[str] = _CONFIGS, repeats: int = _REPEATS, bench: list[str] = _BENCH,
    cluster: Optional[Path] = _CLUSTER, meter: str = _METER, name: Optional[str] = _NAME,
    spec_file: Optional[Path] = _SPEC, settings: list[str] = _SET,
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="Run as a Prefect flow (else directly)."),
) -> None:
    """Measure every (configuration, repeat) not yet finished in the lake: quantize, deploy,
    stabilise, idle window, benchmark windows, perplexity/KLD, throughput. Rerunning the same
    settings resumes; an interrupted run is marked failed and redone."""
    from mqepi.cli import _lake, out
    from mqepi.sweep import run_sweep

    spec = _spec(model, configs, repeats, bench, cluster, meter, name, spec_file, settings)
    lake = _lake()

    def progress(line: str) -> None:
        out.print(line, highlight=False, markup=False)

    if prefect:
        from mqepi.demo import prefect_environment

        prefect_environment()
        from mqepi.flows.sweep import sweep

        result = sweep(model=spec.model, configs=spec.configs, repeats=spec.repeats, benchmarks=spec.benchmarks,
                       cluster=spec.cluster, meter=spec.meter, lake=lake.uri, name=spec.name,
                       settings={k: v for k, v in spec.identity().items()
                                 if k not in ("model", "repeats", "benchmarks", "cluster", "meter")})
        out.print(json.dumps(result, indent=1))
        return
    result = run_sweep(spec, lake, progress=progress)
    out.print(f"sweep {result.sweep_id}: {len(result.finished)} runs finished in {result.wall_s:.0f} s, "
              f"{len(result.skipped)} finished before, {len(result.marked_failed)} interrupted runs marked failed")


def plan_command(
    model: str = _MODEL, configs: list[str] = _CONFIGS, repeats: int = _REPEATS, bench: list[str] = _BENCH,
    cluster: Optional[Path] = _CLUSTER, meter: str = _METER, name: Optional[str] = _NAME,
    spec_file: Optional[Path] = _SPEC, settings: list[str] = _SET,
) -> None:
    """Forecast a sweep's wall time and energy, per configuration and in total, from the
    runs already in the lake and the token counts of the chosen questions."""
    from rich.table import Table

    from mqepi import plan
    from mqepi.cli import _lake, out

    spec = _spec(model, configs, repeats, bench, cluster, meter, name, spec_file, settings)
    f = plan.forecast(spec, _lake(), progress=lambda line: out.print(line, highlight=False, markup=False))
    label = f" ({f.power_source} power)" if f.power_source else ""
    table = Table(title=f"Forecast of sweep {f.sweep_id}{label}")
    for column in ("config", "runs", "per run", "total", "energy (Wh)", "rates"):
        table.add_column(column)
    for c in f.configs:
        table.add_row(c.config_id, str(c.runs), plan.human_duration(c.seconds_per_run), plan.human_duration(c.seconds),
                      "" if c.energy_j is None else f"{c.energy_j / 3600:.3f}", c.source)
    out.print(table)
    benches = ", ".join(f"{b} {f.questions[b]} questions ({f.tokens[b]:,d} tokens)" for b in f.questions)
    energy = "" if f.energy_j is None else f", {f.energy_j / 3600:.2f} Wh{label}"
    out.print(f"{spec.repeats} repeats x {len(f.configs)} configs x {benches}: "
              f"{plan.human_duration(f.seconds)}{energy}", highlight=False)


def recompute_command(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Derived-tables folder [default: derived/ beside the lake]."),
) -> None:
    """Rebuild the materialised tables (run_metrics, config_summary, matched_pairs,
    pareto_frontier) into a snapshot that records the lake state it came from; reuse the
    last snapshot when the lake has not changed."""
    from mqepi.cli import _lake, out
    from mqepi.derived import default_out_dir, recompute

    lake = _lake()
    snap = recompute(lake, out_dir or default_out_dir(lake),
                     progress=lambda line: out.print(line, highlight=False, markup=False))
    out.print(f"{'reused' if snap.reused else 'wrote'} {snap.path}: {snap.runs_total} runs ({snap.runs_new} new), "
              f"lake state {snap.lake_state_sha256[:12]} ({snap.lake_files} files), {snap.seconds:.2f} s", highlight=False)


def serve_command(
    name: str = typer.Option("mqepi", "--name", help="Deployment name of each flow."),
    frontier_cron: str = typer.Option("0 * * * *", "--frontier-cron", help="Schedule of recompute-frontier (cron)."),
    drop: str = typer.Option("submissions", "--drop", help="Drop folder of ingest-submissions."),
    ingest_cron: Optional[str] = typer.Option(None, "--ingest-cron", help="Schedule of ingest-submissions (cron) [default: on demand]."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Default cluster config of the sweep deployment."),
) -> None:
    """Serve the sweep, recompute-frontier (hourly by default) and ingest-submissions flows as
    deployments against the Prefect server in PREFECT_API_URL, until Ctrl-C."""
    import os

    from mqepi.cli import State, out
    from mqepi.errors import MqepiError

    if not os.environ.get("PREFECT_API_URL"):
        raise MqepiError("PREFECT_API_URL is not set: start a server (`prefect server start`) and export "
                         "PREFECT_API_URL=http://127.0.0.1:4200/api")
    from mqepi.flows.serve import serve_all

    out.print(f"serving sweep/{name}, recompute-frontier/{name} ({frontier_cron}), ingest-submissions/{name} "
              f"on {os.environ['PREFECT_API_URL']}", highlight=False)
    serve_all(name, lake=State.lake_root, frontier_cron=frontier_cron, drop=drop, ingest_cron=ingest_cron,
              cluster=cluster)
