"""Multiple-choice benchmarks: the scoring engine's runner, and llama-perplexity's mode.

:func:`run_scoring` runs the scoring engine (:mod:`mqepi.quality.engine`: every choice's
summed log-likelihood on llama.cpp's library, lm-eval's ``acc`` and ``acc_norm``, prefixes
decoded once) where the model runs, reads its per-question lines and records everything; it
is what ``mqepi evaluate`` and the sweep use. :func:`run_multiple_choice` drives
``llama-perplexity --multiple-choice``, kept as an independent cross-check of the engine and as
the baseline of ``benchmarks/harness.py``; its rule:

Scoring rule (documented in docs/quality.md): for each question the tool tokenizes
``prompt + " " + answer`` for every choice, evaluates the tokens all choices share (the
few-shot prefix and the question) **once**, then each choice's own tokens, and scores a
choice by the mean log-probability of its tokens given the prompt. The prediction is the
highest-scoring choice. That is lm-evaluation-harness's log-likelihood scoring normalised
by the number of answer *tokens*: equal to ``acc`` for single-token answers (MMLU's
" A".." D"), and a token-length normalisation close to ``acc_norm`` (which normalises by
characters) for multi-token answers (ARC choice texts, HellaSwag endings).

The tool prints ``n_done<TAB>running_accuracy`` after each task, in task order; the
per-question correctness is recovered exactly from successive values (and checked against
the tool's own final accuracy). The predicted choice is therefore known when the answer is
correct; for a wrong answer it is recorded as null. Every line of output is stamped on
arrival: the measured window starts at the first scored task's batch (after the model has
loaded and the tasks are tokenized) and ends at the last result line.

Commands run through an executor of :mod:`mqepi.rig.executor` (this machine, or a head node
over SSH with ``--rpc`` workers passed as ``extra_args``), so the same code measures locally
and on a cluster. The error, failure message and thread flag here are shared by the other
llama.cpp runners (:mod:`mqepi.quality.perplexity`, :mod:`mqepi.quality.throughput`).
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mqepi import PRODUCER
from mqepi.errors import MqepiError
from mqepi.meter.stream import RunKey
from mqepi.meter.windows import record_window
from mqepi.progress import Count
from mqepi.quality import engine as eng
from mqepi.quality.prompts import Item, QuestionSet
from mqepi.quant import toolchain
from mqepi.rig.executor import LocalExecutor, Result, int_arg


class ScoringError(MqepiError):
    """The scoring tool failed or printed something mqepi cannot read."""


def tool_failed(what: str, result: Result) -> ScoringError:
    """The error for a llama.cpp tool that exited non-zero, with its last output lines."""
    return ScoringError(f"{what} exited {result.returncode}:\n{result.tail(10)}")


def thread_args(threads: int | None) -> list[str]:
    """The llama.cpp thread flag (none: the tool's default)."""
    return ["-t", int_arg(threads, "threads", 1)] if threads else []


# ------------------------------------------------------------------ the tool's task file


def task_file_bytes(items: list[Item]) -> bytes:
    """llama-perplexity's --multiple-choice binary format: uint32 n; uint32 offsets[n]; per
    task a string question, then mc1 = {uint32 n; n strings; n int32 labels} and mc2 (a copy).
    Strings are uint32 length + UTF-8 bytes; everything little-endian."""

    def string(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack("<I", len(raw)) + raw

    bodies = []
    for item in items:
        labels = [1 if k == item.gold else 0 for k in range(len(item.answers))]
        mc = struct.pack("<I", len(item.answers)) + b"".join(string(a) for a in item.answers) + struct.pack(
            f"<{len(labels)}i", *labels)
        bodies.append(string(item.prompt) + mc + mc)
    header = 4 + 4 * len(items)
    offsets, pos = [], header
    for body in bodies:
        offsets.append(pos)
        pos += len(body)
    return struct.pack("<I", len(items)) + struct.pack(f"<{len(items)}I", *offsets) + b"".join(bodies)


# ------------------------------------------------------------------ reading the tool's output

RESULT = re.compile(r"^(\d+)\t(\d+(?:\.\d+)?)$")
FINAL = re.compile(r"Final result: ([0-9.]+) \+/- ([0-9.]+)")
START_MARK = "calculating TruthfulQA score"


def parse_results(lines: list[tuple[int, str]], n_items: int) -> tuple[list[bool], float, float, int, int]:
    """From stamped lines (arrival UTC ns, text): correctness per task, the tool's final
    accuracy and its +/-, and the window (start mark's stamp, last result's stamp)."""
    correct: list[bool] = []
    n_correct_prev = 0
    start_ns = end_ns = None
    final = None
    for stamp, text in lines:
        text = text.rstrip("\n")
        if START_MARK in text:
            start_ns = stamp
        m = RESULT.match(text)
        if m and start_ns is not None:
            n_done, pct = int(m.group(1)), float(m.group(2))
            if n_done != len(correct) + 1:
                raise ScoringError(f"result line for task {n_done} came after task {len(correct)}: {text!r}")
            n_correct = round(pct * n_done / 100)
            step = n_correct - n_correct_prev
            if step not in (0, 1):
                raise ScoringError(f"cannot read per-task correctness at task {n_done}: {text!r}")
            correct.append(step == 1)
            n_correct_prev = n_correct
            end_ns = stamp
        f = FINAL.search(text)
        if f:
            final = (float(f.group(1)), float(f.group(2)))
    if start_ns is None or final is None:
        raise ScoringError("the tool printed no multiple-choice results (see its output above)")
    if len(correct) != n_items:
        raise ScoringError(f"the tool scored {len(correct)} tasks, expected {n_items}")
    recovered = 100 * sum(correct) / n_items
    if abs(recovered - final[0]) > 1e-3:
        raise ScoringError(f"per-task correctness gives {recovered:.4f}% but the tool reports {final[0]:.4f}%")
    return correct, final[0], final[1], start_ns, end_ns


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

    n_correct_norm: int | None = None
    answers: list[dict] | None = None  # per question as the engine scored it (run_scoring)

    @property
    def token_ratio(self) -> float:
        return self.tokens_evaluated / self.tokens_naive

    @property
    def accuracy_norm(self) -> float | None:
        return None if self.n_correct_norm is None else self.n_correct_norm / self.n


# ------------------------------------------------------------------ the scoring engine


@dataclass(frozen=True)
class EngineCommand:
    """How to start the scoring engine where the model runs: that machine's Python (with mqepi
    and the bindings installed) and its folder of llama.cpp shared libraries."""

    python: str
    lib_dir: str

    @classmethod
    def local(cls, progress: Callable[[str], None] = lambda line: None) -> EngineCommand:
        """This machine: this interpreter and the cached libraries (built/installed once)."""
        return cls(sys.executable, str(toolchain.ensure_engine(progress)))

    def argv(self, model_path, task_file: str, context: int, threads: int | None, rpc: list[str],
             naive: bool = False) -> list[str]:
        return [self.python, "-m", "mqepi.quality.engine", "--lib", self.lib_dir, "--model", str(model_path),
                "--tasks", task_file, "--context", int_arg(context, "context", 1),
                *(["--threads", int_arg(threads, "threads", 1)] if threads else []),
                *(["--rpc", ",".join(rpc)] if rpc else []), *(["--naive"] if naive else [])]


def engine_task_bytes(items: list[Item]) -> bytes:
    """The engine's input file: every question's prompt and answer texts."""
    return json.dumps({"questions": [{"prompt": i.prompt, "answers": list(i.answers)} for i in items]}).encode()


def parse_engine(lines: list[tuple[int, str]], items: list[Item]) -> tuple[list[dict], int, int]:
    """From the engine's stamped lines: one record per question (scores, predictions, tokens)
    and the window (the ``start`` line's stamp, the last question's stamp)."""
    start = end = None
    records: list[dict] = []
    for stamp, text in lines:
        text = text.rstrip("\n")
        if text == eng.START:
            start = stamp
            continue
        if start is None or not text.startswith("{"):
            continue
        try:
            row = json.loads(text)
        except ValueError:
            raise ScoringError(f"the engine printed a line mqepi cannot read: {text[:200]!r}") from None
        i = row.get("i")
        if i != len(records) or i >= len(items):
            raise ScoringError(f"the engine answered question {i} after {len(records)} of {len(items)}")
        item = items[i]
        scores = [float(x) for x in row["scores"]]
        if len(scores) != len(item.answers) or not all(math.isfinite(x) for x in scores):
            raise ScoringError(f"question {item.question_id}: {len(scores)} finite scores expected {len(item.answers)}")
        acc, acc_norm = eng.choose(scores, item.answers)
        records.append({**row, "scores": scores, "predicted": acc, "predicted_norm": acc_norm})
        end = stamp
    if start is None:
        raise ScoringError("the engine never started scoring (see its output above)")
    if len(records) != len(items):
        raise ScoringError(f"the engine scored {len(records)} questions, expected {len(items)}")
    return records, start, end


#: A window reports its questions scored at most once per PROGRESS_EVERY_S seconds and per
#: PROGRESS_STEP of its questions: a 200-question window says so at most 20 times.
PROGRESS_EVERY_S = 1.0
PROGRESS_STEP = 0.05


class QuestionsScored:
    """The callback that reads the engine's output as it arrives (``executor.stream``'s
    ``progress``): counts the question lines after ``start`` and reports ``"mmlu: 37/200
    questions scored"`` (a :class:`~mqepi.progress.Count`) to ``progress``, at most once per
    ``every_s`` (default :data:`PROGRESS_EVERY_S`) and per ``step`` of the questions. It only
    counts: every line is stamped before it is called and parsed afterwards, as without it."""

    def __init__(self, benchmark: str, total: int, progress: Callable[[str], None], *, every_s: float | None = None,
                 step: float = PROGRESS_STEP, clock: Callable[[], float] = time.monotonic):
        self.benchmark, self.total, self.progress, self.clock = benchmark, total, progress, clock
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.min_gain = step * total
        self.started, self.done, self.shown = False, 0, 0
        self.shown_at = clock()

    def __call__(self, line: str) -> None:
        line = line.rstrip()
        if line == eng.START:
            self.started = True
        elif self.started and line.startswith("{"):
            self.done += 1
            now = self.clock()
            if self.done - self.shown >= self.min_gain and now - self.shown_at >= self.every_s:
                self.shown, self.shown_at = self.done, now
                self.progress(Count(f"{self.benchmark}: {self.done}/{self.total} questions scored", kind="questions",
                                    done=self.done, total=self.total))


def run_scoring(qset: QuestionSet, model_path, engine: EngineCommand, *, threads: int | None = None,
                rpc: list[str] = (), lake=None, key: RunKey | None = None,
                progress: Callable[[str], None] = lambda line: None, executor=None, naive: bool = False) -> BenchmarkResult:
    """Score ``qset`` with the scoring engine where ``executor`` runs (this machine, or a head
    node over SSH with ``rpc`` workers); append every answer and the window. ``progress`` hears
    how many questions are scored as they are (:class:`QuestionsScored`), not the engine's lines.

    Answers are appended only after the whole output is read, so a run cut short adds nothing
    and a retry adds each answer once. ``naive`` decodes every choice from an empty cache
    (the reference evaluation of the cross-checks and benchmarks/harness.py)."""
    executor = executor or LocalExecutor()
    task_file = executor.stage_file(f"{qset.benchmark}-{qset.sha256[:16]}.json", engine_task_bytes(qset.items))
    argv = engine.argv(model_path, task_file, qset.task.context, threads, list(rpc), naive)
    result = executor.stream(argv, QuestionsScored(qset.benchmark, len(qset.items), progress))
    if result.returncode != 0:
        raise tool_failed("the scoring engine", result)
    records, start, end = parse_engine(result.lines, qset.items)
    correct = [r["predicted"] == i.gold for r, i in zip(records, qset.items)]
    n = len(correct)
    acc = sum(correct) / n
    bench = BenchmarkResult(qset.benchmark, qset.sha256, n, sum(correct), acc, 100 * acc,
                            100 * math.sqrt(acc * (1 - acc) / max(n - 1, 1)), start, end,
                            sum(r["evaluated"] for r in records), sum(r["naive"] for r in records), correct,
                            n_correct_norm=sum(r["predicted_norm"] == i.gold for r, i in zip(records, qset.items)),
                            answers=records)
    if lake is not None and key is not None:
        with lake.transaction(f"{qset.benchmark} answers {key.run_id}"):
            record_engine_answers(lake, key, qset, records)
            record_window(lake, key, qset.task.phase, start, end, tokens=bench.tokens_evaluated)
    return bench


def record_engine_answers(lake, key: RunKey, qset: QuestionSet, records: list[dict]) -> None:
    """One version-2 ``benchmark_answer`` event per question, everything the engine knows."""
    items, n = qset.items, len(qset.items)
    deviation = getattr(qset, "deviation", None)
    lake.record("benchmark_answer", {
        **key.columns(n), "benchmark": [qset.benchmark] * n, "question_set_sha256": [qset.sha256] * n,
        "question_id": [i.question_id for i in items], "subject": [i.subject for i in items],
        "shots": [qset.task.shots] * n, "prompt_sha256": [i.prompt_sha256 for i in items],
        "predicted": [r["predicted"] for r in records], "gold": [i.gold for i in items],
        "correct": [r["predicted"] == i.gold for r, i in zip(records, items)],
        "choice_scores": [r["scores"] for r in records], "tokens_evaluated": [r["evaluated"] for r in records],
        "scoring": ["loglikelihood"] * n, "choice_tokens": [r["choice_tokens"] for r in records],
        "choice_bytes": [[len(a.encode("utf-8")) for a in i.answers] for i in items],
        "predicted_norm": [r["predicted_norm"] for r in records],
        "correct_norm": [r["predicted_norm"] == i.gold for r, i in zip(records, items)],
        "prompt_tokens": [r["prompt_tokens"] for r in records], "truncated_tokens": [r["truncated"] for r in records],
        "deviation": [deviation] * n,
    }, producer=PRODUCER)


def run_multiple_choice(qset: QuestionSet, perplexity_tool, model_path, *, counts: list[tuple[int, int]],
                        threads: int | None = None, extra_args: list[str] = (), lake=None, key: RunKey | None = None,
                        progress: Callable[[str], None] = lambda line: None, executor=None) -> BenchmarkResult:
    """Score ``qset`` with llama-perplexity --multiple-choice; append answers and the window.

    ``executor`` runs the tool elsewhere (a head node: :class:`mqepi.rig.ssh.Remote`); paths
    are then the head's. Answers are appended only after the whole output is read, so a run
    cut short adds nothing and a retry adds each answer once.
    """
    executor = executor or LocalExecutor()
    task_file = executor.stage_file(f"{qset.benchmark}-{qset.sha256[:16]}.bin", task_file_bytes(qset.items))
    result = executor.stream([str(perplexity_tool), "-m", str(model_path), "-bf", task_file, "--multiple-choice",
                              "-c", int_arg(qset.task.context, "context", 1), *thread_args(threads), *extra_args], progress)
    if result.returncode != 0:
        raise tool_failed("llama-perplexity --multiple-choice", result)
    correct, acc, err, start, end = parse_results(result.lines, len(qset.items))
    bench = BenchmarkResult(qset.benchmark, qset.sha256, len(correct), sum(correct), sum(correct) / len(correct), acc, err,
                            start, end, sum(c[0] for c in counts), sum(c[1] for c in counts), correct)
    if lake is not None and key is not None:
        _record_answers(lake, key, qset, correct, counts)
        record_window(lake, key, qset.task.phase, start, end, tokens=bench.tokens_evaluated)
    return bench


def _record_answers(lake, key: RunKey, qset: QuestionSet, correct: list[bool], counts: list[tuple[int, int]]) -> None:
    """One ``benchmark_answer`` event per question."""
    n = len(qset.items)
    lake.record("benchmark_answer", {
        **key.columns(n), "benchmark": [qset.benchmark] * n, "question_set_sha256": [qset.sha256] * n,
        "question_id": [i.question_id for i in qset.items], "subject": [i.subject for i in qset.items],
        "shots": [qset.task.shots] * n, "prompt_sha256": [i.prompt_sha256 for i in qset.items],
        "predicted": [i.gold if c else None for i, c in zip(qset.items, correct)],
        "gold": [i.gold for i in qset.items], "correct": correct, "choice_scores": [None] * n,
        "tokens_evaluated": [c[0] for c in counts],
    }, producer=PRODUCER)
