"""``mqepi sweep`` and ``mqepi plan``: measure a sweep (resumable), or forecast it first."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from mqepi.cli._common import BENCH_HELP, edge, lake, out, parse_bench, progress_lines, say, split_list, write_data
from mqepi.flows import prefect_environment
from mqepi.sweep import forecast as plan
from mqepi.sweep import power
from mqepi.sweep.clusters import check_clusters
from mqepi.sweep.exclusive import check_free
from mqepi.sweep.run import run_sweep
from mqepi.sweep.spec import SweepError, SweepSpec, spec_from_json

app = typer.Typer()


def build_spec(model, configs, repeats, bench, cluster, meter, name, spec_file, settings,
               given: set[str] | None = None) -> SweepSpec:
    """The sweep the options describe. With ``--spec FILE``: the file's fields, then every option
    given on the command line over them (``given``: the names of those options; flags win)."""
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
    fields = {"model": model, "configs": split_list(configs) or None, "repeats": repeats,
              "benchmarks": parse_bench(bench or ["mmlu=20"]), "cluster": str(cluster) if cluster else None,
              "meter": meter, "name": name}
    if spec_file is None:
        return SweepSpec(**{**fields, **extra})
    base = spec_from_json(spec_file)
    flags = {_FIELD_OF.get(option, option): fields[_FIELD_OF.get(option, option)]
             for option in (given or set()) if _FIELD_OF.get(option, option) in fields}
    return replace(base, **{**flags, **extra})


#: The SweepSpec field of each option whose parameter name differs from it.
_FIELD_OF = {"bench": "benchmarks"}


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters of ``ctx`` given on the command line or by an environment variable."""
    # compared by name: typer may carry its own copy of click's ParameterSource
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}


_MODEL = typer.Option("smollm2-135m", "--model", help="Model profile id.")
_CONFIGS = typer.Option([], "--configs", "-c", help="Configurations (repeat or comma-separate) [default: all maps].")
_REPEATS = typer.Option(3, "--repeats", "-r", help="Repeats per configuration.")
_BENCH = typer.Option([], "--bench", "-b", help=BENCH_HELP)
_CLUSTER = typer.Option(None, "--cluster", help="Cluster config (TOML) [default: this machine].")
_METER = typer.Option("simulated", "--meter", help="simulated | none | epi-meter:<serial port>.")
_NAME = typer.Option(None, "--name", help="Sweep id [default: a hash of the settings].")
_SPEC = typer.Option(None, "--spec", help="A JSON file with the SweepSpec fields (options given on the command "
                     "line override it).")
_SET = typer.Option([], "--set", help="Any other SweepSpec field, FIELD=VALUE (e.g. idle_s=20), repeatable.")


@app.command("sweep")
@edge
def sweep_command(
    ctx: typer.Context, model: str = _MODEL, configs: list[str] = _CONFIGS, repeats: int = _REPEATS, bench: list[str] = _BENCH,
    cluster: Path | None = _CLUSTER, meter: str = _METER, name: str | None = _NAME,
    spec_file: Path | None = _SPEC, settings: list[str] = _SET,
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="Run as a Prefect flow (else directly)."),
    clusters: str | None = typer.Option(
        None, "--clusters", help="Spread the sweep over these clusters' work pools (comma-separated; see `mqepi deploy`)."),
    rebalance: bool = typer.Option(False, "--rebalance", help="With --clusters: move a down cluster's unstarted runs "
                                   "to the clusters that are up."),
) -> None:
    """Measure every (configuration, repeat) not yet finished in the lake: quantize, deploy,
    stabilise, idle window, benchmark windows, perplexity/KLD, throughput. Rerunning the same
    settings resumes; an interrupted run is marked failed and redone. Configurations that are
    the same model (identical effective tensor types) are measured once; the others are
    recorded as aliases. While another process runs the same sweep or measures one of its
    nodes, exits at once naming that process. With --clusters, each cluster measures its share
    through its own work pool (sweep/<cluster> deployments, one worker per site): see docs/cluster.md."""
    spec = build_spec(model, configs, repeats, bench, cluster, meter, name, spec_file, settings,
                      given_options(ctx))
    lk = lake()
    if clusters is not None:
        _sweep_clusters(spec, lk, clusters, rebalance)
        return
    if rebalance:
        raise SweepError("--rebalance needs --clusters")
    check_free(spec, lk)  # before starting Prefect; the sweep's own locks are what exclude
    if prefect:
        _sweep_flow(spec, lk)
        return
    with progress_lines() as progress:
        result = run_sweep(spec, lk, progress=progress)
    aliases = "".join(f"; {alias} = {measured} (measured once, recorded as an alias)"
                      for alias, measured in result.aliases.items())
    say(f"sweep {result.sweep_id}: {len(result.finished)} runs finished in {result.wall_s:.0f} s, "
        f"{len(result.skipped)} finished before, {len(result.marked_failed)} interrupted runs marked failed{aliases}")


