"""The embedded demo sweep: the README's main command.

The demo is a list of stages. Each stage either runs (and reports what it did) or is not
built yet and says which issue brings it; the demo never pretends a missing stage ran.
"""

from __future__ import annotations

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
    run: Callable[[Lake], str] | None  # returns a one-line summary; None: not built yet
    missing: str = ""


def _lake_ready(lake: Lake) -> str:
    seeds = lake.init()
    report = lake.verify()
    if not report.ok:
        first = report.problems[0]
        raise RuntimeError(f"lake verify found {len(report.problems)} problems, first: {first.kind} {first.path}: {first.detail}")
    return f"{lake.uri}: {report.files_checked} files verified, {len(seeds)} seed files written"


def _views_loaded(lake: Lake) -> str:
    con = sql.connect(lake)
    counts = {name: con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0] for name in EVENT_TYPES}
    total = sum(counts.values())
    return f"{len(counts)} event views loaded, {total} events in the lake"


STAGES: list[Stage] = [
    Stage("event lake (init + verify)", _lake_ready),
    Stage("SQL views", _views_loaded),
    Stage("llama.cpp toolchain", None, "issue 3: mqepi toolchain build"),
    Stage("embedded base model (SmolLM2-135M F16)", None, "issue 3: mqepi assets"),
    Stage("24 quant maps + quantization", None, "issue 3: mqepi maps generate / quantize"),
    Stage("loopback cluster (sshd + llama.cpp RPC)", None, "issue 6: mqepi cluster local"),
    Stage("simulated epi-meter (labelled simulated)", None, "issue 5: mqepi meter simulate"),
    Stage("benchmarks, perplexity, KLD, throughput", None, "issue 4"),
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
            detail = stage.run(lake)
            table.add_row(stage.name, "[green]done[/]", detail, f"{time.perf_counter() - start:.1f}")
        except Exception as exc:  # reported as the stage's failure, and the demo fails
            ok = False
            table.add_row(stage.name, "[bold red]failed[/]", f"{type(exc).__name__}: {exc}", f"{time.perf_counter() - start:.1f}")
    console.print(table)
    missing = [s for s in STAGES if s.run is None]
    if missing:
        console.print(f"{len(missing)} of {len(STAGES)} stages are not built yet; the demo ran the rest.")
    return ok
