"""``mqepi evaluate``: accuracy, perplexity, KLD and throughput of one quantized model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer

from mqepi.analysis.stats import wilson_interval
from mqepi.cli._common import BENCH_HELP, edge, err, lake, parse_bench, progress_lines, say
from mqepi.errors import MqepiError
from mqepi.quality import evaluate as ev
from mqepi.quality import lmeval_files
from mqepi.quality.datasets import describe_default, task_loader
from mqepi.quality.tasks import TASKS
from mqepi.quant import maps, toolchain
from mqepi.quant.assets import ensure_base_model
from mqepi.quant.quantize import quantize_embedded

app = typer.Typer()


def _profile_id(model: str) -> str:
    """``model`` if it can be a profile id; an error naming ``--model`` if it looks like a model
    file instead (llama.cpp's ``-m model.gguf``): a .gguf name, a path, or an existing file that is
    no profile's id."""
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    if (model.lower().endswith(".gguf") or any(sep in model for sep in separators)
            or (Path(model).is_file() and not (maps.PROFILES_DIR / f"{model}.json").is_file())):
        raise MqepiError(f"--model {model!r} looks like a model file: --model takes a model profile id such as "
                         "smollm2-135m; give the .gguf file as the CONFIG argument: "
                         "mqepi evaluate path/to/model.gguf --model PROFILE")
    return model


def _checked(config: str, model: str, config_id: str | None, settings: ev.Settings) -> tuple[Path | None, str]:
    """Every check before the lake is touched: the model file or the map, then the benchmarks and
    their data (question sets drawn now). (the .gguf path or None, the config id to record)."""
    if config.endswith(".gguf"):
        path = Path(config)
        if not path.is_file():
            raise MqepiError(f"{config}: no such model file")
        config_id = config_id or re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "gguf"
    else:
        path = None
        if config_id and config_id != config:
            raise MqepiError("--config-id is only for a .gguf path; a config id names itself")
        if not (maps.maps_dir(model) / f"{config}.json").is_file():
            raise MqepiError(f"{config}: no quant map quant_maps/{model}/{config}.json (nor a .gguf path)")
        config_id = config
    ev.question_sets(settings, toolchain.cache_root())  # unknown benchmark, missing or bad data file: an error now
    return path, config_id


def _data_help(benchmark: str) -> str:
    """Help of a benchmark's data option: the files its loader reads and its default data."""
    task = TASKS[benchmark]
    return f"{task_loader(task).reads} [default: {describe_default(task)}]."


@app.command("evaluate")
@edge
def evaluate_command(
    config: str = typer.Argument(..., help="Config id of the embedded model (quantized first if needed) or a .gguf path."),
    model: str = typer.Option("smollm2-135m", "--model", "-m",
                              help="Model profile id, e.g. smollm2-135m (with a .gguf CONFIG: the model it is). "
                              "Not a .gguf file (llama.cpp's -m): that is the CONFIG argument."),
    bench: list[str] = typer.Option([], "--bench", "-b", help=BENCH_HELP),
    seed: int = typer.Option(1234, help="Seed of the question subset."),
    ppl_context: int = typer.Option(256, help="Perplexity / KLD context (tokens)."),
    ppl_chunks: int = typer.Option(8, help="Perplexity / KLD chunks."),
    kld: bool = typer.Option(True, "--kld/--no-kld", help="KL divergence against the F16 base."),
    throughput: bool = typer.Option(True, "--throughput/--no-throughput", help="llama-bench pp and tg windows."),
    threads: int | None = typer.Option(None, help="Threads for the llama.cpp tools."),
    mmlu: str | None = typer.Option(None, help=_data_help("mmlu")),
    arc: str | None = typer.Option(None, help=_data_help("arc_challenge")),
    hellaswag: str | None = typer.Option(None, help=_data_help("hellaswag")),
    config_id: str | None = typer.Option(None, "--config-id",
                                         help="Config id recorded for a .gguf path [default: its file name]."),
    output_path: Path | None = typer.Option(
        None, "--output-path", help="Also write lm-evaluation-harness-style result files into this folder "
        "(<model>__<config>/results_<date>.json) [default: none]."),
    log_samples: bool = typer.Option(False, "--log-samples", help="With --output-path: one samples_<task>_<date>.jsonl "
                                     "per benchmark, laid out like lm-eval's sample logs."),
) -> None:
    """Measure accuracy (multiple choice), perplexity, KLD and throughput of one quantized model."""
    model = _profile_id(model)
    paths = {"mmlu": mmlu, "arc_challenge": arc, "hellaswag": hellaswag}
    settings = ev.Settings(benchmarks=parse_bench(bench or ["mmlu=20"]), seed=seed,
                           ppl_context=ppl_context, ppl_chunks=ppl_chunks, kld=kld, throughput=throughput, threads=threads,
                           dataset_paths={k: v for k, v in paths.items() if v})
    if log_samples and output_path is None:
        raise MqepiError("--log-samples needs --output-path DIR (where lm-eval's sample logs go)")
    path, config_id = _checked(config, model, config_id, settings)
    lk = lake()
    lk.init()
    base = ensure_base_model()
    if not config.endswith(".gguf"):
        (q,) = list(quantize_embedded([config], model, lk))
        path, config_id = Path(q.path), q.config_id
    with progress_lines(err, indent="  ", keep_lines=False) as progress:
        result = ev.evaluate(path, model, config_id, lk, settings, base_path=base.path, base_sha256=base.sha256,
                             cache=toolchain.cache_root(), progress=progress)
    say(f"run {result.run_id} ({model} {config_id}); events in {lk.uri}")
    if output_path is not None:
        for written in lmeval_files.write(output_path, result, model=model, config_id=config_id, log_samples=log_samples):
            say(f"  wrote {written}")
    for b in result.benchmarks:
        low, high = wilson_interval(b.n_correct, b.n)
        norm = f", acc_norm {b.accuracy_norm:.3f}" if b.accuracy_norm is not None else ""
        say(f"  {b.benchmark}: acc {b.n_correct}/{b.n} = {b.accuracy:.3f} (95% Wilson {low:.3f}-{high:.3f}){norm}; "
            f"tokens evaluated {b.tokens_evaluated:,d} vs naive per-choice {b.tokens_naive:,d} "
            f"({b.token_ratio:.2f}x); window {(b.end_ns - b.start_ns) / 1e9:.1f} s")
    if result.perplexity:
        say(f"  perplexity: {result.perplexity.ppl:.4f} +/- {result.perplexity.ppl_stderr:.4f}")
    if result.kld:
        say(f"  KLD vs F16 base: mean {result.kld['kld_mean']:.6f}, median {result.kld['kld_median']:.6f}, "
            f"p99 {result.kld['kld_p99']:.6f}, same top p {result.kld['same_top_p']:.4f}")
    for t in result.throughput:
        say(f"  {t['test']}: {t['tokens_per_s']:.1f} +/- {t['tokens_per_s_stddev']:.1f} tokens/s")