def _sweep_flow(spec: SweepSpec, lk) -> None:
    """``mqepi sweep`` as a Prefect flow in this process. At a terminal the progress lines and
    bars replace the flow's console log (Prefect's INFO lines on the console, unless
    PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL says otherwise; the server still gets every line);
    into a pipe or a file the flow logs as it always has."""
    prefect_environment()
    terminal = out.is_terminal
    if terminal:
        # the console handler only (Prefect reads it on first import): the API handler keeps INFO
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    from mqepi.flows.sweep import run_flow  # Prefect is heavy: imported only when a flow runs

    with progress_lines() as progress:
        summary = run_flow(spec, lk.uri, progress=progress if terminal else None)
    write_data(json.dumps(summary, indent=1) + "\n")


def _sweep_clusters(spec: SweepSpec, lk, clusters: str, rebalance: bool) -> None:
    """``mqepi sweep --clusters``: the sweep-clusters flow against the server in PREFECT_API_URL."""
    if spec.cluster is not None:
        raise SweepError("--clusters and --cluster: each cluster's config belongs to its deployment (mqepi deploy)")
    if not os.environ.get("PREFECT_API_URL"):
        raise SweepError("--clusters needs the shared Prefect server: export PREFECT_API_URL (see docs/cluster.md)")
    names = check_clusters(split_list([clusters]))
    prefect_environment()
    from mqepi.flows.clusters import sweep_clusters  # Prefect is heavy: imported only for the flow run
    from mqepi.flows.sweep import parameters  # Prefect is heavy: imported only for the flow run

    summary = sweep_clusters(clusters=names, model=spec.model, configs=spec.configs, repeats=spec.repeats,
                             benchmarks=spec.benchmarks, meter=spec.meter, lake=lk.uri, name=spec.sweep_id,
                             settings=parameters(spec)["settings"], rebalance=rebalance, progress=say)
    write_data(json.dumps(summary, indent=1) + "\n")
    if not summary["complete"]:
        raise SweepError(f"sweep {summary['sweep_id']}: {sum(summary['finished'].values())} of {summary['pairs']} runs "
                         "finished; rerun to resume" + (" (or --rebalance)" if summary["unstarted"] else ""))


@app.command("plan")
@edge
def plan_command(
    ctx: typer.Context, model: str = _MODEL, configs: list[str] = _CONFIGS, repeats: int = _REPEATS, bench: list[str] = _BENCH,
    cluster: Path | None = _CLUSTER, meter: str = _METER, name: str | None = _NAME,
    spec_file: Path | None = _SPEC, settings: list[str] = _SET,
    detect_accuracy: float | None = typer.Option(
        None, "--detect-accuracy", metavar="D", help="Also print the questions needed to detect an accuracy difference D (0-1)."),
    detect_epi: float | None = typer.Option(
        None, "--detect-epi", metavar="REL",
        help="Also print the repeats needed to detect a relative J/token and EPI difference REL (0.05 = 5%)."),
) -> None:
    """Forecast a sweep's wall time and energy, per configuration and in total, from the
    runs already in the lake and the token counts of the chosen questions; then the power
    analysis: the accuracy, J/token and EPI differences its questions and repeats detect at
    the variance measured in the lake (alpha 0.05, power 0.8)."""
    if detect_accuracy is not None and not 0 < detect_accuracy <= 1:
        raise plan.PlanError(f"--detect-accuracy {detect_accuracy}: an accuracy difference is in (0, 1]")
    if detect_epi is not None and not detect_epi > 0:
        raise plan.PlanError(f"--detect-epi {detect_epi}: a relative difference is > 0 (0.05 = 5%)")
    spec = build_spec(model, configs, repeats, bench, cluster, meter, name, spec_file, settings,
                      given_options(ctx))
    lk = lake()
    f = plan.forecast(spec, lk, progress=say)
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
    variance = power.measured_variance(lk, spec.model, benchmarks=list(f.questions))
    for line in power.plan_lines(variance, f.questions, spec.repeats, detect_accuracy=detect_accuracy,
                                 detect_epi=detect_epi):
        say(line)
