"""The benchmark registry: every ``tasks/<name>.json`` loaded into one :class:`TaskDef`.

A task file declares a benchmark once, as lm-evaluation-harness declares its tasks: how its
prompts are built (shots, template, answers, the split its few-shot examples come from and
lm-eval's sampler that picks them, with its seed), the loader that reads its
questions (a name registered in :mod:`mqepi.quality.datasets`), its default data (a path
under the cache, or ``embedded:<name>`` for a copy mqepi fetches itself) and the name of
its measurement window (``phase``). :data:`TASKS` is the only list of benchmarks: the
event schemas, the window kinds, the planner, the CLI and every "known: ..." message read
it. Importing this module reads three small JSON files and needs nothing else of mqepi but
its errors, so the schemas can import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mqepi.errors import MqepiError

#: Fields that say where a task's questions come from and how its window and place in lists
#: are named, not how it is prompted: left out of the task hash and the question-set manifest.
IDENTITY_FIELDS = ("position", "phase", "loader", "data")
ANSWER_KINDS = ("letters", "texts")
#: lm-eval's few-shot samplers: ``first_n`` (``FirstNSampler``: the first ``shots`` examples of the
#: few-shot split, in file order) and ``lm_eval_random`` (``ContextSampler``: ``Random(fewshot_seed)``
#: shared by every question, drawing in the order of the whole scored split).
SAMPLERS = ("first_n", "lm_eval_random")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_]*\Z")


class TaskError(MqepiError):
    """An unknown benchmark, or a task file that does not describe one."""


@dataclass(frozen=True)
class TaskDef:
    """A benchmark task (versioned data): prompting fields first, then identity fields."""

    name: str
    version: int
    shots: int
    context: int
    description: str  # "{subject}": the question's subject, "_" read as " "
    doc_to_text: str  # str.format fields: question, question_stripped, choices
    answers: str  # "letters" (score " A".." D") or "texts" (score each choice text)
    target_delimiter: str  # between a shot's text and its answer (the engine uses " " too)
    fewshot_delimiter: str
    scored_split: str  # the split whose questions are scored (lm-eval's test_split, else validation_split)
    fewshot_split: str  # the split the shots come from, when the data has it
    sampler: str  # "first_n" | "lm_eval_random"
    fewshot_seed: int  # lm-eval's fewshot_random_seed (its default: 1234)
    fewshot_per_subject: bool  # each subject is its own lm-eval task, with its own shots
    fewshot_draw_extra: bool  # lm-eval draws shots + 1 and drops the question (fewshot_split == test_split)
    stratify_by_subject: bool
    source: str
    position: int  # place in every list of benchmarks (CLI help, view columns)
    phase: str  # name of the measurement window of its scoring
    loader: str  # a loader registered in mqepi.quality.datasets
    data: str  # default data: a path under the cache, or "embedded:<name>"

    @classmethod
    def load(cls, name: str, shots: int | None = None) -> TaskDef:
        """The registered task ``name``, with ``shots`` overriding its few-shot count."""
        task = TASKS.get(name)
        if task is None:
            raise TaskError(f"unknown benchmark {name!r} (known: {known()})")
        return task if shots is None else dataclasses.replace(task, shots=shots)

    def definition(self) -> dict:
        """The fields that decide the prompts, in file order: what is hashed and recorded."""
        return {k: v for k, v in asdict(self).items() if k not in IDENTITY_FIELDS}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()


def _parse(path: Path) -> TaskDef:
    data = json.loads(path.read_text(encoding="utf-8"))
    fields = [f.name for f in dataclasses.fields(TaskDef)]
    unknown, missing = sorted(set(data) - set(fields)), [f for f in fields if f not in data]
    if unknown or missing:
        raise TaskError(f"{path}: " + (f"unknown field {unknown[0]!r}" if unknown else f"field {missing[0]!r} missing"))
    task = TaskDef(**data)
    checks = [("name", task.name == path.stem, "is not the file's name"),
              ("phase", bool(_SLUG.match(task.phase)), "is not a lower-case slug"),
              ("answers", task.answers in ANSWER_KINDS, f"is not one of {ANSWER_KINDS}"),
              ("sampler", task.sampler in SAMPLERS, f"is not one of {SAMPLERS}"),
              ("scored_split", isinstance(task.scored_split, str) and bool(_SLUG.match(task.scored_split)),
               "is not a lower-case slug"),
              ("fewshot_split", isinstance(task.fewshot_split, str) and bool(_SLUG.match(task.fewshot_split)),
               "is not a lower-case slug"),
              ("shots", _is_int(task.shots) and task.shots >= 0, "is not a whole number >= 0"),
              ("fewshot_seed", _is_int(task.fewshot_seed), "is not an integer")]
    checks += [(f, isinstance(getattr(task, f), bool), "is not true or false")
               for f in ("fewshot_per_subject", "fewshot_draw_extra", "stratify_by_subject")]
    checks += [(f, isinstance(getattr(task, f), str), "is not a string")
               for f in ("description", "doc_to_text", "target_delimiter", "fewshot_delimiter")]
    for field, ok, problem in checks:
        if not ok:
            raise TaskError(f"{path}: field {field} {getattr(task, field)!r} {problem}")
    return task


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_all(folder: Path) -> dict[str, TaskDef]:
    tasks = sorted((_parse(p) for p in folder.glob("*.json")), key=lambda t: (t.position, t.name))
    for field in ("position", "phase"):
        values = [getattr(t, field) for t in tasks]
        if len(set(values)) != len(values):
            raise TaskError(f"{folder}: two tasks share a {field}: {values}")
    return {t.name: t for t in tasks}


#: Benchmark name -> task, in ``position`` order.
TASKS: dict[str, TaskDef] = _load_all(Path(__file__).parent)
#: Benchmark names, in ``position`` order.
BENCHMARKS: tuple[str, ...] = tuple(TASKS)
#: Window names of the benchmarks' scoring, in ``position`` order.
BENCHMARK_PHASES: tuple[str, ...] = tuple(t.phase for t in TASKS.values())


def known() -> str:
    """The registered benchmarks, for messages: ``mmlu, arc_challenge, hellaswag``."""
    return ", ".join(TASKS)
