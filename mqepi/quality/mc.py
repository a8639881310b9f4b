"""Multiple-choice benchmarks scored on llama.cpp (llama-perplexity --multiple-choice).

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
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources

from mqepi.errors import MqepiError
from mqepi.quality.datasets import LETTERS, Dataset, Question


class ScoringError(MqepiError):
    """The scoring tool failed or printed something mqepi cannot read."""


@dataclass(frozen=True)
class TaskDef:
    """A benchmark task, loaded from ``mqepi/quality/tasks/<name>.json`` (versioned data)."""

    name: str
    version: int
    shots: int
    context: int
    description: str
    doc_to_text: str
    answers: str  # "letters" (score " A".." D") or "texts" (score each choice text)
    fewshot_delimiter: str
    shot_selection: str  # "first_per_subject" | "first_k"
    stratify_by_subject: bool
    source: str = ""

    @classmethod
    def load(cls, name: str, shots: int | None = None) -> TaskDef:
        try:
            text = resources.files("mqepi.quality").joinpath("tasks", f"{name}.json").read_text()
        except FileNotFoundError:
            raise ScoringError(f"no task definition {name!r} (known: mmlu, arc_challenge, hellaswag)") from None
        data = json.loads(text)
        if shots is not None:
            data["shots"] = shots
        return cls(**data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Item:
    """One question ready for the engine."""

    question_id: str
    subject: str | None
    prompt: str
    answers: tuple[str, ...]
    gold: int

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.prompt, self.answers]).encode()).hexdigest()


@dataclass
class QuestionSet:
    """The questions every configuration of a sweep answers, and how they were chosen."""

    benchmark: str
    task: TaskDef
    items: list[Item]
    dataset: dict
    seed: int
    requested: int | None
    shot_ids: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        body = json.dumps({"task": self.task.sha256, "dataset": self.dataset["sha256"],
                           "items": [(i.question_id, i.prompt_sha256) for i in self.items]}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def manifest(self) -> dict:
        return {"benchmark": self.benchmark, "question_set_sha256": self.sha256, "task": asdict(self.task),
                "dataset": self.dataset, "seed": self.seed, "requested": self.requested,
                "question_ids": [i.question_id for i in self.items], "shot_ids": self.shot_ids}


def render(task: TaskDef, q: Question) -> str:
    lettered = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(q.choices))
    return task.doc_to_text.format(question=q.question.strip(), lettered_choices=lettered)


def answer_strings(task: TaskDef, q: Question) -> tuple[str, ...]:
    return tuple(LETTERS[: len(q.choices)]) if task.answers == "letters" else tuple(c.strip() for c in q.choices)


def build_prompt(task: TaskDef, q: Question, shots: list[Question]) -> str:
    """The few-shot prompt; the engine appends ``" " + answer`` (lm-eval's target delimiter)."""
    subject = (q.subject or "").replace("_", " ")
    description = task.description.format(subject=subject) if task.description else ""
    examples = [f"{render(task, s)} {answer_strings(task, s)[s.gold]}" for s in shots]
    return description + "".join(e + task.fewshot_delimiter for e in examples) + render(task, q)


def select(dataset: Dataset, task: TaskDef, n: int | None = None, seed: int = 1234) -> QuestionSet:
    """Few-shot examples and a seeded subset (stratified by subject where the task says so).

    Shots come from the same file (``first_per_subject``: the first ``shots`` questions of each
    subject, as lm-eval takes the first five dev examples; ``first_k``: the first ``shots``
    questions) and are never scored.
    """
    by_subject: dict[str | None, list[Question]] = defaultdict(list)
    for q in dataset.questions:
        by_subject[q.subject if task.shot_selection == "first_per_subject" else None].append(q)
    shots = {s: qs[: task.shots] for s, qs in by_subject.items()}
    pool = {s: qs[task.shots:] for s, qs in by_subject.items()}
    rng = random.Random(seed)
    total = sum(len(v) for v in pool.values())
    if n is None or n >= total:
        chosen = {s: list(v) for s, v in pool.items()}
    elif task.stratify_by_subject:
        quotas = _largest_remainder({s: len(v) for s, v in pool.items()}, n)
        chosen = {s: sorted(rng.sample(v, quotas[s]), key=v.index) for s, v in pool.items() if quotas[s]}
    else:
        flat = [q for v in pool.values() for q in v]
        picked = set(id(q) for q in rng.sample(flat, n))
        chosen = {None: [q for q in flat if id(q) in picked]}
    items = []
    for s in sorted(chosen, key=lambda x: x or ""):
        for q in chosen[s]:
            items.append(Item(q.id, q.subject, build_prompt(task, q, shots[s]), answer_strings(task, q), q.gold))
    return QuestionSet(dataset.benchmark, task, items, dataset.provenance, seed, n,
                       [q.id for v in shots.values() for q in v])


def _largest_remainder(sizes: dict, n: int) -> dict:
    total = sum(sizes.values())
    exact = {s: n * size / total for s, size in sizes.items()}
    quotas = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (exact[s] - quotas[s], str(s)), reverse=True)[: n - sum(quotas.values())]:
        quotas[s] += 1
    return quotas


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


@dataclass
class Scored:
    """Per-question correctness read from one run of the tool, with its window."""

    correct: list[bool]
    final_accuracy_pct: float
    final_stderr_pct: float
    window_start_ns: int
    window_end_ns: int
    tokens_evaluated: int


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


def stamp_lines(stream, sink: list[tuple[int, str]], progress=None) -> None:
    """Read a text stream to its end, stamping each line with UTC ns on arrival."""
    for line in stream:
        sink.append((time.time_ns(), line))
        if progress is not None:
            progress(line.rstrip())
