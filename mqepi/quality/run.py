"""Run the quality tools on one quantized model and record events.

Each measurement is a named window: the tool's output lines are stamped on arrival and the
window brackets the evaluation itself (model loading and tokenizing excluded). Commands go
through an executor (:mod:`mqepi.executor`: this machine, or a head node over SSH, with
``--rpc`` workers passed as ``extra_args``), so the same code measures locally and on a
cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mqepi import PRODUCER
from mqepi.meter.stream import RunKey  # the one partition key of every run-bound producer
from mqepi.quality.mc import QuestionSet, ScoringError, parse_results, task_file_bytes
from mqepi.rig.executor import LocalExecutor, Stamped, run_stamped  # noqa: F401 - run_stamped re-exported


def _fail(what: str, result: Stamped) -> ScoringError:
    tail = "\n".join(line.rstrip() for _, line in result.lines[-10:])
    return ScoringError(f"{what} exited {result.returncode}:\n{tail}")


# ------------------------------------------------------------------ tokens


def token_ids(tokenize_tool: str | Path, model_path: str | Path, text: str) -> list[int]:
    """Token ids of ``text`` as the model's llama.cpp vocabulary gives them (BOS included,
    as llama-perplexity tokenizes its tasks)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write(text)
        name = fh.name
    try:
        proc = subprocess.run([str(tokenize_tool), "-m", str(model_path), "-f", name, "--ids", "--log-disable"],
                              capture_output=True, text=True)
    finally:
        Path(name).unlink(missing_ok=True)
    match = re.search(r"\[([0-9, ]*)\]\s*$", proc.stdout.strip())
    if proc.returncode != 0 or not match:
        raise ScoringError(f"llama-tokenize failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return [int(x) for x in match.group(1).split(",") if x.strip()]


def token_counts(qset: QuestionSet, tokenize_tool, model_path, cache_dir: Path | None = None) -> list[tuple[int, int]]:
    """Per question: (tokens the engine evaluates, tokens a naive per-choice evaluation needs).

    The engine evaluates the tokens all choices share once and each choice's own tokens once:
    ``shared + sum(len_k - shared)``; naive evaluation runs every choice in full:
    ``sum(len_k)``. Counts depend only on the question set and the vocabulary, so they are
    cached per (question set, model vocabulary).
    """
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"tokens-{qset.sha256[:16]}-{Path(model_path).stat().st_size}.json"
        if cache.is_file():
            return [tuple(x) for x in json.loads(cache.read_text())]
    counts = []
    for item in qset.items:
        seqs = [token_ids(tokenize_tool, model_path, item.prompt + " " + a) for a in item.answers]
        shared = 0
        for column in zip(*seqs):
            if len(set(column)) != 1:
                break
            shared += 1
        counts.append((shared + sum(len(s) - shared for s in seqs), sum(len(s) for s in seqs)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(counts))
    return counts


# ------------------------------------------------------------------ multiple choice


@dataclass
class BenchmarkResult:
    benchmark: str
    question_set_sha256: str
    n: int
    n_correct: int
    accuracy: float
    tool_accuracy_pct: float
    tool_stderr_pct: float
    start_ns: int
    end_ns: int
    tokens_evaluated: int
    tokens_naive: int
    correct: list[bool]

    @property
    def token_ratio(self) -> float:
        return self.tokens_evaluated / self.tokens_naive


def run_multiple_choice(qset: QuestionSet, perplexity_tool, model_path, *, counts: list[tuple[int, int]],
                        threads: int | None = None, extra_args: list[str] = (), lake=None, key: RunKey | None = None,
                        progress: Callable[[str], None] = lambda line: None, executor=None) -> BenchmarkResult:
    """Score ``qset`` with llama-perplexity --multiple-choice; append answers and the window.

    ``executor`` runs the tool elsewhere (a head node: ``mqepi.cluster.ssh.Remote``, with
    ``stage_file`` and ``stream``); paths are then the head's. Answers are appended only after
    the whole output is read, so a run cut short adds nothing and a retry adds each answer once.
    """
    data = task_file_bytes(qset.items)

    def command(task_file: str) -> list[str]:
        return [str(perplexity_tool), "-m", str(model_path), "-bf", task_file, "--multiple-choice",
                "-c", str(qset.task.context), *(["-t", str(threads)] if threads else []), *extra_args]

    executor = executor or LocalExecutor()
    task_file = executor.stage_file(f"{qset.benchmark}-{qset.sha256[:16]}.bin", data)
    result = executor.stream(command(task_file), progress)
    if result.returncode != 0:
        raise _fail("llama-perplexity --multiple-choice", result)
    correct, acc, err, start, end = parse_results(result.lines, len(qset.items))
    bench = BenchmarkResult(qset.benchmark, qset.sha256, len(correct), sum(correct), sum(correct) / len(correct), acc, err,
                            start, end, sum(c[0] for c in counts), sum(c[1] for c in counts), correct)
    if lake is not None and key is not None:
        n = len(qset.items)
        lake.record("benchmark_answer", {
            **key.columns(n), "benchmark": [qset.benchmark] * n, "question_set_sha256": [qset.sha256] * n,
            "question_id": [i.question_id for i in qset.items], "subject": [i.subject for i in qset.items],
            "shots": [qset.task.shots] * n, "prompt_sha256": [i.prompt_sha256 for i in qset.items],
            "predicted": [i.gold if c else None for i, c in zip(qset.items, correct)],
            "gold": [i.gold for i in qset.items], "correct": correct, "choice_scores": [None] * n,
            "tokens_evaluated": [c[0] for c in counts],
        }, producer=PRODUCER)
        record_phase(lake, key, qset.benchmark, start, end, bench.tokens_evaluated)
    return bench


def record_phase(lake, key: RunKey, phase: str, start_ns: int, end_ns: int, tokens: int | None, node: str | None = None) -> None:
    lake.record("phase", {**key.columns(1), "phase": [phase], "node": [node], "start_ns": [start_ns], "end_ns": [end_ns],
                          "tokens": [tokens]}, producer=PRODUCER)


# ------------------------------------------------------------------ perplexity and KLD

PPL_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
KLD_FIELDS = {
    "ppl_ratio": re.compile(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
    "kld_mean": re.compile(r"Mean\s+KLD:\s*([-0-9.]+)\s*±\s*([0-9.]+)"),
    "kld_median": re.compile(r"Median\s+KLD:\s*([-0-9.]+)"),
    "kld_p99": re.compile(r"99\.0%\s+KLD:\s*([-0-9.]+)"),
    "same_top_p": re.compile(r"Same top p:\s*([0-9.]+)\s*±\s*([0-9.]+)\s*%"),
    "ppl_q": re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)\s*±\s*([0-9.]+)"),
}
CHUNK_LINE = re.compile(r"^\s*\d+\s+[0-9.]+\s+±")  # a KLD table row (one per chunk)
PPL_CHUNK = re.compile(r"\[\d+\][0-9.]+")  # perplexity's running "[1]22.1,[2]..." output


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    tokens: int
    start_ns: int
    end_ns: int


def parse_perplexity(lines: list[tuple[int, str]]) -> tuple[float, float, int, int]:
    start = end = None
    final = None
    for stamp, text in lines:
        if "calculating perplexity over" in text or "computing over" in text:
            start = stamp
        if PPL_CHUNK.search(text):
            end = stamp
        m = PPL_FINAL.search(text)
        if m:
            final = (float(m.group(1)), float(m.group(2)))
            end = end or stamp
    if final is None or start is None:
        raise ScoringError("llama-perplexity printed no 'Final estimate: PPL = X +/- Y'")
    return final[0], final[1], start, end


def parse_kld(lines: list[tuple[int, str]]) -> dict:
    text = "".join(line for _, line in lines)
    out: dict = {}
    for name, pattern in KLD_FIELDS.items():
        m = pattern.search(text)
        if not m:
            raise ScoringError(f"llama-perplexity --kl-divergence printed no {name} line")
        out[name] = float(m.group(1))
        if m.lastindex and m.lastindex > 1:
            out[name + "_stderr"] = float(m.group(2))
    out["same_top_p"] /= 100
    out["same_top_p_stderr"] = out.get("same_top_p_stderr", 0) / 100
    stamps = [s for s, line in lines if CHUNK_LINE.match(line)]
    start = next((s for s, line in lines if "computing over" in line or "calculating perplexity over" in line), None)
    if start is None or not stamps:
        raise ScoringError("llama-perplexity --kl-divergence printed no chunk results")
    out["start_ns"], out["end_ns"] = start, stamps[-1]
    return out


def base_logits(perplexity_tool, base_path, text_path, context: int, chunks: int, cache_dir: Path,
                base_sha256: str, text_sha256: str, threads: int | None = None) -> Path:
    """The F16 base's logits for KLD, cached once per (base, text, context, chunks)."""
    target = cache_dir / f"kld-base-{base_sha256[:12]}-{text_sha256[:12]}-c{context}-n{chunks}.kld"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    cmd = [str(perplexity_tool), "-m", str(base_path), "-f", str(text_path), "-c", str(context), "--chunks", str(chunks),
           "--kl-divergence-base", str(partial), *(["-t", str(threads)] if threads else [])]
    result = run_stamped(cmd)
    if result.returncode != 0 or not partial.is_file():
        raise _fail("llama-perplexity --kl-divergence-base", result)
    partial.replace(target)
    return target


def run_perplexity(perplexity_tool, model_path, text_path, *, context: int, chunks: int, text_sha256: str,
                   base_logits_path: Path | None = None, base_sha256: str | None = None, threads: int | None = None,
                   extra_args: list[str] = (), lake=None, key: RunKey | None = None,
                   progress: Callable[[str], None] = lambda line: None, executor=None) -> tuple[PerplexityResult, dict | None]:
    """Perplexity on a held-out text, and KLD against the base's cached logits when given.

    With an ``executor`` (a head node) the paths are that host's: see :mod:`mqepi.executor`."""
    executor = executor or LocalExecutor()
    common = ["-c", str(context), "--chunks", str(chunks), *(["-t", str(threads)] if threads else []), *extra_args]
    result = executor.stream([str(perplexity_tool), "-m", str(model_path), "-f", str(text_path), *common], progress)
    if result.returncode != 0:
        raise _fail("llama-perplexity", result)
    ppl, err, start, end = parse_perplexity(result.lines)
    tokens = context * chunks
    out = PerplexityResult(ppl, err, tokens, start, end)
    kld = None
    if base_logits_path is not None:
        k = executor.stream([str(perplexity_tool), "-m", str(model_path), "--kl-divergence-base", str(base_logits_path),
                         "--kl-divergence", *common], progress)
        if k.returncode != 0:
            raise _fail("llama-perplexity --kl-divergence", k)
        kld = parse_kld(k.lines)
    if lake is not None and key is not None:
        lake.record("perplexity", {**key.columns(1), "text_sha256": [text_sha256], "context": [context], "chunks": [chunks],
                                   "tokens": [tokens], "ppl": [ppl], "ppl_stderr": [err]}, producer=PRODUCER)
        record_phase(lake, key, "perplexity", start, end, tokens)
        if kld is not None:
            lake.record("kld", {
                **key.columns(1), "base_sha256": [base_sha256], "text_sha256": [text_sha256], "context": [context],
                "chunks": [chunks], "kld_mean": [max(kld["kld_mean"], 0.0)], "kld_mean_stderr": [kld["kld_mean_stderr"]],
                "kld_median": [max(kld["kld_median"], 0.0)], "kld_p99": [max(kld["kld_p99"], 0.0)],
                "ppl_ratio": [kld["ppl_ratio"]], "ppl_ratio_stderr": [kld["ppl_ratio_stderr"]],
                "same_top_p": [kld["same_top_p"]],
            }, producer=PRODUCER)
            record_phase(lake, key, "kld", kld["start_ns"], kld["end_ns"], tokens)
    return out, kld


# ------------------------------------------------------------------ throughput


def run_throughput(bench_tool, model_path, *, n_prompt: int = 128, n_gen: int = 32, repetitions: int = 3,
                   threads: int | None = None, rpc_nodes: int = 0, extra_args: list[str] = (), lake=None,
                   key: RunKey | None = None, executor=None) -> list[dict]:
    """llama-bench prompt processing (pp) and generation (tg), each its own window.

    The two tests run as separate invocations so each has a window of its own (prefill and
    decode J/token come from them)."""
    records = []
    for test, args in (("pp", ["-p", str(n_prompt), "-n", "0"]), ("tg", ["-p", "0", "-n", str(n_gen)])):
        cmd = [str(bench_tool), "-m", str(model_path), *args, "-r", str(repetitions), "-o", "jsonl",
               *(["-t", str(threads)] if threads else []), *extra_args]
        start = time.time_ns()
        result = (executor or LocalExecutor()).stream(cmd)
        end = time.time_ns()
        if result.returncode != 0:
            raise _fail("llama-bench", result)
        rows = [json.loads(line) for _, line in result.lines if line.lstrip().startswith("{")]
        if len(rows) != 1:
            raise ScoringError(f"llama-bench printed {len(rows)} JSON records for the {test} test, expected 1")
        row = rows[0]
        record = {"test": test, "n_prompt": int(row["n_prompt"]), "n_gen": int(row["n_gen"]), "repetitions": repetitions,
                  "n_threads": int(row.get("n_threads") or threads or 1), "tokens_per_s": float(row["avg_ts"]),
                  "tokens_per_s_stddev": float(row["stddev_ts"]), "rpc_nodes": rpc_nodes,
                  "start_ns": start, "end_ns": end, "tokens": repetitions * (int(row["n_prompt"]) + int(row["n_gen"]))}
        records.append(record)
        if lake is not None and key is not None:
            lake.record("throughput", {**key.columns(1), **{k: [v] for k, v in record.items()
                                                            if k not in ("start_ns", "end_ns", "tokens")}},
                        producer=PRODUCER)
            record_phase(lake, key, test, start, end, record["tokens"])
    return records
