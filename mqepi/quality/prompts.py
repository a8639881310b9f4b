"""Prompts of the multiple-choice benchmarks, as lm-evaluation-harness builds them.

A question becomes an :class:`Item`: the few-shot prompt (the task's description, its
examples each followed by their answer, then the question) and the answer strings the
engine scores after ``" "`` (lm-eval's target delimiter). :func:`select` draws the seeded
:class:`QuestionSet` every configuration of a sweep answers, with the shots it never scores.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

from mqepi.quality.datasets import LETTERS, Dataset, Question
from mqepi.quality.tasks import TaskDef


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
        return {"benchmark": self.benchmark, "question_set_sha256": self.sha256, "task": self.task.definition(),
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
    chosen = _choose(pool, task, n, seed)
    items = []
    for s in sorted(chosen, key=lambda x: x or ""):
        for q in chosen[s]:
            items.append(Item(q.id, q.subject, build_prompt(task, q, shots[s]), answer_strings(task, q), q.gold))
    return QuestionSet(dataset.benchmark, task, items, dataset.provenance, seed, n,
                       [q.id for v in shots.values() for q in v])


def _choose(pool: dict[str | None, list[Question]], task: TaskDef, n: int | None,
            seed: int) -> dict[str | None, list[Question]]:
    """The scored questions per subject: all of them, or a seeded draw of ``n`` (stratified by
    largest-remainder quotas where the task says so), each in file order."""
    rng = random.Random(seed)
    total = sum(len(v) for v in pool.values())
    if n is None or n >= total:
        return {s: list(v) for s, v in pool.items()}
    if task.stratify_by_subject:
        quotas = _largest_remainder({s: len(v) for s, v in pool.items()}, n)
        return {s: sorted(rng.sample(v, quotas[s]), key=v.index) for s, v in pool.items() if quotas[s]}
    flat = [q for v in pool.values() for q in v]
    picked = set(id(q) for q in rng.sample(flat, n))
    return {None: [q for q in flat if id(q) in picked]}


def _largest_remainder(sizes: dict, n: int) -> dict:
    total = sum(sizes.values())
    exact = {s: n * size / total for s, size in sizes.items()}
    quotas = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (exact[s] - quotas[s], str(s)), reverse=True)[: n - sum(quotas.values())]:
        quotas[s] += 1
    return quotas
