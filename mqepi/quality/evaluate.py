"""One quality evaluation of one quantized model: the library behind ``mqepi evaluate``.

Runs the chosen multiple-choice benchmarks, perplexity and KLD on a recorded held-out text,
and llama-bench throughput, each in its own window, and records a ``run`` started /
finished (or failed) pair around them. The sweep (:mod:`mqepi.sweep`) runs the same tools
with the power side added.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mqepi import PRODUCER, __version__
from mqepi.errors import MqepiError
from mqepi.lake.durable import sha256_file
from mqepi.meter.stream import RunKey
from mqepi.quality.datasets import load_dataset
from mqepi.quality.perplexity import PerplexityResult, base_logits, run_perplexity
from mqepi.quality.prompts import QuestionSet, select
from mqepi.quality.scoring import BenchmarkResult, EngineCommand, run_scoring
from mqepi.quality.tasks import TaskDef
from mqepi.quality.throughput import run_throughput
from mqepi.quant import toolchain
from mqepi.rig.hardware import local_profile

#: Held-out text shipped by Debian (base-files): licence texts, about 240 kB.
LICENSES_DIR = Path("/usr/share/common-licenses")


@dataclass
class HeldOutText:
    path: Path
    sha256: str
    sources: list[str]


def heldout_text(cache: Path, source_dir: Path = LICENSES_DIR) -> HeldOutText:
    """The perplexity text: every regular file of ``source_dir`` in name order, concatenated."""
    files = sorted(p for p in source_dir.iterdir() if p.is_file() and not p.is_symlink()) if source_dir.is_dir() else []
    if not files:
        raise MqepiError(f"no held-out text: {source_dir} has no files (install Debian's base-files, or pass --text FILE)")
    target = cache / "texts" / "common-licenses.txt"
    body = b"".join(p.read_bytes() for p in files)
    if not target.is_file() or target.read_bytes() != body:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    return HeldOutText(target, hashlib.sha256(body).hexdigest(), [str(p) for p in files])


@dataclass
class Settings:
    benchmarks: dict[str, int | None] = field(default_factory=lambda: {"mmlu": 20})  # name -> questions (None: all)
    shots: dict[str, int] = field(default_factory=dict)
    seed: int = 1234
    ppl_context: int = 256
    ppl_chunks: int = 8
    kld: bool = True
    throughput: bool = True
    n_prompt: int = 128
    n_gen: int = 32
    bench_repetitions: int = 3
    threads: int | None = None
    dataset_paths: dict[str, str] = field(default_factory=dict)  # benchmark -> its data file or folder


def question_sets(settings: Settings, cache: Path) -> list[QuestionSet]:
    """The seeded question sets; each manifest is saved under the cache by its hash."""
    sets = []
    for name, n in settings.benchmarks.items():
        task = TaskDef.load(name, settings.shots.get(name))
        qset = select(load_dataset(name, cache, settings.dataset_paths.get(name)), task, n, settings.seed)
        target = cache / "question_sets" / f"{qset.sha256}.json"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(qset.manifest(), indent=1))
        sets.append(qset)
    return sets


@dataclass
class Evaluation:
    run_id: str
    benchmarks: list[BenchmarkResult]
    perplexity: PerplexityResult | None
    kld: dict | None
    throughput: list[dict]
    composite_accuracy: float | None
    composite_of: list[str]
    question_sets: list[QuestionSet] = field(default_factory=list)  # as scored, in the order of ``benchmarks``


def evaluate(model_path: str | Path, model: str, config_id: str, lake, settings: Settings, *, base_path: str | Path,
             base_sha256: str, cache: Path, repeat: int = 0, run_id: str | None = None,
             progress: Callable[[str], None] = lambda line: None) -> Evaluation:
    """Evaluate one GGUF; every result lands in ``lake`` under a new run."""
    tc = toolchain.ensure()
    file_sha = sha256_file(model_path)
    run_id = run_id or f"eval-{config_id}-{time.time_ns():x}"
    key = RunKey(model, config_id, run_id)
    text = heldout_text(cache)
    qsets = question_sets(settings, cache)
    provenance = {"mqepi": __version__, "llama_cpp_commit": tc.llama_cpp_commit, "toolchain": tc.version,
                  "host": socket.gethostname(), "platform": platform.platform(), "model_file": str(model_path),
                  "text": {"sha256": text.sha256, "sources": text.sources},
                  "question_sets": {q.benchmark: q.sha256 for q in qsets},
                  "tasks": {q.benchmark: q.task_record() for q in qsets}, "settings": settings.__dict__}
    profile = local_profile(llama_cpp_commit=tc.llama_cpp_commit, meter="none")
    provenance["hardware"] = profile.as_dict()

    def run_event(status: str, message: str | None = None) -> None:
        lake.record("run", {**key.columns(1), "status": [status], "repeat": [repeat], "file_sha256": [file_sha],
                            "power_source": ["none"], "host": [socket.gethostname()],
                            "provenance_json": [json.dumps(provenance, sort_keys=True, default=str)],
                            "message": [message], "hardware_id": [profile.hardware_id]}, producer=PRODUCER)

    run_event("started")
    try:
        results = [_benchmark(qset, tc, model_path, settings, cache, lake, key, progress) for qset in qsets]
        ppl, kld = _perplexity(tc, model_path, text, settings, base_path, base_sha256, cache, lake, key, progress)
        bench = _throughput(tc, model_path, settings, lake, key, progress)
    except BaseException as exc:
        run_event("failed", f"{type(exc).__name__}: {exc}"[:2000])
        raise
    run_event("finished")
    composite = sum(r.accuracy for r in results) / len(results) if results else None
    return Evaluation(run_id, results, ppl, kld, bench, composite, [r.benchmark for r in results], qsets)


def _benchmark(qset: QuestionSet, tc: toolchain.Toolchain, model_path, settings: Settings, cache: Path, lake, key: RunKey,
               progress: Callable[[str], None]) -> BenchmarkResult:
    progress(f"{qset.benchmark}: {len(qset.items)} questions, {qset.task.shots}-shot")
    return run_scoring(qset, model_path, EngineCommand.local(progress), threads=settings.threads, lake=lake, key=key,
                       progress=progress)


def _perplexity(tc: toolchain.Toolchain, model_path, text: HeldOutText, settings: Settings, base_path, base_sha256: str,
                cache: Path, lake, key: RunKey, progress: Callable[[str], None]) -> tuple[PerplexityResult, dict | None]:
    logits = None
    if settings.kld:
        progress("base logits for KLD (cached per base, text, context)")
        logits = base_logits(tc.tool("llama-perplexity"), base_path, text.path, settings.ppl_context, settings.ppl_chunks,
                             cache / "kld", base_sha256, text.sha256, settings.threads)
    progress("perplexity" + (" and KLD" if logits else ""))
    return run_perplexity(tc.tool("llama-perplexity"), model_path, text.path, context=settings.ppl_context,
                          chunks=settings.ppl_chunks, text_sha256=text.sha256, base_logits_path=logits,
                          base_sha256=base_sha256, threads=settings.threads, lake=lake, key=key)


def _throughput(tc: toolchain.Toolchain, model_path, settings: Settings, lake, key: RunKey,
                progress: Callable[[str], None]) -> list[dict]:
    if not settings.throughput:
        return []
    progress("throughput (llama-bench pp / tg)")
    return run_throughput(tc.tool("llama-bench"), model_path, n_prompt=settings.n_prompt, n_gen=settings.n_gen,
                          repetitions=settings.bench_repetitions, threads=settings.threads, lake=lake, key=key)
